"""decide_services and KubeState: table tests for every rule, Hypothesis properties."""

from __future__ import annotations

import ipaddress
import random
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpvip.core.config import Config, load
from bgpvip.core.model import Attributes, Decision, Reason, host_network
from bgpvip.core.services import (
    EXCLUDE_LABEL,
    EndpointSliceView,
    EndpointView,
    KubeDelete,
    KubeKind,
    KubeListPage,
    KubeState,
    KubeSynced,
    KubeUnavailable,
    KubeUpsert,
    NodeView,
    ServiceDecider,
    ServiceDecisions,
    ServiceView,
    ShardedMap,
    decide_services,
    selector_hash,
    service_routes,
)

NODE = "n1"
CLASS = "bgpvip.io/bgp"
REFUSED = {
    Reason.NOT_IN_POOL,
    Reason.FAMILY_NOT_PEERED,
    Reason.POOL_NOT_ALLOWED,
    Reason.EXTERNAL_IP_NOT_ALLOWED,
    Reason.INVALID_ADDRESS,
}


def make_config(**over: Any) -> Config:
    """Pools: public (203.0.113.0/24), team (198.51.100.0/28, namespace team-a only),
    edge (198.51.100.16/28, Services labelled tier=edge), ext (192.0.2.128/25, externalIPs ok);
    with `ipv6=True` also v6 (2001:db8:100::/64) and an IPv6 session."""
    ipv6 = over.pop("ipv6", False)
    kubernetes = {"enabled": True, **over.pop("kubernetes", {})}
    pools: list[dict[str, Any]] = [
        {"name": "public", "addresses": ["203.0.113.0/24"], "communities": ["65000:100"], "med": 50},
        {"name": "team", "addresses": ["198.51.100.0/28"], "namespaces": ["team-a"]},
        {"name": "edge", "addresses": ["198.51.100.16/28"], "service_selector": {"tier": "edge"}},
        {"name": "ext", "addresses": ["192.0.2.128/25"], "allow_external_ips": True, "as_path_prepend": 2},
    ]
    if ipv6:
        pools.append({"name": "v6", "addresses": ["2001:db8:100::/64"]})
    doc = {
        "bgp": {
            "local_as": 65001,
            "peers": [
                {"address": "192.0.2.1", "peer_as": 65000},
                *([{"address": "2001:db8::1", "peer_as": 65000, "families": ["ipv6"]}] if ipv6 else []),
            ],
        },
        "pools": pools,
        "kubernetes": kubernetes,
        **over,
    }
    return load(doc)


def svc(name: str = "web", *ips: str, **kw: Any) -> ServiceView:
    kw.setdefault("namespace", "default")
    kw.setdefault("type", "LoadBalancer")
    kw.setdefault("load_balancer_class", CLASS)
    kw.setdefault("uid", f"uid-{name}")
    return ServiceView(name=name, ingress_ips=ips or ("203.0.113.10",), **kw)


def ep(
    node: str | None = NODE, ready: bool = True, serving: bool | None = None, terminating: bool = False
) -> EndpointView:
    return EndpointView(node, ready, ready if serving is None else serving, terminating)


def eps(
    service: str = "web",
    *endpoints: EndpointView,
    ns: str = "default",
    name: str = "",
    address_type: str = "IPv4",
) -> EndpointSliceView:
    name = name or f"{service}-{address_type.lower()}"
    return EndpointSliceView(ns, name, service, endpoints or (ep(),), address_type)


READY = NodeView(NODE, ready=True)


def kube(
    services: tuple[ServiceView, ...],
    slices: tuple[EndpointSliceView, ...] = (),
    node: NodeView | None = READY,
    synced: tuple[KubeKind, ...] = tuple(KubeKind),
) -> KubeState:
    state = KubeState()
    if KubeKind.SERVICE in synced:
        state = state.apply(KubeSynced(KubeKind.SERVICE, services))
    if KubeKind.ENDPOINT_SLICE in synced:
        state = state.apply(KubeSynced(KubeKind.ENDPOINT_SLICE, slices))
    if KubeKind.NODE in synced:
        state = state.apply(KubeSynced(KubeKind.NODE, (node,) if node else ()))
    return state


# --------------------------------------------------------------------------- the rule table


@dataclass(frozen=True)
class Case:
    id: str
    services: tuple[ServiceView, ...]
    expect: tuple[tuple[str, bool, Reason], ...]
    """(address, announced, reason), in output order."""
    slices: tuple[EndpointSliceView, ...] = (eps(),)
    node: NodeView | None = READY
    config: dict[str, Any] = field(default_factory=dict)
    synced: tuple[KubeKind, ...] = tuple(KubeKind)


ANNOUNCED = (("203.0.113.10", True, Reason.HAS_ENDPOINTS),)

