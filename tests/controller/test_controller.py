"""The allocation controller end to end: the real `Controller` (leader election, watch, status
writes, Events, /metrics) against the fake apiserver (tests/kubeapi.py) through bgpvip's
client, in the test's event loop, on fake time (tests/controller/faketime.py) with the
production timings. `eventually` waits with fake time standing still (what happens on events
alone); `ft.until` moves it on, timer by timer, and says how many fake seconds that took."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bgpvip.core.config import load
from tests.controller.faketime import FakeTime, eventually
from tests.controller.helpers import (
    CONFIG_DOC,
    DEFAULTS,
    NS,
    Running,
    assert_never_doubled,
    events,
    ingress,
    metrics,
    scrape,
    service,
    status_writes,
    synced,
)
from tests.kubeapi import FakeKubeAPI

# --------------------------------------------------------------------------- allocation


async def test_a_new_service_gets_an_address_from_the_pool(
    api: FakeKubeAPI, start: Callable[..., Running]
) -> None:
    r = start()
    await synced(r)
    api.put("services", service("web"))
    await eventually(lambda: ingress(api, "web") == ("203.0.113.0",), what="status written")
    assert ipaddress.ip_address(ingress(api, "web")[0]) in ipaddress.ip_network("203.0.113.0/30")
    await eventually(lambda: events(api, "web", "IPAllocated"), what="Normal Event")
    (event,) = events(api, "web", "IPAllocated")
    assert event["type"] == "Normal" and event["message"] == "Assigned 203.0.113.0 (pool main)"
    assert event["source"]["component"] == "bgpvip-controller"
    (write,) = status_writes(api)
    assert write.content_type.startswith("application/merge-patch+json")
    assert write.body["metadata"]["resourceVersion"], "written against the version it decided on"
    code, text = await scrape(r, "/metrics")
    assert code == 200
    assert "bgpvip_controller_is_leader 1.0" in text
    assert 'bgpvip_pool_addresses_used{family="ipv4",pool="main"} 1.0' in text
    assert 'bgpvip_pool_addresses{family="ipv4",pool="main"} 4.0' in text
    assert 'bgpvip_pool_allocations{family="ipv4",pool="main"} 1.0' in text
    assert 'bgpvip_status_writes_total{result="ok"} 1.0' in text
    assert await scrape(r, "/healthz") == (200, "ok leader\n")
    code, text = await scrape(r, "/status")
    status = json.loads(text)
    assert status["leader"] and status["holder"] == "ctl-a" and status["services"] == 1
    assert (await scrape(r, "/nope"))[0] == 404


async def test_requested_address_honored_or_refused_with_an_event(
    api: FakeKubeAPI, start: Callable[..., Running]
) -> None:
    api.put("services", service("asks", annotations={"bgpvip.io/loadBalancerIPs": "198.51.100.2"}))
    api.put("services", service("legacy", loadBalancerIP="203.0.113.3"))
    api.put("services", service("outside", annotations={"bgpvip.io/loadBalancerIPs": "192.0.2.77"}))
    r = start()
    await eventually(lambda: ingress(api, "asks") == ("198.51.100.2",), what="annotation honored")
    await eventually(lambda: ingress(api, "legacy") == ("203.0.113.3",), what="spec.loadBalancerIP honored")
    await eventually(lambda: events(api, "outside", "NotInAnyPool"), what="Warning Event")
    (event,) = events(api, "outside", "NotInAnyPool")
    assert event["type"] == "Warning"
    assert "asks for 192.0.2.77, which lies in no pool" in event["message"]
    assert ingress(api, "outside") == ()
    _, text = await scrape(r, "/metrics")
    assert 'bgpvip_allocation_refusals{reason="notInAnyPool"} 1.0' in text


async def test_a_takeover_does_not_post_the_refusals_again(
    api: FakeKubeAPI, start: Callable[..., Running]
) -> None:
    api.put("services", service("outside", annotations={"bgpvip.io/loadBalancerIPs": "192.0.2.77"}))
    a = start("ctl-a")
    await eventually(lambda: events(api, "outside", "NotInAnyPool"), what="Warning Event")
    await a.stop()
    b = start("ctl-b")
    await synced(b)
    await eventually(lambda: b.controller.recorder.stats.deduplicated == 1, what="the refusal seen again")
    (event,) = events(api, "outside", "NotInAnyPool")
    assert event["count"] == 1 and event["source"]["host"] == "ctl-a"


async def test_exhausted_pool_and_bad_services_leave_the_others_served(
    api: FakeKubeAPI, start: Callable[..., Running]
) -> None:
    start()
    for i in range(4):
        api.put("services", service(f"s{i}"))
    await eventually(lambda: all(ingress(api, f"s{i}") for i in range(4)), what="the pool filled")
    api.put("services", service("late"))
    api.put("services", service("bad", annotations={"bgpvip.io/loadBalancerIPs": "203.0.113.999"}))
    api.put("services", service("odd", ports="not-a-list", ipFamilies=7))  # hostile spec
    api.put("services", service("fine", annotations={"bgpvip.io/pool": "reserved"}))
    await eventually(lambda: ingress(api, "fine") == ("198.51.100.0",), what="another pool still serves")
    await eventually(lambda: events(api, "late", "PoolExhausted"), what="exhausted Event")
    await eventually(lambda: events(api, "bad", "MalformedAnnotation"), what="malformed Event")
    assert "no free IPv4 address in pool 'main' (4 addresses)" in events(api, "late")[0]["message"]
    assert "'203.0.113.999' is not an IP address" in events(api, "bad")[0]["message"]
    assert ingress(api, "late") == () and ingress(api, "bad") == ()
    # level-triggered: a freed address goes to the pending Service
    freed = ingress(api, "s1")
    api.remove("services", "default", "s1")
    await eventually(lambda: ingress(api, "late") == freed, what="the pending Service served")


async def test_services_with_one_sharing_key_share_an_address(
    api: FakeKubeAPI, start: Callable[..., Running]
) -> None:
    start()
    key = {"bgpvip.io/sharing-key": "dns"}
    api.put("services", service("dns-tcp", annotations=key, ports=[{"port": 53, "protocol": "TCP"}]))
    await eventually(lambda: ingress(api, "dns-tcp"), what="first")
    api.put("services", service("dns-udp", annotations=key, ports=[{"port": 53, "protocol": "UDP"}]))
    await eventually(lambda: ingress(api, "dns-udp"), what="second")
    api.put("services", service("dns-clash", annotations=key, ports=[{"port": 53, "protocol": "UDP"}]))
    await eventually(lambda: ingress(api, "dns-clash"), what="third")
    assert ingress(api, "dns-udp") == ingress(api, "dns-tcp") == ("203.0.113.0",)
    assert ingress(api, "dns-clash") == ("203.0.113.1",), "UDP/53 collides: another address"
    api.put(
        "services",
        service("wants-shared", annotations={"bgpvip.io/loadBalancerIPs": "203.0.113.0"}),
    )
    await eventually(lambda: events(api, "wants-shared", "RequestConflict"), what="conflict Event")
    assert "203.0.113.0 is held by default/dns-" in events(api, "wants-shared")[0]["message"]


async def test_dual_stack(api: FakeKubeAPI, start: Callable[..., Running]) -> None:
    start()
    api.put("services", service("dual", ipFamilies=["IPv6", "IPv4"], ipFamilyPolicy="RequireDualStack"))
    api.put("services", service("prefer", ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="PreferDualStack"))
    api.put("services", service("v6", ipFamilies=["IPv6"]))
    await eventually(
        lambda: ingress(api, "dual") and ingress(api, "prefer") and ingress(api, "v6"), what="all"
    )
    assert ingress(api, "dual") == ("2001:db8:10::", "203.0.113.0"), "primary family first"
    assert ingress(api, "prefer") == ("203.0.113.1", "2001:db8:10::1")
    assert ingress(api, "v6") == ("2001:db8:10::2",)


async def test_release_on_type_change_and_on_delete(api: FakeKubeAPI, start: Callable[..., Running]) -> None:
    start()
    api.put("services", service("a"))
    api.put("services", service("b"))
    await eventually(lambda: ingress(api, "a") and ingress(api, "b"), what="both assigned")
    a_ip = ingress(api, "a")
    obj = api.get("services", "default", "a")
    assert obj is not None
    obj["spec"]["type"] = "ClusterIP"  # as `kubectl edit` leaves it: the class still in the object
    writes = len(status_writes(api))
    api.put("services", obj)
    # the apiserver itself clears the status and the class of a Service leaving LoadBalancer
    left = api.get("services", "default", "a")
    assert left is not None and left["status"]["loadBalancer"] == {}
    assert "loadBalancerClass" not in left["spec"]
    api.put("services", service("c"))
    await eventually(lambda: ingress(api, "c") == a_ip, what="the released address reused")
    assert len(status_writes(api)) == writes + 1, "nothing to write for a: only c's assignment"
    assert not events(api, "a", "IPReleased"), "the apiserver released it, not bgpvip"
    b_ip = ingress(api, "b")
    api.remove("services", "default", "b")
    api.put("services", service("d"))
    await eventually(lambda: ingress(api, "d") == b_ip, what="the deleted Service's address reused")


async def test_a_changed_request_moves_the_service(
    api: FakeKubeAPI, start: Callable[..., Running], ft: FakeTime
) -> None:
    start()
    api.put("services", service("a"))
    api.put("services", service("b"))
    await eventually(lambda: ingress(api, "a") == ("203.0.113.0",) and ingress(api, "b") == ("203.0.113.1",))
    before = {"a": ingress(api, "a"), "b": ingress(api, "b")}
    writes_before = len(status_writes(api))
    # the two swap addresses: each write must wait for the other's release
    for name, ip in (("a", "203.0.113.1"), ("b", "203.0.113.0")):
        obj = api.get("services", "default", name)
        assert obj is not None
        obj["metadata"]["annotations"] = {"bgpvip.io/loadBalancerIPs": ip}
        api.put("services", obj)
    await ft.until(
        lambda: ingress(api, "a") == ("203.0.113.1",) and ingress(api, "b") == ("203.0.113.0",), within=5
    )
    assert len(status_writes(api)) > writes_before
    assert_never_doubled(api, {"a": (), "b": ()} | {k: () for k in before})


async def test_an_address_waits_for_its_release_to_be_written(
    api: FakeKubeAPI, start: Callable[..., Running], ft: FakeTime
) -> None:
    r = start()
    api.put("services", service("a"))
    await eventually(lambda: ingress(api, "a") == ("203.0.113.0",), what="a assigned")
    # a moves to .3, and its status write fails: while it waits for its retry, b comes and is
    # given .0, which a's status still shows; b must wait for a's release
    api.inject_error(lambda q: q.method == "PATCH" and q.path.endswith("/services/a/status"), 500, "x")
    obj = api.get("services", "default", "a")
    assert obj is not None
    obj["metadata"]["annotations"] = {"bgpvip.io/loadBalancerIPs": "203.0.113.3"}
    api.put("services", obj)
    await eventually(lambda: r.controller.stats.failures == 1, what="a's write failed")
    reconciles = r.controller.stats.reconciles
    api.put("services", service("b"))
    await eventually(lambda: r.controller.stats.reconciles == reconciles + 1, what="b decided")
    await ft.settle()
    assert ingress(api, "b") == (), "b's write waits"
    took = await ft.until(
        lambda: ingress(api, "a") == ("203.0.113.3",) and ingress(api, "b") == ("203.0.113.0",), within=5
    )
    assert took == DEFAULTS.retry_initial, "a's retry, then b at once: both on their timers"
    assert r.controller.stats.reconciles == reconciles + 2, "waiting is on a timer, not a busy loop"
    assert r.controller.stats.failures == 1
    assert_never_doubled(api, {"a": (), "b": ()})


# --------------------------------------------------------------------------- restart and leadership


async def test_a_restart_moves_no_address(api: FakeKubeAPI, start: Callable[..., Running]) -> None:
    first = start("ctl-a")
    api.put("services", service("s0"))
    api.put("services", service("dual", ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack"))
    key = {"bgpvip.io/sharing-key": "k"}
    api.put("services", service("shared-a", annotations=key, ports=[{"port": 1}]))
    api.put("services", service("shared-b", annotations=key, ports=[{"port": 2}]))
    api.put("services", service("asks", annotations={"bgpvip.io/loadBalancerIPs": "198.51.100.1"}))
    names = ["s0", "dual", "shared-a", "shared-b", "asks"]
    await eventually(lambda: all(ingress(api, n) for n in names), what="all assigned")
    held = {n: ingress(api, n) for n in names}
    await first.stop()
    writes = len(status_writes(api))
    # created while no controller runs, and first by name: a controller that re-decided instead
    # of keeping what the statuses hold would give it an address someone has
    api.put("services", service("aaa-new"))
    second = start("ctl-b")
    await synced(second)
    await eventually(lambda: ingress(api, "aaa-new"), what="the new Service assigned")
    assert {n: ingress(api, n) for n in held} == held, "no address changed hands"
    assert len(status_writes(api)) == writes + 1, "the only write is the new Service's"
    assert ingress(api, "aaa-new") == ("203.0.113.3",), "the one address nobody held"


async def test_leader_handover_keeps_every_address(
    api: FakeKubeAPI, start: Callable[..., Running], ft: FakeTime
) -> None:
    a = start("ctl-a")
    await eventually(lambda: a.controller.leading, what="a leads")
    b = start("ctl-b")
    await eventually(lambda: b.controller.elector.holder == "ctl-a", what="b follows")
    for i in range(3):
        api.put("services", service(f"s{i}"))
    await eventually(lambda: all(ingress(api, f"s{i}") for i in range(3)), what="assigned by a")
    held = {f"s{i}": ingress(api, f"s{i}") for i in range(3)}
    await eventually(lambda: a.controller.stats.writes == 3, what="a counted its writes")
    # a while of leading and following: renewals, Lease reads, resyncs
    await ft.advance(DEFAULTS.resync_interval + DEFAULTS.lease_duration)
    assert a.controller.leading and a.controller.elector.stats.renewed >= 10
    assert b.controller.stats.writes == 0 and not b.controller.leading, "only the leader writes"
    assert len(status_writes(api)) == 3, "a resync writes nothing that is already right"
    assert await scrape(b, "/healthz") == (200, "ok follower\n")
    assert "bgpvip_controller_is_leader 0.0" in (await scrape(b, "/metrics"))[1]
    writes = len(status_writes(api))
    await a.stop(release=False)  # a dies: the Lease is left to expire
    took = await ft.until(lambda: b.controller.leading, within=30)
    # b saw the Lease change last at most a renew interval plus one of its reads before a died,
    # and takes it at its first read a lease duration after that
    jittered_read = DEFAULTS.retry_period * 1.2
    assert DEFAULTS.lease_duration - DEFAULTS.renew_interval <= took
    assert took <= DEFAULTS.lease_duration + 2 * jittered_read
    await synced(b)
    api.put("services", service("after"))
    await eventually(lambda: ingress(api, "after"), what="b serves new Services")
    await eventually(lambda: b.controller.stats.writes == 1, what="b counted its write")
    assert {n: ingress(api, n) for n in held} == held, "the new leader keeps every address"
    assert len(status_writes(api)) == writes + 1
    lease = api.get("leases", NS, "bgpvip-controller")
    assert lease is not None and lease["spec"]["holderIdentity"] == "ctl-b"


async def test_a_graceful_stop_hands_over_at_once(
    api: FakeKubeAPI, start: Callable[..., Running], ft: FakeTime
) -> None:
    a = start("ctl-a")
    await eventually(lambda: a.controller.leading, what="a leads")
    b = start("ctl-b")
    await eventually(lambda: b.controller.elector.holder == "ctl-a", what="b follows")
    await a.stop()
    took = await ft.until(lambda: b.controller.leading, within=30)
    assert took <= DEFAULTS.retry_period * 1.2, "released: b takes it at its next read"


async def test_api_outage_is_fail_static(
    api: FakeKubeAPI, start: Callable[..., Running], ft: FakeTime
) -> None:
    r = start()
    api.put("services", service("a"))
    await eventually(lambda: ingress(api, "a"), what="assigned")
    held = ingress(api, "a")
    writes = len(status_writes(api))
    api.inject_outage("refuse")
    took = await ft.until(lambda: not r.controller.leading, within=60)
    # it stops writing at its renew deadline (the fence), and says so at its next attempt to
    # renew, still before anyone may take over
    assert took <= DEFAULTS.renew_deadline + DEFAULTS.retry_period * 1.2 < DEFAULTS.lease_duration
    assert (await scrape(r, "/healthz"))[0] == 200, "an API outage is no reason to be restarted"
    await ft.advance(5 * DEFAULTS.lease_duration)
    assert len(status_writes(api)) == writes and ingress(api, "a") == held, "nothing written or released"
    api.restore()
    took = await ft.until(lambda: r.controller.leading and r.controller.stats.reconciles > 1, within=60)
    assert took <= DEFAULTS.lease_duration, "back within the elector's longest backoff"
    api.put("services", service("b"))
    await eventually(lambda: ingress(api, "b"), what="serves again")
    assert ingress(api, "a") == held
    assert len(status_writes(api)) == writes + 1, "nothing rewritten after the outage"


async def test_failed_and_conflicting_writes_are_retried(
    api: FakeKubeAPI, start: Callable[..., Running], ft: FakeTime
) -> None:
    def status_patch(r: Any) -> bool:
        return bool(r.method == "PATCH" and r.path.endswith("/status"))

    api.inject_error(status_patch, 500, "InternalError", times=2)
    api.inject_error(status_patch, 409, "Conflict", times=1)
    r = start()
    api.put("services", service("a"))
    await eventually(lambda: r.controller.stats.failures == 1, what="the first write failed")
    took = await ft.until(lambda: r.controller.stats.writes == 1, within=10)
    first = DEFAULTS.retry_initial
    assert took == first + 2 * first + first, "backoff 0.5 s, then 1 s; a conflict retries after 0.5 s"
    assert ingress(api, "a") == ("203.0.113.0",)
    assert (r.controller.stats.failures, r.controller.stats.conflicts) == (2, 1)


async def test_config_reload(
    api: FakeKubeAPI, start: Callable[..., Running], ft: FakeTime, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    small = {**CONFIG_DOC, "pools": [{"name": "main", "addresses": ["203.0.113.0/32"]}]}
    path.write_text(yaml.safe_dump(small))
    r = start(config=load(small), path=path)
    api.put("services", service("a"))
    api.put("services", service("b"))
    await eventually(lambda: events(api, "b", "PoolExhausted"), what="b pending")
    path.write_text("pools: [")
    took = await ft.until(lambda: 'bgpvip_config_reloads_total{result="error"} 1.0' in metrics(r), within=10)
    assert took <= DEFAULTS.config_poll, "the bad config rejected at the next look"
    path.write_text(yaml.safe_dump({**small, "pools": [{"name": "main", "addresses": ["203.0.113.0/31"]}]}))
    took = await ft.until(lambda: ingress(api, "b") == ("203.0.113.1",), within=10)
    assert took <= DEFAULTS.config_poll, "the grown pool serves b after the next look"
    assert ingress(api, "a") == ("203.0.113.0",)


async def test_services_of_other_classes_are_left_alone(
    api: FakeKubeAPI, start: Callable[..., Running]
) -> None:
    other = service("other", loadBalancerClass="example.com/lb")
    other["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.200"}]}}
    api.put("services", other)
    api.put("services", {**service("plain"), "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}})
    r = start()
    await synced(r)
    api.put("services", service("mine"))
    await eventually(lambda: ingress(api, "mine"), what="ours assigned")
    assert ingress(api, "other") == ("192.0.2.200",)
    assert [w.path.split("/")[-2] for w in status_writes(api)] == ["mine"]


# --------------------------------------------------------------------------- the guide's examples

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "loadbalancer-ips.md"


def guide_yaml() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The guide's config and its Services (by name), from its ```yaml blocks."""
    text = GUIDE.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    config: dict[str, Any] = {}
    services: dict[str, dict[str, Any]] = {}
    for block in blocks:
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and doc.get("kind") == "Service":
                services[doc["metadata"]["name"]] = doc
            elif isinstance(doc, dict) and "pools" in doc:
                config = doc
    return config, services


