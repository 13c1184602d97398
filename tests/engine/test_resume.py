"""A run killed with SIGKILL mid-epoch and resumed ends bit-identical to an uninterrupted one.

The training script (``train_script.py``) uses every piece of state a resume must restore:
AdamW moments, a warm-up + cosine schedule, EMA weights, BatchNorm statistics, dropout (the
global RNG), batch augmentation (the batches' own generator), gradient clipping and the best
metric.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import medlens.engine.trainer as trainer_module

from .conftest import SCRIPT, load_script, without_time


def run_script(*args: str, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MEDLENS_TEST_PLAIN", None)
    if kill:
        env["MEDLENS_TEST_KILL"] = kill
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def read_history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


def assert_same_state(a: dict, b: dict) -> None:
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    script = load_script()
    # The uninterrupted reference, in this process (same code path, one thread like the rest).
    reference = script.main(["--output", str(tmp_path / "reference")])
    assert len(reference.history) == 5

    killed = tmp_path / "killed"
    result = run_script("--output", str(killed), kill="3:3")
    assert result.returncode == -signal.SIGKILL, result.stderr
    state = torch.load(killed / "last.pt", weights_only=True)
    assert state["epoch"] == 2  # epoch 3 was lost half-way
    assert len(read_history(killed)) == 2
    assert not (killed / "final_rank0.pt").exists()
    interrupted = tmp_path / "interrupted_copy"
    shutil.copytree(killed, interrupted)

    result = run_script("--output", str(killed), "--resume")
    assert result.returncode == 0, result.stderr

    final = torch.load(killed / "final_rank0.pt", weights_only=True)
    assert_same_state(reference.model.state_dict(), final)
    mine = torch.load(tmp_path / "reference" / "last.pt", weights_only=True)
    theirs = torch.load(killed / "last.pt", weights_only=True)
    assert_same_state(mine["ema"]["module"], theirs["ema"]["module"])
    assert_same_state(mine["model"], theirs["model"])
    assert mine["optimizers"]["model"]["state"][0]["exp_avg"].equal(
        theirs["optimizers"]["model"]["state"][0]["exp_avg"]
    )
    assert mine["global_step"] == theirs["global_step"] == 40
    assert without_time(theirs["history"]) == without_time(reference.history)
    assert without_time(read_history(killed)) == without_time(reference.history)
    best_a = torch.load(tmp_path / "reference" / "best.pt", weights_only=True)
    best_b = torch.load(killed / "best.pt", weights_only=True)
    assert best_a["epoch"] == best_b["epoch"] and best_a["tracker"] == best_b["tracker"]

    # Negative control: without restoring the RNG state (dropout, here) the result differs,
    # so the comparison above can tell a faithful resume from a sloppy one.
    original = trainer_module.set_rng_state
    trainer_module.set_rng_state = lambda state: None
    try:
        sloppy = script.main(["--output", str(interrupted), "--resume"])
    finally:
        trainer_module.set_rng_state = original
    assert not torch.equal(sloppy.model[0].weight, reference.model[0].weight)


@pytest.mark.slow
def test_resume_refuses_another_configuration_but_may_extend(tmp_path):
    script = load_script()
    out = str(tmp_path / "run")
    script.main(["--output", out, "epochs=2"])
    with pytest.raises(Exception, match=r"configuration differs.*lr: 0\.01 -> 0\.02") as info:
        script.main(["--output", out, "--resume", "epochs=2", "lr=0.02"])
    assert str(info.value).startswith(str(tmp_path / "run" / "last.pt"))
    extended = script.main(["--output", out, "--resume", "epochs=3"])
    assert [r["epoch"] for r in extended.history] == [1, 2, 3]


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


class Crash(Exception):
    pass


@pytest.mark.parametrize("device", DEVICES)
def test_crash_in_process_then_resume_is_identical(tmp_path, monkeypatch, device):
    """The quick in-process variant (an exception instead of SIGKILL), also on CUDA."""
    script = load_script()
    args = [f"device={device}", "epochs=4", "amp=auto", "deterministic=true"]
    reference = script.main(["--output", str(tmp_path / "a"), *args])

    class CrashAt(script.KillAt):
        def on_batch_end(self, trainer, batch_index, outputs):
            if trainer.epoch == self.epoch and batch_index == self.batch:
                raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(script, "KillAt", CrashAt)
        patch.setenv("MEDLENS_TEST_KILL", "2:5")
        with pytest.raises(Crash):
            script.main(["--output", str(tmp_path / "b"), *args])
    resumed = script.main(["--output", str(tmp_path / "b"), "--resume", *args])
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in reference.ema.module.state_dict().items():
        assert torch.equal(value, resumed.ema.module.state_dict()[key]), key
    assert without_time(resumed.history) == without_time(reference.history)
    if device == "cuda":
        assert reference.scaler.is_enabled()  # fp16 with loss scaling under amp=auto
