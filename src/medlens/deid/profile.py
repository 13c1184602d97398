"""The Basic Application Level Confidentiality Profile of DICOM PS3.15 Annex E, as data.

Table E.1-1 (the action for every listed attribute under the Basic Profile and each Option) and
Table E.3.10-1 (private attributes known to be safe) are read from CSV files generated from the
standard's own DocBook source by ``tools/deid_tables.py``; :data:`EDITION` names the edition.

A :class:`Profile` is the Basic Profile plus the Options a user chose. It resolves each tag to
one action:

* ``X`` remove, ``Z`` empty, ``D`` dummy value, ``K`` keep, ``U`` keyed UID replacement;
* ``SHIFT``: the ``C`` of the Retain Longitudinal Temporal Information with Modified Dates
  Option, i.e. dates moved by a per-patient number of days;
* compound actions (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``) are resolved per instance
  by the attribute's Type in the instance's IOD (:func:`resolve_compound`).

The other Options' ``C`` ("clean": replace free text with values of similar meaning) needs
knowledge of what the text says; medlens does not guess, and applies the Basic Profile's action
there instead, which removes at least as much.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Literal

__all__ = [
    "EDITION",
    "METHOD_CODES",
    "OPTIONS",
    "Profile",
    "Rules",
    "resolve_compound",
]

EDITION = "2023b"
"""Edition of DICOM PS3.15 whose Tables E.1-1 and E.3.10-1 medlens applies."""

OPTIONS = {
    "safe_private": ("113111", "Retain Safe Private Option"),
    "uids": ("113110", "Retain UIDs Option"),
    "device": ("113109", "Retain Device Identity Option"),
    "institution": ("113112", "Retain Institution Identity Option"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
}
"""The Options medlens applies: Table E.1-1 column -> (code of CID 7050, code meaning)."""

METHOD_CODES = {"basic": ("113100", "Basic Application Confidentiality Profile")}
RETAIN_CHOICES = ("uids", "device", "institution", "patient_characteristics")
_STRICT = {"1": 1, "1C": 1, "2": 2, "2C": 2}


@dataclass(frozen=True)
class Rules:
    """Resolved actions of one :class:`Profile`, looked up by tag."""

    exact: dict[int, str]
    overlay: dict[int, str]  # element -> action, for the repeating groups 60xx
    curve: str | None  # action for every element of the repeating groups 50xx
    private: str  # "X", or "SAFE" to keep the attributes of Table E.3.10-1
    names: dict[int, str]  # tag -> attribute name as the standard spells it

    def action(self, tag: int) -> str | None:
        """The action for ``tag``, or None where Table E.1-1 does not list it."""
        found = self.exact.get(tag)
        if found is not None:
            return found
        group = tag >> 16
        if group & 0xFF01 == 0x6000:  # an overlay plane goes with its data (60xx,3000)
            return self.overlay.get(tag & 0xFFFF, self.overlay.get(0x3000))
        if group & 0xFF01 == 0x5000:
            return self.curve
        return None


@dataclass(frozen=True)
class Profile:
    """The Basic Profile with Options.

    Args:
        dates: ``"remove"`` (Basic Profile), ``"keep"`` (Retain Longitudinal Temporal
            Information with Full Dates) or ``"shift"`` (... with Modified Dates: every date moved
            by the same number of days for one patient).
        private: ``"none"`` removes every private attribute; ``"safe"`` keeps those Table
            E.3.10-1 lists (Retain Safe Private), with their private creators.
        retain: further Retain Options: any of ``uids``, ``device``, ``institution``,
            ``patient_characteristics``.
    """

    dates: Literal["remove", "keep", "shift"] = "remove"
    private: Literal["none", "safe"] = "none"
    retain: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.dates not in ("remove", "keep", "shift"):
            raise ValueError(f"dates must be remove, keep or shift, not {self.dates!r}")
        if self.private not in ("none", "safe"):
            raise ValueError(f"private must be none or safe, not {self.private!r}")
        object.__setattr__(self, "retain", frozenset(self.retain))
        unknown = set(self.retain) - set(RETAIN_CHOICES)
        if unknown:
            raise ValueError(f"unknown Retain Options {sorted(unknown)}; use {RETAIN_CHOICES}")

    @property
    def options(self) -> list[str]:
        """Table E.1-1 option columns applied, in the table's order."""
        chosen = set(self.retain)
        if self.private == "safe":
            chosen.add("safe_private")
        if self.dates == "keep":
            chosen.add("full_dates")
        if self.dates == "shift":
            chosen.add("modified_dates")
        return [name for name in OPTIONS if name in chosen]

    @property
    def codes(self) -> list[tuple[str, str]]:
        """De-identification Method codes (CID 7050) of the profile and its Options."""
        return [METHOD_CODES["basic"]] + [OPTIONS[name] for name in self.options]

    @property
    def description(self) -> list[str]:
        """Values for De-identification Method (0012,0063): LO, at most 64 characters each."""
        from medlens import __version__

        lines = [f"medlens {__version__}", f"DICOM PS3.15 {EDITION} Basic Profile"]
        return lines + [OPTIONS[name][1][:64] for name in self.options]

    @property
    def longitudinal(self) -> str:
        """Value of Longitudinal Temporal Information Modified (0028,0303)."""
        return {"remove": "REMOVED", "keep": "UNMODIFIED", "shift": "MODIFIED"}[self.dates]

    def rules(self) -> Rules:
        return _rules(tuple(self.options))


