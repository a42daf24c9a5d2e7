"""core/peers.py: sessions folded from ExaBGP's events, and the reasons they give."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgpvip.core import peers
from bgpvip.core.config import Config, load
from bgpvip.core.desired import NodeState, compute
from bgpvip.core.model import NOT_DELIVERED, Reason
from bgpvip.core.peers import ConnectResult, PeerStatus, explain_connect, family_problems, notification_text
from tests.fakes import service_decision


def config(*peer_list: dict[str, Any], vips: tuple[str, ...] = ("198.51.100.10", "fd00:cafe::10")) -> Config:
    return load(
        {
            "bgp": {"local_as": 65100, "router_id": "10.0.0.2", "peers": list(peer_list)},
            "vips": [{"name": f"v{i}", "address": a, "interface": None} for i, a in enumerate(vips)],
            "pools": [{"name": "p", "addresses": ["203.0.113.0/24"]}],
        }
    )


R1 = {"name": "r1", "address": "10.0.1.1", "peer_as": 65000}
R2 = {"name": "r2", "address": "10.0.2.1", "peer_as": 65000}
R1V6 = {"name": "r1v6", "address": "fd00:1::1", "peer_as": 65000, "families": ["ipv6"]}
UP4 = PeerStatus(state="up", families=frozenset({"ipv4"}))
UP6 = PeerStatus(state="up", families=frozenset({"ipv6"}))
UP_NOTHING = PeerStatus(state="up", families=frozenset())


# --------------------------------------------------------------------------- NOTIFICATION text


@pytest.mark.parametrize(
    ("code", "subcode", "text"),
    [
        (6, 2, "Cease/Administrative Shutdown (6/2)"),
        (2, 2, "OPEN Message Error/Bad Peer AS (2/2)"),
        (4, 0, "Hold Timer Expired (4/0)"),
        (6, 10, "Cease/BFD Down (6/10)"),
        (6, 99, "Cease/subcode 99 (6/99)"),
        (42, 1, "unknown error code/subcode 1 (42/1)"),
    ],
)
def test_notification_text(code: int, subcode: int, text: str) -> None:
    assert notification_text(code, subcode) == text


# --------------------------------------------------------------------------- folding events


def test_a_notification_explains_the_down_that_follows() -> None:
    up = peers.on_state(PeerStatus(), "up", "", now=1.0)
    received = peers.on_notification(up, "receive", 6, 2, "maintenance window")
    down = peers.on_state(received, "down", "notification received (6,2)", now=5.0)
    assert (down.state, down.since) == ("down", 5.0)
    assert down.reason == 'NOTIFICATION received: Cease/Administrative Shutdown (6/2): "maintenance window"'
    assert down.families is None
    # and the next session forgets it
    again = peers.on_state(peers.on_negotiated(down, frozenset({"ipv4"})), "up", "", now=9.0)
    assert again == PeerStatus(state="up", since=9.0, families=frozenset({"ipv4"}))


def test_exabgp_reasons_in_words() -> None:
    down = peers.on_state(PeerStatus(), "down", "notification sent (4,0)", now=1.0)
    assert down.reason == "NOTIFICATION sent: Hold Timer Expired (4/0)"
    closed = peers.on_state(PeerStatus(), "down", "closing connection", now=1.0)
    assert closed.reason == "the TCP connection failed or was closed"
    other = peers.on_state(PeerStatus(), "down", "peer reset, message [x]", now=1.0)
    assert other.reason == "peer reset, message [x]"


def test_since_is_the_last_change_between_up_and_not_up() -> None:
    """ExaBGP retrying a refused connection says `connected` then `down` on every attempt."""
    st = peers.on_state(PeerStatus(state="up", since=1.0), "down", "closing connection", now=10.0)
    for t in (11.0, 13.0, 16.0):
        st = peers.on_state(peers.on_state(st, "connected", "", now=t), "down", "closing connection", now=t)
    assert (st.state, st.since) == ("down", 10.0)


def test_show_neighbor_corrects_what_the_events_missed() -> None:
    assert peers.on_read(PeerStatus(), True, frozenset({"ipv4"}), now=3.0) == PeerStatus(
        state="up", since=3.0, families=frozenset({"ipv4"})
    )
    up = PeerStatus(state="up", since=1.0, families=frozenset({"ipv4"}))
    assert peers.on_read(up, True, frozenset({"ipv4"}), now=3.0) is up
    assert peers.on_read(up, False, None, now=3.0) == PeerStatus(state="down", since=3.0)
    down = PeerStatus(state="down", since=1.0, reason="x")
    assert peers.on_read(down, False, None, now=3.0) is down


def test_a_diagnosis_only_while_down() -> None:
    down = PeerStatus(state="down", reason="the TCP connection failed or was closed")
    tested = peers.on_probe(down, "connection refused on port 179")
    assert tested.why() == "the TCP connection failed or was closed; connection refused on port 179"
    assert peers.on_probe(UP4, "anything") is UP4
    assert peers.on_state(tested, "up", "", now=1.0).diagnosis == ""


# --------------------------------------------------------------------------- connection tests


@pytest.mark.parametrize(
    ("result", "md5", "expected"),
    [
        (ConnectResult("ECONNREFUSED"), False, "connection refused on port 179: BGP is not running there"),
        (ConnectResult("EHOSTUNREACH"), False, "no route to the router (EHOSTUNREACH)"),
        (
            ConnectResult("ETIMEDOUT", 5.0),
            True,
            "the MD5 password (password_file) does not match the router's",
        ),
        (ConnectResult("ETIMEDOUT", 5.0), False, "the router expects an MD5 password (set password_file)"),
        (
            ConnectResult("ETIMEDOUT", 5.0, md5_drops=3),
            False,
            "dropped 3 TCP segment(s) for a missing or wrong",
        ),
        (ConnectResult(""), False, "TCP to port 179 works: the BGP session itself fails"),
        (ConnectResult("", md5_drops=2), True, "the router's MD5 password differs from password_file"),
        (ConnectResult("EPERM"), False, "TCP to port 179 failed: EPERM"),
    ],
)
def test_explain_connect(result: ConnectResult, md5: bool, expected: str) -> None:
    assert expected in explain_connect(result, port=179, md5=md5)


def test_explain_unanswered() -> None:
    assert peers.explain_unanswered(2, port=179, md5=True) == (
        "TCP to port 179 never completes (SYN sent 3 times, no answer): the MD5 password "
        "(password_file) does not match the router's, or a firewall drops it"
    )
    assert "this host dropped 4 TCP segment(s)" in peers.explain_unanswered(
        1, port=179, md5=False, md5_drops=4
    )


# --------------------------------------------------------------------------- routes and sessions


def test_a_family_is_fine_when_one_session_carries_it() -> None:
    c = config(R1, R2, R1V6)
    assert (
        family_problems(
            c.bgp.peers, {"10.0.1.1": UP4, "10.0.2.1": PeerStatus(state="down"), "fd00:1::1": UP6}
        )
        == {}
    )


def test_nothing_known_claims_nothing() -> None:
    c = config(R1, R1V6)
    assert family_problems(c.bgp.peers, {}) == {}
    assert family_problems(c.bgp.peers, {"10.0.1.1": PeerStatus(state="unknown")}) == {}


def test_up_without_the_family() -> None:
    c = config(R1, R2, R1V6)
    problems = family_problems(
        c.bgp.peers, {"10.0.1.1": UP_NOTHING, "10.0.2.1": PeerStatus(state="down"), "fd00:1::1": UP6}
    )
    assert list(problems) == [4]
    reason, detail = problems[4]
    assert reason == Reason.FAMILY_NOT_NEGOTIATED
    assert detail.startswith("r1 up without ipv4 unicast: the router's OPEN did not offer it")


def test_every_session_down() -> None:
    c = config(R1, R1V6)
    problems = family_problems(
        c.bgp.peers,
        {"10.0.1.1": PeerStatus(state="down", reason="NOTIFICATION received: x"), "fd00:1::1": UP6},
    )
    assert problems == {4: (Reason.PEERS_DOWN, "r1: NOTIFICATION received: x")}


def test_families_not_known_count_as_carried() -> None:
    """An ExaBGP run without the `negotiated` API flag (configured by hand) says nothing of
    families: an established session is taken to carry what it is configured for."""
    c = config(R1, vips=("198.51.100.10",))
    assert family_problems(c.bgp.peers, {"10.0.1.1": PeerStatus(state="up")}) == {}


def test_session_problem() -> None:
    dual = load({"bgp": {"local_as": 1, "peers": [{**R1V6, "families": ["ipv4", "ipv6"]}]}}).bgp.peers[0]
    assert peers.session_problem(dual, UP6) == "up without ipv4 unicast: the router's OPEN did not offer it"
    assert not peers.carries(dual, UP6)
    assert peers.carries(dual, PeerStatus(state="up", families=frozenset({"ipv4", "ipv6"})))
    assert peers.session_problem(dual, PeerStatus(state="down", reason="r", diagnosis="d")) == "r; d"
    assert peers.session_problem(dual, PeerStatus()) == ""


# --------------------------------------------------------------------------- decisions


def test_decisions_of_an_undelivered_family_keep_the_route_and_say_why() -> None:
    c = config(R1, R1V6)
    statuses = {"10.0.1.1": UP_NOTHING, "fd00:1::1": UP6}
    services = [service_decision("203.0.113.5", "web")]
    plain = compute(c, {}, NodeState(), services)
    desired = compute(c, {}, NodeState(), services, statuses)
    assert desired.routes == plain.routes, "the route stays in ExaBGP for when a session carries it"
    by_address = {str(d.address): d for d in desired.decisions}
    v4, v6, svc = by_address["198.51.100.10"], by_address["fd00:cafe::10"], by_address["203.0.113.5"]
    assert (v4.announce, v4.reason) == (True, Reason.FAMILY_NOT_NEGOTIATED)
    assert v4.detail.endswith("; no checks")
    assert (v6.announce, v6.reason) == (True, Reason.HEALTHY)
    assert (svc.announce, svc.reason) == (True, Reason.FAMILY_NOT_NEGOTIATED)
    assert desired != plain


def test_drain_and_stop_read_as_before_whatever_the_sessions() -> None:
    c = config(R1, R1V6)
    statuses = {"10.0.1.1": PeerStatus(state="down"), "fd00:1::1": PeerStatus(state="down")}
    for node, reason in (
        (NodeState(drained=True), Reason.DRAINED),
        (NodeState(stopping=True), Reason.STOPPING),
    ):
        desired = compute(c, {}, node, [service_decision("203.0.113.5", "web")], statuses)
        assert {d.reason for d in desired.decisions} == {reason}


@given(
    st.fixed_dictionaries(
        {},
        optional={
            a: st.builds(
                PeerStatus,
                state=st.sampled_from(["up", "down", "unknown"]),
                families=st.none() | st.frozensets(st.sampled_from(["ipv4", "ipv6"])),
            )
            for a in ("10.0.1.1", "10.0.2.1", "fd00:1::1")
        },
    )
)
def test_sessions_never_change_the_routes(statuses: dict[str, PeerStatus]) -> None:
    c = config(R1, R2, R1V6)
    services = [service_decision("203.0.113.5", "web"), service_decision("203.0.113.6", "db", False)]
    with_sessions = compute(c, {}, NodeState(), services, statuses)
    without = compute(c, {}, NodeState(), services)
    assert with_sessions.routes == without.routes
    assert with_sessions.addresses == without.addresses
    for a, b in zip(with_sessions.decisions, without.decisions, strict=True):
        assert (a.address, a.announce, a.route) == (b.address, b.announce, b.route)
        assert a.reason == b.reason or (a.announce and a.reason in NOT_DELIVERED)