CASES = [
    # class and type
    Case("our-class-announced", (svc(),), ANNOUNCED),
    Case("other-class-ignored", (svc(load_balancer_class="metallb.io/metallb"),), ()),
    Case("unclassed-ignored-by-default", (svc(load_balancer_class=None),), ()),
    Case(
        "unclassed-taken-with-include_unclassed",
        (svc(load_balancer_class=None),),
        ANNOUNCED,
        config={"kubernetes": {"include_unclassed": True}},
    ),
    Case(
        "configured-class-only",
        (svc(), svc("other", "203.0.113.11", load_balancer_class="example.com/lb")),
        (("203.0.113.11", True, Reason.HAS_ENDPOINTS),),
        slices=(eps(), eps("other")),
        config={"kubernetes": {"load_balancer_class": "example.com/lb"}},
    ),
    Case("clusterip-ignored", (svc(type="ClusterIP"),), ()),
    Case("nodeport-ignored", (svc(type="NodePort"),), ()),
    Case("missing-type-ignored", (svc(type=""),), ()),
    Case(
        "no-ingress-yet-no-decision",
        (ServiceView("default", "web", type="LoadBalancer", load_balancer_class=CLASS),),
        (),
    ),
    Case("kubernetes-disabled", (svc(),), (), config={"kubernetes": {"enabled": False}}),
    # pools
    Case("not-in-any-pool", (svc("web", "10.1.2.3"),), (("10.1.2.3", False, Reason.NOT_IN_POOL),)),
    Case(
        "external-ip-refused-by-default",
        (svc(external_ips=("203.0.113.20",)),),
        (*ANNOUNCED, ("203.0.113.20", False, Reason.EXTERNAL_IP_NOT_ALLOWED)),
    ),
    Case(
        "external-ip-announced-from-allowing-pool",
        (svc(external_ips=("192.0.2.130",)),),
        (("192.0.2.130", True, Reason.HAS_ENDPOINTS), *ANNOUNCED),
    ),
    Case(
        "external-ip-outside-pools",
        (svc(external_ips=("10.9.9.9",)),),
        (("10.9.9.9", False, Reason.NOT_IN_POOL), *ANNOUNCED),
    ),
    Case(
        "ip-in-ingress-and-externalIPs-decided-once-as-ingress",
        (svc(external_ips=("203.0.113.10",)),),
        ANNOUNCED,
    ),
    Case(
        "namespace-restricted-pool-refuses-other-namespace",
        (svc("web", "198.51.100.5"),),
        (("198.51.100.5", False, Reason.POOL_NOT_ALLOWED),),
    ),
    Case(
        "namespace-restricted-pool-admits-its-namespace",
        (svc("web", "198.51.100.5", namespace="team-a"),),
        (("198.51.100.5", True, Reason.HAS_ENDPOINTS),),
        slices=(eps(ns="team-a"),),
    ),
    Case(
        "selector-pool-refuses-unlabelled",
        (svc("web", "198.51.100.20"),),
        (("198.51.100.20", False, Reason.POOL_NOT_ALLOWED),),
    ),
    Case(
        "selector-pool-admits-labelled",
        (svc("web", "198.51.100.20", labels=(("app", "x"), ("tier", "edge"))),),
        (("198.51.100.20", True, Reason.HAS_ENDPOINTS),),
    ),
    # address family
    Case(
        "ipv6-without-ipv6-peer",
        (svc("web", "2001:db8:100::10"),),
        (("2001:db8:100::10", False, Reason.FAMILY_NOT_PEERED),),
    ),
    Case(
        "ipv6-with-ipv6-peer",
        (svc("web", "203.0.113.10", "2001:db8:100::10"),),
        (*ANNOUNCED, ("2001:db8:100::10", True, Reason.HAS_ENDPOINTS)),
        slices=(eps(), eps(address_type="IPv6")),
        config={"ipv6": True},
    ),
    # kube-proxy serves a family from that family's EndpointSlices only
    Case(
        "dual-stack-without-ipv6-endpoints",
        (svc("web", "203.0.113.10", "2001:db8:100::10"),),
        (*ANNOUNCED, ("2001:db8:100::10", False, Reason.NO_READY_ENDPOINTS)),
        slices=(eps(), eps(ep(ready=False), address_type="IPv6")),
        config={"ipv6": True},
    ),
    Case(
        "ipv6-endpoints-only",
        (svc("web", "203.0.113.10", "2001:db8:100::10"),),
        (
            ("203.0.113.10", False, Reason.NO_READY_ENDPOINTS),
            ("2001:db8:100::10", True, Reason.HAS_ENDPOINTS),
        ),
        slices=(eps(address_type="IPv6"),),
        config={"ipv6": True},
    ),
    Case(
        "fqdn-slices-count-for-no-family",
        (svc(external_traffic_policy="Local"),),
        (("203.0.113.10", False, Reason.NO_LOCAL_ENDPOINTS),),
        slices=(eps(address_type="FQDN"),),
    ),
    # externalTrafficPolicy: Local
    Case("local-ready-here", (svc(external_traffic_policy="Local"),), ANNOUNCED),
    Case(
        "local-only-elsewhere",
        (svc(external_traffic_policy="Local"),),
        (("203.0.113.10", False, Reason.NO_LOCAL_ENDPOINTS),),
        slices=(eps("web", ep("n2"), ep(None)),),
    ),
    Case(
        "local-terminating-but-serving-counts",
        (svc(external_traffic_policy="Local"),),
        ANNOUNCED,
        slices=(eps("web", ep(ready=False, serving=True, terminating=True)),),
    ),
    Case(
        "local-terminating-not-serving",
        (svc(external_traffic_policy="Local"),),
        (("203.0.113.10", False, Reason.NO_LOCAL_ENDPOINTS),),
        slices=(eps("web", ep(ready=False, serving=False, terminating=True)),),
    ),
    Case(
        "local-not-ready-here",
        (svc(external_traffic_policy="Local"),),
        (("203.0.113.10", False, Reason.NO_LOCAL_ENDPOINTS),),
        slices=(eps("web", ep(ready=False)),),
    ),
    Case(
        "local-no-slices",
        (svc(external_traffic_policy="Local"),),
        (("203.0.113.10", False, Reason.NO_LOCAL_ENDPOINTS),),
        slices=(),
    ),
    Case(
        "local-endpoint-in-second-slice",
        (svc(external_traffic_policy="Local"),),
        ANNOUNCED,
        slices=(eps("web", ep("n2"), name="web-1"), eps("web", ep(), name="web-2")),
    ),
    Case(
        "slice-of-another-service-does-not-count",
        (svc(external_traffic_policy="Local"),),
        (("203.0.113.10", False, Reason.NO_LOCAL_ENDPOINTS),),
        slices=(eps("api"),),
    ),
    Case(
        "slice-in-another-namespace-does-not-count",
        (svc(external_traffic_policy="Local"),),
        (("203.0.113.10", False, Reason.NO_LOCAL_ENDPOINTS),),
        slices=(eps("web", ns="other"),),
    ),
    # externalTrafficPolicy: Cluster
    Case("cluster-endpoint-elsewhere", (svc(),), ANNOUNCED, slices=(eps("web", ep("n2")),)),
    Case("cluster-endpoint-without-node", (svc(),), ANNOUNCED, slices=(eps("web", ep(None)),)),
    Case(
        "cluster-serving-terminating-only",
        (svc(),),
        ANNOUNCED,
        slices=(eps("web", ep("n2", ready=False, serving=True, terminating=True)),),
    ),
    Case(
        "cluster-no-ready-endpoint",
        (svc(),),
        (("203.0.113.10", False, Reason.NO_READY_ENDPOINTS),),
        slices=(eps("web", ep("n2", ready=False), ep(ready=False)),),
    ),
    Case("cluster-no-slices", (svc(),), (("203.0.113.10", False, Reason.NO_READY_ENDPOINTS),), slices=()),
    Case(
        "unknown-policy-treated-as-cluster",
        (svc(external_traffic_policy="Weird"),),
        ANNOUNCED,
        slices=(eps("web", ep("n2")),),
    ),
    # node eligibility
    Case(
        "node-not-ready",
        (svc(),),
        (("203.0.113.10", False, Reason.NODE_NOT_READY),),
        node=NodeView(NODE, ready=False, ready_detail="Ready=Unknown NodeStatusUnknown"),
    ),
    Case(
        "node-not-selected",
        (svc(),),
        (("203.0.113.10", False, Reason.NODE_NOT_SELECTED),),
        config={"kubernetes": {"node_selector": {"bgpvip.io/speaker": "true"}}},
    ),
    Case(
        "node-selected",
        (svc(),),
        ANNOUNCED,
        node=NodeView(NODE, ready=True, labels=(("bgpvip.io/speaker", "true"),)),
        config={"kubernetes": {"node_selector": {"bgpvip.io/speaker": "true"}}},
    ),
    Case(
        "node-excluded-label-any-value",
        (svc(),),
        (("203.0.113.10", False, Reason.NODE_EXCLUDED),),
        node=NodeView(NODE, ready=True, labels=((EXCLUDE_LABEL, ""),)),
    ),
    Case(
        "node-drained",
        (svc(),),
        (("203.0.113.10", False, Reason.NODE_DRAINED),),
        node=NodeView(NODE, ready=True, drain="true"),
    ),
    Case("node-drain-false", (svc(),), ANNOUNCED, node=NodeView(NODE, ready=True, drain="false")),
    Case("node-unknown", (svc(),), (("203.0.113.10", False, Reason.NODE_UNKNOWN),), node=None),
    Case(
        "node-with-another-name",
        (svc(),),
        (("203.0.113.10", False, Reason.NODE_UNKNOWN),),
        node=NodeView("n2", ready=True),
    ),
    Case(
        "node-problem-wins-over-endpoints",
        (svc(),),
        (("203.0.113.10", False, Reason.NODE_NOT_READY),),
        node=NodeView(NODE, ready=False),
        slices=(),
    ),
    # sync state
    Case("services-not-listed-yet", (svc(),), (), synced=(KubeKind.ENDPOINT_SLICE, KubeKind.NODE)),
    Case(
        "slices-not-listed-yet",
        (svc(),),
        (("203.0.113.10", False, Reason.KUBE_NOT_SYNCED),),
        synced=(KubeKind.SERVICE, KubeKind.NODE),
    ),
    Case(
        "node-not-listed-yet",
        (svc(),),
        (("203.0.113.10", False, Reason.KUBE_NOT_SYNCED),),
        synced=(KubeKind.SERVICE, KubeKind.ENDPOINT_SLICE),
    ),
    # hostile input
    Case("malformed-ip", (svc("web", "203.0.113.300"),), (("0.0.0.0", False, Reason.INVALID_ADDRESS),)),
    Case("ip-with-whitespace", (svc("web", " 203.0.113.10"),), (("0.0.0.0", False, Reason.INVALID_ADDRESS),)),
    Case("scoped-ipv6", (svc("web", "fe80::1%eth0"),), (("0.0.0.0", False, Reason.INVALID_ADDRESS),)),
    Case("loopback", (svc("web", "127.0.0.1"),), (("0.0.0.0", False, Reason.INVALID_ADDRESS),)),
    Case("unspecified", (svc("web", "0.0.0.0"),), (("0.0.0.0", False, Reason.INVALID_ADDRESS),)),
    Case("multicast", (svc("web", "224.0.0.5"),), (("0.0.0.0", False, Reason.INVALID_ADDRESS),)),
    Case("huge-string", (svc("web", "9" * 100_000),), (("0.0.0.0", False, Reason.INVALID_ADDRESS),)),
    Case("empty-string", (svc("web", ""),), (("0.0.0.0", False, Reason.INVALID_ADDRESS),)),
    Case(
        "same-bad-string-twice-reported-once",
        (svc("web", "bad", "bad"),),
        (("0.0.0.0", False, Reason.INVALID_ADDRESS),),
    ),
    Case("duplicate-ip-decided-once", (svc("web", "203.0.113.10", "203.0.113.10"),), ANNOUNCED),
    Case(
        "ipv4-mapped-ipv6-is-ipv6",
        (svc("web", "::ffff:203.0.113.10"),),
        (("::ffff:203.0.113.10", False, Reason.FAMILY_NOT_PEERED),),
    ),
    Case(
        "bad-and-good-ips-together",
        (svc("web", "nonsense", "203.0.113.10"),),
        (("0.0.0.0", False, Reason.INVALID_ADDRESS), *ANNOUNCED),
    ),
    Case(
        "huge-names",
        (svc("n" * 10_000, namespace="x" * 10_000),),
        ANNOUNCED,
        slices=(eps("n" * 10_000, ns="x" * 10_000),),
    ),
    # shared IPs
    Case(
        "shared-ip-one-qualifies",
        (svc("a", external_traffic_policy="Local"), svc("b", external_traffic_policy="Local")),
        (("203.0.113.10", True, Reason.HAS_ENDPOINTS), ("203.0.113.10", False, Reason.NO_LOCAL_ENDPOINTS)),
        slices=(eps("a"), eps("b", ep("n2"))),
    ),
    Case(
        "shared-ip-none-qualifies",
        (svc("a"), svc("b")),
        (
            ("203.0.113.10", False, Reason.NO_READY_ENDPOINTS),
            ("203.0.113.10", False, Reason.NO_READY_ENDPOINTS),
        ),
        slices=(),
    ),
    Case(
        "shared-ip-one-refused-by-pool-rules",
        (svc("a", "198.51.100.20", labels=(("tier", "edge"),)), svc("b", "198.51.100.20")),
        (("198.51.100.20", True, Reason.HAS_ENDPOINTS), ("198.51.100.20", False, Reason.POOL_NOT_ALLOWED)),
        slices=(eps("a"), eps("b")),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rules(case: Case) -> None:
    config = make_config(**case.config)
    state = kube(case.services, case.slices, case.node, case.synced)
    decisions = decide_services(config, state, NODE)
    got = tuple((d.address, d.announce, d.reason) for d in decisions)
    expect = tuple((ipaddress.ip_address(a), announce, reason) for a, announce, reason in case.expect)
    assert got == expect, [d.detail for d in decisions]
    for d in decisions:
        assert d.detail
        assert d.source.startswith("service/")
        assert len(d.detail) < 400 + len(d.source) + 20_000  # hostile names are not multiplied
        if d.reason in REFUSED:
            assert d.route is None
        else:
            assert d.route is not None and d.route.prefix == host_network(d.address)
    routes = service_routes(decisions)
    announced = {str(d.address) for d in decisions if d.announce}
    assert {str(r.prefix.network_address) for r in routes} == announced


def test_reasons_explain_themselves() -> None:
    state = kube((svc(external_traffic_policy="Local"),), (eps("web", ep("n2")),))
    (d,) = decide_services(make_config(), state, NODE)
    assert d.detail == (
        "status.loadBalancer.ingress[0].ip: externalTrafficPolicy Local and no ready or"
        " serving endpoint on n1 (1 elsewhere)"
    )
    assert d.source == "service/default/web"
    (bad,) = decide_services(make_config(), kube((svc("web", "x\n" * 100),)), NODE)
    assert "\n" not in bad.detail and len(bad.detail) < 200


def test_shared_address_detail_names_the_announcing_service() -> None:
    state = kube(
        (svc("a"), svc("b", external_traffic_policy="Local")), (eps("a", ep("n2")), eps("b", ep("n2")))
    )
    a, b = decide_services(make_config(), state, NODE)
    assert (a.source, a.announce, b.source, b.announce) == (
        "service/default/a",
        True,
        "service/default/b",
        False,
    )
    assert b.detail.endswith("shared address announced for service/default/a")
    assert a.route == b.route
    assert len(service_routes((a, b))) == 1


def test_shared_address_note_also_on_a_refusal_and_follows_changes() -> None:
    """A Service refused a team pool address (wrong namespace) while a team-a Service announces
    it gets the note too; the decider keeps that note right as the announcer comes and goes."""
    ip = "198.51.100.5"
    team = svc("t", ip, namespace="team-a")
    other = svc("o", ip)
    state = kube((team, other), (eps("t", ns="team-a"),))
    decider = ServiceDecider()
    for step in range(3):
        table = decider.update(CONFIG, state, NODE)
        expected = decide_services(CONFIG, state, NODE)
        assert table.sorted_decisions() == expected
        refused = next(d for d in expected if d.source == "service/default/o")
        assert refused.reason is Reason.POOL_NOT_ALLOWED
        announced = step != 1
        assert refused.detail.endswith("shared address announced for service/team-a/t") is announced
        # step 0 -> 1: the announcer loses its endpoints; 1 -> 2: they come back
        if step == 0:
            state = state.apply(KubeDelete(KubeKind.ENDPOINT_SLICE, ("team-a", "t-ipv4")))
        else:
            state = state.apply(KubeUpsert(eps("t", ns="team-a")))


@pytest.mark.parametrize(
    ("over", "address", "attributes"),
    [
        ({}, "203.0.113.10", Attributes(med=50, communities=("65000:100",))),
        ({}, "192.0.2.130", Attributes(as_path=(65001, 65001, 65001))),
        ({"priority": 200}, "203.0.113.10", Attributes(med=50, communities=("65000:100",))),
        ({"priority": 200}, "192.0.2.130", Attributes(med=55, as_path=(65001, 65001, 65001))),
        (
            {"priority": 250, "priority_attribute": "as-path"},
            "192.0.2.130",
            Attributes(as_path=(65001,) * 7),
        ),
    ],
    ids=[
        "pool-med-and-communities",
        "pool-prepend",
        "pool-med-beats-priority",
        "priority-as-med",
        "priority-as-prepend",
    ],
)
def test_route_attributes_come_from_the_pool(
    over: dict[str, Any], address: str, attributes: Attributes
) -> None:
    state = kube((svc("web", address),))
    (d,) = decide_services(make_config(**over), state, NODE)
    assert d.route is not None and d.route.attributes == attributes


def test_selector_hash_is_stable_and_order_independent() -> None:
    assert selector_hash({}) is None
    assert (
        selector_hash({"a": "1", "b": "2"}) == selector_hash({"b": "2", "a": "1"}) == zlib.crc32(b"a=1\0b=2")
    )
    assert selector_hash({"a": "1"}) != selector_hash({"a": "2"})


# --------------------------------------------------------------------------- KubeState


def test_state_replaces_a_kind_wholesale_on_synced() -> None:
    s = kube((svc("a"), svc("b")), (eps("a"), eps("b")))
    s2 = s.apply(KubeSynced(KubeKind.SERVICE, (svc("c"),)))
    assert sorted(k[1] for k in s2.services) == ["c"]
    assert sorted(k[1] for k in s.services) == ["a", "b"], "the old state is untouched"
    s3 = s2.apply(KubeSynced(KubeKind.ENDPOINT_SLICE, ()))
    assert len(s3.slices) == len(s3.slice_owner) == 0
    assert s3.version == s.version + 2


def test_unavailable_changes_nothing_but_the_status() -> None:
    s = kube((svc(),), (eps(),))
    down = s.apply(KubeUnavailable(KubeKind.SERVICE, "connection refused"))
    assert down.services == s.services and down.slices == s.slices and down.node == s.node
    assert down.unavailable == ((KubeKind.SERVICE, "connection refused"),)
    assert decide_services(make_config(), down, NODE) == decide_services(make_config(), s, NODE)
    assert down.apply(KubeSynced(KubeKind.SERVICE, (svc(),))).unavailable == ()


def test_slices_follow_upserts_deletes_and_owner_changes() -> None:
    s = kube((svc("a"), svc("b")), ())
    s = s.apply(KubeUpsert(eps("a", name="x-1")))
    s = s.apply(KubeUpsert(eps("a", ep("n2"), name="x-2")))
    assert [sl.name for sl in s.slices[("default", "a")]] == ["x-1", "x-2"]
    s = s.apply(KubeUpsert(eps("b", name="x-1")))  # relabelled to another Service
    assert [sl.name for sl in s.slices[("default", "a")]] == ["x-2"]
    assert [sl.name for sl in s.slices[("default", "b")]] == ["x-1"]
    s = s.apply(KubeDelete(KubeKind.ENDPOINT_SLICE, ("default", "x-2")))
    assert ("default", "a") not in s.slices
    s = s.apply(KubeDelete(KubeKind.ENDPOINT_SLICE, ("default", "never-seen")))
    assert len(s.slice_owner) == 1


def test_node_and_service_upsert_delete() -> None:
    s = kube((), ())
    s = s.apply(KubeUpsert(svc("a"))).apply(KubeUpsert(NodeView(NODE, ready=False)))
    assert s.node == NodeView(NODE, ready=False) and ("default", "a") in s.services
    s = s.apply(KubeDelete(KubeKind.NODE, ("", "other"))).apply(
        KubeDelete(KubeKind.SERVICE, ("default", "a"))
    )
    assert s.node is not None and len(s.services) == 0
    assert s.apply(KubeDelete(KubeKind.NODE, ("", NODE))).node is None


def test_sharded_map_shares_untouched_shards() -> None:
    m = ShardedMap.from_items((i, i) for i in range(10_000))
    m2 = m.set(-1, -1)
    shared = sum(a is b for a, b in zip(m._shards, m2._shards, strict=True))
    assert shared == len(m._shards) - 1
    assert len(m2) == 10_001 and len(m) == 10_000 and -1 not in m
    assert m.delete(12345) is m and m.set(5, m[5]) is m


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 50), st.integers()), max_size=200))
def test_sharded_map_behaves_like_a_dict(ops: list[tuple[bool, int, int]]) -> None:
    model: dict[int, int] = {}
    m: ShardedMap[int, int] = ShardedMap()
    history = []
    for is_set, k, v in ops:
        history.append((m, dict(model)))
        if is_set:
            m, model[k] = m.set(k, v), v
        else:
            m = m.delete(k)
            model.pop(k, None)
        assert dict(m.items()) == model and len(m) == len(model)
    for old, snapshot in history:
        assert dict(old.items()) == snapshot, "earlier versions never change"


