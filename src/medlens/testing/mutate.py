"""Mutators for the fuzz harness: bytes, text tokens, XML, JSON, and structured DICOM/NIfTI/PNG.

Every mutator takes the bytes of one file and a :class:`random.Random` and returns new bytes and
a short description (``"dicom:UID=..."``), so a failing case can be named and replayed from its
seed. Here: bytes (flips, inserts, deletions, truncation, splices of other seeds), text tokens and
lines, XML elements (and entity bombs) and JSON values; the structured DICOM, NIfTI, PNG, NumPy,
TIFF and BMP mutators are in :mod:`medlens.testing.mutate_formats`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable

__all__ = ["family_of", "mutate_file"]

TRAVERSALS = (
    "../../x/ESCAPED",
    "..\\..\\x\\ESCAPED",
    "/tmp/ESCAPED",
    "a/../../../ESCAPED",
    "..",
    ".",
    "",
    "ESCAPED\0.dcm",
    "x" * 300,
    "C:\\ESCAPED",
    "~/ESCAPED",
)
NUMBERS = (
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "1e309",
    "-1",
    "0",
    "-0",
    "",
    " ",
    "1e38",
    "2147483648",
    "4294967296",
    "99999999999999999999",
    "0x10",
    "1,5",
    "abc",
    "1e-320",
    "١٢",
)
INTS = (
    0,
    1,
    -1,
    2,
    3,
    7,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
)


def family_of(name: str, data: bytes) -> str:
    """The mutation family of a file: dicom, nifti, png, tiff, bmp, npy, npz, json, csv, xml,
    text, or binary."""
    lower = name.lower()
    if data[128:132] == b"DICM" or lower.endswith(("dicomdir", ".dcm")):
        return "dicom"
    if lower.endswith((".nii", ".nii.gz")):
        return "nifti"
    for suffix, kind in (
        (".png", "png"),
        (".tif", "tiff"),
        (".tiff", "tiff"),
        (".bmp", "bmp"),
        (".npy", "npy"),
        (".npz", "npz"),
        (".json", "json"),
        (".csv", "csv"),
        (".xml", "xml"),
        (".txt", "text"),
    ):
        if lower.endswith(suffix):
            return kind
    return "binary"


def mutate_file(
    name: str, data: bytes, rng: random.Random, others: list[bytes]
) -> tuple[bytes, str]:
    """One mutation of ``data`` (the file ``name``); ``others``: chunks to splice from."""
    import warnings

    from medlens.testing.mutate_formats import STRUCTURED

    family = family_of(name, data)
    structured = STRUCTURED.get(family) or _GENERIC.get(family, [])
    if structured and rng.random() < 0.6:
        mutator = rng.choice(structured)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's notes on the values written
                out, what = mutator(data, rng)
            return out, f"{family}:{what}"
        except Exception:  # the seed did not suit this mutator: mutate its bytes instead
            pass
    out, what = _bytes(data, rng, others)
    return out, f"bytes:{what}"


# --------------------------------------------------------------------------------- bytes
def _bytes(data: bytes, rng: random.Random, others: list[bytes]) -> tuple[bytes, str]:
    buf = bytearray(data)
    choice = rng.randrange(8)
    if not buf or choice == 0:
        cut = (
            rng.randrange(len(buf) + 1)
            if rng.random() < 0.8
            else rng.randrange(min(len(buf), 400) + 1)
        )
        return bytes(buf[:cut]), f"truncate@{cut}"
    at = _offset(buf, rng)
    if choice == 1:
        for _ in range(rng.randint(1, 8)):
            i = _offset(buf, rng)
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf), "bitflip"
    if choice == 2:
        size = rng.choice((1, 2, 4))
        value = rng.choice(INTS) & ((1 << (8 * size)) - 1)
        buf[at : at + size] = value.to_bytes(size, rng.choice(("little", "big")))
        return bytes(buf), f"int{size * 8}@{at}={value:#x}"
    if choice == 3:
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        buf[at:at] = chunk
        return bytes(buf), f"insert@{at}+{len(chunk)}"
    if choice == 4:
        size = rng.randint(1, max(1, len(buf) // 8))
        del buf[at : at + size]
        return bytes(buf), f"delete@{at}-{size}"
    if choice == 5 and others:
        other = rng.choice(others)
        start = rng.randrange(max(1, len(other)))
        chunk = other[start : start + rng.randint(1, 4096)]
        buf[at : at + len(chunk)] = chunk
        return bytes(buf), f"splice@{at}+{len(chunk)}"
    if choice == 6:
        start = _offset(buf, rng)
        chunk = buf[start : start + rng.randint(1, 512)]
        buf[at:at] = chunk * rng.randint(1, 8)
        return bytes(buf), f"repeat@{at}"
    for _ in range(rng.randint(1, 16)):
        buf[_offset(buf, rng)] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x2E, 0x2F, 0x5C))
    return bytes(buf), "bytes"


def _offset(buf: bytes | bytearray, rng: random.Random) -> int:
    """A random offset, biased towards the header where parsers decide the most."""
    if rng.random() < 0.6:
        return rng.randrange(min(len(buf), 1024) or 1)
    return rng.randrange(len(buf) or 1)


# --------------------------------------------------------------------------------- text
def _text(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    text = data.decode("utf-8", "surrogateescape")
    lines = text.splitlines(keepends=True)
    choice = rng.randrange(7)
    if choice == 0 and lines:
        numbers = list(re.finditer(r"-?\d+(?:\.\d+)?", text))
        if numbers:
            hit = rng.choice(numbers)
            token = rng.choice(NUMBERS + TRAVERSALS[:2])
            return _join(text[: hit.start()] + token + text[hit.end() :]), f"number={token!r}"
    if choice == 1 and lines:
        i = rng.randrange(len(lines))
        lines[i:i] = [lines[i]] * rng.randint(1, 3)
        return _join("".join(lines)), "duplicate-line"
    if choice == 2 and lines:
        keep = rng.randint(0, min(3, len(lines)))
        if rng.random() < 0.5:
            return _join("".join(lines[:keep])), f"keep-{keep}-lines"
        del lines[rng.randrange(len(lines))]
        return _join("".join(lines)), "delete-line"
    if choice == 3:
        extra = rng.choice(("\0", "\ufeff", "\r", "\t", '"', "'", ",", ";", " 7", "\u2028", "\x85"))
        at = rng.randrange(len(text) + 1)
        return _join(text[:at] + extra + text[at:]), f"insert-char {extra!r}"
    if choice == 4:
        tokens = list(re.finditer(r"[^\s,;<>]+", text))
        if tokens:
            hit = rng.choice(tokens)
            token = rng.choice(TRAVERSALS)
            return _join(text[: hit.start()] + token + text[hit.end() :]), f"token={token!r}"
    if choice == 5:
        return _join(text.replace("\n", rng.choice(("\r\n", "\r", "\n\n")))), "newlines"
    if choice == 6 and lines:
        return (text * rng.randint(2, 50)).encode("utf-8", "surrogateescape"), "repeat"
    return data + rng.choice((b"\xff\xfe", b"\x80", b"\n1 2 3\n")), "bad-bytes"


def _join(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------- XML
BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [\n <!ENTITY a "aaaaaaaaaa">\n'
    + "".join(
        f' <!ENTITY {c} "{("&" + p + ";") * 10}">\n'
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "]>\n"
)
EXTERNAL = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
)


def _xml(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    import xml.etree.ElementTree as ET  # the seed is a trusted real file

    root = ET.fromstring(data)
    elements = list(root.iter())
    choice = rng.randrange(7)
    if choice == 0:
        parent = rng.choice([e for e in elements if len(e)] or [root])
        child = rng.choice(list(parent)) if len(parent) else None
        if child is not None:
            parent.remove(child)
            return ET.tostring(root), f"delete <{child.tag}>"
    if choice == 1:
        parent = rng.choice([e for e in elements if len(e)] or [root])
        if len(parent):
            child = rng.choice(list(parent))
            for _ in range(rng.randint(1, 50)):
                parent.append(child)
            return ET.tostring(root), f"duplicate <{child.tag}>"
    if choice in (2, 3):
        leaves = [e for e in elements if not len(e)]
        leaf = rng.choice(leaves)
        leaf.text = rng.choice(NUMBERS + TRAVERSALS)
        return ET.tostring(root), f"<{leaf.tag}>={leaf.text!r}"
    if choice == 4:
        body = ET.tostring(root).decode()
        prolog = rng.choice((BOMB, EXTERNAL))
        body = body.replace("<filename>", "<filename>&" + ("i" if prolog is BOMB else "x") + ";", 1)
        return (prolog + body).encode(), "entity-bomb" if prolog is BOMB else "external-entity"
    if choice == 5:
        depth = rng.choice((100, 5000, 100000))
        body = ET.tostring(root).decode()
        nest = "<a>" * depth + "</a>" * depth
        return body.replace("</annotation>", nest + "</annotation>").encode(), f"nest-{depth}"
    root.tag = rng.choice(("annotations", "Annotation", "svg", "annotation "))
    return ET.tostring(root), "root-tag"


# --------------------------------------------------------------------------------- JSON
def _json(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    spec = json.loads(data)
    if rng.random() < 0.1:
        depth = rng.choice((100, 100000))
        return ("[" * depth + "]" * depth).encode(), f"nest-{depth}"
    nodes: list[tuple[object, object]] = []  # (container, key)

    def walk(node) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            nodes.append((node, key))
            if isinstance(value, (dict, list)):
                walk(value)

    walk(spec)
    container, key = rng.choice(nodes) if nodes else (spec, None)
    choice = rng.randrange(4)
    if key is None:
        spec = rng.choice(([], "text", 3, None))
        what = "top-level"
    elif choice == 0:
        value = rng.choice(
            (
                float("nan"),
                float("inf"),
                -1,
                10**400,
                1e308,
                "",
                None,
                [],
                {},
                True,
                "1",
                *TRAVERSALS,
            )
        )
        container[key] = value
        what = f"{key}={value!r}"[:60]
    elif choice == 1:
        del container[key]
        what = f"delete {key}"
    elif choice == 2 and isinstance(container, list):
        container.extend([container[key]] * rng.randint(1, 3))
        what = "duplicate item"
    else:
        value = container[key]
        container[key] = str(value) if not isinstance(value, str) else {"path": value}
        what = f"retype {key}"
    return json.dumps(spec, allow_nan=True).encode(), what


_GENERIC: dict[str, list[Callable[[bytes, random.Random], tuple[bytes, str]]]] = {
    "json": [_json, _text],
    "csv": [_text],
    "xml": [_xml, _xml, _text],
    "text": [_text],
}
