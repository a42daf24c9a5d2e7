"""The Kubernetes adapter against a real HTTP server speaking the Kubernetes API (tests/kubeapi.py),
through the official client. Plus translation from recorded API JSON."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from bgpvip.adapters.kube import (
    EventRecorder,
    KubeWatcher,
    MalformedObject,
    ObjectRef,
    endpoint_slice_view,
    make_api_client,
    node_view,
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


class Collector:
    """The loop's side of `emit`: records events and folds them into a KubeState."""

    def __init__(self) -> None:
        self.events: list[KubeEvent] = []
        self.state = KubeState()
        self._cond = threading.Condition()

    def __call__(self, event: KubeEvent) -> None:
        with self._cond:
            self.events.append(event)
            self.state = self.state.apply(event)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what or predicate}; events: {self.summary()}"
                    )
                self._cond.wait(left)

    def of(self, kind: type, k: KubeKind | None = None) -> list[Any]:
        with self._cond:
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


@pytest.fixture
def start_watcher(api_client: client.ApiClient, collector: Collector) -> Iterator[Callable[..., KubeWatcher]]:
    started: list[KubeWatcher] = []

    def start(**kw: Any) -> KubeWatcher:
        kw.setdefault("watch_timeout", 5.0)
        kw.setdefault("backoff_initial", 0.05)
        kw.setdefault("backoff_max", 0.2)
        w = KubeWatcher(api_client, node_name=NODE, emit=collector, **kw)
        w.start()
        started.append(w)
        collector.wait(lambda: collector.state.ready, what="initial lists")
        return w

    yield start
    for w in started:
        w.stop(timeout=2)


@pytest.fixture
def seeded(api: FakeKubeAPI) -> FakeKubeAPI:
    api.put("nodes", node())
    api.put("services", service("web"))
    api.put("services", service("api", "203.0.113.11", externalTrafficPolicy="Local"))
    api.put("endpointslices", endpoint_slice("web", "worker-2"))
    api.put("endpointslices", endpoint_slice("api", NODE))
    return api


# --------------------------------------------------------------------------- list + watch


