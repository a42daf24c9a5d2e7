"""The Kubernetes Event policy shared by the speaker and the controller (bgpvip.core.event_policy):
which changes of decisions are news, and how each program words them."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from bgpvip.core.alloc import Allocation, AllocReason, Outcome
from bgpvip.core.event_policy import (
    EventSpec,
    Fact,
    Standing,
    changes,
    refusal_events,
    speaker_events,
    status_events,
)
from bgpvip.core.model import Decision, Reason

ON, OFF, REFUSED = Standing.ON, Standing.OFF, Standing.REFUSED
NO_ENDPOINTS = Fact(OFF, "noLocalEndpoints", "no ready endpoint on this node")
DRAINED = Fact(OFF, "nodeDrained", "bgpvip.io/drain")
NOT_IN_POOL = Fact(REFUSED, "notInPool", "in no pool")
UP = Fact(ON, "hasEndpoints")


@pytest.mark.parametrize(
    ("before", "after", "news"),
    [
        pytest.param(None, {"a": UP}, [], id="start: an announcement is not news"),
        pytest.param(None, {"a": NO_ENDPOINTS}, [], id="start: a withdrawal is not news"),
        pytest.param(None, {"a": NOT_IN_POOL}, ["a"], id="start: a refusal is news"),
        pytest.param({}, {"a": UP}, ["a"], id="a new subject in effect"),
        pytest.param({}, {"a": NO_ENDPOINTS}, [], id="a new subject not in effect: nothing changed"),
        pytest.param({}, {"a": NOT_IN_POOL}, ["a"], id="a new refusal"),
        pytest.param({"a": NO_ENDPOINTS}, {"a": UP}, ["a"], id="off to on"),
        pytest.param({"a": UP}, {"a": NO_ENDPOINTS}, ["a"], id="on to off"),
        pytest.param({"a": UP}, {"a": Fact(ON, "keptFromPrevious")}, [], id="on for another reason"),
        pytest.param({"a": NO_ENDPOINTS}, {"a": DRAINED}, [], id="off for another reason"),
        pytest.param({"a": NOT_IN_POOL}, {"a": NOT_IN_POOL}, [], id="the same refusal"),
        pytest.param(
            {"a": NOT_IN_POOL}, {"a": Fact(REFUSED, "notInPool", "other words")}, ["a"], id="refusal reworded"
        ),
        pytest.param(
            {"a": NOT_IN_POOL},
            {"a": Fact(REFUSED, "invalidAddress", "x")},
            ["a"],
            id="refused for another reason",
        ),
        pytest.param(
            {"a": NOT_IN_POOL}, {"a": NO_ENDPOINTS}, [], id="off after a refusal: the refusal said it"
        ),
        pytest.param({"a": NOT_IN_POOL}, {"a": UP}, ["a"], id="on after a refusal"),
        pytest.param({"a": UP}, {"a": NOT_IN_POOL}, ["a"], id="refused after on"),
        pytest.param({"a": UP, "b": UP}, {"b": UP}, [], id="a subject that is gone says nothing"),
        pytest.param(
            {"b": NO_ENDPOINTS, "a": NO_ENDPOINTS}, {"b": UP, "a": UP}, ["b", "a"], id="in the order of after"
        ),
    ],
)
def test_changes(before: dict[str, Fact] | None, after: dict[str, Fact], news: list[str]) -> None:
    got = changes(before, after)
    assert [c.subject for c in got] == news
    for c in got:
        assert c.fact == after[c.subject]
        assert c.before == (None if before is None else before.get(c.subject))


# --------------------------------------------------------------------------- the speaker


def decision(address: str, announce: bool, reason: Reason, detail: str = "", written: str = "") -> Decision:
    return Decision(
        address=ip_address(address),
        announce=announce,
        reason=reason,
        detail=detail,
        source="service/default/web",
        written=written,
    )


UP4 = decision("203.0.113.10", True, Reason.HAS_ENDPOINTS)
DOWN4 = decision("203.0.113.10", False, Reason.NO_LOCAL_ENDPOINTS, "no endpoint here")
DOWN6 = decision("2001:db8::10", False, Reason.NODE_NOT_READY, "node not ready")
OUTSIDE = decision("198.51.100.1", False, Reason.NOT_IN_POOL, "not in any pool")
INVALID = decision("0.0.0.0", False, Reason.INVALID_ADDRESS, "not an IP address", written="not-an-ip")


@pytest.mark.parametrize(
    ("before", "after", "events"),
    [
        pytest.param(
            None,
            [UP4, DOWN6, OUTSIDE],
            [("Warning", "Refused", "198.51.100.1 not announced: notInPool: not in any pool")],
            id="start: only refusals",
        ),
        pytest.param(
            [DOWN4], [UP4], [("Normal", "Announced", "203.0.113.10 announced from node n1")], id="announced"
        ),
        pytest.param(
            [UP4],
            [DOWN4],
            [
                (
                    "Normal",
                    "Withdrawn",
                    "203.0.113.10 withdrawn from node n1: noLocalEndpoints: no endpoint here",
                )
            ],
            id="withdrawn",
        ),
        pytest.param([DOWN4], [DOWN4, OUTSIDE], [("Warning", "Refused", OUTSIDE.detail)], id="a new refusal"),
        pytest.param(
            [],
            [INVALID],
            [("Warning", "Refused", "'not-an-ip' not announced: invalidAddress: not an IP address")],
            id="an invalid entry is shown quoted, as the Service wrote it",
        ),
        pytest.param([OUTSIDE, UP4], [UP4, OUTSIDE], [], id="nothing changed"),
    ],
)
def test_speaker_events(
    before: list[Decision] | None, after: list[Decision], events: list[tuple[str, str, str]]
) -> None:
    got = speaker_events(before, after, node="n1")
    assert [(e.type, e.reason) for e in got] == [(t, r) for t, r, _ in events]
    for e, (_, _, message) in zip(got, events, strict=True):
        assert message in e.message


def test_speaker_two_invalid_entries_are_two_refusals() -> None:
    other = decision("0.0.0.0", False, Reason.INVALID_ADDRESS, "not an IP address", written="203.0.113.300")
    got = speaker_events(None, [INVALID, other], node="n1")
    assert [e.message.split(" ")[0] for e in got] == ["'not-an-ip'", "'203.0.113.300'"]


# --------------------------------------------------------------------------- the controller

KEY = ("default", "web")


def assigned(*ips: str) -> Allocation:
    message = ", ".join(f"{ip} (pool main)" for ip in ips)
    return Allocation(KEY, Outcome.ASSIGNED, AllocReason.ASSIGNED, message, ips, ("main",) * len(ips), ips)


def refused(reason: AllocReason, message: str) -> Allocation:
    return Allocation(KEY, Outcome.REFUSED, reason, message, status_ips=())


EXHAUSTED = refused(AllocReason.POOL_EXHAUSTED, "no free IPv4 address in pool 'main'")
NOT_OURS = Allocation(
    KEY,
    Outcome.NOT_OURS,
    AllocReason.OTHER_CLASS,
    "not handled by bgpvip: spec.loadBalancerClass is 'x'; releasing 203.0.113.0",
    status_ips=(),
)


@pytest.mark.parametrize(
    ("before", "after", "events"),
    [
        pytest.param(
            None,
            EXHAUSTED,
            [EventSpec("Warning", "PoolExhausted", EXHAUSTED.message)],
            id="refused: a Warning with the reason's Event name",
        ),
        pytest.param(
            assigned("203.0.113.0"), EXHAUSTED, [EventSpec("Warning", "PoolExhausted", EXHAUSTED.message)]
        ),
        pytest.param(EXHAUSTED, EXHAUSTED, [], id="still refused for the same reason"),
        pytest.param(
            EXHAUSTED,
            refused(AllocReason.POOL_EXHAUSTED, "no free IPv4 address in pools 'a', 'b'"),
            [EventSpec("Warning", "PoolExhausted", "no free IPv4 address in pools 'a', 'b'")],
            id="refused, explained differently",
        ),
        pytest.param(EXHAUSTED, assigned("203.0.113.0"), [], id="served: the status write says so"),
        pytest.param(None, NOT_OURS, [], id="not ours is no refusal"),
    ],
)
def test_refusal_events(before: Allocation | None, after: Allocation, events: list[EventSpec]) -> None:
    assert list(refusal_events(before, after)) == events


@pytest.mark.parametrize(
    ("before", "after", "allocation", "event"),
    [
        pytest.param(
            (),
            ("203.0.113.0",),
            assigned("203.0.113.0"),
            EventSpec("Normal", "IPAllocated", "Assigned 203.0.113.0 (pool main)"),
            id="assigned",
        ),
        pytest.param(
            ("203.0.113.9",),
            ("203.0.113.0",),
            assigned("203.0.113.0"),
            EventSpec("Normal", "IPAllocated", "Assigned 203.0.113.0 (pool main); released 203.0.113.9"),
            id="moved in one write",
        ),
        pytest.param(
            ("203.0.113.9",),
            (),
            assigned("203.0.113.0"),
            EventSpec("Normal", "IPReleased", "Released 203.0.113.9: moving to 203.0.113.0 (pool main)"),
            id="the first step of a move whose target was still held",
        ),
        pytest.param(
            ("203.0.113.0", "192.0.2.200"),
            ("192.0.2.200",),
            NOT_OURS,
            EventSpec("Normal", "IPReleased", f"Released 203.0.113.0: {NOT_OURS.message}"),
            id="released from a Service that is not ours",
        ),
        pytest.param(
            ("203.0.113.0",),
            (),
            EXHAUSTED,
            EventSpec("Normal", "IPReleased", f"Released 203.0.113.0: {EXHAUSTED.message}"),
            id="released from a refused Service",
        ),
        pytest.param(("203.0.113.0",), ("203.0.113.0",), assigned("203.0.113.0"), None, id="nothing changed"),
    ],
)
def test_status_events(
    before: tuple[str, ...], after: tuple[str, ...], allocation: Allocation, event: EventSpec | None
) -> None:
    assert status_events(before, after, allocation) == (() if event is None else (event,))
