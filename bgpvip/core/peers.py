"""BGP sessions as the speaker knows them: up or not, with which families, and why not.

Pure side of the line. ExaBGP's events, its `show neighbor` answer and the speaker's own
connection tests arrive as plain values; these functions fold them into a `PeerStatus` per
peer and turn the statuses into reasons: why a session is down (a NOTIFICATION's code and
subcode in words, a refused or unanswered TCP connection, with the MD5 password named as the
likely cause when the connection never completes), and why a route that is announced to
ExaBGP reaches no router (every session of its family is down, or up without the family).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from bgpvip.core.config import PeerConfig
from bgpvip.core.model import Reason

FAMILY_NAMES = {4: "ipv4", 6: "ipv6"}


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One BGP session, as last heard of."""

    state: str = "unknown"
    """`up` (established), `down`, or `unknown` (nothing heard yet)."""
    since: float = 0.0
    """Monotonic time of the last change between up and not up."""
    reason: str = ""
    """Why the session went down, or the last failure while it tries to come up."""
    families: frozenset[str] | None = None
    """Unicast families negotiated (`ipv4`, `ipv6`): those of the session being set up, then of
    the established one. None while not known (no `negotiated` message seen)."""
    notification: str = ""
    """The last NOTIFICATION, in words, until the session is up again."""
    diagnosis: str = ""
    """What the speaker's own TCP connection to the router showed while the session is down."""

    @property
    def up(self) -> bool:
        return self.state == "up"

    def why(self) -> str:
        """Why the session is not up, in one line: ExaBGP's reason, then the connection test."""
        return "; ".join(part for part in (self.reason, self.diagnosis) if part)


# --------------------------------------------------------------------------- NOTIFICATION text

_CODES = {
    1: "Message Header Error",
    2: "OPEN Message Error",
    3: "UPDATE Message Error",
    4: "Hold Timer Expired",
    5: "Finite State Machine Error",
    6: "Cease",
    7: "ROUTE-REFRESH Message Error",
}
_SUBCODES = {
    # RFC 4271 6.1
    (1, 1): "Connection Not Synchronized",
    (1, 2): "Bad Message Length",
    (1, 3): "Bad Message Type",
    # RFC 4271 6.2, RFC 5492, RFC 9234
    (2, 1): "Unsupported Version Number",
    (2, 2): "Bad Peer AS",
    (2, 3): "Bad BGP Identifier",
    (2, 4): "Unsupported Optional Parameter",
    (2, 6): "Unacceptable Hold Time",
    (2, 7): "Unsupported Capability",
    (2, 11): "Role Mismatch",
    # RFC 4271 6.3
    (3, 1): "Malformed Attribute List",
    (3, 2): "Unrecognized Well-known Attribute",
    (3, 3): "Missing Well-known Attribute",
    (3, 4): "Attribute Flags Error",
    (3, 5): "Attribute Length Error",
    (3, 6): "Invalid ORIGIN Attribute",
    (3, 8): "Invalid NEXT_HOP Attribute",
    (3, 9): "Optional Attribute Error",
    (3, 10): "Invalid Network Field",
    (3, 11): "Malformed AS_PATH",
    # RFC 6608
    (5, 1): "Receive Unexpected Message in OpenSent State",
    (5, 2): "Receive Unexpected Message in OpenConfirm State",
    (5, 3): "Receive Unexpected Message in Established State",
    # RFC 4486, RFC 8538, RFC 9384
    (6, 1): "Maximum Number of Prefixes Reached",
    (6, 2): "Administrative Shutdown",
    (6, 3): "Peer De-configured",
    (6, 4): "Administrative Reset",
    (6, 5): "Connection Rejected",
    (6, 6): "Other Configuration Change",
    (6, 7): "Connection Collision Resolution",
    (6, 8): "Out of Resources",
    (6, 9): "Hard Reset",
    (6, 10): "BFD Down",
    # RFC 7313
    (7, 1): "Invalid Message Length",
}


def notification_text(code: int, subcode: int) -> str:
    """`Cease/Administrative Shutdown (6/2)`; unknown codes keep their numbers."""
    name = _CODES.get(code, "unknown error code")
    sub = _SUBCODES.get((code, subcode))
    if sub is None and subcode:
        sub = f"subcode {subcode}"
    return f"{name}/{sub} ({code}/{subcode})" if sub else f"{name} ({code}/{subcode})"


def _exabgp_reason(reason: str, notification: str) -> str:
    """ExaBGP's words for a session that went down, made readable: `notification received
    (6,2)` becomes the NOTIFICATION in words (with the data it carried, when it was seen)."""
    for direction in ("received", "sent"):
        head = f"notification {direction} ("
        if reason.startswith(head) and reason.endswith(")"):
            if notification:
                return notification
            try:
                code, subcode = (int(x) for x in reason[len(head) : -1].split(","))
            except ValueError:
                return reason
            return f"NOTIFICATION {direction}: {notification_text(code, subcode)}"
    if reason == "closing connection":
        return "the TCP connection failed or was closed"
    return reason


# --------------------------------------------------------------------------- folding events


def on_state(old: PeerStatus, state: str, reason: str, now: float) -> PeerStatus:
    """ExaBGP's `up`, `connected` or `down` event."""
    if state == "up":
        return PeerStatus(state="up", since=now, families=old.families)
    if state == "connected":
        # ExaBGP also says `connected` for a connection the router refused at once
        return old if old.state == "down" else replace(old, state="down", since=now)
    since = now if old.state != "down" else old.since
    return PeerStatus(
        state="down",
        since=since,
        reason=_exabgp_reason(reason, old.notification) or old.reason,
        notification=old.notification,
        diagnosis=old.diagnosis,
    )


