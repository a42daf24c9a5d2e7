"""bgpvip.core.plan: the ordered, minimal actions from what is applied to what is desired."""

from __future__ import annotations

from functools import reduce
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpvip.core.model import (
    Action,
    AddAddress,
    Announce,
    Applied,
    Attributes,
    Desired,
    IPInterface,
    RemoveAddress,
    Route,
    Withdraw,
)
from bgpvip.core.plan import apply, diff


def route(address: str, med: int | None = None) -> Route:
    a = ip_address(address)
    return Route(prefix=ip_network(f"{a}/{a.max_prefixlen}"), attributes=Attributes(med=med))


def addr(address: str, ifname: str = "lo") -> tuple[str, IPInterface]:
    a = ip_address(address)
    return (ifname, ip_interface(f"{a}/{a.max_prefixlen}"))


def desired(routes: Any = (), addresses: Any = ()) -> Desired:
    return Desired(routes=frozenset(routes), addresses=frozenset(addresses))


def applied(routes: Any = (), addresses: Any = ()) -> Applied:
    return Applied(frozenset(routes), frozenset(addresses))


def add(address: str, ifname: str = "lo") -> AddAddress:
    return AddAddress(*addr(address, ifname))


def remove(address: str, ifname: str = "lo") -> RemoveAddress:
    return RemoveAddress(*addr(address, ifname))


A, B, C, V6 = "198.51.100.1", "198.51.100.2", "198.51.100.10", "2001:db8::1"

# fmt: off
PLANS = [
    # (id, desired, applied, expected actions)
    ("nothing-to-do",        desired(),                                  applied(),                                  ()),
    ("in-sync",              desired([route(A)], [addr(A)]),              applied([route(A)], [addr(A)]),              ()),
    ("new-vip",              desired([route(A)], [addr(A)]),              applied(),                                  (add(A), Announce((route(A),)))),
    ("gone-vip",             desired(),                                  applied([route(A)], [addr(A)]),              (Withdraw((route(A),)), remove(A))),
    ("every-kind-in-order",  desired([route(B)], [addr(B)]),              applied([route(A)], [addr(A)]),              (Withdraw((route(A),)), remove(A), add(B), Announce((route(B),)))),
    ("attribute-change",     desired([route(A, med=20)], [addr(A)]),      applied([route(A, med=10)], [addr(A)]),      (Announce((route(A, med=20),)),)),
    ("drain-keeps-address",  desired([], [addr(A)]),                      applied([route(A)], [addr(A)]),              (Withdraw((route(A),)),)),
    ("undrain",              desired([route(A)], [addr(A)]),              applied([], [addr(A)]),                      (Announce((route(A),)),)),
    ("route-without-address", desired([route(A)]),                       applied(),                                  (Announce((route(A),)),)),
    ("address-lost-outside", desired([route(A)], [addr(A)]),              applied([route(A)]),                         (add(A),)),
    ("sorted-by-address",    desired([route(C), route(V6), route(B)]),    applied(),                                  (Announce((route(B), route(C), route(V6))),)),
    ("withdraws-sorted",     desired(),                                  applied([route(V6), route(C), route(A)]),    (Withdraw((route(A), route(C), route(V6))),)),
    ("addresses-sorted",     desired([], [addr(C), addr(B, "dummy0"), addr(V6), addr(A)]), applied(),             (add(B, "dummy0"), add(A), add(C), add(V6))),
    ("interface-move",       desired([route(A)], [addr(A, "dummy0")]),    applied([route(A)], [addr(A)]),              (add(A, "dummy0"), remove(A))),
    ("interface-to-null",    desired([route(A)]),                        applied([route(A)], [addr(A)]),              (Withdraw((route(A),)), remove(A), Announce((route(A),)))),
]
# fmt: on


@pytest.mark.parametrize(("want", "have", "expected"), [p[1:] for p in PLANS], ids=[p[0] for p in PLANS])
def test_diff(want: Desired, have: Applied, expected: tuple[Action, ...]) -> None:
    assert diff(want, have) == expected
    assert diff(want, reduce(lambda a, act: apply(act, a), expected, have)) == ()


# fmt: off
APPLY = [
    # (id, action, before, after)
    ("announce-adds",            Announce((route(A),)),       applied(),                       applied([route(A)])),
    ("announce-replaces-prefix", Announce((route(A, 2),)),    applied([route(A, 1), route(B)]), applied([route(A, 2), route(B)])),
    ("withdraw-by-prefix",       Withdraw((route(A, 9),)),    applied([route(A, 1), route(B)]), applied([route(B)])),
    ("withdraw-unknown-no-op",   Withdraw((route(C),)),       applied([route(A)]),             applied([route(A)])),
    ("add-address",              add(A),                      applied(),                       applied([], [addr(A)])),
    ("remove-address",           remove(A),                   applied([], [addr(A), addr(B)]), applied([], [addr(B)])),
    ("remove-other-interface",   remove(A, "dummy0"),         applied([], [addr(A)]),          applied([], [addr(A)])),
]
# fmt: on


