"""bgpvip.core.desired: a decision with a reason for every address, and the routes and addresses it implies."""

from __future__ import annotations

import copy
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bgpvip.core import config as cfg
from bgpvip.core.config import MAX_PRIORITY_PREPENDS, CheckKey
from bgpvip.core.desired import NodeState, announced_as_penalised, compute, decide_vip, vip_route
from bgpvip.core.health import Health, State
from bgpvip.core.model import Announce, Applied, Attributes, Decision, Desired, ProbeResult, Reason, Route
from bgpvip.core.plan import diff

LOCAL_AS = 65001
PEERS = [
    {"address": "192.0.2.1", "peer_as": 65000},
    {"address": "2001:db8::1", "peer_as": 65000, "families": ["ipv6"]},
]
VIP = "198.51.100.1"


def make_config(*vips: dict[str, Any], **top: Any) -> cfg.Config:
    data: dict[str, Any] = {"bgp": {"local_as": LOCAL_AS, "peers": PEERS}, "vips": list(vips)}
    data.update(copy.deepcopy(top))
    return cfg.load(data)


def vip(address: str = VIP, **kw: Any) -> dict[str, Any]:
    return {"address": address, **kw}


TCP = {"type": "tcp", "port": 80}


def h(state: State, *, count: int = 0, failure: str | None = None) -> Health:
    last = ProbeResult(ok=False, detail=failure) if failure is not None else None
    return Health(state=state, count=count, last=last, last_failure=last)


def host(address: str) -> Any:
    a = ip_address(address)
    return ip_network(f"{a}/{a.max_prefixlen}")


def only(desired: Desired) -> Decision:
    assert len(desired.decisions) == 1
    return desired.decisions[0]


def service(
    address: str,
    *,
    announce: bool = True,
    reason: Reason = Reason.HEALTHY,
    source: str = "service/default/web",
    med: int | None = None,
) -> Decision:
    route = Route(prefix=host(address), attributes=Attributes(med=med))
    return Decision(address=ip_address(address), announce=announce, reason=reason, source=source, route=route)


# --------------------------------------------------------------------------- VIP decisions

KEY = CheckKey(VIP, 0)
KEY1 = CheckKey(VIP, 1)

# fmt: off
VIP_CASES = [
    # (id, vip overrides, healths, node, announce, reason, detail substring, address held)
    ("healthy",                  {"checks": [TCP]},       {KEY: h(State.UP)},                      NodeState(),                          True,  Reason.HEALTHY,       "1/1 checks up",                            True),
    ("falling-still-announced",  {"checks": [TCP]},       {KEY: h(State.FALLING, count=1)},         NodeState(),                          True,  Reason.HEALTHY,       "1/1 checks up",                            True),
    ("no-checks",                {},                      {},                                      NodeState(),                          True,  Reason.HEALTHY,       "no checks",                                True),
    ("failing",                  {"checks": [TCP]},       {KEY: h(State.DOWN, failure="HTTP 503")}, NodeState(),                          False, Reason.CHECK_FAILING, "checks[0] (tcp): HTTP 503",                False),
    ("pending-init",             {"checks": [TCP]},       {KEY: h(State.INIT)},                    NodeState(),                          False, Reason.CHECK_PENDING, "checks[0] (tcp): 0/3 successes",           False),
    ("pending-rising",           {"checks": [TCP]},       {KEY: h(State.RISING, count=2)},         NodeState(),                          False, Reason.CHECK_PENDING, "checks[0] (tcp): 2/3 successes",           False),
    ("pending-no-health-yet",    {"checks": [TCP]},       {},                                      NodeState(),                          False, Reason.CHECK_PENDING, "0/3 successes",                            False),
    ("all-one-failing",          {"checks": [TCP, TCP]},  {KEY: h(State.UP), KEY1: h(State.DOWN, failure="refused")}, NodeState(), False, Reason.CHECK_FAILING, "checks[1] (tcp): refused",                 False),
    ("any-one-up",               {"checks": [TCP, TCP], "require": "any"}, {KEY: h(State.UP), KEY1: h(State.DOWN)}, NodeState(),  True,  Reason.HEALTHY,       "1/2 checks up",                            True),
    ("any-none-up",              {"checks": [TCP, TCP], "require": "any"}, {KEY: h(State.DOWN), KEY1: h(State.RISING)}, NodeState(), False, Reason.CHECK_FAILING, "checks[0] (tcp): failed",               False),
    ("drained",                  {"checks": [TCP]},       {KEY: h(State.UP)},                      NodeState(drained=True),              False, Reason.DRAINED,       "drain file /var/lib/bgpvip/drain exists",  True),
    ("drained-and-failing",      {"checks": [TCP]},       {KEY: h(State.DOWN, failure="x")},       NodeState(drained=True),              False, Reason.CHECK_FAILING, "drained; checks[0] (tcp): x",              False),
    ("stopping",                 {"checks": [TCP]},       {KEY: h(State.UP)},                      NodeState(stopping=True),             False, Reason.STOPPING,      "shutting down",                            False),
    ("stopping-wins-over-drain", {},                      {},                                      NodeState(stopping=True, drained=True), False, Reason.STOPPING,    "shutting down",                            False),
]
# fmt: on


