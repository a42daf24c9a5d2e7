"""The reconcile loop with in-memory fakes: ordering, retries, seeding from ExaBGP's RIB,
drain, stop, reload, failure isolation, address holds. The loop's clock and timers (retries,
releases) are fake (`FakeTimers`); only the stop sequence sleeps for real (shutdown_delay is
0.3 s here)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import Callable
from typing import Any

import pytest

from bgpvip.cli import render_routes_table
from bgpvip.core import health as healthmod
from bgpvip.core.config import CheckKey, Config, load
from bgpvip.core.desired import vip_route
from bgpvip.core.model import Applied, Attributes, ProbeResult, Reason, Route, host_network
from bgpvip.reconcile import (
    ConfigChanged,
    DrainChanged,
    PeerChanged,
    ProbeDone,
    Reconciler,
    Resync,
    ServicesChanged,
    StopRequested,
    World,
    seed_health,
)
from bgpvip.status import StatusBoard
from tests.fakes import VIOLATIONS, FakeExaBGP, FakeNetlink, FakeTimers, InvariantViolation, service_decision

pytestmark = [pytest.mark.timeout(10)]

VIP = "198.51.100.10"
VIP2 = "198.51.100.11"


def make_config(**over: Any) -> Config:
    doc: dict[str, Any] = {
        "bgp": {
            "local_as": 65100,
            "peers": [{"address": "10.0.1.1", "peer_as": 65000, "local_address": "10.0.1.2"}],
        },
        "vips": [
            {"address": VIP, "name": "api", "checks": [{"type": "tcp", "port": 6443, "rise": 2, "fall": 2}]},
            {"address": VIP2, "name": "web", "checks": [{"type": "tcp", "port": 80, "rise": 1, "fall": 1}]},
        ],
        "shutdown_delay": 0.3,
    }
    doc.update(over)
    return load(doc)


def ok(at: float = 0.0) -> ProbeResult:
    return ProbeResult(ok=True, detail="connected", at=at)


def fail(detail: str = "connection refused", broken: bool = True) -> ProbeResult:
    return ProbeResult(ok=False, detail=detail, broken=broken)


API = CheckKey("api", 0)
WEB = CheckKey("web", 0)


class Harness:
    def __init__(
        self,
        config: Config,
        *,
        existing: set[Route] | None = None,
        owned: set[Any] | None = None,
        observer: Any = None,
    ):
        self.netlink = FakeNetlink()
        needs = {host_network(v.address) for v in config.vips if v.interface}
        self.exa = FakeExaBGP(self.netlink, needs_address=needs)
        self.netlink.exa = self.exa
        for r in existing or set():
            self.exa.rib[r.prefix] = r
        self.netlink.addresses |= owned or set()
        world = World(config=config, health=seed_health(config, existing or set(), 0.0))
        self.time = FakeTimers()
        self.rec = Reconciler(
            world,
            Applied(frozenset(existing or set()), frozenset(owned or set())),
            self.exa,
            self.netlink,
            clock=self.time.now,
            timer=self.time,
            observer=observer,
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        VIOLATIONS.clear()
        self.task = asyncio.create_task(self.rec.run())
        await self.settle()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        if not self.task.done():
            self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        assert VIOLATIONS == [], "a fake saw the loop break an invariant (the loop caught it)"

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def send(self, *events: Any) -> None:
        for e in events:
            self.rec.post(e)
        await self.settle()

    async def advance(self, seconds: float) -> None:
        """Fake time moves on: due timers (retries, releases) fire, the loop runs."""
        self.time.advance(seconds)
        await self.settle()

    async def until(self, cond: Callable[[], bool], limit: float = 60.0) -> None:
        """Let fake time run, timer by timer, until `cond` holds (at most `limit` fake seconds)."""
        start = self.time.now()
        await self.settle()
        while not cond():
            if self.time.now() - start > limit or not self.time.advance_to_next():
                raise AssertionError(f"not reached within {limit} fake seconds")
            await self.settle()

    def announced(self) -> set[str]:
        return {str(p.network_address) for p in self.exa.rib}

    def addresses(self) -> set[str]:
        return {str(a.ip) for _, a in self.netlink.addresses}


async def test_rise_then_announce_after_address() -> None:
    async with Harness(make_config()) as h:
        assert h.announced() == set() and h.exa.log == []
        await h.send(ProbeDone(API, ok()))
        assert h.announced() == set(), "rise=2 needs two successes"
        await h.send(ProbeDone(API, ok()))
        assert h.announced() == {VIP}
        assert h.addresses() == {VIP}
        assert h.netlink.log[0][0] == "add"  # FakeExaBGP would have failed otherwise too
        decision = next(d for d in h.rec.desired.decisions if str(d.address) == VIP)
        assert decision.reason == Reason.HEALTHY


async def test_fall_withdraws_then_removes_address_once_routers_converged() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(API, ok()), ProbeDone(API, ok()))
        await h.send(ProbeDone(API, fail()))
        assert h.announced() == {VIP}, "one failure must not withdraw (fall=2)"
        await h.send(ProbeDone(API, fail("HTTP 503", broken=False)))
        assert h.announced() == set()
        assert h.exa.verbs()[-1] == "withdraw"
        assert h.addresses() == {VIP}, "the server still answers: the address stays while routers converge"
        assert h.time.pending() == [pytest.approx(h.time.now() + 1.0)], "the loop wakes when it is due"
        d = next(d for d in h.rec.desired.decisions if str(d.address) == VIP)
        assert d.reason == Reason.CHECK_FAILING and "HTTP 503" in d.detail
        await h.advance(0.999)
        assert h.addresses() == {VIP}
        await h.advance(0.001)
        assert h.addresses() == set()
        assert h.rec.held == {} and h.time.pending() == []


async def test_a_dead_server_loses_its_address_with_the_withdraw() -> None:
    """Connection refused: nothing answers on the VIP here; local clients must go through
    the router at once instead of into a closed port."""
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(API, ok()), ProbeDone(API, ok()))
        await h.send(ProbeDone(API, fail()), ProbeDone(API, fail()))
        assert h.announced() == set() and h.addresses() == set()
        assert h.time.pending() == []


async def test_server_dying_during_the_hold_releases_at_once() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(API, ok()), ProbeDone(API, ok()))
        await h.send(
            ProbeDone(API, fail("HTTP 503", broken=False)), ProbeDone(API, fail("HTTP 503", broken=False))
        )
        assert h.announced() == set() and h.addresses() == {VIP}
        await h.send(ProbeDone(API, fail()))  # refused now: it has stopped serving
        assert h.addresses() == set()


async def test_announcing_again_during_the_hold_keeps_the_address() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(WEB, ok()))
        await h.send(ProbeDone(WEB, fail("HTTP 503", broken=False)))
        assert h.announced() == set() and h.addresses() == {VIP2}
        await h.advance(0.5)
        await h.send(ProbeDone(WEB, ok()))
        assert h.announced() == {VIP2}
        await h.advance(5.0)
        assert h.addresses() == {VIP2}, "the release was cancelled"
        assert [v for v, *_ in h.netlink.log].count("remove") == 0


async def test_removing_a_vip_from_the_config_holds_its_address_too() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(WEB, ok()), ProbeDone(API, ok()), ProbeDone(API, ok()))
        only_web = [
            {"address": VIP2, "name": "web", "checks": [{"type": "tcp", "port": 80, "rise": 1, "fall": 1}]}
        ]
        await h.send(ConfigChanged(make_config(vips=only_web)))
        assert h.announced() == {VIP2} and h.addresses() == {VIP, VIP2}
        await h.advance(1.0)
        assert h.addresses() == {VIP2}


async def test_release_delay_zero_removes_the_address_right_after_the_withdraw() -> None:
    async with Harness(make_config(release_delay=0)) as h:
        await h.send(ProbeDone(WEB, ok()))
        await h.send(ProbeDone(WEB, fail("HTTP 503", broken=False)))
        assert h.announced() == set() and h.addresses() == set()


async def test_burst_of_events_is_coalesced() -> None:
    async with Harness(make_config()) as h:
        before = h.rec.reconciles
        for _ in range(10):
            h.rec.post(ProbeDone(WEB, ok()))
        await h.settle()
        assert h.announced() == {VIP2}
        assert h.rec.reconciles - before == 1


async def test_on_idle_runs_once_a_burst_is_reconciled_and_nothing_waits() -> None:
    h = Harness(make_config())
    seen: list[tuple[int, int]] = []  # (reconciles so far, events still queued) at each call
    h.rec._on_idle = lambda: seen.append((h.rec.reconciles, h.rec.queue.qsize()))
    async with h:
        assert seen == [(1, 0)]  # the first reconcile at start
        for _ in range(10):
            h.rec.post(ProbeDone(WEB, ok()))
        await h.settle()
        assert h.announced() == {VIP2}
        assert seen == [(1, 0), (2, 0)]  # one burst, one reconcile, one call
        h.rec.post(ProbeDone(WEB, ok()))  # no change: no reconcile, no call
        await h.settle()
        assert seen == [(1, 0), (2, 0)]


async def test_restart_keeps_routes_found_in_exabgp() -> None:
    cfg = make_config()
    existing = {vip_route(cfg, cfg.vips[0])}
    owned = {("lo", ipaddress.ip_interface(f"{VIP}/32"))}
    async with Harness(cfg, existing=existing, owned=owned) as h:
        assert h.announced() == {VIP}, "a restarted helper must not withdraw a route ExaBGP carries"
        assert "withdraw" not in h.exa.verbs()
        assert h.rec.world.health[API].state == healthmod.State.UP
        await h.send(ProbeDone(API, fail()), ProbeDone(API, fail()))
        assert h.announced() == set()


async def test_stray_route_in_exabgp_is_withdrawn() -> None:
    stray = Route(prefix=host_network("198.51.100.99"))
    async with Harness(make_config(), existing={stray}) as h:
        assert h.announced() == set()
        assert h.exa.verbs() == ["withdraw"]


async def test_drain_withdraws_but_keeps_address_and_undrain_returns() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(WEB, ok()))
        await h.send(DrainChanged(True))
        assert h.announced() == set()
        assert h.addresses() == {VIP2}, "a drain lets established connections finish"
        d = next(d for d in h.rec.desired.decisions if str(d.address) == VIP2)
        assert d.reason == Reason.DRAINED
        await h.send(DrainChanged(False))
        assert h.announced() == {VIP2}


async def test_stop_withdraws_waits_then_removes_addresses() -> None:
    """shutdown_delay is 0.3, release_delay the default 1.0: the stop waits the longer one."""
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(WEB, ok()))
        t0 = h.time.now()
        await h.send(StopRequested())
        assert h.announced() == set()
        assert h.addresses() == {VIP2}, "addresses stay while routers converge"
        await h.advance(0.99)
        assert h.addresses() == {VIP2} and not h.rec.stopped.is_set()
        await h.until(h.rec.stopped.is_set)
        assert h.time.now() - t0 == pytest.approx(1.0)
        assert h.addresses() == set()
        assert h.task is not None
        await h.task  # run() returns after the stop sequence


async def test_stop_waits_shutdown_delay_when_it_is_longer() -> None:
    async with Harness(make_config(shutdown_delay=3.0)) as h:
        await h.send(ProbeDone(WEB, ok()))
        t0 = h.time.now()
        await h.send(StopRequested())
        await h.until(h.rec.stopped.is_set)
        assert h.time.now() - t0 == pytest.approx(3.0)


async def test_failed_announce_is_retried_with_backoff() -> None:
    async with Harness(make_config()) as h:
        h.exa.fail_next = 2
        await h.send(ProbeDone(WEB, ok()))
        assert h.announced() == set()
        await h.until(lambda: h.announced() == {VIP2})
        assert h.exa.verbs().count("announce-error") == 2


async def test_adapter_exception_does_not_kill_the_loop() -> None:
    async with Harness(make_config()) as h:
        h.exa.raise_next = 1
        await h.send(ProbeDone(WEB, ok()))
        await h.until(lambda: h.announced() == {VIP2})
        assert h.task is not None and not h.task.done()


async def test_missing_interface_is_reported_and_nothing_announced() -> None:
    async with Harness(make_config()) as h:
        h.netlink.fail_add.add(ipaddress.ip_interface(f"{VIP2}/32"))
        await h.send(ProbeDone(WEB, ok()))
        await asyncio.sleep(0.3)
        assert h.announced() == set(), "never announce an address the host does not hold"
        h.netlink.fail_add.clear()
        await h.until(lambda: h.announced() == {VIP2})


async def test_attribute_change_reannounces_without_withdraw() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(WEB, ok()))
        cfg2 = make_config(priority=200)
        await h.send(ConfigChanged(cfg2))
        assert h.exa.rib[host_network(VIP2)].attributes.med == 55
        assert "withdraw" not in h.exa.verbs()


async def test_reload_keeps_health_of_unchanged_checks_and_drops_removed_vip() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(WEB, ok()), ProbeDone(API, ok()), ProbeDone(API, ok()))
        assert h.announced() == {VIP, VIP2}
        doc_vips = [
            {"address": VIP2, "name": "web", "checks": [{"type": "tcp", "port": 80, "rise": 1, "fall": 1}]}
        ]
        await h.send(ConfigChanged(make_config(vips=doc_vips)))
        assert h.announced() == {VIP2}
        await h.advance(1.0)  # release_delay
        assert h.addresses() == {VIP2}
        assert h.rec.world.health[WEB].state == healthmod.State.UP


async def test_late_result_of_removed_check_is_ignored() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(CheckKey("gone", 3), ok()))
        assert CheckKey("gone", 3) not in h.rec.world.health


async def test_next_delay_is_fast_while_settling() -> None:
    async with Harness(make_config()) as h:
        assert h.rec.next_delay(API) == 0.02  # INIT
        await h.send(ProbeDone(API, ok()), ProbeDone(API, ok()))
        assert h.rec.next_delay(API) == 0.1  # UP, steady
        await h.send(ProbeDone(API, fail()))
        assert h.rec.next_delay(API) == healthmod.BROKEN_RECHECK_DELAY


async def test_next_delay_accounts_for_the_result_not_yet_folded_in() -> None:
    """The probe asks for its next delay right after emitting, before the loop ran: a first
    broken failure must be confirmed at once, not after a full interval."""
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(API, ok()), ProbeDone(API, ok()))
        assert h.rec.next_delay(API) == 0.1
        pending = fail()
        h.rec.post(ProbeDone(API, pending))  # queued, not processed yet
        assert h.rec.next_delay(API, pending) == healthmod.BROKEN_RECHECK_DELAY
        await h.settle()
        assert h.rec.next_delay(API, pending) == healthmod.BROKEN_RECHECK_DELAY  # not stepped twice


async def test_peer_events_are_recorded() -> None:
    async with Harness(make_config()) as h:
        await h.send(PeerChanged("10.0.1.1", "up"))
        assert h.rec.world.peers["10.0.1.1"].state == "up"


async def test_fake_exabgp_catches_withdraw_of_unknown_route() -> None:
    exa = FakeExaBGP()
    with pytest.raises(InvariantViolation):
        await exa.withdraw([Route(prefix=host_network(VIP))])


async def test_resync_heals_a_route_lost_from_exabgp_without_reannouncing_the_rest() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(WEB, ok()), ProbeDone(API, ok()), ProbeDone(API, ok()))
        assert h.announced() == {VIP, VIP2}
        del h.exa.rib[host_network(VIP)]  # lost behind our back (e.g. ExaBGP restarted)
        before = len(h.exa.log)
        await h.send(Resync())
        assert h.announced() == {VIP, VIP2}
        (verb, routes), *rest = h.exa.log[before:]
        assert (verb, [str(r.prefix) for r in routes], rest) == ("announce", [f"{VIP}/32"], [])


async def test_resync_keeps_the_route_objects_it_already_had() -> None:
    """A resync reads ExaBGP's routes back as new objects; equal ones are replaced by the
    objects the loop already holds, so later passes compare by identity (and nothing is held
    twice with 10,000 Service routes)."""
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(WEB, ok()), ProbeDone(API, ok()), ProbeDone(API, ok()))
        held = {r.key: r for r in h.rec.applied.routes}
        h.exa.rib = {p: dataclasses.replace(r) for p, r in h.exa.rib.items()}  # fresh, equal copies
        await h.send(Resync())
        assert h.announced() == {VIP, VIP2}
        assert all(r is held[r.key] for r in h.rec.applied.routes)


async def test_first_list_pages_announce_early_and_the_complete_table_takes_over() -> None:
    """Before the first complete list: routes ExaBGP had are held, pages only add; the
    complete table then decides alone (a held route nobody wants any more is withdrawn)."""
    config = make_config(vips=[], pools=[{"name": "p", "addresses": ["203.0.113.0/24"]}])
    held = Route(prefix=host_network("203.0.113.9"))
    h = Harness(config, existing={held})
    h.rec.world = dataclasses.replace(h.rec.world, services=None)
    async with h:
        assert h.announced() == {"203.0.113.9"}
        await h.send(ServicesChanged((service_decision("203.0.113.1", "a"),), partial=True))
        assert h.announced() == {"203.0.113.9", "203.0.113.1"}
        await h.send(
            ServicesChanged(
                (service_decision("203.0.113.1", "a"), service_decision("203.0.113.2", "b")), partial=True
            )
        )
        assert h.announced() == {"203.0.113.9", "203.0.113.1", "203.0.113.2"}
        complete = (
            service_decision("203.0.113.1", "a"),
            service_decision("203.0.113.2", "b"),
            service_decision("203.0.113.9", "c", False),
        )
        await h.send(ServicesChanged(complete))
        assert h.announced() == {"203.0.113.1", "203.0.113.2"}
        # pages that arrive late (they cannot, but a stale one must not count) change nothing
        await h.send(ServicesChanged((service_decision("203.0.113.3", "d"),), partial=True))
        assert h.announced() == {"203.0.113.1", "203.0.113.2"}


class ReadsOnlyChanges(FakeExaBGP):
    """A route port that, like ExaBGP's session, can say "the RIB is as at the last read"."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.last: set[Route] | None = None
        self.reads = 0

    async def announced_changed(self) -> set[Route] | None:
        self.reads += 1
        now = set(self.rib.values())
        if now == self.last:
            return None
        self.last = now
        return now


