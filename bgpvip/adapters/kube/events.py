"""core/v1 Events about Services, posted by a task on the running loop.

I/O side. `record()` never blocks and never raises; a task de-duplicates, rate-limits and posts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from bgpvip.adapters.kube.http import ApiError, KubeClient, KubeError, describe
from bgpvip.core.services import ServiceView

log = logging.getLogger(__name__)


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
    adopted: int = 0
    """Events of this component found at start and counted on instead of posted again."""


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


_Key = tuple[str, str, str, str, str, str]


class _Source(msgspec.Struct):
    component: str = ""
    host: str = ""


class _Involved(msgspec.Struct):
    namespace: str = ""
    name: str = ""
    uid: str = ""


class _EventMeta(msgspec.Struct):
    name: str = ""
    namespace: str = ""


class _Event(msgspec.Struct, rename={"involved": "involvedObject", "last": "lastTimestamp"}):
    metadata: _EventMeta | None = None
    involved: _Involved | None = None
    type: str = ""
    reason: str = ""
    message: str = ""
    count: int | None = None
    last: str | None = None
    source: _Source | None = None


class _EventList(msgspec.Struct):
    items: list[_Event] | None = None


class EventRecorder:
    """Posts core/v1 Events about Services; `record()` never blocks and never raises.

    core/v1 rather than events.k8s.io/v1: `kubectl describe` and every dashboard read it, every
    cluster version serves it, its `count` is exactly the de-duplication this needs, and it is what
    client-go's `record` package (MetalLB, kube-controller-manager) writes; the RBAC rule is the
    familiar `events: create, patch` in the core group (plus `list`, to adopt its own Events).

    De-duplication: an Event identical to one posted (same object, type, reason and message) and
    seen again within `window` seconds increments that Event's `count`; the count is written at
    most every `patch_interval` seconds. After the window a repeat is a new Event (count 1).
    Rate limit: each object may start `burst` new Events, refilled one per `refill_interval`
    seconds (client-go's spam filter, scaled down). At start it lists the Events this component
    (on this `host`, or on any with `adopt_other_hosts`) posted within the window, so that a
    restart or a controller takeover counts on the Events already there instead of posting each
    refusal again.
    """

    def __init__(
        self,
        client: KubeClient,
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
        adopt: bool = True,
        adopt_other_hosts: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.component = component
        self.host = host
        self.window = window
        self.patch_interval = patch_interval
        self.burst = burst
        self.refill_interval = refill_interval
        self.max_cache = max_cache
        self.request_timeout = request_timeout
        self.adopt = adopt
        """At start, list this component's recent Events and count on them."""
        self.adopt_other_hosts = adopt_other_hosts
        """Adopt the Events of every `host` of the component (the controller: one logical
        writer whatever replica leads), not only this one's (a speaker: one per node)."""
        self._clock = clock
        self._wall = wall
        self.stats = RecorderStats()
        self._queue: asyncio.Queue[_Record] = asyncio.Queue(maxsize=max_queue)
        self._posted: OrderedDict[_Key, _Posted] = OrderedDict()
        self._buckets: OrderedDict[tuple[str, str, str], _Bucket] = OrderedDict()
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="kube-events")

    async def stop(self, within: float = 5.0) -> None:
        """Post what is queued (`within` seconds), then stop."""
        if self._task is None:
            return
        if not await self.flush(within):
            log.warning(
                "event recorder: %d Events still queued at stop; abandoning them", self._queue.qsize()
            )
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def record(self, ref: ObjectRef, type: str, reason: str, message: str) -> None:
        """Queue an Event. `type` is `Normal` or `Warning`."""
        try:
            if type not in ("Normal", "Warning"):
                raise ValueError(f"event type must be Normal or Warning, not {type!r}")
            self._queue.put_nowait(_Record(ref, type, reason[:128], message[:1024], self._wall()))
        except asyncio.QueueFull:
            self.stats.dropped += 1
        except Exception:
            log.exception("event recorder: record() failed")

    async def flush(self, within: float = 5.0) -> bool:
        """Wait until everything queued so far is handled. True if it was."""
        try:
            async with asyncio.timeout(within):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        if self.adopt:
            try:
                await self._adopt()
            except (KubeError, msgspec.DecodeError, msgspec.ValidationError) as e:
                log.info("event recorder: could not list earlier Events (%s); posting afresh", describe(e))
        while True:
            item = await self._queue.get()
            try:
                await self._handle(item)
            except Exception as e:
                self.stats.failed += 1
                log.warning(
                    "event recorder: posting an Event failed: %s",
                    describe(e),
                    exc_info=not isinstance(e, KubeError),
                )
            finally:
                self._queue.task_done()

    async def _adopt(self) -> None:
        body = await self._client.request(
            "GET",
            "/api/v1/events",
            query=[("fieldSelector", f"source={self.component}")],
            time_limit=self.request_timeout,
        )
        now, wall = self._clock(), self._wall()
        for e in msgspec.json.decode(body, type=_EventList).items or ():
            host = (e.source or _Source()).host
            if e.metadata is None or e.involved is None or (host != self.host and not self.adopt_other_hosts):
                continue
            try:
                age = (
                    wall
                    - datetime.strptime(e.last or "", "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
                )
            except ValueError:
                continue
            if not 0 <= age <= self.window:
                continue
            i = e.involved
            key = (i.namespace, i.name, i.uid, e.type, e.reason, e.message)
            # counted as if just written: the next write is a count update after patch_interval
            self._posted[key] = _Posted(e.metadata.name, e.metadata.namespace, e.count or 1, now - age, now)
            self.stats.adopted += 1
        while len(self._posted) > self.max_cache:
            self._posted.popitem(last=False)

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

    async def _handle(self, r: _Record) -> None:
        now = self._clock()
        key = (r.ref.namespace, r.ref.name, r.ref.uid, r.type, r.reason, r.message)
        posted = self._posted.get(key)
        within = posted is not None and now - posted.last_seen <= self.window
        if posted is not None and within:
            posted.count += 1
            posted.last_seen = now
            self._posted.move_to_end(key)
            if now - posted.last_write < self.patch_interval or not self._take(r.ref, now):
                self.stats.deduplicated += 1
                return
            if await self._patch(posted, r):
                posted.last_write = now
                return
        if not self._take(r.ref, now):
            self.stats.rate_limited += 1
            return
        # a repeat whose Event expired (404) keeps counting; one after the window starts over
        count = posted.count if posted is not None and within else 1
        created = await self._create(r, now, count)
        if created is not None:
            self._posted[key] = created
            self._posted.move_to_end(key)
            if len(self._posted) > self.max_cache:
                self._posted.popitem(last=False)

    async def _patch(self, posted: _Posted, r: _Record) -> bool:
        """Write the new count. False when the Event is gone (expired by its TTL): post anew."""
        body = {"count": posted.count, "lastTimestamp": _timestamp(r.at_wall)}
        try:
            await self._client.request(
                "PATCH",
                f"/api/v1/namespaces/{posted.namespace}/events/{posted.name}",
                body=msgspec.json.encode(body),
                content_type="application/strategic-merge-patch+json",
                time_limit=self.request_timeout,
            )
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        self.stats.patched += 1
        return True

    async def _create(self, r: _Record, now: float, count: int) -> _Posted | None:
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
                await self._client.request(
                    "POST",
                    f"/api/v1/namespaces/{namespace}/events",
                    body=msgspec.json.encode(body),
                    time_limit=self.request_timeout,
                )
            except ApiError as e:
                if e.status == 409:
                    continue
                raise
            self.stats.created += 1
            return _Posted(name, namespace, count, now, now)
        return None


def _timestamp(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
