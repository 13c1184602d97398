"""Entry point of the ``medlens`` command.

Bad input ends with one line on stderr naming the file and the problem and a non-zero exit code;
``--debug`` (or ``MEDLENS_DEBUG=1``) shows the traceback instead. Subcommands import their heavy
dependencies when they run, so ``medlens --help`` answers at once.
"""

from __future__ import annotations

import os
import sys

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
app.command("anonymize")(anonymize)
app.add_typer(datasets_app, name="datasets")
app.add_typer(measure_app, name="measure")

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
    from medlens.errors import MedlensError

    args = list(sys.argv[1:] if argv is None else argv)
    _STATE["debug"] = "--debug" in args or os.environ.get("MEDLENS_DEBUG") == "1"
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
    code = 0 if code is None else code if isinstance(code, int) else 1
    if argv is None:
        sys.exit(code)
    return code


def _report(line: str, code: int) -> int:
    if _STATE["debug"]:
        import traceback

        traceback.print_exc()
    typer.echo(" ".join(line.split()), err=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