async def test_resync_with_an_unchanged_rib_keeps_what_it_read_last() -> None:
    h = Harness(make_config())
    exa = ReadsOnlyChanges(h.netlink, needs_address=h.exa.needs_address)
    h.exa = h.netlink.exa = exa
    h.rec._routes = exa
    async with h:
        await h.send(ProbeDone(WEB, ok()), ProbeDone(API, ok()), ProbeDone(API, ok()))
        assert h.announced() == {VIP, VIP2}
        await h.send(Resync())  # a real read: the truth is what the loop has
        assert exa.reads == 1 and h.announced() == {VIP, VIP2}
        before = len(exa.log)
        await h.send(Resync())  # unchanged: nothing is re-announced or withdrawn
        assert exa.reads == 2 and exa.log[before:] == []
        assert {str(r.prefix.network_address) for r in h.rec.applied.routes} == {VIP, VIP2}
        del exa.rib[host_network(VIP)]  # lost behind our back: the next read sees it
        await h.send(Resync())
        assert h.announced() == {VIP, VIP2}
        assert exa.log[-1][0] == "announce"


# ------------------------------------------------------------------ one failing prefix blocks no other


async def test_a_failing_address_blocks_no_other_prefix() -> None:
    """Two healthy VIPs; the second's interface is missing. The first, whose address is already
    on `lo`, is announced all the same, and so are Service routes; the second is retried on
    its own and reported."""
    cfg = make_config(pools=[{"name": "p", "addresses": ["203.0.113.0/24"]}])
    owned = {("lo", ipaddress.ip_interface(f"{VIP}/32"))}
    async with Harness(cfg, owned=owned) as h:
        h.netlink.fail_add.add(ipaddress.ip_interface(f"{VIP2}/32"))
        await h.send(
            ServicesChanged((service_decision("203.0.113.1", "a"),)),
            ProbeDone(API, ok()),
            ProbeDone(API, ok()),
            ProbeDone(WEB, ok()),
        )
        assert h.announced() == {VIP, "203.0.113.1"}, "the failing VIP held nothing else back"
        assert not h.netlink.held(VIP2)
        (key,) = h.rec.failures
        failure = h.rec.failures[key]
        assert key == (4, int(ipaddress.ip_address(VIP2)))
        assert (failure.step, failure.reason, failure.attempts) == ("address-add", "addressFailed", 1)
        assert "No such device" in failure.error
        # retried on the shared timer, alone: nothing else is sent again
        before = len(h.exa.log)
        await h.until(lambda: h.rec.failures[key].attempts == 3)
        assert h.exa.log[before:] == [] and h.announced() == {VIP, "203.0.113.1"}
        h.netlink.fail_add.clear()
        await h.until(lambda: VIP2 in h.announced())
        assert h.rec.failures == {}
        assert h.netlink.held(VIP2)


