"""Injection and abuse: hostile templates and parameters sent to a real node.

Every template here is *signed*: its canonical bytes carry valid signatures of two
approvers the node trusts, and the analyst's request is validly signed for it. So
nothing is refused for a missing signature; each case shows that the node refuses
an unsafe template or parameter on its own, with a precise status and a clear
message, spends nothing, writes the refusal to its audit log, keeps serving, and
never echoes more than a short stretch of the hostile input, nor any control
character.

Where hostile text is harmless it is accepted, and the tests say why: SQL
metacharacters, homoglyphs and combining characters in free text (a title, a
description, a result label) are data the node never interprets. Labels are
released as they are; the SQL is built only from the schema's own identifiers and
every value is a bound parameter (node/compiler.py). Those cases are answered
("inert"), and the node still answers a plain question afterwards.

Figures go to tests/adversarial/results/abuse.json.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera import audit, canonical
from tessera.templates.model import Mode
from tessera.wire.v1 import node_pb2
from tests.adversarial import support as sp
from tests.support import federation as fedlib

S = grpc.StatusCode
RESULTS = Path(__file__).resolve().parent / "results"
T3 = "absence-by-sen"  # a mean with bounds: parsed (and refused) before hosting is checked
SQL_DROP = "'; DROP TABLE x; --"
SQL_OR = '" OR 1=1'
HUGE = "A" * 100_000
RAW = "__RAW_TOKEN__"
FIGURES: Counter[str] = Counter()

Build = Callable[[fedlib.Federation], node_pb2.ExecuteRequest]


@dataclass(frozen=True)
class Case:
    id: str
    build: Build
    want: grpc.StatusCode
    hostile: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def abuse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sp.Cluster]:
    root = tmp_path_factory.mktemp("abuse")
    with sp.cluster(root, budgets={"ssda903": (100.0, None), "cin": (None, 100.0)}) as c:
        yield c
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "abuse.json"
    figures = {
        "cases_tried": FIGURES["tried"],
        "refused_as_expected": FIGURES["refused"],
        "inert_text_answered": FIGURES["inert"],
        "by_status": {k[7:]: v for k, v in sorted(FIGURES.items()) if k.startswith("status ")},
        "command": "pytest -W error tests/adversarial/test_abuse.py",
    }
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


# -- building hostile templates and requests ----------------------------------------


def _t(name: str) -> Callable[[fedlib.Federation], dict[str, Any]]:
    return lambda fed: sp.template_dict(fed, name)


def _t1_enum(fed: fedlib.Federation) -> dict[str, Any]:
    """Template 1 with an enum parameter as well: placement codes, bound in the SQL."""
    d = sp.template_dict(fed, sp.T1)
    d["parameters"]["placement"] = {"type": "enum", "values": ["U1", "U2", "K2"], "description": ""}
    d["filters"].append({"kind": "in", "column": "PLACE", "param": "placement"})
    return d


TEMPLATES = {sp.T1: _t(sp.T1), sp.T2: _t(sp.T2), T3: _t(T3), "t1-enum": _t1_enum}
PARAMS: dict[str, dict[str, Any]] = {
    sp.T1: sp.P1,
    sp.T2: sp.P2,
    T3: {"academic_year": "2024/25"},
    "t1-enum": {**sp.P1, "placement": "U1"},
}


def _set(doc: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    if isinstance(doc, list):
        doc[int(last)] = value
    else:
        doc[last] = value


def _get(doc: Any, path: str) -> Any:
    for p in path.split("."):
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc


def _encode(d: dict[str, Any], raw: bytes | None) -> bytes:
    """Canonical bytes, with the RAW placeholder (if any) swapped for raw JSON text such
    as NaN, which canonical encoding refuses to write."""
    data = canonical.encode(d)
    return data if raw is None else data.replace(f'"{RAW}"'.encode(), raw)


def template_case(
    case_id: str,
    name: str,
    edit: Callable[[dict[str, Any]], None],
    want: grpc.StatusCode = S.INVALID_ARGUMENT,
    *,
    hostile: tuple[str, ...] = (),
    raw: bytes | None = None,
) -> Case:
    def build(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
        d = TEMPLATES[name](fed)
        edit(d)
        return sp.execute(fed, _encode(d, raw), PARAMS[name])

    return Case(case_id, build, want, hostile)


def setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: _set(d, path, value)


def param_case(
    case_id: str, name: str, params: dict[str, Any], *, raw: bytes | None = None
) -> Case:
    def build(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
        tbytes = canonical.encode(TEMPLATES[name](fed))
        body = sp.request_body(fed, tbytes, params)
        return node_pb2.ExecuteRequest(
            template=sp.signed_template(tbytes, fed.approvers[:2]),
            request=sp.signed_request(_encode(body, raw), fed.analyst),
        )

    hostile = tuple(v for v in params.values() if isinstance(v, str))
    return Case(case_id, build, S.INVALID_ARGUMENT, hostile)


def request_case(case_id: str, key: str, value: Any, want: grpc.StatusCode) -> Case:
    def build(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
        tbytes = canonical.encode(TEMPLATES[sp.T1](fed))
        body = sp.request_body(fed, tbytes, sp.P1)
        body[key] = value
        return node_pb2.ExecuteRequest(
            template=sp.signed_template(tbytes, fed.approvers[:2]),
            request=sp.signed_request(body, fed.analyst),
        )

    hostile = tuple(
        x for x in (value if isinstance(value, list) else [value]) if isinstance(x, str)
    )
    return Case(case_id, build, want, hostile)


# -- the tables ------------------------------------------------------------------------

_CYRILLIC = str.maketrans("aceopxyKMHTBACEOPX", "асеорхуКМНТВАСЕОРХ")


def _homoglyph(good: str) -> str:
    swapped = good.translate(_CYRILLIC)
    return swapped if swapped != good else "\u0430" + good


# Hostile versions of a good string value, by kind.
STRING_ATTACKS: dict[str, Callable[[str], str]] = {
    "sql-drop": lambda g: SQL_DROP,
    "sql-or": lambda g: SQL_OR,
    "sql-suffix": lambda g: g + SQL_DROP,
    "rtl-override": lambda g: "\u202e" + g,
    "homoglyph": _homoglyph,
    "combining": lambda g: g + "\u0301",
    "nul": lambda g: g + "\x00",
    "huge-100k": lambda g: HUGE,
}
# Wrong JSON types for a parameter value.
TYPE_ATTACKS: dict[str, Any] = {
    "int": 20250331,
    "float": 2025.5,
    "list": ["2025-03-31"],
    "object": {"$gt": ""},
    "null": None,
    "bool": True,
}


def _param_cases() -> list[Case]:
    out = []
    slots = [
        (sp.T1, "on_date"),
        (sp.T2, "period_start"),
        (sp.T2, "period_end"),
        ("t1-enum", "placement"),
    ]
    for name, param in slots:
        good = PARAMS[name][param]
        attacks = {k: f(good) for k, f in STRING_ATTACKS.items()} | TYPE_ATTACKS
        if param.endswith("date") or param.startswith("period"):
            attacks["fullwidth-digits"] = good.translate(
                str.maketrans("0123456789", "０１２３４５６７８９")
            )
            attacks["impossible-date"] = "2025-02-30"
        for kind, value in attacks.items():
            out.append(param_case(f"param-{param}-{kind}", name, {**PARAMS[name], param: value}))
    out.append(param_case("param-unknown-sql-name", sp.T1, {**sp.P1, "on_date; DROP TABLE x": 1}))
    out.append(param_case("param-missing", sp.T2, {"period_start": "2025-04-01"}))
    out.append(param_case("param-nan-raw", sp.T1, {"on_date": RAW}, raw=b"NaN"))
    out.append(param_case("param-infinity-raw", sp.T1, {"on_date": RAW}, raw=b"Infinity"))
    out.append(param_case("param-5000-digit-int-raw", sp.T1, {"on_date": RAW}, raw=b"9" * 5000))
    return out


# Structured template fields: identifiers, codes, keys, dates. Any hostile text refused.
STRUCTURED = (
    "id",
    "purpose",
    "data.dataset",
    "data.source",
    "data.privacy_unit",
    "filters.0.kind",
    "filters.0.start_column",
    "filters.0.on",
    "group_by.0.name",
    "group_by.0.kind",
    "group_by.0.birth_column",
    "group_by.0.at",
    "group_by.1.column",
    "group_by.1.categories.0.codes.0",
    "statistic.kind",
    "access.analysts.0.key",
    "access.expires",
    "parameters.on_date.min",
)
# Free text shown to people: hostile control and bidi characters and excess length
# refused; SQL, homoglyphs and combining characters are inert data.
TEXT = (
    "title",
    "description",
    "legal_basis",
    "access.analysts.0.name",
    "parameters.on_date.description",
    "group_by.0.bands.0.label",
    "group_by.1.categories.0.label",
    "group_by.1.other",
)
TEXT_REFUSED: dict[str, Callable[[str], str]] = {
    "nul": lambda g: g + "\x00",
    "huge-100k": lambda g: HUGE,
    "rtl-override": lambda g: "\u202e" + g,
    "rtl-isolate": lambda g: g + "\u2067x",
    "escape-sequence": lambda g: "\x1b[2J\x1b[31m" + g,
    "c1-control": lambda g: "\x9b31m" + g,
}
TEXT_INERT: dict[str, Callable[[str], str]] = {
    "sql-drop": lambda g: g + SQL_DROP,
    "sql-or": lambda g: g + SQL_OR,
    "homoglyph": _homoglyph,
    "combining": lambda g: g + "\u0301",
}


def _rename_param(new: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["parameters"] = {new: d["parameters"]["on_date"]}

    return edit


def _structured_cases() -> list[Case]:
    out = []
    for path in STRUCTURED:
        for kind, attack in STRING_ATTACKS.items():

            def edit(d: dict[str, Any], path: str = path, attack: Any = attack) -> None:
                _set(d, path, attack(_get(d, path)))

            out.append(
                template_case(f"field-{path}-{kind}", sp.T1, edit, hostile=(attack("x"), HUGE))
            )
    for kind, attack in STRING_ATTACKS.items():
        value = attack("on_date")
        out.append(
            template_case(
                f"field-parameter-name-{kind}", sp.T1, _rename_param(value), hostile=(value,)
            )
        )
    # A parameter whose name is hostile and whose table is not a table: the error's
    # path must not carry the name as it is.
    out.append(
        template_case(
            "field-parameter-name-not-a-table",
            sp.T1,
            setter("parameters", {"\x1b[2J" + HUGE: 5}),
            hostile=(HUGE,),
        )
    )
    out.append(
        template_case(
            "field-unknown-key-hostile",
            sp.T1,
            setter("\u202e" + HUGE, 1),
            hostile=(HUGE,),
        )
    )
    return out


def _text_cases() -> list[Case]:
    out = []
    for path in TEXT:
        for kind, attack in TEXT_REFUSED.items():

            def edit(d: dict[str, Any], path: str = path, attack: Any = attack) -> None:
                _set(d, path, attack(_get(d, path)))

            out.append(template_case(f"text-{path}-{kind}", sp.T1, edit, hostile=(HUGE,)))
    return out


def _limit_cases() -> list[Case]:
    bands100 = [{"label": f"b{i}", "min": i, "max": i} for i in range(100)]

    def million_cells(d: dict[str, Any]) -> None:
        d["group_by"] = [
            {
                "name": f"d{k}",
                "kind": "bands",
                "bands": bands100,
                "birth_column": "DOB",
                "at": "on_date",
            }
            for k in range(3)
        ]

    def many_categories(d: dict[str, Any]) -> None:
        d["group_by"][1]["categories"] = [{"label": f"c{i}", "codes": ["U1"]} for i in range(1001)]

    nested = {
        "kind": "not",
        "filter": {"kind": "any", "filters": [{"kind": "equals", "column": "x"}]},
    }

    def deep_nesting(d: dict[str, Any]) -> None:
        d["filters"] = RAW

    c = template_case
    cases = [
        c("unknown-column-filter", sp.T1, setter("filters.0.start_column", "NO_SUCH_COLUMN")),
        c("unknown-column-dimension", sp.T1, setter("group_by.1.column", "NO_SUCH_COLUMN")),
        c("column-of-another-dataset", sp.T1, setter("filters.0.start_column", "referral_date")),
        c("column-wrong-type", sp.T1, setter("group_by.1.column", "DECOM")),
        c("domain-of-10^6-cells", sp.T1, million_cells),
        c("1001-categories", sp.T1, many_categories),
        c(
            "months-over-three-centuries",
            sp.T1,
            setter(
                "group_by.1",
                {
                    "name": "m",
                    "kind": "months",
                    "column": "DECOM",
                    "first": "1900-01",
                    "last": "2200-12",
                },
            ),
        ),
        c("nested-filter-all", sp.T1, setter("filters.0", {"kind": "all", "filters": [nested]})),
        c("nested-filter-not", sp.T1, setter("filters.0", nested)),
        c("17-filters", sp.T1, lambda d: d.update(filters=d["filters"] * 17)),
        c(
            "filters-nested-100000-deep-raw",
            sp.T1,
            deep_nesting,
            raw=b"[" * 100_000 + b"]" * 100_000,
        ),
        # Bounds of a mean (template 4): reversed, zero, fractional, out of range, NaN.
        c("sum-bounds-reversed", T3, lambda d: d["statistic"].update(lower=150, upper=0)),
        c("sum-bounds-both-zero", T3, lambda d: d["statistic"].update(lower=0, upper=0)),
        c("sum-bound-fractional", T3, setter("statistic.upper", 150.5)),
        c("sum-bound-over-10^9", T3, setter("statistic.upper", 10**10)),
        c("sum-bound-under-minus-10^9", T3, setter("statistic.lower", -(10**10))),
        c("sum-bound-nan-raw", T3, setter("statistic.upper", RAW), raw=b"NaN"),
        c("sum-bound-negative-nan-raw", T3, setter("statistic.lower", RAW), raw=b"-NaN"),
        c("sum-bound-infinity-raw", T3, setter("statistic.upper", RAW), raw=b"Infinity"),
        c("sum-bound-1e999-raw", T3, setter("statistic.upper", RAW), raw=b"1e999"),
        c("sum-bound-text", T3, setter("statistic.upper", "150")),
        c("records-per-unit-zero", T3, setter("statistic.max_records_per_unit", 0)),
        c("records-per-unit-negative", T3, setter("statistic.max_records_per_unit", -1)),
        c("records-per-unit-over-cap", T3, setter("statistic.max_records_per_unit", 1001)),
        c("cells-per-unit-zero", sp.T1, setter("statistic.max_cells_per_unit", 0)),
        c("cells-per-unit-negative", sp.T1, setter("statistic.max_cells_per_unit", -5)),
        c(
            "band-reversed",
            sp.T1,
            setter("group_by.0.bands.4", {"label": "x", "min": 25, "max": 16}),
        ),
        c("band-negative-nan-raw", sp.T1, setter("group_by.0.bands.0.min", RAW), raw=b"NaN"),
        c("min-count-negative", sp.T1, setter("output.min_count", -1)),
        c("round-to-zero", sp.T1, setter("output.round_to", 0)),
        c("quorum-zero", sp.T1, setter("access.quorum", 0)),
        # The privacy cost: epsilon (template 1) and rho (template 2).
        c("epsilon-zero", sp.T1, setter("privacy.epsilon", 0)),
        c("epsilon-negative-zero", sp.T1, setter("privacy.epsilon", -0.0)),
        c("epsilon-negative", sp.T1, setter("privacy.epsilon", -0.5)),
        c("epsilon-over-10", sp.T1, setter("privacy.epsilon", 10.5)),
        c("epsilon-1e308", sp.T1, setter("privacy.epsilon", 1e308)),
        c("epsilon-nan-raw", sp.T1, setter("privacy.epsilon", RAW), raw=b"NaN"),
        c("epsilon-infinity-raw", sp.T1, setter("privacy.epsilon", RAW), raw=b"Infinity"),
        c("epsilon-minus-infinity-raw", sp.T1, setter("privacy.epsilon", RAW), raw=b"-Infinity"),
        c("epsilon-1e999-raw", sp.T1, setter("privacy.epsilon", RAW), raw=b"1e999"),
        c("epsilon-5000-digits-raw", sp.T1, setter("privacy.epsilon", RAW), raw=b"9" * 5000),
        c("epsilon-as-text", sp.T1, setter("privacy.epsilon", "0.5")),
        c("epsilon-as-bool", sp.T1, setter("privacy.epsilon", True)),
        # Positive but so small that no noise scale meets it (refused at calibration).
        c("epsilon-1e-300", sp.T1, setter("privacy.epsilon", 1e-300)),
        c("epsilon-denormal", sp.T1, setter("privacy.epsilon", 5e-324)),
        c("rho-zero", sp.T2, setter("privacy.rho", 0)),
        c("rho-negative", sp.T2, setter("privacy.rho", -0.125)),
        c("rho-nan-raw", sp.T2, setter("privacy.rho", RAW), raw=b"NaN"),
        c("rho-infinity-raw", sp.T2, setter("privacy.rho", RAW), raw=b"Infinity"),
        c("rho-1e-300", sp.T2, setter("privacy.rho", 1e-300)),
        # Small enough that OpenDP's Gaussian accuracy would run for minutes.
        c("rho-noise-scale-over-cap", sp.T2, setter("privacy.rho", 1e-14)),
        c("epsilon-and-rho", sp.T1, lambda d: d["privacy"].update(rho=0.1)),
        c("no-cost", sp.T1, setter("privacy", {})),
        # The language derives sensitivity from the declared bounds and caps
        # (model.measure_sensitivities); it has no sensitivity field, so a template
        # cannot declare one smaller than its statistic really has. Every table
        # refuses keys it does not know (Fields.done), wherever the field is put.
        c("sensitivity-in-statistic", sp.T1, setter("statistic.sensitivity", 0.001)),
        c("sensitivity-in-privacy", sp.T1, setter("privacy.sensitivity", 0.001)),
        c("sensitivity-top-level", sp.T1, setter("sensitivity", 0.001)),
        c("sensitivity-in-a-sum", T3, setter("statistic.sensitivity", 1)),
        c("l1-sensitivity-in-dimension", sp.T1, setter("group_by.0.l1_sensitivity", 1)),
    ]
    return cases


def _request_cases() -> list[Case]:
    return [
        request_case("request-mode-sql", "mode", SQL_DROP, S.INVALID_ARGUMENT),
        request_case("request-id-sql", "request_id", SQL_DROP, S.INVALID_ARGUMENT),
        request_case("request-nonce-rtl", "nonce", "\u202e" + "0" * 32, S.INVALID_ARGUMENT),
        request_case("request-digest-huge", "template_digest", HUGE[:60_000], S.INVALID_ARGUMENT),
        request_case("request-audience-sql", "audience", [SQL_DROP], S.PERMISSION_DENIED),
        request_case("request-audience-homoglyph", "audience", ["Lееds"], S.PERMISSION_DENIED),
        request_case("request-audience-nul", "audience", ["Leeds\x00"], S.PERMISSION_DENIED),
        request_case(
            "request-issued-at-edge", "issued_at", "0001-01-01T00:00:00+05:00", S.INVALID_ARGUMENT
        ),
        request_case("request-expires-at-sql", "expires_at", SQL_OR, S.INVALID_ARGUMENT),
        request_case("request-version-text", "v", "1", S.INVALID_ARGUMENT),
        request_case(
            "request-mode-secure-aggregation",
            "mode",
            Mode.SECURE_AGGREGATION.value,
            S.FAILED_PRECONDITION,  # answered only through ProtocolRound
        ),
    ]


REFUSED = _param_cases() + _structured_cases() + _text_cases() + _limit_cases() + _request_cases()


def _inert_cases() -> list[tuple[str, str, Callable[[str], str]]]:
    return [(f"inert-{path}-{kind}", path, f) for path in TEXT for kind, f in TEXT_INERT.items()]


# -- the tests ----------------------------------------------------------------------------


def check_refusal(
    c: sp.Cluster, request: node_pb2.ExecuteRequest, want: grpc.StatusCode, hostile: tuple[str, ...]
) -> None:
    FIGURES["tried"] += 1
    sp.assert_refused(c, "Execute", request, want, hostile=hostile)
    FIGURES["refused"] += 1
    FIGURES[f"status {want.name}"] += 1


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in REFUSED])
def test_hostile_input_is_refused(abuse: sp.Cluster, case: Case) -> None:
    check_refusal(abuse, case.build(abuse.fed), case.want, case.hostile)


@pytest.mark.parametrize(
    ("path", "attack"), [pytest.param(p, f, id=i) for i, p, f in _inert_cases()]
)
def test_hostile_but_harmless_text_is_inert_data(abuse: sp.Cluster, path: str, attack: Any) -> None:
    """Accepted and answered: the text is carried as data, never interpreted; a label
    comes back exactly as the approvers signed it."""
    fed = abuse.fed
    d = sp.template_dict(fed, sp.T1)
    value = attack(_get(d, path))
    _set(d, path, value)
    code, details, reply = sp.call(abuse.stub().Execute, sp.execute(fed, d, sp.P1))
    FIGURES["tried"] += 1
    FIGURES[f"status {code.name}"] += 1
    assert code == S.OK, details
    FIGURES["inert"] += 1
    answer = reply.answer
    assert len(answer.cells) == 24 and answer.charged.epsilon > 0
    if path.endswith("label") or path.endswith("other"):
        assert value in {label for dim in answer.dimensions for label in dim.labels}
    # The data and the ledger are intact: a plain question is still answered.
    plain = sp.call(abuse.stub().Execute, sp.execute(fed, sp.template_dict(fed, sp.T1), sp.P1))
    assert plain[0] == S.OK and len(plain[2].answer.cells) == 24


def test_a_template_with_a_million_categories_is_refused_at_the_door(abuse: sp.Cluster) -> None:
    """Ten to the six categories do not fit a message (4 MiB): gRPC refuses the call
    before the node reads it, so there is nothing to audit and nothing is spent."""
    fed = abuse.fed
    d = sp.template_dict(fed, sp.T1)
    d["group_by"][1]["categories"] = [{"codes": ["U1"], "label": f"c{i}"} for i in range(10**6)]
    request = sp.execute(fed, d, sp.P1)
    before, seq = sp.spent(abuse), sp.audit_seq(abuse)
    code, details, _ = sp.call(abuse.stub().Execute, request)
    FIGURES["tried"] += 1
    FIGURES[f"status {code.name}"] += 1
    assert code == S.RESOURCE_EXHAUSTED, details
    FIGURES["refused"] += 1
    assert sp.spent(abuse) == before and sp.audit_seq(abuse) == seq
    assert sp.serving(abuse)


def test_an_audit_log_flooded_with_large_parameters_can_still_be_exported(
    abuse: sp.Cluster,
) -> None:
    """Refusals record the parameters sent, up to a request's 64 KiB. A caller who
    floods the log with them must not make it unreadable: each export page stays
    under the message limit, and the operator reads on, page by page, to a chain that
    verifies."""
    fed = abuse.fed
    start = sp.audit_seq(abuse) + 1
    bulky = {"on_date": "9" * 60_000}
    for _ in range(80):
        code, _, _ = sp.call(abuse.stub().Execute, sp.execute(fed, sp.template_dict(fed), bulky))
        assert code == S.INVALID_ARGUMENT
    end = sp.audit_seq(abuse)
    operator = abuse.stub(as_name="operator")
    entries: list[audit.AuditEntry] = []
    pages = 0
    while not entries or entries[-1].seq < end:
        reply = operator.ExportAudit(
            node_pb2.ExportAuditRequest(from_seq=entries[-1].seq + 1 if entries else 1, limit=1000)
        )
        pages += 1
        entries += [
            audit.AuditEntry(e.seq, e.body, e.prev_hash, e.hash, e.signature) for e in reply.entries
        ]
    assert pages > 1 and [e.seq for e in entries] == list(range(1, end + 1))
    assert audit.verify_entries(entries, fed.node_key.public).ok
    assert any(json.loads(e.body)["params"] == bulky for e in entries if e.seq >= start)
