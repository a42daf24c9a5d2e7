"""The controller's one loop: the only holder of state and the only writer of Service statuses.

I/O side. Tasks on the same asyncio loop feed it small values: the leader elector's changes
(`_Leading`) and the Service watcher's `KubeEvent`s, tagged with the leadership term so that a
stopped watcher's late events are dropped; status writes are requests the loop awaits. Every
decision is the pure core's: `bgpvip.core.alloc.allocate` over every Service, statuses included,
after each batch of events and on a resync timer (level-triggered).

Policies:
- Only the leader writes, and each write checks `Leadership.is_leader` just before it is sent.
  A follower makes no API request but its Lease reads.
- On becoming the leader: list every Service, allocate for all (addresses already in statuses
  first, so a takeover or a restart moves nothing), write what differs, then follow the watch.
- Each write carries the resourceVersion its decision was made on: a 409 means the Service
  changed, and the watch brings it for a new decision. The writes go in the core's order
  (`bgpvip.core.alloc_order`): an address is written to a Service only once no other Service's
  status still shows it (releases go first).
- API unreachable: nothing is written or released (fail static). The elector steps down after its
  renew deadline and campaigns again; the watcher lists afresh when the API is back.
- A bad Service gets a Warning Event and no address; the others are served. Which Events a
  decision or a write is worth is the core's policy (`bgpvip.core.event_policy`), shared with
  the speaker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bgpvip import logs
from bgpvip.adapters.kube import (
    AllocationWatcher,
    ApiError,
    EventRecorder,
    KubeClient,
    KubeError,
    ObjectRef,
    describe,
    patch_service_status,
)
from bgpvip.configfile import file_stamp, load_file
from bgpvip.controller.metrics import ControllerMetrics, ControllerStats
from bgpvip.controller.options import REAL_TIME, Clock, ControllerOptions
from bgpvip.core.alloc import Allocation, Allocations, AllocService, Outcome, allocate
from bgpvip.core.alloc_order import WriteOrder
from bgpvip.core.config import Config, ConfigError
from bgpvip.core.event_policy import refusal_events, status_events
from bgpvip.core.services import (
    Key,
    KubeDelete,
    KubeEvent,
    KubeSynced,
    KubeUnavailable,
    KubeUpsert,
    takes_service,
)

log = logs.get("controller")


class Leadership(Protocol):
    """What the loop asks of leader election (`LeaderElector`)."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def holder(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _Leading:
    leading: bool


@dataclass(frozen=True, slots=True)
class _Watched:
    term: int
    event: KubeEvent


@dataclass(frozen=True, slots=True)
class _Stop:
    release: bool


@dataclass(slots=True, eq=False)
class _Write:
    svc: AllocService
    allocation: Allocation
    target: tuple[str, ...]

    @property
    def key(self) -> Key:
        return self.svc.key


