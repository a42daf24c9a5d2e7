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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from bgpvip import logs
from bgpvip.core import health as healthmod
from bgpvip.core import peers as peermod
from bgpvip.core import plan
from bgpvip.core.config import CheckKey, Config, host_prefix
from bgpvip.core.desired import (
    HELD_SOURCE,
    NodeState,
    announced_as_penalised,
    check_keys,
    compute,
    held_service_routes,
)
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
    UnitFailure,
    Withdraw,
)
from bgpvip.core.peers import PeerStatus
from bgpvip.core.services import ServiceDecisions

log = logs.get("reconcile")


class RoutePort(Protocol):
    async def announce(self, routes: Sequence[Route]) -> bool: ...
    async def withdraw(self, routes: Sequence[Route]) -> bool: ...


class AddressPort(Protocol):
    def add(self, ifname: str, address: IPInterface, /) -> object:
        """Put the address there; `False` means it already is, and is not bgpvip's."""

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
    """Initial health: checks of a VIP whose route ExaBGP already carries start UP, except the
    `lower-preference` checks of a route carried with a penalty: they start over, so that the
    route stays penalised until they pass instead of claiming full preference for a moment."""
    routes = {r.prefix: r for r in announced}
    seeded: dict[CheckKey, healthmod.Health] = {}
    for vip in config.vips:
        route = routes.get(host_prefix(vip))
        penalised = route is not None and announced_as_penalised(config, vip, route)
        for key, check in zip(check_keys(vip), vip.checks, strict=True):
            up = route is not None and not (penalised and check.on_failure != "withdraw")
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
    def units(self, failures: Mapping[plan.Key, UnitFailure], held: Mapping[plan.Address, float]) -> None:
        """After each pass (before `reconciled`): the prefixes that failed a step, and the
        addresses kept after a withdrawal with the (loop clock) time of their release."""


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


Timer = Callable[[float, Callable[[], None]], TimerHandle]
"""Calls back after so many seconds (`loop.call_later`; tests drive a fake one)."""