# --------------------------------------------------------------------------- properties

CONFIG = make_config(ipv6=False)
POOL_NETS = [ipaddress.ip_network(n) for n in ("203.0.113.0/24", "198.51.100.0/27", "192.0.2.128/25")]

addresses = st.one_of(
    st.sampled_from(
        ["203.0.113.10", "203.0.113.11", "198.51.100.5", "198.51.100.20", "192.0.2.130", "10.0.0.1"]
    ),
    st.ip_addresses().map(str),
    st.text(max_size=50),
    st.sampled_from(["", "fe80::1%eth0", "203.0.113.300", "::ffff:203.0.113.10", "0.0.0.0"]),
)
names = st.sampled_from(["a", "b", "c", "web", "x" * 300])
namespaces = st.sampled_from(["default", "team-a", "kube-system"])
labels = st.lists(
    st.tuples(st.sampled_from(["tier", "app"]), st.sampled_from(["edge", "web"])), max_size=2
).map(lambda ls: tuple(sorted(dict(ls).items())))
services = st.builds(
    ServiceView,
    namespace=namespaces,
    name=names,
    uid=st.just("u"),
    type=st.sampled_from(["LoadBalancer", "LoadBalancer", "ClusterIP", ""]),
    load_balancer_class=st.sampled_from([CLASS, CLASS, None, "other"]),
    external_traffic_policy=st.sampled_from(["Local", "Cluster", "weird"]),
    ingress_ips=st.lists(addresses, max_size=4).map(tuple),
    external_ips=st.lists(addresses, max_size=2).map(tuple),
    labels=labels,
)
endpoints = st.builds(
    EndpointView,
    node_name=st.sampled_from([NODE, "n2", None]),
    ready=st.booleans(),
    serving=st.booleans(),
    terminating=st.booleans(),
)
slices = st.builds(
    EndpointSliceView,
    namespace=namespaces,
    name=st.sampled_from(["s1", "s2", "s3", "s4"]),
    service_name=names,
    endpoints=st.lists(endpoints, max_size=3).map(tuple),
)
nodes = st.one_of(
    st.none(),
    st.builds(
        NodeView,
        name=st.sampled_from([NODE, NODE, "n2"]),
        ready=st.booleans(),
        labels=st.sampled_from([(), ((EXCLUDE_LABEL, "true"),)]),
        drain=st.sampled_from([None, "true", "false"]),
    ),
)
worlds = st.tuples(
    st.lists(services, max_size=8, unique_by=lambda s: s.key),
    st.lists(slices, max_size=8, unique_by=lambda s: s.key),
    nodes,
)