class AllocationLoop:
    """The loop. `await run()` until `stop()`; `leadership_changed` is the elector's callback."""

    def __init__(
        self,
        config: Config,
        client: KubeClient,
        options: ControllerOptions,
        *,
        leadership: Leadership,
        recorder: EventRecorder,
        metrics: ControllerMetrics,
        config_path: Path | None = None,
        clock: Clock = REAL_TIME,
    ) -> None:
        self.config = config
        self.client = client
        self.options = options
        self.config_path = config_path
        self.leadership = leadership
        self.recorder = recorder
        self.metrics = metrics
        self.clock = clock
        self.stats = ControllerStats()
        self.result = Allocations()
        """The last allocation (the leader's)."""
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._leading = False
        self._term = 0
        self._watcher: asyncio.Task[None] | None = None
        self._stopping: list[asyncio.Task[None]] = []
        self._writers = asyncio.Semaphore(options.write_workers)
        self._services: dict[Key, AllocService] = {}
        self._synced = False
        self._dirty = False
        self._own_writes: dict[Key, str] = {}
        """Key → resourceVersion of our last write, until the watch delivers that version: a
        watch event for the key with another version is older than our write (a watch delivers
        in order), and would undo what we just wrote if applied."""
        self._failures: dict[Key, int] = {}
        self._retry_at: dict[Key, float] = {}
        self._decided: dict[Key, tuple[str, Allocation]] = {}
        """Key → (uid, the last allocation): what the Event policy compares a new one with."""
        self._resync_at = 0.0
        self._config_at = 0.0
        self._config_stamp = file_stamp(config_path)
        self._last_reconcile = 0.0
        self._unavailable = ""

    # ----------------------------------------------------------------- public

    @property
    def leading(self) -> bool:
        """This replica is the leader as far as the loop knows (the writes also check the Lease)."""
        return self._leading

    def leadership_changed(self, leading: bool) -> None:
        self._post(_Leading(leading))

    def stop(self, *, release: bool = True) -> None:
        """End `run()`; it returns `release` (whether the Lease is to be released)."""
        self._post(_Stop(release))

    async def run(self) -> bool:
        """The loop, until `stop()`. Returns whether the Lease is to be released."""
        try:
            return await self._main()
        finally:
            await self._end_term()

    async def wait_stopped(self) -> None:
        """Wait for the watchers of ended terms to finish."""
        await asyncio.gather(*self._stopping, return_exceptions=True)

    # ----------------------------------------------------------------- the loop

    def _post(self, item: object) -> None:
        self._queue.put_nowait(item)

    async def _main(self) -> bool:
        now = self.clock.now()
        self._resync_at = now + self.options.resync_interval
        self._config_at = now + self.options.config_poll
        while True:
            for item in await self._next_items():
                if isinstance(item, _Stop):
                    return item.release
                await self._apply(item)
            self._timers()
            if self._dirty and self._leading and self._synced:
                self._dirty = False
                try:
                    await self._reconcile()
                except Exception:
                    # A bug must not end allocation for everyone: log it, try again on the timer.
                    log.exception(logs.kv("reconcile-failed"))
                    self._resync_at = min(self._resync_at, self.clock.now() + self.options.retry_max)

    async def _next_items(self) -> list[object]:
        """Everything queued; when nothing is, the first item to come, or nothing once the next
        timer is due."""
        items: list[object] = []
        timeout = self._next_wake() - self.clock.now()
        if self._queue.empty() and timeout > 0:
            get = asyncio.ensure_future(self._queue.get())
            nap = asyncio.ensure_future(self.clock.sleep(timeout))
            try:
                await asyncio.wait((get, nap), return_when=asyncio.FIRST_COMPLETED)
            finally:
                # an item that came meanwhile stays queued: a cancelled get() takes nothing
                nap.cancel()
                get.cancel()
            if get.done() and not get.cancelled():
                items.append(get.result())
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    def _next_wake(self) -> float:
        wake = [self._resync_at, self._config_at]
        if self._retry_at:
            wake.append(min(self._retry_at.values()))
        return min(wake)

    def _timers(self) -> None:
        now = self.clock.now()
        if now >= self._config_at:
            self._config_at = now + self.options.config_poll
            self._reload_config()
        if now >= self._resync_at:
            self._resync_at = now + self.options.resync_interval
            self._dirty = True
        if any(at <= now for at in self._retry_at.values()):
            self._dirty = True

    async def _apply(self, item: object) -> None:
        if isinstance(item, _Leading):
            if item.leading and not self._leading:
                self._start_term()
            elif not item.leading and self._leading:
                await self._end_term()
        elif isinstance(item, _Watched) and item.term == self._term and self._leading:
            self._watched(item.event)

    def _start_term(self) -> None:
        self._term += 1
        self._leading = True
        self._services = {}
        self._synced = False
        self._own_writes.clear()
        self.metrics.leader.set(1)
        term = self._term
        watcher = AllocationWatcher(
            self.client,
            emit=lambda e: self._post(_Watched(term, e)),
            watch_timeout=self.config.kubernetes.watch_timeout,
            sleep=self.clock.sleep,
            clock=self.clock.now,
            **self.options.watcher,
        )
        self._watcher = asyncio.create_task(watcher.run(), name=f"allocation-watch-{term}")
        log.info(logs.kv("leading", identity=self.options.identity, term=term))

    async def _end_term(self) -> None:
        was = self._leading
        self._term += 1
        self._leading = False
        self._synced = False
        self._services = {}
        self._failures.clear()
        self._retry_at.clear()
        self.metrics.follower()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            self._stopping = [t for t in self._stopping if not t.done()]
            self._stopping.append(watcher)
        if was:
            log.info(
                logs.kv("following", identity=self.options.identity, holder=self.leadership.holder or None)
            )

    def _watched(self, event: KubeEvent) -> None:
        if isinstance(event, KubeSynced):
            self._services = {v.key: v for v in event.snapshot if isinstance(v, AllocService)}
            self._own_writes.clear()
            self._synced = True
            self._unavailable = ""
            log.info(
                logs.kv(
                    "services-listed", services=len(self._services), resource_version=event.resource_version
                )
            )
        elif isinstance(event, KubeUpsert):
            view = event.view
            if not isinstance(view, AllocService):
                return
            mine = self._own_writes.get(view.key)
            if mine is not None:
                if view.resource_version != mine:
                    return
                del self._own_writes[view.key]
            old = self._services.get(view.key)
            self._services[view.key] = view
            if not self._matters(old, view):
                return
        elif isinstance(event, KubeDelete):
            self._own_writes.pop(event.key, None)
            gone = self._services.pop(event.key, None)
            if not self._matters(gone, None):
                return
            if gone is not None and gone.ingress_ips:
                ips = ",".join(gone.ingress_ips)
                log.info(logs.kv("released", service=f"{gone.namespace}/{gone.name}", ips=ips, why="deleted"))
        elif isinstance(event, KubeUnavailable):
            self._unavailable = event.error
            log.warning(
                logs.kv("api-unavailable", error=event.error, policy="nothing is written until it is back")
            )
            return
        self._dirty = True

    def _matters(self, old: AllocService | None, new: AllocService | None) -> bool:
        """Whether a change can change any allocation. Most do not: the echo of our own status
        write (already applied from the write's response), and changes to Services that are not
        LoadBalancers of our class and hold no address. An allocation run over every Service is
        the loop's largest cost, so skipping these matters."""
        if old == new:
            return False
        return any(
            v is not None and (takes_service(self.config, v) or bool(v.ingress_ips)) for v in (old, new)
        )

    def _reload_config(self) -> None:
        stamp = file_stamp(self.config_path)
        if self.config_path is None or stamp == self._config_stamp:
            return
        self._config_stamp = stamp
        try:
            config = load_file(self.config_path, check_files=False)
        except ConfigError as e:
            self.metrics.config_reloads.labels("error").inc()
            log.error(
                logs.kv(
                    "config-rejected", path=self.config_path, error=str(e), keeping="the last good config"
                )
            )
            return
        if config == self.config:
            return
        if config.kubernetes.kubeconfig != self.config.kubernetes.kubeconfig:
            log.warning(logs.kv("config-kubeconfig-changed", note="takes effect on restart"))
        self.config = config
        self.metrics.config_reloads.labels("ok").inc()
        self.metrics.follower()
        self.metrics.leader.set(1 if self._leading else 0)
        self._dirty = True
        log.info(logs.kv("config-reloaded", path=self.config_path, pools=len(config.pools)))

    # ----------------------------------------------------------------- reconcile

    async def _reconcile(self) -> None:
        started = time.perf_counter()
        result = allocate(self.config, self._services.values())
        seconds = time.perf_counter() - started
        self.result = result
        self.stats.reconciles += 1
        self.stats.last_allocation_seconds = seconds
        self._last_reconcile = self.clock.wall()
        self.metrics.observe(result, seconds)
        now = self.clock.now()
        intended: dict[Key, tuple[str, ...]] = {}
        due: list[Key] = []
        for key, a in result.by_service.items():
            svc = self._services[key]
            self._explain(svc, a)
            target = a.status_ips
            if target is not None:
                intended[key] = target
            if target is None or target == svc.ingress_ips:
                self._retry_at.pop(key, None)
                continue
            if self._retry_at.get(key, 0.0) > now:
                continue
            # due now: a write that fails again sets a new time
            self._retry_at.pop(key, None)
            due.append(key)
        for key in [k for k in self._decided if k not in self._services]:
            del self._decided[key]
        for key in [k for k in self._failures if k not in self._services]:
            self._failures.pop(key, None)
            self._retry_at.pop(key, None)
        if due:
            await self._write_in_order(result, intended, due)

    def _explain(self, svc: AllocService, a: Allocation) -> None:
        """Events for a decision (the core's policy): a Warning when a Service is refused, or
        refused for another reason. The previous decision counts only for the same object."""
        seen = self._decided.get(svc.key)
        before = seen[1] if seen is not None and seen[0] == svc.uid else None
        self._decided[svc.key] = (svc.uid, a)
        for e in refusal_events(before, a):
            self.recorder.record(ObjectRef.service(svc), e.type, e.reason, e.message)
            log.info(
                logs.kv(
                    "refused", service=f"{svc.namespace}/{svc.name}", reason=a.reason.value, detail=a.message
                )
            )

    async def _write_in_order(
        self, result: Allocations, intended: Mapping[Key, tuple[str, ...]], due: list[Key]
    ) -> None:
        """The due writes, in the order `WriteOrder` gives (releases first, cycles broken), each
        round's writes at once. `intended` holds every Service's target, due or not: a write
        waiting for its retry still releases what it gives up."""
        services = dict(self._services)
        order = WriteOrder({k: v.ingress_ips for k, v in services.items()}, intended, due)
        while batch := order.next():
            done = await asyncio.gather(
                *(self._write(_Write(services[w.key], result.by_service[w.key], w.ips)) for w in batch)
            )
            for w, written in zip(batch, done, strict=True):
                if written is None:
                    order.failed(w.key)
                else:
                    services[w.key] = written
                    order.written(w.key, written.ingress_ips)
        for key in order.waiting:
            # not a failure: it waits for a release; a timer, so the loop does not spin meanwhile
            self._retry_at[key] = self.clock.now() + self.options.retry_initial
            log.info(
                logs.kv(
                    "write-deferred",
                    service=f"{key[0]}/{key[1]}",
                    why="an address it gets is not yet released",
                )
            )

    async def _write(self, w: _Write) -> AllocService | None:
        """One status write (at most `write_workers` at once); the written Service, or None."""
        svc, term = w.svc, self._term
        try:
            async with self._writers:
                written = await self._patch(w)
        except ApiError as e:
            if e.status == 409:
                # The Service changed since the decision: its watch event brings a new one. The
                # retry only matters if that event is lost.
                self.stats.conflicts += 1
                self.metrics.writes.labels("conflict").inc()
                self._retry_at[w.key] = self.clock.now() + self.options.retry_initial
                log.debug(logs.kv("write-conflict", service=f"{svc.namespace}/{svc.name}"))
                return None
            if e.status == 404:
                self.metrics.writes.labels("gone").inc()
                return None
            self._write_failed(w, describe(e))
            return None
        except _NotLeader:
            self.metrics.writes.labels("notLeader").inc()
            return None
        except Exception as e:
            self._write_failed(w, describe(e))
            if not isinstance(e, KubeError):
                log.exception(logs.kv("write-crashed", service=f"{svc.namespace}/{svc.name}"))
            return None
        self.stats.writes += 1
        self.metrics.writes.labels("ok").inc()
        self._failures.pop(w.key, None)
        self._retry_at.pop(w.key, None)
        if term == self._term and self._leading:
            self._own_writes[w.key] = written.resource_version
            self._services[w.key] = written
        self._announce(w, written)
        return written

    async def _patch(self, w: _Write) -> AllocService:
        """Fenced by the Lease, then the merge patch."""
        if not self.leadership.is_leader:
            raise _NotLeader
        return await patch_service_status(
            self.client,
            w.svc.namespace,
            w.svc.name,
            w.target,
            resource_version=w.svc.resource_version,
            time_limit=self.options.write_timeout,
        )

    def _write_failed(self, w: _Write, error: str) -> None:
        self.stats.failures += 1
        self.metrics.writes.labels("error").inc()
        n = self._failures.get(w.key, 0) + 1
        self._failures[w.key] = n
        delay = min(self.options.retry_max, self.options.retry_initial * 2 ** (n - 1))
        self._retry_at[w.key] = self.clock.now() + delay
        log.warning(
            logs.kv(
                "write-failed",
                service=f"{w.svc.namespace}/{w.svc.name}",
                error=error,
                retry_in=f"{delay:.1f}s",
            )
        )

    def _announce(self, w: _Write, written: AllocService) -> None:
        """Normal Events (the core's policy) and a log line for what a successful write changed."""
        svc, a = w.svc, w.allocation
        name = f"{svc.namespace}/{svc.name}"
        for e in status_events(svc.ingress_ips, written.ingress_ips, a):
            self.recorder.record(ObjectRef.service(written), e.type, e.reason, e.message)
        removed = [ip for ip in svc.ingress_ips if ip not in written.ingress_ips]
        if any(ip not in svc.ingress_ips for ip in written.ingress_ips):
            ips = ",".join(written.ingress_ips)
            log.info(logs.kv("allocated", service=name, ips=ips, released=",".join(removed) or None))
        elif removed:
            log.info(logs.kv("released", service=name, ips=",".join(removed), why=a.reason.value))

    # ----------------------------------------------------------------- what /status shows

    def status(self) -> dict[str, Any]:
        refused = [
            {"service": f"{k[0]}/{k[1]}", "reason": a.reason.value, "message": a.message}
            for k, a in self.result.by_service.items()
            if a.outcome is Outcome.REFUSED
        ]
        return {
            "identity": self.options.identity,
            "leader": self._leading,
            "holder": self.leadership.holder,
            "synced": self._synced,
            "api_unavailable": self._unavailable or None,
            "services": len(self._services),
            "last_reconcile": self._last_reconcile or None,
            "allocation_seconds": round(self.stats.last_allocation_seconds, 4),
            "writes": {
                "ok": self.stats.writes,
                "conflicts": self.stats.conflicts,
                "failed": self.stats.failures,
            },
            "pools": [
                {
                    "pool": u.pool,
                    "family": f"ipv{u.family}",
                    "size": u.size,
                    "used": u.used,
                    "services": u.services,
                }
                for u in self.result.usage
            ]
            if self._leading
            else [],
            "refused": refused if self._leading else [],
        }


class _NotLeader(Exception):
    """The Lease was lost between the decision and the write."""
