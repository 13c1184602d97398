"""The run folder: one layout, one ``run.json`` schema, one loader for every task.

A run folder is what ``medlens train`` writes and every other command reads::

    run.json      "format": "medlens.<task>/<version>", "status" (training, complete,
                  failed), "error" when failed, "folds", and what the task records
    splits.json   which cases each fold trained and validated on
    fold-K/       config.json, history.jsonl, last.pt, best.pt of fold K
    metrics.json, report.html, ...  what the task writes

:class:`RunFolder` reads and writes ``run.json`` (atomically), says which task wrote it and
whether it finished, and finds and loads each fold's reported checkpoint with
``torch.load(weights_only=True)``. Older folders of the same format version load unchanged;
a folder written by a newer medlens (a higher version) is refused by name.

On any error (a full disk, a permission, a bad batch, Ctrl-C) the folder is either marked
failed in ``run.json`` (``"status": "failed"``, ``"error"``: the cause in one line), when it
holds checkpoints to resume from, or removed when the job created it and it holds nothing worth
keeping. The error itself propagates: the command line prints it as its one line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

__all__ = ["RunFolder", "failed_cleanly", "run_format", "status_problem"]

#: The highest ``run.json`` format version this medlens reads.
FORMAT_VERSION = 1


def run_format(task: str, version: int = FORMAT_VERSION) -> str:
    """The ``format`` value of a ``task``'s run folder: ``medlens.<task>/<version>``."""
    return f"medlens.{task}/{version}"


class RunFolder:
    """A run folder on disk (see the module's notes); nothing is read until asked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._info: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def manifest(self) -> Path:
        return self.path / "run.json"

    def exists(self) -> bool:
        """Whether the folder holds a run (a ``run.json``)."""
        return self.manifest.is_file()

    @property
    def info(self) -> dict[str, Any]:
        """``run.json``'s content (read once; :meth:`reload` reads it again)."""
        if self._info is None:
            self._info = self.reload()
        return self._info

    def reload(self) -> dict[str, Any]:
        from medlens._json import read_json

        if not self.manifest.is_file():
            raise MedlensError(f"{self.path}: not a medlens run folder (no run.json)")
        info = read_json(self.manifest, what="run.json")
        if not isinstance(info, dict):
            raise MedlensError(f"{self.manifest}: not a run description (a JSON object)")
        self._info = info
        return info

    def write(self, info: dict[str, Any]) -> Path:
        """Replace ``run.json`` atomically (a crash leaves the old one whole)."""
        from medlens._atomic import atomic_write_json

        self._info = dict(info)
        atomic_write_json(self.manifest, info)
        return self.manifest

    @property
    def task(self) -> str:
        """The task that wrote the run, from its ``format`` (``medlens.<task>/<version>``)."""
        return self._format()[0]

    @property
    def version(self) -> int:
        return self._format()[1]

    def _format(self) -> tuple[str, int]:
        text = str(self.info.get("format", ""))
        name, _, version = text.removeprefix("medlens.").partition("/")
        if not text.startswith("medlens.") or not name or not version.isdigit():
            raise MedlensError(f"{self.manifest}: no medlens run format ({text!r})")
        if int(version) > FORMAT_VERSION:
            raise MedlensError(
                f"{self.manifest}: written by a newer medlens (format {text}; this one reads "
                f"up to version {FORMAT_VERSION}): upgrade medlens"
            )
        return name, int(version)

    def require(self, task: str) -> RunFolder:
        """Check the run is a finished run of ``task``; returns itself."""
        if self.task != task:
            raise MedlensError(f"{self.path}: not a {task} run (a {self.task} run)")
        problem = status_problem(self.path, self.info)
        if problem is not None:
            raise MedlensError(f"{self.path}: {problem}")
        return self

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))

    def fold_dirs(self) -> list[Path]:
        """``fold-0``, ``fold-1``, ... in order (``run.json``'s ``folds`` when recorded)."""
        if "folds" in self.info:
            return [self.path / f"fold-{k}" for k in range(int(self.info["folds"]))]
        found = [p for p in self.path.glob("fold-*") if p.name[5:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def checkpoints(self) -> list[Path]:
        """Each fold's reported checkpoint (``best.pt``; see
        :func:`medlens.engine.reported_checkpoint`)."""
        from medlens.engine import reported_checkpoint

        folds = self.fold_dirs()
        if not folds:
            raise MedlensError(f"{self.path}: no trained fold (fold-*/best.pt)")
        return [reported_checkpoint(fold) for fold in folds]

    def weights(self) -> list[dict[str, str]]:
        """Each fold's checkpoint: ``{"file": relative path, "sha256": ...}``."""
        import hashlib

        out = []
        for checkpoint in self.checkpoints():
            digest = hashlib.sha256()
            with checkpoint.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            out.append({"file": checkpoint.relative_to(self.path).as_posix(),
                        "sha256": digest.hexdigest()})  # fmt: skip
        return out

    def algorithm_version(self, weights: list[dict[str, str]] | None = None) -> str:
        """What DICOM results record as the model's version: medlens's version and the first
        12 hex digits of each checkpoint's SHA-256 (``weights``: :meth:`weights`, if read)."""
        import medlens

        digests = " ".join(w["sha256"][:12] for w in weights or self.weights())
        return f"medlens {medlens.__version__}; weights {digests}"

    def load_networks(self, build: Callable[[], Any]) -> list[Any]:
        """One network per fold: ``build()`` then its checkpoint's weights, in eval mode."""
        from medlens.engine import load_weights

        networks = []
        for checkpoint in self.checkpoints():
            network = build()
            load_weights(network, checkpoint)
            networks.append(network.eval())
        return networks

    def read(self, name: str, default: Any = None) -> Any:
        """A JSON file of the run (``postprocessing.json``, ``splits.json``) or ``default``."""
        from medlens._json import read_json

        path = self.path / name
        return read_json(path) if path.is_file() else default


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
        resumable = any(output.glob("fold-*/last.pt")) or any(
            output.glob("candidates/*/fold-*/last.pt")  # a plan chosen by cross-validation
        )
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

    manifest = output / "run.json"
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    info["status"], info["error"] = "failed", cause
    with contextlib.suppress(OSError, MedlensError):
        atomic_write_json(manifest, info)
