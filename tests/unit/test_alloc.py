"""allocate(): table tests for every rule and every bad input, Hypothesis properties over random
sequences of Service creates, updates, deletes and status writes."""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpvip.core.alloc import (
    PREFER_DUAL_STACK,
    REQUIRE_DUAL_STACK,
    SINGLE_STACK,
    Allocations,
    AllocReason,
    AllocService,
    Outcome,
    PoolUsage,
    allocate,
    parse_ip,
    share_refusal,
)
from bgpvip.core.config import Config, load

CLASS = "bgpvip.io/bgp"


def make_config(*pools: dict[str, Any], **kubernetes: Any) -> Config:
    return load(
        {
            "bgp": {
                "local_as": 65001,
                "peers": [
                    {"address": "192.0.2.1", "peer_as": 65000},
                    {"address": "2001:db8::1", "peer_as": 65000, "families": ["ipv6"]},
                ],
            },
            "pools": list(pools),
            "kubernetes": {"enabled": True, **kubernetes},
        }
    )


def pool(name: str, *addresses: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "addresses": list(addresses), **kw}


DEFAULT = make_config(
    pool("main", "203.0.113.0/30", "2001:db8:1::/126"),
    pool("second", "203.0.113.8/31"),
    pool("reserved", "198.51.100.0/30", auto_assign=False),
    pool("team", "192.0.2.64/30", namespaces=["team-a"], auto_assign=False),
    pool("edge", "192.0.2.128/30", service_selector={"tier": "edge"}, auto_assign=False),
)

_created = iter(range(10**9))


def svc(name: str = "web", *ingress: str, **kw: Any) -> AllocService:
    kw.setdefault("namespace", "default")
    kw.setdefault("type", "LoadBalancer")
    kw.setdefault("load_balancer_class", CLASS)
    kw.setdefault("uid", f"uid-{name}")
    kw.setdefault("created", f"2024-01-01T00:00:{next(_created):06d}Z")
    kw.setdefault("ports", (("TCP", 80),))
    return AllocService(name=name, ingress_ips=ingress, **kw)


def run(*services: AllocService, config: Config = DEFAULT) -> dict[str, Any]:
    """name → Allocation (names are unique in these tables)."""
    result = allocate(config, services)
    return {key[1]: a for key, a in result.by_service.items()}


def written(services: list[AllocService], result: Allocations) -> list[AllocService]:
    """The Services after the controller wrote every status the result asks for."""
    out = []
    for s in services:
        a = result.by_service[s.key]
        out.append(s if a.status_ips is None else replace(s, ingress_ips=a.status_ips))
    return out


# --------------------------------------------------------------------------- automatic assignment


def test_lowest_free_address_of_the_first_auto_assign_pool() -> None:
    got = run(svc("a"), svc("b"), svc("c"), svc("d"), svc("e"))
    assert [got[n].ips for n in "abcde"] == [
        ("203.0.113.0",),
        ("203.0.113.1",),
        ("203.0.113.2",),
        ("203.0.113.3",),
        ("203.0.113.8",),  # main is full: the next auto-assign pool in config order
    ]
    assert got["a"].pools == ("main",) and got["e"].pools == ("second",)
    assert got["a"].outcome is Outcome.ASSIGNED and got["a"].status_ips == ("203.0.113.0",)
    assert got["a"].message == "203.0.113.0 (pool main)"


def test_oldest_service_first_whatever_the_input_order() -> None:
    old, new = svc("zz-old", created="2020-01-01T00:00:00Z"), svc("aa-new", created="2021-01-01T00:00:00Z")
    assert run(new, old)["zz-old"].ips == ("203.0.113.0",)
    assert run(old, new)["zz-old"].ips == ("203.0.113.0",)


def test_pools_without_auto_assign_are_skipped() -> None:
    config = make_config(pool("manual", "198.51.100.0/30", auto_assign=False), pool("auto", "203.0.113.0/30"))
    assert run(svc(), config=config)["web"].ips == ("203.0.113.0",)


def test_exhausted_pool_refuses_and_the_others_are_served() -> None:
    config = make_config(pool("tiny", "203.0.113.0/31"))
    got = run(svc("a"), svc("b"), svc("c"), svc("d", requested_ips="203.0.113.5"), config=config)
    assert got["a"].ips and got["b"].ips
    c = got["c"]
    assert (c.outcome, c.reason, c.status_ips, c.ips) == (Outcome.REFUSED, AllocReason.POOL_EXHAUSTED, (), ())
    assert "no free IPv4 address in pool 'tiny' (2 addresses)" in c.message
    assert got["d"].reason is AllocReason.NOT_IN_ANY_POOL


def test_pool_annotation_picks_the_pool_even_without_auto_assign() -> None:
    got = run(svc("a", pool="reserved"), svc("b", pool="second"))
    assert got["a"].ips == ("198.51.100.0",) and got["a"].pools == ("reserved",)
    assert got["b"].ips == ("203.0.113.8",)


def test_pool_annotation_exhausted_does_not_spill_into_other_pools() -> None:
    got = run(svc("a", pool="second"), svc("b", pool="second"), svc("c", pool="second"))
    assert got["c"].reason is AllocReason.POOL_EXHAUSTED and "pool 'second'" in got["c"].message


