"""Generate medlens's de-identification tables from the DICOM standard's own sources.

Run it when a new edition of the standard is adopted; its outputs are committed under
``src/medlens/deid/tables`` and read at run time (nothing here runs in tests or at import)::

    python tools/deid_tables.py part15.xml --edition 2023b

``part15.xml`` is PS3.15 in DocBook form, as NEMA publishes it at
``https://dicom.nema.org/medical/dicom/<edition>/source/docbook/part15/part15.xml``. Two CSV
files come from it:

* ``ps3.15-<edition>-table-e.1-1.csv``: Table E.1-1, one row per attribute, with its Basic
  Profile action and the action of each Option column;
* ``ps3.15-<edition>-table-e.3.10-1.csv``: Table E.3.10-1, the private attributes the standard
  lists as safe (the Retain Safe Private Option).

The compound actions of Table E.1-1 (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``) depend on
the attribute's Type in the instance's IOD. ``iod-types.json`` holds, for just those attributes,
their Type in each Composite IOD, read from the PS3.3 module tables that highdicom ships as data
(``highdicom/_standard``), with the map from SOP Class UID to IOD.
"""

from __future__ import annotations

import argparse
import csv
import json
import pkgutil
import xml.etree.ElementTree as ET
from pathlib import Path

DOCBOOK = "{http://docbook.org/ns/docbook}"
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
OUT = Path(__file__).resolve().parents[1] / "src" / "medlens" / "deid" / "tables"
E11_COLUMNS = [
    "name", "tag", "retired", "in_std_iod", "basic", "safe_private", "uids", "device",
    "institution", "patient_characteristics", "full_dates", "modified_dates",
    "clean_descriptions", "clean_structured_content", "clean_graphics",
]  # fmt: skip
E3101_COLUMNS = ["tag", "private_creator", "vr", "vm", "meaning"]
STRICTNESS = {"1": 3, "1C": 3, "2": 2, "2C": 2, "3": 1}


def _text(element: ET.Element) -> str:
    return " ".join(" ".join(element.itertext()).split())


def _table(root: ET.Element, xml_id: str) -> list[list[str]]:
    for table in root.iter(f"{DOCBOOK}table"):
        if table.get(XML_ID) == xml_id:
            rows = [[_text(cell) for cell in row] for row in table.iter(f"{DOCBOOK}tr")]
            return rows[1:]  # the header row
    raise SystemExit(f"{xml_id} not found: is this PS3.15 in DocBook form?")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)")


def _compound_types(table_e11: list[list[str]]) -> dict:
    """Type of each compound-action attribute per IOD (strictest over the IOD's modules)."""
    from pydicom.datadict import keyword_for_tag

    def load(name: str) -> dict:
        data = pkgutil.get_data("highdicom", f"_standard/{name}")
        if data is None:
            raise SystemExit(f"highdicom has no _standard/{name}")
        return json.loads(data)

    wanted = set()
    for row in table_e11:
        if "/" in row[4] and "x" not in row[1].lower():
            wanted.add(keyword_for_tag(int(row[1][1:5] + row[1][6:10], 16)))
    modules, iods = load("module_attribute_map.json"), load("iod_module_map.json")
    types: dict[str, dict[str, str]] = {}
    for iod, entries in iods.items():
        found: dict[str, str] = {}
        for entry in entries:
            for attribute in modules.get(entry["key"], []):
                if attribute["keyword"] not in wanted:
                    continue
                key = ">".join([*attribute["path"][-1:], attribute["keyword"]])
                old = found.get(key)
                if old is None or STRICTNESS[attribute["type"]] > STRICTNESS[old]:
                    found[key] = attribute["type"]
        # Type 3 (or absent) resolves like an unknown attribute, so only Types 1 and 2 are kept
        types[iod] = {key: found[key] for key in sorted(found) if found[key] != "3"}
    import highdicom

    return {
        "source": f"PS3.3 module tables as shipped by highdicom {highdicom.__version__}",
        "note": (
            "Types 1, 1C, 2 and 2C only (anything else resolves as Type 3); key: 'Keyword' at "
            "the top level, 'Sequence>Keyword' inside a sequence's items"
        ),
        "sop_class_iod": load("sop_class_iod_map.json"),
        "types": types,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part15", type=Path, help="PS3.15 DocBook XML (part15.xml)")
    parser.add_argument("--edition", required=True, help="edition of that file, e.g. 2023b")
    args = parser.parse_args()
    root = ET.parse(args.part15).getroot()
    e11 = _table(root, "table_E.1-1")
    if any(len(row) != len(E11_COLUMNS) for row in e11):
        raise SystemExit("Table E.1-1 does not have the expected 15 columns")
    e3101 = _table(root, "table_E.3.10-1")
    OUT.mkdir(parents=True, exist_ok=True)
    _write_csv(OUT / f"ps3.15-{args.edition}-table-e.1-1.csv", E11_COLUMNS, e11)
    _write_csv(OUT / f"ps3.15-{args.edition}-table-e.3.10-1.csv", E3101_COLUMNS, e3101)
    path = OUT / "iod-types.json"
    path.write_text(json.dumps(_compound_types(e11), indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
