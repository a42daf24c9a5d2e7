"""LeaderElector against the fake apiserver (tests/kubeapi.py) through the official client:
Lease semantics, handover, release, conflicts, outages. Short lease durations throughout."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from bgpvip.adapters.kube import LeaderElector, LeaseRecord
from tests.kubeapi import FakeKubeAPI, Recorded

NS = "bgpvip-system"
LEASE = "bgpvip-controller"
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
# Short timings; the ratios are the production ones (15 / 10 / 5 / 2).
FAST = {"lease_duration": 1.0, "renew_deadline": 0.6, "renew_interval": 0.3, "retry_period": 0.1}


class Candidate:
    """A LeaderElector and the leadership changes it reported."""

    def __init__(self, api_client: client.ApiClient, identity: str, **kw: Any) -> None:
        self.changes: list[bool] = []
        self._cond = threading.Condition()
        self.elector = LeaderElector(
            api_client,
            namespace=NS,
            name=LEASE,
            identity=identity,
            on_change=self._changed,
            **{**FAST, **kw},
        )

    def _changed(self, leading: bool) -> None:
        with self._cond:
            self.changes.append(leading)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> float:
        """Seconds until `predicate` held; fails after `timeout`."""
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; changes {self.changes}")
            time.sleep(0.005)
        return time.monotonic() - started


@pytest.fixture
def candidate(api_client: client.ApiClient) -> Iterator[Callable[..., Candidate]]:
    made: list[Candidate] = []

    def make(identity: str, *, start: bool = True, **kw: Any) -> Candidate:
        c = Candidate(api_client, identity, **kw)
        made.append(c)
        if start:
            c.elector.start()
        return c

    yield make
    for c in made:
        c.elector.stop(timeout=2)


def lease(api: FakeKubeAPI) -> dict[str, Any]:
    obj = api.get("leases", NS, LEASE)
    assert obj is not None
    spec: dict[str, Any] = obj["spec"]
    return spec


def lease_writes(api: FakeKubeAPI) -> list[Recorded]:
    return [r for r in api.requests if "/leases" in r.path and r.method in ("POST", "PUT")]


# --------------------------------------------------------------------------- the Lease


def test_the_first_candidate_creates_the_lease(api: FakeKubeAPI, candidate: Callable[..., Candidate]) -> None:
    a = candidate("a")
    a.wait(lambda: a.elector.is_leader, what="a leads")
    spec = lease(api)
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 0
    assert MICRO_TIME.match(spec["acquireTime"]) and MICRO_TIME.match(spec["renewTime"])
    assert a.changes == [True] and a.elector.holder == "a"
    (create,) = [r for r in lease_writes(api) if r.method == "POST"]
    assert create.path == f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


def test_renewals_move_renew_time_and_keep_acquire_time(
    api: FakeKubeAPI, candidate: Callable[..., Candidate]
) -> None:
    a = candidate("a")
    a.wait(lambda: a.elector.is_leader, what="a leads")
    first = lease(api)
    a.wait(lambda: a.elector.stats.renewed >= 1, what="a renewal")
    now = lease(api)
    assert now["renewTime"] != first["renewTime"]
    assert now["acquireTime"] == first["acquireTime"] and now["leaseTransitions"] == 0
    renewals = [r for r in lease_writes(api) if r.method == "PUT"]
    assert all(r.body["metadata"]["resourceVersion"] for r in renewals), (
        "optimistic concurrency on every write"
    )


def test_a_follower_waits_while_the_leader_renews(
    api: FakeKubeAPI, candidate: Callable[..., Candidate]
) -> None:
    a = candidate("a")
    a.wait(lambda: a.elector.is_leader, what="a leads")
    b = candidate("b")
    deadline = time.monotonic() + 1.5 * FAST["lease_duration"]
    while time.monotonic() < deadline:
        assert not b.elector.is_leader and a.elector.is_leader
        time.sleep(0.02)
    assert b.changes == [] and b.elector.holder == "a"


def test_two_candidates_at_once_elect_exactly_one(
    api: FakeKubeAPI, candidate: Callable[..., Candidate]
) -> None:
    a, b = candidate("a", start=False), candidate("b", start=False)
    a.elector.start()
    b.elector.start()
    a.wait(lambda: a.elector.is_leader or b.elector.is_leader, what="a leader")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert a.elector.is_leader + b.elector.is_leader <= 1
        time.sleep(0.01)
    assert [a.changes, b.changes] in ([[True], []], [[], [True]])


def test_a_dead_leader_is_replaced_within_the_lease_duration(
    api: FakeKubeAPI, candidate: Callable[..., Candidate]
) -> None:
    a = candidate("a")
    a.wait(lambda: a.elector.is_leader, what="a leads")
    b = candidate("b")
    b.wait(lambda: b.elector.holder == "a", what="b sees a")
    acquired = lease(api)["acquireTime"]
    a.elector.stop(release=False)  # as if the process died: the Lease is just not renewed
    took = b.wait(lambda: b.elector.is_leader, timeout=5, what="b takes over")
    # client-go's rule: the record must stay unchanged for leaseDurationSeconds as b saw it;
    # b may have seen a's last renewal up to one retry period late
    assert took < FAST["lease_duration"] + 2 * FAST["retry_period"] + 0.3
    spec = lease(api)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
    assert spec["acquireTime"] != acquired
    assert a.changes == [True, False] and b.changes == [True]


def test_release_hands_over_at_once(api: FakeKubeAPI, candidate: Callable[..., Candidate]) -> None:
    a = candidate("a")
    a.wait(lambda: a.elector.is_leader, what="a leads")
    b = candidate("b")
    b.wait(lambda: b.elector.holder == "a", what="b sees a")
    a.elector.stop()
    assert a.changes == [True, False]
    took = b.wait(lambda: b.elector.is_leader, what="b takes over")
    assert took < 3 * FAST["retry_period"] + 0.2, "no need to wait for the lease to expire"
    assert lease(api)["leaseTransitions"] == 1


def test_a_lease_left_by_a_crashed_holder_is_taken_after_its_duration(
    api: FakeKubeAPI, candidate: Callable[..., Candidate]
) -> None:
    api.put(
        "leases",
        {
            "metadata": {"name": LEASE, "namespace": NS},
            "spec": {
                "holderIdentity": "ghost",
                "leaseDurationSeconds": 1,
                # far in the future: the candidate's own clock decides, not the record's times
                "renewTime": "2999-01-01T00:00:00.000000Z",
                "acquireTime": "2999-01-01T00:00:00.000000Z",
                "leaseTransitions": 7,
            },
        },
    )
    started = time.monotonic()
    b = candidate("b")
    b.wait(lambda: b.elector.is_leader, what="b takes over")
    assert time.monotonic() - started >= 1.0, "it waited a full lease duration first"
    spec = lease(api)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 8)


# --------------------------------------------------------------------------- failures


def test_a_conflict_is_re_read_not_fatal(api: FakeKubeAPI, candidate: Callable[..., Candidate]) -> None:
    api.inject_error(lambda r: r.method == "PUT" and "/leases/" in r.path, 409, "Conflict", times=1)
    a = candidate("a")
    a.wait(lambda: a.elector.is_leader, what="a leads")
    a.wait(
        lambda: a.elector.stats.conflicts == 1 and a.elector.stats.renewed >= 2, what="renewals after a 409"
    )
    assert a.changes == [True], "one 409 is far from the renew deadline"


def test_someone_else_in_the_lease_demotes_the_leader_at_once(
    api: FakeKubeAPI, candidate: Callable[..., Candidate]
) -> None:
    a = candidate("a")
    a.wait(lambda: a.elector.is_leader, what="a leads")
    spec = lease(api)
    api.put(
        "leases", {"metadata": {"name": LEASE, "namespace": NS}, "spec": {**spec, "holderIdentity": "other"}}
    )
    took = a.wait(lambda: not a.elector.is_leader, what="a steps down")
    assert took < FAST["renew_interval"] + 0.3
    assert a.changes == [True, False]


def test_an_api_outage_ends_leadership_and_recovery_restores_it(
    api: FakeKubeAPI, candidate: Callable[..., Candidate]
) -> None:
    a = candidate("a")
    a.wait(lambda: a.elector.is_leader, what="a leads")
    api.inject_outage("refuse")
    took = a.wait(lambda: not a.elector.is_leader, what="a steps down")
    assert took <= FAST["renew_deadline"] + FAST["renew_interval"] + 0.2
    a.wait(lambda: a.changes == [True, False], what="the change is reported")
    a.wait(lambda: a.elector.stats.failures >= 3, what="retries while the API is down")
    api.restore()
    a.wait(lambda: a.elector.is_leader, what="a leads again")
    assert a.changes == [True, False, True]
    assert lease(api)["leaseTransitions"] == 0, "still its own lease: renewed, not taken over"
    assert a.elector.alive


def test_is_leader_is_fenced_by_the_renew_deadline() -> None:
    now = [100.0]
    e = LeaderElector(
        client.ApiClient(client.Configuration(host="http://127.0.0.1:9")),
        namespace=NS,
        name=LEASE,
        identity="a",
        clock=lambda: now[0],
        **FAST,
    )
    e._leading, e._renewed_at = True, 100.0
    assert e.is_leader
    now[0] = 100.0 + FAST["renew_deadline"] - 0.01
    assert e.is_leader
    now[0] = 100.0 + FAST["renew_deadline"]
    assert not e.is_leader, "a leader that has not renewed stops writing before anyone may take over"


@pytest.mark.parametrize(
    "kw",
    [
        {"renew_deadline": 2.0},
        {"renew_interval": 0.7},
        {"retry_period": 0.6},
        {"identity": ""},
    ],
    ids=["deadline-after-expiry", "interval-after-deadline", "retry-after-deadline", "no-identity"],
)
def test_inconsistent_timings_are_refused(kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {"namespace": NS, "name": LEASE, "identity": "a", **FAST, **kw}
    with pytest.raises(ValueError):
        LeaderElector(client.ApiClient(client.Configuration(host="http://127.0.0.1:9")), **args)


def test_lease_record_from_odd_objects() -> None:
    assert LeaseRecord.from_lease({}) == LeaseRecord()
    odd = {"spec": {"holderIdentity": 5, "leaseDurationSeconds": True, "leaseTransitions": "x"}}
    assert LeaseRecord.from_lease(odd) == LeaseRecord(holder="5", duration=0, transitions=0)
