"""bgpvip.core.health: the rise/fall machine, the probe pace, and how checks combine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpvip.core.health import BROKEN_RECHECK_DELAY, Health, State, combine, initial, next_delay, step
from bgpvip.core.model import ProbeResult

INIT, RISING, UP, FALLING, DOWN = State.INIT, State.RISING, State.UP, State.FALLING, State.DOWN


def result(ok: bool, *, at: float = 10.0, broken: bool = False, detail: str = "") -> ProbeResult:
    return ProbeResult(
        ok=ok, at=at, broken=broken, detail=detail or ("HTTP 200" if ok else "connection refused")
    )


# fmt: off
TRANSITIONS = [
    # (id, state, count, ok, rise, fall, new state, new count)
    ("init-success-starts-rising",     INIT,    0, True,  3, 2, RISING,  1),
    ("init-success-rise1-is-up",       INIT,    0, True,  1, 2, UP,      0),
    ("init-failure-is-down",           INIT,    0, False, 3, 2, DOWN,    0),
    ("rising-success-counts",          RISING,  1, True,  3, 2, RISING,  2),
    ("rising-success-reaches-rise",    RISING,  2, True,  3, 2, UP,      0),
    ("rising-failure-is-down",         RISING,  2, False, 3, 2, DOWN,    0),
    ("up-success-stays-up",            UP,      0, True,  3, 2, UP,      0),
    ("up-failure-starts-falling",      UP,      0, False, 3, 2, FALLING, 1),
    ("up-failure-fall1-is-down",       UP,      0, False, 3, 1, DOWN,    0),
    ("falling-success-is-up-again",    FALLING, 1, True,  3, 2, UP,      0),
    ("falling-failure-counts",         FALLING, 1, False, 3, 3, FALLING, 2),
    ("falling-failure-reaches-fall",   FALLING, 1, False, 3, 2, DOWN,    0),
    ("down-failure-stays-down",        DOWN,    0, False, 3, 2, DOWN,    0),
    ("down-success-starts-rising",     DOWN,    0, True,  3, 2, RISING,  1),
    ("down-success-rise1-is-up",       DOWN,    0, True,  1, 2, UP,      0),
]
# fmt: on


@pytest.mark.parametrize(
    ("state", "count", "ok", "rise", "fall", "new_state", "new_count"),
    [t[1:] for t in TRANSITIONS],
    ids=[t[0] for t in TRANSITIONS],
)
def test_transition(  # noqa: PLR0917
    state: State, count: int, ok: bool, rise: int, fall: int, new_state: State, new_count: int
) -> None:
    h = step(Health(state=state, count=count, since=1.0), result(ok, at=5.0), rise=rise, fall=fall)
    assert (h.state, h.count) == (new_state, new_count)
    assert h.since == (1.0 if new_state == state else 5.0)


@pytest.mark.parametrize(
    ("state", "up", "settling"),
    [
        (INIT, False, True),
        (RISING, False, True),
        (UP, True, False),
        (FALLING, True, True),
        (DOWN, False, False),
    ],
    ids=["init", "rising", "up", "falling", "down"],
)
def test_up_and_settling(state: State, up: bool, settling: bool) -> None:
    h = Health(state=state)
    assert (h.up, h.settling) == (up, settling)


def test_since_changes_only_on_a_state_change() -> None:
    h = Health(state=UP, since=1.0)
    h = step(h, result(True, at=2.0), rise=2, fall=3)
    assert (h.state, h.since) == (UP, 1.0)
    h = step(h, result(False, at=3.0), rise=2, fall=3)
    assert (h.state, h.since) == (FALLING, 3.0)
    h = step(h, result(False, at=4.0), rise=2, fall=3)
    assert (h.state, h.since) == (FALLING, 3.0)
    h = step(h, result(False, at=5.0), rise=2, fall=3)
    assert (h.state, h.since) == (DOWN, 5.0)
    h = step(h, result(False, at=6.0), rise=2, fall=3)
    assert (h.state, h.since) == (DOWN, 5.0)


def test_last_failure_is_kept_through_successes() -> None:
    h = initial()
    h = step(h, result(False, at=1.0, detail="HTTP 503"), rise=2, fall=2)
    h = step(h, result(True, at=2.0), rise=2, fall=2)
    h = step(h, result(True, at=3.0), rise=2, fall=2)
    assert h.state == UP
    assert h.last is not None and h.last.ok
    assert h.last_failure is not None
    assert (h.last_failure.detail, h.last_failure.at) == ("HTTP 503", 1.0)
    h = step(h, result(False, at=4.0, detail="timed out after 1.0s"), rise=2, fall=2)
    assert h.last_failure is not None and h.last_failure.detail == "timed out after 1.0s"


@pytest.mark.parametrize(
    ("assume_up", "state"),
    [(False, INIT), (True, UP)],
    ids=["fresh-check-is-init", "announced-route-seeds-up"],
)
def test_initial(assume_up: bool, state: State) -> None:
    h = initial(assume_up=assume_up, now=7.0)
    assert (h.state, h.count, h.since, h.last, h.last_failure) == (state, 0, 7.0, None, None)


# fmt: off
DELAYS = [
    # (id, state, last result, fast_interval, expected delay); interval is 1.0
    ("init-is-fast",                        INIT,    None,                              0.1,   0.1),
    ("rising-is-fast",                      RISING,  result(True),                      0.1,   0.1),
    ("falling-is-fast",                     FALLING, result(False),                     0.1,   0.1),
    ("falling-after-broken-rechecks-soon",  FALLING, result(False, broken=True),        0.1,   BROKEN_RECHECK_DELAY),
    ("broken-never-slower-than-fast",       FALLING, result(False, broken=True),        0.001, 0.001),
    ("up-is-steady",                        UP,      result(True),                      0.1,   1.0),
    ("down-is-steady",                      DOWN,    result(False),                     0.1,   1.0),
    ("down-after-broken-is-steady",         DOWN,    result(False, broken=True),        0.1,   1.0),
]
# fmt: on


@pytest.mark.parametrize(
    ("state", "last", "fast_interval", "expected"), [d[1:] for d in DELAYS], ids=[d[0] for d in DELAYS]
)
def test_next_delay(state: State, last: ProbeResult | None, fast_interval: float, expected: float) -> None:
    assert next_delay(Health(state=state, last=last), interval=1.0, fast_interval=fast_interval) == expected


def test_a_killed_target_is_confirmed_after_the_broken_recheck_delay() -> None:
    h = step(Health(state=UP), result(False, broken=True), rise=3, fall=2)
    assert h.state == FALLING
    assert next_delay(h, interval=0.1, fast_interval=0.02) == BROKEN_RECHECK_DELAY
    h = step(h, result(False, broken=True), rise=3, fall=2)
    assert h.state == DOWN
    assert next_delay(h, interval=0.1, fast_interval=0.02) == 0.1


# fmt: off
COMBINE = [
    # (id, states, require, healthy)
    ("no-checks-all",       [],              "all", True),
    ("no-checks-any",       [],              "any", True),
    ("all-up",              [UP, UP],        "all", True),
    ("all-one-down",        [UP, DOWN],      "all", False),
    ("all-falling-counts",  [UP, FALLING],   "all", True),
    ("all-one-rising",      [UP, RISING],    "all", False),
    ("all-one-init",        [INIT, UP],      "all", False),
    ("any-one-up",          [DOWN, UP],      "any", True),
    ("any-one-falling",     [DOWN, FALLING], "any", True),
    ("any-none-up",         [DOWN, INIT],    "any", False),
]
# fmt: on


@pytest.mark.parametrize(
    ("states", "require", "healthy"), [c[1:] for c in COMBINE], ids=[c[0] for c in COMBINE]
)
def test_combine(states: list[State], require: str, healthy: bool) -> None:
    assert combine((Health(state=s) for s in states), require) is healthy


# --------------------------------------------------------------------------- properties


def run(h: Health, oks: list[bool], *, rise: int, fall: int, start: int = 0) -> list[Health]:
    """Every state the machine passes through, one per result; result i happens at time start+i+1."""
    out = []
    for i, ok in enumerate(oks, start=start + 1):
        h = step(h, result(ok, at=float(i)), rise=rise, fall=fall)
        out.append(h)
    return out


limits = st.integers(1, 6)
histories = st.lists(st.booleans(), max_size=30)


@st.composite
def reachable(draw: st.DrawFn, rise: int, fall: int) -> Health:
    """A Health reached from a fresh (or seeded-up) check by some sequence of results."""
    h = initial(assume_up=draw(st.booleans()))
    oks = draw(histories)
    return run(h, oks, rise=rise, fall=fall)[-1] if oks else h


@settings(max_examples=200, deadline=None)
@given(fall=limits, rise=limits, data=st.data())
def test_property_fewer_than_fall_failures_never_take_up_down(
    fall: int, rise: int, data: st.DataObject
) -> None:
    runs = data.draw(st.lists(st.integers(0, fall - 1), max_size=10))
    oks = [ok for n in runs for ok in [False] * n + [True]]
    for h in run(Health(state=UP), oks, rise=rise, fall=fall):
        assert h.state in (UP, FALLING)
        assert h.up


@settings(max_examples=200, deadline=None)
@given(rise=limits, fall=limits, data=st.data())
def test_property_rise_successes_make_any_state_up(rise: int, fall: int, data: st.DataObject) -> None:
    h = data.draw(reachable(rise, fall))
    assert run(h, [True] * rise, rise=rise, fall=fall, start=100)[-1].state == UP


@settings(max_examples=200, deadline=None)
@given(rise=limits, fall=limits, data=st.data())
def test_property_fall_failures_from_up_make_it_down(rise: int, fall: int, data: st.DataObject) -> None:
    h = data.draw(reachable(rise, fall))
    h = run(h, [True] * rise, rise=rise, fall=fall, start=100)[-1]
    assert h.state == UP
    states = [x.state for x in run(h, [False] * fall, rise=rise, fall=fall, start=200)]
    assert states[-1] == DOWN
    assert DOWN not in states[:-1]


@settings(max_examples=200, deadline=None)
@given(rise=limits, fall=limits, oks=histories, assume_up=st.booleans())
def test_property_since_and_last_failure(rise: int, fall: int, oks: list[bool], assume_up: bool) -> None:
    """`since` moves exactly on state changes; `last_failure` is the latest failed result."""
    prev = initial(assume_up=assume_up)
    for i, h in enumerate(run(prev, oks, rise=rise, fall=fall), start=1):
        assert h.since == (prev.since if h.state == prev.state else float(i))
        failed_at = [j for j, ok in enumerate(oks[:i], start=1) if not ok]
        assert (h.last_failure.at if h.last_failure else None) == (
            float(failed_at[-1]) if failed_at else None
        )
        prev = h
