"""The order of the controller's status writes (bgpvip.core.alloc_order): tables for dependency
order, cycles and deferral, and properties over any statuses and any failure pattern."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpvip.core.alloc_order import Ips, StatusWrite, WriteOrder
from bgpvip.core.services import Key


def k(name: str) -> Key:
    return ("default", name)


def run(
    shown: Mapping[str, Ips],
    intended: Mapping[str, Ips],
    due: list[str] | None = None,
    fails: Callable[[StatusWrite], bool] = lambda w: False,
) -> tuple[list[list[str]], dict[str, Ips], list[str]]:
    """One allocation run as the controller drives it. Returns the rounds (each write as
    `name=ips`, `~` for releases alone), the statuses after it and the writes left waiting."""
    order = WriteOrder(
        {k(n): v for n, v in shown.items()},
        {k(n): v for n, v in intended.items()},
        [k(n) for n in (intended if due is None else due)],
    )
    now = {n: tuple(shown.get(n, ())) for n in {*shown, *intended}}
    rounds: list[list[str]] = []
    while batch := order.next():
        rounds.append([f"{'~' if w.partial else ''}{w.key[1]}={','.join(w.ips)}" for w in batch])
        for w in batch:
            if fails(w):
                order.failed(w.key)
            else:
                now[w.key[1]] = w.ips
                order.written(w.key, w.ips)
    return rounds, now, [key[1] for key in order.waiting]


A0, A1, A2, A3, A7 = "10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.7"


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("shown", "intended", "rounds", "waiting"),
    [
        pytest.param(
            {"b": (A1,)},
            {"a": (A0,), "c": (A2,), "b": ()},
            [["a=10.0.0.0", "b=", "c=10.0.0.2"]],
            [],
            id="independent writes go at once, in key order",
        ),
        pytest.param(
            {"a": (A0,)},
            {"a": (), "b": (A0,)},
            [["a="], ["b=10.0.0.0"]],
            [],
            id="a release is written before the address is given to another",
        ),
        pytest.param(
            {"a": (A0,), "b": (A1,)},
            {"a": (A1,), "b": (A2,), "c": (A0,)},
            [["b=10.0.0.2"], ["a=10.0.0.1"], ["c=10.0.0.0"]],
            [],
            id="a chain of moves is written from its free end",
        ),
        pytest.param(
            {"a": (A0,), "b": (A1,)},
            {"a": (A1,), "b": (A0,)},
            [["~a=", "~b="], ["a=10.0.0.1", "b=10.0.0.0"]],
            [],
            id="a swap is broken by releasing both first",
        ),
        pytest.param(
            {"a": (A0, "2001:db8::a"), "b": (A1,)},
            {"a": (A1, "2001:db8::b"), "b": (A0,)},
            [["~a=2001:db8::a", "~b="], ["a=10.0.0.1,2001:db8::b", "b=10.0.0.0"]],
            [],
            id="a cycle releases only what the others wait for",
        ),
        pytest.param(
            {"a": (A0,), "b": (A1,), "c": (A3,), "e": (A7,)},
            {"a": (A1,), "b": (A0,), "c": (), "e": (A3,)},
            [["c="], ["e=10.0.0.3"], ["~a=", "~b="], ["a=10.0.0.1", "b=10.0.0.0"]],
            [],
            id="releases that are ready go before a cycle is broken",
        ),
        pytest.param(
            {"a": (A0,)},
            {"a": (A0,), "b": (A0,)},
            [["b=10.0.0.0"]],
            [],
            id="a shared address: its holder keeps it, so nobody waits",
        ),
        pytest.param(
            {"x": (A0,)},
            {"b": (A0,)},
            [["b=10.0.0.0"]],
            [],
            id="a status left alone keeps what it shows: adding to it is the allocator's decision",
        ),
        pytest.param(
            {"a": (A0,)},
            {"a": (A0,), "b": ()},
            [],
            [],
            id="nothing to write",
        ),
    ],
)
def test_rounds(
    shown: dict[str, Ips], intended: dict[str, Ips], rounds: list[list[str]], waiting: list[str]
) -> None:
    got, after, left = run(shown, intended)
    assert got == rounds
    assert left == waiting
    assert after == {n: () for n in intended} | shown | intended


def test_a_write_waiting_for_its_retry_still_releases_what_it_gives_up() -> None:
    """a's earlier write failed and waits for its retry timer (not due); in intent it gives up
    10.0.0.0, so b, which is given 10.0.0.0, waits for that release to be written."""
    rounds, after, waiting = run({"a": (A0,)}, {"a": (A3,), "b": (A0,)}, due=["b"])
    assert (rounds, waiting) == ([], ["b"])
    assert after == {"a": (A0,), "b": ()}


def test_a_cycle_waiting_on_a_service_that_is_not_due_keeps_its_addresses() -> None:
    """e waits for c, whose write is not due: e keeps 10.0.0.7 meanwhile (nobody needs it)."""
    rounds, after, waiting = run(
        {"a": (A0,), "b": (A1,), "c": (A3,), "e": (A7,)},
        {"a": (A1,), "b": (A0,), "c": (), "e": (A3,)},
        due=["a", "b", "e"],
    )
    assert rounds == [["~a=", "~b="], ["a=10.0.0.1", "b=10.0.0.0"]]
    assert waiting == ["e"] and after["e"] == (A7,)


def test_a_failed_release_leaves_the_waiting_write_for_later() -> None:
    rounds, after, waiting = run({"a": (A0,)}, {"a": (), "b": (A0,)}, fails=lambda w: w.key == k("a"))
    assert rounds == [["a="]]
    assert waiting == ["b"] and after == {"a": (A0,), "b": ()}


def test_a_failed_release_in_a_cycle_ends_the_run() -> None:
    rounds, after, waiting = run(
        {"a": (A0,), "b": (A1,)}, {"a": (A1,), "b": (A0,)}, fails=lambda w: w.key == k("a")
    )
    assert rounds == [["~a=", "~b="]]
    assert after == {"a": (A0,), "b": ()}
    assert waiting == ["b"], "b waits for a's release; a itself waits for its retry"


def test_a_write_answered_with_other_addresses_is_not_sent_again() -> None:
    order = WriteOrder({}, {k("a"): (A0,)}, [k("a")])
    (w,) = order.next()
    order.written(w.key, (A1,))  # what the API says the status holds now
    assert order.next() == () and order.shown(k("a")) == (A1,)


def test_every_write_of_a_round_is_reported_before_the_next() -> None:
    order = WriteOrder({}, {k("a"): (A0,), k("b"): (A1,)}, [k("a"), k("b")])
    first = order.next()
    order.written(first[0].key, first[0].ips)
    with pytest.raises(RuntimeError, match="report every write"):
        order.next()
    with pytest.raises(KeyError):
        order.failed(k("nobody"))


# --------------------------------------------------------------------------- properties

NAMES = [f"s{i}" for i in range(6)]
IPS = [f"10.0.0.{i}" for i in range(6)]


@st.composite
def exclusive(draw: st.DrawFn) -> dict[str, Ips]:
    """Statuses in which no address is shown twice."""
    owner = draw(st.lists(st.sampled_from([None, *NAMES]), min_size=len(IPS), max_size=len(IPS)))
    out: dict[str, Ips] = {n: () for n in NAMES}
    for ip, n in zip(IPS, owner, strict=True):
        if n is not None:
            out[n] += (ip,)
    return out


@st.composite
def cases(draw: st.DrawFn, *, share: bool) -> tuple[dict[str, Ips], dict[str, Ips]]:
    """(shown, intended): with `share`, any statuses at all; without, no address shown twice,
    now or once everything is written (Services left alone keep what they show)."""
    if share:
        sets = st.lists(st.sampled_from(IPS), max_size=3, unique=True).map(tuple)
        shown = {n: draw(sets) for n in NAMES}
        final = {n: draw(sets) for n in NAMES}
    else:
        shown, final = draw(exclusive()), draw(exclusive())
    left_alone = draw(st.sets(st.sampled_from(NAMES), max_size=2))
    if not share:
        kept = {ip for n in left_alone for ip in shown[n]}
        final = {n: tuple(ip for ip in ips if ip not in kept) for n, ips in final.items()}
    intended = {n: ips for n, ips in final.items() if n not in left_alone}
    return shown, intended


def keeps(shown: Mapping[str, Ips], intended: Mapping[str, Ips], name: str, ip: str) -> bool:
    return ip in intended.get(name, shown[name])


def simulate(
    shown: dict[str, Ips], intended: dict[str, Ips], data: st.DataObject, *, failing_runs: int
) -> dict[str, Ips]:
    """Allocation runs as the controller makes them, with writes failing as `data` says for the
    first `failing_runs` runs (some Services waiting for a retry, so not due), then none. Each
    round's writes reach the API in any order; after each, the invariant is checked."""
    initial = dict(shown)
    now = dict(shown)
    for n in range(failing_runs + 1):
        failing = n < failing_runs
        needing = [name for name in NAMES if name in intended and intended[name] != now[name]]
        if failing:
            due = data.draw(st.lists(st.sampled_from(needing), unique=True)) if needing else []
        else:
            due = needing
        order = WriteOrder(
            {k(s): v for s, v in now.items()}, {k(s): v for s, v in intended.items()}, map(k, due)
        )
        while batch := order.next():
            arrival = data.draw(st.permutations(batch))
            for w in arrival:
                name = w.key[1]
                if failing and data.draw(st.booleans()):
                    order.failed(w.key)
                    continue
                for ip in set(w.ips) - set(now[name]):
                    for other, ips in now.items():
                        if other != name and ip in ips:
                            assert keeps(now, intended, other, ip), (
                                f"{ip} written to {name} while {other} still shows it and gives it up"
                            )
                now[name] = w.ips
                order.written(w.key, w.ips)
                # nothing new is shown twice: a double is either shared by decision or was there
                # from the start and is still on its way out
                for ip in IPS:
                    holders = [s for s, ips in now.items() if ip in ips]
                    if len(holders) > 1:
                        for s in holders:
                            assert keeps(now, intended, s, ip) or ip in initial[s], (ip, holders, now)
    return now


@settings(max_examples=400, deadline=None)
@given(cases(share=False), st.integers(0, 3), st.data())
def test_no_address_is_ever_shown_twice_and_every_write_happens_once_failures_stop(
    case: tuple[dict[str, Ips], dict[str, Ips]], failing_runs: int, data: st.DataObject
) -> None:
    shown, intended = case
    after = simulate(shown, intended, data, failing_runs=failing_runs)
    for ip in IPS:
        holders = [s for s, ips in after.items() if ip in ips]
        assert len(holders) <= 1, (ip, holders)
    assert after == {**shown, **intended}, "one run without failures writes everything"


@settings(max_examples=400, deadline=None)
@given(cases(share=True), st.integers(0, 3), st.data())
def test_with_sharing_an_address_is_added_only_where_every_holder_keeps_it(
    case: tuple[dict[str, Ips], dict[str, Ips]], failing_runs: int, data: st.DataObject
) -> None:
    shown, intended = case
    after = simulate(shown, intended, data, failing_runs=failing_runs)
    assert after == {**shown, **intended}
