"""In-memory fakes for the reconcile loop's ports. They enforce invariants, MetalLB-style:
misuse fails the test at the point of the mistake instead of producing a wrong state."""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections.abc import Callable, Iterable, Sequence

from bgpvip.core.model import Decision, IPInterface, IPNetwork, Reason, Route, host_network


class InvariantViolation(AssertionError):
    pass


VIOLATIONS: list[str] = []
"""Every invariant violation a fake raised, also those the loop caught as adapter errors:
test harnesses assert it is empty at the end (and clear it at the start)."""


def violation(message: str) -> InvariantViolation:
    VIOLATIONS.append(message)
    return InvariantViolation(message)


class FakeExaBGP:
    """Plays ExaBGP's Adj-RIB-Out. Fails on withdrawing a route that was never announced and
    on announcing a VIP whose address is not on its interface yet."""

    def __init__(
        self, netlink: FakeNetlink | None = None, *, needs_address: Iterable[IPNetwork] = ()
    ) -> None:
        self.rib: dict[IPNetwork, Route] = {}
        self.log: list[tuple[str, tuple[Route, ...]]] = []
        self.netlink = netlink
        self.needs_address = set(needs_address)
        self.fail_next = 0
        self.raise_next = 0
        self.reject: set[IPNetwork] = set()
        """Prefixes ExaBGP answers `error` for: a batch holding one of them fails whole."""

    def _maybe_fail(self) -> bool:
        if self.raise_next:
            self.raise_next -= 1
            raise TimeoutError("fake ExaBGP did not answer")
        if self.fail_next:
            self.fail_next -= 1
            return True
        return False

    async def announce(self, routes: Sequence[Route]) -> bool:
        if not routes:
            raise violation("announce of an empty batch")
        if self._maybe_fail() or any(r.prefix in self.reject for r in routes):
            self.log.append(("announce-error", tuple(routes)))
            return False
        for r in routes:
            held = self.netlink is None or self.netlink.held(str(r.prefix.network_address))
            if r.prefix in self.needs_address and not held:
                raise violation(f"announced {r.prefix} before its address was on an interface")
            self.rib[r.prefix] = r
        self.log.append(("announce", tuple(routes)))
        return True

    async def withdraw(self, routes: Sequence[Route]) -> bool:
        if not routes:
            raise violation("withdraw of an empty batch")
        for r in routes:
            if r.prefix not in self.rib:
                raise violation(f"withdrew {r.prefix}, which was never announced")
        if self._maybe_fail():
            self.log.append(("withdraw-error", tuple(routes)))
            return False
        for r in routes:
            del self.rib[r.prefix]
        self.log.append(("withdraw", tuple(routes)))
        return True

    async def announced(self) -> set[Route]:
        return set(self.rib.values())

    def verbs(self) -> list[str]:
        return [verb for verb, _ in self.log]


class FakeNetlink:
    """Plays the kernel's addresses. Fails on removing an address whose route is still
    announced, and on removing or adding over an address that is not bgpvip's (`foreign`)."""

    def __init__(self) -> None:
        self.addresses: set[tuple[str, IPInterface]] = set()
        """bgpvip's own addresses."""
        self.foreign: set[tuple[str, IPInterface]] = set()
        """Addresses someone else put there: `add` leaves them alone and answers False."""
        self.exa: FakeExaBGP | None = None
        self.log: list[tuple[str, str, IPInterface]] = []
        self.fail_add: set[IPInterface] = set()
        self.fail_remove: set[IPInterface] = set()

    def add(self, ifname: str, address: IPInterface) -> bool:
        if address in self.fail_add:
            raise OSError(19, f"No such device: {ifname}")
        if (ifname, address) in self.foreign:
            self.log.append(("add-not-ours", ifname, address))
            return False
        self.addresses.add((ifname, address))
        self.log.append(("add", ifname, address))
        return True

    def remove(self, ifname: str, address: IPInterface) -> bool:
        if self.exa is not None and address.network in self.exa.rib:
            raise violation(f"removed {address} from {ifname} while its route is announced")
        if (ifname, address) in self.foreign:
            raise violation(f"removed {address} from {ifname}, which is not bgpvip's")
        if address in self.fail_remove:
            raise OSError(1, "Operation not permitted")
        self.addresses.discard((ifname, address))
        self.log.append(("remove", ifname, address))
        return True

    def has(self, ifname: str, address: IPInterface) -> bool:
        return (ifname, address) in self.addresses | self.foreign

    def owned(self) -> set[tuple[str, IPInterface]]:
        return set(self.addresses)

    def held(self, ip: str) -> bool:
        """Whether the host answers on `ip` (bgpvip's address or someone else's)."""
        return any(str(a.ip) == ip for _, a in self.addresses | self.foreign)


class FakeTimers:
    """Fake time for the reconcile loop: its `clock` and its `timer` (`loop.call_later`).
    Nothing fires until the test advances the time."""

    class Handle:
        def __init__(self) -> None:
            self.cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self._heap: list[tuple[float, int, FakeTimers.Handle, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.time

    def __call__(self, delay: float, callback: Callable[[], None]) -> FakeTimers.Handle:
        if delay < 0:
            raise violation(f"timer armed {delay} s in the past")
        handle = FakeTimers.Handle()
        heapq.heappush(self._heap, (self.time + delay, next(self._seq), handle, callback))
        return handle

    def pending(self) -> list[float]:
        """When the armed timers fire, earliest first."""
        return sorted(when for when, _, h, _ in self._heap if not h.cancelled)

    def advance(self, seconds: float) -> int:
        """Move the time on, firing every timer due by then (in order). Returns how many fired."""
        target = self.time + seconds
        fired = 0
        while self._heap and self._heap[0][0] <= target:
            when, _, handle, callback = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self.time = max(self.time, when)
            callback()
            fired += 1
        self.time = target
        return fired

    def advance_to_next(self) -> bool:
        """Jump to the earliest armed timer and fire it; False when none is armed."""
        due = self.pending()
        if not due:
            return False
        self.advance(max(0.0, due[0] - self.time))
        return True


def service_decision(ip: str, name: str, announce: bool = True) -> Decision:
    """A Service decision as the decider makes it: `service/default/<name>` announces `ip` (or
    has no ready endpoint)."""
    return Decision(
        address=ipaddress.ip_address(ip),
        announce=announce,
        reason=Reason.HAS_ENDPOINTS if announce else Reason.NO_READY_ENDPOINTS,
        source=f"service/default/{name}",
        route=Route(prefix=host_network(ip)),
    )
