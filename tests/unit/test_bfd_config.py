"""The `bfd:` block of a BGP peer: defaults, bounds and the errors a typo gets."""

from __future__ import annotations

from typing import Any

import pytest

from bgpvip.core.bfd import Timers
from bgpvip.core.config import BfdConfig, ConfigError, load


def config(bfd: Any = ..., **peer: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"address": "10.0.1.1", "peer_as": 65000, **peer}
    if bfd is not ...:
        p["bfd"] = bfd
    return {"bgp": {"local_as": 65100, "peers": [p]}}


def test_absent_means_off_and_empty_means_defaults() -> None:
    assert load(config()).bgp.peers[0].bfd is None
    assert load(config(None)).bgp.peers[0].bfd is None
    bfd = load(config({})).bgp.peers[0].bfd
    assert bfd == BfdConfig(transmit_interval_ms=100, receive_interval_ms=100, detect_multiplier=3)
    assert bfd.timers() == Timers(desired_min_tx=100_000, required_min_rx=100_000, detect_mult=3)


def test_values_are_taken() -> None:
    bfd = (
        load(config({"transmit_interval_ms": 300, "receive_interval_ms": 50, "detect_multiplier": 5}))
        .bgp.peers[0]
        .bfd
    )
    assert bfd is not None
    assert bfd.timers() == Timers(desired_min_tx=300_000, required_min_rx=50_000, detect_mult=5)


@pytest.mark.parametrize(
    ("bfd", "path", "message"),
    [
        ({"detect_multiplier": 0}, "detect_multiplier", "must be >= 2 (got 0)"),
        ({"detect_multiplier": 1}, "detect_multiplier", "must be >= 2 (got 1)"),
        ({"detect_multiplier": 256}, "detect_multiplier", "must be <= 255 (got 256)"),
        ({"transmit_interval_ms": 49}, "transmit_interval_ms", "must be >= 50 (got 49)"),
        ({"transmit_interval_ms": 60001}, "transmit_interval_ms", "must be <= 60000 (got 60001)"),
        ({"receive_interval_ms": 0}, "receive_interval_ms", "must be >= 50 (got 0)"),
        ({"receive_interval_ms": -100}, "receive_interval_ms", "must be >= 50 (got -100)"),
        ({"transmit_interval_ms": True}, "transmit_interval_ms", "is a boolean, not a number"),
        ({"detect_multiplier": False}, "detect_multiplier", "is a boolean, not a number"),
        ({"receive_interval_ms": "100"}, "receive_interval_ms", "valid integer"),
        ({"transmit_interval_ms": 100.5}, "transmit_interval_ms", "valid integer"),
        ({"transmit_interval_ms": None}, "transmit_interval_ms", "valid integer"),
        ({"interval": 100}, "interval", "unknown field"),
        ({"echo": True}, "echo", "unknown field"),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={v[k]}" for k in v),
)
def test_bad_values_name_the_field(bfd: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(config(bfd))
    ((where, what),) = exc.value.problems
    assert where == f"bgp.peers[0].bfd.{path}"
    assert message in what


@pytest.mark.parametrize("value", [True, False, "yes", 1, []], ids=repr)
def test_bfd_must_be_a_mapping(value: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        load(config(value))
    ((where, what),) = exc.value.problems
    assert where == "bgp.peers[0].bfd"
    if isinstance(value, bool):
        assert "use `bfd: {}`" in what
    else:
        assert "dictionary" in what or "BfdConfig" in what
