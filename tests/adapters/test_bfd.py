"""The BFD adapter on real sockets, in two throwaway network namespaces joined by a veth pair,
on fake time (looptime): the loop's clock jumps to the next timer whenever no socket is ready,
and a UDP datagram over a veth is readable as soon as `sendto` returns.

Namespaces `bvbfd<pid>-<n>a` / `...b` are removed in the fixture's `finally`, whatever the test
did. Each endpoint's sockets are created while the test thread is inside its namespace; the
event loop itself runs in the test's own namespace and serves both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from bgpvip.adapters.bfd import Bfd, BfdError, PeerSpec, Transition, dumps, loads
from bgpvip.core.bfd import Timers
from bgpvip.core.bfd_packet import ControlPacket, Diag, State, decode, encode

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
FAST = Timers(desired_min_tx=100_000, required_min_rx=100_000, detect_mult=3)
ADDRESSES = {
    4: (ip_address("10.77.0.1"), ip_address("10.77.0.2")),
    6: (ip_address("fd77::1"), ip_address("fd77::2")),
}
LINK_LOCAL = (ip_address("fe80::77:1"), ip_address("fe80::77:2"))


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the block with this thread in `netns` (sockets made here stay there), then come back."""
    home = f"/proc/self/task/{ctypes.CDLL(None).syscall(186)}/ns/net"  # gettid
    back = os.open(home, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(f"/run/netns/{netns}")
        try:
            yield
        finally:
            if _libc.setns(back, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace failed")
    finally:
        os.close(back)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _mac(netns: str) -> str:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "link", "show", "v0"], check=True, capture_output=True, text=True
    )
    return str(json.loads(out.stdout)[0]["address"])


@dataclass
class Link:
    a: str
    b: str

    def set(self, side: str, state: str) -> None:
        ip("-n", self.a if side == "a" else self.b, "link", "set", "v0", state)


