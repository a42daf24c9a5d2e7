"""The allocation controller end to end: the real `Controller` (leader election, watch, status
writes, Events, /metrics) against the fake apiserver (tests/kubeapi.py) through bgpvip's
client, in the test's event loop. Short lease durations; waits are deadlines, not sleeps."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import generate_latest

from bgpvip.adapters.kube import EventRecorder, KubeClient
from bgpvip.cli import main as cli
from bgpvip.controller import Controller, ControllerOptions
from bgpvip.core.config import Config, load
from tests.kubeapi import FakeKubeAPI

NS = "bgpvip-system"
CLASS = "bgpvip.io/bgp"
LEASE = {"lease_duration": 1.0, "renew_deadline": 0.6, "renew_interval": 0.3, "retry_period": 0.1}

CONFIG_DOC: dict[str, Any] = {
    "bgp": {
        "local_as": 65001,
        "peers": [
            {"address": "192.0.2.1", "peer_as": 65000},
            {"address": "2001:db8::1", "peer_as": 65000, "families": ["ipv6"]},
        ],
    },
    "pools": [
        {"name": "main", "addresses": ["203.0.113.0-203.0.113.3", "2001:db8:10::/126"]},
        {"name": "reserved", "addresses": ["198.51.100.0/30"], "auto_assign": False},
    ],
    "kubernetes": {"enabled": True},
}
CONFIG = load(CONFIG_DOC)


# --------------------------------------------------------------------------- fixtures and helpers


class Running:
    """A controller running as a task in the test's loop."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.task = asyncio.create_task(controller.run())

    async def stop(self, *, release: bool = True) -> None:
        if not self.task.done():
            self.controller.stop(release=release)
            await asyncio.wait_for(self.task, 10)


@pytest.fixture
async def start(kube: KubeClient) -> AsyncIterator[Callable[..., Running]]:
    running: list[Running] = []

    def start_(
        identity: str = "ctl-a", config: Config = CONFIG, path: Path | None = None, **kw: Any
    ) -> Running:
        options = ControllerOptions(
            identity=identity,
            namespace=NS,
            port=0,
            retry_initial=0.05,
            retry_max=0.5,
            config_poll=kw.pop("config_poll", 60.0),
            watcher={"backoff_initial": 0.05, "backoff_max": 0.2, "probe_interval": 0.05},
            **{**LEASE, **kw},
        )
        recorder = EventRecorder(
            kube, component="bgpvip-controller", host=identity, refill_interval=0.1, adopt_other_hosts=True
        )
        r = Running(Controller(config, kube, options, recorder=recorder, config_path=path))
        running.append(r)
        return r

    yield start_
    for r in running:
        await r.stop()
        r.task.result()  # a controller that died with an exception fails the test


async def eventually(predicate: Callable[[], Any], within: float = 5.0, what: str = "") -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out after {within}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def service(
    name: str, ns: str = "default", *, annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": annotations or {},
            "labels": {"app": name},
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": CLASS,
            "ports": [{"port": 80, "protocol": "TCP"}],
            "selector": {"app": name},
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            **spec,
        },
    }


def ingress(api: FakeKubeAPI, name: str, ns: str = "default") -> tuple[str, ...]:
    obj = api.get("services", ns, name)
    assert obj is not None, name
    return tuple(i["ip"] for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [])


def events(api: FakeKubeAPI, name: str, reason: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in api.objects("events")
        if e["involvedObject"]["name"] == name and (reason is None or e["reason"] == reason)
    ]


def status_writes(api: FakeKubeAPI) -> list[Any]:
    return [r for r in api.requests if r.method == "PATCH" and r.path.endswith("/status") and r.status == 200]


async def scrape(r: Running, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, r.controller.port, path)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(r: Running) -> str:
    return generate_latest(r.controller.metrics.registry).decode()


async def synced(r: Running) -> None:
    await eventually(
        lambda: r.controller.leading and r.controller.stats.reconciles > 0, what="leading and synced"
    )


