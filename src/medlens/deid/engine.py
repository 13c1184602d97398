"""Apply a :class:`~medlens.deid.profile.Profile` to one pydicom dataset.

* Every attribute Table E.1-1 lists gets its action wherever it occurs, inside sequences too.
* UIDs become ``2.25.<n>`` where ``n`` is a keyed hash (HMAC-SHA256) of the original UID, laid
  out as a UUID version 8: the same UID maps to the same new UID in every file and on every run
  with the same key, so studies, series and references stay together. Without the key the
  mapping cannot be reversed or recomputed.
* Patient Name and Patient ID become a pseudonym from the same key and the original Patient ID
  (:func:`patient_key`); with dates shifted, one patient's dates all move by the same whole number
  of days (between 1 and 10 years back), so intervals between studies are kept.
* Beyond the table (the standard allows a de-identifier to protect more): any other attribute
  whose VR is PN is emptied, other DA/DT attributes follow the date option, and other UI
  attributes holding an instance UID (not a SOP Class, Transfer Syntax or other UID the standard
  defines) are replaced like the listed ones.

The walk touches only what it changes: attributes not in the table keep their raw bytes, so the
Pixel Data is written back bit for bit.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from medlens.deid.profile import Profile, iod_of, resolve_compound, safe_private

__all__ = ["AuditEntry", "Deidentifier", "Outcome"]

_STRINGS = {"LO", "SH", "LT", "ST", "UT", "UC", "CS"}
_DUMMY = {
    "PN": "ANONYMOUS", "AE": "ANONYMOUS", "DA": "19000101", "TM": "000000",
    "DT": "19000101000000", "AS": "000D", "IS": "0", "DS": "0", "UR": "http://anonymous",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0,
}  # fmt: skip
_KEEP_UI_KEYWORDS = {
    "TransferSyntaxUID", "ImplementationClassUID", "CodingSchemeUID", "ContextUID",
    "PrivateInformationCreatorUID", "ContextGroupExtensionCreatorUID", "MappingResourceUID",
    "TemplateExtensionOrganizationUID",
}  # fmt: skip
_PSEUDONYM_KEYWORDS = {"PatientName", "PatientID"}
_DAY = dt.timedelta(days=1)


@dataclass
class AuditEntry:
    """One action taken on one attribute (never its value)."""

    path: str  # tags from the top level, e.g. (0008,1140)[0](0008,1155)
    keyword: str
    action: str  # removed, emptied, dummy, uid, pseudonym, date-shifted, kept, ...


@dataclass
class Outcome:
    """What de-identifying one dataset did."""

    entries: list[AuditEntry] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    patient: tuple[str, str, str, int] | None = None  # (id, name, pseudonym, shift days)

    def log(self, path: str, keyword: str, action: str) -> None:
        self.entries.append(AuditEntry(path, keyword, action))
        self.counts[action] += 1


class Deidentifier:
    """De-identify pydicom datasets in place with one profile and one secret key.

    Args:
        profile: the Basic Profile and its Options.
        key: secret bytes (at least 16) for UIDs, pseudonyms and date shifts; the same key gives
            the same outputs on every run. None draws a random key for this object only.
    """

    def __init__(self, profile: Profile | None = None, key: bytes | None = None) -> None:
        self.profile = profile or Profile()
        if key is None:
            key = secrets.token_bytes(32)
        if len(key) < 16:
            raise ValueError("the key must hold at least 16 bytes")
        self.key = bytes(key)
        self.rules = self.profile.rules()
        self._safe = safe_private() if self.rules.private == "SAFE" else {}
        self._uids: dict[str, str] = {}

    def __getstate__(self) -> dict:  # worker processes rebuild their caches
        return {"profile": self.profile, "key": self.key}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["profile"], state["key"])

    # -- keyed replacements ---------------------------------------------------------------
    def _digest(self, kind: str, text: str) -> bytes:
        return hmac.new(self.key, f"{kind}\0{text}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """The replacement of one UID: ``2.25.`` and a keyed UUID (version 8) as an integer."""
        value = str(value).strip().rstrip("\0")
        found = self._uids.get(value)
        if found is None:
            raw = bytearray(self._digest("uid", value)[:16])
            raw[6] = (raw[6] & 0x0F) | 0x80  # version 8 (custom)
            raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
            found = f"2.25.{int.from_bytes(raw, 'big')}"
            if len(self._uids) > 1_000_000:
                self._uids.clear()
            self._uids[value] = found
        return found

    def pseudonym(self, patient: str) -> str:
        """Patient Name and Patient ID of a de-identified patient (16 characters)."""
        return "ANON-" + base64.b32encode(self._digest("patient", patient)[:10]).decode()[:11]

    def shift_days(self, patient: str) -> int:
        """Days (negative: between 1 and 10 years back) that one patient's dates move."""
        number = int.from_bytes(self._digest("dates", patient)[:4], "big")
        return -(365 + number % 3288)

    # -- datasets ---------------------------------------------------------------------------
    def dataset(self, ds) -> Outcome:
        """De-identify ``ds`` (a pydicom Dataset) in place; returns what was done."""
        outcome = Outcome()
        patient = patient_key(ds)
        shift = self.shift_days(patient)
        pseudonym = self.pseudonym(patient)
        outcome.patient = (
            str(ds.get("PatientID", "") or ""),
            str(ds.get("PatientName", "") or ""),
            pseudonym,
            shift if self.profile.dates == "shift" else 0,
        )
        meta = getattr(ds, "file_meta", None) or {}
        sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        context = _Context(iod_of(sop_class), pseudonym, shift, outcome)
        self.clean(ds, context, None, "")
        self.mark(ds, outcome)
        return outcome

    def mark(self, ds, outcome: Outcome) -> None:
        """Add the attributes that record the de-identification (PS3.15 E.1.1, E.3.6)."""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = self.profile.description
        items = []
        for code, meaning in self.profile.codes:
            item = Dataset()
            item.CodeValue = code
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = self.profile.longitudinal
        for keyword in (
            "PatientIdentityRemoved",
            "DeidentificationMethod",
            "DeidentificationMethodCodeSequence",
            "LongitudinalTemporalInformationModified",
        ):
            outcome.log(_tag_text(ds.data_element(keyword).tag), keyword, "added")

    def clean(self, ds, context: _Context, parent: str | None, prefix: str) -> None:
        """Apply the profile to every attribute of ``ds`` (an item when ``parent`` is set)."""
        rules = self.rules
        creators: dict[int, bool] = {}
        for tag in list(ds.keys()):
            tag = int(tag)
            group, element = tag >> 16, tag & 0xFFFF
            if group & 1:
                self._private(ds, tag, creators, context, prefix)
                continue
            if element == 0 or group == 0x0002:  # group lengths go stale; meta is rebuilt
                del ds[tag]
                continue
            action = rules.action(tag)
            listed = action is not None
            if action is None:
                action = self._unlisted(ds, tag)
                if action is None:  # kept as is, unless damaged (judged on the raw bytes)
                    if not _damaged(ds.get_item(tag), tag):
                        continue
                    action = "K"
            self._apply(ds, tag, action, listed, context, parent, prefix)
        for tag, keep in creators.items():
            if not keep and tag in ds:
                del ds[tag]

    def _unlisted(self, ds, tag: int) -> str | None:
        if not _in_dictionary(tag):  # a public tag the standard does not define (a vendor's
            return "X"  # misuse, or damage): nothing says it is safe, so it goes
        raw = ds.get_item(tag)
        vr = raw.VR if raw.VR not in (None, "UN") else _dictionary_vr(tag)
        if vr == "SQ":
            return "K"
        if vr == "PN":
            return "Z"
        if vr in ("DA", "DT"):
            return {"remove": "Z", "keep": "K", "shift": "SHIFT"}[self.profile.dates]
        if vr == "UI" and "uids" not in self.profile.retain:
            keyword = _keyword(tag)
            if keyword.endswith("ClassUID") or keyword in _KEEP_UI_KEYWORDS:
                return None
            value = ds[tag].value
            values = [value] if isinstance(value, str) else list(value or [])
            if all(_standard_uid(str(v)) for v in values if v):
                return None
            return "U"
        return None

    def _apply(self, ds, tag, action, listed, context, parent, prefix) -> None:
        element = ds[tag]
        keyword = element.keyword or _tag_text(tag)
        path = prefix + _tag_text(tag)
        outcome = context.outcome
        if "/" in action:
            action = resolve_compound(action, context.iod, keyword, parent)
        vr = element.VR
        if action == "SHIFT":
            if vr in ("DA", "DT"):
                self._shift(element, context, path)
                return
            if vr == "TM":  # whole-day shifts keep the times of day (SUV, DCE timing)
                outcome.log(path, keyword, "kept")
                return
            action = self._basic(tag, context, keyword, parent)
        if action == "X":
            del ds[tag]
            outcome.log(path, keyword, "removed")
        elif action == "K" or (action in ("D", "U") and vr == "SQ"):
            if vr == "SQ":
                for index, item in enumerate(element.value):
                    self.clean(item, context, keyword, f"{path}[{index}]")
            elif _damaged(element, tag):  # a value its VR cannot hold: a length or bytes gone wrong
                if vr == "UI":  # can swallow the elements after it; kept, it would leak them
                    self._replace_uids(element)
                    outcome.log(path, keyword, "uid")
                else:
                    del ds[tag]
                    outcome.log(path, keyword, "removed")
                return
            if listed and action == "K":
                outcome.log(path, keyword, "kept")
        elif action == "Z":
            if keyword in _PSEUDONYM_KEYWORDS and parent in (None, "DirectoryRecordSequence"):
                element.value = context.pseudonym
                outcome.log(path, keyword, "pseudonym")
            else:
                element.value = _empty(vr)
                outcome.log(path, keyword, "emptied")
        elif action == "D":
            if keyword in _PSEUDONYM_KEYWORDS:
                element.value = context.pseudonym
                outcome.log(path, keyword, "pseudonym")
            elif vr == "UI":
                self._replace_uids(element)
                outcome.log(path, keyword, "uid")
            else:
                element.value = _DUMMY.get(vr, "ANONYMIZED" if vr in _STRINGS else b"\0\0")
                outcome.log(path, keyword, "dummy")
        elif action == "U":
            if vr == "UI":
                self._replace_uids(element)
                outcome.log(path, keyword, "uid")
            else:  # a U on another VR (never in the table): remove to be safe
                del ds[tag]
                outcome.log(path, keyword, "removed")
        else:  # pragma: no cover - the table has no other action
            raise ValueError(f"unknown de-identification action {action!r} for {keyword}")

    def _basic(self, tag: int, context: _Context, keyword: str, parent: str | None) -> str:
        """The Basic Profile's own action (where an Option's C cannot be applied)."""
        action = Profile().rules().action(tag) or "X"
        if "/" in action:
            action = resolve_compound(action, context.iod, keyword, parent)
        return action

    def _replace_uids(self, element) -> None:
        value = element.value
        if isinstance(value, str):
            element.value = self.uid(value) if value.strip("\0 ") else value
        elif value is not None:
            element.value = [self.uid(v) if str(v).strip("\0 ") else v for v in value]

    def _shift(self, element, context: _Context, path: str) -> None:
        value = element.value
        values = [value] if isinstance(value, str) else list(value or [])
        shifted = [_shift_date(str(v), context.shift, element.VR) for v in values]
        if any(v is None for v in shifted):  # an unreadable date cannot be kept
            element.value = ""
            context.outcome.log(path, element.keyword, "emptied")
            return
        element.value = shifted[0] if isinstance(value, str) else shifted
        context.outcome.log(path, element.keyword, "date-shifted")

    def _private(self, ds, tag: int, creators: dict[int, bool], context, prefix: str) -> None:
        group, element = tag >> 16, tag & 0xFFFF
        path = prefix + _tag_text(tag)
        if 0x0010 <= element <= 0x00FF:  # a private creator: kept only for retained elements
            creators.setdefault(tag, False)
            return
        if self._safe and element >= 0x1000:
            creator_tag = (group << 16) | (element >> 8)
            creator = ds.get(creator_tag)
            name = str(creator.value).strip() if creator is not None else ""
            allowed = self._safe.get((group, name), ())
            if element & 0xFF in allowed and ds.get_item(tag).VR != "SQ":
                creators[creator_tag] = True
                context.outcome.log(path, f"{name}:{element & 0xFF:02X}", "kept-safe-private")
                return
        del ds[tag]
        context.private_removed(prefix, group)


