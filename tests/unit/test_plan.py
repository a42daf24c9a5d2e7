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
    assert diff(want, have).actions() == expected
    assert not diff(want, reduce(lambda a, act: apply(act, a), expected, have))


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
    after = reduce(lambda a, act: apply(act, a), diff(want, have).actions(), have)
    assert not diff(want, after)
    assert after == Applied(want.routes, want.addresses)


@settings(max_examples=200, deadline=None)
@given(want=desired_st, have=applied_st)
def test_property_an_address_is_held_before_its_route_is_announced(want: Desired, have: Applied) -> None:
    for action, state in steps(diff(want, have).actions(), have):
        if isinstance(action, Announce):
            for r in action.routes:
                needed = {(i, a) for i, a in want.addresses if a.ip == r.prefix.network_address}
                assert needed <= state.addresses, f"{r.prefix} announced before {needed - state.addresses}"


@settings(max_examples=200, deadline=None)
@given(want=desired_st, have=applied_st)
def test_property_no_address_is_given_up_while_its_route_is_announced(want: Desired, have: Applied) -> None:
    for action, state in steps(diff(want, have).actions(), have):
        if isinstance(action, RemoveAddress):
            after = apply(action, state)
            for r in state.routes:
                if r.prefix.network_address == action.address.ip:
                    assert held(after, r.prefix), f"{action} while {r.prefix} is announced"


@settings(max_examples=200, deadline=None)
@given(want=desired_st, have=applied_st)
def test_property_plans_are_ordered_and_free_of_no_ops(want: Desired, have: Applied) -> None:
    plan = diff(want, have).actions()
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
    plan = diff(want, have).actions()
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


# --------------------------------------------------------------------------- units and holds


def desired_held(routes: Any = (), addresses: Any = (), delay: float = 1.0, now_keys: Any = ()) -> Desired:
    keys = frozenset((ip_address(a).version, int(ip_address(a))) for a in now_keys)
    return Desired(
        routes=frozenset(routes), addresses=frozenset(addresses), release_delay=delay, release_now=keys
    )


def key(address: str) -> tuple[int, int]:
    a = ip_address(address)
    return (a.version, int(a))


def test_a_withdrawal_holds_the_address_for_the_release_delay() -> None:
    p = diff(desired_held(), applied([route(A)], [addr(A)]))
    (unit,) = p.units
    assert unit.withdraw == route(A) and unit.release == () and unit.hold == (addr(A),)
    assert unit.hold_for == 1.0
    assert p.actions() == (Withdraw((route(A),)),), "the address is not released in the same pass"


def test_a_held_address_waits_until_due_then_goes() -> None:
    after_withdraw = applied([], [addr(A)])
    held = {addr(A): 11.0}
    waiting = diff(desired_held(), after_withdraw, now=10.5, held=held)
    assert waiting.actions() == () and waiting.next_due == 11.0
    assert waiting.units[0].waiting_until == 11.0
    due = diff(desired_held(), after_withdraw, now=11.0, held=held)
    assert due.actions() == (remove(A),) and due.next_due is None


def test_wanting_the_address_again_cancels_the_release() -> None:
    p = diff(desired_held([route(A)], [addr(A)]), applied([], [addr(A)]), now=10.5, held={addr(A): 11.0})
    assert p.actions() == (Announce((route(A),)),) and p.next_due is None


def test_a_dead_server_releases_its_address_at_once() -> None:
    p = diff(desired_held(now_keys=[A]), applied([route(A)], [addr(A)]))
    assert p.actions() == (Withdraw((route(A),)), remove(A))
    # also while a release is already waiting
    p = diff(desired_held(now_keys=[A]), applied([], [addr(A)]), now=10.5, held={addr(A): 11.0})
    assert p.actions() == (remove(A),)


def test_an_address_left_from_before_goes_at_once() -> None:
    """No route, nothing recorded: no router sends traffic for it because of us."""
    assert diff(desired_held(), applied([], [addr(A)])).actions() == (remove(A),)


def test_interface_to_null_withdraws_holds_releases_then_announces() -> None:
    want = desired_held([route(A)], [])
    p = diff(want, applied([route(A)], [addr(A)]))
    assert p.actions() == (Withdraw((route(A),)),)
    assert diff(want, applied([], [addr(A)]), now=0.5, held={addr(A): 1.0}).actions() == ()
    assert diff(want, applied([], [addr(A)]), now=1.0, held={addr(A): 1.0}).actions() == (
        remove(A),
        Announce((route(A),)),
    )