def _table_path(name: str):
    return resources.files("medlens.deid").joinpath("tables", name)


@lru_cache(maxsize=1)
def table_e11() -> list[dict[str, str]]:
    """Rows of Table E.1-1 (edition :data:`EDITION`) as dictionaries keyed by column."""
    with _table_path(f"ps3.15-{EDITION}-table-e.1-1.csv").open(encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@lru_cache(maxsize=1)
def safe_private() -> dict[tuple[int, str], frozenset[int]]:
    """Table E.3.10-1: (group, private creator) -> element offsets (the ``ee`` of ``xxee``)."""
    found: dict[tuple[int, str], set[int]] = {}
    with _table_path(f"ps3.15-{EDITION}-table-e.3.10-1.csv").open(encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            group, element = row["tag"].strip("()").split(",")
            key = (int(group, 16), row["private_creator"].strip())
            found.setdefault(key, set()).add(int(element[2:], 16))
    return {key: frozenset(value) for key, value in found.items()}


@lru_cache(maxsize=1)
def _iod_types() -> dict:
    with _table_path("iod-types.json").open(encoding="utf-8") as stream:
        return json.load(stream)


def iod_of(sop_class_uid: str | None) -> str | None:
    """The IOD (as named in the PS3.3 module tables) of a SOP Class UID, if known."""
    if not sop_class_uid:
        return None
    return _iod_types()["sop_class_iod"].get(str(sop_class_uid))


def resolve_compound(action: str, iod: str | None, keyword: str, parent: str | None) -> str:
    """Resolve ``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D`` or ``X/Z/U*`` for one occurrence.

    The Type of the attribute in the instance's IOD decides, as Table E.1-1a says: Type 1 needs
    a value (``D``; for ``X/Z/U*`` the sequence is kept with its instance UIDs replaced), Type 2
    may be empty (``Z``), Type 3 is removed (``X``). Inside a sequence the Type is the one
    given for the attribute within that sequence. An unknown IOD or an attribute the IOD does
    not define counts as Type 3: nothing requires it to be there.
    """
    choices = action.rstrip("*").split("/")
    level = 3
    if iod is not None:
        types = _iod_types()["types"].get(iod, {})
        key = f"{parent}>{keyword}" if parent else keyword
        level = _STRICT.get(types.get(key, "3"), 3)
    if level == 3 and "X" in choices:
        return "X"
    if level >= 2 and "Z" in choices:
        return "Z"
    for choice in ("D", "U", "Z"):
        if choice in choices:
            return choice
    return choices[0]


@lru_cache(maxsize=16)
def _rules(options: tuple[str, ...]) -> Rules:
    exact: dict[int, str] = {}
    overlay: dict[int, str] = {}
    names: dict[int, str] = {}
    curve: str | None = None
    private = "X"
    for row in table_e11():
        action = row["basic"]
        for option in options:
            value = row[option]
            if value == "K":
                action = "K"
            elif value == "C" and option == "modified_dates":
                action = "SHIFT"
            elif value == "C" and option == "safe_private":
                action = "SAFE"
            # any other C (clean free text) keeps the Basic Profile's action: see module doc
        tag_text = row["tag"]
        if tag_text.startswith("(gggg"):
            private = "SAFE" if action == "SAFE" else "X"
            continue
        group_text, element_text = tag_text.strip("()").split(",")
        if group_text.lower() == "50xx":
            curve = action
            continue
        if group_text.lower() == "60xx":
            overlay[int(element_text, 16)] = action
            continue
        tag = int(group_text + element_text, 16)
        exact[tag] = action
        names[tag] = row["name"]
    return Rules(exact=exact, overlay=overlay, curve=curve, private=private, names=names)