async def test_the_guide_examples_do_what_the_guide_says(
    api: FakeKubeAPI, start: Callable[..., Running]
) -> None:
    doc, services = guide_yaml()
    assert set(services) == {"ingress-nginx", "dns-tcp", "dns-udp", "api"}
    start(config=load(doc))
    api.put("services", service("web"))  # "the first Service above gets 203.0.113.0"
    await eventually(lambda: ingress(api, "web") == ("203.0.113.0",), what="web")
    for name in ("ingress-nginx", "dns-tcp", "dns-udp", "api"):
        api.put("services", services[name])
        ns = services[name]["metadata"]["namespace"]
        await eventually(lambda ns=ns, name=name: ingress(api, name, ns), what=name)
    assert ingress(api, "ingress-nginx", "ingress-nginx") == ("203.0.113.64",)
    assert ingress(api, "dns-tcp", "dns") == ingress(api, "dns-udp", "dns") == ("203.0.113.65",)
    assert ingress(api, "api", "shop") == ("203.0.113.1", "2001:db8:100::")
    # the RequestConflict message quoted in the guide
    clash = json.loads(json.dumps(services["dns-tcp"]))
    clash["metadata"]["name"] = "dns-tcp-2"
    api.put("services", clash)
    await eventually(lambda: events(api, "dns-tcp-2", "RequestConflict"), what="conflict")
    quoted = GUIDE.read_text().split("Warning  RequestConflict  ", 1)[1].split("```", 1)[0]
    assert events(api, "dns-tcp-2")[0]["message"] == " ".join(quoted.split())