def _check(decisions: tuple[Decision, ...]) -> None:
    for d in decisions:
        if d.route is None:
            assert not d.announce
        if d.reason in REFUSED:
            assert d.route is None and not d.announce
        if d.announce:
            assert d.reason is Reason.HAS_ENDPOINTS
            assert any(d.address in net for net in POOL_NETS)
            assert d.route is not None and d.route.prefix == host_network(d.address)
    for r in service_routes(decisions):
        assert any(r.prefix.network_address in net for net in POOL_NETS)


@settings(max_examples=300, deadline=None)
@given(worlds)
def test_never_raises_and_never_announces_outside_pools(world: Any) -> None:
    svcs, sls, node = world
    _check(decide_services(CONFIG, kube(tuple(svcs), tuple(sls), node), NODE))


@settings(max_examples=200, deadline=None)
@given(worlds, st.randoms(use_true_random=False))
def test_deterministic_under_reordering(world: Any, rnd: random.Random) -> None:
    svcs, sls, node = world
    expected = decide_services(CONFIG, kube(tuple(svcs), tuple(sls), node), NODE)
    shuffled_svcs, shuffled_slices = list(svcs), list(sls)
    rnd.shuffle(shuffled_svcs)
    rnd.shuffle(shuffled_slices)
    assert decide_services(CONFIG, kube(tuple(shuffled_svcs), tuple(shuffled_slices), node), NODE) == expected
    # the same world built from watch events in another order
    state = kube((), (), node)
    events: list[Any] = [KubeUpsert(v) for v in shuffled_svcs + shuffled_slices]
    rnd.shuffle(events)
    for e in events:
        state = state.apply(e)
    assert decide_services(CONFIG, state, NODE) == expected


