"""DistributedDataParallel through ``torchrun``: two gloo processes on the CPU.

The 2-process run with ``b`` samples per rank must match a 1-process run with batch ``2b``
(DDP averages the ranks' gradients, and the ranks' shards interleave the single-process
order), and both ranks must end with identical weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from medlens.engine import DistInfo, current_dist, init_distributed, wrap_model
from medlens.engine.distributed import (
    all_gather_objects,
    all_reduce_sum,
    broadcast_object,
    launched_by_torchrun,
    unwrap,
)

from .conftest import SCRIPT, load_script, without_time

GLOO_EXIT_ABORT = "terminate called without an active exception"
PLAIN = ["optimizer=sgd", "lr=0.05", "schedule=constant", "ema_decay=none", "grad_clip=none"]


def test_single_process_fallbacks(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_by_torchrun()
    info = init_distributed()
    assert info == DistInfo() == current_dist() and info.is_main and not info.enabled
    model = nn.Linear(2, 2)
    assert wrap_model(model, torch.device("cpu"), info) is model
    assert unwrap(model) is model
    values = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(values, info) is values
    assert broadcast_object({"a": 1}, info) == {"a": 1}
    assert all_gather_objects(3, info) == [3]


def test_unwrap_leaves_modules_with_a_module_attribute_alone():
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(1, 1)

    holder = Holder()
    assert unwrap(holder) is holder
    assert unwrap(nn.DataParallel(holder)) is holder


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one_process(tmp_path, monkeypatch):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDLENS_TEST_PLAIN": "1"}
    env.pop("MEDLENS_TEST_KILL", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(SCRIPT),
        "--output",
        str(out),
        "batch_size=4",
        *PLAIN,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)

    def torn_down_after_the_work() -> bool:
        """gloo's abort at interpreter exit (a C++ thread still joinable) after both ranks
        saved their final weights, the script's last step: torch's teardown, not the run."""
        done = all((out / f"final_rank{r}.pt").is_file() for r in (0, 1))
        return done and GLOO_EXIT_ABORT in result.stdout + result.stderr

    if result.returncode != 0 and not torn_down_after_the_work():
        # Seen in a clean-clone CI run (2026-11-21): a rank aborted in gloo's teardown. Run
        # again once; a second failure is real. (2026-12-04: the abort came twice in one run,
        # both times after every output was written; those runs are checked below.)
        shutil.rmtree(out, ignore_errors=True)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    ok = result.returncode == 0 or torn_down_after_the_work()
    assert ok, result.stdout[-3000:] + result.stderr[-3000:]

    rank0 = torch.load(out / "final_rank0.pt", weights_only=True)
    rank1 = torch.load(out / "final_rank1.pt", weights_only=True)
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["global_step"] == 5 * 8  # 64 samples / (2 ranks x 4) per epoch
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]

    # One process, batch 8 = 2 x 4: the same gradients up to float rounding.
    monkeypatch.setenv("MEDLENS_TEST_PLAIN", "1")
    single = load_script().main(["--output", str(tmp_path / "single"), "batch_size=8", *PLAIN])
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6)
    assert single.model[0].weight.abs().max() > 0  # it trained at all
    for mine, theirs in zip(without_time(history), without_time(single.history), strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine:  # train loss averaged over ranks; validation summed over shards
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    assert history[-1]["val_accuracy"] > history[0]["val_accuracy"]
