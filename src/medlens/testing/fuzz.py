"""Fuzz the command line: mutated real inputs, each run in a sandbox, every outcome checked.

For each case a seed of one reader (:mod:`medlens.testing.corpus`) is mutated
(:mod:`medlens.testing.mutate`) and written to a fresh sandbox, ``<case>/a/b/c/box/in/...``
(deep, so a path that climbs out of the output with ``../..`` still lands inside the case's
folder, where it is seen). Every file and folder under the case is listed and hashed; then
``medlens info`` runs on the input (and on its folder or dataset file), and for DICOM and NIfTI
``medlens anonymize IN box/out --key K`` (sometimes with ``--retain uids`` or ``--layout keep``),
in this process, from a working folder inside the sandbox, stdout and stderr captured. Checks:

* the exit code is 0 or 1 (2, a usage error, is a bug here);
* no traceback, no ``error: unexpected <Type>`` (an exception medlens did not expect) and no
  ``unexpected <Type>`` reason for a file ``anonymize`` gave up on;
* no Python warning reaches stderr (medlens's own show as one ``warning: ...`` line);
* a failure says why on stderr, in one line (``info``: exactly one ``error:`` line);
* nothing appeared or changed outside ``box/out/`` and its audit log ``box/out.audit.csv``,
  and the input files are byte for byte what they were;
* no marker planted in an identifying attribute of the input appears in the output's bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import shutil
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medlens.deid.markers import UID_ROOT
from medlens.testing.corpus import Seed
from medlens.testing.leaks import expected_markers
from medlens.testing.mutate import mutate_file

__all__ = ["PROBLEMS", "Case", "Fuzzer", "ReaderStats", "Run"]

#: Kinds of problem a case can show (the benchmark counts cases per kind).
PROBLEMS = ("traceback", "bad-exit", "hang", "message", "warning", "outside", "modified", "leak")
_SANDBOX = Path("a/b/c/box")
_CRASH = re.compile(r"^(?:error: unexpected \w+|failed [^:\n]+: unexpected \w+)", re.M)
_PY_WARNING = re.compile(r"^.*:\d+: \w*Warning: |^\s*warnings\.warn", re.M)
_ANONYMIZE_LINE = ("failed ", "skipped ", "error: ", "warning: ")


@dataclass
class Run:
    """One command on one input."""

    argv: list[str]
    code: int
    out: str
    err: str


@dataclass
class Case:
    """One mutated input and what the commands did with it."""

    reader: str
    seed: str
    number: int
    mutations: list[str]
    runs: list[Run] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, detail)
    seconds: float = 0.0
    box: Path | None = None  # the sandbox (removed after the run unless kept)

    @property
    def succeeded(self) -> bool:
        return all(run.code == 0 for run in self.runs)

    def describe(self) -> str:
        lines = [
            f"{self.reader} case {self.number} (seed {self.seed}): {'; '.join(self.mutations)}"
        ]
        lines += [f"  {kind}: {detail}" for kind, detail in self.problems]
        for run in self.runs:
            lines.append(f"  $ medlens {' '.join(run.argv)} -> {run.code}")
            lines += [f"    {line}" for line in run.err.strip().splitlines()[:6]]
        return "\n".join(lines)


@dataclass
class ReaderStats:
    """Counts over the cases of one reader."""

    tried: int = 0
    successes: int = 0
    clean_failures: int = 0
    problems: Counter = field(default_factory=Counter)  # kind -> cases showing it
    examples: list[str] = field(default_factory=list)

    def add(self, case: Case, keep_examples: int = 5) -> None:
        self.tried += 1
        kinds = {kind for kind, _ in case.problems}
        self.problems.update(kinds)
        if case.succeeded:
            self.successes += 1
        elif not kinds & {"traceback", "bad-exit", "hang"}:
            self.clean_failures += 1
        if kinds and len(self.examples) < keep_examples:
            self.examples.append(case.describe())


class Fuzzer:
    """Runs cases of a corpus in sandboxes under ``workdir``.

    Args:
        corpus: reader -> seeds (:func:`medlens.testing.corpus.build_corpus`).
        workdir: an empty folder for the sandboxes and the key file.
        keep: leave each case's sandbox on disk (for a look at a failure).
    """

    def __init__(
        self,
        corpus: dict[str, list[Seed]],
        workdir: Path,
        *,
        keep: bool = False,
        timeout: float | None = 60.0,
    ):
        self.corpus = corpus
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key = self.workdir / "fuzz.key"
        self.key.write_bytes(bytes(range(32)))
        self.keep = keep
        self.timeout = timeout
        self.others = [
            data for seeds in corpus.values() for s in seeds for data in s.files.values()
        ]
        self._count = 0

    def case(self, reader: str, number: int) -> Case:
        """Mutate a seed of ``reader`` (chosen, like the mutations, by ``number``) and run it."""
        rng = random.Random(f"{reader}:{number}")
        seed = rng.choice(self.corpus[reader])
        files = dict(seed.files)
        mutations = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            name = rng.choice(seed.mutable)
            files[name], what = mutate_file(name, files[name], rng, self.others)
            mutations.append(f"{name}: {what}")
        options = rng.choice(((), (), ("--retain", "uids"), ("--layout", "keep")))
        return self.run(seed, files, mutations=mutations, number=number, options=options)

    def run(
        self,
        seed: Seed,
        files: dict[str, bytes],
        *,
        mutations: list[str] | None = None,
        number: int = 0,
        options: tuple[str, ...] = (),
        keep: bool | None = None,
    ) -> Case:
        """Run the commands of ``seed`` on the file tree ``files`` in a fresh sandbox.

        ``options``: extra ``anonymize`` flags. ``keep`` (default: the fuzzer's) leaves the
        sandbox on disk; ``case.box`` is then its folder (``in/``, ``out/``, ``out.audit.csv``).
        """
        started = time.perf_counter()
        self._count += 1
        case = Case(seed.reader, seed.name, number, list(mutations or []))
        root = self.workdir / f"case-{self._count:06d}"
        shutil.rmtree(root, ignore_errors=True)
        box = case.box = root / _SANDBOX
        for rel, data in files.items():
            path = box / "in" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (box / "cwd").mkdir(parents=True)
        before = _listing(root)
        target = box / "in" / seed.target
        commands = [["info", str(target)]]
        commands += [["info", str(box / "in" / extra)] for extra in seed.also_info]
        if seed.anonymize:
            commands.append(
                ["anonymize", str(target), str(box / "out"), "--key", str(self.key), *options]
            )
        for argv in commands:
            run = _invoke(argv, box / "cwd", self.timeout)
            case.runs.append(run)
            case.problems += _check_run(run, box / "in")
        after = _listing(root)
        case.problems += _check_tree(before, after, root)
        if seed.anonymize and (box / "out").exists():
            uids_kept = "uids" in options
            expected = {
                marker: where
                for marker, where in expected_markers(files, seed.markers).items()
                if not (uids_kept and marker.startswith(UID_ROOT))
            }
            case.problems += _check_leaks(expected, box / "out")
        if not (self.keep if keep is None else keep):
            shutil.rmtree(root, ignore_errors=True)
        case.seconds = time.perf_counter() - started
        return case


class _Timeout(BaseException):
    """Raised into a command that runs too long (not an Exception: main must not report it)."""


def _alarm(signum, frame) -> None:
    raise _Timeout


def _invoke(argv: list[str], cwd: Path, timeout: float | None = None) -> Run:
    """``main(argv)`` from ``cwd``; stderr is captured both as ``sys.stderr`` and as file
    descriptor 2, where logging handlers made at import time (nibabel's) and C code write.
    A command still running after ``timeout`` seconds is stopped (exit code -1)."""
    import signal
    import tempfile
    import threading

    from medlens.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    timed = timeout is not None and threading.current_thread() is threading.main_thread()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as raw:
        previous = signal.signal(signal.SIGALRM, _alarm) if timed else None
        try:
            os.dup2(raw.fileno(), 2)
            os.chdir(cwd)
            if timed:
                signal.setitimer(signal.ITIMER_REAL, timeout)
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("default")  # each case sees its first warnings
                code = main(list(argv))
        except _Timeout:
            code = -1
            err.write(f"\nstill running after {timeout} s: stopped\n")
        finally:
            if timed:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            os.chdir(here)
            with contextlib.suppress(Exception):
                sys.__stderr__.flush()
            os.dup2(saved, 2)
            os.close(saved)
        raw.seek(0)
        direct = raw.read().decode("utf-8", "replace")
    return Run(list(argv), code, out.getvalue(), err.getvalue() + direct)


def _check_run(run: Run, inputs: Path) -> list[tuple[str, str]]:
    problems = []
    command = run.argv[0]
    if run.code == -1:
        problems.append(("hang", f"{command}: {run.err.strip().splitlines()[-1]}"))
    elif run.code not in (0, 1):
        problems.append(("bad-exit", f"{command}: exit code {run.code}"))
    if "Traceback (most recent call last)" in run.err + run.out:
        problems.append(("traceback", f"{command}: a traceback"))
    crash = _CRASH.search(run.err)
    if crash:
        line = run.err[crash.start() :].splitlines()[0]
        problems.append(("traceback", f"{command}: {line[:300]}"))
    if _PY_WARNING.search(run.err):
        line = run.err[_PY_WARNING.search(run.err).start() :].splitlines()[0]
        problems.append(("warning", f"{command}: {line[:300]}"))
    lines = [line for line in run.err.splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("warning: ")]
    if command == "info":
        if run.code != 0 and (len(said) != 1 or not said[0].startswith("error: ")):
            problems.append(("message", f"info: failed with stderr {said[:3]!r}"))
        elif run.code != 0 and str(inputs) not in said[0]:
            problems.append(("message", f"info: the error names no input: {said[0][:200]!r}"))
    elif command == "anonymize":
        odd = [line for line in lines if not line.startswith(_ANONYMIZE_LINE)]
        if odd:
            problems.append(("message", f"anonymize: stderr lines {odd[:3]!r}"))
        if run.code != 0 and not said:
            problems.append(("message", "anonymize: exit code 1 and nothing on stderr"))
    return problems


def _listing(root: Path) -> dict[str, str]:
    """Every path under ``root``: folders as ``dir``, files as the SHA-256 of their bytes."""
    found = {}
    for folder, dirs, names in os.walk(root):
        base = Path(folder)
        for name in dirs:
            found[(base / name).relative_to(root).as_posix()] = "dir"
        for name in names:
            path = base / name
            rel = path.relative_to(root).as_posix()
            try:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                found[rel] = "unreadable"
    return found


def _check_tree(before: dict[str, str], after: dict[str, str], root: Path):
    box = _SANDBOX.as_posix()
    allowed = (f"{box}/out/", f"{box}/out.audit.csv")
    problems = []
    for rel in sorted(set(after) - set(before)):
        if rel == f"{box}/out" or rel.startswith(allowed):
            continue
        problems.append(("outside", f"wrote {rel}"))
    for rel in sorted(before):
        if rel not in after:
            problems.append(("modified", f"removed {rel}"))
        elif after[rel] != before[rel]:
            problems.append(("modified", f"changed {rel}"))
    return problems


def _check_leaks(expected: dict[str, str], out: Path) -> list[tuple[str, str]]:
    from medlens.deid.markers import find_leaks

    files = [p for p in sorted(out.rglob("*")) if p.is_file()]
    problems = []
    for marker, paths in sorted(find_leaks(expected, files).items()):
        # find_leaks matches substrings: UID_ROOT + "5" is inside UID_ROOT + "581"
        whole = re.compile(re.escape(marker.encode("ascii")) + rb"(?![0-9.])")
        hits = [Path(p) for p in paths if whole.search(Path(p).read_bytes())]
        if hits:
            where = hits[0].relative_to(out)
            problems.append(("leak", f"{marker} ({expected[marker]}) in {where}"))
    return problems
