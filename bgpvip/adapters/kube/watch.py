"""List, then watch, Services, EndpointSlices and this Node, on the running loop.

I/O side. One task per kind lists (paginated), then watches from the list's resourceVersion,
and hands `bgpvip.core.services` events to `emit` (a plain function called on the loop: the
speaker's and the controller's queues). Decoding is msgspec's (bgpvip.adapters.kube.decode).

Failure handling, by what the loop does next:
- a watch that ends (server timeout, cut connection, or silent past `watch_timeout`) is resumed
  from the last resourceVersion at once, without a list;
- `410 Gone` (as an HTTP status or an ERROR event) means the history is gone: list again;
- a request that cannot be made emits `KubeUnavailable` once and is retried; the kind is listed
  afresh when the API answers again. Nothing is ever deleted because the API is down. While the
  server cannot be reached at all, it is tried every `probe_interval` seconds (so the speaker
  converges within about a second of the API's return); a server that answers with an error
  is retried with a growing backoff (bgpvip.adapters.kube.backoff).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bgpvip.adapters.kube.backoff import Backoff, transient
from bgpvip.adapters.kube.decode import (
    ALLOC_SERVICES,
    NODES,
    SLICES,
    Codec,
    MalformedObject,
    identity,
    resource_version,
    service_codec,
    status,
    watch_line,
)
from bgpvip.adapters.kube.http import ApiError, KubeClient, KubeError, describe
from bgpvip.core.config import Config
from bgpvip.core.services import (
    KubeDelete,
    KubeEvent,
    KubeKind,
    KubeListPage,
    KubeSynced,
    KubeUnavailable,
    KubeUpsert,
    View,
    pool_label_keys,
)

log = logging.getLogger(__name__)

Emit = Callable[[KubeEvent], None]


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
class KindSpec:
    kind: KubeKind
    namespaced: bool
    codec: Codec[Any]
    path: str
    query: tuple[tuple[str, str], ...] = ()


class _Relist(Exception):
    """The watch cannot continue from its resourceVersion (410, or an unknown ERROR event)."""


@dataclass
class _Outage:
    """One kind's view of an outage: whether it was reported, and since when."""

    down: bool = False
    since: float = 0.0
    said: str = ""
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0))