def assert_never_doubled(api: FakeKubeAPI, before: dict[str, tuple[str, ...]]) -> None:
    """Replay every status write in order: no moment had one address in two Services' statuses
    (none of these tests shares addresses)."""
    state = dict(before)
    for r in status_writes(api):
        name = r.path.split("/")[-2]
        state[name] = tuple(i["ip"] for i in (r.body["status"]["loadBalancer"]["ingress"] or []))
        seen: dict[str, str] = {}
        for svc, ips in state.items():
            for ip in ips:
                assert ip not in seen, f"{ip} in the statuses of {seen[ip]} and {svc} at once"
                seen[ip] = svc


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


async def test_a_changed_request_moves_the_service(api: FakeKubeAPI, start: Callable[..., Running]) -> None:
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
    await eventually(
        lambda: ingress(api, "a") == ("203.0.113.1",) and ingress(api, "b") == ("203.0.113.0",),
        what="swapped",
    )
    assert len(status_writes(api)) > writes_before
    assert_never_doubled(api, {"a": (), "b": ()} | {k: () for k in before})


async def test_an_address_waits_for_its_release_to_be_written(
    api: FakeKubeAPI, start: Callable[..., Running]
) -> None:
    r = start()
    api.put("services", service("a"))
    await eventually(lambda: ingress(api, "a") == ("203.0.113.0",), what="a assigned")
    # a moves to .3, and its first status write fails: b, which gets .0, must wait for it
    api.inject_error(lambda q: q.method == "PATCH" and q.path.endswith("/services/a/status"), 500, "x")
    obj = api.get("services", "default", "a")
    assert obj is not None
    obj["metadata"]["annotations"] = {"bgpvip.io/loadBalancerIPs": "203.0.113.3"}
    api.put("services", obj)
    api.put("services", service("b"))
    await eventually(
        lambda: ingress(api, "a") == ("203.0.113.3",) and ingress(api, "b") == ("203.0.113.0",), what="both"
    )
    assert r.controller.stats.failures == 1
    assert r.controller.stats.reconciles < 30, "waiting is on a timer, not a busy loop"
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


async def test_leader_handover_keeps_every_address(api: FakeKubeAPI, start: Callable[..., Running]) -> None:
    a = start("ctl-a")
    await eventually(lambda: a.controller.leading, what="a leads")
    b = start("ctl-b")
    await eventually(lambda: b.controller.elector.holder == "ctl-a", what="b follows")
    for i in range(3):
        api.put("services", service(f"s{i}"))
    await eventually(lambda: all(ingress(api, f"s{i}") for i in range(3)), what="assigned by a")
    held = {f"s{i}": ingress(api, f"s{i}") for i in range(3)}
    await eventually(lambda: a.controller.stats.writes == 3, what="a counted its writes")
    assert b.controller.stats.writes == 0 and not b.controller.leading, "only the leader writes"
    assert len(status_writes(api)) == 3
    assert await scrape(b, "/healthz") == (200, "ok follower\n")
    assert "bgpvip_controller_is_leader 0.0" in (await scrape(b, "/metrics"))[1]
    writes = len(status_writes(api))
    killed = time.monotonic()
    await a.stop(release=False)  # a dies: the Lease is left to expire
    await eventually(lambda: b.controller.leading, within=5, what="b takes over")
    took = time.monotonic() - killed
    assert took < LEASE["lease_duration"] + 2 * LEASE["retry_period"] + 0.5, took
    await synced(b)
    api.put("services", service("after"))
    await eventually(lambda: ingress(api, "after"), what="b serves new Services")
    await eventually(lambda: b.controller.stats.writes == 1, what="b counted its write")
    assert {n: ingress(api, n) for n in held} == held, "the new leader keeps every address"
    assert len(status_writes(api)) == writes + 1
    lease = api.get("leases", NS, "bgpvip-controller")
    assert lease is not None and lease["spec"]["holderIdentity"] == "ctl-b"


async def test_a_graceful_stop_hands_over_at_once(api: FakeKubeAPI, start: Callable[..., Running]) -> None:
    a = start("ctl-a")
    await eventually(lambda: a.controller.leading, what="a leads")
    b = start("ctl-b")
    await eventually(lambda: b.controller.elector.holder == "ctl-a", what="b follows")
    stopped = time.monotonic()
    await a.stop()
    await eventually(lambda: b.controller.leading, what="b takes over")
    assert time.monotonic() - stopped < 0.6, "released: no lease duration to wait"