@settings(max_examples=100, deadline=None)
@given(worlds, st.lists(st.sampled_from(["a", "b", "web"]), max_size=3))
def test_deleting_services_only_removes_their_decisions(world: Any, gone: list[str]) -> None:
    svcs, sls, node = world
    state = kube(tuple(svcs), tuple(sls), node)
    for name in gone:
        state = state.apply(KubeDelete(KubeKind.SERVICE, ("default", name)))
    left = decide_services(CONFIG, state, NODE)
    assert not any(d.source in {f"service/default/{n}" for n in gone} for d in left)
    _check(left)


events = st.one_of(
    services.map(KubeUpsert),
    slices.map(KubeUpsert),
    nodes.filter(lambda n: n is not None).map(KubeUpsert),
    st.tuples(names, namespaces).map(lambda k: KubeDelete(KubeKind.SERVICE, (k[1], k[0]))),
    st.sampled_from(["s1", "s2"]).map(lambda n: KubeDelete(KubeKind.ENDPOINT_SLICE, ("default", n))),
    st.just(KubeUnavailable(KubeKind.SERVICE, "down")),
)


def _same(decider: ServiceDecider, config: Config, state: KubeState, node: str) -> None:
    table = decider.update(config, state, node)
    expected = decide_services(config, state, node)
    assert table.sorted_decisions() == expected
    assert table.routes == service_routes(expected)
    assert len(table) == len(expected)


