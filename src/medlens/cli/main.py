"""Entry point of the ``medlens`` command.

Bad input ends with one line on stderr naming the file and the problem and a non-zero exit code;
``--debug`` (or ``MEDLENS_DEBUG=1``) shows the traceback instead. Subcommands import their heavy
dependencies when they run, so ``medlens --help`` answers at once.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from medlens import __version__
from medlens.cli.anonymize import anonymize
from medlens.cli.datasets import app as datasets_app
from medlens.cli.demo import demo
from medlens.cli.explain import explain
from medlens.cli.info import info
from medlens.cli.learn import evaluate, predict, train
from medlens.cli.measure import app as measure_app
from medlens.cli.plan import plan
from medlens.cli.register import apply_transform, register
from medlens.cli.serve import dicom_node, export, serve
from medlens.cli.simulate import app as simulate_app

app = typer.Typer(
    name="medlens",
    help="Deep learning on medical images: from DICOM, NIfTI and friends to explained models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("info")(info)
app.command("demo")(demo)
app.command("plan")(plan)
app.command("train")(train)
app.command("evaluate")(evaluate)
app.command("predict")(predict)
app.command("explain")(explain)
app.command("export")(export)
app.command("serve")(serve)
app.command("dicom-node")(dicom_node)
app.command("anonymize")(anonymize)
app.command("register")(register)
app.command("apply-transform")(apply_transform)
app.add_typer(datasets_app, name="datasets")
app.add_typer(measure_app, name="measure")
app.add_typer(simulate_app, name="simulate")

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """medlens: medical imaging deep learning that is fast, DICOM-correct and honest."""
    _STATE["debug"] = debug or _STATE["debug"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and, called without ``argv``, exits with) the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _STATE["debug"] = "--debug" in args or os.environ.get("MEDLENS_DEBUG") == "1"
    with warnings.catch_warnings():  # also around the error report: files closed late warn there
        warnings.showwarning = _show_warning
        code = _run(args)
    if argv is None:
        sys.exit(code)
    return code


def _run(args: list[str]) -> int:
    from medlens.errors import MedlensError

    code: int | str | None = 0
    try:
        app(args=args, prog_name="medlens")  # standalone: usage errors exit 2 by themselves
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        code = 130
    except MedlensError as exc:
        code = _report(f"error: {exc}", 1)
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        code = _report(f"error: {where}{exc.strerror or exc}", 1)
    except Exception as exc:
        code = _report(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug)", 1)
    return 0 if code is None else code if isinstance(code, int) else 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """medlens's own warnings as one ``warning: ...`` line on stderr; other libraries' warnings
    (pydicom's notes on odd values in a file, NumPy's on overflow) only with ``--debug``: the
    result, or the one-line error, says what matters about the input."""
    if _STATE["debug"]:
        _SHOW_WARNING(message, category, filename, lineno, file, line)
        return
    ours = category.__module__.startswith("medlens") or (
        issubclass(category, UserWarning) and str(filename).startswith(_PACKAGE_DIR)
    )
    if ours:
        typer.echo(" ".join(f"warning: {message}".split()), err=True)


_SHOW_WARNING = warnings.showwarning
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _report(line: str, code: int) -> int:
    if _STATE["debug"]:
        import traceback

        traceback.print_exc()
    typer.echo(" ".join(line.split()), err=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