async def test_api_outage_is_fail_static(api: FakeKubeAPI, start: Callable[..., Running]) -> None:
    r = start()
    api.put("services", service("a"))
    await eventually(lambda: ingress(api, "a"), what="assigned")
    held = ingress(api, "a")
    writes = len(status_writes(api))
    api.inject_outage("refuse")
    await eventually(lambda: not r.controller.leading, what="steps down when it cannot renew")
    assert (await scrape(r, "/healthz"))[0] == 200, "an API outage is no reason to be restarted"
    api.restore()
    await eventually(lambda: r.controller.leading, what="leads again")
    await synced(r)
    api.put("services", service("b"))
    await eventually(lambda: ingress(api, "b"), what="serves again")
    assert ingress(api, "a") == held
    assert len(status_writes(api)) == writes + 1, "nothing rewritten after the outage"


async def test_failed_and_conflicting_writes_are_retried(
    api: FakeKubeAPI, start: Callable[..., Running]
) -> None:
    def status_patch(r: Any) -> bool:
        return bool(r.method == "PATCH" and r.path.endswith("/status"))

    api.inject_error(status_patch, 500, "InternalError", times=2)
    api.inject_error(status_patch, 409, "Conflict", times=1)
    r = start()
    api.put("services", service("a"))
    await eventually(lambda: r.controller.stats.writes == 1, what="written after retries")
    assert ingress(api, "a") == ("203.0.113.0",)
    assert (r.controller.stats.failures, r.controller.stats.conflicts) == (2, 1)


async def test_config_reload(api: FakeKubeAPI, start: Callable[..., Running], tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    small = {**CONFIG_DOC, "pools": [{"name": "main", "addresses": ["203.0.113.0/32"]}]}
    path.write_text(yaml.safe_dump(small))
    r = start(config=load(small), path=path, config_poll=0.05)
    api.put("services", service("a"))
    api.put("services", service("b"))
    await eventually(lambda: events(api, "b", "PoolExhausted"), what="b pending")
    path.write_text("pools: [")
    await eventually(
        lambda: 'bgpvip_config_reloads_total{result="error"} 1.0' in metrics(r),
        what="the bad config rejected",
    )
    path.write_text(yaml.safe_dump({**small, "pools": [{"name": "main", "addresses": ["203.0.113.0/31"]}]}))
    await eventually(lambda: ingress(api, "b") == ("203.0.113.1",), what="the grown pool serves b")
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


# --------------------------------------------------------------------------- the command


def test_cli_help_and_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["controller", "--help"])
    assert (
        out.exit_code == 0 and "bgpvip.io/loadBalancerIPs" in out.output and "--lease-duration" in out.output
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: 5\n")
    out = runner.invoke(cli, ["controller", "--config", str(bad)])
    assert out.exit_code == 2 and "invalid" in out.output and "bgp: is required" in out.output
    out = runner.invoke(cli, ["controller", "--config", str(bad), "--renew-deadline", "20"])
    assert out.exit_code == 2 and "--renew-deadline < --lease-duration" in out.output


def test_the_command_runs_allocates_and_stops_cleanly_on_sigterm(api: FakeKubeAPI, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
                "current-context": "fake",
            }
        )
    )
    config = tmp_path / "config.yaml"
    # as in the shared ConfigMap: ${VAR} expansion happens in the controller too
    doc = {**CONFIG_DOC, "node_name": "${NODE_NAME:-none}"}
    config.write_text(yaml.safe_dump({**doc, "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig)}}))
    api.put("services", service("web"))
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bgpvip",
                "controller",
                "--config",
                str(config),
                "--namespace",
                NS,
                "--identity",
                "proc",
                "--port",
                "0",
            ],
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 20
            while ingress(api, "web") != ("203.0.113.0",):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lease = api.get("leases", NS, "bgpvip-controller")
    assert lease is not None and not lease["spec"].get("holderIdentity"), "released on SIGTERM"
    text = log.read_text()
    assert "event=allocated service=default/web ips=203.0.113.0" in text
    assert "event=controller-stopped identity=proc released=True" in text
