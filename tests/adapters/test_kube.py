"""The Kubernetes adapter against a real HTTP server speaking the Kubernetes API (tests/kubeapi.py),
through bgpvip's own asyncio client, in the test's event loop. Plus translation from recorded API
JSON. Waits are deadlines on conditions, not sleeps."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kubernetes import client

from bgpvip.adapters.kube import (
    ApiError,
    Connection,
    Credentials,
    CredentialsError,
    EventRecorder,
    KubeClient,
    KubeWatcher,
    MalformedObject,
    ObjectRef,
    endpoint_slice_view,
    node_view,
    resolve_in_child,
    service_view,
)
from bgpvip.core.config import KubernetesConfig, load
from bgpvip.core.model import Reason
from bgpvip.core.services import (
    EndpointSliceView,
    EndpointView,
    KubeDelete,
    KubeEvent,
    KubeKind,
    KubeListPage,
    KubeState,
    KubeSynced,
    KubeUnavailable,
    KubeUpsert,
    NodeView,
    decide_services,
    pool_label_keys,
)
from tests.kubeapi import FakeKubeAPI, Recorded
from tests.pki import serving_certificate

FIXTURES = Path(__file__).parent / "kube_fixtures"
NODE = "worker-1"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


# --------------------------------------------------------------------------- helpers


async def until(predicate: Callable[[], Any], within: float = 5.0, what: str = "") -> None:
    """Let the loop run until `predicate` holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or predicate}")
        await asyncio.sleep(0.005)


class Collector:
    """The loop's side of `emit`: records events and folds them into a KubeState."""

    def __init__(self) -> None:
        self.events: list[KubeEvent] = []
        self.state = KubeState()

    def __call__(self, event: KubeEvent) -> None:
        self.events.append(event)
        self.state = self.state.apply(event)

    async def wait(self, predicate: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
        try:
            await until(predicate, within, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; events: {self.summary()}") from None

    def of(self, kind: type, k: KubeKind | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (k is None or e.kind == k)]

    def summary(self) -> list[str]:
        return [f"{type(e).__name__}({e.kind})" for e in self.events[-20:]]

    def service_names(self) -> set[str]:
        return {name for _, name in self.state.services}


def service(name: str, ip: str | None = "203.0.113.10", ns: str = "default", **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "bgpvip.io/bgp",
            "ports": [{"port": 80}],
            **spec,
        },
        "status": {"loadBalancer": {"ingress": [{"ip": ip}]} if ip else {}},
    }
    return obj


def endpoint_slice(service_name: str, *nodes: str, ns: str = "default", ready: bool = True) -> dict[str, Any]:
    return {
        "addressType": "IPv4",
        "metadata": {
            "name": f"{service_name}-abcde",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "endpoints": [
            {"addresses": [f"10.244.0.{i + 1}"], "nodeName": n, "conditions": {"ready": ready}}
            for i, n in enumerate(nodes)
        ],
    }


def node(name: str = NODE, ready: str = "True", **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": annotations},
        "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady"}]},
    }


def watches(api: FakeKubeAPI, plural: str) -> list[Recorded]:
    return api.requests_for(plural, watch=True)


def lists(api: FakeKubeAPI, plural: str) -> list[Recorded]:
    return api.requests_for(plural, watch=False)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def collector() -> Collector:
    return Collector()


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    try:
        await asyncio.wait_for(task, 2)
    except asyncio.CancelledError:
        pass


@pytest.fixture
async def start_watcher(kube: KubeClient, collector: Collector) -> AsyncIterator[Callable[..., Any]]:
    started: list[asyncio.Task[None]] = []

    async def start(**kw: Any) -> KubeWatcher:
        kw.setdefault("watch_timeout", 5.0)
        kw.setdefault("backoff_initial", 0.05)
        kw.setdefault("backoff_max", 0.2)
        kw.setdefault("probe_interval", 0.05)
        w = KubeWatcher(kube, node_name=NODE, emit=collector, **kw)
        started.append(asyncio.create_task(w.run()))
        await collector.wait(lambda: collector.state.ready, what="initial lists")
        return w

    yield start
    for t in started:
        await stop(t)


@pytest.fixture
def seeded(api: FakeKubeAPI) -> FakeKubeAPI:
    api.put("nodes", node())
    api.put("services", service("web"))
    api.put("services", service("api", "203.0.113.11", externalTrafficPolicy="Local"))
    api.put("endpointslices", endpoint_slice("web", "worker-2"))
    api.put("endpointslices", endpoint_slice("api", NODE))
    return api


# --------------------------------------------------------------------------- list + watch


