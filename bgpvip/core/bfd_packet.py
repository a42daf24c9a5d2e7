"""The BFD Control packet (RFC 5880 §4.1): its values, its codec and the checks on reception.

Pure side of the line: bytes in, values out, no sockets. `decode()` never raises, whatever
the bytes: it returns either a `ControlPacket` or a `Discard` that says which rule of RFC 5880
§6.8.6 the packet broke. The session-dependent rules (TTL, authentication, which session a
packet belongs to) live in `bgpvip.core.bfd`.

Intervals are microseconds, as on the wire.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 1
MANDATORY_LENGTH = 24
"""Length of the mandatory section, the whole packet when no authentication section follows."""
AUTH_MIN_LENGTH = 26
"""Shortest valid packet with the A bit: the mandatory section plus Auth Type and Auth Len."""
MAX_U32 = 0xFFFF_FFFF

_HEADER = struct.Struct("!BBBBIIIII")


class State(enum.IntEnum):
    """Session states (RFC 5880 §4.1, the Sta field)."""

    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3

    @property
    def label(self) -> str:
        return _STATE_LABELS[self]


_STATE_LABELS = {State.ADMIN_DOWN: "AdminDown", State.DOWN: "Down", State.INIT: "Init", State.UP: "Up"}


class Diag(enum.IntEnum):
    """Diagnostic codes (RFC 5880 §4.1): why the local session last changed state."""

    NONE = 0
    DETECTION_TIME_EXPIRED = 1
    ECHO_FAILED = 2
    NEIGHBOR_DOWN = 3
    FORWARDING_PLANE_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6
    ADMIN_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8

    @property
    def label(self) -> str:
        return _DIAG_LABELS[self]


_DIAG_LABELS = {
    Diag.NONE: "no diagnostic",
    Diag.DETECTION_TIME_EXPIRED: "control detection time expired",
    Diag.ECHO_FAILED: "echo function failed",
    Diag.NEIGHBOR_DOWN: "neighbor signaled session down",
    Diag.FORWARDING_PLANE_RESET: "forwarding plane reset",
    Diag.PATH_DOWN: "path down",
    Diag.CONCATENATED_PATH_DOWN: "concatenated path down",
    Diag.ADMIN_DOWN: "administratively down",
    Diag.REVERSE_CONCATENATED_PATH_DOWN: "reverse concatenated path down",
}


def diag_label(code: int) -> str:
    """A reader's name for a diagnostic code, including the ones this version does not know."""
    try:
        return Diag(code).label
    except ValueError:
        return f"diagnostic {code}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlPacket:
    """The mandatory section of a BFD Control packet (RFC 5880 §4.1).

    `diag` is an int, not a `Diag`: a peer may send codes newer than RFC 5880 (5 bits).
    `length` is the Length field; an authentication section, if any, is not kept: bgpvip
    does not implement authentication and discards such packets on reception.
    """

    state: State
    diag: int = Diag.NONE
    detect_mult: int
    my_discriminator: int
    your_discriminator: int
    desired_min_tx: int
    """Desired Min TX Interval, microseconds."""
    required_min_rx: int
    """Required Min RX Interval, microseconds."""
    required_min_echo_rx: int = 0
    """Required Min Echo RX Interval: always 0 from bgpvip (no echo function)."""
    poll: bool = False
    final: bool = False
    control_plane_independent: bool = False
    auth_present: bool = False
    demand: bool = False
    multipoint: bool = False
    version: int = VERSION
    length: int = MANDATORY_LENGTH

    def __post_init__(self) -> None:
        if not 0 <= self.diag <= 31 or not 0 <= self.version <= 7:
            raise ValueError("diag must fit 5 bits and version 3 bits")
        if not 0 <= self.detect_mult <= 255 or not 0 <= self.length <= 255:
            raise ValueError("detect_mult and length must fit one byte")
        for name in ("my_discriminator", "your_discriminator", "desired_min_tx", "required_min_rx"):
            if not 0 <= getattr(self, name) <= MAX_U32:
                raise ValueError(f"{name} must fit 32 bits")
        if not 0 <= self.required_min_echo_rx <= MAX_U32:
            raise ValueError("required_min_echo_rx must fit 32 bits")


@dataclass(frozen=True, slots=True)
class Discard:
    """A packet that must be dropped, with the rule it broke (for logs and counters)."""

    reason: str


def encode(p: ControlPacket) -> bytes:
    """The packet's mandatory section on the wire (24 bytes); nothing else is ever sent."""
    flags = (
        (p.poll << 5)
        | (p.final << 4)
        | (p.control_plane_independent << 3)
        | (p.auth_present << 2)
        | (p.demand << 1)
        | p.multipoint
    )
    return _HEADER.pack(
        (p.version << 5) | p.diag,
        (p.state << 6) | flags,
        p.detect_mult,
        p.length,
        p.my_discriminator,
        p.your_discriminator,
        p.desired_min_tx,
        p.required_min_rx,
        p.required_min_echo_rx,
    )


def decode(data: bytes) -> ControlPacket | Discard:
    """Parse a received datagram and apply the packet-only checks of RFC 5880 §6.8.6, in order.

    Never raises. The checks that need a session (Your Discriminator lookup, the A bit against
    the session's authentication, TTL) are in `bgpvip.core.bfd`.
    """
    if len(data) < MANDATORY_LENGTH:
        return Discard(f"datagram of {len(data)} bytes is shorter than a control packet ({MANDATORY_LENGTH})")
    b0, b1, mult, length, my, your, tx, rx, echo = _HEADER.unpack_from(data)
    packet = ControlPacket(
        version=b0 >> 5,
        diag=b0 & 0x1F,
        state=State(b1 >> 6),
        poll=bool(b1 & 0x20),
        final=bool(b1 & 0x10),
        control_plane_independent=bool(b1 & 0x08),
        auth_present=bool(b1 & 0x04),
        demand=bool(b1 & 0x02),
        multipoint=bool(b1 & 0x01),
        detect_mult=mult,
        length=length,
        my_discriminator=my,
        your_discriminator=your,
        desired_min_tx=tx,
        required_min_rx=rx,
        required_min_echo_rx=echo,
    )
    return check(packet, len(data)) or packet


def check(p: ControlPacket, datagram_length: int) -> Discard | None:
    """The session-independent reception rules of RFC 5880 §6.8.6, in the RFC's order."""
    if p.version != VERSION:
        return Discard(f"version {p.version}, not {VERSION}")
    minimum = AUTH_MIN_LENGTH if p.auth_present else MANDATORY_LENGTH
    if p.length < minimum:
        return Discard(
            f"length field {p.length} is below {minimum}" + (" (A bit set)" if p.auth_present else "")
        )
    if p.length > datagram_length:
        return Discard(f"length field {p.length} exceeds the datagram ({datagram_length} bytes)")
    if p.detect_mult == 0:
        return Discard("detect multiplier is 0")
    if p.multipoint:
        return Discard("multipoint bit is set")
    if p.my_discriminator == 0:
        return Discard("my discriminator is 0")
    if p.your_discriminator == 0 and p.state not in (State.DOWN, State.ADMIN_DOWN):
        return Discard(f"your discriminator is 0 in state {p.state.label}")
    return None
