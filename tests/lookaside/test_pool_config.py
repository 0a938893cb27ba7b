"""PoolConfig's nested settings: they map one to one onto the admin API's
pool body, survive JSON, and configs stored in the older flat layout read
the same."""

from __future__ import annotations

import dataclasses
import json

from lookaside_registry.model import HealthChecks, OutlierDetection, PoolConfig
from server_common.schemas.pools import HealthCheckSettings, OutlierDetectionSettings


def test_nested_settings_map_one_to_one_onto_the_admin_schema() -> None:
    assert [f.name for f in dataclasses.fields(HealthChecks)] == list(
        HealthCheckSettings.model_fields
    )
    assert [f.name for f in dataclasses.fields(OutlierDetection)] == list(
        OutlierDetectionSettings.model_fields
    )
    assert HealthCheckSettings().model_dump() == dataclasses.asdict(HealthChecks())
    assert OutlierDetectionSettings().model_dump() == dataclasses.asdict(OutlierDetection())


def test_json_round_trip_and_the_flat_layout() -> None:
    config = PoolConfig.from_flat(
        "p", health_interval_ms=500, outlier_min_hosts=4, outlier_detection=False, fallback=True
    )
    assert config.health_checks.interval_ms == 500 and config.outlier_detection.min_hosts == 4
    assert PoolConfig.from_json(config.to_json()) == config
    flat = {
        "name": "p", "fallback": True, "health_checks": True, "health_interval_ms": 500,
        "outlier_detection": False, "outlier_min_hosts": 4, "drops": [],
    }  # fmt: skip
    assert PoolConfig.from_json(json.dumps(flat)) == config
