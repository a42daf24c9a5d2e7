"""The reconcile loop: the only writer of routes and addresses.

I/O side, but thin: every input arrives as a small immutable Event on one asyncio.Queue; the
loop folds it into the World, asks the pure core for the desired state and the plan, and
hands each action to an adapter, recording it as applied only once the adapter confirmed it
(ExaBGP answered `done`, the kernel accepted the address). Failed actions are retried on a
backoff that resets after a success; a periodic resync re-reads the truth from the adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from bgpvip import logs
from bgpvip.core import health as healthmod
from bgpvip.core import peers as peermod
from bgpvip.core import plan
from bgpvip.core.config import CheckKey, Config, host_prefix
from bgpvip.core.desired import HELD_SOURCE, NodeState, check_keys, compute, held_service_routes
from bgpvip.core.model import (
    Action,
    AddAddress,
    Announce,
    Applied,
    Decision,
    Desired,
    IPInterface,
    ProbeResult,
    RemoveAddress,
    Route,
    Withdraw,
)
from bgpvip.core.peers import PeerStatus
from bgpvip.core.services import ServiceDecisions

log = logs.get("reconcile")


class RoutePort(Protocol):
    async def announce(self, routes: Sequence[Route]) -> bool: ...
    async def withdraw(self, routes: Sequence[Route]) -> bool: ...


class AddressPort(Protocol):
    def add(self, ifname: str, address: IPInterface, /) -> object: ...
    def remove(self, ifname: str, address: IPInterface, /) -> object: ...
    def owned(self) -> set[tuple[str, IPInterface]]: ...


# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class ProbeDone:
    key: CheckKey
    result: ProbeResult


@dataclass(frozen=True, slots=True)
class PeerChanged:
    peer: str
    state: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PeerNegotiated:
    peer: str
    families: frozenset[str]


@dataclass(frozen=True, slots=True)
class PeerNotification:
    peer: str
    direction: str
    code: int
    subcode: int
    text: str = ""


@dataclass(frozen=True, slots=True)
class PeersRead:
    """What ExaBGP's `show neighbor` said: (peer, established, negotiated families or None)."""

    peers: tuple[tuple[str, bool, frozenset[str] | None], ...]


@dataclass(frozen=True, slots=True)
class PeerProbed:
    """The speaker's own TCP connection test of a peer whose session is down, in words."""

    peer: str
    diagnosis: str


@dataclass(frozen=True, slots=True)
class DrainChanged:
    drained: bool


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    config: Config


@dataclass(frozen=True, slots=True)
class ServicesChanged:
    """New Service decisions from the Kubernetes side (already computed by the pure core):
    the `ServiceDecider`'s table, or plain decisions (tests)."""

    decisions: ServiceDecisions | tuple[Decision, ...]
    partial: bool = False
    """Decided on the pages of the first lists: only its announcements count, and only until
    the first complete table (see `services.KubeListPage`)."""


@dataclass(frozen=True, slots=True)
class Resync:
    """Re-read what is applied and re-assert everything (timer, or a retry after a failure)."""

    full: bool = True


@dataclass(frozen=True, slots=True)
class StopRequested:
    reason: str = "SIGTERM"


PeerEvent = PeerChanged | PeerNegotiated | PeerNotification | PeersRead | PeerProbed
Event = ProbeDone | PeerEvent | DrainChanged | ConfigChanged | ServicesChanged | Resync | StopRequested


# ------------------------------------------------------------------ world


@dataclass(frozen=True, slots=True)
class World:
    config: Config
    health: dict[CheckKey, healthmod.Health] = field(default_factory=dict)
    node: NodeState = field(default_factory=NodeState)
    peers: dict[str, PeerStatus] = field(default_factory=dict)
    services: ServiceDecisions | None = field(default_factory=ServiceDecisions)
    """Service decisions from Kubernetes; None until the first complete list (fail static)."""
    early: ServiceDecisions | None = None
    """While `services` is None: what the first list pages already make certain."""