async def test_a_rejected_announce_batch_blocks_no_address_step() -> None:
    """ExaBGP answers `error` for a batch: every prefix in it is reported and retried, while
    the address steps and withdrawals of the pass stand."""
    async with Harness(make_config()) as h:
        h.exa.reject.add(host_network(VIP2))
        await h.send(ProbeDone(WEB, ok()))
        assert h.announced() == set() and h.addresses() == {VIP2}
        failure = next(iter(h.rec.failures.values()))
        assert (failure.step, failure.reason) == ("announce", "announceFailed")
        h.exa.reject.clear()
        await h.until(lambda: h.announced() == {VIP2})
        assert h.rec.failures == {}


async def test_a_failing_withdraw_keeps_the_address_and_blocks_no_announce() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(WEB, ok()))
        h.exa.fail_next = 1
        await h.send(ProbeDone(WEB, fail()), ProbeDone(API, ok()), ProbeDone(API, ok()))
        assert VIP in h.announced(), "announced in the pass whose withdraw failed"
        assert h.netlink.held(VIP2), "the address stays while its route may still be announced"
        await h.until(lambda: h.announced() == {VIP} and not h.netlink.held(VIP2))


# ------------------------------------------------------------------ an address that is not ours


async def test_an_address_someone_else_holds_is_announced_reported_and_never_removed() -> None:
    theirs = ("lo", ipaddress.ip_interface(f"{VIP2}/32"))
    async with Harness(make_config()) as h:
        h.netlink.foreign.add(theirs)
        await h.send(ProbeDone(WEB, ok()))
        assert h.announced() == {VIP2}, "the host holds the address: the route is true"
        assert h.rec.applied.foreign == {theirs} and h.rec.failures == {}
        for _ in range(3):  # resyncs neither add it again nor warn again
            await h.send(Resync())
        assert [v for v, *_ in h.netlink.log] == ["add-not-ours"]
        await h.send(ProbeDone(WEB, fail()))
        await h.advance(5.0)
        assert h.announced() == set()
        assert theirs in h.netlink.foreign  # FakeNetlink fails the test on removing it