async def test_list_then_watch_delivers_upserts_and_deletes(
    seeded: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    api = seeded
    await start_watcher()
    assert collector.service_names() == {"web", "api"}
    assert collector.state.node == NodeView(NODE, ready=True, labels=(("kubernetes.io/hostname", NODE),))
    synced = {e.kind: e for e in collector.of(KubeSynced)}
    assert set(synced) == set(KubeKind)
    assert all(e.resource_version for e in synced.values())

    api.put("services", service("new", "203.0.113.12"))
    api.put("services", service("web", "203.0.113.20"))
    api.remove("services", "default", "api")
    api.put("endpointslices", endpoint_slice("web", NODE))
    api.put("nodes", node(ready="False"))
    await collector.wait(lambda: collector.service_names() == {"web", "new"}, what="service changes")
    await collector.wait(
        lambda: collector.state.node is not None and not collector.state.node.ready, what="node"
    )
    await collector.wait(
        lambda: (
            [s.endpoints for s in collector.state.slices.get(("default", "web"), ())]
            == [(EndpointView(NODE, True, True, False),)]
        )
    )
    assert collector.state.services[("default", "web")].ingress_ips == ("203.0.113.20",)
    assert [e.key for e in collector.of(KubeDelete)] == [("default", "api")]
    assert all(isinstance(e, KubeUpsert | KubeDelete) for e in collector.events[3:])
    first_watch = watches(api, "services")[0].query
    assert first_watch == {
        "watch": "true",
        "resourceVersion": synced[KubeKind.SERVICE].resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "4",
    }
    assert lists(api, "nodes")[0].query["fieldSelector"] == f"metadata.name={NODE}"
    assert watches(api, "nodes")[0].query["fieldSelector"] == f"metadata.name={NODE}"


async def test_the_folded_state_drives_decisions(
    seeded: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    config = load(
        {
            "bgp": {"local_as": 65001, "peers": [{"address": "192.0.2.1", "peer_as": 65000}]},
            "pools": [{"name": "public", "addresses": ["203.0.113.0/24"]}],
            "kubernetes": {"enabled": True},
        }
    )
    await start_watcher()
    got = {(d.source, str(d.address), d.reason) for d in decide_services(config, collector.state, NODE)}
    assert got == {
        ("service/default/web", "203.0.113.10", Reason.HAS_ENDPOINTS),
        ("service/default/api", "203.0.113.11", Reason.HAS_ENDPOINTS),
    }
    seeded.put("endpointslices", endpoint_slice("api", "worker-2"))
    await collector.wait(
        lambda: any(
            d.reason is Reason.NO_LOCAL_ENDPOINTS for d in decide_services(config, collector.state, NODE)
        )
    )


async def test_paginated_list_is_one_synced_snapshot(
    api: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    for i in range(23):
        api.put("services", service(f"svc-{i:02}", f"203.0.113.{i + 1}"))
    await start_watcher(page_size=10)
    (synced,) = collector.of(KubeSynced, KubeKind.SERVICE)
    assert len(synced.snapshot) == 23
    pages = lists(api, "services")
    assert [r.query.get("limit") for r in pages] == ["10", "10", "10"]
    assert "continue" not in pages[0].query and all("continue" in r.query for r in pages[1:])


async def test_expired_list_continuation_starts_the_list_over(
    api: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    for i in range(5):
        api.put("services", service(f"svc-{i}", f"203.0.113.{i + 1}"))
    compacted = []

    def compact_before_first_continue(rec: Recorded) -> None:
        if "continue" in rec.query and not compacted:
            compacted.append(rec)
            api.put("nodes", node("other"))  # history moves on, then is forgotten
            api.compact()

    api.before_request = compact_before_first_continue
    watcher = await start_watcher(page_size=2)
    (synced,) = collector.of(KubeSynced, KubeKind.SERVICE)
    assert len(synced.snapshot) == 5
    svc_lists = lists(api, "services")
    assert [r.status for r in svc_lists] == [200, 410, 200, 200, 200]
    assert "continue" not in svc_lists[2].query
    assert watcher.stats[KubeKind.SERVICE].gone == 1


async def test_first_list_pages_come_before_the_snapshot_and_only_once(
    api: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    for i in range(5):
        api.put("services", service(f"svc-{i}", f"203.0.113.{i + 1}"))
    compacted: list[Recorded] = []

    def compact_before_first_continue(rec: Recorded) -> None:
        if "continue" in rec.query and not compacted:
            compacted.append(rec)
            api.put("nodes", node("other"))
            api.compact()

    api.before_request = compact_before_first_continue
    watcher = await start_watcher(page_size=2, list_pages=True)
    services = [e for e in collector.events if getattr(e, "kind", None) is KubeKind.SERVICE]
    pages = [e for e in services if isinstance(e, KubeListPage)]
    # page 1, then 410 on its continuation: the list starts over (a `first` page again)
    assert [(len(p.views), p.first) for p in pages] == [(2, True), (2, True), (2, False), (1, False)]
    assert isinstance(services[len(pages)], KubeSynced), "the snapshot follows its pages"
    assert len(collector.service_names()) == 5
    # a relist (410 on the watch) sends no pages: the state keeps the old list until it is whole
    api.before_request = None
    await until(lambda: api.open_watches == 3)
    api.put("endpointslices", endpoint_slice("other", NODE))  # history moves past the Service watch
    api.compact()
    api.put("services", service("late", "203.0.113.99"))
    api.drop_watches()
    await collector.wait(lambda: len(collector.of(KubeSynced, KubeKind.SERVICE)) == 2, what="relist")
    assert len(collector.of(KubeListPage, KubeKind.SERVICE)) == 4
    assert watcher.stats[KubeKind.SERVICE].lists == 2


async def test_resume_after_dropped_connection_without_relist(
    seeded: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    api = seeded
    watcher = await start_watcher()
    await until(lambda: api.open_watches == 3, what="three open watches")
    api.put("services", service("before-drop", "203.0.113.30"))
    await collector.wait(lambda: "before-drop" in collector.service_names())
    rv_seen = watcher.stats[KubeKind.SERVICE].resource_version
    api.drop_watches()
    api.put("services", service("after-drop", "203.0.113.31"))
    await collector.wait(lambda: "after-drop" in collector.service_names(), what="event after the drop")
    assert len(lists(api, "services")) == 1, "resumed, not relisted"
    assert len(collector.of(KubeSynced, KubeKind.SERVICE)) == 1
    assert watches(api, "services")[1].query["resourceVersion"] == rv_seen
    assert not collector.of(KubeUnavailable)


async def test_compacted_history_gives_410_and_a_fresh_list(
    seeded: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    api = seeded
    watcher = await start_watcher()
    await until(lambda: api.open_watches == 3)
    rv = watcher.stats[KubeKind.SERVICE].resource_version
    api.put("endpointslices", endpoint_slice("other", NODE))  # history moves past the Service watch's rv
    api.compact()
    api.remove("services", "default", "api")  # happens while the watch is being re-established
    api.drop_watches()
    await collector.wait(lambda: len(collector.of(KubeSynced, KubeKind.SERVICE)) == 2, what="a relist")
    assert collector.service_names() == {"web"}
    assert watcher.stats[KubeKind.SERVICE].gone >= 1
    svc_watches = watches(api, "services")
    assert svc_watches[1].query["resourceVersion"] == rv  # the resume attempt that got the ERROR 410
    assert not collector.of(KubeDelete), "the list replaces the kind; no per-object deletes are invented"


async def test_410_as_an_http_status_on_watch_also_relists(
    seeded: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    api = seeded
    watcher = await start_watcher()
    api.inject_error(lambda r: r.watch and "/services" in r.path, 410, "Gone", "too old resource version")
    api.drop_watches()
    await collector.wait(lambda: len(collector.of(KubeSynced, KubeKind.SERVICE)) == 2)
    assert watcher.stats[KubeKind.SERVICE].gone == 1
    assert not collector.of(KubeUnavailable)


async def test_bookmarks_advance_the_resource_version(
    seeded: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    api = seeded
    watcher = await start_watcher()
    await until(lambda: api.open_watches == 3)
    for i in range(5):  # other kinds move the global resourceVersion on
        api.put("endpointslices", endpoint_slice(f"other-{i}", NODE))
    current = str(api.resource_version)
    assert watcher.stats[KubeKind.SERVICE].resource_version != current
    api.send_bookmarks()
    await until(lambda: watcher.stats[KubeKind.SERVICE].resource_version == current, what="bookmark")
    api.compact()
    api.drop_watches()
    api.put("services", service("late", "203.0.113.40"))
    await collector.wait(lambda: "late" in collector.service_names())
    assert watches(api, "services")[-1].query["resourceVersion"] == current
    assert len(lists(api, "services")) == 1, "no 410: the bookmark's resourceVersion was still in history"
    assert watcher.stats[KubeKind.SERVICE].gone == 0


async def test_periodic_bookmarks_are_consumed_silently(
    seeded: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    seeded.bookmark_interval = 0.05
    watcher = await start_watcher()
    seeded.put("endpointslices", endpoint_slice("x", NODE))
    want = str(seeded.resource_version)
    await until(lambda: watcher.stats[KubeKind.NODE].resource_version == want, what="node bookmark")
    assert len(collector.events) == 4  # 3 lists + the slice; bookmarks emit nothing


async def test_silent_watch_is_restarted_after_watch_timeout(
    seeded: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    api = seeded
    watcher = await start_watcher(watch_timeout=0.4)
    assert watcher.server_timeout == 1
    await until(lambda: api.open_watches == 3)
    before = len(watches(api, "services"))
    api.silence_watches()
    started = time.monotonic()
    await until(lambda: len(watches(api, "services")) >= before + 2, within=5, what="restarted watches")
    assert time.monotonic() - started >= 0.6, "each silent watch was given watch_timeout"
    api.silence_watches(False)
    api.put("services", service("after-silence", "203.0.113.50"))
    await collector.wait(lambda: "after-silence" in collector.service_names())
    assert len(lists(api, "services")) == 1
    assert not collector.of(KubeUnavailable)


@pytest.mark.parametrize("mode", ["refuse", "reset", "error"], ids=["refused", "reset", "http-503"])
async def test_api_outage_is_fail_static_then_resyncs(
    seeded: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector, mode: str
) -> None:
    api = seeded
    watcher = await start_watcher()
    await until(lambda: api.open_watches == 3)
    before = collector.state
    n_events = len(collector.events)
    api.inject_outage(mode)
    await collector.wait(
        lambda: {e.kind for e in collector.of(KubeUnavailable)} == set(KubeKind), what="unavailable"
    )
    # the cluster changes while we cannot see it
    api.remove("services", "default", "api")
    api.put("services", service("born-in-outage", "203.0.113.60"))
    api.put("nodes", node(**{"bgpvip.io/drain": "true"}))
    failures = sum(st.failures for st in watcher.stats.values())
    await until(lambda: sum(st.failures for st in watcher.stats.values()) >= failures + 9, what="retries")
    during = collector.events[n_events:]
    assert all(isinstance(e, KubeUnavailable) for e in during), during
    assert len(during) == 3, "one KubeUnavailable per kind, not one per retry"
    assert collector.state.services == before.services and collector.state.node == before.node
    api.restore()
    await collector.wait(lambda: len(collector.of(KubeSynced)) == 6, what="fresh lists after the outage")
    assert collector.service_names() == {"web", "born-in-outage"}
    assert collector.state.node is not None and collector.state.node.drained
    assert collector.state.unavailable == ()
    assert not collector.of(KubeDelete)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[FakeKubeAPI]:
    """The fake over HTTPS with a bearer token, as a ServiceAccount reaches kube-apiserver."""
    server = FakeKubeAPI(
        tls_dir=serving_certificate(tmp_path, ips=("127.0.0.1",)), token="s3cret-t0ken"
    ).start()
    try:
        yield server
    finally:
        server.stop()


async def test_watcher_over_https_with_a_bearer_token(secured: FakeKubeAPI, collector: Collector) -> None:
    """The DaemonSet's path: TLS verified against the cluster CA, the token on every request
    (lists and watches), and a watch resumed over a fresh TLS connection after a cut."""
    secured.put("nodes", node())
    secured.put("services", service("web"))
    secured.put("endpointslices", endpoint_slice("web", NODE))
    assert secured.url.startswith("https://")
    kube = KubeClient(Credentials.static(secured.connection()))
    w = KubeWatcher(kube, node_name=NODE, emit=collector, watch_timeout=5.0, backoff_initial=0.05)
    task = asyncio.create_task(w.run())
    try:
        await collector.wait(lambda: collector.state.ready, what="initial lists over HTTPS")
        await until(lambda: secured.open_watches == 3)
        secured.drop_watches()
        secured.put("services", service("api", "203.0.113.11"))
        await collector.wait(
            lambda: collector.service_names() == {"web", "api"}, what="a change after the cut"
        )
    finally:
        await stop(task)
        await kube.aclose()
    assert secured.misuse == []
    assert {r.status for r in secured.requests if r.status} == {200}


async def test_a_wrong_token_is_refused_resolved_again_and_recorded(secured: FakeKubeAPI) -> None:
    resolved: list[Connection] = []
    wrong = msgspec.structs.replace(secured.connection(), token="not-the-token")

    async def resolve() -> Connection:
        resolved.append(wrong)
        return wrong

    kube = KubeClient(Credentials(resolve))
    try:
        with pytest.raises(ApiError) as e:
            await kube.request("GET", "/api/v1/nodes")
        assert (e.value.status, e.value.reason, e.value.message) == (401, "Unauthorized", "Unauthorized")
        with pytest.raises(ApiError):
            await kube.request("GET", "/api/v1/nodes")
    finally:
        await kube.aclose()
    assert len(resolved) == 2, "a 401 makes the next request resolve the credentials again"
    assert secured.misuse == ["GET /api/v1/nodes: 401 Unauthorized"] * 2
    secured.misuse.clear()


async def test_a_server_certificate_from_another_ca_is_refused_in_one_line(
    secured: FakeKubeAPI, tmp_path: Path, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    ca = (serving_certificate(other, ips=("127.0.0.1",)) / "ca.crt").read_text()
    kube = KubeClient(Credentials.static(msgspec.structs.replace(secured.connection(), ca=ca)))
    w = KubeWatcher(kube, node_name=NODE, emit=collector, kinds=(KubeKind.NODE,), probe_interval=0.05)
    task = asyncio.create_task(w.run())
    try:
        await collector.wait(lambda: collector.of(KubeUnavailable), what="unavailable")
    finally:
        await stop(task)
        await kube.aclose()
    (down,) = collector.of(KubeUnavailable)
    assert "TLS certificate not trusted: unable to get local issuer certificate" in down.error, down.error
    assert "\n" not in down.error and "HTTP 0" not in down.error
    (line,) = [r.getMessage() for r in caplog.records if "API unavailable" in r.getMessage()]
    assert "TLS certificate not trusted" in line and "\n" not in line and r"\n" not in line
    assert secured.requests == []


async def test_malformed_objects_never_crash_the_watcher(
    api: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    api.put("nodes", node())
    api.put("services", fixture("service-hostile.json"))
    api.put("services", {"metadata": {"name": "no-spec", "namespace": "default"}, "status": "bogus"})
    api.put(
        "services", {"metadata": {"namespace": "default", "labels": "x"}, "spec": {"type": "LoadBalancer"}}
    )
    watcher = await start_watcher()
    assert collector.service_names() == {"hostile", "no-spec"}
    assert watcher.stats[KubeKind.SERVICE].malformed == 1
    api.put("services", {"metadata": {"name": "later", "namespace": "default"}, "spec": [], "status": []})
    api.put(
        "endpointslices",
        {"metadata": {"name": "s", "namespace": "default"}, "addressType": "IPv4", "endpoints": "many"},
    )
    api.put("services", service("good", "203.0.113.70"))
    await collector.wait(lambda: "good" in collector.service_names())
    assert "later" in collector.service_names()
    config = load(
        {
            "bgp": {"local_as": 65001, "peers": [{"address": "192.0.2.1", "peer_as": 65000}]},
            "pools": [{"name": "public", "addresses": ["203.0.113.0/24"]}],
            "kubernetes": {"enabled": True},
        }
    )
    hostile = [
        d for d in decide_services(config, collector.state, NODE) if d.source == "service/tenant-a/hostile"
    ]
    assert {d.reason for d in hostile} == {
        Reason.INVALID_ADDRESS,
        Reason.NO_READY_ENDPOINTS,
        Reason.NOT_IN_POOL,
    }


async def test_cancelling_the_watcher_closes_its_watches(
    seeded: FakeKubeAPI, kube: KubeClient, collector: Collector
) -> None:
    watcher = KubeWatcher(kube, node_name=NODE, emit=collector, watch_timeout=60)
    task = asyncio.create_task(watcher.run())
    await collector.wait(lambda: collector.state.ready)
    await until(lambda: seeded.open_watches == 3)
    await stop(task)
    assert task.cancelled()
    n = len(collector.events)
    seeded.put("services", service("after-stop", "203.0.113.99"))
    await asyncio.sleep(0.05)
    assert len(collector.events) == n, "nothing is emitted after the watcher was cancelled"


async def test_an_unreachable_api_is_probed_often_without_growing_the_backoff(
    api: FakeKubeAPI, kube: KubeClient, collector: Collector
) -> None:
    """Refused connections are retried every probe_interval (so a returning API is used within
    about that), however long the outage; errors the server answers with back off."""
    api.put("nodes", node())
    api.inject_outage("refuse")
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    w = KubeWatcher(kube, node_name=NODE, emit=collector, kinds=(KubeKind.NODE,), sleep=sleep)
    task = asyncio.create_task(w.run())
    await until(lambda: len(sleeps) >= 20, what="retries")
    assert max(sleeps) <= w.probe_interval * 1.2, sleeps
    api.restore()
    await collector.wait(lambda: collector.of(KubeSynced), what="synced once the API is back")
    api.inject_error(lambda r: True, 500, "InternalError", times=6)
    api.drop_watches()
    n = len(sleeps)
    await until(lambda: len(sleeps) >= n + 6, what="retries after 500s")
    grown = sleeps[n : n + 6]
    assert grown == sorted(grown) and grown[-1] > 4 * grown[0], grown
    await stop(task)


# --------------------------------------------------------------------------- Events


@pytest.fixture
async def recorder(kube: KubeClient) -> AsyncIterator[Callable[..., EventRecorder]]:
    made: list[EventRecorder] = []

    def make(**kw: Any) -> EventRecorder:
        kw.setdefault("host", NODE)
        kw.setdefault("adopt", False)
        r = EventRecorder(kube, **kw)
        r.start()
        made.append(r)
        return r

    yield make
    for r in made:
        await r.stop(2)


REF = ObjectRef(namespace="default", name="web", uid="uid-web")


async def test_event_is_posted_as_core_v1(api: FakeKubeAPI, recorder: Callable[..., EventRecorder]) -> None:
    r = recorder()
    r.record(
        REF, "Warning", "NotInPool", "status.loadBalancer.ingress[0].ip 10.0.0.1 lies in no configured pool"
    )
    assert await r.flush()
    (event,) = api.objects("events")
    assert event["metadata"]["namespace"] == "default" and event["metadata"]["name"].startswith("web.")
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Service",
        "namespace": "default",
        "name": "web",
        "uid": "uid-web",
    }
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "NotInPool", 1)
    assert event["source"] == {"component": "bgpvip-speaker", "host": NODE}
    assert event["firstTimestamp"] == event["lastTimestamp"]
    assert [x.method for x in api.requests] == ["POST"]


async def test_repeats_increment_the_count(api: FakeKubeAPI, recorder: Callable[..., EventRecorder]) -> None:
    r = recorder(patch_interval=0)
    for _ in range(4):
        r.record(REF, "Warning", "NotInPool", "same")
    assert await r.flush()
    (event,) = api.objects("events")
    assert event["count"] == 4
    assert (r.stats.created, r.stats.patched) == (1, 3)
    assert {x.method for x in api.requests[1:]} == {"PATCH"}
    assert api.requests[1].content_type == "application/strategic-merge-patch+json"


async def test_repeats_within_patch_interval_are_skipped(
    api: FakeKubeAPI, recorder: Callable[..., EventRecorder]
) -> None:
    r = recorder(patch_interval=60)
    for _ in range(20):
        r.record(REF, "Warning", "NotInPool", "same")
    r.record(REF, "Warning", "NotInPool", "different")
    assert await r.flush()
    assert (r.stats.created, r.stats.patched, r.stats.deduplicated) == (2, 0, 19)
    assert len(api.requests) == 2


async def test_new_events_are_rate_limited_per_object(
    api: FakeKubeAPI, recorder: Callable[..., EventRecorder]
) -> None:
    r = recorder(burst=3, refill_interval=3600)
    for i in range(6):
        r.record(REF, "Normal", "Announced", f"message {i}")
    r.record(ObjectRef("default", "other"), "Normal", "Announced", "another object has its own budget")
    assert await r.flush()
    assert (r.stats.created, r.stats.rate_limited) == (4, 3)
    assert len(api.objects("events")) == 4


async def test_window_expiry_and_deleted_event_start_a_new_one(
    api: FakeKubeAPI, recorder: Callable[..., EventRecorder]
) -> None:
    now = [0.0]
    r = recorder(patch_interval=0, window=10, clock=lambda: now[0])
    r.record(REF, "Warning", "NotInPool", "same")
    r.record(REF, "Warning", "NotInPool", "same")
    assert await r.flush()
    now[0] = 30.0  # outside the window: a new Event, counting from 1 again
    r.record(REF, "Warning", "NotInPool", "same")
    assert await r.flush()
    assert r.stats.created == 2
    assert sorted(e["count"] for e in api.objects("events")) == [1, 2]
    for e in api.objects("events"):  # the apiserver's TTL removes them
        api.remove("events", "default", e["metadata"]["name"])
    now[0] = 31.0
    r.record(REF, "Warning", "NotInPool", "same")
    assert await r.flush()
    (event,) = api.objects("events")
    assert r.stats.created == 3 and event["count"] == 2, "a repeat of a deleted Event keeps counting"


async def test_a_restarted_recorder_counts_on_its_earlier_events_instead_of_posting_again(
    api: FakeKubeAPI, recorder: Callable[..., EventRecorder]
) -> None:
    first = recorder()
    first.record(REF, "Warning", "NotInPool", "203.0.113.1 lies in no configured pool")
    first.record(ObjectRef("default", "other"), "Warning", "NotInPool", "other")
    assert await first.flush()
    await first.stop()
    # another node's speaker posts the same refusal: not ours to count on
    recorder(host="worker-2").record(REF, "Warning", "NotInPool", "203.0.113.1 lies in no configured pool")
    second = recorder(adopt=True)
    await until(lambda: second.stats.adopted == 2, what="its own two Events adopted")
    second.record(REF, "Warning", "NotInPool", "203.0.113.1 lies in no configured pool")
    second.record(REF, "Warning", "NotInPool", "a different message is a new Event")
    assert await second.flush()
    assert (second.stats.created, second.stats.deduplicated) == (1, 1)
    assert len(api.objects("events")) == 4
    (listed,) = [r for r in api.requests if r.method == "GET" and r.path == "/api/v1/events"]
    assert listed.query == {"fieldSelector": "source=bgpvip-speaker"}


async def test_recording_never_blocks_or_raises(
    api: FakeKubeAPI, recorder: Callable[..., EventRecorder]
) -> None:
    api.inject_outage("refuse")
    r = recorder(max_queue=5)
    started = time.monotonic()
    for i in range(50):
        r.record(REF, "Warning", "NotInPool", f"{i}")
    r.record(REF, "Bogus", "X", "not a valid type is logged, not raised")
    assert time.monotonic() - started < 0.1
    assert await r.flush(10)
    assert r.stats.dropped > 0 and r.stats.failed > 0 and r.stats.created == 0
    api.restore()


# --------------------------------------------------------------------------- translation


def test_translate_loadbalancer_service() -> None:
    v = service_view(fixture("service-loadbalancer-local.json"))
    assert (v.namespace, v.name, v.uid) == (
        "ingress-nginx",
        "ingress-nginx-controller",
        "6d1e8f38-3c0f-4f8e-9a53-2f0e4b0a7c11",
    )
    assert (v.type, v.load_balancer_class, v.external_traffic_policy) == (
        "LoadBalancer",
        "bgpvip.io/bgp",
        "Local",
    )
    assert v.ingress_ips == ("203.0.113.10", "2001:db8:100::10")
    assert v.external_ips == ()
    assert v.ports == (("TCP", 80), ("TCP", 443), ("UDP", 443))
    assert v.selector_hash is not None
    assert dict(v.labels)["app.kubernetes.io/name"] == "ingress-nginx"


def test_translate_keeps_only_the_label_keys_pools_select_on() -> None:
    config = load(
        {
            "bgp": {"local_as": 65001, "peers": [{"address": "192.0.2.1", "peer_as": 65000}]},
            "pools": [
                {
                    "name": "a",
                    "addresses": ["203.0.113.0/25"],
                    "service_selector": {"app.kubernetes.io/name": "x"},
                },
                {"name": "b", "addresses": ["203.0.113.128/25"], "service_selector": {"tier": "edge"}},
            ],
        }
    )
    keys = pool_label_keys(config)
    assert keys == {"app.kubernetes.io/name", "tier"}
    v = service_view(fixture("service-loadbalancer-local.json"), label_keys=keys)
    assert v.labels == (("app.kubernetes.io/name", "ingress-nginx"),)
    assert service_view(fixture("service-loadbalancer-local.json"), label_keys=()).labels == ()


async def test_watcher_for_config(kube: KubeClient, collector: Collector) -> None:
    config = load(
        {
            "bgp": {"local_as": 65001, "peers": [{"address": "192.0.2.1", "peer_as": 65000}]},
            "pools": [{"name": "a", "addresses": ["203.0.113.0/24"], "service_selector": {"tier": "edge"}}],
            "kubernetes": {"enabled": True, "watch_timeout": 42},
        }
    )
    w = KubeWatcher.for_config(kube, config, node_name=NODE, emit=collector)
    assert (w.watch_timeout, w.server_timeout, w.label_keys) == (42, 33, {"tier"})


async def test_watcher_applies_label_keys(
    api: FakeKubeAPI, start_watcher: Callable[..., Any], collector: Collector
) -> None:
    api.put(
        "services",
        {
            **service("web"),
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "edge"}},
        },
    )
    await start_watcher(label_keys={"tier"})
    assert collector.state.services[("default", "web")].labels == (("tier", "edge"),)


def test_translate_clusterip_service() -> None:
    v = service_view(fixture("service-clusterip.json"))
    assert (v.type, v.load_balancer_class, v.ingress_ips, v.external_traffic_policy) == (
        "ClusterIP",
        None,
        (),
        "Cluster",
    )
    assert v.selector_hash is None


def test_translate_hostile_service_keeps_bad_values_for_the_core_to_refuse() -> None:
    v = service_view(fixture("service-hostile.json"))
    assert v.ingress_ips == (
        "203.0.113.300",
        " 203.0.113.11",
        "fe80::1%eth0",
        "3405803787",
        "203.0.113.11",
        "203.0.113.11",
    )
    assert v.external_ips == ("198.51.100.7", "42")
    assert v.ports == (("TCP", 8080),)
    assert v.selector_hash is None and v.labels == ()


def test_translate_list_items_without_kind() -> None:
    item = fixture("service-loadbalancer-local.json")
    del item["kind"], item["apiVersion"]
    assert service_view(item).name == "ingress-nginx-controller"


@pytest.mark.parametrize(
    "obj",
    [{}, {"metadata": {}}, {"metadata": {"name": ""}}, {"metadata": {"name": "x"}}, {"metadata": "x"}],
    ids=["empty", "no-name", "empty-name", "no-namespace", "metadata-not-a-map"],
)
def test_objects_without_identity_are_malformed(obj: dict[str, Any]) -> None:
    with pytest.raises(MalformedObject):
        service_view(obj)


def test_translate_endpoint_slice_conditions() -> None:
    v = endpoint_slice_view(fixture("endpointslice.json"))
    assert v == EndpointSliceView(
        "ingress-nginx",
        "ingress-nginx-controller-k5x2d",
        "ingress-nginx-controller",
        (
            EndpointView("worker-1", ready=True, serving=True, terminating=False),
            EndpointView("worker-2", ready=False, serving=True, terminating=True),
            EndpointView("worker-3", ready=False, serving=False, terminating=False),
            EndpointView("worker-3", ready=True, serving=True, terminating=False),  # unknown → ready
        ),
    )
    again = endpoint_slice_view(fixture("endpointslice.json"))
    assert again.endpoints[0] is v.endpoints[0], "identical endpoints share one view"


def test_translate_nodes() -> None:
    ready = node_view(fixture("node.json"))
    assert (ready.name, ready.ready, ready.drained, ready.excluded) == ("worker-1", True, True, False)
    assert ("bgpvip.io/speaker", "true") in ready.labels
    down = node_view(fixture("node-notready.json"))
    assert (down.ready, down.ready_detail, down.excluded, down.drained) == (
        False,
        "Ready=Unknown NodeStatusUnknown",
        True,
        False,
    )


# --------------------------------------------------------------------------- the fake itself


def test_fake_fails_loudly_on_misuse(api: FakeKubeAPI, api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    with pytest.raises(client.ApiException) as e:
        core.list_namespace()
    assert e.value.status == 404 and json.loads(e.value.body)["kind"] == "Status"
    with pytest.raises(client.ApiException) as e:
        core.list_service_for_all_namespaces(label_selector="a in (")
    assert e.value.status == 400
    with pytest.raises(client.ApiException) as e:
        core.list_service_for_all_namespaces(field_selector="spec.type=LoadBalancer")
    assert e.value.status == 400
    core.list_service_for_all_namespaces(send_initial_events=False)
    assert len(api.misuse) == 4
    assert "unknown query parameters ('sendInitialEvents',)" in api.misuse[3]
    api.misuse.clear()


def test_fake_objects_have_real_api_semantics(api: FakeKubeAPI, api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    created = core.create_namespaced_service("default", service("web", None))
    assert created.status.load_balancer.ingress is None
    with pytest.raises(client.ApiException) as e:
        core.read_namespaced_service("nope", "default")
    body = json.loads(e.value.body)
    assert (e.value.status, body["reason"], body["message"]) == (404, "NotFound", 'services "nope" not found')
    # status only through /status; the main resource ignores it
    core.patch_namespaced_service(
        "web", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}
    )
    assert core.read_namespaced_service("web", "default").status.load_balancer.ingress is None
    st = core.patch_namespaced_service_status(
        "web",
        "default",
        {
            "status": {
                "loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]},
                "conditions": [
                    {
                        "type": "A",
                        "status": "True",
                        "reason": "r",
                        "message": "m",
                        "lastTransitionTime": "2024-01-01T00:00:00Z",
                    }
                ],
            }
        },
    )
    assert [i.ip for i in st.status.load_balancer.ingress] == ["203.0.113.9"]
    rv = st.metadata.resource_version
    # optimistic concurrency
    stale = {"metadata": {"name": "web", "resourceVersion": str(int(rv) - 1)}, "spec": {"type": "ClusterIP"}}
    with pytest.raises(client.ApiException) as e:
        core.replace_namespaced_service("web", "default", stale)
    assert e.value.status == 409
    # a no-op write does not bump the resourceVersion
    same = core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"app": "web"}}})
    assert same.metadata.resource_version == rv
    # label selectors, on lists
    core.create_namespaced_service("default", service("other", None))
    names = [
        s.metadata.name for s in core.list_namespaced_service("default", label_selector="app in (web)").items
    ]
    assert names == ["web"]


def test_fake_leases_conflict_for_leader_election(api: FakeKubeAPI, api_client: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(api_client)
    lease = {
        "metadata": {"name": "bgpvip-controller"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }
    first = coord.create_namespaced_lease("kube-system", lease)
    with pytest.raises(client.ApiException) as e:
        coord.create_namespaced_lease("kube-system", lease)
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
    mine = {"metadata": {"name": "bgpvip-controller", "resourceVersion": first.metadata.resource_version}}
    coord.replace_namespaced_lease(
        "bgpvip-controller", "kube-system", {**mine, "spec": {"holderIdentity": "b"}}
    )
    with pytest.raises(client.ApiException) as e:  # a stale holder loses the race
        coord.replace_namespaced_lease(
            "bgpvip-controller", "kube-system", {**mine, "spec": {"holderIdentity": "c"}}
        )
    assert e.value.status == 409
    got = coord.read_namespaced_lease("bgpvip-controller", "kube-system")
    assert got.spec.holder_identity == "b"


# --------------------------------------------------------------------------- connection


def kubeconfig(path: Path, server: str, *, token: str | None = None, ca: Path | None = None) -> Path:
    cluster: dict[str, Any] = {"server": server}
    if ca is not None:
        cluster["certificate-authority"] = str(ca)
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token} if token else {}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path.write_text(json.dumps(doc))
    return path


async def test_a_kubeconfig_is_resolved_by_the_official_loader_in_a_child(
    secured: FakeKubeAPI, tmp_path: Path
) -> None:
    assert secured.tls_dir is not None and secured.token is not None
    path = kubeconfig(
        tmp_path / "kubeconfig", secured.url, token=secured.token, ca=secured.tls_dir / "ca.crt"
    )
    conn = await resolve_in_child(KubernetesConfig(enabled=True, kubeconfig=path))
    assert (conn.server, conn.token, conn.verify) == (secured.url, secured.token, True)
    assert conn.ca == (secured.tls_dir / "ca.crt").read_text()
    assert conn.source == f"kubeconfig {path} (context ctx)"
    kube = KubeClient(Credentials.for_config(KubernetesConfig(enabled=True, kubeconfig=path)))
    try:
        assert json.loads(await kube.request("GET", "/api/v1/nodes"))["kind"] == "NodeList"
    finally:
        await kube.aclose()
    assert secured.misuse == []


@pytest.mark.parametrize(
    ("kube_config", "says"),
    [
        (KubernetesConfig(enabled=True, kubeconfig=Path("/nonexistent/kubeconfig")), "No such file"),
        (KubernetesConfig(enabled=True), "Service host/port is not set"),
    ],
    ids=["missing-kubeconfig", "not-in-a-cluster"],
)
async def test_a_connection_that_cannot_be_resolved_names_the_problem(
    kube_config: KubernetesConfig, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(CredentialsError, match=says):
        await resolve_in_child(kube_config)


async def test_an_unresolvable_connection_is_an_outage_retried_with_backoff(collector: Collector) -> None:
    """No kubeconfig, no in-cluster environment: the watcher reports the API unavailable (the
    speaker keeps its VIPs and fails static for Services) and tries again with a growing delay,
    without starting a resolver child per attempt."""
    attempts: list[float] = []
    now = [0.0]

    async def resolve() -> Connection:
        attempts.append(now[0])
        raise CredentialsError("kubeconfig /etc/kubeconfig: FileNotFoundError: No such file")

    async def sleep(seconds: float) -> None:
        if now[0] > 120:
            await asyncio.Event().wait()  # two minutes are enough: stay here until cancelled
        now[0] += seconds
        await asyncio.sleep(0)

    kube = KubeClient(Credentials(resolve, clock=lambda: now[0]))
    w = KubeWatcher(
        kube, node_name=NODE, emit=collector, kinds=(KubeKind.NODE,), sleep=sleep, clock=lambda: now[0]
    )
    task = asyncio.create_task(w.run())
    await until(lambda: now[0] > 120, what="two minutes of fake time")
    await stop(task)
    (down,) = collector.of(KubeUnavailable)
    assert "No such file" in down.error
    assert len(attempts) <= 8, f"resolved {len(attempts)} times in two minutes: {attempts}"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps == sorted(gaps), "the delay between attempts grows"


async def test_the_start_up_403_of_a_restarted_apiserver_is_retried_at_once_and_explained(
    api: FakeKubeAPI, kube: KubeClient, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    """A real apiserver refuses ServiceAccount requests with 403 for about a second after it
    starts (its authorizer is not ready). That is retried every probe_interval, not backed off,
    and the log carries the server's reason and message instead of a bare `HTTP 403`."""
    api.put("nodes", node())
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    w = KubeWatcher(kube, node_name=NODE, emit=collector, kinds=(KubeKind.NODE,), sleep=sleep)
    task = asyncio.create_task(w.run())
    await collector.wait(lambda: collector.of(KubeSynced), what="first list")
    api.inject_outage("refuse")
    api.authz_warmup = 3600.0  # the whole test runs inside the warm-up
    await until(lambda: len(sleeps) >= 3, what="retries while unreachable")
    api.restore()
    n = len(sleeps)
    await until(lambda: len(sleeps) >= n + 10, what="retries while refused")
    assert max(sleeps[n:]) <= w.probe_interval * 1.2, sleeps[n:]
    forbidden = [r.getMessage() for r in caplog.records if "403" in r.getMessage()]
    assert forbidden and "HTTP 403 Forbidden: nodes is forbidden: User" in forbidden[0], forbidden
    assert "cannot list resource" in forbidden[0] and "check the RBAC" not in forbidden[0]
    api.authz_warmup = 0.0
    api.restore()
    await collector.wait(lambda: len(collector.of(KubeSynced)) == 2, what="listed once authorized")
    await stop(task)


async def test_a_lasting_403_backs_off_and_points_at_rbac(
    api: FakeKubeAPI, kube: KubeClient, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    api.inject_error(lambda r: True, 403, "Forbidden", 'nodes is forbidden: User "x" cannot list', times=100)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    w = KubeWatcher(
        kube, node_name=NODE, emit=collector, kinds=(KubeKind.NODE,), sleep=sleep, authz_grace=0.0
    )
    task = asyncio.create_task(w.run())
    await until(lambda: len(sleeps) >= 6, what="retries")
    await stop(task)
    assert sleeps[:6] == sorted(sleeps[:6]) and sleeps[5] > 8 * sleeps[0], sleeps
    (line,) = [r.getMessage() for r in caplog.records if "API unavailable" in r.getMessage()]
    assert "HTTP 403 Forbidden: nodes is forbidden" in line and "check the RBAC rules" in line


async def test_a_token_file_is_re_read_and_an_expiring_credential_resolved_again(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    now, wall = [0.0], [1000.0]
    resolved: list[Connection] = []

    async def resolve() -> Connection:
        conn = Connection(
            server="https://127.0.0.1:6443", token="first", token_file=str(token_file), expires=5000.0
        )
        resolved.append(conn)
        return conn

    creds = Credentials(resolve, clock=lambda: now[0], wall=lambda: wall[0])

    async def token() -> str:
        return dict((await creds.get()).headers)["Authorization"]

    assert await token() == "Bearer first"
    token_file.write_text("second\n")  # the kubelet rotates the projected token
    now[0] = 59.0
    assert await token() == "Bearer first", "read once a minute, as the official client does"
    now[0] = 61.0
    assert await token() == "Bearer second"
    assert len(resolved) == 1
    wall[0] = 5000.0 - 59.0  # within a minute of expiry: resolved again before it runs out
    await creds.get()
    assert len(resolved) == 2


def test_fake_validates_endpoint_slices_and_clears_a_service_leaving_loadbalancer(api: FakeKubeAPI) -> None:
    from tests.kubeapi import ApiError as FakeApiError

    no_type = endpoint_slice("web", NODE)
    del no_type["addressType"]
    with pytest.raises(FakeApiError, match="addressType: Unsupported value"):
        api.put("endpointslices", no_type)
    wrong_family = {**endpoint_slice("web", NODE), "addressType": "IPv6"}
    with pytest.raises(FakeApiError, match="must be a valid IPv6 address"):
        api.put("endpointslices", wrong_family)
    api.misuse.clear()
    api.put("services", service("web"))
    left = service("web")
    left["spec"]["type"] = "NodePort"
    api.put("services", left)
    got = api.get("services", "default", "web")
    assert got is not None and got["status"]["loadBalancer"] == {}
    assert "loadBalancerClass" not in got["spec"]