def seed_health(config: Config, announced: Iterable[Route], now: float) -> dict[CheckKey, healthmod.Health]:
    """Initial health: checks of a VIP whose route ExaBGP already carries start UP."""
    prefixes = {r.prefix for r in announced}
    seeded: dict[CheckKey, healthmod.Health] = {}
    for vip in config.vips:
        up = host_prefix(vip) in prefixes
        for key in check_keys(vip):
            seeded[key] = healthmod.initial(assume_up=up, now=now)
    return seeded


class Backoff:
    """Retry delays as a sequence that restarts after a success (kopf/MetalLB style)."""

    def __init__(self, delays: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)):
        self._delays = tuple(delays)
        self._i = 0

    def next(self) -> float:
        d = self._delays[min(self._i, len(self._delays) - 1)]
        self._i += 1
        return d

    def reset(self) -> None:
        self._i = 0


class Observer(Protocol):
    """Receives what the loop did; the status endpoint and metrics implement it."""

    def reconciled(self, world: World, desired: Desired, applied: Applied, seconds: float) -> None: ...
    def action_failed(self, action: Action, error: str) -> None: ...
    def probe(self, key: CheckKey, result: ProbeResult, health: healthmod.Health) -> None: ...


class NullObserver:
    def reconciled(self, world: World, desired: Desired, applied: Applied, seconds: float) -> None:
        pass

    def action_failed(self, action: Action, error: str) -> None:
        pass

    def probe(self, key: CheckKey, result: ProbeResult, health: healthmod.Health) -> None:
        pass


