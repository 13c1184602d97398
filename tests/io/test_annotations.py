"""Pascal VOC XML and contour text readers: real BCCD and Sunnybrook files, and broken ones."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as StdTree
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from medlens.cli.main import main
from medlens.errors import ImageReadError
from medlens.io import load_image
from medlens.io._detect import sniff
from medlens.io.annotations import Box, describe_annotation, polygon_area, read_contour, read_voc

CONTOURS = ("sunnybrook", "contourfiles")
VOC = """<annotation>
  <folder>JPEGImages</folder><filename>cells.jpg</filename>
  <size><width>640</width><height>480</height><depth>3</depth></size>
  {objects}
</annotation>"""
OBJECT = """<object><name>{name}</name><truncated>0</truncated><difficult>{difficult}</difficult>
  <bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>
  </bndbox></object>"""


def _voc(tmp_path: Path, *objects: tuple, name: str = "a.xml", text: str | None = None) -> Path:
    body = "".join(
        OBJECT.format(name=obj[0], box=obj[1], difficult=obj[2] if len(obj) > 2 else 0)
        for obj in objects
    )
    path = tmp_path / name
    path.write_text(text if text is not None else VOC.format(objects=body))
    return path


# ---------------------------------------------------------------------------------- real data
def test_every_bccd_annotation_reads_like_the_standard_library(real):
    files = sorted(real("bccd", "Annotations").glob("*.xml"))
    assert len(files) > 200
    classes: dict[str, int] = defaultdict(int)
    for path in files:
        voc = read_voc(path)
        tree = StdTree.parse(path).getroot()  # the real files are trusted: an independent parse
        assert voc.filename == tree.findtext("filename").strip()
        assert voc.size[:2] == (int(tree.findtext("size/width")), int(tree.findtext("size/height")))
        expected = [
            (o.findtext("name"), *(float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin")),
             *(float(o.findtext(f"bndbox/{k}")) for k in ("xmax", "ymax")))
            for o in tree.iter("object")
        ]  # fmt: skip
        assert [(b.name, *b.corners) for b in voc.objects] == expected
        for box in voc.objects:
            classes[box.name] += 1
    assert set(classes) == {"RBC", "WBC", "Platelets"}
    assert classes["RBC"] > classes["WBC"] > 0  # about 13 red cells per image


def test_bccd_first_file(real):
    voc = read_voc(real("bccd", "Annotations", "BloodImage_00000.xml"))
    assert voc.filename == "BloodImage_00000.jpg"
    assert voc.size == (640, 480, 3)
    assert voc.counts() == {"RBC": 19, "WBC": 1}
    assert voc.objects[0] == Box("WBC", 260, 177, 491, 376, difficult=False, truncated=False)
    assert sum(b.truncated for b in voc.objects) == 6


def test_every_sunnybrook_contour_reads(real):
    files = sorted(real(*CONTOURS).glob("*/*-contours/*.txt"))
    assert len(files) > 80
    for path in files:
        points = read_contour(path)
        assert points.dtype == np.float64 and points.ndim == 2 and points.shape[1] == 2
        assert len(points) >= 3
        raw = np.loadtxt(path, dtype=np.float64, ndmin=2)  # an independent reading
        np.testing.assert_array_equal(points, raw)
        assert np.all((points >= 0) & (points < 256))  # on the 256x256 images


def test_contour_area_matches_rasterised_pixel_count(real):
    """The shoelace area against two other ways: the trapezoid form of Green's theorem, and the
    pixels whose centres lie inside (skimage), which differ from it by about half a pixel along
    the outline at most."""
    from skimage.draw import polygon

    for path in sorted(real(*CONTOURS).glob("SC-HF-I-1/i-contours/*.txt")):
        points = read_contour(path)
        area = polygon_area(points)
        x, y = points[:, 0], points[:, 1]
        trapezoid = abs(np.sum((np.roll(x, -1) - x) * (np.roll(y, -1) + y))) / 2
        assert area == pytest.approx(trapezoid, rel=1e-12)
        rows, _ = polygon(y, x, shape=(256, 256))
        closed = np.vstack([points, points[:1]])
        perimeter = np.linalg.norm(np.diff(closed, axis=0), axis=1).sum()
        assert abs(len(rows) - area) <= 0.5 * perimeter
        assert area > 100


def test_sunnybrook_volumes_match_the_published_figures(real):
    """SC-HF-I-1's left ventricle from about 129 to 95 ml (data README): areas of each slice's
    larger and smaller contour, times the pixel area, times the spacing of the slice locations."""
    import pydicom

    folder = real("sunnybrook", "dicoms", "SCD0000101")
    by_location: dict[float, list[float]] = defaultdict(list)
    pixel = None
    for path in sorted(real(*CONTOURS).glob("SC-HF-I-1/i-contours/*.txt")):
        number = int(re.search(r"IM-0001-(\d+)", path.name).group(1))
        ds = pydicom.dcmread(folder / f"{number}.dcm", stop_before_pixels=True)
        pixel = float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1])
        by_location[round(float(ds.SliceLocation), 2)].append(polygon_area(read_contour(path)))
    assert all(len(areas) == 2 for areas in by_location.values())
    spacing = float(np.median(np.diff(sorted(by_location))))
    larger = sum(max(a) for a in by_location.values()) * pixel * spacing / 1000
    smaller = sum(min(a) for a in by_location.values()) * pixel * spacing / 1000
    assert larger == pytest.approx(129, abs=2)
    assert smaller == pytest.approx(95, abs=2)


def test_info_describes_voc_and_contour(real, capsys):
    xml = real("bccd", "Annotations", "BloodImage_00000.xml")
    assert main(["info", "--json", str(xml)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "pascal-voc"
    assert summary["size"] == {"width": 640, "height": 480, "depth": 3}
    assert summary["objects"] == 20 and summary["classes"] == {"RBC": 19, "WBC": 1}

    contour = next(real(*CONTOURS).glob("SC-HF-I-1/i-contours/*.txt"))
    assert main(["info", "--json", str(contour)]) == 0
    summary = json.loads(capsys.readouterr().out)
    points = np.loadtxt(contour)
    assert summary["vertices"] == len(points)
    assert summary["bounding_box"]["xmin"] == points[:, 0].min()
    assert summary["bounding_box"]["ymax"] == points[:, 1].max()
    assert summary["area_px2"] == pytest.approx(polygon_area(points))
    assert main(["info", str(contour)]) == 0  # the table form too
    assert "area_px2" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- hand-made
def test_a_small_voc(tmp_path):
    path = _voc(tmp_path, ("RBC", (1, 2, 30, 40)), ("WBC", (0.5, 0, 640, 480), 1))
    voc = read_voc(path)
    assert voc.size == (640, 480, 3)
    assert voc.objects == [Box("RBC", 1, 2, 30, 40), Box("WBC", 0.5, 0, 640, 480, difficult=True)]
    assert describe_annotation(path, "voc")["classes"] == {"RBC": 1, "WBC": 1}
    assert sniff(path) == "voc"
    with pytest.raises(ImageReadError, match="Pascal VOC annotation, not an image"):
        load_image(path)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE annotation [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>&lol9;</filename>
  <size><width>640</width><height>480</height><depth>3</depth></size></annotation>"""
EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotation><filename>&secret;</filename>
  <size><width>640</width><height>480</height></size></annotation>"""


@pytest.mark.parametrize(
    ("text", "objects", "problem"),
    [
        (BILLION_LAUGHS, (), "XML refused: document type declarations are not allowed"),
        (EXTERNAL, (), "XML refused"),
        ("<annotation><size><width>640</width>", (), "not well-formed XML"),
        ("<?xml version='1.0'?><notes><a/></notes>", (), "root element is <notes>"),
        (None, (("RBC", (50, 2, 30, 40)),), r"object 1 \(RBC\).*xmin > xmax"),
        (None, (("RBC", (1, 50, 30, 40)),), "ymin > ymax"),
        (None, (("RBC", ("nan", 2, 30, 40)),), "object 1: <xmin> is 'nan', not a finite number"),
        (None, (("RBC", ("1e999", 2, 30, 40)),), "not a finite number"),
        (None, (("RBC", ("ten", 2, 30, 40)),), "<xmin> is 'ten', not a number"),
        (None, (("RBC", (1, 2, 30, 40)), ("RBC", (1, 2, 900, 40))), "object 2.*outside the 640"),
        (None, (("RBC", (-5, 2, 30, 40)),), "outside"),
        (None, (("", (1, 2, 30, 40)),), "object 1 has no <name>"),
        (None, (("RBC", (1, 2, 30, 40), "maybe"),), "<difficult> is 'maybe', expected 0 or 1"),
    ],
)
def test_bad_voc_files_fail_with_one_line(tmp_path, text, objects, problem):
    path = _voc(tmp_path, *objects, text=text)
    with pytest.raises(ImageReadError, match=problem) as caught:
        read_voc(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_missing_bndbox_size_and_bad_filename(tmp_path):
    good = _voc(tmp_path, ("RBC", (1, 2, 30, 40))).read_text()
    cases = {
        "no bndbox": (re.sub(r"<bndbox>.*?</bndbox>", "", good, flags=re.S), "has no <bndbox>"),
        "no xmax": (good.replace("<xmax>30</xmax>", ""), "<bndbox> has no <xmax>"),
        "no size": (re.sub(r"<size>.*?</size>", "", good, flags=re.S), "no <size>"),
        "zero size": (good.replace("<width>640", "<width>0"), "image size 0x480 is empty"),
        "traversal": (
            good.replace("cells.jpg", "../../etc/passwd"),
            "<filename> '../../etc/passwd' is not a plain file name",
        ),
    }
    for name, (text, problem) in cases.items():
        path = tmp_path / f"{name}.xml"
        path.write_text(text)
        with pytest.raises(ImageReadError, match=re.escape(problem)):
            read_voc(path)


def test_a_small_contour(tmp_path):
    path = tmp_path / "square.txt"
    path.write_text("10 10\n20.0 10\n\n20 20\n10 20\n")
    points = read_contour(path)
    np.testing.assert_array_equal(points, [[10, 10], [20, 10], [20, 20], [10, 20]])
    assert polygon_area(points) == 100.0
    summary = describe_annotation(path, "contour")
    assert summary["vertices"] == 4 and summary["area_px2"] == 100.0
    assert summary["perimeter_px"] == 40.0
    assert summary["bounding_box"] == {"xmin": 10.0, "ymin": 10.0, "xmax": 20.0, "ymax": 20.0}
    assert sniff(path) == "contour"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1 2\n3 4\n", "at least 3 vertices, found 2"),
        ("", "at least 3 vertices, found 0"),
        ("1 2\n3 nan\n5 6\n", r"line 2: vertex \(3.0, nan\) is not finite"),
        ("1 2\n3 inf\n5 6\n", "not finite"),
        ("1 2\n3 4 5\n5 6\n", "line 2: expected 'x y', found '3 4 5'"),
        ("1 2\nthree 4\n5 6\n", "line 2: expected 'x y'"),
        ("1 2\n1e308 1e308\n-1e308 1e308\n", "too large"),
    ],
)
def test_bad_contours_fail_with_one_line(tmp_path, text, problem):
    path = tmp_path / "c.txt"
    path.write_text(text)
    with pytest.raises(ImageReadError, match=problem) as caught:
        read_contour(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_binary_and_missing_contour(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"1 2\n\xff\xfe\x00\n")
    with pytest.raises(ImageReadError, match="not a text file"):
        read_contour(path)
    with pytest.raises(ImageReadError, match="no such file"):
        read_contour(tmp_path / "absent.txt")


def test_info_on_bad_annotations_is_one_line(tmp_path, capsys):
    bomb = _voc(tmp_path, text=BILLION_LAUGHS)
    assert main(["info", str(bomb)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "XML refused" in err[0] and str(bomb) in err[0]
    short = tmp_path / "short.txt"
    short.write_text("1 2\n3 4\n")
    assert main(["info", str(short)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {short}: a contour needs at least 3 vertices, found 2"]
