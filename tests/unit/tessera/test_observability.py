"""The address parser every server's --metrics, --health and listen go through, and
the log formatters: every line is one line, whatever the fields hold."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera import observability

HOSTS = st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "[::1]", "node-leeds.svc"])


@given(HOSTS, st.integers(min_value=0, max_value=65535))
def test_a_valid_address_parses(host: str, port: int) -> None:
    got_host, got_port = observability.split_address(f"{host}:{port}")
    assert got_port == port
    assert got_host == host.strip("[]")


@given(HOSTS, st.integers(min_value=65536, max_value=10**12))
def test_a_port_out_of_range_is_refused(host: str, port: int) -> None:
    with pytest.raises(ValueError, match="outside 0 to 65535"):
        observability.split_address(f"{host}:{port}")


@given(st.text(max_size=40))
def test_any_text_either_parses_or_is_a_value_error(text: str) -> None:
    try:
        host, port = observability.split_address(text)
    except ValueError:
        return
    assert host and 0 <= port <= 65535


@given(st.dictionaries(st.sampled_from(["method", "status", "request_id", "x"]), st.text()))
def test_every_log_line_is_one_line(fields: dict[str, str]) -> None:
    record = logging.LogRecord("tessera.rpc", logging.INFO, "", 0, "rpc", None, None)
    record.__dict__.update(fields)
    as_json = observability.JsonFormatter().format(record)
    assert as_json.isprintable()
    assert {k: json.loads(as_json)[k] for k in fields} == fields
    kv = observability.KeyValueFormatter().format(record)
    assert kv.isprintable()
