"""StatusBoard: since-when per decision kept across passes, work only for what changed, and the
per-reason gauges computed when /metrics is scraped."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import generate_latest

from bgpvip.cli import render_routes_table
from bgpvip.core.config import CheckKey, load
from bgpvip.core.desired import NodeState, compute
from bgpvip.core.health import Health, State
from bgpvip.core.model import Applied, ProbeResult
from bgpvip.core.services import ServiceDecisions
from bgpvip.reconcile import World
from bgpvip.status import StatusBoard
from tests.fakes import service_decision

CONFIG = load(
    {
        "bgp": {"local_as": 65100, "peers": [{"address": "10.0.1.1", "peer_as": 65000}]},
        "pools": [{"name": "p", "addresses": ["203.0.113.0/24"]}],
    }
)


def since(board: StatusBoard) -> dict[str, Any]:
    return {d["source"]: d["since"] for d in board.snapshot()["decisions"]}


def pass_(board: StatusBoard, table: ServiceDecisions, node: NodeState | None = None) -> None:
    desired = compute(CONFIG, {}, node or NodeState(), table)
    board.reconciled(World(config=CONFIG), desired, Applied(desired.routes, frozenset()), 0.001)


def test_since_moves_only_for_decisions_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    board = StatusBoard("n1")
    a, b, c = (
        service_decision("203.0.113.1", "a"),
        service_decision("203.0.113.2", "b"),
        service_decision("203.0.113.3", "c"),
    )
    first = ServiceDecisions.of((a, b, c))
    pass_(board, first)
    assert since(board) == dict.fromkeys(
        ("service/default/a", "service/default/b", "service/default/c"), 1000.0
    )

    clock[0] = 1010.0
    # b stops qualifying, c is deleted, a is the very same entry (shared with the first table)
    second = ServiceDecisions(
        first.by_source.set("service/default/b", (service_decision("203.0.113.2", "b", False),)).delete(
            "service/default/c"
        )
    )
    pass_(board, second)
    assert since(board) == {"service/default/a": 1000.0, "service/default/b": 1010.0}

    clock[0] = 1020.0
    pass_(board, second, NodeState(drained=True))  # a drain changes every announcing decision
    assert since(board) == {"service/default/a": 1020.0, "service/default/b": 1010.0}
    assert {d["source"]: d["reason"] for d in board.snapshot()["decisions"]} == {
        "service/default/a": "drained",
        "service/default/b": "noReadyEndpoints",
    }


def test_per_reason_gauges_are_computed_when_scraped() -> None:
    board = StatusBoard("n1")
    pass_(
        board,
        ServiceDecisions.of(
            (service_decision("203.0.113.1", "a"), service_decision("203.0.113.2", "b", False))
        ),
    )
    body = board.metrics()[2].decode()
    assert 'bgpvip_addresses{announced="true",kind="service",reason="hasEndpoints"} 1.0' in body
    assert 'bgpvip_addresses{announced="false",kind="service",reason="noReadyEndpoints"} 1.0' in body
    assert 'bgpvip_routes_announced{kind="service"} 1.0' in body
    pass_(board, ServiceDecisions.of((service_decision("203.0.113.2", "b", False),)))
    body = generate_latest(board.registry).decode()  # not scraped through metrics(): last values
    assert 'reason="hasEndpoints"} 1.0' in body
    body = board.metrics()[2].decode()
    assert 'reason="hasEndpoints"' not in body


def test_every_configured_peer_has_its_gauges_and_up_means_carrying_its_families() -> None:
    from bgpvip.core.peers import PeerStatus

    config = load(
        {
            "bgp": {
                "local_as": 65100,
                "router_id": "10.0.1.2",
                "peers": [
                    {"address": "10.0.1.1", "peer_as": 65000},
                    {"address": "fd00:1::1", "peer_as": 65000, "families": ["ipv4", "ipv6"]},
                ],
            }
        }
    )
    board = StatusBoard("n1")
    board.reconciled(World(config=config), compute(config, {}, NodeState()), Applied(), 0.001)
    body = board.metrics()[2].decode()
    assert 'bgpvip_peer_up{peer="10.0.1.1"} 0.0' in body, "known or not, a configured peer has a gauge"
    assert 'bgpvip_peer_up{peer="fd00:1::1"} 0.0' in body

    peers = {
        "10.0.1.1": PeerStatus(state="up", families=frozenset({"ipv4"})),
        "fd00:1::1": PeerStatus(state="up", families=frozenset({"ipv6"})),
    }
    board.reconciled(World(config=config, peers=peers), compute(config, {}, NodeState()), Applied(), 0.001)
    body = board.metrics()[2].decode()
    assert 'bgpvip_peer_up{peer="10.0.1.1"} 1.0' in body
    assert 'bgpvip_peer_up{peer="fd00:1::1"} 0.0' in body, "up without ipv4 is not up"
    assert 'bgpvip_peer_established{peer="fd00:1::1"} 1.0' in body
    assert 'bgpvip_peer_family_up{family="ipv4",peer="fd00:1::1"} 0.0' in body
    assert 'bgpvip_peer_family_up{family="ipv6",peer="fd00:1::1"} 1.0' in body
    (_, v6) = board.snapshot()["peers"]
    assert (v6["state"], v6["families_negotiated"], v6["carries_every_family"]) == ("up", ["ipv6"], False)
    assert v6["reason"] == "up without ipv4 unicast: the router's OPEN did not offer it"


@pytest.mark.parametrize(
    ("vip", "shown"),
    [({"as_path_prepend": 2}, "prepend=2"), ({"as_path_prepend": 1}, "prepend=1"), ({}, "-")],
    ids=["two", "one", "none"],
)
def test_routes_table_shows_the_configured_prepend_count(vip: dict[str, Any], shown: str) -> None:
    """The route carries the local AS once more than prepended (ExaBGP sends the whole path);
    the table shows what the operator configured."""
    config = load(
        {
            "bgp": {"local_as": 65100, "peers": [{"address": "10.0.1.1", "peer_as": 65000}]},
            "vips": [{"address": "198.51.100.10", "checks": [], **vip}],
        }
    )
    desired = compute(config, {}, NodeState())
    board = StatusBoard("n1")
    board.reconciled(World(config=config), desired, Applied(desired.routes, frozenset()), 0.001)
    (decision,) = board.snapshot()["decisions"]
    if vip:
        assert decision["attributes"]["as_path"] == [65100] * (vip["as_path_prepend"] + 1)
    line = render_routes_table(board.snapshot()).splitlines()[2]
    assert line.split()[5] == shown


def test_a_degraded_vip_shows_in_status_metrics_and_the_routes_table() -> None:
    config = load(
        {
            "bgp": {"local_as": 65100, "peers": [{"address": "10.0.1.1", "peer_as": 65000}]},
            "vips": [
                {
                    "name": "api",
                    "address": "198.51.100.10",
                    "checks": [
                        {"type": "kube-apiserver", "exclude": ["etcd"]},
                        {"type": "kube-apiserver", "on_failure": "lower-preference"},
                    ],
                }
            ],
        }
    )
    up = Health(state=State.UP)
    down = Health(state=State.DOWN, last_failure=ProbeResult(ok=False, detail="HTTP 500"))
    board = StatusBoard("n1")
    world = World(config=config, health={CheckKey("api", 0): up, CheckKey("api", 1): down})
    desired = compute(config, world.health, NodeState())
    board.reconciled(world, desired, Applied(desired.routes, frozenset()), 0.001)
    snap = board.snapshot()
    (d,) = snap["decisions"]
    assert (d["announced"], d["reason"], d["attributes"]["med"]) == (True, "degraded", 1000)
    assert (
        d["detail"]
        == "announced with lower preference (MED +1000): checks[1] (kube-apiserver /readyz): HTTP 500"
    )
    assert [c["on_failure"] for c in snap["checks"]] == ["withdraw", "lower-preference"]
    body = board.metrics()[2].decode()
    assert 'bgpvip_vip_degraded{address="198.51.100.10",vip="api"} 1.0' in body
    assert 'bgpvip_vip_announced{address="198.51.100.10",vip="api"} 1.0' in body
    assert 'bgpvip_addresses{announced="true",kind="vip",reason="degraded"} 1.0' in body
    line = render_routes_table(snap).splitlines()[2]
    assert (
        "degraded" in line and "med=1000" in line and "checks[1] (kube-apiserver /readyz): HTTP 500" in line
    )
    # the etcd check passes again: full preference, and the gauge says so
    world = World(config=config, health={CheckKey("api", 0): up, CheckKey("api", 1): up})
    desired = compute(config, world.health, NodeState())
    board.reconciled(world, desired, Applied(desired.routes, frozenset()), 0.001)
    body = board.metrics()[2].decode()
    assert 'bgpvip_vip_degraded{address="198.51.100.10",vip="api"} 0.0' in body
    assert board.snapshot()["decisions"][0]["attributes"]["med"] == 0
