"""The BFD core against RFC 5880 (§6.8.6 reception, §6.8.7 transmission, §6.5/§6.8.3 poll and
timer changes, §6.8.4 detection) and RFC 5881 (TTL 255), on fake time."""

from __future__ import annotations

import struct
from dataclasses import replace
from ipaddress import ip_address

import pytest

from bgpvip.core.bfd import (
    GTSM_TTL,
    SLOW_TX_US,
    Handover,
    Path,
    Session,
    StateChange,
    Transmit,
    demultiplex,
)
from bgpvip.core.bfd_packet import ControlPacket, Diag, Discard, State, decode, encode
from tests.unit.bfdsim import ms, pair, timers, up_pair

A, D, I, U = State.ADMIN_DOWN, State.DOWN, State.INIT, State.UP  # noqa: E741 (the RFC's letters)


def peer_packet(**kw: object) -> ControlPacket:
    fields: dict[str, object] = {
        "state": D,
        "detect_mult": 3,
        "my_discriminator": 0x2222,
        "your_discriminator": 0,
        "desired_min_tx": ms(100),
        "required_min_rx": ms(100),
    }
    fields.update(kw)
    return ControlPacket(**fields)  # type: ignore[arg-type]


def session_in(state: State, **kw: object) -> Session:
    """A session of discriminator 0x1111 in `state`, talking to peer 0x2222 (when not Down)."""
    s = Session.start(timers(), local_discr=0x1111, now=0.0)
    if state == D:
        return s
    if state == A:
        return s.admin_down(0.0, rnd=0.5)[0]
    s, _ = s.receive(peer_packet(state=D), now=0.0, ttl=255, rnd=0.5)
    assert s.state == I
    if state == U:
        s, _ = s.receive(peer_packet(state=U, your_discriminator=0x1111), now=0.0, ttl=255, rnd=0.5)
        assert s.state == U
    return replace(s, **kw)  # type: ignore[arg-type]


def raw(**kw: int) -> bytes:
    """A 24-byte packet with fields given as integers (the ones not given: a valid Down packet)."""
    f = {"vers": 1, "diag": 0, "sta": 1, "flags": 0, "mult": 3, "length": 24, "my": 7, "your": 0}
    f.update(kw)
    return struct.pack(
        "!BBBBIIIII",
        (f["vers"] << 5) | f["diag"],
        (f["sta"] << 6) | f["flags"],
        f["mult"],
        f["length"],
        f["my"],
        f["your"],
        100_000,
        100_000,
        0,
    )


def changes(outputs: tuple[object, ...]) -> list[StateChange]:
    return [o for o in outputs if isinstance(o, StateChange)]


def transmits(outputs: tuple[object, ...]) -> list[ControlPacket]:
    return [o.packet for o in outputs if isinstance(o, Transmit)]


# --------------------------------------------------------------------------- §4.1 and §6.8.6: the packet


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (raw()[:23], "shorter than a control packet"),
        (b"", "shorter than a control packet"),
        (raw(vers=0), "version 0"),
        (raw(vers=2), "version 2"),
        (raw(length=23), "length field 23 is below 24"),
        (raw(flags=0x04, length=24) + b"\x01\x02", "below 26 (A bit set)"),
        (raw(length=25), "exceeds the datagram (24 bytes)"),
        (raw(mult=0), "detect multiplier is 0"),
        (raw(flags=0x01), "multipoint bit is set"),
        (raw(my=0), "my discriminator is 0"),
        (raw(sta=2, your=0), "your discriminator is 0 in state Init"),
        (raw(sta=3, your=0), "your discriminator is 0 in state Up"),
    ],
    ids=[
        "short",
        "empty",
        "version-0",
        "version-2",
        "length-23",
        "auth-length-24",
        "length-past-datagram",
        "mult-0",
        "multipoint",
        "my-disc-0",
        "your-0-init",
        "your-0-up",
    ],
)
def test_decode_discards_by_rule_of_6_8_6(data: bytes, reason: str) -> None:
    result = decode(data)
    assert isinstance(result, Discard)
    assert reason in result.reason