async def test_a_foreign_address_that_goes_away_is_added_as_bgpvips_own() -> None:
    theirs = ("lo", ipaddress.ip_interface(f"{VIP2}/32"))
    async with Harness(make_config()) as h:
        h.netlink.foreign.add(theirs)
        await h.send(ProbeDone(WEB, ok()))
        h.netlink.foreign.clear()  # its owner removed it
        await h.send(Resync())
        assert theirs in h.netlink.addresses and h.rec.applied.foreign == frozenset()
        assert h.announced() == {VIP2}


# ------------------------------------------------------------------ what `bgpvip routes` shows


async def test_routes_shows_failed_held_and_foreign_prefixes_with_their_reasons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    board = StatusBoard("n1")
    # the board reads the monotonic clock for "how long"; the loop runs on fake time
    async with Harness(make_config(), observer=board) as h:
        monkeypatch.setattr(time, "monotonic", h.time.now)
        h.netlink.fail_add.add(ipaddress.ip_interface(f"{VIP2}/32"))
        await h.send(ProbeDone(WEB, ok()), ProbeDone(API, ok()), ProbeDone(API, ok()))
        await h.until(lambda: h.rec.failures and next(iter(h.rec.failures.values())).attempts == 2)
        by_address = {d["address"]: d for d in board.snapshot()["decisions"]}
        web, api = by_address[VIP2], by_address[VIP]
        assert web["reason"] == "healthy" and not web["announced"]
        assert web["failure"]["reason"] == "addressFailed" and web["failure"]["attempts"] == 2
        assert web["failure"]["step"] == "address-add" and "No such device" in web["failure"]["error"]
        assert api["failure"] is None and api["announced"]
        body = board.metrics()[2].decode()
        assert 'bgpvip_prefixes_failing{reason="addressFailed"} 1.0' in body
        table = render_routes_table(board.snapshot())
        line = next(x for x in table.splitlines() if x.startswith(f"{VIP2}/32"))
        assert " no " in line and "addressFailed" in line and "address-add failed 2x" in line
        assert "wanted: healthy" in line

        # the API VIP's check fails while its server still answers: the address is held
        await h.send(
            ProbeDone(API, fail("HTTP 503", broken=False)), ProbeDone(API, fail("HTTP 503", broken=False))
        )
        api = {d["address"]: d for d in board.snapshot()["decisions"]}[VIP]
        assert api["address_held_seconds"] == pytest.approx(1.0)
        assert "bgpvip_addresses_held 1.0" in board.metrics()[2].decode()
        line = next(
            x for x in render_routes_table(board.snapshot()).splitlines() if x.startswith(f"{VIP}/32")
        )
        assert "address kept 1.0s more while routers converge" in line

        h.netlink.fail_add.clear()
        h.netlink.foreign.add(("lo", ipaddress.ip_interface(f"{VIP2}/32")))
        await h.until(lambda: VIP2 in h.announced())
        web = {d["address"]: d for d in board.snapshot()["decisions"]}[VIP2]
        assert web["failure"] is None and web["announced"] and web["address_not_owned"] == "lo"
        body = board.metrics()[2].decode()
        assert "bgpvip_addresses_not_owned 1.0" in body and 'reason="addressFailed"' not in body
        line = next(
            x for x in render_routes_table(board.snapshot()).splitlines() if x.startswith(f"{VIP2}/32")
        )
        assert "address on lo is not bgpvip's" in line


