"""BFD over UDP (RFC 5881, single hop, IPv4 and IPv6): the sockets and timers that drive the
pure sessions of `bgpvip.core.bfd`.

I/O side of the line: this module decides nothing about the protocol. It receives on UDP port
3784 (one socket per local address), reads each datagram's TTL / hop limit and interface from
the kernel (IP_RECVTTL / IPV6_RECVHOPLIMIT and the packet-info messages, through `recvmsg`),
demultiplexes (Your Discriminator, else peer address and interface), and hands the packet and
its TTL to the session: the core decides what to drop. Each session sends from its own socket,
bound to the local address and a random source port in 49152-65535, with TTL / hop limit 255
and traffic class CS6; IPv6 link-local peers need `interface` (the socket is bound to it).

**Fate sharing is the point.** Every timer of every session runs on the caller's asyncio event
loop, through `loop.call_at`, and there are no threads. When the loop stalls (a hung speaker, a
blocking call, a stopped process), no packet goes out, and the router's detection time expires:
the router drops this host's routes whenever the program that decides them is not running well.
A BFD daemon beside the speaker (FRR's bfdd on the node) would keep the session Up through such
a hang; this one cannot, by design. The C bit is a per-session choice (`PeerSpec`), 0 unless
asked; docs/bfd.md says which value the speaker uses with graceful restart and why.

Planned stops use AdminDown (`admin_down()` or `shutdown()`): the router takes the session down
with diagnostic 7 on our side and 3 on its side, which RFC 5882 says is not a failure. FRR 8.4
and BIRD 2.0.12 tear BGP down for it all the same, so a planned *restart* of the speaker hands
its sessions over instead (`hand_over()`, then `add(spec, resume=...)` in the new process): the
router's session never goes down (docs/bfd.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import json
import logging
import random
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from bgpvip import logs
from bgpvip.core.bfd import Handover, Output, Path, Session, StateChange, Timers, Transmit, demultiplex
from bgpvip.core.bfd_packet import ControlPacket, Diag, Discard, State, decode, encode

log = logging.getLogger(__name__)

CONTROL_PORT = 3784
"""RFC 5881 §4: single-hop Control packets go to this UDP port."""
SOURCE_PORTS = (49152, 65535)
"""RFC 5881 §4: the source port range, one port per session for its whole life."""
TTL = 255
TOS_CS6 = 0xC0
"""Network control traffic class, as routers mark their own BFD."""

# Linux values; Python does not export every one of them.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
_IP_TTL = socket.IP_TTL
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_TTL_MESSAGES = ((socket.IPPROTO_IP, _IP_TTL), (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT))
_RECV_SIZE = 512
"""Bigger than any Control packet with an authentication section: anything longer is not BFD."""
_CMSG_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(20)
_PORT_TRIES = 64
_MAX_READS = 256
"""Datagrams read per readable event, so a flood cannot starve the loop's other work."""

IPAddress = IPv4Address | IPv6Address