@pytest.mark.parametrize(
    ("data", "state"),
    [
        (raw(sta=1, your=0), D),
        (raw(sta=0, your=0), A),
        (raw(sta=3, your=9), U),
        (raw() + b"trailing bytes past the length field", D),
        (raw(flags=0x02), D),  # demand bit: accepted and ignored
        (raw(flags=0x08), D),  # C bit
    ],
    ids=["your-0-down", "your-0-admindown", "up", "trailing", "demand", "cbit"],
)
def test_decode_accepts(data: bytes, state: State) -> None:
    result = decode(data)
    assert isinstance(result, ControlPacket)
    assert result.state == state


def test_encode_is_the_rfc_layout() -> None:
    p = ControlPacket(
        state=U,
        diag=Diag.NEIGHBOR_DOWN,
        poll=True,
        detect_mult=3,
        my_discriminator=0x01020304,
        your_discriminator=0x0A0B0C0D,
        desired_min_tx=100_000,
        required_min_rx=200_000,
    )
    assert encode(p).hex() == (
        "23"  # version 1, diag 3
        "e0"  # state Up (3 << 6), P
        "03"
        "18"  # detect mult 3, length 24
        "01020304"
        "0a0b0c0d"
        "000186a0"
        "00030d40"
        "00000000"
    )
    assert decode(encode(p)) == p


# --------------------------------------------------------------------------- §6.8.6: session checks


@pytest.mark.parametrize("ttl", [254, 64, 1, 0, None], ids=lambda t: f"ttl-{t}")
def test_ttl_other_than_255_is_discarded(ttl: int | None) -> None:
    s = session_in(D)
    s2, out = s.receive(peer_packet(state=D), now=0.1, ttl=ttl, rnd=0.5)
    assert s2 == s
    assert len(out) == 1 and isinstance(out[0], Discard) and "RFC 5881" in out[0].reason


def test_ttl_255_is_accepted() -> None:
    s, out = session_in(D).receive(peer_packet(state=D), now=0.1, ttl=GTSM_TTL, rnd=0.5)
    assert s.state == I
    assert not [o for o in out if isinstance(o, Discard)]


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (peer_packet(state=U, your_discriminator=0x9999), "not this session's"),
        (peer_packet(state=D, auth_present=True, length=28), "no authentication is configured"),
        (peer_packet(state=I, your_discriminator=0), "your discriminator is 0 in state Init"),
        (peer_packet(state=D, detect_mult=0), "detect multiplier is 0"),
        (peer_packet(state=D, multipoint=True), "multipoint"),
        (peer_packet(state=D, version=0), "version 0"),
    ],
    ids=["wrong-your-disc", "auth", "your-0-init", "mult-0", "multipoint", "version"],
)
def test_session_discards(packet: ControlPacket, reason: str) -> None:
    s = session_in(D)
    s2, out = s.receive(packet, now=0.1, ttl=255, rnd=0.5)
    assert s2 == s
    assert [type(o) for o in out] == [Discard]
    assert reason in out[0].reason  # type: ignore[union-attr]


# The state table of RFC 5880 §6.8.6: (local, received) -> (new local, diag).
STATE_TABLE = [
    (D, D, I, Diag.NONE),
    (D, I, U, Diag.NONE),
    (D, U, D, None),
    (D, A, D, None),
    (I, D, I, None),
    (I, I, U, Diag.NONE),
    (I, U, U, Diag.NONE),
    (I, A, D, Diag.NEIGHBOR_DOWN),
    (U, D, D, Diag.NEIGHBOR_DOWN),
    (U, I, U, None),
    (U, U, U, None),
    (U, A, D, Diag.NEIGHBOR_DOWN),
    (A, D, A, None),
    (A, I, A, None),
    (A, U, A, None),
    (A, A, A, None),
]