@settings(max_examples=200, deadline=None)
@given(worlds, st.lists(events, max_size=12), st.sampled_from([CONFIG, make_config(ipv6=True)]))
def test_decider_equals_deciding_everything_again(world: Any, changes: list[Any], config: Config) -> None:
    """The incremental decider gives exactly the reference decisions and routes after any
    sequence of watch events, config changes and a change of node."""
    svcs, sls, node = world
    state = kube(tuple(svcs), tuple(sls), node)
    decider = ServiceDecider()
    _same(decider, config, state, NODE)
    for event in changes:
        state = state.apply(event)
        _same(decider, config, state, NODE)
    _same(decider, CONFIG, state, NODE)
    _same(decider, CONFIG, state, "n2")


def test_decider_decides_only_what_changed() -> None:
    services = tuple(svc(f"s{i}", f"203.0.113.{i}") for i in range(1, 50))
    state = kube(services, tuple(eps(f"s{i}") for i in range(1, 50)))
    decider = ServiceDecider()
    first = decider.update(CONFIG, state, NODE)
    assert decider.full_passes == 1
    state = state.apply(KubeUpsert(replace(services[3], ingress_ips=("203.0.113.200",))))
    second = decider.update(CONFIG, state, NODE)
    assert decider.full_passes == 1
    assert second.by_source.changed_keys(first.by_source) == {"service/default/s4"}
    assert second.by_source.get("service/default/s5") is first.by_source.get("service/default/s5")
    # a Node update that changes nothing about this node's verdict is not a full pass either
    state = state.apply(KubeUpsert(NodeView(NODE, ready=True)))
    assert decider.update(CONFIG, state, NODE).by_source is second.by_source
    assert decider.full_passes == 1
    state = state.apply(KubeUpsert(NodeView(NODE, ready=False)))
    decider.update(CONFIG, state, NODE)
    assert decider.full_passes == 2