@pytest.mark.parametrize(
    ("kw", "reason", "text"),
    [
        ({"pool": "nope"}, AllocReason.UNKNOWN_POOL, "names 'nope', which is not a configured pool"),
        ({"pool": ""}, AllocReason.UNKNOWN_POOL, "not a configured pool (pools: main, second, reserved"),
        ({"pool": "team"}, AllocReason.POOL_NOT_ALLOWED, "pool 'team' admits only namespaces team-a"),
        ({"pool": "edge"}, AllocReason.POOL_NOT_ALLOWED, "only Services labelled tier=edge"),
    ],
    ids=["unknown", "empty", "namespace", "selector"],
)
def test_pool_annotation_refusals(kw: dict[str, Any], reason: AllocReason, text: str) -> None:
    a = run(svc(**kw))["web"]
    assert (a.outcome, a.reason, a.status_ips) == (Outcome.REFUSED, reason, ())
    assert text in a.message


def test_pool_restrictions_admit_the_right_services() -> None:
    got = run(
        svc("a", namespace="team-a", pool="team"),
        svc("b", labels=(("tier", "edge"),), pool="edge"),
    )
    assert got["a"].ips == ("192.0.2.64",) and got["b"].ips == ("192.0.2.128",)


def test_no_auto_assign_pool_admits_the_service() -> None:
    config = make_config(pool("team", "203.0.113.0/30", namespaces=["team-a"]))
    a = run(svc(), config=config)["web"]
    assert a.reason is AllocReason.POOL_NOT_ALLOWED
    assert a.message == "no auto-assign pool admits this Service: pool 'team' admits only namespaces team-a"
    manual = make_config(pool("m", "203.0.113.0/30", auto_assign=False))
    b = run(svc(), config=manual)["web"]
    assert b.reason is AllocReason.POOL_NOT_ALLOWED and "auto_assign: false" in b.message


def test_no_pools_at_all() -> None:
    a = run(svc(), config=make_config())["web"]
    assert a.reason is AllocReason.POOL_NOT_ALLOWED


# --------------------------------------------------------------------------- requested addresses


def test_requested_address_is_honored() -> None:
    got = run(
        svc("a", requested_ips="203.0.113.2"),
        svc("b", load_balancer_ip="198.51.100.3"),
        svc("c", requested_ips="203.0.113.3", load_balancer_ip="203.0.113.1"),
    )
    assert got["a"].ips == ("203.0.113.2",)
    assert got["b"].ips == ("198.51.100.3",) and got["b"].pools == ("reserved",)
    assert got["c"].ips == ("203.0.113.3",), "the annotation wins over spec.loadBalancerIP"


def test_requests_are_served_before_automatic_assignment_in_one_run() -> None:
    got = run(svc("auto", created="1"), svc("wants-0", created="2", requested_ips="203.0.113.0"))
    assert got["wants-0"].ips == ("203.0.113.0",)
    assert got["auto"].ips == ("203.0.113.1",)


def test_request_for_an_address_someone_holds_is_refused() -> None:
    holder = svc("holder", "203.0.113.1", created="2")
    got = run(holder, svc("wants", created="1", requested_ips="203.0.113.1"))
    assert got["holder"].ips == ("203.0.113.1",), "a holder keeps its address even against older requests"
    w = got["wants"]
    assert (w.outcome, w.reason, w.status_ips) == (Outcome.REFUSED, AllocReason.REQUEST_CONFLICT, ())
    assert "203.0.113.1 is held by default/holder" in w.message
    assert "neither has a bgpvip.io/sharing-key annotation" in w.message


@pytest.mark.parametrize(
    ("request_kw", "reason", "text"),
    [
        (
            {"requested_ips": "198.51.100.99"},
            AllocReason.NOT_IN_ANY_POOL,
            "asks for 198.51.100.99, which lies",
        ),
        (
            {"load_balancer_ip": "8.8.8.8"},
            AllocReason.NOT_IN_ANY_POOL,
            "spec.loadBalancerIP asks for 8.8.8.8",
        ),
        (
            {"requested_ips": "203.0.113.1", "pool": "reserved"},
            AllocReason.POOL_MISMATCH,
            "from pool 'main', but annotation bgpvip.io/pool names pool 'reserved'",
        ),
        ({"requested_ips": "192.0.2.65"}, AllocReason.POOL_NOT_ALLOWED, "admits only namespaces team-a"),
        ({"requested_ips": "192.0.2.129"}, AllocReason.POOL_NOT_ALLOWED, "only Services labelled tier=edge"),
    ],
    ids=["outside-pools", "spec-outside-pools", "other-pool-than-named", "namespace", "selector"],
)
def test_request_refusals(request_kw: dict[str, Any], reason: AllocReason, text: str) -> None:
    a = run(svc("w", "203.0.113.2", **request_kw))["w"]
    assert (a.outcome, a.reason, a.status_ips) == (Outcome.REFUSED, reason, ())
    assert text in a.message


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("203.0.113.300", "'203.0.113.300' is not an IP address"),
        ("", "is empty"),
        (" , ", "is empty"),
        ("203.0.113.1,,", "lists 3 addresses"),
        ("203.0.113.1,203.0.113.2", "lists two IPv4 addresses"),
        ("127.0.0.1", "is an unspecified, loopback, multicast or link-local address"),
        ("fe80::1%eth0", "'fe80::1%eth0' is not an IP address"),
        ("203.0.113.1;rm -rf", "is not an IP address"),
        ("x" * 500, "...'"),
        ("203.0.113.1\n", None),
    ],
    ids=["bad", "empty", "blank", "three", "two-v4", "loopback", "scoped", "junk", "long", "newline"],
)
def test_malformed_address_annotation(value: str, text: str | None) -> None:
    a = run(svc("w", "203.0.113.2", requested_ips=value))["w"]
    if text is None:  # surrounding whitespace is fine
        assert a.ips == ("203.0.113.1",)
        return
    assert (a.outcome, a.reason, a.status_ips) == (Outcome.REFUSED, AllocReason.MALFORMED_ANNOTATION, ())
    assert text in a.message and "\n" not in a.message
    assert len(a.message) < 400


