"""CLI conventions without a coordinator: --version, shell completion, `--json -`
meaning standard output (never a file named "-"), tables that fold below 100 columns,
and `template show`/`review` printing every field of the canonical form."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tessera import templates
from tessera.cli import output
from tessera.cli.main import main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples" / "templates").glob("*.toml"))
STRUCTURAL = {"kind", "type"}  # said in words ("categories of", "a date from")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"], {})
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == "tessera 0.1.0"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell], {}) == 0
    script = capsys.readouterr().out
    for word in ("tessera", "query", "template", "budget", "--json", "review"):
        assert word in script


def test_json_dash_is_stdout_and_never_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = EXAMPLES[0]
    assert main(["template", "check", str(path), "--json", "-"], {}) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # only JSON on stdout
    t = templates.load_toml(path.read_text())
    assert data["digest"] == templates.digest(t) and data["ok"] is True
    assert "digest:" in captured.err
    assert not (tmp_path / "-").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('id = "x"\n')
    assert main(["template", "check", str(bad), "--json", "-"], {}) == 2
    assert json.loads(capsys.readouterr().out)["ok"] is False


def _leaves(node: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, k)]
    if isinstance(node, list):
        return [leaf for v in node for leaf in _leaves(v, key)]
    return [(key, node)]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("columns", ["80", "160"])
def test_template_show_prints_every_field_of_the_canonical_form(
    path: Path, columns: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["template", "show", str(path)], {"COLUMNS": columns}) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= int(columns)
    # Folded lines are joined back before looking for each value.
    shown = _flat(out)
    joined = out.replace("\n", "")
    t = templates.load_toml(path.read_text())
    canonical = json.loads(templates.encode(t))
    missing = []
    for key, value in _leaves(canonical):
        if key in STRUCTURAL or isinstance(value, bool):
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if _flat(text) not in shown and text.replace(" ", "") not in joined.replace(" ", ""):
            missing.append((key, text))
    assert not missing
    assert templates.digest(t) in joined.replace(" ", "")
    # The booleans are said in words.
    assert ("allowed" in shown) and ("per-node breakdown" in shown)
    for f in canonical.get("filters", []):  # an overlap's are per dataset
        if f["kind"] == "equals":
            assert f"{f['column']} is {str(f['value']).lower()}" in shown


def test_template_show_canonical_prints_the_exact_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = EXAMPLES[1]
    assert main(["template", "show", str(path), "--canonical"], {"COLUMNS": "80"}) == 0
    t = templates.load_toml(path.read_text())
    assert capsys.readouterr().out.strip().encode() == templates.encode(t)


def test_template_review_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = EXAMPLES[1]
    path = tmp_path / source.name
    path.write_text(source.read_text())
    assert main(["template", "review", str(path), "--html"], {"COLUMNS": "100"}) == 0
    page = path.with_suffix(".review.html").read_text()
    t = templates.load_toml(source.read_text())
    digest = templates.digest(t)
    assert digest in page and "Content-Security-Policy" in page
    assert "codes U1, U2, U3, U4, U5, U6" in page and "16 to 25" in page
    assert "in at most 1 cell(s)" in page  # the per-unit cap
    canonical = templates.encode(t).decode().replace('"', "&quot;")
    assert canonical in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert digest in capsys.readouterr().out.replace("\n", "")
    bad = tmp_path / "bad.toml"
    bad.write_text(source.read_text().replace("epsilon = 0.5", "epsilon = -1"))
    assert main(["template", "review", str(bad), "--html"], {"COLUMNS": "100"}) == 2
    assert "refused" in capsys.readouterr().out and not bad.with_suffix(".review.html").exists()
    assert main(["template", "show", str(bad)], {}) == 2
    assert "privacy" in capsys.readouterr().err


def _console(width: int) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, color_system=None), buf


def test_tables_switch_to_a_vertical_layout_below_100_columns() -> None:
    rows = [["q-" + "0" * 40, "cla-by-age-and-placement", "released", "3/3"]]
    cols = ("query id", "template", "state", "nodes")
    narrow, buf = _console(80)
    output.print_table(narrow, "Your queries", cols, rows)
    text = buf.getvalue()
    assert "query id:" in text and rows[0][0] in text and "…" not in text
    wide, buf = _console(120)
    output.print_table(wide, "Your queries", cols, rows)
    assert "query id:" not in buf.getvalue() and rows[0][0] in buf.getvalue()


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(min_value=30, max_value=99),
    values=st.lists(
        st.text(alphabet="abcdefghij -/0123456789", min_size=0, max_size=150),
        min_size=3,
        max_size=3,
    ),
)
def test_vertical_layout_never_exceeds_the_width_nor_drops_text(
    width: int, values: list[str]
) -> None:
    con, buf = _console(width)
    output.print_table(con, "t", ("organisation", "detail", "x"), [values])
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    squashed = "".join(text.split())
    for v in values:
        assert "".join(v.split()) in squashed


def test_demo_json_dash_is_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's own run is measured elsewhere; here, only where its JSON goes."""
    from tessera.demo import run as demo_run

    seen: dict[str, Any] = {}

    def fake_run(options: Any, console: Console) -> dict[str, Any]:
        seen["json_path"], seen["stderr"] = options.json_path, console.stderr
        console.print("progress")
        return {"drills": [{"status": "PERMISSION_DENIED", "budget_spent": 0}], "queries": []}

    monkeypatch.setattr(demo_run, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--json", "-"], {}) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["queries"] == []
    assert "progress" in captured.err
    assert seen == {"json_path": None, "stderr": True}
    assert not (tmp_path / "-").exists()


_BASES = [json.loads(templates.encode(templates.load_toml(p.read_text()))) for p in EXAMPLES]
_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789", min_size=1, max_size=40)
_VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789-_/", max_size=40) | (
    st.integers(min_value=0, max_value=10_000)
)