@pytest.mark.parametrize(
    ("local", "received", "new", "diag"),
    STATE_TABLE,
    ids=[f"{a.label}+{b.label}->{c.label}" for a, b, c, _ in STATE_TABLE],
)
def test_state_table(local: State, received: State, new: State, diag: Diag | None) -> None:
    s = session_in(local)
    your = 0 if received in (D, A) else 0x1111
    s2, out = s.receive(peer_packet(state=received, your_discriminator=your), now=0.5, ttl=255, rnd=0.5)
    assert s2.state == new
    if diag is None:
        assert changes(out) == []
    else:
        (change,) = changes(out)
        assert (change.old, change.new, change.diag, change.at) == (local, new, diag, 0.5)
        assert s2.diag == diag
        # §6.8.7: a packet whose contents changed goes out at once, carrying the new state
        assert transmits(out)[-1].state == new
        assert transmits(out)[-1].diag == diag
    # the remote variables are updated even when the local session is AdminDown
    assert (s2.remote_discr, s2.remote_state) == (0x2222, received)
    if local == A:
        assert [o for o in out if not isinstance(o, Transmit)] == [Discard("the local session is AdminDown")]
        # the new Your Discriminator changed the packet's contents, so AdminDown may go out at once
        assert all(p.state == A and p.your_discriminator == 0x2222 for p in transmits(out))


def test_received_admin_down_is_not_a_failure_but_down_is() -> None:
    _, out = session_in(U).receive(peer_packet(state=A, diag=Diag.ADMIN_DOWN), now=1, ttl=255, rnd=0.5)
    (planned,) = changes(out)
    assert planned.new == D and planned.diag == Diag.NEIGHBOR_DOWN
    assert not planned.failure
    assert "AdminDown" in planned.reason
    _, out = session_in(U).receive(peer_packet(state=D, diag=1), now=1, ttl=255, rnd=0.5)
    (failed,) = changes(out)
    assert failed.diag == Diag.NEIGHBOR_DOWN and failed.failure


def test_up_only_through_the_three_way_handshake() -> None:
    """Down ignores Up (a peer that was Up before we restarted), and only Init or Up from a
    peer that saw us takes the session Up."""
    s = session_in(D)
    s, out = s.receive(peer_packet(state=U, your_discriminator=0x1111), now=0.1, ttl=255, rnd=0.5)
    assert s.state == D and changes(out) == []
    s, _ = s.receive(peer_packet(state=D), now=0.2, ttl=255, rnd=0.5)
    assert s.state == I
    s, _ = s.receive(peer_packet(state=U, your_discriminator=0x1111), now=0.3, ttl=255, rnd=0.5)
    assert s.state == U


def test_poll_is_answered_at_once_with_final_in_any_state() -> None:
    for state in (D, I, U):
        s = session_in(state)
        your = 0 if state == D else 0x1111
        _, out = s.receive(
            peer_packet(state=state if state != D else D, your_discriminator=your, poll=True),
            now=0.5,
            ttl=255,
            rnd=0.5,
        )
        finals = [p for p in transmits(out) if p.final]
        assert len(finals) == 1, state
        assert not finals[0].poll


def test_no_final_while_admin_down() -> None:
    _, out = session_in(A).receive(peer_packet(state=D, poll=True), now=0.5, ttl=255, rnd=0.5)
    assert [p for p in transmits(out) if p.final] == []


def test_demand_bit_is_ignored() -> None:
    """A peer asking for Demand mode does not stop our periodic packets (bgpvip never uses it)."""
    net = up_pair()
    net.a, _ = net.a.receive(
        peer_packet(state=U, your_discriminator=0x1111, demand=True), now=net.now, ttl=255, rnd=0.5
    )
    assert net.a.next_tx is not None
    net.cut.add("b")
    before = len(net.sent_by("a"))
    net.run_for(0.25)
    assert len(net.sent_by("a")) - before >= 2


# --------------------------------------------------------------------------- §6.8.7: transmission