@pytest.mark.parametrize(
    ("overrides", "healths", "node", "announce", "reason", "detail", "held"),
    [c[1:] for c in VIP_CASES],
    ids=[c[0] for c in VIP_CASES],
)
def test_vip_decision(  # noqa: PLR0917
    overrides: dict[str, Any],
    healths: dict[CheckKey, Health],
    node: NodeState,
    announce: bool,
    reason: Reason,
    detail: str,
    held: bool,
) -> None:
    config = make_config(vip(**overrides))
    desired = compute(config, healths, node)
    d = only(desired)
    assert (d.address, d.announce, d.reason) == (ip_address(VIP), announce, reason)
    assert detail in d.detail
    assert (d.source, d.interface) == (f"vip/{VIP}", "lo")
    # the route is shown even when it is not announced: `bgpvip routes` is a dry run
    assert d.route == vip_route(config, config.vips[0])
    assert desired.routes == (frozenset({d.route}) if announce else frozenset())
    assert desired.addresses == (frozenset({("lo", ip_interface(f"{VIP}/32"))}) if held else frozenset())


def test_vip_without_interface_is_announced_without_an_address() -> None:
    desired = compute(make_config(vip(interface=None)), {}, NodeState())
    d = only(desired)
    assert (d.announce, d.interface) == (True, None)
    assert len(desired.routes) == 1
    assert desired.addresses == frozenset()


def test_drained_vip_without_interface_holds_nothing() -> None:
    desired = compute(make_config(vip(interface=None)), {}, NodeState(drained=True))
    assert (only(desired).reason, desired.routes, desired.addresses) == (
        Reason.DRAINED,
        frozenset(),
        frozenset(),
    )


def test_ipv6_vip_is_a_128_on_its_interface() -> None:
    desired = compute(make_config(vip("2001:db8::10", interface="dummy0", name="v6")), {}, NodeState())
    (route,) = desired.routes
    assert route.prefix == ip_network("2001:db8::10/128")
    assert desired.addresses == {("dummy0", ip_interface("2001:db8::10/128"))}
    assert only(desired).source == "vip/v6"


def test_checks_are_looked_up_by_vip_label() -> None:
    config = make_config(vip(name="api", checks=[TCP]))
    assert only(compute(config, {CheckKey("api", 0): h(State.UP)}, NodeState())).announce
    assert not only(compute(config, {CheckKey(VIP, 0): h(State.UP)}, NodeState())).announce


# --------------------------------------------------------------------------- lower-preference checks

SOFT = {**TCP, "on_failure": "lower-preference"}
KUBE_HARD = {"type": "kube-apiserver", "exclude": ["etcd", "etcd-readiness"]}
KUBE_SOFT = {"type": "kube-apiserver", "on_failure": "lower-preference"}
KEY2 = CheckKey(VIP, 2)
UP, DOWN = h(State.UP), h(State.DOWN, failure="HTTP 500")