class KubeWatcher:
    """List+watch tasks for Services, EndpointSlices and one Node: `await run()` (cancel to stop)."""

    def __init__(
        self,
        client: KubeClient,
        *,
        node_name: str,
        emit: Emit,
        watch_timeout: float = 300.0,
        page_size: int = 500,
        request_timeout: float = 60.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        probe_interval: float = 0.5,
        authz_grace: float = 5.0,
        kinds: tuple[KubeKind, ...] = tuple(KubeKind),
        label_keys: Collection[str] | None = None,
        list_pages: bool = False,
        sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._emit_fn = emit
        self.list_pages = list_pages
        """Emit each page of a kind's first list as a `KubeListPage` before its `KubeSynced`."""
        self.watch_timeout = watch_timeout
        """A watch that delivers nothing for this long is treated as dead and restarted."""
        self.page_size = page_size
        """Items per list page. 500 like client-go's reflector: bounds the memory a list needs at
        once, and the apiserver's cost per request."""
        self.request_timeout = request_timeout
        """Timeout of one list page."""
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.probe_interval = probe_interval
        """Seconds between attempts while the server cannot be reached at all (or answers 502-504,
        or 403 right after it came back): short, so a returning API is used at once."""
        self.authz_grace = authz_grace
        """Seconds after the server starts answering during which a 403 is taken for an
        authorizer that is not ready yet (retried at `probe_interval`), not for missing RBAC."""
        self.label_keys = None if label_keys is None else frozenset(label_keys)
        """Service labels kept in the views: the keys of the pools' `service_selector`s. None keeps
        all; a key missing here makes its pool refuse the Service (fail closed), so the set must
        be updated, and the watcher restarted, when a reload changes the selectors."""
        self._sleep = sleep
        self._clock = clock
        specs = {
            KubeKind.SERVICE: KindSpec(
                KubeKind.SERVICE, True, service_codec(self.label_keys), "/api/v1/services"
            ),
            KubeKind.ENDPOINT_SLICE: KindSpec(
                KubeKind.ENDPOINT_SLICE, True, SLICES, "/apis/discovery.k8s.io/v1/endpointslices"
            ),
            KubeKind.NODE: KindSpec(
                KubeKind.NODE,
                False,
                NODES,
                "/api/v1/nodes",
                (("fieldSelector", f"metadata.name={node_name}"),),
            ),
        }
        self.specs = [specs[k] for k in kinds]
        self.stats = {k: WatchStats() for k in kinds}

    @classmethod
    def for_config(
        cls, client: KubeClient, config: Config, *, node_name: str, emit: Emit, **kw: Any
    ) -> KubeWatcher:
        """A watcher with the settings the configuration implies (`watch_timeout`, the label
        keys the pools select on)."""
        return cls(
            client,
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

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for spec in self.specs:
                tg.create_task(self._run(spec), name=f"kube-watch-{spec.kind}")

    # ----------------------------------------------------------------- per kind

    async def _run(self, spec: KindSpec) -> None:
        rv: str | None = None
        outage = _Outage(backoff=Backoff(self.backoff_initial, self.backoff_max))
        pause = 0.0
        while True:
            try:
                if rv is None:
                    rv = await self._list(spec)
                started = self._clock()
                rv, delivered = await self._watch(spec, rv, outage)
            except _Relist:
                rv = None
                continue
            except KubeError as e:
                rv = None  # after a failure the history may be gone: list afresh
                await self._sleep(self._failed(spec, e, outage))
                continue
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                rv = None
                await self._sleep(self._failed(spec, e, outage))
                continue
            except Exception:
                # A bug must not silently end the watch: log it, list again after a pause.
                log.exception("kube %s: watcher failed unexpectedly; listing again", spec.kind)
                rv, delivered, started = None, False, self._clock()
            # A stream that ends at once with nothing in it, again and again, would otherwise
            # become a tight request loop; a real apiserver never does that on purpose.
            if delivered or self._clock() - started > 1.0:
                pause = 0.0
            else:
                pause = min(self.backoff_max, max(0.1, pause * 2))
                await self._sleep(pause)

    def _failed(self, spec: KindSpec, exc: Exception, outage: _Outage) -> float:
        self.stats[spec.kind].failures += 1
        said = describe(exc)
        passing = transient(exc, answering_for=self._client.answering_for(), authz_grace=self.authz_grace)
        delay = outage.backoff.short(self.probe_interval) if passing else outage.backoff.next()
        if not outage.down:
            outage.down, outage.since = True, self._clock()
            self._emit(KubeUnavailable(spec.kind, said))
        if said != outage.said:
            outage.said = said
            hint = ""
            if isinstance(exc, ApiError) and exc.status == 403:
                hint = (
                    " (an apiserver that just started refuses until its authorizer is ready)"
                    if passing
                    else " (check the RBAC rules of this ServiceAccount)"
                )
            log.warning("kube %s: API unavailable: %s%s; retrying in %.1fs", spec.kind, said, hint, delay)
        else:
            log.debug("kube %s: still unavailable: %s; retrying in %.1fs", spec.kind, said, delay)
        return delay

    def _recovered(self, spec: KindSpec, outage: _Outage) -> None:
        outage.backoff.reset()
        if outage.down:
            log.info("kube %s: API answering again after %.1fs", spec.kind, self._clock() - outage.since)
        outage.down, outage.said = False, ""

    async def _list(self, spec: KindSpec) -> str:
        """List the kind completely (paginated), emit KubeSynced, return the list's resourceVersion."""
        views: list[View] = []
        token = ""
        stats = self.stats[spec.kind]
        while True:
            query: list[tuple[str, Any]] = [*spec.query, ("limit", self.page_size)]
            if token:
                query.append(("continue", token))
            try:
                body = await self._client.request(
                    "GET", spec.path, query=query, time_limit=self.request_timeout
                )
            except ApiError as e:
                if e.status == 410 and token:  # (the next page is a `first` one again)
                    log.info("kube %s: list continuation expired (410), starting the list over", spec.kind)
                    stats.gone += 1
                    views.clear()
                    token = ""
                    continue
                raise
            first = len(views)
            page, rv, next_token = spec.codec.page(body, lambda e: self._malformed(spec, e))
            views.extend(page)
            if self.list_pages and not stats.lists:
                self._emit(KubeListPage(spec.kind, tuple(views[first:]), first=not token))
            token = next_token
            if not token:
                break
        if not rv:
            raise ApiError(0, "BadList", f"list of {spec.kind} without metadata.resourceVersion")
        stats.lists += 1
        stats.resource_version = rv
        self._emit(KubeSynced(spec.kind, tuple(views), rv))
        return rv

    def _query(self, spec: KindSpec, rv: str) -> Sequence[tuple[str, Any]]:
        return [
            *spec.query,
            ("watch", True),
            ("resourceVersion", rv),
            ("allowWatchBookmarks", True),
            ("timeoutSeconds", self.server_timeout),
        ]

    async def _watch(self, spec: KindSpec, rv: str, outage: _Outage) -> tuple[str | None, bool]:
        """Open a watch (list again on 410) and read it to its end. Returns the resourceVersion
        to resume from and whether the stream delivered anything."""
        stats = self.stats[spec.kind]
        while True:
            try:
                async with self._client.stream(
                    spec.path,
                    self._query(spec, rv),
                    read_timeout=self.watch_timeout,
                    open_timeout=self.request_timeout,
                ) as lines:
                    stats.watches += 1
                    self._recovered(spec, outage)
                    return await self._consume(spec, lines, rv)
            except ApiError as e:
                if e.status != 410:
                    raise
                stats.gone += 1
                log.info("kube %s: resourceVersion %s expired (410), listing again", spec.kind, rv)
                rv = await self._list(spec)

    async def _consume(self, spec: KindSpec, lines: Any, rv: str) -> tuple[str, bool]:
        stats = self.stats[spec.kind]
        delivered = False
        try:
            async for line in lines:
                delivered = True
                rv = stats.resource_version = self._handle_line(spec, line, rv)
            log.debug("kube %s: watch ended by the server at %s", spec.kind, rv)
        except (OSError, TimeoutError, KubeError) as e:
            log.info("kube %s: watch interrupted (%s); resuming from %s", spec.kind, describe(e), rv)
        except Exception as e:
            if type(e).__module__.startswith("h11"):
                log.info("kube %s: watch interrupted (%s); resuming from %s", spec.kind, describe(e), rv)
            else:
                raise
        stats.resumes += 1
        stats.resource_version = rv
        return rv, delivered

    def _handle_line(self, spec: KindSpec, line: bytes, rv: str) -> str:
        try:
            event = watch_line(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Resuming would replay the same bytes; a list moves past them.
            self.stats[spec.kind].malformed += 1
            log.warning("kube %s: unparseable watch line %r; listing again", spec.kind, line[:200])
            raise _Relist from None
        kind, obj = event.type, event.object
        if kind == "ERROR":
            code, _, message = status(obj)
            if code == 410:
                self.stats[spec.kind].gone += 1
                log.info("kube %s: watch history expired (410: %s), listing again", spec.kind, message)
            else:
                log.warning("kube %s: watch ERROR %s: %s; listing again", spec.kind, code, message)
            raise _Relist
        if obj is None:
            log.warning("kube %s: ignoring watch event %r without an object", spec.kind, kind[:40])
            return rv
        if kind == "BOOKMARK":
            return resource_version(obj) or rv
        if kind in ("ADDED", "MODIFIED"):
            try:
                view = spec.codec.view(obj)
            except (MalformedObject, msgspec.DecodeError) as e:
                self._malformed(spec, e)
            else:
                self._emit(KubeUpsert(view))
        elif kind == "DELETED":
            try:
                key, _ = identity(obj, spec.namespaced)
                if not key[1]:
                    raise MalformedObject("object without metadata.name")
                self._emit(KubeDelete(spec.kind, key))
            except (MalformedObject, msgspec.ValidationError) as e:
                self.stats[spec.kind].malformed += 1
                log.warning("kube %s: ignoring DELETED event for a malformed object: %s", spec.kind, e)
        else:
            log.warning("kube %s: ignoring watch event of unknown type %r", spec.kind, kind[:40])
        return resource_version(obj) or rv

    def _malformed(self, spec: KindSpec, e: Exception) -> None:
        self.stats[spec.kind].malformed += 1
        log.warning("kube %s: ignoring malformed object: %s", spec.kind, e)

    def _emit(self, event: KubeEvent) -> None:
        try:
            self._emit_fn(event)
        except Exception:
            log.exception("kube: emit(%s) failed", type(event).__name__)


class AllocationWatcher(KubeWatcher):
    """List+watch of every Service for the allocation controller, as `AllocService` views.

    The speaker's watcher with one kind and another translation: the same list-then-watch, 410
    and outage handling, and the same events (kind SERVICE). Every label is kept: pools select on
    them and the controller is one process, not one per node."""

    def __init__(self, client: KubeClient, *, emit: Emit, **kw: Any) -> None:
        super().__init__(client, node_name="", emit=emit, kinds=(KubeKind.SERVICE,), label_keys=None, **kw)
        self.specs = [KindSpec(KubeKind.SERVICE, True, ALLOC_SERVICES, "/api/v1/services")]