@pytest.fixture
def link() -> Iterator[Link]:
    base = f"bvbfd{os.getpid() % 100000}-{next(_counter)}"
    made = Link(f"{base}a", f"{base}b")
    try:
        for ns in (made.a, made.b):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", made.a, "link", "add", "v0", "type", "veth", "peer", "name", "v0", "netns", made.b)
        for ns, i in ((made.a, 0), (made.b, 1)):
            ip("-n", ns, "addr", "add", f"{ADDRESSES[4][i]}/24", "dev", "v0")
            ip("-n", ns, "-6", "addr", "add", f"{ADDRESSES[6][i]}/64", "dev", "v0", "nodad")
            ip("-n", ns, "-6", "addr", "add", f"{LINK_LOCAL[i]}/64", "dev", "v0", "nodad")
            ip("-n", ns, "link", "set", "v0", "up")
        # Static neighbours: address resolution takes real time, which fake time would outrun.
        macs = {ns: _mac(ns) for ns in (made.a, made.b)}
        for ns, other, i in ((made.a, made.b, 1), (made.b, made.a, 0)):
            for address in (ADDRESSES[4][i], ADDRESSES[6][i], LINK_LOCAL[i]):
                ip(
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    str(address),
                    "lladdr",
                    macs[other],
                    "dev",
                    "v0",
                    "nud",
                    "permanent",
                )
        yield made
    finally:
        for ns in (made.a, made.b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@dataclass
class Pair:
    a: Bfd
    b: Bfd
    a_addr: IPv4Address | IPv6Address
    b_addr: IPv4Address | IPv6Address
    seen: list[tuple[str, Transition]]

    def state(self, side: str) -> State:
        (st,) = (self.a if side == "a" else self.b).status()
        return st.state


def make_pair(link: Link, family: int, timers: Timers = FAST) -> Pair:
    a_addr, b_addr = ADDRESSES[family]
    seen: list[tuple[str, Transition]] = []
    with inside(link.a):
        a = Bfd(on_transition=lambda t: seen.append(("a", t)))
        a.add(PeerSpec(peer=b_addr, local=a_addr, timers=timers, name="to-b"))
    with inside(link.b):
        b = Bfd(on_transition=lambda t: seen.append(("b", t)))
        b.add(PeerSpec(peer=a_addr, local=b_addr, timers=timers, name="to-a"))
    return Pair(a, b, a_addr, b_addr, seen)


async def wait_for(condition: object, limit: float) -> float:
    """Poll `condition()` on the loop's (fake) clock; returns the fake seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():  # type: ignore[operator]
        if loop.time() - start > limit:
            raise TimeoutError(f"condition not met within {limit} s of loop time")
        await asyncio.sleep(0.001)
    return loop.time() - start


@pytest.mark.looptime
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
async def test_two_endpoints_come_up_and_negotiate(link: Link, family: int) -> None:
    pair = make_pair(link, family)
    try:
        took = await wait_for(lambda: pair.state("a") == pair.state("b") == State.UP, limit=5)
        assert took < 2.5  # the handshake at the slow 1 s rate, less jitter
        await wait_for(lambda: not pair.a.status()[0].polling and not pair.b.status()[0].polling, 1)
        (st,) = pair.a.status()
        assert (st.transmit_interval_ms, st.receive_interval_ms, st.detection_time_ms) == (100, 100, 300)
        assert 49152 <= st.source_port <= 65535
        assert st.discarded == 0 and st.send_errors == 0 and pair.a.unmatched == 0
        assert st.remote_discriminator == pair.b.status()[0].local_discriminator
        seen = [(side, t.old, t.new) for side, t in pair.seen]
        assert ("a", State.INIT, State.UP) in seen or ("a", State.DOWN, State.UP) in seen
        # ten seconds of steady state: about 10 packets a second each way, and no change
        before = st.packets_out
        pair.seen.clear()
        await asyncio.sleep(10)
        sent = pair.a.status()[0].packets_out - before
        assert 100 <= sent <= 100 / 0.75 + 1
        assert pair.seen == []
    finally:
        pair.a.close()
        pair.b.close()


@pytest.mark.looptime
@pytest.mark.parametrize("how", ["peer-stops", "link-down"])
async def test_a_lost_peer_goes_down_within_the_detection_time(link: Link, how: str) -> None:
    pair = make_pair(link, 4)
    try:
        await wait_for(lambda: pair.state("a") == pair.state("b") == State.UP, limit=5)
        await asyncio.sleep(1)
        loop = asyncio.get_running_loop()
        if how == "peer-stops":
            pair.b.close()
        else:
            link.set("b", "down")
        cut = loop.time()
        pair.seen.clear()
        await wait_for(lambda: pair.state("a") == State.DOWN, limit=2)
        (change,) = [t for side, t in pair.seen if side == "a"]
        assert change.diag == Diag.DETECTION_TIME_EXPIRED and change.failure
        assert change.at - cut <= 0.3 + 1e-6
        (st,) = pair.a.status()
        assert st.last_down_diag == Diag.DETECTION_TIME_EXPIRED and st.last_down_failure
        assert st.remote_discriminator == 0
    finally:
        pair.a.close()
        pair.b.close()


@pytest.mark.looptime
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
async def test_packets_with_ttl_other_than_255_are_discarded(link: Link, family: int) -> None:
    a_addr, b_addr = ADDRESSES[family]
    with inside(link.a):
        a = Bfd()
        a.add(PeerSpec(peer=b_addr, local=a_addr, timers=FAST))
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with inside(link.b):
        raw = socket.socket(af, socket.SOCK_DGRAM)
    try:
        if family == 4:
            raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
        else:
            raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 64)
        raw.bind((str(b_addr), 50000))
        hello = ControlPacket(
            state=State.DOWN,
            detect_mult=3,
            my_discriminator=77,
            your_discriminator=0,
            desired_min_tx=1_000_000,
            required_min_rx=100_000,
        )
        raw.sendto(encode(hello), (str(a_addr), 3784))
        await wait_for(lambda: a.status()[0].discarded == 1, limit=1)
        (st,) = a.status()
        assert st.state == State.DOWN and st.remote_discriminator == 0
        assert st.last_discard is not None and "TTL/hop limit 64, not 255" in st.last_discard
        # the same packet at TTL 255 is taken: the session moves to Init
        if family == 4:
            raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
        else:
            raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        raw.sendto(encode(hello), (str(a_addr), 3784))
        await wait_for(lambda: a.status()[0].state == State.INIT, limit=1)
        assert a.status()[0].remote_discriminator == 77
    finally:
        raw.close()
        a.close()


@pytest.mark.looptime
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
async def test_on_the_wire(link: Link, family: int) -> None:
    """TTL 255, traffic class CS6, one source port in 49152-65535, to port 3784."""
    a_addr, b_addr = ADDRESSES[family]
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with inside(link.b):
        sniff = socket.socket(af, socket.SOCK_DGRAM)
    try:
        if family == 4:
            sniff.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
            sniff.setsockopt(socket.IPPROTO_IP, 13, 1)  # IP_RECVTOS
        else:
            sniff.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            sniff.setsockopt(socket.IPPROTO_IPV6, 66, 1)  # IPV6_RECVTCLASS
        sniff.bind((str(b_addr), 3784))
        sniff.setblocking(False)
        with inside(link.a):
            a = Bfd()
        with inside(link.a):
            a.add(PeerSpec(peer=b_addr, local=a_addr, timers=FAST))
        got: list[tuple[bytes, dict[int, int], int]] = []

        def read() -> bool:
            with contextlib.suppress(BlockingIOError):
                while True:
                    data, anc, _, src = sniff.recvmsg(512, 256)
                    got.append(
                        (
                            data,
                            {k: struct.unpack_from("=i", d)[0] if len(d) >= 4 else d[0] for _, k, d in anc},
                            src[1],
                        )
                    )
            return len(got) >= 3

        took = await wait_for(read, limit=5)
        assert took >= 1.5  # the slow rate while not Up: 1 s less up to 25 % jitter
        (st,) = a.status()
        ttl_kind, tos_kind = (2, 1) if family == 4 else (socket.IPV6_HOPLIMIT, 67)
        for data, anc, port in got:
            assert port == st.source_port and 49152 <= port <= 65535
            assert anc[ttl_kind] == 255
            assert anc[tos_kind] & 0xFC == 0xC0
            p = decode(data)
            assert isinstance(p, ControlPacket)
            assert (p.state, p.your_discriminator, p.desired_min_tx) == (State.DOWN, 0, 1_000_000)
            assert p.my_discriminator == st.local_discriminator
    finally:
        sniff.close()
        with contextlib.suppress(NameError):
            a.close()


@pytest.mark.looptime
@pytest.mark.parametrize("cbit", [False, True], ids=["c0", "c1"])
async def test_c_bit_on_the_wire_is_the_peers_choice(link: Link, cbit: bool) -> None:
    a_addr, b_addr = ADDRESSES[4]
    with inside(link.b):
        sniff = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sniff.bind((str(b_addr), 3784))
        sniff.setblocking(False)
        with inside(link.a):
            a = Bfd()
            a.add(PeerSpec(peer=b_addr, local=a_addr, timers=FAST, control_plane_independent=cbit))
        got: list[bytes] = []

        def read() -> bool:
            with contextlib.suppress(BlockingIOError):
                while True:
                    got.append(sniff.recv(512))
            return len(got) >= 1

        await wait_for(read, limit=5)
        p = decode(got[0])
        assert isinstance(p, ControlPacket)
        assert p.control_plane_independent is cbit
    finally:
        sniff.close()
        with contextlib.suppress(NameError):
            a.close()


@pytest.mark.looptime
async def test_admin_down_is_seen_as_a_planned_stop(link: Link) -> None:
    pair = make_pair(link, 4)
    try:
        await wait_for(lambda: pair.state("a") == pair.state("b") == State.UP, limit=5)
        pair.seen.clear()
        pair.a.admin_down()
        await wait_for(lambda: pair.state("b") == State.DOWN, limit=0.05)
        (ta,) = [t for side, t in pair.seen if side == "a"]
        (tb,) = [t for side, t in pair.seen if side == "b"]
        assert (ta.new, ta.diag, ta.failure) == (State.ADMIN_DOWN, Diag.ADMIN_DOWN, False)
        assert (tb.new, tb.diag, tb.remote_state, tb.failure) == (
            State.DOWN,
            Diag.NEIGHBOR_DOWN,
            State.ADMIN_DOWN,
            False,
        )
        assert pair.b.status()[0].last_down_failure is False
        await asyncio.sleep(5)  # it stays down: AdminDown keeps flowing at the slow rate
        assert pair.state("b") == State.DOWN
        pair.a.admin_up()
        await wait_for(lambda: pair.state("a") == pair.state("b") == State.UP, limit=5)
    finally:
        pair.a.close()
        pair.b.close()


@pytest.mark.looptime
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
async def test_a_handed_over_session_never_goes_down_at_the_peer(link: Link, family: int) -> None:
    """A planned restart: `a` slows down with a poll, hands over and closes; 4 s later (inside
    the 3 x 2 s window) a new process goes on with the session. `b` stays Up throughout, the
    discriminators and source port are the same, and the fast rate is back."""
    pair = make_pair(link, family)
    spec = PeerSpec(peer=pair.b_addr, local=pair.a_addr, timers=FAST, name="to-b")
    new: Bfd | None = None
    try:
        await wait_for(lambda: pair.state("a") == pair.state("b") == State.UP, limit=5)
        await asyncio.sleep(1)  # both at the fast rate
        (before,) = pair.a.status()
        pair.seen.clear()
        records = loads(dumps(await pair.a.hand_over(transmit_interval_ms=2000, wall_now=1000.0)))
        (record,) = records
        assert record.handover.local_discr == before.local_discriminator
        assert record.handover.desired_min_tx == 2_000_000
        assert 1005.5 < record.valid_until <= 1006.0  # 3 x 2 s after our last packet
        assert pair.b.status()[0].detection_time_ms == 6000  # the peer follows the poll
        await asyncio.sleep(4)
        assert pair.state("b") == State.UP
        assert record.matches(spec, now=1004.0) and not record.matches(spec, now=1006.0)
        with inside(link.a):
            new = Bfd(on_transition=lambda t: pair.seen.append(("new", t)))
            new.add(spec, resume=record)
        await asyncio.sleep(1)
        (after,) = new.status()
        assert (after.state, after.local_discriminator, after.remote_discriminator) == (
            State.UP,
            before.local_discriminator,
            before.remote_discriminator,
        )
        assert after.source_port == before.source_port
        (peer_view,) = pair.b.status()
        assert (peer_view.state, peer_view.detection_time_ms, peer_view.remote_discriminator) == (
            State.UP,
            300,
            before.local_discriminator,
        )
        assert [t for side, t in pair.seen if side == "b"] == []  # no transition at all at the peer
    finally:
        pair.a.close()
        pair.b.close()
        if new is not None:
            new.close()


@pytest.mark.looptime
async def test_a_late_resume_follows_the_peer_down_and_comes_up_again(link: Link) -> None:
    """The new process came too late: the peer timed the session out. The resumed session
    learns that from the peer's first packet and the handshake starts over."""
    pair = make_pair(link, 4)
    spec = PeerSpec(peer=pair.b_addr, local=pair.a_addr, timers=FAST, name="to-b")
    new: Bfd | None = None
    try:
        await wait_for(lambda: pair.state("a") == pair.state("b") == State.UP, limit=5)
        (record,) = await pair.a.hand_over(transmit_interval_ms=500, wall_now=0.0)
        await wait_for(lambda: pair.state("b") == State.DOWN, limit=2)
        with inside(link.a):
            new = Bfd(on_transition=lambda t: pair.seen.append(("new", t)))
            new.add(spec, resume=record)
        await wait_for(
            lambda: new is not None and new.status()[0].state == pair.state("b") == State.UP, limit=5
        )
        mine = [(t.old, t.new) for side, t in pair.seen if side == "new"]
        assert mine[0] == (State.UP, State.DOWN)  # the peer's first packet said Down
        assert mine[-1][1] == State.UP
    finally:
        pair.a.close()
        pair.b.close()
        if new is not None:
            new.close()


def test_handover_records_refuse_garbage() -> None:
    for text in ("{}", "[{}]", '[{"peer": "10.0.0.1"}]', "not json", '[{"peer": "x", "local": "10.0.0.2"}]'):
        with pytest.raises(ValueError, match="not a BFD hand-over record"):
            loads(text)


@pytest.mark.looptime
async def test_shutdown_sends_admin_down_then_closes(link: Link) -> None:
    pair = make_pair(link, 6)
    try:
        await wait_for(lambda: pair.state("a") == pair.state("b") == State.UP, limit=5)
        await pair.a.shutdown(linger=0.2)
        assert pair.a.status() == ()
        (st,) = pair.b.status()
        assert st.state == State.DOWN and st.last_down_failure is False
    finally:
        pair.a.close()
        pair.b.close()


@pytest.mark.looptime
async def test_timer_change_runs_a_poll_and_the_peer_follows(link: Link) -> None:
    pair = make_pair(link, 4)
    try:
        await wait_for(lambda: pair.state("a") == pair.state("b") == State.UP, limit=5)
        await wait_for(lambda: not pair.a.status()[0].polling, limit=1)
        pair.seen.clear()
        pair.a.reconfigure(
            pair.b_addr, Timers(desired_min_tx=300_000, required_min_rx=200_000, detect_mult=4)
        )
        # The poll starts at once (or, right after the previous one, at b's next packet without
        # F) and b's Final comes back within a few loop iterations, so it is over before the
        # loop's clock moves: look at the outcome, both sides having applied the new values.
        await wait_for(lambda: pair.b.status()[0].receive_interval_ms == 300, limit=0.2)
        await wait_for(lambda: pair.a.status()[0].transmit_interval_ms == 300, limit=0.2)
        assert not pair.a.status()[0].polling
        (sa,) = pair.a.status()
        (sb,) = pair.b.status()
        assert sa.transmit_interval_ms == 300 and sb.receive_interval_ms == 300
        assert sb.detection_time_ms == 4 * 300
        assert sb.transmit_interval_ms == 200  # b now sends no faster than a's new required RX
        assert pair.seen == []  # no state change on either side
    finally:
        pair.a.close()
        pair.b.close()


@pytest.mark.looptime
async def test_setup_errors_name_the_problem(link: Link) -> None:
    with inside(link.a):
        a = Bfd()
        try:
            with pytest.raises(BfdError, match=r"cannot receive BFD on \[10.77.0.9\]:3784"):
                a.add(PeerSpec(peer=ip_address("10.77.0.2"), local=ip_address("10.77.0.9"), timers=FAST))
            with pytest.raises(BfdError, match="link-local peer fe80::2 needs an interface"):
                a.add(PeerSpec(peer=ip_address("fe80::2"), local=ip_address("fd77::1"), timers=FAST))
            with pytest.raises(BfdError, match="no interface 'nope0'"):
                a.add(
                    PeerSpec(
                        peer=ip_address("fe80::2"),
                        local=ip_address("fd77::1"),
                        timers=FAST,
                        interface="nope0",
                    )
                )
            with pytest.raises(BfdError, match="differ in family"):
                a.add(PeerSpec(peer=ip_address("fd77::2"), local=ip_address("10.77.0.1"), timers=FAST))
            spec = PeerSpec(peer=ip_address("10.77.0.2"), local=ip_address("10.77.0.1"), timers=FAST)
            a.add(spec)
            with pytest.raises(BfdError, match="already exists"):
                a.add(spec)
            with pytest.raises(BfdError, match=r"no BFD session for 10\.77\.0\.3"):
                a.admin_down(ip_address("10.77.0.3"))
            assert len(a.status()) == 1
        finally:
            a.close()


@pytest.mark.looptime
async def test_packets_from_strangers_match_no_session(link: Link) -> None:
    a_addr = ADDRESSES[4][0]
    with inside(link.a):
        a = Bfd()
        a.add(PeerSpec(peer=ip_address("10.77.0.3"), local=a_addr, timers=FAST))
    with inside(link.b):
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
        hello = ControlPacket(
            state=State.DOWN,
            detect_mult=3,
            my_discriminator=5,
            your_discriminator=0,
            desired_min_tx=1,
            required_min_rx=1,
        )
        raw.sendto(encode(hello), (str(a_addr), 3784))
        raw.sendto(b"\x20garbage", (str(a_addr), 3784))
        await wait_for(lambda: a.unmatched == 2, limit=1)
        assert a.last_unmatched is not None and "shorter than a control packet" in a.last_unmatched
        assert a.status()[0].packets_in == 0
    finally:
        raw.close()
        a.close()


@pytest.mark.looptime
async def test_ipv6_link_local_peers_on_an_interface(link: Link) -> None:
    seen: list[Transition] = []
    with inside(link.a):
        a = Bfd(on_transition=seen.append)
        a.add(PeerSpec(peer=LINK_LOCAL[1], local=LINK_LOCAL[0], timers=FAST, interface="v0"))
    with inside(link.b):
        b = Bfd()
        b.add(PeerSpec(peer=LINK_LOCAL[0], local=LINK_LOCAL[1], timers=FAST, interface="v0"))
    try:
        await wait_for(lambda: a.status()[0].state == b.status()[0].state == State.UP, limit=5)
        (st,) = a.status()
        assert st.interface == "v0" and st.discarded == 0 and a.unmatched == 0
    finally:
        a.close()
        b.close()


@pytest.mark.looptime
async def test_a_late_timer_reads_waiting_packets_before_declaring_the_peer_down(link: Link) -> None:
    """A timer that runs after a stall (it was already due when a callback blocked the loop)
    must see the packets that arrived meanwhile: the peer is alive, the speaker was late."""
    import dataclasses

    pair = make_pair(link, 4)
    try:
        await wait_for(lambda: pair.state("a") == pair.state("b") == State.UP, limit=5)
        (sa,), (sb,) = pair.a.status(), pair.b.status()
        with inside(link.b):
            raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
            alive = ControlPacket(
                state=State.UP,
                detect_mult=3,
                my_discriminator=sb.local_discriminator,
                your_discriminator=sa.local_discriminator,
                desired_min_tx=100_000,
                required_min_rx=100_000,
            )
            raw.sendto(encode(alive), (str(pair.a_addr), 3784))  # waits in a's socket
            # white box: a's timer runs past the detection deadline before the reader did
            entry = pair.a._entries[(pair.b_addr, None)]
            loop_now = asyncio.get_running_loop().time()
            entry.session = dataclasses.replace(entry.session, detect_deadline=loop_now - 0.001)
            pair.seen.clear()
            pair.a._fire(entry)
            assert pair.state("a") == State.UP, pair.seen
            assert pair.seen == []
        finally:
            raw.close()
    finally:
        pair.a.close()
        pair.b.close()