def test_packet_contents() -> None:
    net = up_pair(timers(tx=50, rx=70, mult=4))
    _, p = net.sent_by("a")[-1]
    assert (p.version, p.state, p.diag, p.detect_mult, p.length) == (1, U, 0, 4, 24)
    assert (p.my_discriminator, p.your_discriminator) == (0x1111, 0x2222)
    assert (p.desired_min_tx, p.required_min_rx, p.required_min_echo_rx) == (ms(50), ms(70), 0)
    assert not (p.control_plane_independent or p.auth_present or p.demand or p.multipoint)


@pytest.mark.parametrize("cbit", [False, True], ids=["c0", "c1"])
def test_c_bit_is_the_sessions_choice_in_every_packet(cbit: bool) -> None:
    """RFC 5880 §4.1: the C bit says whether BFD shares fate with the control plane; a router
    may act on it during graceful restart (RFC 5882 §4.3.1), so it must be in every packet,
    the AdminDown of a planned stop included."""
    s = Session.start(timers(), local_discr=7, now=0.0, control_plane_independent=cbit)
    s, out = s.tick(0.0, rnd=0.0)
    s, down = s.admin_down(0.1, rnd=0.0)
    packets = [o.packet for o in (*out, *down) if isinstance(o, Transmit)]
    assert [p.state for p in packets] == [State.DOWN, State.ADMIN_DOWN]
    assert all(p.control_plane_independent is cbit for p in packets)
    assert all(decode(encode(p)) == p for p in packets)


@pytest.mark.parametrize(
    ("local_tx", "remote_rx", "expected"),
    [(100, 100, 100), (100, 300, 300), (300, 100, 300), (20, 1000, 1000)],
    ids=["equal", "remote-slower", "local-slower", "remote-much-slower"],
)
def test_transmit_interval_is_the_larger_of_desired_tx_and_remote_rx(
    local_tx: int, remote_rx: int, expected: int
) -> None:
    net = up_pair(timers(tx=local_tx), timers(rx=remote_rx))
    assert net.a.tx_interval == ms(expected)
    start = net.now
    net.run_for(5.0)
    gaps = [
        t2 - t1
        for (t1, p1), (t2, _) in zip(net.sent_by("a", start), net.sent_by("a", start)[1:], strict=False)
        if not p1.final
    ]
    assert gaps
    assert min(gaps) >= 0.75 * expected / 1000 - 1e-9
    assert max(gaps) <= expected / 1000 + 1e-9


@pytest.mark.parametrize(
    ("mult", "rnd", "factor"),
    [(3, 0.0, 1.0), (3, 0.999999, 0.75), (3, 0.5, 0.875), (1, 0.0, 0.9), (1, 0.999999, 0.75), (2, 0.0, 1.0)],
    ids=["m3-max", "m3-min", "m3-mid", "m1-max", "m1-min", "m2-max"],
)
def test_jitter_bounds(mult: int, rnd: float, factor: float) -> None:
    s = Session.start(timers(tx=2000, mult=mult), local_discr=1, now=0.0)
    s, out = s.tick(0.0, rnd=rnd)
    assert transmits(out)
    assert s.next_tx == pytest.approx(2.0 * factor, abs=1e-5)


def test_slow_rate_while_not_up() -> None:
    net = pair()
    # before the peer is heard from: 1 s, advertised and used, though 100 ms is configured
    _, first = net.sent_by("a")[0] if net.sent_by("a") else (0, None)
    s = net.a
    assert s.desired_min_tx == SLOW_TX_US and s.tx_interval == SLOW_TX_US
    s, out = s.tick(0.0, rnd=0.0)
    assert transmits(out)[0].desired_min_tx == SLOW_TX_US
    assert s.next_tx == pytest.approx(1.0)
    assert first is None


def test_remote_rx_zero_stops_periodic_transmission_but_not_finals() -> None:
    s = session_in(U)
    s, _ = s.receive(
        peer_packet(state=U, your_discriminator=0x1111, required_min_rx=0), now=1, ttl=255, rnd=0.5
    )
    assert s.next_tx is None
    s, out = s.tick(1.2, rnd=0.5)  # before the detection deadline at 1.3
    assert transmits(out) == []
    _, out = s.receive(
        peer_packet(state=U, your_discriminator=0x1111, required_min_rx=0, poll=True),
        now=1.1,
        ttl=255,
        rnd=0.5,
    )
    assert [p.final for p in transmits(out)] == [True]


