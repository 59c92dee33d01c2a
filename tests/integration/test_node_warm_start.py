"""A node builds its engine frames in the background when it starts: the first query
finds them built (a query during the build waits for it: one build per frame)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tessera import requests, schemas
from tessera.templates.model import Mode
from tests.support import coordinator as region_lib

T2 = "referrals-by-need-and-age"
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}


def test_the_first_query_after_start_uses_the_frames_built_at_start(tmp_path: Path) -> None:
    region = region_lib.start_region(tmp_path)
    try:
        digest = region_lib.published(region, T2)
        built = {}
        for org, node in region.nodes.items():
            catalog = node.service.catalog
            assert catalog.wait_warm(timeout=120), org  # an event, not a sleep
            hosted = [schemas.dataset(n) for n in node.service.cfg.datasets]
            assert catalog.built == sum(len(d.sources) for d in hosted if d is not None)
            built[org] = catalog.built
        analyst = region.analyst()
        request = requests.new_request(
            template_digest=digest,
            params=P2,
            mode=Mode.COMBINED,
            audience=list(region_lib.COUNCILS),
            analyst_key=region.fed.analyst.public.key_id,
            now=datetime.now(UTC),
        )
        result = analyst.submit_request(requests.sign(request, region.fed.analyst))
        assert result is not None
        for org, node in region.nodes.items():
            catalog = node.service.catalog
            assert catalog.built == built[org], org  # no frame built for the query
            v = catalog.latest("cin")
            assert v is not None
            assert catalog.frame(v, "referrals", node.service.secret) is not None
            assert catalog.built == built[org]
    finally:
        region.stop()