@pytest.mark.parametrize(("action", "before", "after"), [p[1:] for p in APPLY], ids=[p[0] for p in APPLY])
def test_apply(action: Action, before: Applied, after: Applied) -> None:
    assert apply(action, before) == after


def test_apply_rejects_what_is_not_an_action() -> None:
    with pytest.raises(TypeError, match="not an action"):
        apply("announce", Applied())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

IPS = ["198.51.100.1", "198.51.100.9", "198.51.100.10", "2001:db8::1", "2001:db8::a", "2001:db8::10"]
IFNAMES = ["lo", "dummy0"]


ROUTES = {ip: [route(ip, med) for med in (None, 0, 1, 2)] for ip in IPS}
ADDRESSES = [addr(ip, ifname) for ip in IPS for ifname in IFNAMES]

# at most one route per prefix, as compute() and apply() guarantee
routes_st = st.dictionaries(st.sampled_from(IPS), st.integers(0, 3)).map(
    lambda d: frozenset(ROUTES[ip][i] for ip, i in d.items())
)
addresses_st = st.frozensets(st.sampled_from(ADDRESSES))
desired_st = st.builds(Desired, routes=routes_st, addresses=addresses_st)
applied_st = st.builds(Applied, routes_st, addresses_st)


def steps(plan: tuple[Action, ...], start: Applied) -> list[tuple[Action, Applied]]:
    """Each action with the state it is applied to."""
    out = []
    state = start
    for action in plan:
        out.append((action, state))
        state = apply(action, state)
    return out


def held(state: Applied, prefix: Any) -> bool:
    return any(a.ip == prefix.network_address for _, a in state.addresses)


@settings(max_examples=200, deadline=None)
@given(want=desired_st, have=applied_st)
def test_property_planning_is_idempotent_and_converges(want: Desired, have: Applied) -> None:
    after = reduce(lambda a, act: apply(act, a), diff(want, have), have)
    assert diff(want, after) == ()
    assert after == Applied(want.routes, want.addresses)


@settings(max_examples=200, deadline=None)
@given(want=desired_st, have=applied_st)
def test_property_an_address_is_held_before_its_route_is_announced(want: Desired, have: Applied) -> None:
    for action, state in steps(diff(want, have), have):
        if isinstance(action, Announce):
            for r in action.routes:
                needed = {(i, a) for i, a in want.addresses if a.ip == r.prefix.network_address}
                assert needed <= state.addresses, f"{r.prefix} announced before {needed - state.addresses}"


@settings(max_examples=200, deadline=None)
@given(want=desired_st, have=applied_st)
def test_property_no_address_is_given_up_while_its_route_is_announced(want: Desired, have: Applied) -> None:
    for action, state in steps(diff(want, have), have):
        if isinstance(action, RemoveAddress):
            after = apply(action, state)
            for r in state.routes:
                if r.prefix.network_address == action.address.ip:
                    assert held(after, r.prefix), f"{action} while {r.prefix} is announced"


@settings(max_examples=200, deadline=None)
@given(want=desired_st, have=applied_st)
def test_property_plans_are_ordered_and_free_of_no_ops(want: Desired, have: Applied) -> None:
    plan = diff(want, have)
    kinds = [type(a) for a in plan]
    assert kinds.count(Withdraw) <= 1 and kinds.count(Announce) <= 1
    assert Withdraw not in kinds[1:], "withdraw comes first"
    assert Announce not in kinds[:-1], "announce comes last"
    for action, state in steps(plan, have):
        match action:
            case Withdraw(routes):
                assert set(routes) <= state.routes, "never withdraw what was not announced"
                for r in routes:
                    # a route whose attributes changed is replaced in place, never withdrawn first
                    keeps_address = any(a.ip == r.prefix.network_address for _, a in want.addresses)
                    address_goes = held(state, r.prefix) and not keeps_address
                    assert r.prefix not in {w.prefix for w in want.routes} or address_goes
            case Announce(routes):
                assert not set(routes) & state.routes, "never re-announce an identical route"
            case AddAddress(ifname, address):
                assert (ifname, address) not in state.addresses
            case RemoveAddress(ifname, address):
                assert (ifname, address) in state.addresses


@settings(max_examples=200, deadline=None)
@given(want=desired_st, have=applied_st)
def test_property_plan_order_is_stable(want: Desired, have: Applied) -> None:
    """Routes by family then address; each run of address actions by interface, family, address."""
    plan = diff(want, have)
    for action in plan:
        if isinstance(action, Announce | Withdraw):
            keys = [(r.prefix.version, int(r.prefix.network_address)) for r in action.routes]
            assert keys == sorted(keys)
    # removals of an address that stays on another interface (a move) come after the adds
    kept_ips = {a.ip for _, a in want.addresses}
    groups: dict[tuple[type, bool], list[tuple[str, int, int]]] = {}
    for action in plan:
        if isinstance(action, AddAddress | RemoveAddress):
            group = (type(action), isinstance(action, RemoveAddress) and action.address.ip in kept_ips)
            groups.setdefault(group, []).append(
                (action.interface, action.address.version, int(action.address.ip))
            )
    for keys in groups.values():
        assert keys == sorted(keys)
