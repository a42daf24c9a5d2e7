"""One BFD session (RFC 5880 asynchronous mode, RFC 5881 single hop) as a pure state machine.

Pure side of the line: no sockets, no clock, no random source. Every operation takes the time
(`now`, seconds on any monotonic clock) and, where it may schedule a transmission, one random
number `rnd` in [0, 1) for the jitter; it returns the new `Session` and a tuple of outputs:
`Transmit` (a packet to send now), `StateChange` (with the diagnostic) and `Discard` (a received
packet dropped, with the rule it broke). The adapter (`bgpvip.adapters.bfd`) owns the sockets
and the timers and calls `tick(now)` at `next_deadline()`.

What is implemented, by section of RFC 5880:
- §6.2 / §6.8.6: the state machine (AdminDown, Down, Init, Up) and every reception check; the
  Demand bit is ignored (bgpvip never asks for Demand mode and keeps transmitting periodically);
  a packet with the A bit is discarded (no authentication is configured).
- §6.5 / §6.8.3: a change of the desired TX or required RX interval while Up runs a Poll
  Sequence; a TX increase and an RX decrease take effect only once the Final arrives, every
  other change at once; a second change waits for the poll to end and for a packet without the
  F bit (the third option of §6.8.3). While not Up the advertised TX interval is at least 1 s.
- §6.8.4: detection time = remote Detect Mult x max(required RX in use, remote desired TX);
  it also clears the remote discriminator (§6.8.1).
- §6.8.7: transmit interval = max(desired TX in use, remote required RX), reduced by a random
  0-25 % per packet (10-25 % when the local Detect Mult is 1); no periodic transmission while
  the remote asks for none (Required Min RX 0); a packet at once whenever its contents change;
  a Poll is answered at once with a Final; P and F are never set together.
- §6.8.16: AdminDown with a diagnostic (7 by default) for planned stops. A received AdminDown
  takes the session Down with diagnostic 3, and `StateChange.failure` is false for it
  (RFC 5882 §3.2: it is not a path failure).
- Hand-over across a planned restart of the speaker (`Handover`, `Session.resume`): the old
  process slows its transmit interval with a Poll Sequence (§6.8.3), so the router's detection
  time grows to cover the restart, and leaves a snapshot of the session; the new process goes
  on with the same discriminators in state Up and polls back to the configured rate. The
  router sees one session that never went down. Why (FRR 8.4 and BIRD 2.0.12 treat AdminDown
  as a failure) is in docs/bfd.md.

The C bit (control plane independent, §4.1) is whatever the session was started with, 0 unless
asked: bgpvip's BFD runs on the speaker's own event loop and shares its fate on purpose, so a
stalled speaker takes the session down, and 0 says exactly that. RFC 5882 §4.3.1 lets a router
use the bit to decide whether a BFD Down during BGP graceful restart is a failure; which value
bgpvip sends, and why, is in docs/bfd.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address

from bgpvip.core.bfd_packet import MAX_U32, ControlPacket, Diag, Discard, State, check

SLOW_TX_US = 1_000_000
"""RFC 5880 §6.8.3: the desired TX interval while the session is not Up, at least one second."""
GTSM_TTL = 255
"""RFC 5881 §5: single-hop packets are sent with TTL / hop limit 255 and accepted only with it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Timers:
    """The operator's wish for one session, microseconds."""

    desired_min_tx: int
    required_min_rx: int
    detect_mult: int

    def __post_init__(self) -> None:
        if not 0 < self.desired_min_tx <= MAX_U32:
            raise ValueError("desired_min_tx must be 1..2^32-1 microseconds")
        if not 0 < self.required_min_rx <= MAX_U32:
            raise ValueError("required_min_rx must be 1..2^32-1 microseconds")
        if not 0 < self.detect_mult <= 255:
            raise ValueError("detect_mult must be 1..255")


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send this packet now."""

    packet: ControlPacket


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChange:
    """The session changed state; `diag` is the local diagnostic recorded with the change."""

    old: State
    new: State
    diag: Diag
    remote_state: State
    """The state the peer last reported: AdminDown marks a planned stop on its side."""
    at: float

    @property
    def failure(self) -> bool:
        """Up → not Up for a reason other than an administrative stop on either side.

        RFC 5882 §3.2: a peer signalling AdminDown is not a failure of the path, so a client
        protocol must not tear down on it as it would on a detection timeout.
        """
        return self.old == State.UP and self.new == State.DOWN and self.remote_state != State.ADMIN_DOWN

    @property
    def reason(self) -> str:
        if self.new == State.DOWN and self.remote_state == State.ADMIN_DOWN:
            return "neighbor signaled AdminDown (planned, not a failure)"
        return self.diag.label


Output = Transmit | StateChange | Discard


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """The state variables of RFC 5880 §6.8.1 plus the timers of one session.

    Build one with `Session.start()`. Instances are immutable; every operation returns a new one.
    """

    timers: Timers
    """The configured wish; the advertised values follow it as §6.8.3 allows."""
    local_discr: int
    control_plane_independent: bool = False
    """The C bit sent in every packet (RFC 5880 §4.1); fixed for the session's life."""
    state: State = State.DOWN
    diag: Diag = Diag.NONE
    remote_state: State = State.DOWN
    remote_discr: int = 0
    remote_min_rx: int = 1
    remote_desired_min_tx: int = 0
    remote_detect_mult: int = 0
    desired_min_tx: int
    """bfd.DesiredMinTxInterval: advertised in every packet."""
    required_min_rx: int
    """bfd.RequiredMinRxInterval: advertised in every packet."""
    tx_in_use: int
    """The desired TX that paces transmission: an increase waits for the Final (§6.8.3)."""
    rx_in_use: int
    """The required RX in the detection time: a decrease waits for the Final (§6.8.3)."""
    polling: bool = False
    poll_settling: bool = False
    """A poll ended; the next one waits for a packet without the F bit (§6.8.3)."""
    last_sent: ControlPacket | None = None
    """Contents (P and F cleared) of the last packet sent, to send again at once when they change."""
    last_tx: float | None = None
    next_tx: float | None = None
    last_rx: float | None = None
    detect_deadline: float | None = None

    @classmethod
    def start(
        cls, timers: Timers, *, local_discr: int, now: float, control_plane_independent: bool = False
    ) -> Session:
        """A new session in state Down; its first packet is due at `now`."""
        if not 0 < local_discr <= MAX_U32:
            raise ValueError("local_discr must be 1..2^32-1")
        slow = max(timers.desired_min_tx, SLOW_TX_US)
        return cls(
            timers=timers,
            local_discr=local_discr,
            control_plane_independent=control_plane_independent,
            desired_min_tx=slow,
            required_min_rx=timers.required_min_rx,
            tx_in_use=slow,
            rx_in_use=timers.required_min_rx,
            next_tx=now,
        )

    @classmethod
    def resume(
        cls, handover: Handover, timers: Timers, *, now: float, control_plane_independent: bool = False
    ) -> Session:
        """Go on with a session another process handed over (`handover()`): state Up, the same
        discriminators, the slow interval the router expects, a packet due at once, and a Poll
        Sequence back to `timers` as soon as it is sent (§6.8.3: a faster TX applies at once).

        The detection timeout starts with the first packet received. If the router gave up
        meanwhile, its first packet says Down and this session follows it down (§6.8.6)."""
        return cls(
            timers=timers,
            local_discr=handover.local_discr,
            control_plane_independent=control_plane_independent,
            state=State.UP,
            remote_state=State.UP,
            remote_discr=handover.remote_discr,
            remote_min_rx=handover.remote_min_rx,
            remote_desired_min_tx=handover.remote_desired_min_tx,
            remote_detect_mult=handover.remote_detect_mult,
            desired_min_tx=handover.desired_min_tx,
            required_min_rx=handover.required_min_rx,
            tx_in_use=handover.desired_min_tx,
            rx_in_use=handover.required_min_rx,
            next_tx=now,
        )

    def handover(self) -> Handover | None:
        """A snapshot for `resume()`, or None when the session is not Up with the interval it
        advertises in use (nothing to hand over, or a Poll Sequence still running)."""
        if self.state != State.UP or self.polling or self.remote_detect_mult == 0 or not self.remote_discr:
            return None
        return Handover(
            local_discr=self.local_discr,
            remote_discr=self.remote_discr,
            desired_min_tx=self.desired_min_tx,
            required_min_rx=self.required_min_rx,
            detect_mult=self.timers.detect_mult,
            remote_min_rx=self.remote_min_rx,
            remote_desired_min_tx=self.remote_desired_min_tx,
            remote_detect_mult=self.remote_detect_mult,
        )

    # ------------------------------------------------------------------ derived values

    @property
    def tx_interval(self) -> int:
        """The negotiated transmit interval, microseconds, before jitter (§6.8.2, §6.8.7)."""
        return max(self.tx_in_use, self.remote_min_rx)

    @property
    def detection_time(self) -> int | None:
        """Microseconds without a packet before the session fails (§6.8.4); None before any packet."""
        if self.remote_detect_mult == 0:
            return None
        return self.remote_detect_mult * max(self.rx_in_use, self.remote_desired_min_tx)

    @property
    def rx_interval(self) -> int | None:
        """The interval at which the peer transmits to us, as negotiated, microseconds."""
        if self.remote_detect_mult == 0:
            return None
        return max(self.rx_in_use, self.remote_desired_min_tx)

    def next_deadline(self) -> float | None:
        """When `tick()` has something to do (a transmission or the detection timeout)."""
        deadlines = [t for t in (self.next_tx, self.detect_deadline) if t is not None]
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------------ operations

    def tick(self, now: float, *, rnd: float) -> tuple[Session, tuple[Output, ...]]:
        """Run the timers: the detection timeout (§6.8.4), then a periodic transmission (§6.8.7)."""
        out: list[Output] = []
        s = self
        if s.detect_deadline is not None and now >= s.detect_deadline:
            s = replace(
                s,
                remote_discr=0,
                remote_min_rx=1,
                remote_desired_min_tx=0,
                remote_detect_mult=0,
                detect_deadline=None,
            )
            if s.state in (State.INIT, State.UP):
                s = s._transition(State.DOWN, Diag.DETECTION_TIME_EXPIRED, now, out)
        if s.next_tx is not None and now >= s.next_tx:
            s = s._send(now, rnd, out)
        return s._settle(self, now, rnd, out)

    def receive(
        self, packet: ControlPacket, *, now: float, ttl: int | None, rnd: float
    ) -> tuple[Session, tuple[Output, ...]]:
        """Process a received Control packet (RFC 5880 §6.8.6, RFC 5881 §5).

        `packet` may come straight from `decode()`; its packet-only checks run again here so a
        packet built any other way is held to the same rules. `ttl` is the received TTL or hop
        limit (None when the kernel did not report it: discarded, GTSM cannot be checked).
        """
        if ttl != GTSM_TTL:
            return self, (Discard(f"TTL/hop limit {ttl}, not {GTSM_TTL} (RFC 5881 §5)"),)
        if (bad := check(packet, packet.length)) is not None:
            return self, (bad,)
        if packet.your_discriminator not in (0, self.local_discr):
            return self, (Discard(f"your discriminator {packet.your_discriminator} is not this session's"),)
        if packet.auth_present:
            return self, (Discard("A bit set, but no authentication is configured"),)
        out: list[Output] = []
        ends_poll = packet.final and self.polling  # the Final of our Poll Sequence
        rx_in_use = self.required_min_rx if ends_poll else self.rx_in_use
        # One `replace` for everything a packet updates: this is the per-packet hot path.
        s = replace(
            self,
            remote_discr=packet.my_discriminator,
            remote_state=packet.state,
            remote_min_rx=packet.required_min_rx,
            remote_desired_min_tx=packet.desired_min_tx,
            remote_detect_mult=packet.detect_mult,
            polling=self.polling and not ends_poll,
            poll_settling=ends_poll or (self.poll_settling and packet.final),
            tx_in_use=self.desired_min_tx if ends_poll else self.tx_in_use,
            rx_in_use=rx_in_use,
            last_rx=now,
            detect_deadline=now + packet.detect_mult * max(rx_in_use, packet.desired_min_tx) / 1e6,
        )
        if s.state == State.ADMIN_DOWN:
            # Discarded for the state machine, but a valid packet from the peer all the same: it
            # keeps the remote discriminator (§6.8.1), so AdminDown packets keep naming the peer.
            out.append(Discard("the local session is AdminDown"))
            return s._settle(self, now, rnd, out)
        if packet.state == State.ADMIN_DOWN:
            if s.state != State.DOWN:
                s = s._transition(State.DOWN, Diag.NEIGHBOR_DOWN, now, out)
        elif s.state == State.DOWN:
            if packet.state == State.DOWN:
                s = s._transition(State.INIT, Diag.NONE, now, out)
            elif packet.state == State.INIT:
                s = s._transition(State.UP, Diag.NONE, now, out)
        elif s.state == State.INIT:
            if packet.state in (State.INIT, State.UP):
                s = s._transition(State.UP, Diag.NONE, now, out)
        elif packet.state == State.DOWN:  # we are Up
            s = s._transition(State.DOWN, Diag.NEIGHBOR_DOWN, now, out)
        if packet.poll:
            s = s._send(now, rnd, out, final=True)
        return s._settle(self, now, rnd, out)

    def admin_down(
        self, now: float, *, rnd: float, diag: Diag = Diag.ADMIN_DOWN
    ) -> tuple[Session, tuple[Output, ...]]:
        """Stop the session on purpose (§6.8.16): AdminDown goes out at once and then periodically."""
        if self.state == State.ADMIN_DOWN:
            return self, ()
        out: list[Output] = []
        return self._transition(State.ADMIN_DOWN, diag, now, out)._settle(self, now, rnd, out)

    def admin_up(self, now: float, *, rnd: float) -> tuple[Session, tuple[Output, ...]]:
        """Enable an AdminDown session again: it goes Down and the handshake starts over."""
        if self.state != State.ADMIN_DOWN:
            return self, ()
        out: list[Output] = []
        return self._transition(State.DOWN, Diag.NONE, now, out)._settle(self, now, rnd, out)

    def reconfigure(self, timers: Timers, now: float, *, rnd: float) -> tuple[Session, tuple[Output, ...]]:
        """New intervals or multiplier. While Up, interval changes run a Poll Sequence (§6.8.3)."""
        out: list[Output] = []
        s = replace(self, timers=timers)
        if s.state != State.UP:
            s = s._not_up_timers()
        return s._settle(self, now, rnd, out)

    # ------------------------------------------------------------------ internals

    def _not_up_timers(self) -> Session:
        slow = max(self.timers.desired_min_tx, SLOW_TX_US)
        return replace(
            self,
            desired_min_tx=slow,
            tx_in_use=slow,
            required_min_rx=self.timers.required_min_rx,
            rx_in_use=self.timers.required_min_rx,
            polling=False,
            poll_settling=False,
        )

    def _transition(self, new: State, diag: Diag, now: float, out: list[Output]) -> Session:
        out.append(StateChange(old=self.state, new=new, diag=diag, remote_state=self.remote_state, at=now))
        s = replace(self, state=new, diag=diag)
        # Leaving Up: back to the slow rate at once (no poll: nothing on either side depends on
        # the fast rate any more). Entering Up: `_settle` polls for the configured rate.
        return s if new == State.UP else s._not_up_timers()

    def _packet(self, *, poll: bool, final: bool) -> ControlPacket:
        return ControlPacket(
            state=self.state,
            diag=self.diag,
            poll=poll,
            final=final,
            detect_mult=self.timers.detect_mult,
            control_plane_independent=self.control_plane_independent,
            my_discriminator=self.local_discr,
            your_discriminator=self.remote_discr,
            desired_min_tx=self.desired_min_tx,
            required_min_rx=self.required_min_rx,
        )

    def _jittered(self, interval_us: int, rnd: float) -> float:
        """Seconds until the next periodic packet: 75-100 % of the interval, 75-90 % at Detect Mult 1."""
        factor = 0.9 - 0.15 * rnd if self.timers.detect_mult == 1 else 1.0 - 0.25 * rnd
        return interval_us * factor / 1e6

    def _send(self, now: float, rnd: float, out: list[Output], *, final: bool = False) -> Session:
        contents = self._packet(poll=False, final=False)
        poll = self.polling and not final
        out.append(Transmit(replace(contents, poll=poll, final=final) if poll or final else contents))
        if final:  # a Final answers a Poll out of schedule (§6.8.7)
            return replace(self, last_sent=contents)
        return replace(self, last_sent=contents, last_tx=now, next_tx=self._periodic_after(now, rnd))

    def _periodic_after(self, last_tx: float, rnd: float) -> float | None:
        if self.remote_min_rx == 0:  # §6.8.7: the peer wants no periodic packets
            return None
        return last_tx + self._jittered(self.tx_interval, rnd)

    def _settle(
        self, before: Session, now: float, rnd: float, out: list[Output]
    ) -> tuple[Session, tuple[Output, ...]]:
        """After any operation: start a pending poll, follow interval changes, and send at once
        if the packet's contents changed (§6.8.7)."""
        s = self
        if (
            s.state == State.UP
            and not s.polling
            and not s.poll_settling
            and (s.desired_min_tx, s.required_min_rx) != (s.timers.desired_min_tx, s.timers.required_min_rx)
        ):
            s = replace(
                s,
                polling=True,
                desired_min_tx=s.timers.desired_min_tx,
                required_min_rx=s.timers.required_min_rx,
                tx_in_use=min(s.tx_in_use, s.timers.desired_min_tx),
                rx_in_use=max(s.rx_in_use, s.timers.required_min_rx),
            )
        if s.tx_interval != before.tx_interval or (s.remote_min_rx == 0) != (before.remote_min_rx == 0):
            # §6.8.3: a shorter interval applies to the wait since the last packet, at once;
            # a longer one too, so no packet goes out faster than the peer now allows.
            base = s.last_tx if s.last_tx is not None else now
            after = s._periodic_after(base, rnd)
            s = replace(s, next_tx=None if after is None else max(now, after))
        detection = s.detection_time
        deadline = None if detection is None or s.last_rx is None else s.last_rx + detection / 1e6
        if deadline != s.detect_deadline:
            s = replace(s, detect_deadline=deadline)
        if s._packet(poll=False, final=False) != s.last_sent:
            s = s._send(now, rnd, out)
        return s, tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Handover:
    """What a new process needs to go on with an Up session (`Session.resume`): the session's
    identity and the values both sides last advertised. Intervals in microseconds."""

    local_discr: int
    remote_discr: int
    desired_min_tx: int
    """What this side advertised last: the slow interval the router's detection time is based on."""
    required_min_rx: int
    detect_mult: int
    remote_min_rx: int
    remote_desired_min_tx: int
    remote_detect_mult: int

    def __post_init__(self) -> None:
        for name in (
            "local_discr",
            "remote_discr",
            "desired_min_tx",
            "required_min_rx",
            "remote_desired_min_tx",
        ):
            if not 0 < getattr(self, name) <= MAX_U32:
                raise ValueError(f"{name} must be 1..2^32-1")
        if not 0 <= self.remote_min_rx <= MAX_U32:
            raise ValueError("remote_min_rx must be 0..2^32-1")
        for name in ("detect_mult", "remote_detect_mult"):
            if not 0 < getattr(self, name) <= 255:
                raise ValueError(f"{name} must be 1..255")

    @property
    def router_detection_time(self) -> int:
        """Microseconds the router waits for our next packet: our Detect Mult times the larger
        of its required RX and our advertised TX (§6.8.4, seen from the router)."""
        return self.detect_mult * max(self.remote_min_rx, self.desired_min_tx)