class BfdError(Exception):
    """A session could not be set up (address not on this host, no free port, bad interface)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerSpec:
    """One BFD session the speaker wants: towards `peer`, from `local`."""

    peer: IPAddress
    local: IPAddress
    timers: Timers
    interface: str | None = None
    """Required for an IPv6 link-local peer; optional otherwise (then any interface matches)."""
    name: str | None = None
    """Label in logs and status. Default: the peer's address."""
    control_plane_independent: bool = False
    """The C bit of every packet (RFC 5880 §4.1). RFC 5882 §4.3.1: a router may ignore a BFD Down
    during BGP graceful restart when it is 0 (FRR's `bfd check-control-plane-failure`)."""

    @property
    def label(self) -> str:
        return self.name or str(self.peer)

    @property
    def key(self) -> tuple[IPAddress, str | None]:
        return (self.peer, self.interface)


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """A session changed state: for logs, metrics and the speaker's decisions."""

    name: str
    peer: IPAddress
    old: State
    new: State
    diag: Diag
    remote_state: State
    failure: bool
    """Up → Down for a reason other than an administrative stop on either side (RFC 5882 §3.2)."""
    reason: str
    at: float
    """The loop's clock (`loop.time()`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoverRecord:
    """One session handed over by a process that stops on purpose, for the process that follows
    (`Bfd.hand_over()`, `Bfd.add(spec, resume=record)`); `dumps`/`loads` carry it in a file."""

    peer: IPAddress
    local: IPAddress
    interface: str | None
    source_port: int
    handover: Handover
    valid_until: float
    """Wall-clock time (`time.time()`) the router gives up on the session: after it, a new
    process starts afresh instead."""

    @property
    def key(self) -> tuple[IPAddress, str | None]:
        return (self.peer, self.interface)

    def matches(self, spec: PeerSpec, now: float) -> bool:
        """Whether `spec` may go on with this session at wall-clock time `now`."""
        return self.key == spec.key and self.local == spec.local and now < self.valid_until


def dumps(records: Iterable[HandoverRecord]) -> str:
    return json.dumps(
        [
            {
                "peer": str(r.peer),
                "local": str(r.local),
                "interface": r.interface,
                "source_port": r.source_port,
                "valid_until": r.valid_until,
                "handover": dataclasses.asdict(r.handover),
            }
            for r in records
        ]
    )


def loads(text: str) -> list[HandoverRecord]:
    """Records from `dumps`; raises ValueError (naming the problem) for anything else."""
    try:
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError("not a list")
        return [
            HandoverRecord(
                peer=ip_address(item["peer"]),
                local=ip_address(item["local"]),
                interface=item["interface"],
                source_port=int(item["source_port"]),
                valid_until=float(item["valid_until"]),
                handover=Handover(**item["handover"]),
            )
            for item in items
        ]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a BFD hand-over record: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStatus:
    """A snapshot of one session for `bgpvip routes`, `/status` and metrics. Intervals in ms."""

    name: str
    peer: IPAddress
    local: IPAddress
    interface: str | None
    state: State
    remote_state: State
    diag: Diag
    """The local diagnostic now (RFC 5880 bfd.LocalDiag)."""
    last_down_diag: Diag | None
    """Why the session last left Up, None if it never did."""
    last_down_failure: bool | None
    since: float
    """Loop time of the last state change (of the start, before any)."""
    local_discriminator: int
    remote_discriminator: int
    source_port: int
    transmit_interval_ms: float
    """Negotiated: the larger of our desired TX in use and the peer's required RX."""
    receive_interval_ms: float | None
    """Negotiated: the larger of our required RX in use and the peer's desired TX."""
    detection_time_ms: float | None
    """How long we wait without a packet before declaring the peer down."""
    remote_detect_mult: int
    polling: bool
    packets_in: int
    packets_out: int
    discarded: int
    send_errors: int
    last_discard: str | None


@dataclass(eq=False)
class _Entry:
    spec: PeerSpec
    session: Session
    tx: socket.socket
    rx: _Receiver
    scope_id: int
    source_port: int
    since: float
    timer: asyncio.TimerHandle | None = None
    last_down_diag: Diag | None = None
    last_down_failure: bool | None = None
    packets_in: int = 0
    packets_out: int = 0
    discarded: int = 0
    send_errors: int = 0
    last_discard: str | None = None


@dataclass(eq=False)
class _Receiver:
    sock: socket.socket
    family: int
    users: set[tuple[IPAddress, str | None]] = field(default_factory=set)