def test_remote_rx_reduction_is_honoured_immediately() -> None:
    """§6.8.3: no longer wait than the new interval since the previous packet."""
    net = up_pair(timers(tx=100), timers(rx=1000))
    s = net.a
    assert s.tx_interval == ms(1000)
    last = s.last_tx
    assert last is not None
    s, _ = s.receive(
        peer_packet(state=U, your_discriminator=0x1111, required_min_rx=ms(100)),
        now=last + 0.01,
        ttl=255,
        rnd=0.0,
    )
    assert s.tx_interval == ms(100)
    assert s.next_tx == pytest.approx(last + 0.1)


def test_remote_rx_increase_slows_down_from_the_last_packet() -> None:
    s = session_in(U, last_tx=1.0, next_tx=1.05)
    s, _ = s.receive(
        peer_packet(state=U, your_discriminator=0x1111, required_min_rx=ms(500)), now=1.01, ttl=255, rnd=0.0
    )
    assert s.next_tx == pytest.approx(1.5)


# --------------------------------------------------------------------------- §6.5 and §6.8.3: poll/final


def test_coming_up_polls_for_the_fast_rate() -> None:
    net = pair()
    net.run_for(3.0)
    polls = [p for _, p in net.sent_by("a") if p.poll]
    finals = [p for _, p in net.sent_by("b") if p.final]
    assert polls and all(p.desired_min_tx == ms(100) and p.state == U for p in polls)
    assert finals
    assert net.a.tx_interval == ms(100) and not net.a.polling
    assert all(not (p.poll and p.final) for _, _, p in net.sent)


def test_tx_increase_waits_for_the_final() -> None:
    net = up_pair()
    net.cut.add("b")  # no Final can come back
    net.apply("a", net.a.reconfigure(timers(tx=500), net.now, rnd=0.5))
    assert net.a.polling
    assert net.a.desired_min_tx == ms(500)  # advertised at once
    assert net.a.tx_interval == ms(100)  # used only after the Final
    assert net.sent_by("a")[-1][1].poll
    net.run_for(0.08)
    assert net.a.tx_interval == ms(100)
    net.cut.clear()
    net.run_for(0.2)
    assert not net.a.polling
    assert net.a.tx_interval == ms(500)
    assert net.b.detection_time == 3 * ms(500)


def test_tx_decrease_applies_at_once() -> None:
    net = up_pair(timers(tx=300), timers(rx=50))
    net.apply("a", net.a.reconfigure(timers(tx=50), net.now, rnd=0.5))
    assert net.a.polling and net.a.tx_interval == ms(50)


def test_rx_decrease_keeps_the_old_detection_time_until_the_final() -> None:
    net = up_pair(timers(rx=300), timers(tx=50))
    assert net.a.detection_time == 3 * ms(300)
    net.cut.add("b")
    net.apply("a", net.a.reconfigure(timers(rx=50), net.now, rnd=0.5))
    assert net.a.required_min_rx == ms(50)
    assert net.a.detection_time == 3 * ms(300)
    net.cut.clear()
    net.run_for(0.5)
    assert not net.a.polling
    assert net.a.detection_time == 3 * ms(50)
    assert net.b.tx_interval == ms(50)


def test_rx_increase_applies_at_once() -> None:
    net = up_pair()
    net.apply("a", net.a.reconfigure(timers(rx=400), net.now, rnd=0.5))
    assert net.a.polling
    assert net.a.detection_time == 3 * ms(400)