def test_a_foreign_address_counts_as_held_and_is_never_added_or_removed() -> None:
    have = Applied(frozenset(), frozenset(), frozenset({addr(A)}))
    assert diff(desired([route(A)], [addr(A)]), have).actions() == (Announce((route(A),)),)
    have = Applied(frozenset({route(A)}), frozenset(), frozenset({addr(A)}))
    assert diff(desired([], []), have).actions() == (Withdraw((route(A),)),)


def test_route_only_prefixes_make_no_unit_objects() -> None:
    """Service routes (no address): plain batched lists, as fast as the whole-set diff was."""
    p = diff(desired([route(A), route(B)]), applied([route(C)]))
    assert p.units == ()
    assert p.announce_only == (route(A), route(B)) and p.withdraw_only == (route(C),)


def test_batches_leave_out_the_units_that_failed() -> None:
    p = diff(desired([route(A), route(B), route(C)], [addr(A), addr(B)]), applied())
    assert p.announces() == (route(A), route(B), route(C))
    assert p.announces(skip={key(A)}) == (route(B), route(C))


# --------------------------------------------------------------------------- execution with failures


def run_plan(
    p: Any, start: Applied, failing: frozenset[tuple[int, int]], *, now: float, held: dict[Any, float]
) -> tuple[Applied, set[tuple[int, int]]]:
    """What the reconcile loop does with a plan, in its phases, when every step of a unit in
    `failing` fails: those units stop, every other goes on (the batches leave them out)."""
    state, failed = start, set()
    withdraws = p.withdraws()
    failed |= {r.key for r in withdraws if r.key in failing}
    ok_withdraws = tuple(r for r in withdraws if r.key not in failing)
    if ok_withdraws:
        state = apply(Withdraw(ok_withdraws), state)
    for u in p.units:
        if u.key in failed:
            continue
        for a in u.hold:
            held[a] = now + u.hold_for
        for field, kind in (("release", RemoveAddress), ("add", AddAddress), ("move_away", RemoveAddress)):
            for a in getattr(u, field):
                if u.key in failing:
                    failed.add(u.key)
                    break
                state = apply(kind(*a), state)
    announces = p.announces(skip=failed)
    failed |= {r.key for r in announces if r.key in failing}
    ok_announces = tuple(r for r in announces if r.key not in failing)
    if ok_announces:
        state = apply(Announce(ok_announces), state)
    return state, failed


def restricted(state: Applied | Desired, k: tuple[int, int]) -> tuple[frozenset[Any], frozenset[Any]]:
    return (
        frozenset(r for r in state.routes if r.key == k),
        frozenset(a for a in state.addresses if (a[1].version, int(a[1].ip)) == k),
    )


KEYS = sorted({key(ip) for ip in IPS})


@settings(max_examples=300, deadline=None)
@given(
    want=desired_st,
    have=applied_st,
    failing=st.frozensets(st.sampled_from(KEYS)),
    delay=st.sampled_from([0.0, 1.0]),
)
def test_property_a_failing_unit_never_blocks_an_independent_prefix(
    want: Desired, have: Applied, failing: frozenset[tuple[int, int]], delay: float
) -> None:
    want = Desired(routes=want.routes, addresses=want.addresses, release_delay=delay)
    held: dict[Any, float] = {}
    state, failed = run_plan(diff(want, have), have, failing, now=0.0, held=held)
    assert failed <= failing, "only the units that fail are reported failed"
    # a second pass after every hold is due (the loop's timer), as failures are retried
    state, _ = run_plan(diff(want, state, now=delay, held=held), state, failing, now=delay, held=held)
    for k in KEYS:
        if k not in failing:
            assert restricted(state, k) == restricted(want, k), f"{k} was held back by {failing}"


@settings(max_examples=300, deadline=None)
@given(want=desired_st, have=applied_st)
def test_property_with_a_delay_no_address_goes_in_the_pass_that_withdraws_its_route(
    want: Desired, have: Applied
) -> None:
    want = Desired(routes=want.routes, addresses=want.addresses, release_delay=1.0)
    p = diff(want, have)
    withdrawn = {r.key for r in p.withdraws()}
    for action in p.actions():
        if isinstance(action, RemoveAddress):
            k = (action.address.version, int(action.address.ip))
            still_held = any(a.ip == action.address.ip for _, a in want.addresses)
            assert k not in withdrawn or still_held, f"{action} in the pass that withdraws its route"
    # and after the delay the plan converges, idempotently
    held: dict[Any, float] = {}
    state, _ = run_plan(p, have, frozenset(), now=0.0, held=held)
    state, _ = run_plan(diff(want, state, now=1.0, held=held), state, frozenset(), now=1.0, held=held)
    assert state == Applied(want.routes, want.addresses)
    assert not diff(want, state, now=1.0, held=held)