@dataclass
class _Context:
    iod: str | None
    pseudonym: str
    shift: int
    outcome: Outcome
    _private: dict[tuple[str, int], AuditEntry] = field(default_factory=dict)

    def private_removed(self, prefix: str, group: int) -> None:
        """Log removed private attributes once per group and level, with their number."""
        self.outcome.counts["removed"] += 1
        entry = self._private.get((prefix, group))
        if entry is None:
            entry = AuditEntry(f"{prefix}({group:04X},xxxx)", "private (1)", "removed")
            self._private[(prefix, group)] = entry
            self.outcome.entries.append(entry)
        else:
            count = int(entry.keyword[9:-1]) + 1
            entry.keyword = f"private ({count})"


def patient_key(ds) -> str:
    """What identifies a patient across files: the Patient ID (or, without one, the name).

    Issuer of Patient ID is left out on purpose: DICOMDIR patient records do not carry it, and
    the records' pseudonyms must match the instances'. (Two patients with the same ID from two
    issuers in one export would share a pseudonym.)
    """
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if patient_id:
        return f"id\\{patient_id}"
    return f"name\\{str(ds.get('PatientName', '') or '').strip()}"


def _empty(vr: str):
    """A zero-length value for ``vr``."""
    if vr == "SQ":
        return []
    return "" if vr in _STRINGS or isinstance(_DUMMY.get(vr), str) else None