def test_a_second_change_waits_for_the_first_poll_and_a_packet_without_f() -> None:
    net = up_pair()
    net.cut.add("b")
    net.apply("a", net.a.reconfigure(timers(tx=200), net.now, rnd=0.5))
    net.apply("a", net.a.reconfigure(timers(tx=400), net.now, rnd=0.5))
    assert net.a.desired_min_tx == ms(200)  # the poll in flight keeps its values
    f = peer_packet(state=U, your_discriminator=0x1111, final=True)
    net.apply("a", net.a.receive(f, now=net.now, ttl=255, rnd=0.5))
    assert not net.a.polling and net.a.poll_settling
    assert net.a.tx_interval == ms(200)
    net.apply("a", net.a.receive(f, now=net.now, ttl=255, rnd=0.5))
    assert not net.a.polling  # a second Final does not count as the packet without F
    net.apply("a", net.a.receive(replace(f, final=False), now=net.now, ttl=255, rnd=0.5))
    assert net.a.polling and net.a.desired_min_tx == ms(400)
    net.cut.clear()
    net.run_for(1.0)
    assert net.a.tx_interval == ms(400) and not net.a.polling


def test_multiplier_change_needs_no_poll_and_goes_out_at_once() -> None:
    net = up_pair()
    before = len(net.sent_by("a"))
    net.apply("a", net.a.reconfigure(timers(mult=5), net.now, rnd=0.5))
    assert not net.a.polling
    assert len(net.sent_by("a")) == before + 1
    assert net.sent_by("a")[-1][1].detect_mult == 5
    net.run_for(0.01)
    assert net.b.detection_time == 5 * ms(100)


def test_final_without_a_poll_changes_nothing() -> None:
    s = session_in(U)
    assert s.polling  # coming Up started the poll for the configured rate
    final = peer_packet(state=U, your_discriminator=0x1111, final=True)
    s, _ = s.receive(final, now=0.0, ttl=255, rnd=0.5)
    assert not s.polling and s.poll_settling
    s = replace(s, tx_in_use=ms(100), desired_min_tx=ms(100))
    s2, out = s.receive(final, now=0.01, ttl=255, rnd=0.5)
    assert (s2.tx_in_use, s2.rx_in_use, s2.polling, s2.poll_settling) == (ms(100), ms(100), False, True)
    assert transmits(out) == []


def test_timer_change_while_down_applies_without_a_poll() -> None:
    s = session_in(D)
    s, out = s.reconfigure(timers(tx=2000, rx=700), 0.0, rnd=0.5)
    assert not s.polling
    assert (s.desired_min_tx, s.required_min_rx, s.rx_in_use) == (ms(2000), ms(700), ms(700))
    assert transmits(out)[0].desired_min_tx == ms(2000)


# --------------------------------------------------------------------------- §6.8.4: detection


def test_detection_time_is_remote_mult_times_the_larger_of_local_rx_and_remote_tx() -> None:
    s = session_in(U)
    s, _ = s.receive(
        peer_packet(state=U, your_discriminator=0x1111, detect_mult=4, desired_min_tx=ms(200)),
        now=1.0,
        ttl=255,
        rnd=0.5,
    )
    assert s.detection_time == 4 * ms(200)
    assert s.detect_deadline == pytest.approx(1.8)
    s, _ = s.receive(
        peer_packet(state=U, your_discriminator=0x1111, detect_mult=2, desired_min_tx=ms(20)),
        now=1.5,
        ttl=255,
        rnd=0.5,
    )
    assert s.detection_time == 2 * ms(100)
    assert s.detect_deadline == pytest.approx(1.7)


def test_silence_for_the_detection_time_takes_the_session_down() -> None:
    net = up_pair()
    net.cut.add("b")
    cut_at = net.now
    last_rx = net.a.last_rx
    assert last_rx is not None
    net.run_for(1.0)
    (change,) = [c for n, c in net.changes if n == "a" and c.at > cut_at]
    assert (change.old, change.new, change.diag) == (U, D, Diag.DETECTION_TIME_EXPIRED)
    assert change.failure
    assert change.at == pytest.approx(last_rx + 0.3)
    assert net.a.remote_discr == 0
    # the packet telling the peer goes out at once, with the diagnostic
    t, p = next((t, p) for t, p in net.sent_by("a") if t >= change.at)
    assert t == change.at and (p.state, p.diag) == (D, Diag.DETECTION_TIME_EXPIRED)


