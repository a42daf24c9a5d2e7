"""The LoadBalancer IP allocation controller (`bgpvip controller`): composition root and loop.

I/O side. One asyncio loop owns all state and is the only writer of Service statuses. Tasks on
the same loop feed it small values: the leader elector (`_Leading`) and the Service watcher (its
`KubeEvent`s, tagged with the leadership term so that a stopped watcher's late events are
dropped); status writes are requests the loop awaits. Every decision is the pure core's:
`bgpvip.core.alloc.allocate` over every Service, statuses included, after each batch of events
and on a resync timer (level-triggered).

Policies:
- Only the leader writes, and each write checks `LeaderElector.is_leader` just before it is sent.
  A follower makes no API request but its Lease reads.
- On becoming the leader: list every Service, allocate for all (addresses already in statuses
  first, so a takeover or a restart moves nothing), write what differs, then follow the watch.
- Each write carries the resourceVersion its decision was made on: a 409 means the Service
  changed, and the watch brings it for a new decision. An address is written to a Service only
  once no other Service's status still shows it (releases go first).
- API unreachable: nothing is written or released (fail static). The elector steps down after its
  renew deadline and campaigns again; the watcher lists afresh when the API is back.
- A bad Service gets a Warning Event and no address; the others are served.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bgpvip import logs
from bgpvip.adapters.kube import (
    AllocationWatcher,
    ApiError,
    Credentials,
    EventRecorder,
    KubeClient,
    KubeError,
    LeaderElector,
    ObjectRef,
    describe,
    patch_service_status,
)
from bgpvip.configfile import file_stamp, load_file
from bgpvip.core.alloc import Allocation, Allocations, AllocReason, AllocService, Outcome, allocate
from bgpvip.core.config import Config, ConfigError
from bgpvip.core.services import (
    Key,
    KubeDelete,
    KubeEvent,
    KubeSynced,
    KubeUnavailable,
    KubeUpsert,
    takes_service,
)
from bgpvip.status import HttpServer, json_body, metrics_body, text

log = logs.get("controller")

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "bgpvip-system"
DEFAULT_PORT = 9475
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, kw_only=True)
class ControllerOptions:
    identity: str
    """This replica's name in the Lease: the pod name, so `kubectl get lease` shows who leads."""
    namespace: str = DEFAULT_NAMESPACE
    """Namespace of the Lease: the controller's own, where its Role allows Lease writes."""
    lease_name: str = "bgpvip-controller"
    lease_duration: float = 15.0
    """Seconds a follower waits, after the Lease last changed, before taking over. Default 15
    (client-go's): a dead leader's Services wait at most this long for new addresses, while
    existing addresses are unaffected, since they live in the statuses."""
    renew_interval: float = 5.0
    """Seconds between renewals: three chances per lease duration."""
    renew_deadline: float = 10.0
    """A leader that could not renew for this long stops writing, 5 s before a follower may start."""
    retry_period: float = 2.0
    """Seconds between a follower's Lease reads, and between a leader's retries of a failed renew."""
    resync_interval: float = 60.0
    """Seconds between full re-allocations without any event. Everything is level-triggered; this
    only catches what a lost event would otherwise leave undone."""
    write_workers: int = 4
    """Status writes in flight at once: enough to write many fresh Services quickly without being
    a burden on the apiserver."""
    write_timeout: float = 10.0
    retry_initial: float = 0.5
    """First backoff after a failed status write; doubles per failure up to `retry_max`, and
    starts over after a success."""
    retry_max: float = 30.0
    config_poll: float = 5.0
    """Seconds between checks of the config file: a ConfigMap update takes effect without a restart."""
    listen: str = "127.0.0.1"
    """Address of /healthz, /metrics and /status. Default loopback: the endpoint is unauthenticated."""
    port: int = DEFAULT_PORT
    """0 picks a free port (tests)."""
    watcher: Mapping[str, Any] = field(default_factory=dict)
    """Extra `AllocationWatcher` settings (backoffs in tests)."""
    elector: Mapping[str, Any] = field(default_factory=dict)
    """Extra `LeaderElector` settings (a clock in tests)."""


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

    @property
    def added(self) -> set[str]:
        return set(self.target) - set(self.svc.ingress_ips)

    @property
    def removed(self) -> list[str]:
        return [ip for ip in self.svc.ingress_ips if ip not in self.target]


@dataclass
class ControllerStats:
    reconciles: int = 0
    writes: int = 0
    """Status writes the API accepted."""
    conflicts: int = 0
    failures: int = 0
    last_allocation_seconds: float = 0.0