def test_malformed_load_balancer_ip() -> None:
    a = run(svc(load_balancer_ip="not-an-ip"))["web"]
    assert (
        a.reason is AllocReason.MALFORMED_LOAD_BALANCER_IP and "spec.loadBalancerIP 'not-an-ip'" in a.message
    )


@pytest.mark.parametrize("key", ["has space", "-leading", "x" * 300, "ü", ""], ids=str)
def test_malformed_sharing_key(key: str) -> None:
    a = run(svc(sharing_key=key))["web"]
    assert a.reason is AllocReason.MALFORMED_ANNOTATION and "bgpvip.io/sharing-key" in a.message


def test_request_change_releases_the_old_address() -> None:
    old = svc("a", "203.0.113.0", requested_ips="203.0.113.3")
    got = run(old, svc("b"))
    assert got["a"].ips == ("203.0.113.3",)
    assert got["b"].ips == ("203.0.113.0",), "the old address is free again"


def test_request_removed_keeps_the_address_when_it_is_valid_for_automatic_assignment() -> None:
    assert run(svc("a", "203.0.113.3"))["a"].ips == ("203.0.113.3",)
    # ... but not an address of a pool that does not assign automatically
    assert run(svc("a", "198.51.100.1"))["a"].ips == ("203.0.113.0",)


# --------------------------------------------------------------------------- sharing


def sharing(name: str, *ingress: str, **kw: Any) -> AllocService:
    kw.setdefault("sharing_key", "k")
    return svc(name, *ingress, **kw)


def test_services_with_one_sharing_key_share_an_address() -> None:
    got = run(
        sharing("dns-tcp", ports=(("TCP", 53),)),
        sharing("dns-udp", ports=(("UDP", 53),)),
        sharing("web", ports=(("TCP", 80),)),
    )
    assert got["dns-tcp"].ips == got["dns-udp"].ips == got["web"].ips == ("203.0.113.0",)
    result = allocate(DEFAULT, [sharing("a", ports=(("TCP", 1),)), sharing("b", ports=(("TCP", 2),))])
    assert result.holders() == {"203.0.113.0": (("default", "a"), ("default", "b"))}
    assert result.usage[0] == PoolUsage("main", 4, 4, used=1, services=2)


@pytest.mark.parametrize(
    ("a_kw", "b_kw", "why"),
    [
        ({}, {"sharing_key": None}, "default/b has no bgpvip.io/sharing-key annotation"),
        ({}, {"sharing_key": "other"}, "their sharing keys differ ('k' and 'other')"),
        ({"ports": (("TCP", 80), ("UDP", 5))}, {"ports": (("UDP", 5),)}, "both use UDP/5"),
        (
            {"external_traffic_policy": "Local", "selector": (("app", "a"),)},
            {"selector": (("app", "b"),)},
            "one uses externalTrafficPolicy Local and their pod selectors differ",
        ),
        (
            {"external_traffic_policy": "Local"},
            {"external_traffic_policy": "Local"},
            "one uses externalTrafficPolicy Local and their pod selectors differ",
        ),
    ],
    ids=["no-key", "other-key", "port-collision", "local-other-selector", "local-no-selector"],
)
def test_sharing_refused(a_kw: dict[str, Any], b_kw: dict[str, Any], why: str) -> None:
    a = sharing("a", "203.0.113.0", **{"ports": (("TCP", 80),), **a_kw})
    b = sharing("b", requested_ips="203.0.113.0", **{"ports": (("TCP", 443),), **b_kw})
    assert share_refusal(a, b) == why
    got = run(a, b)
    assert got["b"].reason is AllocReason.REQUEST_CONFLICT
    assert share_refusal(b, a) in got["b"].message
    auto = run(a, replace(b, requested_ips=None))
    assert auto["b"].ips == ("203.0.113.1",), "automatic assignment takes another address instead"


@pytest.mark.parametrize(
    ("a_kw", "b_kw"),
    [
        ({}, {}),
        (
            {"external_traffic_policy": "Local", "selector": (("app", "x"),)},
            {"external_traffic_policy": "Local", "selector": (("app", "x"),)},
        ),
        ({"external_traffic_policy": "Local", "selector": (("app", "x"),)}, {"selector": (("app", "x"),)}),
    ],
    ids=["both-cluster", "both-local-same-selector", "mixed-same-selector"],
)
def test_sharing_allowed(a_kw: dict[str, Any], b_kw: dict[str, Any]) -> None:
    a = sharing("a", "203.0.113.2", ports=(("TCP", 80),), **a_kw)
    b = sharing("b", requested_ips="203.0.113.2", ports=(("TCP", 443),), **b_kw)
    assert share_refusal(a, b) is None and share_refusal(b, a) is None
    assert run(a, b)["b"].ips == ("203.0.113.2",)