def test_a_packet_before_the_deadline_keeps_the_session_up() -> None:
    s = session_in(U)
    s, _ = s.receive(peer_packet(state=U, your_discriminator=0x1111), now=1.0, ttl=255, rnd=0.5)
    s, out = s.tick(1.299, rnd=0.5)
    assert s.state == U
    s, _ = s.receive(peer_packet(state=U, your_discriminator=0x1111), now=1.299, ttl=255, rnd=0.5)
    s, out = s.tick(1.5, rnd=0.5)
    assert s.state == U
    s, out = s.tick(1.599, rnd=0.5)
    assert s.state == D and changes(out)[0].diag == Diag.DETECTION_TIME_EXPIRED


def test_detection_in_init_and_discriminator_reset_in_down() -> None:
    s = session_in(I)
    s, out = s.tick(10.0, rnd=0.5)
    assert s.state == D and changes(out)[0].diag == Diag.DETECTION_TIME_EXPIRED and s.remote_discr == 0
    s, _ = s.receive(peer_packet(state=A), now=11.0, ttl=255, rnd=0.5)  # Down + AdminDown: stays Down
    assert s.remote_discr == 0x2222
    s, out = s.tick(20.0, rnd=0.5)
    assert s.state == D and changes(out) == [] and s.remote_discr == 0


def test_next_deadline_is_the_earlier_timer() -> None:
    s = session_in(U, next_tx=5.0, detect_deadline=4.0)
    assert s.next_deadline() == 4.0
    assert replace(s, detect_deadline=None).next_deadline() == 5.0
    assert replace(s, detect_deadline=None, next_tx=None).next_deadline() is None


# --------------------------------------------------------------------------- AdminDown (§6.8.16, RFC 5882 §3.2)


def test_admin_down_signals_the_peer_which_does_not_count_a_failure() -> None:
    net = up_pair()
    net.apply("a", net.a.admin_down(net.now, rnd=0.5))
    assert net.a.state == A and net.a.diag == Diag.ADMIN_DOWN
    _, p = net.sent_by("a")[-1]
    assert (p.state, p.diag) == (A, Diag.ADMIN_DOWN)
    assert p.desired_min_tx >= SLOW_TX_US
    net.run_for(0.01)
    (ca,) = [c for n, c in net.changes if n == "a" and c.new == A]
    assert not ca.failure and ca.diag == Diag.ADMIN_DOWN
    (cb,) = [c for n, c in net.changes if n == "b" and c.old == U]
    assert (cb.new, cb.diag, cb.remote_state, cb.failure) == (D, Diag.NEIGHBOR_DOWN, A, False)
    # AdminDown keeps being sent (at the slow rate), and the peer stays Down, not Init
    net.run_for(3.0)
    assert net.b.state == D
    gaps = [
        t2 - t1
        for (t1, _), (t2, _) in zip(
            net.sent_by("a", net.now - 2.9), net.sent_by("a", net.now - 2.9)[1:], strict=False
        )
    ]
    assert gaps and min(gaps) >= 0.75
    # and enabling it again runs the handshake
    net.apply("a", net.a.admin_up(net.now, rnd=0.5))
    assert net.a.state == D
    net.run_for(3.0)
    assert net.a.state == U and net.b.state == U


def test_admin_down_twice_and_admin_up_when_enabled_are_no_ops() -> None:
    s = session_in(A)
    assert s.admin_down(1.0, rnd=0.5) == (s, ())
    u = session_in(U)
    assert u.admin_up(1.0, rnd=0.5) == (u, ())


# --------------------------------------------------------------------------- end to end on fake time


def test_two_sessions_come_up_and_settle_at_the_configured_rate() -> None:
    net = pair()
    net.run_for(3.0)
    assert [(n, c.new) for n, c in net.changes] in (
        [("b", I), ("a", U), ("b", U)],
        [("a", I), ("b", U), ("a", U)],
        [("b", I), ("a", I), ("a", U), ("b", U)],
        [("a", I), ("b", I), ("b", U), ("a", U)],
    )
    start = net.now
    net.run_for(10.0)
    rate = len(net.sent_by("a", start)) / 10.0
    assert 10.0 <= rate <= 10.0 / 0.75  # 100 ms less 0-25 % jitter
    assert net.discards == []


