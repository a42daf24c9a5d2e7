"""Why the controller keeps its leader election: two replicas that both write (as two replicas
without a shared Lease would, for instance while a rolling update runs the old pod and the new
one side by side) can show one address in two Services' statuses, although every write is
guarded by the resourceVersion of the Service it writes.

The apiserver checks each write against its own object only. A replica decides on its view of
every Service; when that view lags (a watch is behind: the watch cache, a slow connection, a
replica that just started), it can write Service B an address that Service A was given a moment
ago by the other replica: B's own resourceVersion has not changed, so the write is accepted.
Nothing in the API can make a write to one Service depend on another Service's status. Here the
lag is made on purpose (the fake apiserver holds back its watch events) and the interleaving is
fixed by fake time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bgpvip.core.config import load
from tests.controller.faketime import FakeTime, eventually
from tests.controller.helpers import (
    CONFIG_DOC,
    Running,
    assert_never_doubled,
    ingress,
    service,
    status_writes,
)
from tests.kubeapi import FakeKubeAPI

ONE_ADDRESS = load({**CONFIG_DOC, "pools": [{"name": "main", "addresses": ["203.0.113.0/32"]}]})
ADDRESS = ("203.0.113.0",)


async def race(api: FakeKubeAPI, start: Callable[..., Running], ft: FakeTime, **second: Any) -> None:
    """Replica r2 decides on a view in which only Service b exists and is given the one address;
    its status write fails once and waits for its retry. Meanwhile its watch falls behind, a
    asks for the address, and replica r1 starts, sees both, and gives it to a. Then r2 retries."""
    api.put("services", service("b"))
    api.inject_error(lambda q: q.method == "PATCH" and q.path.endswith("/services/b/status"), 500, "x")
    r2 = start("r2", config=ONE_ADDRESS)
    await eventually(lambda: r2.controller.stats.failures == 1, what="r2's write for b failed")
    api.silence_watches()
    api.put("services", service("a", annotations={"bgpvip.io/loadBalancerIPs": ADDRESS[0]}))
    r1 = start("r1", config=ONE_ADDRESS, **second)
    await eventually(lambda: r1.controller.elector.holder, what="r1 read its Lease")
    await ft.settle()
    await ft.advance(r2.controller.options.retry_initial)  # r2's retry


async def test_two_replicas_that_both_write_can_show_one_address_twice(
    api: FakeKubeAPI, start: Callable[..., Running], ft: FakeTime
) -> None:
    await race(api, start, ft, lease_name="another-lease")  # both lead: no election between them
    assert ingress(api, "a") == ADDRESS, "r1 gave it to a, which asks for it"
    assert ingress(api, "b") == ADDRESS, "r2's write for b was accepted: b had not changed"
    api.silence_watches(False)


async def test_with_one_lease_only_the_leader_writes_and_no_address_is_shown_twice(
    api: FakeKubeAPI, start: Callable[..., Running], ft: FakeTime
) -> None:
    await race(api, start, ft)
    assert ingress(api, "b") == ADDRESS and ingress(api, "a") == (), "r1 follows and writes nothing"
    api.silence_watches(False)
    await eventually(
        lambda: any(e["reason"] == "RequestConflict" for e in api.objects("events")), what="a refused"
    )
    await ft.advance(60)
    assert ingress(api, "a") == () and ingress(api, "b") == ADDRESS
    assert {w.path.split("/")[-2] for w in status_writes(api)} == {"b"}
    assert_never_doubled(api, {"a": (), "b": ()})