def test_list_then_watch_delivers_upserts_and_deletes(
    seeded: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    api = seeded
    start_watcher()
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
    collector.wait(lambda: collector.service_names() == {"web", "new"}, what="service changes")
    collector.wait(lambda: collector.state.node is not None and not collector.state.node.ready, what="node")
    collector.wait(
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


def test_the_folded_state_drives_decisions(
    seeded: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    config = load(
        {
            "bgp": {"local_as": 65001, "peers": [{"address": "192.0.2.1", "peer_as": 65000}]},
            "pools": [{"name": "public", "addresses": ["203.0.113.0/24"]}],
            "kubernetes": {"enabled": True},
        }
    )
    start_watcher()
    got = {(d.source, str(d.address), d.reason) for d in decide_services(config, collector.state, NODE)}
    assert got == {
        ("service/default/web", "203.0.113.10", Reason.HAS_ENDPOINTS),
        ("service/default/api", "203.0.113.11", Reason.HAS_ENDPOINTS),
    }
    seeded.put("endpointslices", endpoint_slice("api", "worker-2"))
    collector.wait(
        lambda: any(
            d.reason is Reason.NO_LOCAL_ENDPOINTS for d in decide_services(config, collector.state, NODE)
        )
    )


def test_paginated_list_is_one_synced_snapshot(
    api: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    for i in range(23):
        api.put("services", service(f"svc-{i:02}", f"203.0.113.{i + 1}"))
    start_watcher(page_size=10)
    (synced,) = collector.of(KubeSynced, KubeKind.SERVICE)
    assert len(synced.snapshot) == 23
    pages = lists(api, "services")
    assert [r.query.get("limit") for r in pages] == ["10", "10", "10"]
    assert "continue" not in pages[0].query and all("continue" in r.query for r in pages[1:])


def test_expired_list_continuation_starts_the_list_over(
    api: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
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
    watcher = start_watcher(page_size=2)
    (synced,) = collector.of(KubeSynced, KubeKind.SERVICE)
    assert len(synced.snapshot) == 5
    svc_lists = lists(api, "services")
    assert [r.status for r in svc_lists] == [200, 410, 200, 200, 200]
    assert "continue" not in svc_lists[2].query
    assert watcher.stats[KubeKind.SERVICE].gone == 1


def test_first_list_pages_come_before_the_snapshot_and_only_once(
    api: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
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
    watcher = start_watcher(page_size=2, list_pages=True)
    with collector._cond:
        services = [e for e in collector.events if getattr(e, "kind", None) is KubeKind.SERVICE]
    pages = [e for e in services if isinstance(e, KubeListPage)]
    # page 1, then 410 on its continuation: the list starts over (a `first` page again)
    assert [(len(p.views), p.first) for p in pages] == [(2, True), (2, True), (2, False), (1, False)]
    assert isinstance(services[len(pages)], KubeSynced), "the snapshot follows its pages"
    assert len(collector.service_names()) == 5
    # a relist (410 on the watch) sends no pages: the state keeps the old list until it is whole
    api.before_request = None
    api.wait_for(lambda: api.open_watches == 3)
    api.put("endpointslices", endpoint_slice("other", NODE))  # history moves past the Service watch
    api.compact()
    api.put("services", service("late", "203.0.113.99"))
    api.drop_watches()
    collector.wait(lambda: len(collector.of(KubeSynced, KubeKind.SERVICE)) == 2, what="relist")
    assert len(collector.of(KubeListPage, KubeKind.SERVICE)) == 4
    assert watcher.stats[KubeKind.SERVICE].lists == 2


def test_resume_after_dropped_connection_without_relist(
    seeded: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    api = seeded
    watcher = start_watcher()
    api.wait_for(lambda: api.open_watches == 3, what="three open watches")
    api.put("services", service("before-drop", "203.0.113.30"))
    collector.wait(lambda: "before-drop" in collector.service_names())
    rv_seen = watcher.stats[KubeKind.SERVICE].resource_version
    api.drop_watches()
    api.put("services", service("after-drop", "203.0.113.31"))
    collector.wait(lambda: "after-drop" in collector.service_names(), what="event after the drop")
    assert len(lists(api, "services")) == 1, "resumed, not relisted"
    assert len(collector.of(KubeSynced, KubeKind.SERVICE)) == 1
    assert watches(api, "services")[1].query["resourceVersion"] == rv_seen
    assert not collector.of(KubeUnavailable)


def test_compacted_history_gives_410_and_a_fresh_list(
    seeded: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    api = seeded
    watcher = start_watcher()
    api.wait_for(lambda: api.open_watches == 3)
    rv = watcher.stats[KubeKind.SERVICE].resource_version
    api.put("endpointslices", endpoint_slice("other", NODE))  # history moves past the Service watch's rv
    api.compact()
    api.remove("services", "default", "api")  # happens while the watch is being re-established
    api.drop_watches()
    collector.wait(lambda: len(collector.of(KubeSynced, KubeKind.SERVICE)) == 2, what="a relist")
    assert collector.service_names() == {"web"}
    assert watcher.stats[KubeKind.SERVICE].gone >= 1
    svc_watches = watches(api, "services")
    assert svc_watches[1].query["resourceVersion"] == rv  # the resume attempt that got the ERROR 410
    assert not collector.of(KubeDelete), "the list replaces the kind; no per-object deletes are invented"


def test_410_as_an_http_status_on_watch_also_relists(
    seeded: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    api = seeded
    watcher = start_watcher()
    api.inject_error(lambda r: r.watch and "/services" in r.path, 410, "Gone", "too old resource version")
    api.drop_watches()
    collector.wait(lambda: len(collector.of(KubeSynced, KubeKind.SERVICE)) == 2)
    assert watcher.stats[KubeKind.SERVICE].gone == 1
    assert not collector.of(KubeUnavailable)


def test_bookmarks_advance_the_resource_version(
    seeded: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    api = seeded
    watcher = start_watcher()
    api.wait_for(lambda: api.open_watches == 3)
    for i in range(5):  # other kinds move the global resourceVersion on
        api.put("endpointslices", endpoint_slice(f"other-{i}", NODE))
    current = str(api.resource_version)
    assert watcher.stats[KubeKind.SERVICE].resource_version != current
    api.send_bookmarks()
    api.wait_for(lambda: watcher.stats[KubeKind.SERVICE].resource_version == current, what="bookmark")
    api.compact()
    api.drop_watches()
    api.put("services", service("late", "203.0.113.40"))
    collector.wait(lambda: "late" in collector.service_names())
    assert watches(api, "services")[-1].query["resourceVersion"] == current
    assert len(lists(api, "services")) == 1, "no 410: the bookmark's resourceVersion was still in history"
    assert watcher.stats[KubeKind.SERVICE].gone == 0


def test_periodic_bookmarks_are_consumed_silently(
    seeded: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    seeded.bookmark_interval = 0.05
    watcher = start_watcher()
    seeded.put("endpointslices", endpoint_slice("x", NODE))
    want = str(seeded.resource_version)
    seeded.wait_for(lambda: watcher.stats[KubeKind.NODE].resource_version == want, what="node bookmark")
    assert len(collector.events) == 4  # 3 lists + the slice; bookmarks emit nothing


def test_silent_watch_is_restarted_after_watch_timeout(
    seeded: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    api = seeded
    watcher = start_watcher(watch_timeout=0.4)
    assert watcher.server_timeout == 1
    api.wait_for(lambda: api.open_watches == 3)
    before = len(watches(api, "services"))
    api.silence_watches()
    started = time.monotonic()
    api.wait_for(lambda: len(watches(api, "services")) >= before + 2, timeout=5, what="restarted watches")
    assert time.monotonic() - started >= 0.6, "each silent watch was given watch_timeout"
    api.silence_watches(False)
    api.put("services", service("after-silence", "203.0.113.50"))
    collector.wait(lambda: "after-silence" in collector.service_names())
    assert len(lists(api, "services")) == 1
    assert not collector.of(KubeUnavailable)


@pytest.mark.parametrize("mode", ["refuse", "reset", "error"], ids=["refused", "reset", "http-503"])
def test_api_outage_is_fail_static_then_resyncs(
    seeded: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector, mode: str
) -> None:
    api = seeded
    start_watcher()
    api.wait_for(lambda: api.open_watches == 3)
    before = collector.state
    n_events = len(collector.events)
    api.inject_outage(mode)
    collector.wait(
        lambda: {e.kind for e in collector.of(KubeUnavailable)} == set(KubeKind), what="unavailable"
    )
    # the cluster changes while we cannot see it
    api.remove("services", "default", "api")
    api.put("services", service("born-in-outage", "203.0.113.60"))
    api.put("nodes", node(**{"bgpvip.io/drain": "true"}))
    time.sleep(0.3)  # several backoff rounds: still nothing may change
    during = collector.events[n_events:]
    assert all(isinstance(e, KubeUnavailable) for e in during), during
    assert len(during) == 3, "one KubeUnavailable per kind, not one per retry"
    assert collector.state.services == before.services and collector.state.node == before.node
    api.restore()
    collector.wait(lambda: len(collector.of(KubeSynced)) == 6, what="fresh lists after the outage")
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


def test_watcher_over_https_with_a_bearer_token(secured: FakeKubeAPI, collector: Collector) -> None:
    """The DaemonSet's path: TLS verified against the cluster CA, the token on every request
    (lists and watches), and a watch resumed over a fresh TLS connection after a cut."""
    secured.put("nodes", node())
    secured.put("services", service("web"))
    secured.put("endpointslices", endpoint_slice("web", NODE))
    assert secured.url.startswith("https://")
    api_client = make_api_client(KubernetesConfig(), configuration=secured.configuration())
    w = KubeWatcher(api_client, node_name=NODE, emit=collector, watch_timeout=5.0, backoff_initial=0.05)
    w.start()
    try:
        collector.wait(lambda: collector.state.ready, what="initial lists over HTTPS")
        secured.wait_for(lambda: secured.open_watches == 3)
        secured.drop_watches()
        secured.put("services", service("api", "203.0.113.11"))
        collector.wait(lambda: collector.service_names() == {"web", "api"}, what="a change after the cut")
    finally:
        w.stop(timeout=2)
        api_client.close()
    assert secured.misuse == []
    assert {r.status for r in secured.requests if r.status} == {200}


def test_a_wrong_token_is_refused_and_recorded(secured: FakeKubeAPI) -> None:
    configuration = secured.configuration()
    configuration.api_key = {"authorization": "Bearer not-the-token"}
    api_client = make_api_client(KubernetesConfig(), configuration=configuration)
    try:
        with pytest.raises(client.ApiException) as e:
            client.CoreV1Api(api_client).list_node()
    finally:
        api_client.close()
    assert e.value.status == 401 and json.loads(e.value.body)["reason"] == "Unauthorized"
    assert secured.misuse == ["GET /api/v1/nodes: 401 Unauthorized"]


def test_a_server_certificate_from_another_ca_is_refused(secured: FakeKubeAPI, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    configuration = secured.configuration()
    configuration.ssl_ca_cert = str(serving_certificate(other, ips=("127.0.0.1",)) / "ca.crt")
    api_client = make_api_client(KubernetesConfig(), configuration=configuration)
    try:
        with pytest.raises(client.ApiException, match="CERTIFICATE_VERIFY_FAILED"):
            client.CoreV1Api(api_client).list_node()
    finally:
        api_client.close()
    assert secured.requests == []


def test_malformed_objects_never_crash_the_watcher(
    api: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    api.put("nodes", node())
    api.put("services", fixture("service-hostile.json"))
    api.put("services", {"metadata": {"name": "no-spec", "namespace": "default"}, "status": "bogus"})
    api.put(
        "services", {"metadata": {"namespace": "default", "labels": "x"}, "spec": {"type": "LoadBalancer"}}
    )
    watcher = start_watcher()
    assert collector.service_names() == {"hostile", "no-spec"}
    assert watcher.stats[KubeKind.SERVICE].malformed == 1
    api.put("services", {"metadata": {"name": "later", "namespace": "default"}, "spec": [], "status": []})
    api.put("endpointslices", {"metadata": {"name": "s", "namespace": "default"}, "endpoints": "many"})
    api.put("services", service("good", "203.0.113.70"))
    collector.wait(lambda: "good" in collector.service_names())
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


def test_stop_joins_threads_promptly(
    seeded: FakeKubeAPI, api_client: client.ApiClient, collector: Collector
) -> None:
    watcher = KubeWatcher(api_client, node_name=NODE, emit=collector, watch_timeout=60)
    watcher.start()
    collector.wait(lambda: collector.state.ready)
    seeded.wait_for(lambda: seeded.open_watches == 3)
    started = time.monotonic()
    watcher.stop(timeout=3)
    assert time.monotonic() - started < 1.0
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("kube-watch-"))


def test_stop_during_backoff_is_prompt(
    api: FakeKubeAPI, api_client: client.ApiClient, collector: Collector
) -> None:
    api.inject_outage("refuse")
    watcher = KubeWatcher(api_client, node_name=NODE, emit=collector, backoff_initial=10, backoff_max=10)
    watcher.start()
    collector.wait(lambda: len(collector.of(KubeUnavailable)) == 3)
    started = time.monotonic()
    watcher.stop(timeout=3)
    assert time.monotonic() - started < 1.0
    api.restore()


# --------------------------------------------------------------------------- Events


@pytest.fixture
def recorder(api_client: client.ApiClient) -> Iterator[Callable[..., EventRecorder]]:
    made: list[EventRecorder] = []

    def make(**kw: Any) -> EventRecorder:
        kw.setdefault("host", NODE)
        r = EventRecorder(api_client, **kw)
        r.start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop(timeout=2)


REF = ObjectRef(namespace="default", name="web", uid="uid-web")


def test_event_is_posted_as_core_v1(api: FakeKubeAPI, recorder: Callable[..., EventRecorder]) -> None:
    r = recorder()
    r.record(
        REF, "Warning", "NotInPool", "status.loadBalancer.ingress[0].ip 10.0.0.1 lies in no configured pool"
    )
    assert r.flush()
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


def test_repeats_increment_the_count(api: FakeKubeAPI, recorder: Callable[..., EventRecorder]) -> None:
    r = recorder(patch_interval=0)
    for _ in range(4):
        r.record(REF, "Warning", "NotInPool", "same")
    assert r.flush()
    (event,) = api.objects("events")
    assert event["count"] == 4
    assert (r.stats.created, r.stats.patched) == (1, 3)
    assert {x.method for x in api.requests[1:]} == {"PATCH"}
    assert api.requests[1].content_type == "application/strategic-merge-patch+json"


def test_repeats_within_patch_interval_are_skipped(
    api: FakeKubeAPI, recorder: Callable[..., EventRecorder]
) -> None:
    r = recorder(patch_interval=60)
    for _ in range(20):
        r.record(REF, "Warning", "NotInPool", "same")
    r.record(REF, "Warning", "NotInPool", "different")
    assert r.flush()
    assert (r.stats.created, r.stats.patched, r.stats.deduplicated) == (2, 0, 19)
    assert len(api.requests) == 2


def test_new_events_are_rate_limited_per_object(
    api: FakeKubeAPI, recorder: Callable[..., EventRecorder]
) -> None:
    r = recorder(burst=3, refill_interval=3600)
    for i in range(6):
        r.record(REF, "Normal", "Announced", f"message {i}")
    r.record(ObjectRef("default", "other"), "Normal", "Announced", "another object has its own budget")
    assert r.flush()
    assert (r.stats.created, r.stats.rate_limited) == (4, 3)
    assert len(api.objects("events")) == 4


def test_window_expiry_and_deleted_event_start_a_new_one(
    api: FakeKubeAPI, recorder: Callable[..., EventRecorder]
) -> None:
    now = [0.0]
    r = recorder(patch_interval=0, window=10, clock=lambda: now[0])
    r.record(REF, "Warning", "NotInPool", "same")
    assert r.flush()
    now[0] = 30.0  # outside the window: a new Event
    r.record(REF, "Warning", "NotInPool", "same")
    assert r.flush()
    assert r.stats.created == 2
    for e in api.objects("events"):  # the apiserver's TTL removes them
        api.remove("events", "default", e["metadata"]["name"])
    now[0] = 31.0
    r.record(REF, "Warning", "NotInPool", "same")
    assert r.flush()
    (event,) = api.objects("events")
    assert r.stats.created == 3 and event["count"] == 2


def test_recording_never_blocks_or_raises(api: FakeKubeAPI, recorder: Callable[..., EventRecorder]) -> None:
    api.inject_outage("refuse")
    r = recorder(max_queue=5)
    started = time.monotonic()
    for i in range(50):
        r.record(REF, "Warning", "NotInPool", f"{i}")
    r.record(REF, "Bogus", "X", "not a valid type is logged, not raised")
    assert time.monotonic() - started < 0.1
    assert r.flush(timeout=10)
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


def test_watcher_for_config(api_client: client.ApiClient, collector: Collector) -> None:
    config = load(
        {
            "bgp": {"local_as": 65001, "peers": [{"address": "192.0.2.1", "peer_as": 65000}]},
            "pools": [{"name": "a", "addresses": ["203.0.113.0/24"], "service_selector": {"tier": "edge"}}],
            "kubernetes": {"enabled": True, "watch_timeout": 42},
        }
    )
    w = KubeWatcher.for_config(api_client, config, node_name=NODE, emit=collector)
    assert (w.watch_timeout, w.server_timeout, w.label_keys) == (42, 33, {"tier"})


def test_watcher_applies_label_keys(
    api: FakeKubeAPI, start_watcher: Callable[..., KubeWatcher], collector: Collector
) -> None:
    api.put(
        "services",
        {
            **service("web"),
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "edge"}},
        },
    )
    start_watcher(label_keys={"tier"})
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
