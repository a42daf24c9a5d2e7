"""bgpvip.core.desired: a decision with a reason for every address, and the routes and addresses it implies."""

from __future__ import annotations

import copy
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpvip.core import config as cfg
from bgpvip.core.config import MAX_PRIORITY_PREPENDS, CheckKey
from bgpvip.core.desired import NodeState, compute, vip_route
from bgpvip.core.health import Health, State
from bgpvip.core.model import Attributes, Decision, Desired, ProbeResult, Reason, Route

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
def configs(draw: st.DrawFn) -> cfg.Config:
    addresses = draw(st.lists(st.sampled_from(VIP_ADDRESSES), min_size=1, max_size=4, unique=True))
    vips = []
    for address in addresses:
        v: dict[str, Any] = {
            "address": address,
            "checks": [TCP] * draw(st.integers(0, 2)),
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