@settings(max_examples=200, deadline=None)
@given(worlds, st.data(), st.sampled_from([CONFIG, make_config(ipv6=True)]))
def test_first_list_pages_only_announce_what_the_whole_list_announces(
    world: Any, data: st.DataObject, config: Config
) -> None:
    """Pages of the first lists, in any interleaving and any page size, then the complete
    lists: every route decided on a part is one the whole announces too (announcing early is
    safe), and the decider that followed the pages ends where deciding everything ends."""
    svcs, sls, node = world
    state = KubeState().apply(KubeSynced(KubeKind.NODE, (node,) if node else ()))
    pages: list[KubeListPage] = []
    for kind, views in ((KubeKind.SERVICE, svcs), (KubeKind.ENDPOINT_SLICE, sls)):
        size = data.draw(st.integers(1, 4))
        for i in range(0, max(len(views), 1), size):
            pages.append(KubeListPage(kind, tuple(views[i : i + size]), first=i == 0))
    order = data.draw(st.permutations(range(len(pages))))
    # keep each kind's pages in their order, interleave the kinds as drawn
    queues = {k: [p for p in pages if p.kind is k] for k in (KubeKind.SERVICE, KubeKind.ENDPOINT_SLICE)}
    kinds = [pages[i].kind for i in order]
    early = ServiceDecider()
    final = decide_services(config, kube(tuple(svcs), tuple(sls), node), NODE)
    final_routes = service_routes(final)
    for kind in kinds:
        state = state.apply(queues[kind].pop(0))
        assert not state.ready
        table = early.update(config, state.partial, NODE)
        assert table.routes <= final_routes
    state = state.apply(KubeSynced(KubeKind.SERVICE, tuple(svcs)))
    state = state.apply(KubeSynced(KubeKind.ENDPOINT_SLICE, tuple(sls)))
    assert state.ready
    full_before = early.full_passes
    assert early.update(config, state, NODE).sorted_decisions() == final
    if node is not None:
        assert early.full_passes == full_before, "the complete lists reuse the pages' views"