class Bfd:
    """The BFD sessions of one speaker, on the running event loop.

    ```python
    bfd = Bfd(on_transition=print)
    bfd.add(PeerSpec(peer=ip_address("10.0.1.1"), local=ip_address("10.0.1.2"), timers=t))
    bfd.status()                 # state, diag, negotiated intervals of every session
    await bfd.shutdown()         # AdminDown to every peer, then close the sockets
    ```

    Everything runs in callbacks of the loop that created the object (timers and socket
    readers); every method must be called from that loop. `rng` supplies discriminators,
    source ports and jitter (a seeded `random.Random` makes a test reproducible).
    """

    def __init__(
        self,
        *,
        on_transition: Callable[[Transition], None] | None = None,
        rng: random.Random | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._rng = rng or random.SystemRandom()
        self._on_transition = on_transition
        self._entries: dict[tuple[IPAddress, str | None], _Entry] = {}
        self._by_discr: dict[int, _Entry] = {}
        self._discr_paths: dict[int, Path] = {}
        self._path_discrs: dict[Path, int] = {}
        self._receivers: dict[tuple[IPAddress, int], _Receiver] = {}
        self._closed = False
        self._polls_ended: asyncio.Event | None = None
        self._slow_us = 0
        self.unmatched = 0
        """Datagrams that matched no session (or failed the packet checks before matching)."""
        self.last_unmatched: str | None = None

    # ------------------------------------------------------------------ the speaker's API

    def add(self, spec: PeerSpec, *, resume: HandoverRecord | None = None) -> None:
        """Start a session (state Down, sending at the slow rate until the peer answers), or,
        with `resume` (a record for this peer that `matches` it), go on with the session the
        previous process handed over: state Up, same discriminators and source port."""
        if self._closed:
            raise BfdError("BFD is closed")
        if spec.key in self._entries:
            raise BfdError(f"{spec.label}: a BFD session for {spec.peer} already exists")
        if spec.peer.version != spec.local.version:
            raise BfdError(f"{spec.label}: peer {spec.peer} and local address {spec.local} differ in family")
        scope_id = 0
        if spec.interface is not None:
            try:
                scope_id = socket.if_nametoindex(spec.interface)
            except OSError:
                raise BfdError(f"{spec.label}: no interface {spec.interface!r}") from None
        elif spec.peer.version == 6 and spec.peer.is_link_local:
            raise BfdError(f"{spec.label}: link-local peer {spec.peer} needs an interface")
        rx = self._receiver(spec, scope_id)
        try:
            tx, port = self._sender(spec, scope_id, resume.source_port if resume else None)
        except BaseException:
            self._release(rx, spec.key)
            raise
        now = self._loop.time()
        if resume is not None and resume.handover.local_discr not in self._by_discr:
            discr = resume.handover.local_discr
            session = Session.resume(
                resume.handover,
                spec.timers,
                now=now,
                control_plane_independent=spec.control_plane_independent,
            )
        else:
            discr = self._new_discriminator()
            session = Session.start(
                spec.timers,
                local_discr=discr,
                now=now,
                control_plane_independent=spec.control_plane_independent,
            )
        entry = _Entry(
            spec=spec,
            session=session,
            tx=tx,
            rx=rx,
            scope_id=scope_id,
            source_port=port,
            since=now,
        )
        self._entries[spec.key] = entry
        self._by_discr[discr] = entry
        self._discr_paths[discr] = Path(spec.peer, scope_id)
        self._path_discrs[Path(spec.peer, scope_id)] = discr
        rx.users.add(spec.key)
        log.info(
            logs.kv(
                "bfd-start",
                peer=spec.label,
                local=spec.local,
                port=port,
                discriminator=discr,
                resumed=session.state == State.UP,
                tx_ms=spec.timers.desired_min_tx / 1000,
                rx_ms=spec.timers.required_min_rx / 1000,
                mult=spec.timers.detect_mult,
            )
        )
        self._run(entry, lambda s, now, rnd: s.tick(now, rnd=rnd))

    def remove(self, peer: IPAddress, interface: str | None = None) -> None:
        """Stop a session at once, without AdminDown (the peer will see it time out)."""
        entry = self._entries.pop((peer, interface), None)
        if entry is None:
            return
        self._by_discr.pop(entry.session.local_discr, None)
        self._path_discrs.pop(self._discr_paths.pop(entry.session.local_discr), None)
        if entry.timer is not None:
            entry.timer.cancel()
        entry.tx.close()
        self._release(entry.rx, entry.spec.key)

    def admin_down(
        self, peer: IPAddress | None = None, interface: str | None = None, *, diag: Diag = Diag.ADMIN_DOWN
    ) -> None:
        """AdminDown (a planned stop) for one session or, without `peer`, all of them: the packet
        goes out at once and then at the slow rate while the session exists."""
        for entry in self._select(peer, interface):
            self._run(entry, lambda s, now, rnd: s.admin_down(now, rnd=rnd, diag=diag))

    def admin_up(self, peer: IPAddress | None = None, interface: str | None = None) -> None:
        """Enable AdminDown sessions again."""
        for entry in self._select(peer, interface):
            self._run(entry, lambda s, now, rnd: s.admin_up(now, rnd=rnd))

    def reconfigure(self, peer: IPAddress, timers: Timers, interface: str | None = None) -> None:
        """New timers for a session; while Up the change runs a Poll Sequence (RFC 5880 §6.5)."""
        for entry in self._select(peer, interface):
            self._run(entry, lambda s, now, rnd: s.reconfigure(timers, now, rnd=rnd))

    def status(self) -> tuple[SessionStatus, ...]:
        return tuple(self._status(e) for e in self._entries.values())

    async def shutdown(self, linger: float = 0.5) -> None:
        """AdminDown to every peer, keep the sockets open `linger` seconds (the periodic AdminDown
        and answers to the peer's polls keep flowing), then close."""
        self.admin_down()
        if linger > 0:
            await asyncio.sleep(linger)
        self.close()

    async def hand_over(
        self, *, transmit_interval_ms: int, wall_now: float, wait: float = 2.0
    ) -> list[HandoverRecord]:
        """Prepare a planned restart of this process: slow every Up session's transmit interval
        to `transmit_interval_ms` with a Poll Sequence, so the router waits Detect Mult times
        that long for the next packet; wait (at most `wait` s) for the router's Finals; then
        close every socket WITHOUT AdminDown and return the sessions the next process may go on
        with (`add(spec, resume=...)`). A session whose poll did not end is not returned: the
        router will see it time out, as after a crash. `wall_now` is `time.time()`."""
        slow_us = transmit_interval_ms * 1000
        for entry in list(self._entries.values()):
            t = entry.spec.timers
            if entry.session.state == State.UP and slow_us > t.desired_min_tx:
                slow = Timers(
                    desired_min_tx=slow_us, required_min_rx=t.required_min_rx, detect_mult=t.detect_mult
                )
                self._run(entry, functools.partial(_reconfigure, slow))
        self._polls_ended = asyncio.Event()
        self._slow_us = slow_us
        self._check_polls()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._polls_ended.wait(), wait)
        self._polls_ended = None
        records = []
        started = self._loop.time()
        for entry in self._entries.values():
            handover = entry.session.handover()
            if handover is None or handover.desired_min_tx < slow_us:
                continue
            # the router's clock started with our last packet, before this loop's `started`
            last = entry.session.last_tx if entry.session.last_tx is not None else started
            records.append(
                HandoverRecord(
                    peer=entry.spec.peer,
                    local=entry.spec.local,
                    interface=entry.spec.interface,
                    source_port=entry.source_port,
                    handover=handover,
                    valid_until=wall_now - (started - last) + handover.router_detection_time / 1e6,
                )
            )
            log.info(
                logs.kv(
                    "bfd-hand-over", peer=entry.spec.label, window_ms=handover.router_detection_time / 1000
                )
            )
        self.close()
        return records

    def close(self) -> None:
        """Close every socket and cancel every timer. Idempotent."""
        for key in list(self._entries):
            self.remove(*key)
        for receiver in list(self._receivers.values()):
            self._loop.remove_reader(receiver.sock.fileno())
            receiver.sock.close()
        self._receivers.clear()
        self._closed = True

    # ------------------------------------------------------------------ sockets

    def _receiver(self, spec: PeerSpec, scope_id: int) -> _Receiver:
        key = (spec.local, scope_id if spec.local.version == 6 and spec.local.is_link_local else 0)
        existing = self._receivers.get(key)
        if existing is not None:
            return existing
        family = socket.AF_INET if spec.local.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            if key[1]:
                assert spec.interface is not None
                sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, spec.interface.encode())
            sock.bind(self._sockaddr(spec.local, CONTROL_PORT, key[1]))
        except OSError as exc:
            sock.close()
            raise BfdError(
                f"{spec.label}: cannot receive BFD on [{spec.local}]:{CONTROL_PORT}: {exc}"
            ) from None
        receiver = _Receiver(sock=sock, family=family)
        self._loop.add_reader(sock.fileno(), self._readable, receiver)
        self._receivers[key] = receiver
        return receiver

    def _release(self, receiver: _Receiver, key: tuple[IPAddress, str | None]) -> None:
        receiver.users.discard(key)
        if receiver.users:
            return
        for rkey, r in list(self._receivers.items()):
            if r is receiver:
                del self._receivers[rkey]
                self._loop.remove_reader(receiver.sock.fileno())
                receiver.sock.close()

    def _sender(
        self, spec: PeerSpec, scope_id: int, preferred: int | None = None
    ) -> tuple[socket.socket, int]:
        family = socket.AF_INET if spec.local.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, _IP_TTL, TTL)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_CS6)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS_CS6)
            if spec.interface is not None:
                sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, spec.interface.encode())
            local_scope = scope_id if spec.local.version == 6 and spec.local.is_link_local else 0
            for attempt in range(_PORT_TRIES):
                # RFC 5881 §4: one source port for the session's life, across a hand-over too
                port = preferred if attempt == 0 and preferred else self._rng.randint(*SOURCE_PORTS)
                try:
                    sock.bind(self._sockaddr(spec.local, port, local_scope))
                    return sock, port
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
            raise BfdError(f"{spec.label}: no free source port in {SOURCE_PORTS[0]}-{SOURCE_PORTS[1]}")
        except OSError as exc:
            sock.close()
            raise BfdError(f"{spec.label}: cannot send BFD from {spec.local}: {exc}") from None
        except BaseException:
            sock.close()
            raise

    @staticmethod
    def _sockaddr(
        address: IPAddress, port: int, scope_id: int
    ) -> tuple[str, int] | tuple[str, int, int, int]:
        if address.version == 4:
            return (str(address), port)
        return (str(address), port, 0, scope_id)

    def _new_discriminator(self) -> int:
        while True:
            discr = self._rng.getrandbits(32)
            if discr and discr not in self._by_discr:
                return discr

    # ------------------------------------------------------------------ reception

    def _readable(self, receiver: _Receiver) -> None:
        for _ in range(_MAX_READS):
            try:
                data, ancdata, _flags, source = receiver.sock.recvmsg(_RECV_SIZE, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error queued on the socket: nothing to read
                log.debug(logs.kv("bfd-recv-error", error=exc))
                return
            self._datagram(data, ancdata, source)

    def _datagram(
        self, data: bytes, ancdata: list[tuple[int, int, bytes]], source: tuple[object, ...]
    ) -> None:
        ttl, ifindex = _ancillary(ancdata)
        packet = decode(data)
        if isinstance(packet, Discard):
            return self._unmatched(packet, source)
        address = ip_address(str(source[0]).split("%", 1)[0])
        found = demultiplex(
            packet,
            source=address,
            ifindex=ifindex,
            by_discriminator=self._discr_paths,
            by_path=self._path_discrs,
        )
        if isinstance(found, Discard):
            return self._unmatched(found, source)
        entry = self._by_discr[found]
        entry.packets_in += 1
        self._run(entry, lambda s, now, rnd: s.receive(packet, now=now, ttl=ttl, rnd=rnd))

    def _unmatched(self, discard: Discard, source: tuple[object, ...]) -> None:
        self.unmatched += 1
        self.last_unmatched = f"from {source[0]}: {discard.reason}"
        log.debug(logs.kv("bfd-discard", source=source[0], reason=discard.reason))

    # ------------------------------------------------------------------ the machine

    def _run(
        self, entry: _Entry, op: Callable[[Session, float, float], tuple[Session, tuple[Output, ...]]]
    ) -> None:
        if self._entries.get(entry.spec.key) is not entry:
            return  # removed meanwhile
        now = self._loop.time()
        entry.session, outputs = op(entry.session, now, self._rng.random())
        self._outputs(entry, outputs)
        self._arm(entry)
        if self._polls_ended is not None:
            self._check_polls()

    def _check_polls(self) -> None:
        """During `hand_over`: set the event once every Up session runs at the slow interval."""
        if self._polls_ended is None:
            return
        if all(
            e.session.state != State.UP or (not e.session.polling and e.session.tx_in_use >= self._slow_us)
            for e in self._entries.values()
        ):
            self._polls_ended.set()

    def _fire(self, entry: _Entry) -> None:
        entry.timer = None
        deadline = entry.session.detect_deadline
        if deadline is not None and self._loop.time() >= deadline:
            # A timer that runs late (the loop was busy) must not declare a peer down whose
            # packets are already waiting in the socket: read them first.
            self._readable(entry.rx)
        self._run(entry, lambda s, now, rnd: s.tick(now, rnd=rnd))

    def _arm(self, entry: _Entry) -> None:
        deadline = entry.session.next_deadline()
        if entry.timer is not None:
            if deadline is not None and entry.timer.when() == deadline:
                return
            entry.timer.cancel()
            entry.timer = None
        if deadline is not None:
            entry.timer = self._loop.call_at(deadline, self._fire, entry)

    def _outputs(self, entry: _Entry, outputs: Iterable[Output]) -> None:
        for out in outputs:
            if isinstance(out, Transmit):
                self._send(entry, out.packet)
            elif isinstance(out, StateChange):
                self._changed(entry, out)
            else:
                entry.discarded += 1
                entry.last_discard = out.reason
                log.debug(logs.kv("bfd-discard", peer=entry.spec.label, reason=out.reason))

    def _send(self, entry: _Entry, packet: ControlPacket) -> None:
        try:
            entry.tx.sendto(encode(packet), self._sockaddr(entry.spec.peer, CONTROL_PORT, entry.scope_id))
            entry.packets_out += 1
        except OSError as exc:  # a full buffer or an unreachable peer: BFD tolerates a lost packet
            entry.send_errors += 1
            log.debug(logs.kv("bfd-send-error", peer=entry.spec.label, error=exc))

    def _changed(self, entry: _Entry, change: StateChange) -> None:
        entry.since = change.at
        if change.old == State.UP:
            entry.last_down_diag = change.diag
            entry.last_down_failure = change.failure
        transition = Transition(
            name=entry.spec.label,
            peer=entry.spec.peer,
            old=change.old,
            new=change.new,
            diag=change.diag,
            remote_state=change.remote_state,
            failure=change.failure,
            reason=change.reason,
            at=change.at,
        )
        level = logging.WARNING if change.failure else logging.INFO
        log.log(
            level,
            logs.kv(
                "bfd-state",
                peer=entry.spec.label,
                old=change.old.label,
                new=change.new.label,
                diag=change.diag.value,
                reason=change.reason,
                failure=change.failure,
            ),
        )
        if self._on_transition is not None:
            try:
                self._on_transition(transition)
            except Exception:  # a broken observer must not stop the sessions
                log.exception(logs.kv("bfd-observer-failed", peer=entry.spec.label))

    def _select(self, peer: IPAddress | None, interface: str | None) -> list[_Entry]:
        if peer is None:
            return list(self._entries.values())
        entry = self._entries.get((peer, interface))
        if entry is None:
            raise BfdError(f"no BFD session for {peer}" + (f" on {interface}" if interface else ""))
        return [entry]

    def _status(self, e: _Entry) -> SessionStatus:
        s = e.session
        return SessionStatus(
            name=e.spec.label,
            peer=e.spec.peer,
            local=e.spec.local,
            interface=e.spec.interface,
            state=s.state,
            remote_state=s.remote_state,
            diag=s.diag,
            last_down_diag=e.last_down_diag,
            last_down_failure=e.last_down_failure,
            since=e.since,
            local_discriminator=s.local_discr,
            remote_discriminator=s.remote_discr,
            source_port=e.source_port,
            transmit_interval_ms=s.tx_interval / 1000,
            receive_interval_ms=None if s.rx_interval is None else s.rx_interval / 1000,
            detection_time_ms=None if s.detection_time is None else s.detection_time / 1000,
            remote_detect_mult=s.remote_detect_mult,
            polling=s.polling,
            packets_in=e.packets_in,
            packets_out=e.packets_out,
            discarded=e.discarded,
            send_errors=e.send_errors,
            last_discard=e.last_discard,
        )


def _reconfigure(timers: Timers, s: Session, now: float, rnd: float) -> tuple[Session, tuple[Output, ...]]:
    return s.reconfigure(timers, now, rnd=rnd)


def _ancillary(ancdata: list[tuple[int, int, bytes]]) -> tuple[int | None, int]:
    """(TTL or hop limit, interface index) from recvmsg's control messages."""
    ttl: int | None = None
    ifindex = 0
    for level, kind, data in ancdata:
        with contextlib.suppress(struct.error):
            if (level, kind) in _TTL_MESSAGES:
                ttl = struct.unpack_from("=i", data)[0]
            elif level == socket.IPPROTO_IP and kind == _IP_PKTINFO:
                ifindex = struct.unpack_from("=i", data)[0]
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                ifindex = struct.unpack_from("=I", data, 16)[0]
    return ttl, ifindex