class Reconciler:
    def __init__(
        self,
        world: World,
        applied: Applied,
        routes: RoutePort,
        addresses: AddressPort,
        *,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        canonical: Callable[[Route], Route] | None = None,
        on_idle: Callable[[], object] | None = None,
    ):
        self.world = world
        self.applied = applied
        self._initial_routes = applied.routes
        self._last_read = applied.routes
        """ExaBGP's routes as last read (the caller seeds `applied` from such a read)."""
        self._held_for: Config | None = None
        self._held_table = ServiceDecisions()
        self.desired = Desired()
        self._routes = routes
        self._addresses = addresses
        self._observer: Observer = observer or NullObserver()
        self._clock = clock
        # Routes as the route adapter reports them back (ExaBGP sorts communities, ...), so
        # that what we want and what it says it has compare equal.
        self._canonical = canonical
        self._on_idle = on_idle
        """Called when a reconcile leaves no event waiting (the daemon gives freed memory back)."""
        self._canonical_last: tuple[frozenset[Route], frozenset[Route]] = (frozenset(), frozenset())
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self._backoff = Backoff()
        self._retry: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopped = asyncio.Event()
        self.reconciles = 0

    # ---- inputs

    def post(self, event: Event) -> None:
        self.queue.put_nowait(event)

    def post_threadsafe(self, event: Event) -> None:
        assert self._loop is not None, "post_threadsafe before run()"
        self._loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def next_delay(self, key: CheckKey, pending: ProbeResult | None = None) -> float:
        """Probe pace for one check: fast while its state is changing.

        `pending` is the result the probe just emitted: the probe asks for its next delay
        before this loop has folded that result in, so the state it implies is computed here
        (otherwise the first failure would wait a full interval for its confirmation)."""
        vip = next((v for v in self.world.config.vips if v.label == key.vip), None)
        if vip is None or key.index >= len(vip.checks):
            return 1.0
        check = vip.checks[key.index]
        h = self.world.health.get(key, healthmod.initial())
        if pending is not None and h.last is not pending:
            h = healthmod.step(h, pending, rise=check.rise, fall=check.fall)
        return healthmod.next_delay(h, interval=check.interval, fast_interval=check.fast_interval)

    # ---- folding events into the world

    def _apply_event(self, event: Event) -> bool:
        """Fold one event in; returns whether it can change the desired state."""
        w = self.world
        match event:
            case ProbeDone(key, result):
                vip = next((v for v in w.config.vips if v.label == key.vip), None)
                if vip is None or key.index >= len(vip.checks):
                    return False  # a result from a check a reload removed
                check = vip.checks[key.index]
                old = w.health.get(key, healthmod.initial(now=result.at))
                new = healthmod.step(old, result, rise=check.rise, fall=check.fall)
                self._observer.probe(key, result, new)
                if new.state != old.state:
                    log.info(
                        logs.kv(
                            "check",
                            vip=key.vip,
                            check=key.index,
                            state=new.state.value,
                            previous=old.state.value,
                            detail=result.detail,
                        )
                    )
                health = dict(w.health)
                health[key] = new
                self.world = replace(w, health=health)
                return new.up != old.up or new.state != old.state
            case PeerChanged() | PeerNegotiated() | PeerNotification() | PeersRead() | PeerProbed():
                # a change of sessions changes no route, but the reasons and `announced` do
                self.world = replace(w, peers=fold_peer_event(w.peers, event, self._clock()))
                return True
            case DrainChanged(drained):
                log.info(logs.kv("drain", drained=drained))
                self.world = replace(w, node=replace(w.node, drained=drained))
                return True
            case ConfigChanged(config):
                self.world = replace(w, config=config, health=self._carry_health(config))
                return True
            case ServicesChanged(decisions, partial):
                table = (
                    decisions if isinstance(decisions, ServiceDecisions) else ServiceDecisions.of(decisions)
                )
                if partial:
                    if w.services is not None:
                        return False  # complete decisions are in: pages are history
                    self.world = replace(w, early=table)
                else:
                    self.world = replace(w, services=table, early=None)
                return True
            case Resync():
                return True
            case StopRequested(reason):
                log.info(logs.kv("stop", reason=reason))
                self.world = replace(w, node=replace(w.node, stopping=True))
                return True
        raise TypeError(f"unknown event {event!r}")

    def _carry_health(self, config: Config) -> dict[CheckKey, healthmod.Health]:
        """Keep the health of checks whose definition did not change across a reload."""
        old_checks = {
            k: c for v in self.world.config.vips for k, c in zip(check_keys(v), v.checks, strict=True)
        }
        carried: dict[CheckKey, healthmod.Health] = {}
        for vip in config.vips:
            for key, check in zip(check_keys(vip), vip.checks, strict=True):
                if old_checks.get(key) == check and key in self.world.health:
                    carried[key] = self.world.health[key]
        return carried

    # ---- the loop

    async def run(self) -> None:
        """Process events until a stop completed. The first reconcile happens at once."""
        self._loop = asyncio.get_running_loop()
        # The caller seeded `applied` from fresh reads; no need to read them again.
        self.post(Resync(full=False))
        while True:
            event = await self.queue.get()
            changed = self._apply_event(event)
            full = isinstance(event, Resync) and event.full
            while not self.queue.empty():  # coalesce a burst into one reconcile
                more = self.queue.get_nowait()
                changed = self._apply_event(more) or changed
                full = full or (isinstance(more, Resync) and more.full)
            if self.world.node.stopping:
                await self._stop_sequence()
                return
            if changed:
                await self.reconcile(resync=full)
                if self._on_idle is not None and self.queue.empty():
                    self._on_idle()

    async def reconcile(self, *, resync: bool = False) -> None:
        started = self._clock()
        if resync:
            await self._refresh_applied()
        desired = self._compute()
        actions = plan.diff(desired, self.applied)
        if resync and desired.routes and not hasattr(self._routes, "announced"):
            # Level-triggered without a way to read the truth back: re-assert every wanted
            # route (ExaBGP drops identical repeats, nothing goes on the wire). When the port
            # can dump its RIB, _refresh_applied already compared against the truth, and
            # re-announcing 10,000 routes would hold the loop for seconds for nothing.
            missing = [a for a in actions if isinstance(a, Announce)]
            if not missing:
                actions = (*actions, Announce(tuple(sorted(desired.routes, key=_route_order))))
        ok = await self._execute(actions)
        self.reconciles += 1
        self._observer.reconciled(self.world, desired, self.applied, self._clock() - started)
        if ok:
            self._backoff.reset()
        else:
            self._schedule_retry()

    def _compute(self) -> Desired:
        w = self.world
        services = w.services
        if services is None:
            services = self._held(w.config)
            if w.early is not None and w.early.routes:
                held = services.by_source.get(HELD_SOURCE)
                early = w.early.by_source if held is None else w.early.by_source.set(HELD_SOURCE, held)
                services = ServiceDecisions(early, w.early.routes | services.routes)
        desired = compute(w.config, w.health, w.node, services, w.peers)
        if self._canonical is not None:
            desired = replace(desired, routes=self._canonical_routes(desired.routes))
        self.desired = desired
        return desired

    def _held(self, config: Config) -> ServiceDecisions:
        """Fail static before the first complete list: the pool routes ExaBGP carried when
        this speaker started (computed once per config, not per pass: it can be 10,000)."""
        if self._held_for is not config:
            self._held_table = ServiceDecisions.of(held_service_routes(config, self._initial_routes))
            self._held_for = config
        return self._held_table

    def _canonical_routes(self, routes: frozenset[Route]) -> frozenset[Route]:
        """`routes` as the route port reports them back. Only routes not seen in the previous
        pass are converted, so 10,000 unchanged Service routes cost set operations, not calls."""
        assert self._canonical is not None
        last_in, last_out = self._canonical_last
        if routes is last_in:
            return last_out
        added = routes - last_in
        removed = last_in - routes
        if len(added) + len(removed) > len(routes):
            out = frozenset(map(self._canonical, routes))
        else:
            out = (last_out - frozenset(map(self._canonical, removed))) | frozenset(
                map(self._canonical, added)
            )
        self._canonical_last = (routes, out)
        return out

    async def _execute(self, actions: Iterable[Action]) -> bool:
        for action in actions:
            try:
                ok = await self._do(action)
                error = "" if ok else "rejected"
            except Exception as e:  # adapters raise transient errors; the loop must go on
                ok, error = False, f"{type(e).__name__}: {e}"
            if not ok:
                log.warning(logs.kv("action-failed", action=_describe(action), error=error))
                self._observer.action_failed(action, error)
                # Stop here: later actions may depend on this one (announce after address).
                return False
            self.applied = plan.apply(action, self.applied)
        return True

    async def _do(self, action: Action) -> bool:
        match action:
            case Withdraw(routes):
                ok = await self._routes.withdraw(routes)
                if len(routes) <= 20:
                    for r in routes:
                        log.info(logs.kv("withdraw", prefix=r.prefix, ok=ok))
                else:
                    log.info(logs.kv("withdraw", routes=len(routes), ok=ok))
                return ok
            case Announce(routes):
                ok = await self._routes.announce(routes)
                if len(routes) <= 20:
                    for r in routes:
                        log.info(logs.kv("announce", prefix=r.prefix, ok=ok))
                else:
                    log.info(logs.kv("announce", routes=len(routes), ok=ok))
                return ok
            case AddAddress(ifname, address):
                self._addresses.add(ifname, address)
                log.info(logs.kv("address-add", interface=ifname, address=address))
                return True
            case RemoveAddress(ifname, address):
                self._addresses.remove(ifname, address)
                log.info(logs.kv("address-remove", interface=ifname, address=address))
                return True
        raise TypeError(f"unknown action {action!r}")

    async def _refresh_applied(self) -> None:
        """Re-read the truth: the kernel's addresses and, if the port can tell, ExaBGP's RIB."""
        routes, addresses = self.applied.routes, self.applied.addresses
        try:
            addresses = frozenset(self._addresses.owned())
        except Exception as e:
            log.warning(logs.kv("address-list-failed", error=e))
        announced_changed = getattr(self._routes, "announced_changed", None)
        announced = getattr(self._routes, "announced", None)
        try:
            if announced_changed is not None:
                # None: ExaBGP holds exactly what it held at the last read, which was the truth
                read = await announced_changed()
                routes = self._last_read if read is None else _interned(read, self.applied.routes)
                self._last_read = routes
            elif announced is not None:
                routes = _interned(await announced(), self.applied.routes)
        except Exception as e:
            log.warning(logs.kv("adj-rib-out-failed", error=e))
        self.applied = Applied(routes, addresses)

    def _schedule_retry(self) -> None:
        if self._retry is not None and not self._retry.cancelled():
            return
        delay = self._backoff.next()
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._retry = None
            self.post(Resync(full=False))

        self._retry = loop.call_later(delay, fire)

    async def _stop_sequence(self) -> None:
        """Withdraw everything, give routers time to converge, then drop the addresses."""
        w = self.world
        desired = self._compute()
        actions = plan.diff(desired, self.applied)
        withdraws = [a for a in actions if isinstance(a, Withdraw)]
        rest = [a for a in actions if not isinstance(a, Withdraw | Announce)]
        for attempt in range(3):
            if await self._execute(withdraws):
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        self._observer.reconciled(self.world, desired, self.applied, 0.0)
        if withdraws and w.config.shutdown_delay > 0:
            log.info(logs.kv("stop-wait", seconds=w.config.shutdown_delay))
            await asyncio.sleep(w.config.shutdown_delay)
        await self._execute(rest)
        self._observer.reconciled(self.world, desired, self.applied, 0.0)
        self.stopped.set()
        if self._retry is not None:
            self._retry.cancel()
        with contextlib.suppress(Exception):
            log.info(
                logs.kv("stopped", routes=len(self.applied.routes), addresses=len(self.applied.addresses))
            )