@settings(max_examples=150, deadline=None)
@given(worlds, st.integers(1, 5), st.lists(slices, max_size=4))
def test_pages_build_the_same_state_as_the_whole_list(world: Any, size: int, moved: list[Any]) -> None:
    """Folding a list in pages (any page size, a slice listed twice under another Service on a
    later page) gives the maps one snapshot of the same objects gives."""
    svcs, sls, _ = world
    sls = [*sls, *moved]  # later duplicates of a slice key win, as in a snapshot fold
    paged = KubeState()
    for kind, views in ((KubeKind.SERVICE, svcs), (KubeKind.ENDPOINT_SLICE, sls)):
        for i in range(0, max(len(views), 1), size):
            paged = paged.apply(KubeListPage(kind, tuple(views[i : i + size]), first=i == 0))
    whole = KubeState()
    for view in (*svcs, *sls):
        whole = whole.apply(KubeUpsert(view))
    assert dict(paged.services.items()) == dict(whole.services.items())
    assert dict(paged.slices.items()) == dict(whole.slices.items())
    assert dict(paged.slice_owner.items()) == dict(whole.slice_owner.items())
    assert len(paged.services) == len(whole.services) and len(paged.slices) == len(whole.slices)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.integers(0, 600), st.integers()),
    st.dictionaries(st.integers(0, 600), st.none() | st.integers()),
)
def test_sharded_map_updated_is_many_sets_and_deletes(start: dict[int, int], changes: dict[int, Any]) -> None:
    m = ShardedMap.from_items(start.items())
    one_by_one = m
    for k, v in changes.items():
        one_by_one = one_by_one.delete(k) if v is None else one_by_one.set(k, v)
    batched = m.updated(changes)
    assert dict(batched.items()) == dict(one_by_one.items())
    assert len(batched) == len(one_by_one)
    assert dict(m.items()) == start, "the original is unchanged"
    assert batched.changed_keys(m) == {k for k, v in changes.items() if start.get(k) is not v}


def test_pages_are_ignored_once_listed_and_a_first_page_starts_over() -> None:
    a, b = svc("a"), svc("b", "203.0.113.11")
    state = KubeState().apply(KubeListPage(KubeKind.SERVICE, (a,), first=True))
    assert set(state.services) == {("default", "a")}
    state = state.apply(KubeListPage(KubeKind.SERVICE, (b,), first=True))  # list restarted (410)
    assert set(state.services) == {("default", "b")}
    state = state.apply(KubeSynced(KubeKind.SERVICE, (a,)))
    listed = state.apply(KubeListPage(KubeKind.SERVICE, (b,), first=True))  # a relist's page
    assert listed is state and set(listed.services) == {("default", "a")}


def test_table_of_plain_decisions_matches_the_decider() -> None:
    state = kube((svc("a"), svc("b", "203.0.113.9"), svc("c", "nonsense")), (eps("a"),))
    expected = decide_services(CONFIG, state, NODE)
    table = ServiceDecisions.of(expected)
    assert table.sorted_decisions() == expected
    assert table.routes == service_routes(expected)


def test_views_are_frozen_and_slotted() -> None:
    v = svc()
    with pytest.raises(AttributeError):
        v.name = "other"  # type: ignore[misc]
    assert not hasattr(v, "__dict__")
    assert replace(v, name="b").name == "b"


@pytest.mark.parametrize("text", ["10.200.0.7", "0.0.0.1", "255.255.255.254", "2001:db8::7", "::2"])
def test_a_route_prefix_is_the_host_network_without_its_own_hosts_closure(text: str) -> None:
    from bgpvip.core.services import _prefix

    address = ipaddress.ip_address(text)
    net = _prefix(address)
    expected = ipaddress.ip_network(f"{text}/{address.max_prefixlen}")
    assert net == expected and hash(net) == hash(expected) and str(net) == str(expected)
    assert net.network_address == address and net.prefixlen == address.max_prefixlen
    assert "hosts" not in vars(net)