# fmt: off
SOFT_CASES = [
    # (id, top-level, vip overrides, healths, node, announce, reason, detail substring, med, prepends)
    ("all-up",                  {}, {"checks": [TCP, SOFT]},  {KEY: UP, KEY1: UP},                        NodeState(), True,  Reason.HEALTHY,       "2/2 checks up",                                                          0,    0),
    ("soft-down",               {}, {"checks": [TCP, SOFT]},  {KEY: UP, KEY1: DOWN},                      NodeState(), True,  Reason.DEGRADED,      "announced with lower preference (MED +1000): checks[1] (tcp): HTTP 500", 1000, 0),
    ("soft-falling-still-up",   {}, {"checks": [TCP, SOFT]},  {KEY: UP, KEY1: h(State.FALLING, count=1)}, NodeState(), True,  Reason.HEALTHY,       "2/2 checks up",                                                          0,    0),
    ("soft-not-risen-yet",      {}, {"checks": [TCP, SOFT]},  {KEY: UP},                                  NodeState(), True,  Reason.DEGRADED,      "checks[1] (tcp): 0/3 successes",                                         1000, 0),
    ("soft-rising",             {}, {"checks": [TCP, SOFT]},  {KEY: UP, KEY1: h(State.RISING, count=2)},  NodeState(), True,  Reason.DEGRADED,      "checks[1] (tcp): 2/3 successes",                                         1000, 0),
    ("hard-down-soft-up",       {}, {"checks": [TCP, SOFT]},  {KEY: h(State.DOWN, failure="refused"), KEY1: UP},   NodeState(), False, Reason.CHECK_FAILING, "checks[0] (tcp): refused",                                  0,    0),
    ("hard-down-soft-down",     {}, {"checks": [TCP, SOFT]},  {KEY: h(State.DOWN, failure="refused"), KEY1: DOWN}, NodeState(), False, Reason.CHECK_FAILING, "checks[0] (tcp): refused",                                  1000, 0),
    ("hard-pending",            {}, {"checks": [TCP, SOFT]},  {KEY1: UP},                                 NodeState(), False, Reason.CHECK_PENDING, "checks[0] (tcp): 0/3 successes",                                         0,    0),
    ("only-soft-down",          {}, {"checks": [SOFT]},       {KEY: DOWN},                                NodeState(), True,  Reason.DEGRADED,      "checks[0] (tcp): HTTP 500",                                              1000, 0),
    ("only-soft-no-health",     {}, {"checks": [SOFT]},       {},                                         NodeState(), True,  Reason.DEGRADED,      "checks[0] (tcp): 0/3 successes",                                         1000, 0),
    ("only-soft-up",            {}, {"checks": [SOFT]},       {KEY: UP},                                  NodeState(), True,  Reason.HEALTHY,       "1/1 checks up",                                                          0,    0),
    ("two-soft-down-add-up",    {}, {"checks": [TCP, SOFT, {**SOFT, "med_penalty": 7}]}, {KEY: UP, KEY1: DOWN, KEY2: h(State.DOWN, failure="timed out")}, NodeState(), True, Reason.DEGRADED, "(MED +1007): checks[1] (tcp): HTTP 500; checks[2] (tcp): timed out", 1007, 0),
    ("any-one-hard-up-soft-down", {}, {"checks": [TCP, TCP, SOFT], "require": "any"}, {KEY: DOWN, KEY1: UP, KEY2: DOWN}, NodeState(), True, Reason.DEGRADED, "checks[2] (tcp): HTTP 500",                                     1000, 0),
    ("any-soft-up-does-not-announce", {}, {"checks": [TCP, TCP, SOFT], "require": "any"}, {KEY: DOWN, KEY1: DOWN, KEY2: UP}, NodeState(), False, Reason.CHECK_FAILING, "checks[0] (tcp): HTTP 500; checks[1] (tcp): HTTP 500",  0,    0),
    ("drained-degraded",        {}, {"checks": [TCP, SOFT]},  {KEY: UP, KEY1: DOWN},                      NodeState(drained=True), False, Reason.DRAINED, "drain file",                                                           1000, 0),
    ("stopping-degraded",       {}, {"checks": [TCP, SOFT]},  {KEY: UP, KEY1: DOWN},                      NodeState(stopping=True), False, Reason.STOPPING, "shutting down",                                                      1000, 0),
    ("priority-med-adds",       {"priority": 200}, {"checks": [TCP, SOFT]}, {KEY: UP, KEY1: DOWN},       NodeState(), True,  Reason.DEGRADED,      "(MED +1000)",                                                            1055, 0),
    ("priority-med-healthy",    {"priority": 200}, {"checks": [TCP, SOFT]}, {KEY: UP, KEY1: UP},         NodeState(), True,  Reason.HEALTHY,       "2/2 checks up",                                                          55,   0),
    ("explicit-med-adds",       {}, {"med": 30, "checks": [TCP, SOFT]}, {KEY: UP, KEY1: DOWN},            NodeState(), True,  Reason.DEGRADED,      "(MED +1000)",                                                            1030, 0),
    ("as-path-mode-prepends",   {"priority": 250, "priority_attribute": "as-path"}, {"checks": [TCP, SOFT]}, {KEY: UP, KEY1: DOWN}, NodeState(), True, Reason.DEGRADED, "(11 AS-path prepends)",                                       None, 15),
    ("as-path-mode-healthy",    {"priority": 250, "priority_attribute": "as-path"}, {"checks": [TCP, SOFT]}, {KEY: UP, KEY1: UP},   NodeState(), True, Reason.HEALTHY,  "2/2 checks up",                                               None, 4),
    ("prepend-only-no-med",     {}, {"checks": [TCP, {**SOFT, "prepend_penalty": 1}]}, {KEY: UP, KEY1: DOWN}, NodeState(), True, Reason.DEGRADED,  "(1 AS-path prepend)",                                                    None, 1),
    ("both-penalties",          {}, {"as_path_prepend": 1, "checks": [{**SOFT, "med_penalty": 5, "prepend_penalty": 2}]}, {KEY: DOWN}, NodeState(), True, Reason.DEGRADED, "(MED +5, 2 AS-path prepends)",                    5,    3),
    ("http-label",              {}, {"checks": [{"type": "http", "url": "https://127.0.0.1:8443/healthz?full"}, SOFT]}, {KEY: DOWN, KEY1: UP}, NodeState(), False, Reason.CHECK_FAILING, "checks[0] (http /healthz?full): HTTP 500", 0, 0),
    ("kube-apiserver-labels",   {}, {"checks": [KUBE_HARD, KUBE_SOFT]}, {KEY: UP, KEY1: DOWN},            NodeState(), True,  Reason.DEGRADED,      "checks[1] (kube-apiserver /readyz): HTTP 500",                           1000, 0),
    ("kube-apiserver-hard-label", {}, {"checks": [KUBE_HARD, KUBE_SOFT]}, {KEY: DOWN, KEY1: DOWN},        NodeState(), False, Reason.CHECK_FAILING, "checks[0] (kube-apiserver /readyz?exclude=etcd&exclude=etcd-readiness): HTTP 500", 1000, 0),
]
# fmt: on


