"""diff(): what takes what is applied to what is desired, as one independent unit per prefix.

Pure side of the line. Every prefix is its own unit: one that fails (its interface is missing,
its address is someone else's) never holds back another. The reconcile loop executes the
units of a plan together, in phases, so that ExaBGP still gets one line for many prefixes:
one batched withdraw, then the address steps unit by unit, then one batched announce of every
unit whose earlier steps succeeded. A unit whose step failed skips the rest of its steps.

Within a unit the order encodes the safety rules of the brief: withdraw the route, then
release the address (a host never announces an address it no longer holds); add the address,
then announce (a router never sends traffic before the host accepts it). A route whose
attributes changed is re-announced, never withdrawn first: BGP replaces it in place, so
traffic does not blink.

An address is released only once the router has stopped sending traffic for it: after a
withdrawal it stays for `Desired.release_delay` (the loop records when that is due, from the
moment ExaBGP acknowledged the withdraw, and wakes up then), unless the server behind it was
seen to die (`Desired.release_now`), when nothing would answer on it anyway and local clients
are better off going through the router at once. Wanting the address again before the delay
is over simply keeps it.

Two more cases follow from the same rules. An address that moves to another interface is
added there before it is removed from the old one, so the host holds it throughout and its
route stays up. An address that bgpvip stops holding anywhere while its route is still
wanted (`interface` set to null) takes the route down first, is released once due, and the
route is announced again after that.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

from bgpvip.core.model import (
    Action,
    AddAddress,
    Announce,
    Applied,
    Desired,
    IPInterface,
    RemoveAddress,
    Route,
    Withdraw,
)

Key = tuple[int, int]
"""A prefix: (IP version, address as an integer), as `Route.key`."""
Address = tuple[str, IPInterface]
"""(interface name, address/prefixlen)."""


def address_key(a: Address) -> Key:
    return (a[1].version, int(a[1].ip))


def _route_key(r: Route) -> Key:
    return r.key


def _addr_order(a: Address) -> tuple[str, int, int]:
    return (a[0], a[1].version, int(a[1].ip))


@dataclass(frozen=True, slots=True)
class Unit:
    """Everything one prefix needs whose addresses change, in the order it must happen."""

    key: Key
    withdraw: Route | None = None
    release: tuple[Address, ...] = ()
    """Addresses removed in this pass, after the withdraw."""
    hold: tuple[Address, ...] = ()
    """Addresses to release later: due `hold_for` seconds after the withdraw is acknowledged."""
    hold_for: float = 0.0
    add: tuple[Address, ...] = ()
    move_away: tuple[Address, ...] = ()
    """Removed after `add`: the address stays on another interface."""
    announce: Route | None = None
    waiting_until: float | None = None
    """Nothing happens to this prefix before then: its address is held after a withdrawal."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The units of one pass. Prefixes whose addresses do not change (all Service routes) are
    kept as plain route lists: 10,000 of them cost set operations, not 10,000 objects."""

    units: tuple[Unit, ...] = ()
    """Sorted by key."""
    withdraw_only: tuple[Route, ...] = ()
    announce_only: tuple[Route, ...] = ()
    next_due: float | None = None
    """When the earliest held address becomes due for release; None when none waits."""

    def __bool__(self) -> bool:
        return bool(self.withdraw_only or self.announce_only or any(_acts(u) for u in self.units))

    def withdraws(self, skip: Container[Key] = frozenset()) -> tuple[Route, ...]:
        """The one batched withdraw of this pass, sorted."""
        routes = [u.withdraw for u in self.units if u.withdraw is not None and u.key not in skip]
        return _merge(self.withdraw_only, routes, skip)

    def announces(self, skip: Container[Key] = frozenset()) -> tuple[Route, ...]:
        """The one batched announce of this pass without the units in `skip` (those that failed)."""
        routes = [u.announce for u in self.units if u.announce is not None and u.key not in skip]
        return _merge(self.announce_only, routes, skip)

    def actions(self) -> tuple[Action, ...]:
        """The plan as one sequence, each phase sorted: withdraw, releases, adds, removals of
        moved addresses, announce. What the loop does when nothing fails."""
        out: list[Action] = []
        withdraw = self.withdraws()
        if withdraw:
            out.append(Withdraw(withdraw))
        for kind, field in ((RemoveAddress, "release"), (AddAddress, "add"), (RemoveAddress, "move_away")):
            step = sorted((a for u in self.units for a in getattr(u, field)), key=_addr_order)
            out.extend(kind(ifname, addr) for ifname, addr in step)
        announce = self.announces()
        if announce:
            out.append(Announce(announce))
        return tuple(out)


def _acts(u: Unit) -> bool:
    return bool(u.withdraw or u.release or u.hold or u.add or u.move_away or u.announce)


def _merge(plain: tuple[Route, ...], more: list[Route], skip: Container[Key]) -> tuple[Route, ...]:
    if skip:  # an empty collection skips nothing: no pass over 10,000 routes
        plain = tuple(r for r in plain if r.key not in skip)
    if not more:
        return plain
    return tuple(sorted((*plain, *more), key=_route_key))


def diff(
    desired: Desired,
    applied: Applied,
    *,
    now: float = 0.0,
    held: Mapping[Address, float] | None = None,
) -> Plan:
    """The plan from `applied` to `desired`; empty when nothing needs doing (idempotent).

    `held` maps addresses waiting for release after a withdrawal to the time their release
    is due; `now` is the current time on the same clock. The route sets are compared whole
    (set differences run in C on the routes' cached hashes); Python only looks at the routes
    that differ, so a pass over 10,000 unchanged Service routes costs well under a millisecond."""
    held = held or {}
    stale = applied.routes - desired.routes
    new = desired.routes - applied.routes
    to_add = desired.addresses - applied.addresses - applied.foreign
    removed = applied.addresses - desired.addresses
    touched = {address_key(a) for a in to_add} | {address_key(a) for a in removed}

    if touched:
        units, next_due = _units(
            desired, applied, touched, to_add=to_add, removed=removed, now=now, held=held
        )
    else:
        units, next_due = [], None
    new_keys = {r.key for r in new}
    withdraw_only = sorted(
        (r for r in stale if r.key not in new_keys and r.key not in touched), key=_route_key
    )
    announce_only = sorted((r for r in new if r.key not in touched), key=_route_key)
    return Plan(tuple(units), tuple(withdraw_only), tuple(announce_only), next_due)


def _units(
    desired: Desired,
    applied: Applied,
    touched: set[Key],
    *,
    to_add: frozenset[Address],
    removed: frozenset[Address],
    now: float,
    held: Mapping[Address, float],
) -> tuple[list[Unit], float | None]:
    have = {r.key: r for r in applied.routes if r.key in touched}
    want = {r.key: r for r in desired.routes if r.key in touched}
    wanted_keys = {address_key(a) for a in desired.addresses}
    adds = _by_key(to_add)
    removes = _by_key(removed)
    units: list[Unit] = []
    next_due: float | None = None
    for key in sorted(touched):
        cur, target = have.get(key), want.get(key)
        gone = tuple(sorted(removes.get(key, ()), key=_addr_order))
        if gone and key not in wanted_keys:
            # the address leaves every interface: the route goes first, the address when due
            if cur is not None:
                hold_for = 0.0 if key in desired.release_now else desired.release_delay
                if hold_for > 0:
                    units.append(Unit(key, withdraw=cur, hold=gone, hold_for=hold_for))
                else:
                    units.append(Unit(key, withdraw=cur, release=gone, announce=target))
                continue
            due = max((held[a] for a in gone if a in held), default=None)
            if due is not None and due > now and key not in desired.release_now:
                units.append(Unit(key, waiting_until=due))
                next_due = due if next_due is None else min(next_due, due)
                continue
            units.append(Unit(key, release=gone, announce=target))
            continue
        units.append(
            Unit(
                key,
                withdraw=cur if cur is not None and target is None else None,
                add=tuple(sorted(adds.get(key, ()), key=_addr_order)),
                move_away=gone,
                announce=target if target is not None and target != cur else None,
            )
        )
    return units, next_due


def _by_key(addresses: Iterable[Address]) -> dict[Key, list[Address]]:
    out: dict[Key, list[Address]] = {}
    for a in addresses:
        out.setdefault(address_key(a), []).append(a)
    return out


def apply(action: Action, applied: Applied) -> Applied:
    """What `applied` becomes once an adapter confirmed `action` (used by the loop and tests)."""
    match action:
        case Withdraw(routes):
            withdrawn = frozenset(routes)
            if withdrawn <= applied.routes:
                # the usual case (diff withdraws what is applied), done in C: applied holds one
                # route per prefix, so no other route has these prefixes
                return Applied(applied.routes - withdrawn, applied.addresses, applied.foreign)
            gone = {r.key for r in routes}
            return Applied(
                frozenset(r for r in applied.routes if r.key not in gone), applied.addresses, applied.foreign
            )
        case Announce(routes):
            announced = frozenset(routes)
            if announced <= applied.routes:
                return applied
            new = {r.key for r in announced - applied.routes}
            replaced = frozenset(r for r in applied.routes if r.key in new)
            return Applied((applied.routes - replaced) | announced, applied.addresses, applied.foreign)
        case AddAddress(ifname, addr):
            return Applied(applied.routes, applied.addresses | {(ifname, addr)}, applied.foreign)
        case RemoveAddress(ifname, addr):
            return Applied(applied.routes, applied.addresses - {(ifname, addr)}, applied.foreign)
    raise TypeError(f"not an action: {action!r}")