# ------------------------------------------------------------------ hitless reloads


def vips_doc(api_checks: list[dict[str, Any]], web_checks: list[dict[str, Any]] | None = None) -> list[Any]:
    return [
        {"address": VIP, "name": "api", "checks": api_checks},
        {
            "address": VIP2,
            "name": "web",
            "checks": web_checks or [{"type": "tcp", "port": 80, "rise": 1, "fall": 1}],
        },
    ]


async def test_an_edited_check_goes_on_from_the_state_of_the_one_it_replaces() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(API, ok()), ProbeDone(API, ok()), ProbeDone(WEB, ok()))
        assert h.announced() == {VIP, VIP2}
        edited = make_config(vips=vips_doc([{"type": "tcp", "port": 6444, "rise": 3, "fall": 2}]))
        before = len(h.exa.log)
        await h.send(ConfigChanged(edited))
        assert h.announced() == {VIP, VIP2} and h.exa.log[before:] == [], "a reload is hitless"
        assert h.rec.world.health[API].state == healthmod.State.UP
        # the new definition decides from here: fall=2
        await h.send(ProbeDone(API, fail()))
        assert VIP in h.announced()
        await h.send(ProbeDone(API, fail()))
        assert VIP not in h.announced()


async def test_an_edited_check_of_a_down_vip_must_still_rise() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(API, fail()))
        edited = make_config(vips=vips_doc([{"type": "tcp", "port": 6444, "rise": 2, "fall": 2}]))
        await h.send(ConfigChanged(edited))
        assert h.rec.world.health[API].state == healthmod.State.DOWN
        await h.send(ProbeDone(API, ok()))
        assert VIP not in h.announced()
        await h.send(ProbeDone(API, ok()))
        assert VIP in h.announced()