class NullObserver:
    def reconciled(self, world: World, desired: Desired, applied: Applied, seconds: float) -> None:
        pass

    def units(self, failures: Mapping[plan.Key, UnitFailure], held: Mapping[plan.Address, float]) -> None:
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
        timer: Timer | None = None,
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
        self._timer = timer
        self._retry: TimerHandle | None = None
        self._release: tuple[float, TimerHandle] | None = None
        self.failures: dict[plan.Key, UnitFailure] = {}
        """Prefixes whose last attempted step failed; retried on their own, shown by status."""
        self.held: dict[plan.Address, float] = {}
        """Addresses kept after their route's withdrawal: when (clock) they may be released."""
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
                # Not only state changes: a DOWN check whose error changes (the CA appeared,
                # the server now answers 403) must not leave the old error in the decision, and
                # a down check whose server now refuses (or answers again) changes whether its
                # address is kept after the withdrawal (`desired.server_gone`).
                return healthmod.described(new) != healthmod.described(old) or _gone(new) != _gone(old)
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
        """The checks' health across a reload, so that a reload is hitless.

        A check keeps the state of the check at the same position of the VIP of the same name,
        whether or not its definition changed: an edited check goes on from where the old one
        was (an UP check stays UP until the new definition fails `fall` times, a DOWN one must
        rise), instead of starting over and withdrawing a healthy VIP until it rises. A check
        with no predecessor (a new VIP, or a check added to a VIP) starts UP when its VIP's
        route is announced, the same rule as a restarted speaker, and otherwise from the start."""
        announced = {r.key for r in self.applied.routes}
        carried: dict[CheckKey, healthmod.Health] = {}
        for vip in config.vips:
            up = (vip.address.version, int(vip.address)) in announced
            for key in check_keys(vip):
                old = self.world.health.get(key)
                carried[key] = old if old is not None else healthmod.initial(assume_up=up, now=self._clock())
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
        applied = self.applied
        if applied.foreign and not applied.foreign <= desired.addresses:
            self.applied = replace(applied, foreign=applied.foreign & desired.addresses)
        self._forget_held(desired)
        todo = plan.diff(desired, self.applied, now=self._clock(), held=self.held)
        reassert: tuple[Route, ...] = ()
        if resync and desired.routes and not hasattr(self._routes, "announced") and not todo.announces():
            # Level-triggered without a way to read the truth back: re-assert every wanted
            # route (ExaBGP drops identical repeats, nothing goes on the wire). When the port
            # can dump its RIB, _refresh_applied already compared against the truth, and
            # re-announcing 10,000 routes would hold the loop for seconds for nothing.
            reassert = tuple(sorted(desired.routes, key=_route_order))
        failed = await self._execute(todo, reassert=reassert)
        self._record(failed)
        self._forget_held(desired)
        # the plan's earliest waiting release, or one this pass's withdraw started
        now = self._clock()
        self._arm_release(min((t for t in self.held.values() if t > now), default=None))
        self.reconciles += 1
        self._observer.units(self.failures, self.held)
        self._observer.reconciled(self.world, desired, self.applied, self._clock() - started)
        if not failed:
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

    async def _execute(
        self, todo: plan.Plan, *, reassert: tuple[Route, ...] = ()
    ) -> dict[plan.Key, tuple[str, str]]:
        """Run a plan's units together, in phases: one batched withdraw, the address steps unit
        by unit, one batched announce of the units that got that far. A unit whose step fails
        skips its later steps; every other unit goes on. Returns the failed units' (step, error)."""
        failed: dict[plan.Key, tuple[str, str]] = {}
        withdraws = todo.withdraws()
        if withdraws:
            error = await self._run(Withdraw(withdraws))
            if error is None:
                acked = self._clock()
                for u in todo.units:
                    if u.withdraw is not None:
                        for a in u.hold:
                            self.held[a] = acked + u.hold_for
            else:
                failed.update((r.key, ("withdraw", error)) for r in withdraws)
        for attr, step in (
            ("release", "address-remove"),
            ("add", "address-add"),
            ("move_away", "address-remove"),
        ):
            for u in todo.units:
                if u.key in failed:
                    continue
                for ifname, address in getattr(u, attr):
                    action = AddAddress(ifname, address) if attr == "add" else RemoveAddress(ifname, address)
                    error = await self._run(action)
                    if error is not None:
                        failed[u.key] = (step, error)
                        break
        announces = todo.announces(skip=failed.keys()) or tuple(r for r in reassert if r.key not in failed)
        if announces:
            error = await self._run(Announce(announces))
            if error is not None:
                failed.update((r.key, ("announce", error)) for r in announces)
        return failed

    async def _run(self, action: Action) -> str | None:
        """Do one action and record it as applied; the error when it failed."""
        try:
            outcome = await self._do(action)
            error = None if outcome else "rejected"
        except Exception as e:  # adapters raise transient errors; the loop must go on
            outcome, error = False, f"{type(e).__name__}: {e}"
        if error is not None:
            log.warning(logs.kv("action-failed", action=_describe(action), error=error))
            self._observer.action_failed(action, error)
            return error
        if outcome == FOREIGN:
            assert isinstance(action, AddAddress)
            self.applied = replace(
                self.applied, foreign=self.applied.foreign | {(action.interface, action.address)}
            )
        else:
            self.applied = plan.apply(action, self.applied)
        return None

    def _forget_held(self, desired: Desired) -> None:
        """A held address wanted again stays (its release is cancelled); one gone is forgotten."""
        if self.held:
            self.held = {
                a: t
                for a, t in self.held.items()
                if a in self.applied.addresses and a not in desired.addresses
            }

    def _record(self, failed: Mapping[plan.Key, tuple[str, str]]) -> None:
        """The failures of this pass: since-when and attempts carry over while the step stays."""
        now = self._clock()
        current: dict[plan.Key, UnitFailure] = {}
        for key, (step, error) in failed.items():
            old = self.failures.get(key)
            if old is not None and old.step == step:
                current[key] = UnitFailure(step, error, old.since, old.attempts + 1)
            else:
                current[key] = UnitFailure(step, error, now)
        self.failures = current

    def _call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        if self._timer is not None:
            return self._timer(delay, callback)
        return asyncio.get_running_loop().call_later(delay, callback)

    async def _sleep(self, seconds: float) -> None:
        """`asyncio.sleep` on the loop's timer (fake in tests)."""
        done = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        handle = self._call_later(seconds, wake)
        try:
            await done
        finally:
            handle.cancel()

    def _arm_release(self, due: float | None) -> None:
        """Wake the loop when the earliest held address is due for release."""
        if self._release is not None:
            if self._release[0] == due:
                return
            self._release[1].cancel()
            self._release = None
        if due is None:
            return

        def fire() -> None:
            self._release = None
            self.post(Resync(full=False))

        self._release = (due, self._call_later(max(0.0, due - self._clock()), fire))

    async def _do(self, action: Action) -> bool | str:
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
                if self._addresses.add(ifname, address) is False:
                    # someone else's address: present, so the route may go out, but bgpvip never
                    # removes it (and does not try to add it again while it stays)
                    log.warning(logs.kv("address-not-owned", interface=ifname, address=address))
                    return FOREIGN
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
        self.applied = Applied(routes, addresses, self._still_foreign(addresses))

    def _still_foreign(self, owned: frozenset[tuple[str, IPInterface]]) -> frozenset[tuple[str, IPInterface]]:
        """The foreign addresses that are still there and still not ours (the next plan adds
        one that went away, as bgpvip's own)."""
        foreign = self.applied.foreign - owned
        has = getattr(self._addresses, "has", None)
        if not foreign or has is None:
            return foreign
        try:
            return frozenset(a for a in foreign if has(*a))
        except Exception as e:
            log.warning(logs.kv("address-list-failed", error=e))
            return foreign

    def _schedule_retry(self) -> None:
        """One shared retry timer: the next pass re-plans everything, and only what is out of
        step (the failed units) has anything to do."""
        if self._retry is not None:
            return
        delay = self._backoff.next()

        def fire() -> None:
            self._retry = None
            self.post(Resync(full=False))

        self._retry = self._call_later(delay, fire)

    async def _stop_sequence(self) -> None:
        """Withdraw everything, give routers time to converge, then drop the addresses."""
        w = self.world
        desired = self._compute()
        todo = plan.diff(desired, self.applied, now=self._clock(), held=self.held)
        withdraws = todo.withdraws()
        if withdraws:
            for attempt in range(3):
                if await self._run(Withdraw(withdraws)) is None:
                    break
                await self._sleep(0.2 * (attempt + 1))
        self._observer.reconciled(self.world, desired, self.applied, 0.0)
        now = self._clock()
        wait = max(w.config.shutdown_delay, w.config.release_delay) if withdraws else 0.0
        # addresses still held after an earlier withdrawal get the rest of their time
        wait = max([wait, *(due - now for due in self.held.values())])
        if wait > 0:
            log.info(logs.kv("stop-wait", seconds=round(wait, 3)))
            await self._sleep(wait)
        for ifname, address in sorted(self.applied.addresses - desired.addresses, key=_addr_order):
            await self._run(RemoveAddress(ifname, address))
        self.held.clear()
        self._observer.reconciled(self.world, desired, self.applied, 0.0)
        self.stopped.set()
        for timer in (self._retry, self._release[1] if self._release else None):
            if timer is not None:
                timer.cancel()
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


FOREIGN = "foreign"
"""`_do`'s outcome for an address that was already there and is not bgpvip's."""


def _gone(h: healthmod.Health) -> bool:
    return h.state == healthmod.State.DOWN and h.last_failure is not None and h.last_failure.broken


def _addr_order(a: tuple[str, IPInterface]) -> tuple[str, int, int]:
    return (a[0], a[1].version, int(a[1].ip))


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