class ControllerMetrics:
    """What `/metrics` serves. Pool figures are only known to the leader: a follower clears them."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.leader = Gauge(
            "bgpvip_controller_is_leader", "1 while this replica holds the lease and allocates", registry=r
        )
        self.pool_size = Gauge(
            "bgpvip_pool_addresses", "Addresses in the pool", ["pool", "family"], registry=r
        )
        self.pool_used = Gauge(
            "bgpvip_pool_addresses_used",
            "Addresses of the pool assigned to at least one Service",
            ["pool", "family"],
            registry=r,
        )
        self.pool_allocations = Gauge(
            "bgpvip_pool_allocations",
            "Services holding an address of the pool",
            ["pool", "family"],
            registry=r,
        )
        self.refused = Gauge(
            "bgpvip_allocation_refusals",
            "Services currently refused an address, by reason",
            ["reason"],
            registry=r,
        )
        self.services = Gauge(
            "bgpvip_controller_services", "Services of bgpvip's class, by outcome", ["outcome"], registry=r
        )
        self.writes = Counter("bgpvip_status_writes", "Status writes by result", ["result"], registry=r)
        self.allocation_seconds = Histogram(
            "bgpvip_allocation_duration_seconds",
            "Time to allocate for all Services",
            buckets=_BUCKETS,
            registry=r,
        )
        self.config_reloads = Counter(
            "bgpvip_config_reloads", "Config reloads by result", ["result"], registry=r
        )

    def observe(self, result: Allocations, seconds: float) -> None:
        self.allocation_seconds.observe(seconds)
        for u in result.usage:
            labels = (u.pool, f"ipv{u.family}")
            self.pool_size.labels(*labels).set(u.size)
            self.pool_used.labels(*labels).set(u.used)
            self.pool_allocations.labels(*labels).set(u.services)
        reasons: dict[str, int] = {}
        outcomes = {o.value: 0 for o in (Outcome.ASSIGNED, Outcome.REFUSED)}
        for a in result.by_service.values():
            if a.outcome is Outcome.REFUSED:
                reasons[a.reason.value] = reasons.get(a.reason.value, 0) + 1
            if a.outcome is not Outcome.NOT_OURS:
                outcomes[a.outcome.value] += 1
        self.refused.clear()
        for reason, n in reasons.items():
            self.refused.labels(reason).set(n)
        for outcome, n in outcomes.items():
            self.services.labels(outcome).set(n)

    def follower(self) -> None:
        self.leader.set(0)
        for g in (self.pool_size, self.pool_used, self.pool_allocations, self.refused, self.services):
            g.clear()


class Controller:
    """The allocation controller. `await run()` until `stop()`; safe to run two in one process
    (tests) as long as they have different identities."""

    def __init__(
        self,
        config: Config,
        client: KubeClient,
        options: ControllerOptions,
        *,
        config_path: Path | None = None,
        recorder: EventRecorder | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.options = options
        self.config_path = config_path
        self.recorder = recorder or EventRecorder(
            client, component="bgpvip-controller", host=options.identity, adopt_other_hosts=True
        )
        self.metrics = ControllerMetrics()
        self.stats = ControllerStats()
        self.elector = LeaderElector(
            client,
            namespace=options.namespace,
            name=options.lease_name,
            identity=options.identity,
            lease_duration=options.lease_duration,
            renew_interval=options.renew_interval,
            renew_deadline=options.renew_deadline,
            retry_period=options.retry_period,
            on_change=lambda leading: self._post(_Leading(leading)),
            **options.elector,
        )
        self.port = options.port
        self.result = Allocations()
        """The last allocation (the leader's)."""
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self._explained: dict[Key, tuple[str, AllocReason, str]] = {}
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

    def stop(self, *, release: bool = True) -> None:
        """Stop `run()`. `release=False` leaves the Lease to expire, as a crash would."""
        self._post(_Stop(release))

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        server = HttpServer(
            {
                "/healthz": lambda: text(*self.healthy()),
                "/metrics": lambda: metrics_body(self.metrics.registry),
                "/status": lambda: json_body(self.status()),
            },
            self.options.listen,
            self.options.port,
            name="controller",
        )
        await server.start()
        self.port = server.port
        log.info(
            logs.kv(
                "controller-started",
                identity=self.options.identity,
                lease=f"{self.options.namespace}/{self.options.lease_name}",
                listen=f"{self.options.listen}:{self.port}",
                pools=len(self.config.pools),
            )
        )
        self.recorder.start()
        self.elector.start()
        release = True
        try:
            release = await self._main()
        finally:
            await server.close()
            await self._end_term()
            await self.elector.stop(release=release)
            self.metrics.follower()
            await asyncio.gather(*self._stopping, return_exceptions=True)
            await self.recorder.stop()
            log.info(logs.kv("controller-stopped", identity=self.options.identity, released=release))

    # ----------------------------------------------------------------- the loop

    def _post(self, item: object) -> None:
        self._queue.put_nowait(item)

    async def _main(self) -> bool:
        assert self._loop is not None
        self._resync_at = self._loop.time() + self.options.resync_interval
        self._config_at = self._loop.time() + self.options.config_poll
        while True:
            timeout = max(0.0, self._next_wake() - self._loop.time())
            items: list[object] = []
            try:
                items.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                pass
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            for item in items:
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
                    self._resync_at = min(self._resync_at, self._loop.time() + self.options.retry_max)

    def _next_wake(self) -> float:
        wake = [self._resync_at, self._config_at]
        if self._retry_at:
            wake.append(min(self._retry_at.values()))
        return min(wake)

    def _timers(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
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
            log.info(logs.kv("following", identity=self.options.identity, holder=self.elector.holder or None))

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
        LoadBalancers of our class and hold no address. At 10,000 Services an allocation run
        costs about 0.2 s, so skipping these matters."""
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
        assert self._loop is not None
        started = time.perf_counter()
        result = allocate(self.config, self._services.values())
        seconds = time.perf_counter() - started
        self.result = result
        self.stats.reconciles += 1
        self.stats.last_allocation_seconds = seconds
        self._last_reconcile = time.time()
        self.metrics.observe(result, seconds)
        now = self._loop.time()
        writes: list[_Write] = []
        for key, a in result.by_service.items():
            svc = self._services[key]
            self._explain(svc, a)
            target = a.status_ips
            if target is None or target == svc.ingress_ips:
                self._retry_at.pop(key, None)
                continue
            if self._retry_at.get(key, 0.0) > now:
                continue
            # due now: a write that fails again sets a new time
            self._retry_at.pop(key, None)
            writes.append(_Write(svc, a, target))
        for key in [k for k in self._explained if k not in self._services]:
            del self._explained[key]
        for key in [k for k in self._failures if k not in self._services]:
            self._failures.pop(key, None)
            self._retry_at.pop(key, None)
        if writes:
            # what every Service is to show, written now or not (a write waiting for its retry
            # timer still releases its old address: nobody else may be given it meanwhile)
            intended = {k: a.status_ips for k, a in result.by_service.items() if a.status_ips is not None}
            await self._write_in_order(writes, intended)

    def _explain(self, svc: AllocService, a: Allocation) -> None:
        """A Warning Event when a Service is refused, or refused for another reason."""
        if a.outcome is not Outcome.REFUSED:
            self._explained.pop(svc.key, None)
            return
        seen = (svc.uid, a.reason, a.message)
        if self._explained.get(svc.key) == seen:
            return
        self._explained[svc.key] = seen
        self.recorder.record(ObjectRef.service(svc), "Warning", a.reason.event_reason, a.message)
        log.info(
            logs.kv("refused", service=f"{svc.namespace}/{svc.name}", reason=a.reason.value, detail=a.message)
        )

    async def _write_in_order(
        self, writes: list[_Write], intended: Mapping[Key, tuple[str, ...]] | None = None
    ) -> None:
        """Write statuses so that no address appears in two statuses it may not share: a write
        that adds an address waits until every other status showing it has been written without
        it. A cycle (two Services swapping addresses) is broken by first writing the removals
        alone. `intended` is what each Service is to show, including Services whose own write
        is not due yet (a failed write waiting to be retried)."""
        status = {key: set(svc.ingress_ips) for key, svc in self._services.items()}
        target = {k: set(ips) for k, ips in (intended or {}).items()}
        target.update((w.key, set(w.target)) for w in writes)
        holders: dict[str, set[Key]] = {}
        for key, ips in status.items():
            for ip in ips:
                holders.setdefault(ip, set()).add(key)

        def blocked(w: _Write) -> bool:
            return any(
                k != w.key and ip not in target.get(k, status[k])
                for ip in w.added
                for k in holders.get(ip, ())
            )

        pending = {w.key: w for w in writes}
        broke_cycle = False
        while pending:
            ready = [w for w in pending.values() if not blocked(w)]
            if ready:
                for w in ready:
                    del pending[w.key]
            elif broke_cycle:
                break
            else:
                broke_cycle = True
                ready = [
                    _Write(w.svc, w.allocation, tuple(ip for ip in w.svc.ingress_ips if ip in w.target))
                    for w in pending.values()
                    if w.removed
                ]
                if not ready:
                    break
            done = await asyncio.gather(*(self._write(w) for w in ready))
            for w, written in zip(ready, done, strict=True):
                if written is None:
                    continue
                for ip in status[w.key] - set(written.ingress_ips):
                    holders.get(ip, set()).discard(w.key)
                for ip in written.ingress_ips:
                    holders.setdefault(ip, set()).add(w.key)
                status[w.key] = set(written.ingress_ips)
                if w.key in pending:
                    pending[w.key].svc = written
        assert self._loop is not None
        for w in pending.values():
            # not a failure: it waits for a release; a timer, so the loop does not spin meanwhile
            self._retry_at[w.key] = self._loop.time() + self.options.retry_initial
            log.info(
                logs.kv(
                    "write-deferred",
                    service=f"{w.svc.namespace}/{w.svc.name}",
                    why="an address it gets is not yet released",
                )
            )

    async def _write(self, w: _Write) -> AllocService | None:
        """One status write (at most `write_workers` at once); the written Service, or None."""
        assert self._loop is not None
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
                self._retry_at[w.key] = self._loop.time() + self.options.retry_initial
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
        if not self.elector.is_leader:
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
        assert self._loop is not None
        self.stats.failures += 1
        self.metrics.writes.labels("error").inc()
        n = self._failures.get(w.key, 0) + 1
        self._failures[w.key] = n
        delay = min(self.options.retry_max, self.options.retry_initial * 2 ** (n - 1))
        self._retry_at[w.key] = self._loop.time() + delay
        log.warning(
            logs.kv(
                "write-failed",
                service=f"{w.svc.namespace}/{w.svc.name}",
                error=error,
                retry_in=f"{delay:.1f}s",
            )
        )

    def _announce(self, w: _Write, written: AllocService) -> None:
        """Normal Events and a log line for what a successful write changed."""
        svc, a = w.svc, w.allocation
        before = set(svc.ingress_ips)
        added = [ip for ip in written.ingress_ips if ip not in before]
        removed = [ip for ip in svc.ingress_ips if ip not in written.ingress_ips]
        name = f"{svc.namespace}/{svc.name}"
        ref = ObjectRef.service(written)
        if added and a.assigned:
            message = f"Assigned {a.message}"
            if removed:
                message += f"; released {', '.join(removed)}"
            self.recorder.record(ref, "Normal", "IPAllocated", message)
            log.info(
                logs.kv(
                    "allocated",
                    service=name,
                    ips=",".join(written.ingress_ips),
                    released=",".join(removed) or None,
                )
            )
        elif removed:
            # assigned, yet only removing: the first step of a move whose target was still held
            why = f"moving to {a.message}" if a.assigned else a.message
            self.recorder.record(ref, "Normal", "IPReleased", f"Released {', '.join(removed)}: {why}")
            log.info(logs.kv("released", service=name, ips=",".join(removed), why=a.reason.value))

    # ----------------------------------------------------------------- HTTP

    def status(self) -> dict[str, Any]:
        refused = [
            {"service": f"{k[0]}/{k[1]}", "reason": a.reason.value, "message": a.message}
            for k, a in self.result.by_service.items()
            if a.outcome is Outcome.REFUSED
        ]
        return {
            "identity": self.options.identity,
            "leader": self._leading,
            "holder": self.elector.holder,
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

    def healthy(self) -> tuple[bool, str]:
        """Alive as long as this loop answers and the elector task runs; the API being away is
        not a reason to be restarted (fail static), so it is not checked here."""
        if not self.elector.alive:
            return False, "leader election is not running"
        return True, f"ok {'leader' if self._leading else 'follower'}"


class _NotLeader(Exception):
    """The Lease was lost between the decision and the write."""


# --------------------------------------------------------------------------- entry point


def default_namespace() -> str:
    """The pod's namespace (from its ServiceAccount), else bgpvip-system."""
    try:
        return NAMESPACE_FILE.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def default_identity() -> str:
    """$POD_NAME (the Deployment sets it from the downward API), else the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def controller_main(config_path: Path, options: ControllerOptions, *, echo: Callable[[str], None]) -> int:
    """Run until SIGTERM/SIGINT. 0 after a clean stop, 2 for an unusable config or API client."""
    logs.setup(os.environ.get("BGPVIP_LOG_LEVEL", "INFO"))
    try:
        config = load_file(config_path, check_files=False)
    except ConfigError as e:
        echo(f"{config_path}: invalid")
        for path, msg in e.problems:
            echo(f"  {path}: {msg}" if path else f"  {msg}")
        return 2
    credentials = Credentials.for_config(config.kubernetes)

    async def main() -> int:
        try:
            await credentials.get()
        except KubeError as e:
            echo(f"cannot reach the Kubernetes API: {e}; outside a cluster, set kubernetes.kubeconfig")
            return 2
        client = KubeClient(credentials)
        controller = Controller(config, client, options, config_path=config_path)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, controller.stop)
        try:
            await controller.run()
        finally:
            await client.aclose()
        return 0

    return asyncio.run(main())