def test_holders_that_may_no_longer_share_keep_the_address_by_age() -> None:
    # b changed its ports to collide with a: the older keeps the address, the other moves
    a = sharing("a", "203.0.113.0", created="1", ports=(("TCP", 80),))
    b = sharing("b", "203.0.113.0", created="2", ports=(("TCP", 80),))
    got = run(b, a)
    assert got["a"].ips == ("203.0.113.0",) and got["b"].ips == ("203.0.113.1",)


# --------------------------------------------------------------------------- families


def test_families() -> None:
    got = run(
        svc("v6", ip_families=("IPv6",), ip_family_policy=SINGLE_STACK),
        svc("dual", ip_families=("IPv6", "IPv4"), ip_family_policy=REQUIRE_DUAL_STACK),
        svc("prefer", ip_families=("IPv4", "IPv6"), ip_family_policy=PREFER_DUAL_STACK),
        svc("prefer-single-stack-cluster", ip_families=("IPv4",), ip_family_policy=PREFER_DUAL_STACK),
        svc("default"),
    )
    assert got["v6"].ips == ("2001:db8:1::",)
    assert got["dual"].ips == ("2001:db8:1::1", "203.0.113.0"), "primary family first"
    assert got["prefer"].ips == ("203.0.113.1", "2001:db8:1::2")
    # the apiserver resolved PreferDualStack to IPv4 only: kube-proxy would drop IPv6 for it
    assert got["prefer-single-stack-cluster"].ips == ("203.0.113.2",)
    assert got["default"].ips == ("203.0.113.3",)


def test_prefer_dual_stack_takes_what_exists() -> None:
    v4only = make_config(pool("v4", "203.0.113.0/30"))
    a = run(svc(ip_families=("IPv6", "IPv4"), ip_family_policy=PREFER_DUAL_STACK), config=v4only)["web"]
    assert a.ips == ("203.0.113.0",)


def test_family_unavailable() -> None:
    v4only = make_config(pool("v4", "203.0.113.0/30"))
    for kw in (
        {"ip_families": ("IPv6",)},
        {"ip_families": ("IPv4", "IPv6"), "ip_family_policy": REQUIRE_DUAL_STACK},
    ):
        a = run(svc(**kw), config=v4only)["web"]
        assert a.reason is AllocReason.FAMILY_UNAVAILABLE, kw
        assert "no pool it may use has IPv6 addresses (pools it may use: v4)" in a.message


def test_require_dual_stack_exhausted_takes_nothing() -> None:
    config = make_config(pool("p", "203.0.113.0/30", "2001:db8::10/128"))
    got = run(
        svc("v6", ip_families=("IPv6",)),
        svc("dual", ip_families=("IPv4", "IPv6"), ip_family_policy=REQUIRE_DUAL_STACK),
        svc("v4"),
        config=config,
    )
    assert got["dual"].reason is AllocReason.POOL_EXHAUSTED and "no free IPv6 address" in got["dual"].message
    assert got["v4"].ips == ("203.0.113.0",), "the refused dual-stack Service holds no IPv4 address"


def test_require_dual_stack_holding_one_family_releases_it_before_others_allocate() -> None:
    # "dual" held only IPv4 (it was SingleStack); no IPv6 is free, so it is refused, and its IPv4
    # address goes to the pending Service in the same run: a re-run must not change anything.
    config = make_config(pool("p", "203.0.113.0/31", "2001:db8::10/128"))
    services = [
        svc("v6", "2001:db8::10", ip_families=("IPv6",), created="1"),
        svc("v4", "203.0.113.0", created="2"),
        svc(
            "dual",
            "203.0.113.1",
            ip_families=("IPv4", "IPv6"),
            ip_family_policy=REQUIRE_DUAL_STACK,
            created="3",
        ),
        svc("pending", created="4"),
    ]
    first = allocate(config, services)
    got = {k[1]: a for k, a in first.by_service.items()}
    assert got["dual"].reason is AllocReason.POOL_EXHAUSTED and got["dual"].status_ips == ()
    assert got["pending"].ips == ("203.0.113.1",)
    again = allocate(config, written(services, first))
    assert [(a.ips, a.status_ips) for a in again.by_service.values()] == [
        (a.ips, a.status_ips) for a in first.by_service.values()
    ]


def test_a_service_moved_by_a_request_change_keeps_what_it_can() -> None:
    # SingleStack → RequireDualStack: the IPv4 address it had stays, though a lower one is free
    a = svc("a", "203.0.113.3", ip_families=("IPv4", "IPv6"), ip_family_policy=REQUIRE_DUAL_STACK)
    assert run(a)["a"].ips == ("203.0.113.3", "2001:db8:1::")


def test_prefer_dual_stack_holding_one_family_gains_the_other_when_free() -> None:
    a = svc("p", "203.0.113.3", ip_families=("IPv4", "IPv6"), ip_family_policy=PREFER_DUAL_STACK)
    assert run(a)["p"].ips == ("203.0.113.3", "2001:db8:1::")


