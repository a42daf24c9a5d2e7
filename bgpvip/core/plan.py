"""diff(): the ordered actions that take what is applied to what is desired.

Pure side of the line. The order encodes the safety rules of the brief:
withdraw routes, then remove addresses (a host never announces an address it no longer
holds); add addresses, then announce (a router never sends traffic before the host accepts
it). A route whose attributes changed is re-announced, never withdrawn first: BGP replaces
it in place, so traffic does not blink.

Two cases follow from the same rules. An address that moves to another interface is added
there before it is removed from the old one, so the host holds it throughout and its route
stays up. An address that bgpvip stops holding anywhere while its route is still wanted
(`interface` set to null) takes the route down first and announces it again at the end.
"""

from __future__ import annotations

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
    host_network,
)


def _route_key(r: Route) -> tuple[int, int]:
    return (r.prefix.version, int(r.prefix.network_address))


def _addr_key(a: tuple[str, IPInterface]) -> tuple[str, int, int]:
    return (a[0], a[1].version, int(a[1].ip))


def diff(desired: Desired, applied: Applied) -> tuple[Action, ...]:
    """Actions in a stable order; empty when nothing needs doing (planning is idempotent)."""
    wanted_prefixes = {r.prefix for r in desired.routes}
    held_after = {a.ip for _, a in desired.addresses}
    removed = applied.addresses - desired.addresses
    # prefixes whose address disappears from every interface: their routes go first
    unheld = {host_network(a.ip) for _, a in removed if a.ip not in held_after}
    withdraw = sorted(
        (r for r in applied.routes if r.prefix not in wanted_prefixes or r.prefix in unheld), key=_route_key
    )
    still_applied = applied.routes - frozenset(withdraw)
    announce = sorted(desired.routes - still_applied, key=_route_key)
    remove = sorted((a for a in removed if a[1].ip not in held_after), key=_addr_key)
    moved_away = sorted((a for a in removed if a[1].ip in held_after), key=_addr_key)
    add = sorted(desired.addresses - applied.addresses, key=_addr_key)

    actions: list[Action] = []
    if withdraw:
        actions.append(Withdraw(tuple(withdraw)))
    actions.extend(RemoveAddress(ifname, addr) for ifname, addr in remove)
    actions.extend(AddAddress(ifname, addr) for ifname, addr in add)
    actions.extend(RemoveAddress(ifname, addr) for ifname, addr in moved_away)
    if announce:
        actions.append(Announce(tuple(announce)))
    return tuple(actions)


def apply(action: Action, applied: Applied) -> Applied:
    """What `applied` becomes once an adapter confirmed `action` (used by the loop and tests)."""
    match action:
        case Withdraw(routes):
            gone = {r.prefix for r in routes}
            return Applied(frozenset(r for r in applied.routes if r.prefix not in gone), applied.addresses)
        case Announce(routes):
            new = {r.prefix for r in routes}
            kept = frozenset(r for r in applied.routes if r.prefix not in new)
            return Applied(kept | frozenset(routes), applied.addresses)
        case AddAddress(ifname, addr):
            return Applied(applied.routes, applied.addresses | {(ifname, addr)})
        case RemoveAddress(ifname, addr):
            return Applied(applied.routes, applied.addresses - {(ifname, addr)})
    raise TypeError(f"not an action: {action!r}")