@pytest.mark.parametrize(
    ("top", "overrides", "healths", "node", "announce", "reason", "detail", "med", "prepends"),
    [c[1:] for c in SOFT_CASES],
    ids=[c[0] for c in SOFT_CASES],
)
def test_lower_preference_checks(  # noqa: PLR0917
    top: dict[str, Any],
    overrides: dict[str, Any],
    healths: dict[CheckKey, Health],
    node: NodeState,
    announce: bool,
    reason: Reason,
    detail: str,
    med: int | None,
    prepends: int,
) -> None:
    """Failing `lower-preference` checks change the route's attributes, never whether it is
    announced; the `withdraw` checks decide that, as `require` says."""
    desired = compute(make_config(vip(**overrides), **top), healths, node)
    d = only(desired)
    assert (d.announce, d.reason) == (announce, reason), d.detail
    assert detail in d.detail, d.detail
    assert d.route is not None
    assert d.route.attributes.med == med
    assert d.route.attributes.as_path == ((LOCAL_AS,) * (prepends + 1) if prepends else ())
    assert desired.routes == (frozenset({d.route}) if announce else frozenset())


def test_a_failing_withdraw_check_detail_leaves_lower_preference_checks_out() -> None:
    config = make_config(vip(checks=[TCP, SOFT]))
    d = only(compute(config, {KEY: h(State.DOWN, failure="refused"), KEY1: DOWN}, NodeState()))
    assert d.detail == "checks[0] (tcp): refused"


def test_a_degraded_route_is_replaced_in_place() -> None:
    """Healthy → degraded → healthy: same prefix, new attributes; the plan re-announces and never
    withdraws, and the address stays."""
    config = make_config(vip(checks=[TCP, SOFT]))
    healthy = compute(config, {KEY: UP, KEY1: UP}, NodeState())
    degraded = compute(config, {KEY: UP, KEY1: DOWN}, NodeState())
    (a,), (b,) = healthy.routes, degraded.routes
    assert (a.prefix, a.key) == (b.prefix, b.key) and a != b
    assert healthy.addresses == degraded.addresses != frozenset()
    for before, after in ((healthy, degraded), (degraded, healthy)):
        actions = diff(after, Applied(routes=before.routes, addresses=before.addresses)).actions()
        assert actions == (Announce(tuple(after.routes)),)


def test_a_lower_preference_check_that_sees_its_server_die_does_not_release_the_address_early() -> None:
    broken = Health(
        state=State.DOWN, last_failure=ProbeResult(ok=False, detail="connection refused", broken=True)
    )
    config = make_config(vip(checks=[TCP, SOFT]))
    assert (
        compute(config, {KEY: h(State.DOWN, failure="HTTP 503"), KEY1: broken}, NodeState()).release_now
        == frozenset()
    )
    assert compute(config, {KEY: broken, KEY1: UP}, NodeState()).release_now == {(4, int(ip_address(VIP)))}


