"""The query report and the template review page in a real browser: headless
Chromium loads each page, takes a full-page screenshot (into a temporary folder), and
the page must log no console error and make no network request. A control page that
does both shows the check sees them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.cli.main import main
from tests.support import browser
from tests.support import coordinator as region_lib

CHROMIUM, WHY = browser.find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason=WHY),
]
ROOT = Path(__file__).resolve().parents[2]
T1 = "cla-by-age-and-placement"
PNG = b"\x89PNG\r\n\x1a\n"


def _render(page: Path, tmp_path: Path) -> browser.Rendered:
    assert CHROMIUM is not None
    return browser.render(page, tmp_path / (page.stem + ".png"), chromium=CHROMIUM)


def _assert_clean(r: browser.Rendered) -> None:
    assert r.console_errors == []
    assert r.requests == []
    assert r.screenshot is not None and r.screenshot.read_bytes().startswith(PNG)
    assert r.screenshot.stat().st_size > 20_000  # a page was drawn, not a blank
    assert ROOT not in r.screenshot.parents  # never into the repository


def test_the_checker_sees_requests_and_console_errors(tmp_path: Path) -> None:
    page = tmp_path / "control.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>control</title></head><body>"
        '<img src="http://127.0.0.1:9/pixel.png" alt="">'
        '<script>console.error("control error")</script></body></html>'
    )
    r = _render(page, tmp_path)
    assert "http://127.0.0.1:9/pixel.png" in r.requests
    assert any("control error" in e for e in r.console_errors)


def test_template_review_page_in_chromium(tmp_path: Path) -> None:
    source = ROOT / "examples" / "templates" / "referrals-by-need-and-age.toml"
    path = tmp_path / source.name
    path.write_text(source.read_text())
    page = tmp_path / "review.html"
    assert main(["template", "review", str(path), "--html", str(page)], {"COLUMNS": "120"}) == 0
    r = _render(page, tmp_path)
    _assert_clean(r)
    assert r.title.startswith("Template review: Referrals")
    for needle in ("In plain words", "Canonical text", "N9 Cases other than children in need"):
        assert needle in r.text
    assert "at most 3 record(s) of one child_id" in r.text


@pytest.fixture
def region(tmp_path: Path) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path / "region")
    try:
        region_lib.published(r, T1)
        yield r
    finally:
        r.stop()


def test_query_report_in_chromium(
    region: region_lib.Region, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "analyst.key"
    region.fed.analyst.save(key)
    env = {
        "TESSERA_COORDINATOR": region.address,
        "TESSERA_TLS_DIR": str(region.fed.root / "certs"),
        "TESSERA_IDENTITY": region_lib.ANALYST,
        "TESSERA_KEY": str(key),
    }
    argv = ["query", "run", T1, "--param", "on_date=2025-03-31", "--json", "-"]
    assert main(argv, env) == 0
    query_id = json.loads(capsys.readouterr().out)["query_id"]
    region.stop_node("Wakefield")
    withheld = tmp_path / "withheld.html"
    argv = ["query", "run", T1, "--param", "on_date=2024-03-31", "--html", str(withheld)]
    assert main(argv, env) == 3  # withheld below the quorum of 3: its page says so
    text = withheld.read_text()
    assert "Nothing was released" in text and "<svg" not in text
    assert "missing</span>: UNAVAILABLE" in text or "missing</span>: DEADLINE" in text

    page = tmp_path / "report.html"
    assert main(["query", "report", query_id, "--html", str(page)], env) == 0
    r = _render(page, tmp_path)
    _assert_clean(r)
    assert r.title.startswith("Children looked after on a date")
    for needle in (
        "The question",
        "on_date",
        "Organisations",
        "Verification",
        "Privacy spent",
        "How to read this",
        "Fostering",
    ):
        assert needle in r.text, needle
    for org in region_lib.COUNCILS:
        assert org in r.text