# ---------------------------------------------------------------------- demultiplexing


@dataclass(frozen=True, slots=True)
class Path:
    """Where a single-hop session's packets come from: the peer's address and, for IPv6
    link-local peers, the interface (0: any interface)."""

    peer: IPv4Address | IPv6Address
    ifindex: int = 0


def demultiplex(
    packet: ControlPacket,
    *,
    source: IPv4Address | IPv6Address,
    ifindex: int,
    by_discriminator: Mapping[int, Path],
    by_path: Mapping[Path, int],
) -> int | Discard:
    """The local discriminator of the session a received packet belongs to (RFC 5880 §6.8.6,
    RFC 5881 §4): by Your Discriminator when it is set, else by source address and interface.

    A packet naming a session of another peer is discarded: a single-hop session has exactly
    one peer, so such a packet is spoofed or misdirected.
    """
    if packet.your_discriminator:
        path = by_discriminator.get(packet.your_discriminator)
        if path is None:
            return Discard(f"no session has discriminator {packet.your_discriminator}")
        if path.peer != source or (path.ifindex and path.ifindex != ifindex):
            return Discard(
                f"discriminator {packet.your_discriminator} belongs to the session with {path.peer}, "
                f"not {source}"
            )
        return packet.your_discriminator
    found = by_path.get(Path(source, ifindex))
    if found is None:
        found = by_path.get(Path(source, 0))
    if found is None:
        return Discard(f"no session for {source}")
    return found
