"""The page blocks every report is built from, and the report package's import direction."""

from __future__ import annotations

import ast
import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medlens.report
from medlens.report import page
from medlens.report.page import (
    escape,
    figure,
    html_page,
    interval,
    number,
    png_size,
    section,
    try_figure,
)

REPORT_SRC = Path(medlens.report.__file__).parent
NASTY = "<b>&\"x'</b>"


def png(width: int = 30, height: int = 20) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_escape_leaves_no_markup():
    assert escape(NASTY) == "&lt;b&gt;&amp;&quot;x&#x27;&lt;/b&gt;"
    assert escape(3) == "3"
    assert not set("<>\"'") & set(escape(NASTY))


def test_number_and_interval():
    assert [number(v) for v in (None, float("nan"), float("inf"), 3, np.int64(4))] == [
        "n/a", "n/a", "n/a", "3", "4"
    ]  # fmt: skip
    assert number(0.12345) == "0.123" and number(np.float32(2)) == "2.000"
    assert interval({"value": 0.5, "low": 0.4, "high": 0.6}) == (
        '0.500 <span class="ci">[0.400, 0.600]</span>'
    )
    assert interval({"value": 0.5, "low": None, "high": 0.6}, "<br>") == "0.500"
    assert interval(0.25) == "0.250" and interval(None) == "n/a"


def test_figure_embeds_the_png_with_its_size():
    data = png(30, 20)
    assert png_size(data) == (30, 20)
    html = figure(data, NASTY, f"caption {NASTY}")
    src = re.search(r'src="([^"]*)"', html).group(1)
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == data
    assert 'width="30" height="20"' in html
    assert "<b>" not in html and f"caption {escape(NASTY)}</figcaption>" in html


def test_try_figure_draws_or_leaves_a_visible_note():
    assert try_figure(png, "Fine", "c") == figure(png(), "Fine", "c")

    def broken() -> bytes:
        raise ValueError("only one class <here>")

    note = try_figure(broken, "ROC <curve>", "c")
    assert note == ('<p class="note">ROC &lt;curve&gt; not drawn: only one class &lt;here&gt;</p>')


def test_section_is_anchored_and_escaped():
    anchor, heading, html = section("metrics", NASTY, "<p>body</p>")
    assert (anchor, heading) == ("metrics", NASTY)
    assert html == f'<section id="metrics"><h2>{escape(NASTY)}</h2><p>body</p></section>'


def test_html_page_is_one_self_contained_page_with_a_table_of_contents():
    sections = [
        section("summary", "Summary", "<p>text</p>"),
        section("figs", f"Figures {NASTY}", figure(png(), "alt", "cap")),
    ]
    text = html_page(f"Run {NASTY}", sections, kind="Test report")
    assert text.startswith("<!DOCTYPE html>\n") and text.endswith("</html>\n")
    assert text.count("<html") == 1 and text.count("<body>") == 1
    assert "<style>" in text and "<link" not in text and "<script" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert all(s.startswith("data:") for s in re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', text))
    nav = re.search(r"<nav>(.*?)</nav>", text, re.S).group(1)
    assert re.findall(r'href="#([^"]*)"', nav) == ["summary", "figs"]
    for anchor, _, _ in sections:
        assert f'<section id="{anchor}">' in text
    assert f"Figures {escape(NASTY)}</a>" in nav
    assert f"<title>Run {escape(NASTY)}</title>" in text and "<b>" not in text
    assert '<p class="meta">Test report, written ' in text


@pytest.mark.parametrize("name", page.__all__)
def test_blocks_are_public_and_documented(name):
    assert getattr(medlens.report, name) is getattr(page, name)
    if callable(getattr(page, name)) and name != "Section":
        assert getattr(page, name).__doc__


def _imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, absolute or relative, at any depth of the file."""
    package = "medlens.report"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]
    return found


def test_report_never_imports_tasks_or_explain():
    """Tasks and explain import the report package, never the reverse (no import cycles, and
    the report stays usable without them)."""
    files = sorted(REPORT_SRC.glob("*.py"))
    assert REPORT_SRC / "page.py" in files and REPORT_SRC / "html.py" in files
    bad = [
        f"{path.name}: {module}"
        for path in files
        for module in _imported_modules(path)
        if re.match(r"medlens\.(tasks|explain)(\.|$)", module)
    ]
    assert bad == []


def test_the_import_check_sees_what_it_should(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n    from medlens.tasks.segmentation import x\n"
        "import medlens.explain.run\nfrom medlens import explain\nfrom .. import tasks\n"
    )
    modules = _imported_modules(sample)
    assert "medlens.tasks.segmentation" in modules and "medlens.explain.run" in modules
    assert "medlens.explain" in modules and "medlens.tasks" in modules
