"""``medlens anonymize``: DICOM de-identification to PS3.15 Annex E (and NIfTI header text)."""

from __future__ import annotations

from pathlib import Path

import typer


def anonymize(
    input: Path = typer.Argument(..., help="A DICOM or NIfTI file, a folder tree or a DICOMDIR."),
    output: Path = typer.Argument(
        ..., help="Output folder (for one input file: a .dcm/.nii/.nii.gz file path)."
    ),
    profile: str = typer.Option(
        "basic", "--profile", help="Confidentiality profile: basic (PS3.15 Table E.1-1)."
    ),
    keep_dates: bool = typer.Option(
        False, "--keep-dates", help="Retain Longitudinal Temporal Information, Full Dates."
    ),
    shift_dates: bool = typer.Option(
        False,
        "--shift-dates",
        help="Retain Longitudinal Temporal Information, Modified Dates: each patient's dates "
        "move by the same whole number of days (from the key).",
    ),
    keep_private: str = typer.Option(
        "none",
        "--keep-private",
        help="none: remove every private attribute; safe: keep those PS3.15 Table E.3.10-1 lists.",
    ),
    retain: list[str] = typer.Option(
        [],
        "--retain",
        help="Further Retain Options: uids, device, institution, patient-characteristics "
        "(repeatable).",
    ),
    key: Path | None = typer.Option(
        None,
        "--key",
        help="Secret key file (>= 16 bytes): same key, same UIDs, pseudonyms and date shifts on "
        "every run. Without it a random key is used.",
    ),
    mapping: Path | None = typer.Option(
        None, "--map", help="Write pseudonym -> original Patient ID/Name (and date shift) here."
    ),
    allow_burned_in: bool = typer.Option(
        False,
        "--allow-burned-in",
        help="Also write images that may carry burned-in text (their pixels are not cleaned).",
    ),
    layout: str = typer.Option(
        "uids",
        "--layout",
        help="uids: OUTPUT/<pseudonym>/<study>/<series>/<instance>.dcm; keep: the input's "
        "relative paths (file names are not de-identified).",
    ),
    audit: Path | None = typer.Option(
        None, "--audit", help="Audit log CSV (default: OUTPUT.audit.csv, beside the output)."
    ),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Worker processes."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """De-identify DICOM to the Basic Application Level Confidentiality Profile (PS3.15 E).

    The input is never modified. Files that fail, are not DICOM or may carry burned-in text
    are reported and the rest go on; the exit code is 1 if any file failed.
    """
    import json

    from medlens.deid import Profile, anonymize, read_key
    from medlens.deid.run import print_summary
    from medlens.errors import MedlensError

    if profile != "basic":
        raise MedlensError(f"unknown profile {profile!r}; the one offered is basic")
    if keep_dates and shift_dates:
        raise MedlensError("--keep-dates and --shift-dates exclude each other")
    if keep_private not in ("none", "safe"):
        raise MedlensError(f"--keep-private must be none or safe, not {keep_private!r}")
    if layout not in ("uids", "keep"):
        raise MedlensError(f"--layout must be uids or keep, not {layout!r}")
    options = [name.replace("-", "_") for name in retain]
    try:
        chosen = Profile(
            dates="keep" if keep_dates else "shift" if shift_dates else "remove",
            private=keep_private,  # type: ignore[arg-type]
            retain=frozenset(options),
        )
    except ValueError as exc:
        raise MedlensError(str(exc)) from None
    secret = read_key(key) if key is not None else None
    summary = anonymize(
        input,
        output,
        profile=chosen,
        key=secret,
        mapping=mapping,
        audit=audit,
        allow_burned_in=allow_burned_in,
        layout=layout,  # type: ignore[arg-type]
        workers=workers,
        progress=not json_out,
    )
    if json_out:
        typer.echo(json.dumps(summary.as_dict()))
    else:
        print_summary(summary)
    if secret is None:  # after the run: a refused run (a non-empty export) says one line only
        typer.echo(
            "note: no --key given: UIDs, pseudonyms and date shifts are random for this run",
            err=True,
        )
    if summary.failed or (summary.written == 0 and summary.files > 0 and not summary.skipped):
        raise typer.Exit(1)