@pytest.mark.parametrize(
    ("kw", "ok"),
    [
        ({"requested_ips": "2001:db8:1::3"}, False),
        ({"requested_ips": "2001:db8:1::3", "ip_families": ("IPv6",)}, True),
        ({"requested_ips": "203.0.113.1", "ip_family_policy": REQUIRE_DUAL_STACK}, False),
        ({"requested_ips": "2001:db8:1::3, 203.0.113.1", "ip_family_policy": REQUIRE_DUAL_STACK}, True),
        ({"requested_ips": "2001:db8:1::3", "ip_family_policy": PREFER_DUAL_STACK}, True),
        ({"requested_ips": "203.0.113.1,2001:db8:1::3"}, False),
    ],
    ids=["v6-on-v4", "v6-on-v6", "require-one", "require-both", "prefer-one", "single-two"],
)
def test_requested_families_must_fit_the_service(kw: dict[str, Any], ok: bool) -> None:
    a = run(svc(**kw))["web"]
    if ok:
        assert a.assigned and a.ips[0] in kw["requested_ips"]
    else:
        assert (
            a.reason is AllocReason.FAMILY_MISMATCH
            and "request one address of each of its families" in a.message
        )


def test_dual_stack_order_follows_ip_families() -> None:
    a = run(
        svc(
            requested_ips="203.0.113.1,2001:db8:1::3",
            ip_families=("IPv6", "IPv4"),
            ip_family_policy=REQUIRE_DUAL_STACK,
        )
    )
    assert a["web"].ips == ("2001:db8:1::3", "203.0.113.1")


# --------------------------------------------------------------------------- stability and restart


def test_a_valid_held_address_is_kept_even_when_a_lower_one_is_free() -> None:
    got = run(svc("a", "203.0.113.3"), svc("b"))
    assert got["a"].ips == ("203.0.113.3",) and got["b"].ips == ("203.0.113.0",)


@pytest.mark.parametrize(
    ("held", "why"),
    [
        ("198.51.100.77", "outside every pool"),
        ("garbage", "not an address"),
        ("2001:db8:1::1", "a family the Service does not want"),
    ],
    ids=["outside", "garbage", "other-family"],
)
def test_an_invalid_held_address_is_replaced(held: str, why: str) -> None:
    a = run(svc("a", held))["a"]
    assert a.ips == ("203.0.113.0",), why
    assert a.status_ips == ("203.0.113.0",)


def test_of_two_holders_that_may_not_share_the_older_keeps_it() -> None:
    got = run(svc("young", "203.0.113.2", created="2"), svc("old", "203.0.113.2", created="1"))
    assert got["old"].ips == ("203.0.113.2",) and got["young"].ips == ("203.0.113.0",)


def test_restart_reproduces_the_allocations() -> None:
    services = [
        svc("a"),
        svc("b", requested_ips="203.0.113.2"),
        sharing("c", ports=(("UDP", 1),)),
        sharing("d", ports=(("UDP", 2),)),
        svc("e", ip_families=("IPv4", "IPv6"), ip_family_policy=REQUIRE_DUAL_STACK),
        svc("f", pool="reserved"),
    ]
    first = allocate(DEFAULT, services)
    after = written(services, first)
    random.Random(7).shuffle(after)
    again = allocate(DEFAULT, after)
    assert again == first
    assert all(a.status_ips == s.ingress_ips for s in after if (a := again.by_service[s.key]).status_ips)


def test_deleted_service_releases_its_address() -> None:
    services = [svc("a"), svc("b")]
    first = written(services, allocate(DEFAULT, services))
    got = run(first[1], svc("c"))
    assert got["c"].ips == ("203.0.113.0",)


# --------------------------------------------------------------------------- not ours


@pytest.mark.parametrize(
    ("kw", "reason", "text"),
    [
        ({"type": "ClusterIP"}, AllocReason.NOT_LOAD_BALANCER, "spec.type is 'ClusterIP'"),
        ({"load_balancer_class": "example.com/other"}, AllocReason.OTHER_CLASS, "'example.com/other'"),
        (
            {"load_balancer_class": None},
            AllocReason.OTHER_CLASS,
            "unset, not 'bgpvip.io/bgp' (kubernetes.incl",
        ),
    ],
    ids=["clusterip", "other-class", "unclassed"],
)
def test_not_ours_releases_pool_addresses_only(kw: dict[str, Any], reason: AllocReason, text: str) -> None:
    a = run(svc("x", "203.0.113.1", "192.0.2.99", **kw))["x"]
    assert (a.outcome, a.reason, a.ips) == (Outcome.NOT_OURS, reason, ())
    assert a.status_ips == ("192.0.2.99",) and text in a.message and "releasing 203.0.113.1" in a.message
    untouched = run(svc("x", "192.0.2.99", **kw))["x"]
    assert untouched.status_ips is None, "nothing of ours in the status: leave it alone"


def test_unclassed_services_when_configured() -> None:
    config = make_config(pool("p", "203.0.113.0/30"), include_unclassed=True)
    assert run(svc(load_balancer_class=None), config=config)["web"].ips == ("203.0.113.0",)
    other = make_config(pool("p", "203.0.113.0/30"), load_balancer_class="example.com/lb")
    assert run(svc(), config=other)["web"].outcome is Outcome.NOT_OURS


def test_a_service_that_stops_being_ours_frees_its_address_at_once() -> None:
    got = run(svc("was", "203.0.113.0", type="NodePort"), svc("next"))
    assert got["next"].ips == ("203.0.113.0",)


# --------------------------------------------------------------------------- bad input