@pytest.mark.parametrize(
    ("top", "checks", "attributes", "penalised"),
    [
        ({}, [TCP, SOFT], Attributes(med=0), False),
        ({}, [TCP, SOFT], Attributes(med=1000), True),
        ({}, [TCP, SOFT], Attributes(), False),
        ({"priority": 200}, [SOFT], Attributes(med=55), False),
        ({"priority": 200}, [SOFT], Attributes(med=1055), True),
        ({"priority_attribute": "as-path"}, [SOFT], Attributes(as_path=(LOCAL_AS,) * 12), True),
        ({"priority_attribute": "as-path"}, [SOFT], Attributes(), False),
    ],
    ids=["healthy", "penalised", "no-med-read-back", "priority", "priority-penalised", "prepended", "plain"],
)
def test_announced_as_penalised(
    top: dict[str, Any], checks: list[dict[str, Any]], attributes: Attributes, penalised: bool
) -> None:
    config = make_config(vip(checks=checks), **top)
    route = Route(prefix=host(VIP), attributes=attributes)
    assert announced_as_penalised(config, config.vips[0], route) is penalised


# --------------------------------------------------------------------------- attributes

# fmt: off
PRIORITIES = [
    # (id, top-level, vip overrides, expected med, expected number of prepends)
    ("no-priority",               {},                                            {},                           None, 0),
    ("global-med",                {"priority": 100},                             {},                           155,  0),
    ("highest-priority-med",      {"priority": 254},                             {},                           1,    0),
    ("lowest-priority-med",       {"priority": 1},                               {},                           254,  0),
    ("vip-overrides-global",      {"priority": 100},                             {"priority": 200},            55,   0),
    ("vip-only",                  {},                                            {"priority": 200},            55,   0),
    ("explicit-med-wins",         {"priority": 100},                             {"med": 10},                  10,   0),
    ("explicit-med-zero-wins",    {"priority": 100},                             {"med": 0},                   0,    0),
    ("as-path-few",               {"priority": 250, "priority_attribute": "as-path"}, {},                      None, 4),
    ("as-path-top-priority",      {"priority": 254, "priority_attribute": "as-path"}, {},                      None, 0),
    ("as-path-capped",            {"priority": 100, "priority_attribute": "as-path"}, {},                      None, MAX_PRIORITY_PREPENDS),
    ("as-path-cap-boundary",      {"priority": 244, "priority_attribute": "as-path"}, {},                      None, 10),
    ("as-path-vip-overrides",     {"priority": 100, "priority_attribute": "as-path"}, {"priority": 252},       None, 2),
    ("as-path-adds-to-prepend",   {"priority": 250, "priority_attribute": "as-path"}, {"as_path_prepend": 3},  None, 7),
    ("as-path-keeps-med",         {"priority": 250, "priority_attribute": "as-path"}, {"med": 7},              7,    4),
    ("prepend-without-priority",  {},                                            {"as_path_prepend": 2},       None, 2),
]
# fmt: on


@pytest.mark.parametrize(
    ("top", "overrides", "med", "prepends"), [p[1:] for p in PRIORITIES], ids=[p[0] for p in PRIORITIES]
)
def test_priority(top: dict[str, Any], overrides: dict[str, Any], med: int | None, prepends: int) -> None:
    (route,) = compute(make_config(vip(**overrides), **top), {}, NodeState()).routes
    assert route.attributes.med == med
    # the path ExaBGP sends verbatim: the local AS once, plus one copy per prepend
    assert route.attributes.as_path == ((LOCAL_AS,) * (prepends + 1) if prepends else ())


def test_attributes_are_carried() -> None:
    config = make_config(
        vip(local_preference=300, communities=["65000:100", "no-export"], large_communities=["65000:1:2"])
    )
    (route,) = compute(config, {}, NodeState()).routes
    assert route.attributes == Attributes(
        med=None,
        local_preference=300,
        communities=("65000:100", "no-export"),
        large_communities=("65000:1:2",),
        as_path=(),
    )
    assert route.next_hop == "self"


# --------------------------------------------------------------------------- Service decisions