async def test_a_check_added_to_an_announced_vip_starts_up_like_after_a_restart() -> None:
    async with Harness(make_config()) as h:
        await h.send(ProbeDone(API, ok()), ProbeDone(API, ok()))
        two = [{"type": "tcp", "port": 6443, "rise": 2, "fall": 2}, {"type": "tcp", "port": 2379, "fall": 1}]
        before = len(h.exa.log)
        await h.send(ConfigChanged(make_config(vips=vips_doc(two))))
        assert h.exa.log[before:] == [] and VIP in h.announced()
        assert h.rec.world.health[CheckKey("api", 1)].state == healthmod.State.UP
        await h.send(ProbeDone(CheckKey("api", 1), fail()))
        assert VIP not in h.announced(), "its own fall count then decides"
        # a check added to a VIP that is not announced proves itself first
        three = [*two, {"type": "tcp", "port": 2380}]
        await h.send(ConfigChanged(make_config(vips=vips_doc(three))))
        assert h.rec.world.health[CheckKey("api", 2)].state == healthmod.State.INIT


# ---------------------------------------------------------------------------- lower-preference checks

SOFT_API = [
    {"type": "tcp", "port": 6443, "rise": 2, "fall": 2},
    {"type": "tcp", "port": 2379, "rise": 2, "fall": 2, "on_failure": "lower-preference"},
]
ETCD = CheckKey("api", 1)