def test_a_service_the_allocator_fails_on_affects_no_other() -> None:
    broken = svc("broken", "203.0.113.0", ip_families=None)  # type: ignore[arg-type]
    got = run(broken, svc("ok"))
    b = got["broken"]
    assert (b.outcome, b.reason, b.status_ips) == (Outcome.REFUSED, AllocReason.INTERNAL_ERROR, None)
    assert "TypeError" in b.message
    assert got["ok"].ips == ("203.0.113.1",), "the broken Service's address stays reserved"


def test_event_reasons_are_upper_camel_case() -> None:
    assert AllocReason.POOL_EXHAUSTED.event_reason == "PoolExhausted"
    assert AllocReason.MALFORMED_LOAD_BALANCER_IP.event_reason == "MalformedLoadBalancerIP"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("203.0.113.1", True),
        ("2001:db8::1", True),
        ("0.0.0.0", False),
        ("::1", False),
        ("224.0.0.1", False),
        ("169.254.1.1", False),
        (" 203.0.113.1", False),
        ("3405803787", False),
        ("1" * 60, False),
    ],
)
def test_parse_ip(text: str, ok: bool) -> None:
    assert isinstance(parse_ip(text), tuple) is ok


def test_usage_per_pool_and_family() -> None:
    result = allocate(DEFAULT, [svc("a"), svc("b", ip_families=("IPv6",)), svc("c", pool="reserved")])
    usage = {(u.pool, u.family): (u.size, u.used, u.services) for u in result.usage}
    assert usage == {
        ("main", 4): (4, 1, 1),
        ("main", 6): (4, 1, 1),
        ("second", 4): (2, 0, 0),
        ("reserved", 4): (4, 1, 1),
        ("team", 4): (4, 0, 0),
        ("edge", 4): (4, 0, 0),
    }


def test_big_pools_are_cheap() -> None:
    config = make_config(pool("v6", "2001:db8::/64"), pool("v4", "10.0.0.0/8"))
    services = [svc(f"s{i}", ip_families=("IPv6",) if i % 2 else ("IPv4",)) for i in range(2000)]
    started = time.perf_counter()
    result = allocate(config, services)
    assert time.perf_counter() - started < 5  # generous: catches quadratic scans, not a benchmark
    assert len({ip for a in result.by_service.values() for ip in a.ips}) == 2000
    assert {u.pool: u.size for u in result.usage} == {"v6": 2**64, "v4": 2**24}


# --------------------------------------------------------------------------- properties

NAMESPACES = ("a", "b")


@st.composite
def configs(draw: st.DrawFn) -> Config:
    pools = []
    for i in range(draw(st.integers(1, 3))):
        n4, n6 = draw(st.integers(0, 3)), draw(st.integers(0, 2))
        if n4 == n6 == 0:
            n4 = 1
        addresses = []
        if n4:
            addresses.append(f"10.0.{i}.0-10.0.{i}.{n4 - 1}")
        if n6:
            addresses.append(f"2001:db8:{i}::-2001:db8:{i}::{n6 - 1}")
        pools.append(
            pool(
                f"p{i}",
                *addresses,
                auto_assign=draw(st.sampled_from([True, True, True, False])),
                namespaces=draw(st.sampled_from([[], [], [], ["a"]])),
                service_selector=draw(st.sampled_from([{}, {}, {}, {"tier": "edge"}])),
            )
        )
    return make_config(*pools, include_unclassed=draw(st.booleans()))


ADDRESSES = [f"10.0.{i}.{j}" for i in range(3) for j in range(3)] + [
    f"2001:db8:{i}::{j}" for i in range(3) for j in range(2)
]
request_texts = st.one_of(
    st.sampled_from(ADDRESSES),
    st.sampled_from(ADDRESSES),
    st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=2).map(",".join),
    st.sampled_from(["", "bogus", "10.0.0.1,,", "192.0.2.200", "127.0.0.1"]),
    st.text(max_size=12),
)


