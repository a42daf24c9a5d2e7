"""The rise/fall state machine of one health check, and how a VIP combines its checks.

Pure side of the line: `step()` maps (Health, ProbeResult) to a new Health; probes only
produce ProbeResults and never decide anything. The states follow ExaBGP's healthcheck
(INIT, RISING, UP, FALLING, DOWN); HAProxy's `fastinter` idea decides the probe pace.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from bgpvip.core.model import ProbeResult

# A probe that saw the target die (connection refused or reset) is confirmed after this
# pause instead of `fast_interval`: the second failure is still required, but a killed
# process is gone for good, so waiting longer only delays the withdrawal.
BROKEN_RECHECK_DELAY = 0.002


class State(enum.StrEnum):
    INIT = "init"
    RISING = "rising"
    UP = "up"
    FALLING = "falling"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Health:
    state: State = State.INIT
    count: int = 0
    """Consecutive results towards the next state (successes while RISING, failures while FALLING)."""
    since: float = 0.0
    """Monotonic time of the last state change."""
    last: ProbeResult | None = None
    last_failure: ProbeResult | None = None

    @property
    def up(self) -> bool:
        """Counts as up: UP, or FALLING (not yet `fall` failures in a row)."""
        return self.state in (State.UP, State.FALLING)

    @property
    def settling(self) -> bool:
        return self.state in (State.INIT, State.RISING, State.FALLING)


def described(h: Health) -> tuple[State, int, str | None]:
    """What a VIP's decision says about a check: its state, its count towards the next state
    (`2/3 successes`) and the detail of its last failure. A probe result that changes none of
    these changes no decision, so the loop need not compute them again for it."""
    return (h.state, h.count, h.last_failure.detail if h.last_failure else None)


def initial(*, assume_up: bool = False, now: float = 0.0) -> Health:
    """A fresh check. `assume_up` seeds it UP when the route is already announced (a restarted
    helper found it in ExaBGP's Adj-RIB-Out), so a restart never withdraws a healthy route."""
    return Health(state=State.UP if assume_up else State.INIT, since=now)


def step(h: Health, result: ProbeResult, *, rise: int, fall: int) -> Health:
    """Advance the machine by one probe result."""
    ok = result.ok
    failure = h.last_failure if ok else result
    new_state, count = _transition(h.state, h.count, ok, rise=rise, fall=fall)
    since = h.since if new_state == h.state else result.at
    return replace(h, state=new_state, count=count, since=since, last=result, last_failure=failure)


def _transition(state: State, count: int, ok: bool, *, rise: int, fall: int) -> tuple[State, int]:
    if state in (State.UP, State.FALLING):
        if ok:
            return State.UP, 0
        failures = count + 1 if state == State.FALLING else 1
        return (State.DOWN, 0) if failures >= fall else (State.FALLING, failures)
    # INIT, RISING, DOWN: not serving yet
    if not ok:
        return State.DOWN, 0
    successes = count + 1 if state == State.RISING else 1
    return (State.UP, 0) if successes >= rise else (State.RISING, successes)


def next_delay(h: Health, *, interval: float, fast_interval: float) -> float:
    """Seconds until the next probe: fast while the state is changing, else the interval."""
    if h.state == State.FALLING and h.last is not None and h.last.broken:
        return min(BROKEN_RECHECK_DELAY, fast_interval)
    if h.settling:
        return fast_interval
    return interval


def combine(healths: Iterable[Health], require: str) -> bool:
    """Whether a VIP is healthy given its checks: all of them up, or any one ('any')."""
    ups = [h.up for h in healths]
    if not ups:
        return True
    return all(ups) if require == "all" else any(ups)