def fold_peer_event(peers: dict[str, PeerStatus], event: PeerEvent, now: float) -> dict[str, PeerStatus]:
    """`peers` with one session event folded in (core/peers.py), logged when it says something."""
    out = dict(peers)
    match event:
        case PeerChanged(peer, state, reason):
            old = peers.get(peer, PeerStatus())
            new = peermod.on_state(old, state, reason, now)
            if (new.state, new.reason) != (old.state, old.reason):
                log.info(logs.kv("peer", peer=peer, state=new.state, reason=new.reason or None))
            out[peer] = new
        case PeerNegotiated(peer, families):
            out[peer] = peermod.on_negotiated(peers.get(peer, PeerStatus()), families)
            log.info(logs.kv("peer-negotiated", peer=peer, families=",".join(sorted(families)) or "none"))
        case PeerNotification(peer, direction, code, subcode, text):
            new = peermod.on_notification(peers.get(peer, PeerStatus()), direction, code, subcode, text)
            log.info(logs.kv("peer-notification", peer=peer, notification=new.notification))
            out[peer] = new
        case PeersRead(read):
            for peer, established, negotiated in read:
                out[peer] = peermod.on_read(peers.get(peer, PeerStatus()), established, negotiated, now)
        case PeerProbed(peer, diagnosis):
            old = peers.get(peer, PeerStatus())
            out[peer] = peermod.on_probe(old, diagnosis)
            if diagnosis != old.diagnosis and not old.up:
                log.info(logs.kv("peer-diagnosis", peer=peer, diagnosis=diagnosis))
    return out


def _interned(read: Iterable[Route], known: frozenset[Route]) -> frozenset[Route]:
    """`read` with every route equal to a `known` one replaced by that very object.

    A resync re-reads 10,000 routes as new objects; keeping them would hold a second copy of
    every route and make each later pass compare equal-but-distinct routes in Python instead of
    by identity in C. The equality checks are paid here, once per resync."""
    by_key = {r.key: r for r in known}
    out = []
    for r in read:
        k = by_key.get(r.key)
        out.append(k if k is not None and k == r else r)
    return frozenset(out)


def _route_order(r: Route) -> tuple[int, int]:
    return (r.prefix.version, int(r.prefix.network_address))


def _describe(action: Action) -> str:
    match action:
        case Withdraw(routes) | Announce(routes):
            head = ",".join(str(r.prefix) for r in routes[:3])
            more = f"+{len(routes) - 3}" if len(routes) > 3 else ""
            return f"{type(action).__name__.lower()}({head}{more})"
        case AddAddress(ifname, address) | RemoveAddress(ifname, address):
            return f"{type(action).__name__}({ifname},{address})"
    return repr(action)