# fmt: off
SERVICE_CASES = [
    # (id, node, service decision in, announce, reason out)
    ("announced",               NodeState(),                service("203.0.113.5"),                                             True,  Reason.HEALTHY),
    ("not-announced-kept",      NodeState(),                service("203.0.113.5", announce=False, reason=Reason.NO_LOCAL_ENDPOINTS), False, Reason.NO_LOCAL_ENDPOINTS),
    ("drained-overrides",       NodeState(drained=True),    service("203.0.113.5"),                                             False, Reason.DRAINED),
    ("stopping-overrides",      NodeState(stopping=True),   service("203.0.113.5"),                                             False, Reason.STOPPING),
    ("drained-keeps-own-reason", NodeState(drained=True),   service("203.0.113.5", announce=False, reason=Reason.NODE_NOT_READY), False, Reason.NODE_NOT_READY),
]
# fmt: on


@pytest.mark.parametrize(
    ("node", "decision", "announce", "reason"),
    [c[1:] for c in SERVICE_CASES],
    ids=[c[0] for c in SERVICE_CASES],
)
def test_service_decision(node: NodeState, decision: Decision, announce: bool, reason: Reason) -> None:
    desired = compute(make_config(), {}, node, [decision])
    d = only(desired)
    assert (d.announce, d.reason, d.source, d.route) == (announce, reason, decision.source, decision.route)
    assert desired.routes == (frozenset({decision.route}) if announce else frozenset())
    assert desired.addresses == frozenset()


def test_conflicting_routes_for_one_prefix_give_one_route_chosen_deterministically() -> None:
    a = service("203.0.113.5", med=10, source="service/a/web")
    b = service("203.0.113.5", med=20, source="service/b/web")
    first = compute(make_config(), {}, NodeState(), [a, b])
    second = compute(make_config(), {}, NodeState(), [b, a])
    assert first == second
    assert len(first.routes) == 1
    assert next(iter(first.routes)) in (a.route, b.route)
    assert [d.source for d in first.decisions] == ["service/a/web", "service/b/web"]


def test_a_refused_decision_does_not_hide_an_announced_one_for_the_same_prefix() -> None:
    yes = service("203.0.113.5", source="service/a/web")
    no = service("203.0.113.5", source="service/b/web", announce=False, reason=Reason.NO_LOCAL_ENDPOINTS)
    assert compute(make_config(), {}, NodeState(), [no, yes]).routes == {yes.route}


def test_decisions_are_sorted_by_address() -> None:
    config = make_config(vip("198.51.100.9"), vip("2001:db8::1"), vip("198.51.100.10"))
    desired = compute(config, {}, NodeState(), [service("203.0.113.1"), service("10.0.0.1")])
    assert [str(d.address) for d in desired.decisions] == [
        "10.0.0.1",
        "198.51.100.9",
        "198.51.100.10",
        "203.0.113.1",
        "2001:db8::1",
    ]


# --------------------------------------------------------------------------- properties

VIP_ADDRESSES = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8::1", "2001:db8::2"]
# few addresses, so that decisions often conflict over one prefix (with each other and with VIPs)
SERVICE_ADDRESSES = ["203.0.113.1", "2001:db8:1::1", VIP_ADDRESSES[0]]
SOURCES = ["service/a/x", "service/b/y"]