def _shift_date(value: str, days: int, vr: str) -> str | None:
    text = value.strip()
    if not text:
        return text
    try:
        day = dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
    except (ValueError, IndexError):
        return None
    moved = (day + days * _DAY).strftime("%Y%m%d")
    return moved + text[8:] if vr == "DT" else moved


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or ""


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "SH", "LO", "TM", "UI"})
_TOO_LONG = 256  # bytes: far past any of these VRs' limits (64 at most); real files exceed
# the limits by a little (a 20-character SH), damage by a lot
_CONTROL = re.compile(rb"[\x00-\x1a\x1c-\x1f]")  # ESC (0x1b) switches character sets
_UID = re.compile(rb"[0-9]+(\.[0-9]+)*")


def _damaged(element, tag: int) -> bool:
    """Whether a kept value cannot be what its VR says (control characters, far too long, a UID
    that is not one): such a value is damage, and may hold the bytes of the elements that
    followed it. Raw elements are judged on their bytes, without being converted."""
    vr = element.VR if element.VR not in (None, "UN") else _dictionary_vr(tag)
    if vr not in _TEXT_VRS:
        return False
    value = element.value
    if value is None:
        return False
    if not isinstance(value, bytes):  # a converted element: back to text
        single = isinstance(value, str) or not hasattr(value, "__iter__")
        value = "\\".join(str(v) for v in ([value] if single else value)).encode(
            "latin-1", "replace"
        )
    value = value.rstrip(b"\0 ")
    if len(value) > _TOO_LONG or _CONTROL.search(value):
        return True
    if vr == "UI":
        return any(v.strip(b"\0 ") and not _UID.fullmatch(v.strip(b"\0 "))
                   for v in value.split(b"\\"))  # fmt: skip
    return False


def _in_dictionary(tag: int) -> bool:
    """Whether PS3.6 defines ``tag`` (repeating groups such as 60xx included)."""
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True


def _standard_uid(value: str) -> bool:
    return value.strip("\0 ") in UID_dictionary
