"""A training run folder that fails cleanly.

On any error (a full disk, a permission, a bad batch, Ctrl-C) the folder is either marked
failed in ``run.json`` (``"status": "failed"``, ``"error"``: the cause in one line), when it
holds checkpoints to resume from, or removed when the job created it and it holds nothing worth
keeping. The error itself propagates: the command line prints it as its one line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["failed_cleanly", "status_problem"]


@contextlib.contextmanager
def failed_cleanly(output: str | Path, *, resume: bool, enabled: bool = True) -> Iterator[None]:
    """Run a training job writing into ``output``; on failure mark or remove the folder.

    A folder that held a run before a job that does not ``resume`` it is never touched (the
    job refuses to start there).
    """
    output = Path(output)
    existed = output.exists()
    if existed and not resume and (output / "run.json").exists():
        enabled = False
    before = {p.name for p in output.iterdir()} if existed and output.is_dir() else set()
    try:
        yield
    except BaseException as exc:
        if enabled:
            _mark_failed(output, existed, before, exc)
        raise


def status_problem(path: Path, info: dict) -> str | None:
    """Why a run in ``path`` cannot be used (None when it finished)."""
    status = info.get("status")
    if status == "complete":
        return None
    if status == "failed":
        return f"training failed ({info.get('error', 'unknown cause')}); resume it with --resume"
    return "training has not finished (resume it with --resume)"


def _mark_failed(output: Path, existed: bool, before: set[str], exc: BaseException) -> None:
    if not output.is_dir():
        return
    with contextlib.suppress(OSError):
        resumable = any(output.glob("fold-*/last.pt"))
        if not resumable:
            if not existed:
                shutil.rmtree(output)
                return
            for path in output.iterdir():  # a folder the user made: remove only what we wrote
                if path.name not in before:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            return
    _write_status(output, _cause(exc))


def _cause(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _write_status(output: Path, cause: str) -> None:
    """``status: failed`` in run.json (atomically: on a full disk the old one stays whole)."""
    from medlens._atomic import atomic_write_json
    from medlens.errors import MedlensError

    manifest = output / "run.json"
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    info["status"], info["error"] = "failed", cause
    with contextlib.suppress(OSError, MedlensError):
        atomic_write_json(manifest, info)
