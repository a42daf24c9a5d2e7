"""Properties of the BFD core (Hypothesis).

- `decode` never raises on arbitrary bytes, and whatever it accepts encodes back to the same
  mandatory section; `encode` then `decode` is the identity on valid packets.
- Any sequence of received packets (valid or not), ticks, administrative changes and timer
  changes keeps a session in a legal state. The invariants:
  * the local discriminator never changes and is never 0;
  * Init and Up always know the peer's discriminator, so every packet sent passes the peer's
    reception checks (Your Discriminator is 0 only in Down and AdminDown);
  * intervals are positive; while not Up the advertised desired TX is at least 1 s and no poll
    runs; P and F are never set in the same packet;
  * after `tick(now)` nothing is overdue (`next_deadline() > now`), so the adapter never spins;
  * periodic transmission stops only when the peer asks for none (Required Min RX 0);
  * a detection deadline exists only after a packet from the peer, and lies after it;
  * Up is entered only from Down on a received Init or from Init on a received Init or Up
    (the three-way handshake), and state changes chain (each starts where the last ended);
  * a received AdminDown never counts as a failure.
- Two sessions on a lossy simulated link, after any history, come Up again and settle at their
  configured rates once the link is clean and neither is AdminDown.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpvip.core.bfd import SLOW_TX_US, Session, StateChange, Timers, Transmit
from bgpvip.core.bfd_packet import MAX_U32, ControlPacket, Diag, Discard, State, check, decode, encode
from tests.unit.bfdsim import Net, ms

LOCAL = 0x1111
PEER = 0x2222

timers_st = st.builds(
    Timers,
    desired_min_tx=st.sampled_from([ms(10), ms(50), ms(100), ms(300), ms(1000), ms(2000)]),
    required_min_rx=st.sampled_from([ms(10), ms(50), ms(100), ms(300), ms(1000), ms(2000)]),
    detect_mult=st.integers(1, 6),
)

u32 = st.integers(0, MAX_U32)
packet_st = st.builds(
    ControlPacket,
    state=st.sampled_from(State),
    diag=st.integers(0, 31),
    detect_mult=st.integers(0, 255),
    my_discriminator=st.one_of(st.just(PEER), st.just(0), u32),
    your_discriminator=st.one_of(st.just(LOCAL), st.just(0), u32),
    desired_min_tx=st.one_of(st.sampled_from([ms(10), ms(100), ms(1000)]), u32),
    required_min_rx=st.one_of(st.sampled_from([0, ms(10), ms(100), ms(1000)]), u32),
    required_min_echo_rx=u32,
    poll=st.booleans(),
    final=st.booleans(),
    control_plane_independent=st.booleans(),
    auth_present=st.booleans(),
    demand=st.booleans(),
    multipoint=st.booleans(),
    version=st.integers(0, 7),
    length=st.integers(0, 255),
)


@st.composite
def valid_packets(draw: st.DrawFn, *, auth: bool = True) -> ControlPacket:
    """Packets that pass every session-independent check of §6.8.6, by construction."""
    state = draw(st.sampled_from(State))
    nonzero = st.integers(1, MAX_U32)
    your = st.one_of(st.just(LOCAL), nonzero)
    with_auth = auth and draw(st.booleans())
    p = draw(packet_st)
    return replace(
        p,
        state=state,
        version=1,
        multipoint=False,
        auth_present=with_auth,
        length=draw(st.integers(26, 255)) if with_auth else 24,
        detect_mult=draw(st.integers(1, 255)),
        my_discriminator=draw(st.one_of(st.just(PEER), nonzero)),
        your_discriminator=draw(your if state in (State.INIT, State.UP) else st.one_of(st.just(0), your)),
    )


valid_packet_st = valid_packets()


@given(st.binary(max_size=80))
@settings(max_examples=2000)
def test_decode_never_raises(data: bytes) -> None:
    result = decode(data)
    assert isinstance(result, ControlPacket | Discard)
    if isinstance(result, ControlPacket):
        assert encode(result) == data[:24]
        assert check(result, len(data)) is None
    else:
        assert result.reason


@given(st.binary(min_size=24, max_size=24), st.integers(1, 3))
def test_decode_of_near_valid_headers_never_raises(head: bytes, version: int) -> None:
    data = bytes([version << 5 | head[0] & 0x1F]) + head[1:3] + bytes([24]) + head[4:]
    assert isinstance(decode(data), ControlPacket | Discard)


@given(valid_packets(auth=False))
def test_encode_decode_round_trip(p: ControlPacket) -> None:
    assert decode(encode(p)) == p


# ---------------------------------------------------------------------- one session, any inputs

receive_valid = st.tuples(st.just("receive"), valid_packet_st, st.sampled_from([255, 255, 255, 64, None]))
# Receptions and ticks are what move the machine; administrative changes are rarer, or a
# session would spend most examples in AdminDown.
op_st = st.one_of(
    receive_valid,
    receive_valid,
    receive_valid,
    st.tuples(st.just("receive"), packet_st, st.just(255)),
    st.tuples(st.just("tick"), st.floats(0.0, 4.0)),
    st.tuples(st.just("tick"), st.floats(0.0, 4.0)),
    st.one_of(
        st.tuples(st.just("admin_down"), st.sampled_from([Diag.ADMIN_DOWN, Diag.PATH_DOWN])),
        st.tuples(st.just("admin_up")),
    ),
    st.tuples(st.just("reconfigure"), timers_st),
    st.tuples(st.just("wait"), st.floats(0.0, 0.5)),
)


def _peer_like(p: ControlPacket) -> ControlPacket:
    # most packets should name this session and come from one peer, so that the machine moves
    return replace(p, my_discriminator=PEER) if p.my_discriminator not in (0, PEER) and p.diag % 2 else p


@given(timers_st, st.lists(op_st, max_size=60), st.randoms(use_true_random=False))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_sequence_keeps_the_session_legal(timers: Timers, ops: list[tuple], rng: object) -> None:  # type: ignore[type-arg]
    now = 0.0
    s = Session.start(timers, local_discr=LOCAL, now=now)
    for op in ops:
        before = s
        rnd = rng.random()  # type: ignore[attr-defined]
        trigger: ControlPacket | None = None
        if op[0] == "receive":
            trigger = _peer_like(op[1])
            s, out = s.receive(trigger, now=now, ttl=op[2], rnd=rnd)
        elif op[0] == "tick":
            deadline = s.next_deadline()
            now = max(now, deadline if deadline is not None and op[1] < 2.0 else now + op[1])
            s, out = s.tick(now, rnd=rnd)
            assert s.next_deadline() is None or s.next_deadline() > now  # type: ignore[operator]
        elif op[0] == "admin_down":
            s, out = s.admin_down(now, rnd=rnd, diag=op[1])
        elif op[0] == "admin_up":
            s, out = s.admin_up(now, rnd=rnd)
        elif op[0] == "reconfigure":
            s, out = s.reconfigure(op[1], now, rnd=rnd)
        else:
            now += op[1]
            continue
        _check_session(s)
        _check_outputs(before, s, out, trigger)


def _check_session(s: Session) -> None:
    assert s.local_discr == LOCAL
    if s.state in (State.INIT, State.UP):
        assert s.remote_discr != 0
    assert min(s.desired_min_tx, s.required_min_rx, s.tx_in_use, s.rx_in_use, s.tx_interval) > 0
    if s.state != State.UP:
        assert s.desired_min_tx >= SLOW_TX_US and s.tx_in_use >= SLOW_TX_US
        assert not s.polling and not s.poll_settling
    if s.next_tx is None:
        assert s.remote_min_rx == 0
    if s.detect_deadline is not None:
        assert s.remote_detect_mult > 0 and s.last_rx is not None and s.detect_deadline > s.last_rx
    # a poll in flight never lets the slower side's values in before the Final: the TX in use
    # is at most the advertised one, the RX in use at least the advertised one
    if s.polling:
        assert s.tx_in_use <= s.desired_min_tx and s.rx_in_use >= s.required_min_rx


def _check_outputs(
    before: Session, after: Session, out: tuple[object, ...], trigger: ControlPacket | None
) -> None:
    state = before.state
    for o in out:
        if isinstance(o, StateChange):
            assert o.old == state and o.new != o.old
            state = o.new
            if o.new == State.UP:
                assert trigger is not None
                assert (o.old, trigger.state) in (
                    (State.DOWN, State.INIT),
                    (State.INIT, State.INIT),
                    (State.INIT, State.UP),
                )
            if trigger is not None and trigger.state == State.ADMIN_DOWN:
                assert not o.failure and o.diag == Diag.NEIGHBOR_DOWN
        elif isinstance(o, Transmit):
            p = o.packet
            assert not (p.poll and p.final)
            assert p.my_discriminator == LOCAL
            assert isinstance(decode(encode(p)), ControlPacket), p
            assert p.required_min_echo_rx == 0 and not p.demand and not p.control_plane_independent
            if p.state != State.UP:
                assert p.desired_min_tx >= SLOW_TX_US
    assert state == after.state


# ---------------------------------------------------------------------- two sessions, lossy link

net_timers_st = st.builds(
    Timers,
    desired_min_tx=st.sampled_from([ms(50), ms(100), ms(300), ms(1500)]),
    required_min_rx=st.sampled_from([ms(50), ms(100), ms(300), ms(1500)]),
    detect_mult=st.integers(1, 5),
)
net_op_st = st.one_of(
    st.tuples(st.just("cut"), st.sampled_from(["a", "b"]), st.floats(0.0, 2.0)),
    st.tuples(st.just("admin"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("reconfigure"), st.sampled_from(["a", "b"]), net_timers_st),
    st.tuples(st.just("run"), st.floats(0.0, 1.0)),
)


@given(net_timers_st, net_timers_st, st.lists(net_op_st, max_size=12), st.integers(0, 2**32))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_after_any_history_a_clean_link_brings_both_up(
    ta: Timers, tb: Timers, ops: list[tuple], seed: int
) -> None:  # type: ignore[type-arg]
    net = Net(
        Session.start(ta, local_discr=LOCAL, now=0.0), Session.start(tb, local_discr=PEER, now=0.0), seed=seed
    )
    for op in ops:
        if op[0] == "cut":
            net.cut.add(op[1])
            net.run_for(op[2])
            net.cut.discard(op[1])
        elif op[0] == "admin":
            s = net.session(op[1])
            toggle = s.admin_up if s.state == State.ADMIN_DOWN else s.admin_down
            net.apply(op[1], toggle(net.now, rnd=0.5))
        elif op[0] == "reconfigure":
            net.apply(op[1], net.session(op[1]).reconfigure(op[2], net.now, rnd=0.5))
        else:
            net.run_for(op[1])
        _check_session(replace(net.a, local_discr=LOCAL))
    for name in ("a", "b"):
        net.apply(name, net.session(name).admin_up(net.now, rnd=0.5))
    net.run_for(10.0)
    assert (net.a.state, net.b.state) == (State.UP, State.UP), net.changes[-6:]
    assert not net.a.polling and not net.b.polling
    ta, tb = net.a.timers, net.b.timers
    assert net.a.tx_interval == max(ta.desired_min_tx, tb.required_min_rx)
    assert net.b.detection_time == ta.detect_mult * max(tb.required_min_rx, ta.desired_min_tx)
    assert all(not (p.poll and p.final) for _, _, p in net.sent)
    assert [d for d in net.discards if "RFC 5881" in d[1].reason] == []
