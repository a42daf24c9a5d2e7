"""Kubernetes adapter: list+watch Services, EndpointSlices and this Node; post Events.

I/O side of the line. Three threads (one per kind) list, then watch from the list's
resourceVersion, and hand the reconcile loop immutable `bgpvip.core.services` events through a
thread-safe `emit` callback. API objects are read as raw JSON through the official client's
ApiClient (not its model classes) and turned into views right here, so no client type crosses
into the core: listing 10,000 Services this way takes half the time of the client's models.

Failure handling, by what the loop does next:
- a watch that ends (server timeout, cut connection, or silent past `watch_timeout`) is resumed
  from the last resourceVersion at once, without a relist;
- `410 Gone` (as an HTTP status or an ERROR event) means the history is gone: list again;
- a request that cannot be made (refused, reset, 5xx, 401/403) emits `KubeUnavailable` once,
  retries with exponential backoff (tenacity; the sequence starts over after a success), and
  lists afresh when the API answers again. Nothing is ever deleted because the API is down.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import queue
import random
import sys
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import tenacity
import urllib3

from bgpvip.core.alloc import ANNOTATION_IPS, ANNOTATION_POOL, ANNOTATION_SHARING_KEY, AllocService
from bgpvip.core.config import Config, KubernetesConfig
from bgpvip.core.services import (
    DRAIN_ANNOTATION,
    SERVICE_NAME_LABEL,
    EndpointSliceView,
    EndpointView,
    KubeDelete,
    KubeEvent,
    KubeKind,
    KubeListPage,
    KubeSynced,
    KubeUnavailable,
    KubeUpsert,
    NodeView,
    ServiceView,
    View,
    pool_label_keys,
    selector_hash,
)
from bgpvip.lean import submodules


def _kubernetes(*names: str) -> tuple[types.ModuleType, ...]:
    """Modules of the official client, loaded without the package `__init__`s that import all
    847 models and every `*Api` class (12 MB of the speaker's 80; see bgpvip/lean.py)."""
    return submodules(
        (
            "kubernetes",
            "kubernetes.client",
            "kubernetes.client.models",
            "kubernetes.utils",
            "kubernetes.config",
        ),
        *names,
        exports={
            "kubernetes.client": {
                "ApiClient": "kubernetes.client.api_client",
                "Configuration": "kubernetes.client.configuration",
            }
        },
    )


if TYPE_CHECKING:
    # `as`: re-exported (the controller takes them from here, not from the heavy package)
    from kubernetes.client import ApiClient as ApiClient  # noqa: PLC0414
    from kubernetes.client import Configuration as Configuration  # noqa: PLC0414
    from kubernetes.client.exceptions import ApiException as ApiException  # noqa: PLC0414
else:
    _api_client, _configuration, _exceptions = _kubernetes(
        "kubernetes.client.api_client", "kubernetes.client.configuration", "kubernetes.client.exceptions"
    )
    ApiClient = _api_client.ApiClient
    Configuration = _configuration.Configuration
    ApiException = _exceptions.ApiException

log = logging.getLogger(__name__)

Emit = Callable[[KubeEvent], None]


# --------------------------------------------------------------------------- API client


def make_api_client(kube: KubernetesConfig, *, configuration: Configuration | None = None) -> ApiClient:
    """An ApiClient from the kubeconfig in `kube` (or the in-cluster ServiceAccount), or from
    `configuration` when given (tests). urllib3's own retries are switched off: a GET that times
    out waiting for headers would otherwise be repeated 3 times, quadrupling how long a hung
    apiserver goes unnoticed, and the watcher has its own backoff."""
    if configuration is None:
        configuration = Configuration()
        # Only the loader in use is imported: the kubeconfig one brings requests and oauthlib
        # (7 MB), which an in-cluster speaker never needs.
        if kube.kubeconfig is not None:
            (loader,) = _kubernetes("kubernetes.config.kube_config")
            loader.load_kube_config(config_file=str(kube.kubeconfig), client_configuration=configuration)
        else:
            (loader,) = _kubernetes("kubernetes.config.incluster_config")
            loader.load_incluster_config(client_configuration=configuration)
    configuration.retries = False
    return ApiClient(configuration)


class _Http:
    """JSON requests through the official ApiClient: its Configuration, auth (bearer token with
    refresh), TLS, proxy settings and urllib3 pool, but not its generated `*Api` classes, whose
    import costs 21 MB of resident memory for CoreV1Api alone (kubernetes 37) — a fifth of the
    speaker's budget — and whose per-call pydantic validation is not needed for raw JSON."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    def request(
        self,
        method: str,
        path: str,
        *,
        path_params: Mapping[str, str] | None = None,
        query: Sequence[tuple[str, Any]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float],
    ) -> Any:
        """The raw urllib3 response of a 2xx answer (body unread); ApiException otherwise."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, post = self._api.param_serialize(
            method=method,
            resource_path=path,
            path_params=dict(path_params or {}),
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self._api.call_api(
            method, url, header_params=headers, body=body, post_params=post, _request_timeout=timeout
        )
        if not 200 <= resp.status <= 299:
            text = resp.response.data.decode("utf-8", "replace")
            raise ApiException.from_response(http_resp=resp, body=text, data=None)
        return resp.response


# --------------------------------------------------------------------------- translation


class MalformedObject(ValueError):
    """An API object without the identity (name) needed to track it."""


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _seq(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _text(v: Any) -> str:
    """A string field; anything else that is present becomes text the core will refuse."""
    if isinstance(v, str):
        return v
    return "" if v is None else json.dumps(v)[:100]


def _labels(v: Any) -> tuple[tuple[str, str], ...]:
    # Keys repeat across objects and are interned; values are mostly unique (app names), and
    # interning unique strings only grows the interpreter's intern table.
    return tuple(sorted((sys.intern(k), val) for k, val in _map(v).items() if isinstance(val, str)))


def _identity(obj: Mapping[str, Any], namespaced: bool) -> tuple[str, str]:
    meta = _map(obj.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedObject("object without metadata.name")
    ns = meta.get("namespace") if namespaced else ""
    if not isinstance(ns, str) or (namespaced and not ns):
        raise MalformedObject(f"{name}: object without metadata.namespace")
    return sys.intern(ns), name


def service_view(obj: Mapping[str, Any], label_keys: Collection[str] | None = None) -> ServiceView:
    """A Service as the API returns it (JSON) → ServiceView. Never raises on a bad spec or status:
    bad values are kept as text for the core to refuse with a reason. `label_keys`: keep only
    these labels (None: all)."""
    ns, name = _identity(obj, namespaced=True)
    meta, spec = _map(obj.get("metadata")), _map(obj.get("spec"))
    ingress = _seq(_map(_map(obj.get("status")).get("loadBalancer")).get("ingress"))
    ports: list[tuple[str, int]] = []
    for p in _seq(spec.get("ports")):
        port = _map(p).get("port")
        if isinstance(port, int) and not isinstance(port, bool):
            ports.append((sys.intern(_text(_map(p).get("protocol")) or "TCP"), port))
    lb_class = spec.get("loadBalancerClass")
    selector = _map(spec.get("selector"))
    labels = _labels(meta.get("labels"))
    if label_keys is not None:
        # Values of selector keys are few (tier=edge, ...): share them.
        labels = tuple((k, sys.intern(v)) for k, v in labels if k in label_keys)
    return ServiceView(
        namespace=ns,
        name=name,
        uid=_text(meta.get("uid")),
        type=sys.intern(_text(spec.get("type")) or "ClusterIP"),
        load_balancer_class=None if lb_class is None else sys.intern(_text(lb_class)),
        external_traffic_policy=sys.intern(_text(spec.get("externalTrafficPolicy")) or "Cluster"),
        ingress_ips=tuple(_text(_map(i).get("ip")) for i in ingress if _map(i).get("ip") is not None),
        external_ips=tuple(_text(ip) for ip in _seq(spec.get("externalIPs"))),
        ports=_shared_ports(tuple(ports)),
        selector_hash=selector_hash({k: _text(v) for k, v in selector.items()}) if selector else None,
        labels=labels,
    )


_PORTS: dict[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]] = {}


def _shared_ports(ports: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """Most Services expose one of a few port sets (80/443, ...): share one tuple per set."""
    shared = _PORTS.get(ports)
    if shared is None:
        if len(_PORTS) > 10_000:
            _PORTS.clear()
        shared = _PORTS.setdefault(ports, ports)
    return shared


_ENDPOINTS: dict[tuple[str | None, bool, bool, bool], EndpointView] = {}
"""Identical endpoints (same node, same conditions) share one immutable view: at 10,000 slices
most endpoints are one of a few hundred (node, conditions) values."""


def _endpoint(node: str | None, ready: bool, serving: bool, terminating: bool) -> EndpointView:
    key = (node, ready, serving, terminating)
    view = _ENDPOINTS.get(key)
    if view is None:
        if len(_ENDPOINTS) > 100_000:
            _ENDPOINTS.clear()
        view = _ENDPOINTS.setdefault(key, EndpointView(node, ready, serving, terminating))
    return view


def endpoint_slice_view(obj: Mapping[str, Any]) -> EndpointSliceView:
    """A discovery.k8s.io/v1 EndpointSlice → EndpointSliceView, with the API's rules for
    missing conditions: ready unknown → ready; serving unknown → as ready; terminating → false."""
    ns, name = _identity(obj, namespaced=True)
    labels = _map(_map(obj.get("metadata")).get("labels"))
    endpoints = []
    for e in _seq(obj.get("endpoints")):
        cond = _map(_map(e).get("conditions"))
        ready = cond.get("ready") is not False
        serving = ready if cond.get("serving") is None else cond.get("serving") is True
        node = _map(e).get("nodeName")
        endpoints.append(
            _endpoint(
                sys.intern(node) if isinstance(node, str) else None,
                ready,
                serving,
                cond.get("terminating") is True,
            )
        )
    return EndpointSliceView(
        namespace=ns,
        name=name,
        service_name=_text(labels.get(SERVICE_NAME_LABEL)),
        endpoints=tuple(endpoints),
    )


def node_view(obj: Mapping[str, Any]) -> NodeView:
    _, name = _identity(obj, namespaced=False)
    meta = _map(obj.get("metadata"))
    ready, detail = False, "no Ready condition"
    for c in _seq(_map(obj.get("status")).get("conditions")):
        if _map(c).get("type") == "Ready":
            status = _text(_map(c).get("status"))
            ready = status == "True"
            detail = f"Ready={status} {_text(_map(c).get('reason'))}".strip()[:200]
    drain = _map(meta.get("annotations")).get(DRAIN_ANNOTATION)
    return NodeView(
        name=name,
        ready=ready,
        ready_detail="" if ready else detail,
        labels=_labels(meta.get("labels")),
        drain=drain if isinstance(drain, str) else None,
    )


# --------------------------------------------------------------------------- watcher


@dataclass
class WatchStats:
    """Counters per kind, for status output and tests."""

    lists: int = 0
    watches: int = 0
    resumes: int = 0
    """Watches restarted from the last resourceVersion without a list."""
    gone: int = 0
    """410 Gone answers (each followed by a list)."""
    failures: int = 0
    malformed: int = 0
    resource_version: str = ""


@dataclass(frozen=True)
class _KindSpec:
    kind: KubeKind
    namespaced: bool
    convert: Callable[[Mapping[str, Any]], View]
    path: str
    query: tuple[tuple[str, str], ...] = ()


class _Relist(Exception):
    """The watch cannot continue from its resourceVersion (410, or an unknown ERROR event)."""


class KubeWatcher:
    """List+watch threads for Services, EndpointSlices and one Node.

    `emit` is called from the watcher threads, so it must be thread-safe (the loop passes a
    function that does `loop.call_soon_threadsafe(queue.put_nowait, event)`)."""

    def __init__(
        self,
        api: ApiClient,
        *,
        node_name: str,
        emit: Emit,
        watch_timeout: float = 300.0,
        page_size: int = 500,
        connect_timeout: float = 5.0,
        request_timeout: float = 60.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        kinds: tuple[KubeKind, ...] = tuple(KubeKind),
        label_keys: Collection[str] | None = None,
        list_pages: bool = False,
    ) -> None:
        self._emit_fn = emit
        self.list_pages = list_pages
        """Emit each page of a kind's first list as a `KubeListPage` before its `KubeSynced`."""
        self.watch_timeout = watch_timeout
        """A watch that delivers nothing for this long is treated as dead and restarted."""
        self.page_size = page_size
        """Items per list page. 500 like client-go's reflector: bounds the memory a list of
        10,000 Services needs at once, and the apiserver's cost per request."""
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        """Read timeout of one list page."""
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.label_keys = None if label_keys is None else frozenset(label_keys)
        """Service labels kept in the views: the keys of the pools' `service_selector`s. None keeps
        all (about 500 bytes per Service more at 10,000); a key missing here makes its pool refuse
        the Service (fail closed), so the set must be updated, and the watcher restarted, when a
        reload changes the selectors."""
        self._http = _Http(api)
        specs = {
            KubeKind.SERVICE: _KindSpec(
                KubeKind.SERVICE,
                True,
                functools.partial(service_view, label_keys=self.label_keys),
                "/api/v1/services",
            ),
            KubeKind.ENDPOINT_SLICE: _KindSpec(
                KubeKind.ENDPOINT_SLICE, True, endpoint_slice_view, "/apis/discovery.k8s.io/v1/endpointslices"
            ),
            KubeKind.NODE: _KindSpec(
                KubeKind.NODE,
                False,
                node_view,
                "/api/v1/nodes",
                (("fieldSelector", f"metadata.name={node_name}"),),
            ),
        }
        self._specs = [specs[k] for k in kinds]
        self.stats = {k: WatchStats() for k in kinds}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._open: set[Any] = set()

    @classmethod
    def for_config(
        cls, api: ApiClient, config: Config, *, node_name: str, emit: Emit, **kw: Any
    ) -> KubeWatcher:
        """A watcher with the settings the configuration implies (`watch_timeout`, the label
        keys the pools select on)."""
        return cls(
            api,
            node_name=node_name,
            emit=emit,
            watch_timeout=config.kubernetes.watch_timeout,
            label_keys=pool_label_keys(config),
            **kw,
        )

    @property
    def server_timeout(self) -> int:
        """`timeoutSeconds` asked of the server: a little under `watch_timeout`, so a quiet but
        healthy watch is ended cleanly by the server before the client-side timeout calls it dead."""
        return max(1, int(self.watch_timeout * 0.8))

    def start(self) -> None:
        for spec in self._specs:
            t = threading.Thread(target=self._run, args=(spec,), name=f"kube-watch-{spec.kind}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread: open streams are shut down so blocked reads return at once."""
        self._stopping.set()
        with self._lock:
            responses = list(self._open)
        for resp in responses:
            _shutdown(resp)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("kube watcher threads still running after %.1fs: %s", timeout, alive)

    # ----------------------------------------------------------------- per-kind thread

    def _run(self, spec: _KindSpec) -> None:
        rv: str | None = None
        pause = 0.0
        while not self._stopping.is_set():
            try:
                rv, resp = self._connect(spec, rv)
                started = time.monotonic()
                rv, delivered = self._consume(spec, resp, rv)
            except _Stopped:
                return
            except Exception:
                # A bug must not silently end the watch: log it, list again after a pause.
                log.exception("kube %s: watcher failed unexpectedly; listing again", spec.kind)
                rv, delivered, started = None, False, time.monotonic()
            # A stream that ends at once with nothing in it, again and again, would otherwise
            # become a tight request loop; a real apiserver never does that on purpose.
            if delivered or time.monotonic() - started > 1.0:
                pause = 0.0
            else:
                pause = min(self.backoff_max, max(0.1, pause * 2))
                self._stopping.wait(pause)

    def _connect(self, spec: _KindSpec, rv: str | None) -> tuple[str, Any]:
        """List if needed, then open a watch. Retried with backoff until it works or we stop;
        each call starts a fresh backoff sequence, so a success resets it."""
        down = False

        def attempt() -> tuple[str, Any]:
            nonlocal rv
            if self._stopping.is_set():
                raise _Stopped
            if rv is None:
                rv = self._list(spec)
            try:
                return rv, self._open_watch(spec, rv)
            except ApiException as e:
                if e.status != 410:
                    raise
                self.stats[spec.kind].gone += 1
                log.info("kube %s: resourceVersion %s expired (410), listing again", spec.kind, rv)
                rv = self._list(spec)
                return rv, self._open_watch(spec, rv)

        def failed(retry: tenacity.RetryCallState) -> None:
            nonlocal rv, down
            exc = retry.outcome.exception() if retry.outcome else None
            self.stats[spec.kind].failures += 1
            sleep = retry.next_action.sleep if retry.next_action else 0.0
            expected = isinstance(exc, (ApiException, urllib3.exceptions.HTTPError, OSError))
            log.warning(
                "kube %s: API unavailable (%s); retrying in %.1fs",
                spec.kind,
                _describe(exc),
                sleep,
                exc_info=None if expected else exc,
            )
            # After an outage the history may be gone and the loop needs a definitive state:
            # list again instead of resuming.
            rv = None
            if not down:
                down = True
                self._emit(KubeUnavailable(spec.kind, _describe(exc)))

        retrying = tenacity.Retrying(
            wait=tenacity.wait_exponential(multiplier=self.backoff_initial, max=self.backoff_max)
            + tenacity.wait_random(0, self.backoff_initial),
            retry=tenacity.retry_if_not_exception_type(_Stopped),
            stop=lambda _: self._stopping.is_set(),
            sleep=self._sleep,
            before_sleep=failed,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Stopped:
            raise
        except Exception:
            if self._stopping.is_set():
                raise _Stopped from None
            raise

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _list(self, spec: _KindSpec) -> str:
        """List the kind completely (paginated), emit KubeSynced, return the list's resourceVersion."""
        views: list[View] = []
        token: str | None = None
        stats = self.stats[spec.kind]
        while True:
            query = [*spec.query, ("limit", self.page_size)]
            if token:
                query.append(("continue", token))
            try:
                page = self._get_json(spec, query)
            except ApiException as e:
                if e.status == 410 and token:  # (the next page is a `first` one again)
                    log.info("kube %s: list continuation expired (410), starting the list over", spec.kind)
                    stats.gone += 1
                    views.clear()
                    token = None
                    continue
                raise
            first = len(views)
            for item in _seq(page.get("items")):
                view = self._convert(spec, item)
                if view is not None:
                    views.append(view)
            if self.list_pages and not stats.lists:
                self._emit(KubeListPage(spec.kind, tuple(views[first:]), first=token is None))
            meta = _map(page.get("metadata"))
            token = _text(meta.get("continue")) or None
            if token is None:
                rv = _text(meta.get("resourceVersion"))
                break
        if not rv:
            raise ValueError(f"list of {spec.kind} without metadata.resourceVersion")
        stats.lists += 1
        stats.resource_version = rv
        self._emit(KubeSynced(spec.kind, tuple(views), rv))
        return rv

    def _get_json(self, spec: _KindSpec, query: Sequence[tuple[str, Any]]) -> Mapping[str, Any]:
        resp = self._http.request(
            "GET", spec.path, query=query, timeout=(self.connect_timeout, self.request_timeout)
        )
        try:
            data = json.loads(resp.data)
        finally:
            resp.release_conn()
        if not isinstance(data, Mapping):
            raise ValueError(f"list of {spec.kind} is not a JSON object")
        return data

    def _open_watch(self, spec: _KindSpec, rv: str) -> Any:
        query = [
            *spec.query,
            ("watch", True),
            ("resourceVersion", rv),
            ("allowWatchBookmarks", True),
            ("timeoutSeconds", self.server_timeout),
        ]
        resp = self._http.request(
            "GET", spec.path, query=query, timeout=(self.connect_timeout, self.watch_timeout)
        )
        self.stats[spec.kind].watches += 1
        return resp

    def _consume(self, spec: _KindSpec, resp: Any, rv: str) -> tuple[str | None, bool]:
        """Read one watch stream to its end. Returns the resourceVersion to resume from (None:
        list again) and whether the stream delivered anything."""
        with self._lock:
            self._open.add(resp)
        stats = self.stats[spec.kind]
        delivered = False
        try:
            # stop() sets the flag before it shuts down the registered streams: a stream
            # registered after that is caught here.
            if self._stopping.is_set():
                return rv, False
            for line in _lines(resp):
                delivered = True
                rv = stats.resource_version = self._handle_line(spec, line, rv)
            log.debug("kube %s: watch ended by the server at %s", spec.kind, rv)
        except _Relist:
            return None, True
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if not self._stopping.is_set():
                log.info("kube %s: watch interrupted (%s); resuming from %s", spec.kind, _describe(e), rv)
        finally:
            with self._lock:
                self._open.discard(resp)
            resp.close()
            resp.release_conn()
        stats.resumes += 1
        stats.resource_version = rv
        return rv, delivered

    def _handle_line(self, spec: _KindSpec, line: bytes, rv: str) -> str:
        try:
            event = json.loads(line)
        except ValueError:
            # Resuming would replay the same bytes; a list moves past them.
            self.stats[spec.kind].malformed += 1
            log.warning("kube %s: unparseable watch line %r; listing again", spec.kind, line[:200])
            raise _Relist from None
        kind = _text(_map(event).get("type"))
        obj = _map(_map(event).get("object"))
        if kind == "ERROR":
            code, message = obj.get("code"), _text(obj.get("message"))
            if code == 410:
                self.stats[spec.kind].gone += 1
                log.info("kube %s: watch history expired (410: %s), listing again", spec.kind, message)
            else:
                log.warning("kube %s: watch ERROR %s: %s; listing again", spec.kind, code, message)
            raise _Relist
        new_rv = _text(_map(obj.get("metadata")).get("resourceVersion")) or rv
        if kind == "BOOKMARK":
            return new_rv
        if kind in ("ADDED", "MODIFIED"):
            view = self._convert(spec, obj)
            if view is not None:
                self._emit(KubeUpsert(view))
        elif kind == "DELETED":
            try:
                self._emit(KubeDelete(spec.kind, _identity(obj, spec.namespaced)))
            except MalformedObject as e:
                self.stats[spec.kind].malformed += 1
                log.warning("kube %s: ignoring DELETED event for a malformed object: %s", spec.kind, e)
        else:
            log.warning("kube %s: ignoring watch event of unknown type %r", spec.kind, kind[:40])
        return new_rv

    def _convert(self, spec: _KindSpec, obj: Any) -> View | None:
        try:
            return spec.convert(_map(obj))
        except Exception as e:
            self.stats[spec.kind].malformed += 1
            log.warning(
                "kube %s: ignoring malformed object: %s",
                spec.kind,
                e,
                exc_info=not isinstance(e, MalformedObject),
            )
            return None

    def _emit(self, event: KubeEvent) -> None:
        try:
            self._emit_fn(event)
        except Exception:
            log.exception("kube: emit(%s) failed", type(event).__name__)


class _Stopped(Exception):
    pass


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"[:300] if exc is not None else "unknown error"


def _shutdown(resp: Any) -> None:
    try:
        resp.shutdown()
    except Exception:
        try:
            resp.close()
        except Exception:
            log.debug("closing a watch response failed", exc_info=True)


def _lines(resp: Any) -> Iterator[bytes]:
    """Newline-delimited JSON from a chunked watch response, as each chunk arrives."""
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk
        if b"\n" not in buffer:
            continue
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


# --------------------------------------------------------------------------- Events


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object an Event is about."""

    namespace: str
    name: str
    uid: str = ""
    kind: str = "Service"
    api_version: str = "v1"

    @classmethod
    def service(cls, view: ServiceView) -> ObjectRef:
        return cls(namespace=view.namespace, name=view.name, uid=view.uid)


@dataclass
class _Posted:
    name: str
    namespace: str
    count: int
    last_seen: float
    last_write: float


@dataclass
class RecorderStats:
    created: int = 0
    patched: int = 0
    deduplicated: int = 0
    """Repeats counted in memory without a write (within `patch_interval`, or rate-limited)."""
    rate_limited: int = 0
    """New Events not posted because their object used up its burst."""
    dropped: int = 0
    """record() calls dropped because the queue was full."""
    failed: int = 0


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True)
class _Record:
    ref: ObjectRef
    type: str
    reason: str
    message: str
    at_wall: float = field(default_factory=time.time)


class EventRecorder:
    """Posts core/v1 Events about Services from a thread; `record()` never blocks and never raises.

    core/v1 rather than events.k8s.io/v1: `kubectl describe` and every dashboard read it, every
    cluster version serves it, its `count` is exactly the de-duplication this needs, and it is what
    client-go's `record` package (MetalLB, kube-controller-manager) writes; the RBAC rule is the
    familiar `events: create, patch` in the core group.

    De-duplication: an Event identical to one posted (same object, type, reason and message) and
    seen again within `window` seconds increments that Event's `count`; the count is written at
    most every `patch_interval` seconds. Rate limit: each object may start `burst` new Events,
    refilled one per `refill_interval` seconds (client-go's spam filter, scaled down).
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        component: str = "bgpvip-speaker",
        host: str = "",
        window: float = 600.0,
        patch_interval: float = 30.0,
        burst: int = 10,
        refill_interval: float = 60.0,
        max_queue: int = 1000,
        max_cache: int = 4096,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = _Http(api)
        self.component = component
        self.host = host
        self.window = window
        self.patch_interval = patch_interval
        self.burst = burst
        self.refill_interval = refill_interval
        self.max_cache = max_cache
        self.request_timeout = request_timeout
        self._clock = clock
        self.stats = RecorderStats()
        self._queue: queue.Queue[_Record | None] = queue.Queue(maxsize=max_queue)
        self._posted: OrderedDict[tuple[str, str, str, str, str, str], _Posted] = OrderedDict()
        self._buckets: OrderedDict[tuple[str, str, str], _Bucket] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._seq = itertools.count()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kube-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Post what is queued (within `timeout`), then stop the thread."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(None, timeout=0.05)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    log.warning("event recorder: queue still full at stop; abandoning it")
                    return
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def record(self, ref: ObjectRef, type: str, reason: str, message: str) -> None:
        """Queue an Event. `type` is `Normal` or `Warning`. Safe from any thread or the loop."""
        try:
            if type not in ("Normal", "Warning"):
                raise ValueError(f"event type must be Normal or Warning, not {type!r}")
            self._queue.put_nowait(_Record(ref, type, reason[:128], message[:1024]))
        except queue.Full:
            self.stats.dropped += 1
        except Exception:
            log.exception("event recorder: record() failed")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is handled (tests, shutdown). True if it was."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._handle(item)
            except Exception:
                self.stats.failed += 1
                log.warning("event recorder: posting an Event failed", exc_info=True)
            finally:
                self._queue.task_done()

    def _take(self, ref: ObjectRef, now: float) -> bool:
        key = (ref.namespace, ref.name, ref.uid)
        b = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) / self.refill_interval)
        b.at = now
        self._buckets[key] = b
        if len(self._buckets) > self.max_cache:
            self._buckets.popitem(last=False)
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    def _handle(self, r: _Record) -> None:
        now = self._clock()
        key = (r.ref.namespace, r.ref.name, r.ref.uid, r.type, r.reason, r.message)
        posted = self._posted.get(key)
        if posted is not None and now - posted.last_seen <= self.window:
            posted.count += 1
            posted.last_seen = now
            self._posted.move_to_end(key)
            if now - posted.last_write < self.patch_interval or not self._take(r.ref, now):
                self.stats.deduplicated += 1
                return
            if self._patch(posted, r):
                posted.last_write = now
                return
        if not self._take(r.ref, now):
            self.stats.rate_limited += 1
            return
        posted = self._create(r, now, count=posted.count if posted is not None else 1)
        if posted is not None:
            self._posted[key] = posted
            self._posted.move_to_end(key)
            if len(self._posted) > self.max_cache:
                self._posted.popitem(last=False)

    def _patch(self, posted: _Posted, r: _Record) -> bool:
        """Write the new count. False when the Event is gone (expired by its TTL): post anew."""
        body = {"count": posted.count, "lastTimestamp": _timestamp(r.at_wall)}
        try:
            resp = self._http.request(
                "PATCH",
                "/api/v1/namespaces/{namespace}/events/{name}",
                path_params={"namespace": posted.namespace, "name": posted.name},
                body=body,
                content_type="application/strategic-merge-patch+json",
                timeout=self.request_timeout,
            )
            _done(resp)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        self.stats.patched += 1
        return True

    def _create(self, r: _Record, now: float, count: int) -> _Posted | None:
        namespace = r.ref.namespace or "default"
        stamp = _timestamp(r.at_wall)
        for _ in range(2):
            name = f"{r.ref.name[:200]}.{time.time_ns() + next(self._seq):x}"
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": {
                    "apiVersion": r.ref.api_version,
                    "kind": r.ref.kind,
                    "namespace": r.ref.namespace,
                    "name": r.ref.name,
                    **({"uid": r.ref.uid} if r.ref.uid else {}),
                },
                "type": r.type,
                "reason": r.reason,
                "message": r.message,
                "source": {"component": self.component, **({"host": self.host} if self.host else {})},
                "reportingComponent": self.component,
                "reportingInstance": self.host,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": count,
            }
            try:
                resp = self._http.request(
                    "POST",
                    "/api/v1/namespaces/{namespace}/events",
                    path_params={"namespace": namespace},
                    body=body,
                    timeout=self.request_timeout,
                )
                _done(resp)
            except ApiException as e:
                if e.status == 409:
                    continue
                raise
            self.stats.created += 1
            return _Posted(name, namespace, count, now, now)
        return None


def _done(resp: Any) -> None:
    """Read the rest of a raw response before the connection goes back to the pool: an unread
    body would be taken for the next response on that connection."""
    resp.drain_conn()
    resp.release_conn()


def _timestamp(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- IP allocation controller


def alloc_service_view(obj: Mapping[str, Any]) -> AllocService:
    """A Service (JSON) → the allocator's view: the speaker's `service_view` with every label, plus
    the request annotations, IP families, selector and age. Never raises on bad values: they are
    kept as text for the allocator to refuse with a reason."""
    base = service_view(obj)
    meta, spec = _map(obj.get("metadata")), _map(obj.get("spec"))
    annotations = _map(meta.get("annotations"))

    def optional(v: Any) -> str | None:
        return None if v is None else _text(v)

    return AllocService(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(ServiceView)},
        created=_text(meta.get("creationTimestamp")),
        resource_version=_text(meta.get("resourceVersion")),
        requested_ips=optional(annotations.get(ANNOTATION_IPS)),
        pool=optional(annotations.get(ANNOTATION_POOL)),
        sharing_key=optional(annotations.get(ANNOTATION_SHARING_KEY)),
        load_balancer_ip=optional(spec.get("loadBalancerIP")) or None,
        ip_families=tuple(_text(f) for f in _seq(spec.get("ipFamilies"))),
        ip_family_policy=optional(spec.get("ipFamilyPolicy")),
        selector=tuple(sorted((str(k), _text(v)) for k, v in _map(spec.get("selector")).items())),
    )


class AllocationWatcher(KubeWatcher):
    """List+watch of every Service for the allocation controller, as `AllocService` views.

    The speaker's watcher with one kind and another translation: the same list-then-watch, 410
    and outage handling, and the same `KubeSynced`/`KubeUpsert`/`KubeDelete`/`KubeUnavailable`
    events (kind SERVICE). Every label is kept: pools select on them and the controller is one
    process, not one per node."""

    def __init__(self, api: ApiClient, *, emit: Emit, **kw: Any) -> None:
        super().__init__(api, node_name="", emit=emit, kinds=(KubeKind.SERVICE,), label_keys=None, **kw)
        self._specs = [dataclasses.replace(spec, convert=alloc_service_view) for spec in self._specs]


def patch_service_status(
    api: ApiClient,
    namespace: str,
    name: str,
    ips: Sequence[str],
    *,
    resource_version: str = "",
    timeout: float = 10.0,
) -> AllocService:
    """Set `status.loadBalancer.ingress` to `ips` (empty: remove it) through the status
    subresource, as a JSON merge patch. With `resource_version`, the write fails with 409 if the
    Service changed since that version: the caller decided on what it saw then, so it must see
    the change (its watch delivers it) and decide again. Returns the Service as written."""
    body: dict[str, Any] = {"status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips] or None}}}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    resp = _Http(api).request(
        "PATCH",
        "/api/v1/namespaces/{namespace}/services/{name}/status",
        path_params={"namespace": namespace, "name": name},
        body=body,
        content_type="application/merge-patch+json",
        timeout=timeout,
    )
    try:
        data = json.loads(resp.data)
    finally:
        resp.release_conn()
    return alloc_service_view(data)


_MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def _micro_time(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime(_MICRO_TIME)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The leader-election fields of a coordination.k8s.io/v1 Lease."""

    holder: str = ""
    """`spec.holderIdentity`; empty when nobody holds it (released)."""
    duration: int = 0
    """`spec.leaseDurationSeconds` the holder promised to renew within."""
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0
    """`spec.leaseTransitions`: how many times the holder changed."""

    @classmethod
    def from_lease(cls, obj: Mapping[str, Any]) -> LeaseRecord:
        spec = _map(obj.get("spec"))
        duration, transitions = spec.get("leaseDurationSeconds"), spec.get("leaseTransitions")
        return cls(
            holder=_text(spec.get("holderIdentity")),
            duration=duration if isinstance(duration, int) and not isinstance(duration, bool) else 0,
            acquire_time=_text(spec.get("acquireTime")),
            renew_time=_text(spec.get("renewTime")),
            transitions=transitions
            if isinstance(transitions, int) and not isinstance(transitions, bool)
            else 0,
        )

    def spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder or None,
            "leaseDurationSeconds": self.duration,
            "acquireTime": self.acquire_time or None,
            "renewTime": self.renew_time or None,
            "leaseTransitions": self.transitions,
        }


@dataclass
class LeaderStats:
    acquired: int = 0
    """Times this elector became the leader."""
    renewed: int = 0
    lost: int = 0
    """Times it stopped being the leader without being asked to (renew deadline passed)."""
    conflicts: int = 0
    """409 answers: someone else wrote the Lease first; re-read on the next attempt."""
    failures: int = 0
    """Requests that failed (API unreachable, 5xx, ...)."""


class LeaderElector:
    """Leader election over a coordination.k8s.io/v1 Lease, with client-go's semantics.

    Every `retry_period` (jittered) a candidate reads the Lease. It takes the Lease when nobody
    holds it, or when the record has not changed for the holder's `leaseDurationSeconds` as
    measured on this process's own clock from when it last saw a change (never from the record's
    `renewTime`, so clock skew between nodes does not matter). The leader renews every
    `renew_interval`; when it has not renewed for `renew_deadline` it steps down, before any
    other candidate may take over (`renew_deadline` < `lease_duration`). Every write carries the
    Lease's resourceVersion: of two writers one gets 409 and re-reads.

    `is_leader` is what writers check before each write; `on_change(leading)` is called from
    this elector's thread on every change. `stop()` releases the Lease (empty holder) so a
    successor takes over at its next attempt instead of after `lease_duration`.
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_interval: float = 5.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        request_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        if not 0 < renew_interval < renew_deadline < lease_duration:
            raise ValueError("need 0 < renew_interval < renew_deadline < lease_duration")
        if not 0 < retry_period < renew_deadline:
            raise ValueError("need 0 < retry_period < renew_deadline")
        self._http = _Http(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_interval = renew_interval
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.request_timeout = (
            request_timeout if request_timeout is not None else min(renew_deadline / 2, 5.0)
        )
        """Per request: a renewal that hangs gives up in time for one more try before the deadline."""
        self._on_change = on_change
        self._clock = clock
        self._wall = wall
        self.stats = LeaderStats()
        self._lock = threading.Lock()
        self._leading = False
        self._renewed_at = -math.inf
        self._observed: LeaseRecord | None = None
        self._observed_at = -math.inf
        self._stopping = threading.Event()
        self._release_on_stop = True
        self._thread: threading.Thread | None = None

    @property
    def _path(self) -> str:
        return "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    @property
    def is_leader(self) -> bool:
        """True while this process holds the Lease and renewed it within `renew_deadline`."""
        with self._lock:
            return self._leading and self._clock() < self._renewed_at + self.renew_deadline

    @property
    def holder(self) -> str:
        """The holder identity last seen in the Lease ("" if none or not read yet)."""
        observed = self._observed
        return observed.holder if observed is not None else ""

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True, timeout: float = 5.0) -> None:
        """Stop campaigning. With `release`, a leader empties the Lease's holder first; without it,
        the Lease simply stops being renewed (as when the process dies)."""
        self._release_on_stop = release
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("leader election thread still running after %.1fs", timeout)

    # ----------------------------------------------------------------- the loop

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = self._clock()
            try:
                ok = self._try_acquire_or_renew(started)
                failures = 0
            except Exception as e:
                ok = False
                failures += 1
                self.stats.failures += 1
                expected = isinstance(e, (ApiException, urllib3.exceptions.HTTPError, OSError))
                log.warning(
                    "leader election: %s lease %s/%s failed (%s)",
                    "renewing" if self._leading else "reading",
                    self.namespace,
                    self.name,
                    _describe(e),
                    exc_info=not expected,
                )
            if ok:
                with self._lock:
                    self._renewed_at = started
                    was, self._leading = self._leading, True
                if was:
                    self.stats.renewed += 1
                else:
                    self.stats.acquired += 1
                    log.info(
                        "leader election: %s is now the leader (lease %s/%s)",
                        self.identity,
                        self.namespace,
                        self.name,
                    )
                    self._notify(True)
                self._stopping.wait(self.renew_interval)
                continue
            if self._leading and self._clock() >= self._renewed_at + self.renew_deadline:
                self._step_down(f"not renewed for {self.renew_deadline:g}s")
            self._stopping.wait(self._pause(failures))
        self._finish()

    def _step_down(self, why: str) -> None:
        with self._lock:
            self._leading = False
        self.stats.lost += 1
        log.warning(
            "leader election: %s is no longer the leader of lease %s/%s: %s",
            self.identity,
            self.namespace,
            self.name,
            why,
        )
        self._notify(False)

    def _pause(self, failures: int) -> float:
        if self._leading or failures == 0:
            # client-go's JitterUntil(retryPeriod, 1.2): candidates do not poll in lockstep
            return self.retry_period * (1 + 0.2 * random.random())
        # Unreachable API: back off, but never so long that a returning API goes unused for
        # more than a lease duration.
        return min(self.lease_duration, self.retry_period * float(2 ** min(failures - 1, 10)))

    def _finish(self) -> None:
        with self._lock:
            leading, self._leading = self._leading, False
        if not leading:
            return
        if self._release_on_stop:
            try:
                self._release()
                log.info("leader election: %s released lease %s/%s", self.identity, self.namespace, self.name)
            except Exception as e:
                log.warning(
                    "leader election: releasing lease %s/%s failed (%s)",
                    self.namespace,
                    self.name,
                    _describe(e),
                )
        self._notify(False)

    def _notify(self, leading: bool) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(leading)
        except Exception:
            log.exception("leader election: on_change(%s) failed", leading)

    # ----------------------------------------------------------------- requests

    def _get(self) -> tuple[LeaseRecord, str] | None:
        try:
            resp = self._http.request(
                "GET",
                self._path + "/{name}",
                path_params={"namespace": self.namespace, "name": self.name},
                timeout=self.request_timeout,
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        try:
            obj = json.loads(resp.data)
        finally:
            resp.release_conn()
        return LeaseRecord.from_lease(_map(obj)), _text(
            _map(_map(obj).get("metadata")).get("resourceVersion")
        )

    def _write(self, method: str, record: LeaseRecord, resource_version: str = "") -> bool:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": record.spec(),
        }
        path = self._path if method == "POST" else self._path + "/{name}"
        try:
            resp = self._http.request(
                method,
                path,
                path_params={"namespace": self.namespace, "name": self.name},
                body=body,
                timeout=self.request_timeout,
            )
        except ApiException as e:
            if e.status == 409:
                self.stats.conflicts += 1
                log.debug(
                    "leader election: lease %s/%s changed under us (409); re-reading",
                    self.namespace,
                    self.name,
                )
                return False
            raise
        _done(resp)
        self._observe(record)
        return True

    def _observe(self, record: LeaseRecord) -> None:
        if record != self._observed:
            self._observed = record
            self._observed_at = self._clock()

    def _try_acquire_or_renew(self, now: float) -> bool:
        stamp = _micro_time(self._wall())
        duration = max(1, math.ceil(self.lease_duration))
        got = self._get()
        if got is None:
            mine = LeaseRecord(self.identity, duration, stamp, stamp, 0)
            return self._write("POST", mine)
        record, rv = got
        self._observe(record)
        if record.holder and record.holder != self.identity:
            if self._leading:
                self._step_down(f"the lease is held by {record.holder}")
            held_for = record.duration or duration
            if now < self._observed_at + held_for:
                return False
            log.info(
                "leader election: lease %s/%s of %s not renewed for %ss; taking over",
                self.namespace,
                self.name,
                record.holder,
                held_for,
            )
        if record.holder == self.identity:
            mine = dataclasses.replace(record, duration=duration, renew_time=stamp)
        else:
            mine = LeaseRecord(self.identity, duration, stamp, stamp, record.transitions + 1)
        return self._write("PUT", mine, rv)

    def _release(self) -> None:
        got = self._get()
        if got is None or got[0].holder != self.identity:
            return
        record, rv = got
        stamp = _micro_time(self._wall())
        self._write(
            "PUT",
            dataclasses.replace(record, holder="", duration=1, acquire_time=stamp, renew_time=stamp),
            rv,
        )
