"""What the property tests of the pure rules share: the clock origin and hypothesis settings."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, settings

BASE = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def property_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,  # no .hypothesis/ directory in the repository
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
