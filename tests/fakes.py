"""In-memory fakes for the reconcile loop's ports. They enforce invariants, MetalLB-style:
misuse fails the test at the point of the mistake instead of producing a wrong state."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from bgpvip.core.model import Decision, IPInterface, IPNetwork, Reason, Route, host_network


class InvariantViolation(AssertionError):
    pass


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
            raise InvariantViolation("announce of an empty batch")
        if self._maybe_fail():
            self.log.append(("announce-error", tuple(routes)))
            return False
        for r in routes:
            held = self.netlink is None or any(
                a.ip == r.prefix.network_address for _, a in self.netlink.addresses
            )
            if r.prefix in self.needs_address and not held:
                raise InvariantViolation(f"announced {r.prefix} before its address was on an interface")
            self.rib[r.prefix] = r
        self.log.append(("announce", tuple(routes)))
        return True

    async def withdraw(self, routes: Sequence[Route]) -> bool:
        if not routes:
            raise InvariantViolation("withdraw of an empty batch")
        for r in routes:
            if r.prefix not in self.rib:
                raise InvariantViolation(f"withdrew {r.prefix}, which was never announced")
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
    """Plays the kernel's addresses. Fails on removing an address whose route is still announced."""

    def __init__(self) -> None:
        self.addresses: set[tuple[str, IPInterface]] = set()
        self.exa: FakeExaBGP | None = None
        self.log: list[tuple[str, str, IPInterface]] = []
        self.fail_add: set[IPInterface] = set()

    def add(self, ifname: str, address: IPInterface) -> None:
        if address in self.fail_add:
            raise OSError(19, f"No such device: {ifname}")
        self.addresses.add((ifname, address))
        self.log.append(("add", ifname, address))

    def remove(self, ifname: str, address: IPInterface) -> None:
        if self.exa is not None and address.network in self.exa.rib:
            raise InvariantViolation(f"removed {address} from {ifname} while its route is announced")
        self.addresses.discard((ifname, address))
        self.log.append(("remove", ifname, address))

    def owned(self) -> set[tuple[str, IPInterface]]:
        return set(self.addresses)


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