@st.composite
def wild_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Everything a user can set on a Service, nonsense included."""
    return {
        "type": draw(st.sampled_from(["LoadBalancer", "LoadBalancer", "ClusterIP", ""])),
        "load_balancer_class": draw(st.sampled_from([CLASS, CLASS, None, "other/x"])),
        "requested_ips": draw(st.one_of(st.none(), request_texts)),
        "load_balancer_ip": draw(st.sampled_from([None, None, *ADDRESSES[:3], "x"])),
        "pool": draw(st.sampled_from([None, None, "p0", "p1", "p2", "nope"])),
        "sharing_key": draw(st.sampled_from([None, "k1", "k2", "bad key"])),
        "ports": tuple(draw(st.lists(st.sampled_from(PORTS), max_size=2, unique=True))),
        "external_traffic_policy": draw(st.sampled_from(["Cluster", "Local"])),
        "selector": draw(st.sampled_from(SELECTORS)),
        "labels": draw(st.sampled_from([(), (("tier", "edge"),)])),
        "ip_families": draw(st.sampled_from([*FAMILIES, ("IPv7",)])),
        "ip_family_policy": draw(st.sampled_from([None, *POLICIES, "x"])),
    }


@st.composite
def plain_specs(draw: st.DrawFn) -> dict[str, Any]:
    """What most Services look like: valid, mostly automatic, often sharing."""
    return {
        "type": "LoadBalancer",
        "load_balancer_class": CLASS,
        "sharing_key": draw(st.sampled_from([None, "k1", "k1", "k2"])),
        "ports": tuple(draw(st.lists(st.sampled_from(PORTS), max_size=2, unique=True))),
        "external_traffic_policy": draw(st.sampled_from(["Cluster", "Cluster", "Local"])),
        "selector": draw(st.sampled_from(SELECTORS)),
        "ip_families": draw(st.sampled_from(FAMILIES)),
        "ip_family_policy": draw(st.sampled_from([None, *POLICIES])),
    }


PORTS = [("TCP", 80), ("TCP", 443), ("UDP", 53)]
SELECTORS = [(), (("app", "x"),), (("app", "x"),), (("app", "y"),)]
FAMILIES = [(), ("IPv4",), ("IPv6",), ("IPv4", "IPv6"), ("IPv6", "IPv4")]
POLICIES = [SINGLE_STACK, PREFER_DUAL_STACK, REQUIRE_DUAL_STACK]
specs = st.one_of(plain_specs(), plain_specs(), plain_specs(), wild_specs())


# A small cluster: collisions between Services are what the properties are about.
keys = st.tuples(st.sampled_from(["a", "a", "b"]), st.sampled_from(["s0", "s1", "s2", "s3"]))
# One field at a time, as users edit Services.
tweaks = st.one_of(
    st.fixed_dictionaries({"ports": st.sampled_from([(("TCP", 80),), (("UDP", 53),), ()])}),
    st.fixed_dictionaries({"sharing_key": st.sampled_from([None, "k1", "k2"])}),
    st.fixed_dictionaries({"requested_ips": st.one_of(st.none(), request_texts)}),
    st.fixed_dictionaries(
        {"ip_family_policy": st.sampled_from([SINGLE_STACK, PREFER_DUAL_STACK, REQUIRE_DUAL_STACK])}
    ),
    st.fixed_dictionaries({"ip_families": st.sampled_from([("IPv4", "IPv6"), ("IPv6", "IPv4"), ("IPv6",)])}),
    st.fixed_dictionaries({"external_traffic_policy": st.sampled_from(["Cluster", "Local"])}),
    st.fixed_dictionaries({"type": st.sampled_from(["LoadBalancer", "ClusterIP"])}),
)
upserts = st.tuples(st.just("upsert"), keys, specs)
# Other ops name an existing Service by its index among the sorted keys.
existing = st.integers(0, 7)
ops = st.one_of(
    upserts,
    upserts,
    st.tuples(st.just("tweak"), existing, tweaks),
    st.tuples(st.just("tweak"), existing, tweaks),
    st.tuples(st.just("delete"), existing, st.none()),
    st.tuples(st.just("write-some"), st.none(), st.lists(st.booleans(), min_size=8, max_size=8)),
    st.tuples(st.just("copy-status"), existing, existing),
    st.tuples(st.just("request-held"), existing, existing),
    st.tuples(st.just("edit-status"), existing, st.lists(st.sampled_from([*ADDRESSES, "junk"]), max_size=2)),
    st.tuples(st.just("config"), st.none(), configs()),
)
SPEC_OPS = ("upsert", "tweak", "delete", "request-held")


@dataclass
class Cluster:
    """Services as the API holds them: specs from the ops, statuses from the controller's writes."""

    config: Config
    services: dict[tuple[str, str], AllocService] = field(default_factory=dict)
    clock: int = 0

    def upsert(self, key: tuple[str, str], spec: dict[str, Any]) -> None:
        old = self.services.get(key)
        if old is None:
            self.clock += 1
            self.services[key] = AllocService(
                namespace=key[0], name=key[1], uid=f"{key}-{self.clock}", created=f"{self.clock:08d}", **spec
            )
        else:
            self.services[key] = replace(old, **spec)

    def apply(self, op: str, key: Any, arg: Any) -> tuple[str, str] | None:
        """Apply one op; returns the key of the Service whose spec it changed, if any."""
        svcs = self.services
        names = sorted(svcs)

        def pick(i: int) -> tuple[str, str]:
            return names[i % len(names)]

        if op == "upsert":
            self.upsert(key, arg)
            return (key[0], key[1])
        if op == "config":
            self.config = arg
        if not names or op in ("write-some", "config"):
            return None
        k = pick(key)
        if op == "tweak":
            self.upsert(k, arg)
            return k
        if op == "delete":
            del svcs[k]
            return k
        if op == "edit-status":
            svcs[k] = replace(svcs[k], ingress_ips=tuple(arg))
        elif op == "copy-status":
            svcs[pick(arg)] = replace(svcs[pick(arg)], ingress_ips=svcs[k].ingress_ips)
        elif op == "request-held" and svcs[k].ingress_ips:
            svcs[pick(arg)] = replace(svcs[pick(arg)], requested_ips=svcs[k].ingress_ips[0])
            return pick(arg)
        return None

    def allocate(self) -> Allocations:
        return allocate(self.config, list(self.services.values()))

    def write(self, result: Allocations, mask: list[bool] | None = None) -> None:
        for i, (key, a) in enumerate(sorted(result.by_service.items())):
            if a.status_ips is not None and (mask is None or mask[i % len(mask)]):
                self.services[key] = replace(self.services[key], ingress_ips=a.status_ips)