# --------------------------------------------------------------------------- demultiplexing (RFC 5881 §4)

V4 = ip_address("10.0.1.1")
V6LL = ip_address("fe80::1")
SESSIONS = {11: Path(V4), 12: Path(V6LL, 3)}
BY_PATH = {p: d for d, p in SESSIONS.items()}


@pytest.mark.parametrize(
    ("your", "source", "ifindex", "expected"),
    [
        (11, V4, 2, 11),
        (0, V4, 2, 11),
        (12, V6LL, 3, 12),
        (0, V6LL, 3, 12),
        (0, V6LL, 4, "no session for fe80::1"),
        (12, V6LL, 4, "belongs to the session with fe80::1"),
        (99, V4, 2, "no session has discriminator 99"),
        (11, ip_address("10.0.1.9"), 2, "belongs to the session with 10.0.1.1, not 10.0.1.9"),
        (0, ip_address("10.0.1.9"), 2, "no session for 10.0.1.9"),
    ],
    ids=[
        "disc",
        "path",
        "ll-disc",
        "ll-path",
        "ll-other-if",
        "ll-disc-other-if",
        "unknown-disc",
        "spoofed",
        "unknown-peer",
    ],
)
def test_demultiplex(your: int, source: object, ifindex: int, expected: int | str) -> None:
    packet = peer_packet(state=D if your == 0 else U, your_discriminator=your)
    got = demultiplex(packet, source=source, ifindex=ifindex, by_discriminator=SESSIONS, by_path=BY_PATH)  # type: ignore[arg-type]
    if isinstance(expected, int):
        assert got == expected
    else:
        assert isinstance(got, Discard) and expected in got.reason


# --------------------------------------------------------------------------- hand-over (planned restart)


def test_hand_over_then_resume_keeps_the_peer_up_and_polls_back_to_the_fast_rate() -> None:
    """The old process slows to 2 s with a poll, hands over and goes silent for 5 s (within the
    3 x 2 s the peer now waits); the resumed session sends Up at once and polls back to 100 ms."""
    net = up_pair()
    net.run_for(1)
    net.apply("a", net.a.reconfigure(timers(tx=2000), net.now, rnd=0.0))
    assert net.a.handover() is None  # the poll is still running
    net.run_for(0.1)
    handover = net.a.handover()
    assert handover is not None
    assert (handover.local_discr, handover.remote_discr, handover.desired_min_tx) == (
        0x1111,
        0x2222,
        ms(2000),
    )
    assert handover.router_detection_time == 3 * ms(2000)
    net.changes.clear()
    net.cut.add("a")  # the old process is gone
    net.run_for(5)
    assert net.b.state == State.UP
    net.a = Session.resume(handover, timers(), now=net.now)
    net.cut.discard("a")
    net.run_for(0.5)
    assert net.changes == []  # neither side ever left Up
    assert (net.a.state, net.b.state, net.a.tx_in_use, net.b.detection_time) == (
        State.UP,
        State.UP,
        ms(100),
        ms(300),
    )


def test_handover_is_none_unless_up() -> None:
    assert Session.start(timers(), local_discr=1, now=0.0).handover() is None


@pytest.mark.parametrize(
    "field",
    ["local_discr", "remote_discr", "desired_min_tx", "required_min_rx", "detect_mult", "remote_detect_mult"],
)
def test_handover_refuses_zero(field: str) -> None:
    good = dict(
        local_discr=1,
        remote_discr=2,
        desired_min_tx=ms(2000),
        required_min_rx=ms(100),
        detect_mult=3,
        remote_min_rx=ms(100),
        remote_desired_min_tx=ms(100),
        remote_detect_mult=3,
    )
    Handover(**good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=field):
        Handover(**{**good, field: 0})  # type: ignore[arg-type]