def on_negotiated(old: PeerStatus, families: frozenset[str]) -> PeerStatus:
    """ExaBGP's `negotiated` message, which comes just before `up`."""
    return replace(old, families=families)


def on_notification(old: PeerStatus, direction: str, code: int, subcode: int, text: str) -> PeerStatus:
    """A NOTIFICATION ExaBGP sent or received; the `down` event that follows it uses it."""
    words = (
        f"NOTIFICATION {'received' if direction == 'receive' else 'sent'}: {notification_text(code, subcode)}"
    )
    if text:
        words += f': "{text}"'
    return replace(old, notification=words)


def on_read(old: PeerStatus, established: bool, families: frozenset[str] | None, now: float) -> PeerStatus:
    """What `show neighbor` said (at start and on every resync): the truth when an event was
    missed, for example while no speaker was running."""
    if established:
        if old.up and old.families == families:
            return old
        return PeerStatus(state="up", since=old.since if old.up else now, families=families)
    if old.state == "down":
        return old
    return PeerStatus(state="down", since=now, reason=old.reason, notification=old.notification)


def on_probe(old: PeerStatus, diagnosis: str) -> PeerStatus:
    """The speaker's own connection test; kept only while the session is not up."""
    return old if old.up else replace(old, diagnosis=diagnosis)


# --------------------------------------------------------------------------- connection tests


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """One TCP connection attempt to the router's BGP port, as the kernel answered it."""

    error: str = ""
    """`""` when it connected; else `ECONNREFUSED`, `ETIMEDOUT`, `EHOSTUNREACH`, ... (errno name)."""
    seconds: float = 0.0
    md5_drops: int = 0
    """TCP segments this host dropped for a missing or wrong MD5 signature meanwhile
    (TcpExt TCPMD5NotFound + TCPMD5Unexpected + TCPMD5Failure)."""


def explain_connect(result: ConnectResult, *, port: int, md5: bool) -> str:
    """The connection test in words, naming the likely cause."""
    where = f"port {port}"
    kernel = (
        f"; this host dropped {result.md5_drops} TCP segment(s) for a missing or wrong MD5 signature"
        if result.md5_drops
        else ""
    )
    if not result.error:
        if result.md5_drops:
            return f"TCP to {where} works{kernel}: the router's MD5 password differs from password_file"
        return f"TCP to {where} works: the BGP session itself fails (see the router's log)"
    if result.error == "ECONNREFUSED":
        return f"connection refused on {where}: BGP is not running there, or not on this port"
    if result.error in ("EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL"):
        return f"no route to the router ({result.error}): check the link and local_address"
    if result.error in ("ETIMEDOUT", "EINPROGRESS"):
        return _never_completes(f"no answer in {result.seconds:.0f}s", port, md5, result.md5_drops)
    return f"TCP to {where} failed: {result.error}{kernel}"


def explain_unanswered(retransmits: int, *, port: int, md5: bool, md5_drops: int = 0) -> str:
    """ExaBGP's own connection attempt waits in SYN-SENT, its SYN sent `retransmits` more times."""
    return _never_completes(f"SYN sent {retransmits + 1} times, no answer", port, md5, md5_drops)


def _never_completes(how: str, port: int, md5: bool, md5_drops: int) -> str:
    kernel = (
        f"; this host dropped {md5_drops} TCP segment(s) for a missing or wrong MD5 signature"
        if md5_drops
        else ""
    )
    if md5 or md5_drops:
        cause = "the MD5 password (password_file) does not match the router's, or a firewall drops it"
    else:
        cause = "the router expects an MD5 password (set password_file), a firewall drops it, or it is down"
    return f"TCP to port {port} never completes ({how}){kernel}: {cause}"


# --------------------------------------------------------------------------- routes and sessions


def family_problems(
    peers: Sequence[PeerConfig], statuses: Mapping[str, PeerStatus]
) -> dict[int, tuple[Reason, str]]:
    """Why the routes of a family (4, 6) reach no router, for each family whose routes reach
    none: every session of that family is down, or up without the family (a router whose OPEN
    offered none of ExaBGP's families: ExaBGP then sends nothing, and says so only in its log).
    A family is left out when a session carries it, and when nothing is known of its sessions."""
    problems: dict[int, tuple[Reason, str]] = {}
    for version, name in FAMILY_NAMES.items():
        configured = [(p, statuses.get(str(p.address), PeerStatus())) for p in peers if name in p.families]
        if not configured or all(st.state == "unknown" for _, st in configured):
            continue
        if any(st.up and (st.families is None or name in st.families) for _, st in configured):
            continue
        without = [p.label for p, st in configured if st.up]
        if without:
            problems[version] = (
                Reason.FAMILY_NOT_NEGOTIATED,
                f"{', '.join(without)} up without {name} unicast: the router's OPEN did not offer it "
                "(a router that ignores capabilities offers none)",
            )
        else:
            problems[version] = (
                Reason.PEERS_DOWN,
                "; ".join(f"{p.label}: {st.why() or st.state}" for p, st in configured),
            )
    return problems


def session_problem(peer: PeerConfig, status: PeerStatus) -> str:
    """What is wrong with one peer's session, or `""`: why it is down, or which of its
    configured families an established session lacks."""
    if status.state == "unknown":
        return ""
    if not status.up:
        return status.why()
    if status.families is None:
        return ""
    missing = [f for f in peer.families if f not in status.families]
    if not missing:
        return ""
    return f"up without {', '.join(f'{f} unicast' for f in missing)}: the router's OPEN did not offer it"


def carries(peer: PeerConfig, status: PeerStatus) -> bool:
    """The session is up with every family the peer is configured for (as far as known)."""
    return status.up and not session_problem(peer, status)