@st.composite
def check_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A `withdraw` check or a `lower-preference` one, with default or explicit penalties."""
    if draw(st.booleans()):
        return TCP
    spec = dict(SOFT)
    med, prepend = draw(st.none() | st.integers(0, 5000)), draw(st.none() | st.integers(0, 3))
    if (med, prepend) != (None, None) and not (med or prepend):
        med = 1
    for key, value in (("med_penalty", med), ("prepend_penalty", prepend)):
        if value is not None:
            spec[key] = value
    return spec


@st.composite
def configs(draw: st.DrawFn) -> cfg.Config:
    addresses = draw(st.lists(st.sampled_from(VIP_ADDRESSES), min_size=1, max_size=4, unique=True))
    vips = []
    for address in addresses:
        v: dict[str, Any] = {
            "address": address,
            "checks": draw(st.lists(check_specs(), max_size=3)),
            "require": draw(st.sampled_from(["all", "any"])),
            "interface": draw(st.sampled_from(["lo", "dummy0", None])),
        }
        if draw(st.booleans()):
            v["priority"] = draw(st.integers(1, 254))
        if draw(st.booleans()):
            v["med"] = draw(st.integers(0, 300))
        vips.append(v)
    top: dict[str, Any] = {"priority_attribute": draw(st.sampled_from(["med", "as-path"]))}
    if draw(st.booleans()):
        top["priority"] = draw(st.integers(1, 254))
    return make_config(*vips, **top)


healths_st = st.builds(
    Health,
    state=st.sampled_from(State),
    count=st.integers(0, 3),
    last_failure=st.none()
    | st.builds(ProbeResult, ok=st.just(False), detail=st.sampled_from(["refused", "HTTP 503"])),
)


def health_maps(config: cfg.Config) -> st.SearchStrategy[dict[CheckKey, Health]]:
    keys = [CheckKey(v.label, i) for v in config.vips for i in range(len(v.checks))]
    return st.dictionaries(st.sampled_from(keys), healths_st) if keys else st.just({})


service_decisions = st.lists(
    st.builds(
        service,
        st.sampled_from(SERVICE_ADDRESSES),
        announce=st.booleans(),
        reason=st.sampled_from([Reason.HEALTHY, Reason.NO_LOCAL_ENDPOINTS, Reason.NODE_NOT_READY]),
        source=st.sampled_from(SOURCES),
        med=st.none() | st.integers(0, 3),
    ),
    max_size=6,
)
nodes = st.builds(NodeState, drained=st.booleans(), stopping=st.booleans())


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[cfg.Config, dict[CheckKey, Health], NodeState, list[Decision]]:
    config = draw(configs())
    return config, draw(health_maps(config)), draw(nodes), draw(service_decisions)


Scenario = tuple[cfg.Config, dict[CheckKey, Health], NodeState, list[Decision]]


@settings(max_examples=120, deadline=None)
@given(scenario=scenarios())
def test_property_no_route_without_an_announcing_decision(scenario: Scenario) -> None:
    desired = compute(*scenario)
    announcing = {d.route for d in desired.decisions if d.announce and d.route is not None}
    assert desired.routes <= announcing
    routed = {r.prefix for r in desired.routes}
    assert len(routed) == len(desired.routes), "one route per prefix"
    for d in desired.decisions:
        if not d.announce and d.route is not None and d.route.prefix in routed:
            assert any(e.announce and e.route and e.route.prefix == d.route.prefix for e in desired.decisions)


@settings(max_examples=120, deadline=None)
@given(scenario=scenarios(), data=st.data())
def test_property_compute_is_deterministic_under_reordering(scenario: Scenario, data: st.DataObject) -> None:
    config, healths, node, services = scenario
    shuffled_healths = dict(data.draw(st.permutations(list(healths.items()))))
    shuffled_services = data.draw(st.permutations(services))
    assert compute(config, healths, node, services) == compute(
        config, shuffled_healths, node, shuffled_services
    )


@settings(max_examples=120, deadline=None)
@given(scenario=scenarios())
def test_property_every_route_is_a_configured_vip_or_a_given_service_route(scenario: Scenario) -> None:
    config, healths, node, services = scenario
    desired = compute(config, healths, node, services)
    allowed = {ip_network(f"{v.address}/{v.address.max_prefixlen}") for v in config.vips}
    allowed |= {d.route.prefix for d in services if d.route is not None}
    assert {r.prefix for r in desired.routes} <= allowed
    # and each VIP gets exactly one decision, whatever happens
    assert sorted(d.source for d in desired.decisions if d.source.startswith("vip/")) == sorted(
        f"vip/{v.label}" for v in config.vips
    )


@settings(max_examples=120, deadline=None)
@given(scenario=scenarios())
def test_property_operator_state_wins_over_health(scenario: Scenario) -> None:
    config, healths, node, services = scenario
    desired = compute(config, healths, node, services)
    if node.stopping:
        assert (desired.routes, desired.addresses) == (frozenset(), frozenset())
    if node.drained:
        assert desired.routes == frozenset()
    # an address is held exactly while its VIP is announced or drained (and bgpvip manages it)
    held = {
        (v.interface, ip_interface(f"{v.address}/{v.address.max_prefixlen}"))
        for v, d in _by_vip(config, desired)
        if v.interface is not None and (d.announce or d.reason == Reason.DRAINED)
    }
    assert desired.addresses == held


def _by_vip(config: cfg.Config, desired: Desired) -> list[tuple[cfg.VipConfig, Decision]]:
    by_source = {d.source: d for d in desired.decisions}
    return [(v, by_source[f"vip/{v.label}"]) for v in config.vips]


def is_soft(config: cfg.Config, key: CheckKey) -> bool:
    v = next(v for v in config.vips if v.label == key.vip)
    return v.checks[key.index].on_failure == "lower-preference"


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios(), data=st.data())
def test_property_a_lower_preference_check_never_withdraws(scenario: Scenario, data: st.DataObject) -> None:
    """Whatever state the `lower-preference` checks are in, the same VIPs are announced (and
    hold their addresses) as with all of them UP: only the attributes change."""
    config, healths, node, services = scenario
    soft = [
        CheckKey(v.label, i)
        for v in config.vips
        for i, c in enumerate(v.checks)
        if c.on_failure != "withdraw"
    ]
    assume(soft)
    ups = {**healths, **dict.fromkeys(soft, h(State.UP))}
    other = {**healths, **{k: data.draw(healths_st) for k in soft}}
    a, b = compute(config, ups, node, services), compute(config, other, node, services)
    assert [d.announce for d in a.own] == [d.announce for d in b.own]
    assert {r.prefix for r in a.routes} == {r.prefix for r in b.routes}
    assert a.addresses == b.addresses


def preference(attributes: Attributes, *, missing_med: int) -> tuple[int, int]:
    """How a router ranks a route between the nodes (lower wins): AS-path length first, then
    MED, a missing MED counting as `missing_med` (0 by RFC 4271; the worst with Yamaha RTX or
    FRR's missing-as-worst)."""
    med = attributes.med if attributes.med is not None else missing_med
    return (len(attributes.as_path) or 1, med)


def strictly_better(a: Attributes, b: Attributes) -> bool:
    return all(preference(a, missing_med=m) < preference(b, missing_med=m) for m in (0, 2**32 - 1))


@settings(max_examples=150, deadline=None)
@given(config=configs(), data=st.data())
def test_property_a_healthy_node_beats_a_degraded_one_of_the_same_priority(
    config: cfg.Config, data: st.DataObject
) -> None:
    """Two nodes with this same config: on one every check passes, on the other the `withdraw`
    checks pass and at least one `lower-preference` check does not. The healthy node's route
    is strictly preferred, whether the router takes a missing MED as 0 or as the worst."""
    for v in config.vips:
        keys = [CheckKey(v.label, i) for i in range(len(v.checks))]
        soft = [k for k, c in zip(keys, v.checks, strict=True) if c.on_failure != "withdraw"]
        if not soft:
            continue
        failing = data.draw(st.lists(st.sampled_from(soft), min_size=1, unique=True))
        bad_health = data.draw(st.sampled_from([State.DOWN, State.INIT, State.RISING]))
        healthy = dict.fromkeys(keys, h(State.UP))
        degraded = {**healthy, **dict.fromkeys(failing, h(bad_health))}
        good = decide_vip(config, v, healthy, NodeState())
        worse = decide_vip(config, v, degraded, NodeState())
        assert (good.announce, good.reason, worse.announce, worse.reason) == (
            True,
            Reason.HEALTHY,
            True,
            Reason.DEGRADED,
        )
        assert good.route is not None and worse.route is not None
        assert strictly_better(good.route.attributes, worse.route.attributes), (good.route, worse.route)


@settings(max_examples=150, deadline=None)
@given(
    mode=st.sampled_from(["med", "as-path"]),
    priorities=st.tuples(st.none() | st.integers(1, 254), st.none() | st.integers(1, 254)),
)
def test_property_default_penalties_outweigh_any_priority(
    mode: str, priorities: tuple[int | None, int | None]
) -> None:
    """With the default penalties, a healthy node wins against a degraded one whatever either's
    priority; and when both are degraded they rank as they did healthy (ECMP stays ECMP, the
    node `priority` picks stays picked), so an outage on every node moves no flow."""

    def route(priority: int | None, soft: State) -> Attributes:
        top = {"priority_attribute": mode, **({"priority": priority} if priority else {})}
        config = make_config(vip(checks=[TCP, SOFT]), **top)
        d = decide_vip(config, config.vips[0], {KEY: h(State.UP), KEY1: h(soft)}, NodeState())
        assert d.announce and d.route is not None
        return d.route.attributes

    a, b = priorities
    assert strictly_better(route(a, State.UP), route(b, State.DOWN))
    for m in (0, 2**32 - 1):
        healthy = (
            preference(route(a, State.UP), missing_med=m),
            preference(route(b, State.UP), missing_med=m),
        )
        degraded = (
            preference(route(a, State.DOWN), missing_med=m),
            preference(route(b, State.DOWN), missing_med=m),
        )
        assert (healthy[0] > healthy[1]) - (healthy[0] < healthy[1]) == (degraded[0] > degraded[1]) - (
            degraded[0] < degraded[1]
        )