def may_share(a: AllocService, b: AllocService) -> bool:
    """The sharing rule, written independently of the allocator's `share_refusal`."""
    if a.key == b.key:
        return True
    same_key = bool(a.sharing_key) and a.sharing_key == b.sharing_key
    ports_apart = not set(a.ports) & set(b.ports)
    cluster = "Local" not in (a.external_traffic_policy, b.external_traffic_policy)
    same_pods = bool(a.selector) and a.selector == b.selector
    return same_key and ports_apart and (cluster or same_pods)


def check_invariants(
    config: Config, services: dict[tuple[str, str], AllocService], result: Allocations
) -> None:
    assert set(result.by_service) == set(services)
    holders: dict[str, list[AllocService]] = {}
    pools = {p.name: p for p in config.pools}
    for key, a in result.by_service.items():
        s = services[key]
        assert a.reason is not AllocReason.INTERNAL_ERROR, a.message
        assert a.message and "\n" not in a.message
        if not a.assigned:
            assert a.ips == ()
            if a.outcome is Outcome.REFUSED:
                assert a.status_ips == ()
            continue
        assert a.status_ips == a.ips and len(a.ips) == len(a.pools) >= 1
        versions = [ipaddress.ip_address(ip).version for ip in a.ips]
        assert len(set(versions)) == len(versions), "one address per family"
        for ip, name in zip(a.ips, a.pools, strict=True):
            holders.setdefault(ip, []).append(s)
            p = pools[name]
            # (b) every assigned address lies in a pool the Service may use
            assert p.contains(ipaddress.ip_address(ip))
            assert not p.namespaces or s.namespace in p.namespaces
            assert all(dict(s.labels).get(k) == v for k, v in p.service_selector.items())
            if s.pool is not None:
                assert name == s.pool
            elif not (s.requested_ips or s.load_balancer_ip):
                assert p.auto_assign
        if s.requested_ips is not None:
            assert sorted(a.ips) == sorted(
                str(ipaddress.ip_address(t.strip())) for t in s.requested_ips.split(",")
            )
    # (a) no address is held by two Services unless they may share it
    for ip, group in holders.items():
        for i, x in enumerate(group):
            for y in group[i + 1 :]:
                assert may_share(x, y), (ip, x.key, y.key)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=configs(),
    initial=st.lists(upserts, min_size=3, max_size=8),
    steps=st.lists(ops, min_size=3, max_size=30),
    seed=st.integers(0, 2**16),
)
def test_random_histories_keep_every_invariant(
    config: Config, initial: list[Any], steps: list[Any], seed: int
) -> None:
    cluster = Cluster(config)
    for op, key, arg in [*initial, *steps]:
        previous = cluster.allocate()
        changed = cluster.apply(op, key, arg)
        result = cluster.allocate()
        check_invariants(cluster.config, cluster.services, result)
        # the input order never matters
        shuffled = list(cluster.services.values())
        random.Random(seed).shuffle(shuffled)
        assert allocate(cluster.config, shuffled) == result
        # stability: a Service without a sharing key that holds what it was given keeps it while
        # only other Services' specs change (status edits and config changes may change anything);
        # a PreferDualStack one may gain its second family
        if op in SPEC_OPS:
            for k, s in cluster.services.items():
                was = previous.by_service.get(k)
                if k == changed or s.sharing_key or was is None or not was.assigned:
                    continue
                if s.ingress_ips == was.ips:
                    assert set(was.ips) <= set(result.by_service[k].ips), k
        if op == "write-some":
            cluster.write(result, arg)
            continue
        cluster.write(result)
        # (c) a restart, i.e. a new run from the Services and their statuses alone, reproduces
        # every allocation and wants no further write
        again = cluster.allocate()
        for k, a in result.by_service.items():
            assert again.by_service[k].ips == a.ips, (k, a, again.by_service[k])
            wants = again.by_service[k].status_ips
            assert wants is None or wants == cluster.services[k].ingress_ips, k


junk = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "LoadBalancer", "10.0.0.1", CLASS]))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            AllocService,
            namespace=st.sampled_from(NAMESPACES),
            name=st.text(min_size=1, max_size=5),
            uid=junk,
            type=junk,
            load_balancer_class=st.one_of(st.none(), junk),
            external_traffic_policy=junk,
            ingress_ips=st.lists(junk, max_size=3).map(tuple),
            ports=st.lists(st.tuples(junk, st.integers()), max_size=3).map(tuple),
            labels=st.lists(st.tuples(junk, junk), max_size=2).map(tuple),
            created=junk,
            requested_ips=st.one_of(st.none(), junk),
            pool=st.one_of(st.none(), junk),
            sharing_key=st.one_of(st.none(), junk),
            load_balancer_ip=st.one_of(st.none(), junk),
            ip_families=st.lists(junk, max_size=3).map(tuple),
            ip_family_policy=st.one_of(st.none(), junk),
            selector=st.lists(st.tuples(junk, junk), max_size=2).map(tuple),
        ),
        max_size=8,
    )
)
def test_arbitrary_text_never_crashes_and_refusals_are_explained(services: list[AllocService]) -> None:
    config = make_config(pool("p", "10.0.0.0/30", "2001:db8::/126"), include_unclassed=True)
    result = allocate(config, services)
    assert all(a.reason is not AllocReason.INTERNAL_ERROR for a in result.by_service.values())
    check_invariants(
        config, {s.key: s for s in sorted(services, key=lambda s: (s.key, s.uid, s.resource_version))}, result
    )