@st.composite
def _variants(draw: st.DrawFn) -> templates.Template:
    """A reference template with one of its values replaced, kept when it still parses."""
    import copy

    from hypothesis import assume

    d = copy.deepcopy(draw(st.sampled_from(_BASES)))
    slots: list[tuple[Any, Any]] = []

    def walk(x: Any) -> None:
        items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
        for k, v in items:
            if isinstance(v, dict | list):
                walk(v)
            elif k not in STRUCTURAL:
                slots.append((x, k))

    walk(d)
    container, key = draw(st.sampled_from(slots))
    old = container[key]
    if isinstance(old, int) and not isinstance(old, bool):
        container[key] = draw(st.integers(min_value=max(old - 3, 0), max_value=old + 3))
    elif isinstance(old, str):
        container[key] = draw(_TEXT)
    else:
        container[key] = draw(_VALUE)
    try:
        from tessera.templates.parse import parse

        return parse(d)
    except templates.TemplateError:
        assume(False)
        raise AssertionError("unreachable") from None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(t=_variants(), width=st.integers(min_value=60, max_value=180))
def test_every_value_of_any_valid_template_is_shown(t: templates.Template, width: int) -> None:
    from tessera.cli.template_remote import show_template

    con, buf = _console(width)
    show_template(con, t.id, t, templates.digest(t), [])
    out = buf.getvalue()
    assert max(len(line) for line in out.splitlines()) <= width
    shown, joined = _flat(out), out.replace("\n", "").replace(" ", "")
    for key, value in _leaves(json.loads(templates.encode(t))):
        if key in STRUCTURAL or isinstance(value, bool):
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        assert _flat(text) in shown or text.replace(" ", "") in joined, (key, text)


def test_audit_commands_write_json_to_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tessera.audit import AuditLog
    from tessera.clock import SystemClock
    from tessera.keys import SigningKey

    monkeypatch.chdir(tmp_path)
    key = SigningKey.generate()
    db = tmp_path / "audit.sqlite"
    with AuditLog.open(db, key, SystemClock()) as log:
        for i in range(3):
            log.append(
                {
                    "actor": {"peer": "x"},
                    "template_digest": None,
                    "params": {"i": i},
                    "mode": None,
                    "cost": 0.0,
                    "outcome": "OK",
                    "message": "m",
                }
            )
    capsys.readouterr()
    assert main(["audit", "verify", str(db), "--key", key.public.key_id, "--json", "-"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["ok"] is True and verified["entries"] == 3 and verified["problems"] == []
    assert main(["audit", "show", str(db), "--last", "2", "--json", "-"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["seq"] for e in shown["entries"]] == [2, 3]
    assert shown["entries"][1]["body"]["params"] == {"i": 2}
    assert not (tmp_path / "-").exists()
