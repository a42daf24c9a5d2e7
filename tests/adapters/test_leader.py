"""LeaderElector against the fake apiserver (tests/kubeapi.py) through bgpvip's client: Lease
semantics, handover, release, conflicts, outages, the start-up 403 of a real apiserver.

Time is fake: the electors sleep on `FakeTime` and read its clock, and a test moves time on
with `advance()`, which lets every elector finish its requests (real HTTP, fast) before the next
timer fires. So the production timings (15 / 10 / 5 / 2 s) are used as they are, and every
duration asserted is exact, not a wall-clock threshold."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from bgpvip.adapters.kube import Credentials, KubeClient, LeaderElector, LeaseRecord
from tests.kubeapi import FakeKubeAPI, Recorded

NS = "bgpvip-system"
LEASE = "bgpvip-controller"
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TIMINGS = {"lease_duration": 15.0, "renew_deadline": 10.0, "renew_interval": 5.0, "retry_period": 2.0}


class FakeTime:
    """A clock and a sleep for the electors; `advance()` moves time on, timer by timer."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.running = 0
        """Electors that are started and not stopped: each must be asleep before time moves."""

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1.7e9 + self.now

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), fut))
        await fut

    def _asleep(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def settle(self) -> None:
        """Let every running elector finish what it does now (requests over real HTTP)."""
        deadline = time.monotonic() + 10  # a hang detector, not a measurement
        while self._asleep() < self.running:
            assert time.monotonic() < deadline, "an elector never went back to sleep"
            await asyncio.sleep(0.001)

    async def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            await self.settle()
            self._sleepers = [s for s in self._sleepers if not s[2].done()]
            heapq.heapify(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > end:
                self.now = end
                return
            self.now = max(self.now, self._sleepers[0][0])
            while self._sleepers and self._sleepers[0][0] <= self.now:
                _, _, fut = heapq.heappop(self._sleepers)
                if not fut.done():
                    fut.set_result(None)

    async def until(self, predicate: Callable[[], bool], within: float, step: float = 0.1) -> float:
        """Advance until `predicate` holds; the fake seconds it took. Fails after `within`."""
        started = self.now
        await self.settle()
        while not predicate():
            assert self.now - started <= within, f"not within {within}s of fake time"
            await self.advance(step)
        return self.now - started


class Candidate:
    """A LeaderElector and the leadership changes it reported."""

    def __init__(self, kube: KubeClient, ft: FakeTime, identity: str, **kw: Any) -> None:
        self.changes: list[bool] = []
        self.ft = ft
        self.elector = LeaderElector(
            kube,
            namespace=NS,
            name=LEASE,
            identity=identity,
            on_change=self.changes.append,
            clock=ft.clock,
            wall=ft.wall,
            sleep=ft.sleep,
            rand=lambda: 0.5,
            **{**TIMINGS, **kw},
        )

    def start(self) -> None:
        self.ft.running += 1
        self.elector.start()

    async def stop(self, *, release: bool = True) -> None:
        if self.elector.alive:
            self.ft.running -= 1
            await self.elector.stop(release=release)


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def candidate(kube: KubeClient, ft: FakeTime) -> AsyncIterator[Callable[..., Candidate]]:
    made: list[Candidate] = []

    def make(identity: str, *, start: bool = True, **kw: Any) -> Candidate:
        c = Candidate(kube, ft, identity, **kw)
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        await c.stop()


def lease(api: FakeKubeAPI) -> dict[str, Any]:
    obj = api.get("leases", NS, LEASE)
    assert obj is not None
    spec: dict[str, Any] = obj["spec"]
    return spec


def lease_writes(api: FakeKubeAPI) -> list[Recorded]:
    return [r for r in api.requests if "/leases" in r.path and r.method in ("POST", "PUT")]


# --------------------------------------------------------------------------- the Lease


async def test_the_first_candidate_creates_the_lease(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime
) -> None:
    a = candidate("a")
    assert await ft.until(lambda: a.elector.is_leader, within=0) == 0
    spec = lease(api)
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert MICRO_TIME.match(spec["acquireTime"]) and MICRO_TIME.match(spec["renewTime"])
    assert a.changes == [True] and a.elector.holder == "a"
    (create,) = [r for r in lease_writes(api) if r.method == "POST"]
    assert create.path == f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


async def test_renewals_every_renew_interval_move_renew_time_and_keep_acquire_time(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime
) -> None:
    a = candidate("a")
    await ft.until(lambda: a.elector.is_leader, within=0)
    first = lease(api)
    assert await ft.until(lambda: a.elector.stats.renewed >= 1, within=10) == pytest.approx(5.0)
    now = lease(api)
    assert now["renewTime"] != first["renewTime"]
    assert now["acquireTime"] == first["acquireTime"] and now["leaseTransitions"] == 0
    renewals = [r for r in lease_writes(api) if r.method == "PUT"]
    assert renewals and all(r.body["metadata"]["resourceVersion"] for r in renewals), (
        "optimistic concurrency on every write"
    )


async def test_a_follower_waits_while_the_leader_renews(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime
) -> None:
    a = candidate("a")
    await ft.until(lambda: a.elector.is_leader, within=0)
    b = candidate("b")
    for _ in range(60):  # a minute, in steps of a second
        await ft.advance(1.0)
        assert not b.elector.is_leader and a.elector.is_leader
    assert b.changes == [] and b.elector.holder == "a"


async def test_two_candidates_at_once_elect_exactly_one(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime
) -> None:
    a, b = candidate("a", start=False), candidate("b", start=False)
    a.start()
    b.start()
    await ft.until(lambda: a.elector.is_leader or b.elector.is_leader, within=5)
    for _ in range(30):
        await ft.advance(1.0)
        assert a.elector.is_leader + b.elector.is_leader == 1
    assert [a.changes, b.changes] in ([[True], []], [[], [True]])


async def test_a_dead_leader_is_replaced_after_the_lease_duration(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime
) -> None:
    a = candidate("a")
    await ft.until(lambda: a.elector.is_leader, within=0)
    b = candidate("b")
    await ft.until(lambda: b.elector.holder == "a", within=0)
    await ft.advance(5.0)  # a renews; b sees the change on its next read
    acquired = lease(api)["acquireTime"]
    await a.stop(release=False)  # as if the process died: the Lease is just not renewed
    took = await ft.until(lambda: b.elector.is_leader, within=30)
    # client-go's rule: the record must stay unchanged for leaseDurationSeconds as b saw it
    # (b saw a's last renewal at its next read, up to a retry period after it was written)
    assert TIMINGS["lease_duration"] - TIMINGS["retry_period"] <= took <= TIMINGS["lease_duration"] + 2 * 2.4
    spec = lease(api)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
    assert spec["acquireTime"] != acquired
    assert a.changes == [True, False] and b.changes == [True]


async def test_release_hands_over_at_once(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime
) -> None:
    a = candidate("a")
    await ft.until(lambda: a.elector.is_leader, within=0)
    b = candidate("b")
    await ft.until(lambda: b.elector.holder == "a", within=0)
    await a.stop()
    assert a.changes == [True, False]
    took = await ft.until(lambda: b.elector.is_leader, within=30)
    assert took <= TIMINGS["retry_period"] * 1.2, "no need to wait for the lease to expire"
    assert lease(api)["leaseTransitions"] == 1


async def test_a_lease_left_by_a_crashed_holder_is_taken_after_its_duration(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime
) -> None:
    api.put(
        "leases",
        {
            "metadata": {"name": LEASE, "namespace": NS},
            "spec": {
                "holderIdentity": "ghost",
                "leaseDurationSeconds": 7,
                # far in the future: the candidate's own clock decides, not the record's times
                "renewTime": "2999-01-01T00:00:00.000000Z",
                "acquireTime": "2999-01-01T00:00:00.000000Z",
                "leaseTransitions": 7,
            },
        },
    )
    b = candidate("b")
    took = await ft.until(lambda: b.elector.is_leader, within=30)
    assert 7.0 <= took <= 7.0 + TIMINGS["retry_period"] * 1.2, "the holder's duration, on b's clock"
    spec = lease(api)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 8)


# --------------------------------------------------------------------------- failures


async def test_a_conflict_is_re_read_not_fatal(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime
) -> None:
    api.inject_error(lambda r: r.method == "PUT" and "/leases/" in r.path, 409, "Conflict", times=1)
    a = candidate("a")
    await ft.until(lambda: a.elector.is_leader, within=0)
    await ft.until(lambda: a.elector.stats.conflicts == 1 and a.elector.stats.renewed >= 2, within=20)
    assert a.changes == [True], "one 409 is far from the renew deadline"


async def test_someone_else_in_the_lease_demotes_the_leader_at_its_next_renewal(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime
) -> None:
    a = candidate("a")
    await ft.until(lambda: a.elector.is_leader, within=0)
    spec = lease(api)
    api.put(
        "leases", {"metadata": {"name": LEASE, "namespace": NS}, "spec": {**spec, "holderIdentity": "other"}}
    )
    assert await ft.until(lambda: not a.elector.is_leader, within=10) == pytest.approx(
        TIMINGS["renew_interval"]
    )
    assert a.changes == [True, False]


async def test_an_api_outage_ends_leadership_and_recovery_restores_it(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime
) -> None:
    a = candidate("a")
    await ft.until(lambda: a.elector.is_leader, within=0)
    api.inject_outage("refuse")
    took = await ft.until(lambda: not a.elector.is_leader, within=30)
    assert took == pytest.approx(TIMINGS["renew_deadline"], abs=0.11), "fenced by the renew deadline"
    await ft.until(lambda: a.changes == [True, False], within=TIMINGS["renew_interval"] + 2 * 2.4)
    failures = a.elector.stats.failures
    await ft.advance(60)
    # unreachable: a read every retry period, however long the outage (no growing backoff)
    assert a.elector.stats.failures - failures >= 60 / (TIMINGS["retry_period"] * 1.2) - 1
    api.restore()
    took = await ft.until(lambda: a.elector.is_leader, within=30)
    assert took <= TIMINGS["lease_duration"] + TIMINGS["retry_period"] * 1.2
    assert a.changes == [True, False, True]
    assert lease(api)["leaseTransitions"] == 0, "still its own lease: renewed, not taken over"
    assert a.elector.alive


async def test_the_start_up_403_of_a_restarted_apiserver_does_not_grow_the_backoff(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    """A real apiserver refuses ServiceAccount requests with 403 for about a second after it
    starts. Taken for missing RBAC, each 403 used to double the backoff, and a follower came back
    late enough to lose the Lease; the log said only `HTTP 403 Forbidden`."""
    a = candidate("a")
    await ft.until(lambda: a.elector.is_leader, within=0)
    api.inject_outage("refuse")
    await ft.until(lambda: not a.elector.is_leader, within=30)
    await ft.advance(20)
    api.authz_warmup = 3600.0  # in real seconds: the whole fake-time test is inside it
    api.restore()
    before = a.elector.stats.failures
    await ft.advance(5 * TIMINGS["retry_period"] * 1.2)
    assert a.elector.stats.failures - before >= 4, "403 after the return: retried every retry period"
    logged = [r.getMessage() for r in caplog.records if "403" in r.getMessage()]
    assert logged and all(
        'Forbidden: leases is forbidden: User "system:serviceaccount:' in m and "cannot get resource" in m
        for m in logged
    ), logged
    api.authz_warmup = 0.0
    api.restore()  # (only resets the warm-up clock)
    assert await ft.until(lambda: a.elector.is_leader, within=30) <= TIMINGS["retry_period"] * 1.2


async def test_a_lasting_403_is_not_the_start_up_one_and_backs_off(
    api: FakeKubeAPI, candidate: Callable[..., Candidate], ft: FakeTime, kube: KubeClient
) -> None:
    api.inject_error(lambda r: "/leases" in r.path, 403, "Forbidden", "leases is forbidden", times=1000)
    a = candidate("a", authz_grace=0.0)  # real seconds: every 403 is past the grace
    await ft.advance(120)
    # 2, 4, 8, 15, 15, ... instead of one read every 2 s
    assert a.elector.stats.failures <= 12, a.elector.stats.failures
    assert not a.elector.is_leader


def test_is_leader_is_fenced_by_the_renew_deadline() -> None:
    now = [100.0]
    kube = KubeClient(Credentials.static(FakeKubeAPI().connection()))
    e = LeaderElector(kube, namespace=NS, name=LEASE, identity="a", clock=lambda: now[0], **TIMINGS)
    e._leading, e._renewed_at = True, 100.0
    assert e.is_leader
    now[0] = 100.0 + TIMINGS["renew_deadline"] - 0.01
    assert e.is_leader
    now[0] = 100.0 + TIMINGS["renew_deadline"]
    assert not e.is_leader, "a leader that has not renewed stops writing before anyone may take over"


@pytest.mark.parametrize(
    "kw",
    [
        {"renew_deadline": 20.0},
        {"renew_interval": 11.0},
        {"retry_period": 10.0},
        {"identity": ""},
    ],
    ids=["deadline-after-expiry", "interval-after-deadline", "retry-after-deadline", "no-identity"],
)
def test_inconsistent_timings_are_refused(kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {"namespace": NS, "name": LEASE, "identity": "a", **TIMINGS, **kw}
    with pytest.raises(ValueError):
        LeaderElector(KubeClient(Credentials.static(FakeKubeAPI().connection())), **args)


def test_lease_record_decoding() -> None:
    assert LeaseRecord.decode(b"{}") == (LeaseRecord(), "")
    full = b'{"metadata":{"resourceVersion":"7"},"spec":{"holderIdentity":"a","leaseDurationSeconds":15}}'
    assert LeaseRecord.decode(full) == (LeaseRecord(holder="a", duration=15), "7")
    with pytest.raises(msgspec.ValidationError):  # a failed round, never a crash (see _round)
        LeaseRecord.decode(b'{"spec":{"holderIdentity":5}}')