def api_route(h: Harness) -> Route:
    return next(r for p, r in h.exa.rib.items() if str(p.network_address) == VIP)


async def test_a_failing_lower_preference_check_re_announces_with_a_penalty_and_never_withdraws() -> None:
    async with Harness(make_config(vips=vips_doc(SOFT_API))) as h:
        await h.send(*[ProbeDone(k, ok()) for k in (API, ETCD, API, ETCD)])
        assert api_route(h).attributes.med == 0, "a VIP with a MED penalty always carries a MED"
        before = len(h.exa.log)
        await h.send(
            ProbeDone(ETCD, fail("HTTP 500", broken=False)), ProbeDone(ETCD, fail("HTTP 500", False))
        )
        assert [v for v, _ in h.exa.log[before:]] == ["announce"], "replaced in place, not withdrawn"
        assert api_route(h).attributes.med == 1000
        assert VIP in h.addresses() and h.rec.held == {}
        d = next(d for d in h.rec.desired.decisions if str(d.address) == VIP)
        assert (d.announce, d.reason) == (True, Reason.DEGRADED)
        assert d.detail == "announced with lower preference (MED +1000): checks[1] (tcp): HTTP 500"
        # a server killed behind the lower-preference check changes nothing more
        await h.send(ProbeDone(ETCD, fail()))
        assert [v for v, _ in h.exa.log[before:]] == ["announce"]
        await h.send(ProbeDone(ETCD, ok()), ProbeDone(ETCD, ok()))
        assert [v for v, _ in h.exa.log[before:]] == ["announce", "announce"]
        assert api_route(h).attributes.med == 0
        assert "withdraw" not in h.exa.verbs()
        # the withdraw check still withdraws
        await h.send(ProbeDone(API, fail()), ProbeDone(API, fail()))
        assert VIP not in h.announced()


@pytest.mark.parametrize(("med", "soft_state"), [(1000, healthmod.State.INIT), (0, healthmod.State.UP)])
async def test_a_restart_keeps_a_penalised_route_penalised_until_its_checks_pass(
    med: int, soft_state: healthmod.State
) -> None:
    """A restarted helper finds the route in ExaBGP: with a penalty, its lower-preference checks
    start over (the route keeps its penalty until they rise), without one they start UP."""
    cfg = make_config(vips=vips_doc(SOFT_API))
    existing = {Route(prefix=host_network(VIP), attributes=Attributes(med=med))}
    owned = {("lo", ipaddress.ip_interface(f"{VIP}/32"))}
    async with Harness(cfg, existing=existing, owned=owned) as h:
        assert h.rec.world.health[API].state == healthmod.State.UP
        assert h.rec.world.health[ETCD].state == soft_state
        assert h.exa.log == [], "nothing to change: the route stays as ExaBGP has it"
        assert api_route(h).attributes.med == med
        await h.send(ProbeDone(ETCD, ok()), ProbeDone(ETCD, ok()))
        assert api_route(h).attributes.med == 0
        assert "withdraw" not in h.exa.verbs()
