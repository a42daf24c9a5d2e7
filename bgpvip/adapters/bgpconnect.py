"""Why a session is down, from the kernel: ExaBGP's own connection attempts, and a test.

I/O side. ExaBGP reports a refused connection as `connected` then `down`, and a connection
that never completes (a wrong MD5 password: the router's kernel drops every segment) not at
all. So the speaker asks the kernel:

- `unanswered_syn`: ExaBGP's socket to the router sits in SYN-SENT, its SYN retransmitted
  (read from /proc/net/tcp{,6}): the TCP connection never completes. Passive.
- `connect_test`: one connection from the session's local address, signed with the same MD5
  password, closed as soon as it is made (before any BGP message); its errno. Run only right
  after one of ExaBGP's own attempts failed at the TCP level: a router whose BGP daemon
  accepts it would count it as a failed session (GoBGP then holds the peer idle 5 s).
- `md5_drops`: segments this host's kernel dropped for a missing or wrong MD5 signature (the
  router's own connection attempts, since ExaBGP listens).

`core.peers.explain_connect` puts the answers in words.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import sys
import time
from pathlib import Path

from bgpvip.core.model import IPAddress
from bgpvip.core.peers import ConnectResult

TCP_MD5SIG = 14
"""linux/tcp.h; Python's socket module does not export it."""
_MD5_KEY_MAX = 80
_MD5_COUNTERS = ("TCPMD5NotFound", "TCPMD5Unexpected", "TCPMD5Failure")


def md5_sockopt(peer: IPAddress, password: str) -> bytes:
    """struct tcp_md5sig for `peer`: a sockaddr_storage, two pad bytes, the key length, four
    pad bytes, the key (linux/tcp.h)."""
    key = password.encode("ascii")
    if not 1 <= len(key) <= _MD5_KEY_MAX:
        raise ValueError(f"an MD5 password is 1-{_MD5_KEY_MAX} bytes")
    if peer.version == 4:
        address = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + peer.packed
    else:
        address = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 0, 0) + peer.packed + b"\0" * 4
    return address.ljust(128, b"\0") + struct.pack("=xxH4x", len(key)) + key.ljust(_MD5_KEY_MAX, b"\0")


_SYN_SENT = "02"


def _proc_address(text: str) -> tuple[bytes, int]:
    """`0100007F:00B3` (/proc/net/tcp: the address in 32-bit host-order words) -> (bytes, port)."""
    address, port = text.split(":")
    words = [bytes.fromhex(address[i : i + 8]) for i in range(0, len(address), 8)]
    raw = b"".join(w[::-1] if sys.byteorder == "little" else w for w in words)
    return raw, int(port, 16)


def unanswered_syn(peer: IPAddress, port: int, proc_net: Path = Path("/proc/net")) -> int | None:
    """SYN retransmissions of the longest-waiting socket to `peer`:`port` still in SYN-SENT (a
    connection attempt nothing answers), or None when there is no such socket."""
    table = proc_net / ("tcp6" if peer.version == 6 else "tcp")
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    worst: int | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 7 or fields[3] != _SYN_SENT:
            continue
        try:
            remote, remote_port = _proc_address(fields[2])
            retransmits = int(fields[6], 16)
        except ValueError:
            continue
        if remote == peer.packed and remote_port == port:
            worst = retransmits if worst is None else max(worst, retransmits)
    return worst


def md5_drops(netstat: Path = Path("/proc/net/netstat")) -> int:
    """TCP segments this network namespace dropped for a missing, unexpected or wrong MD5
    signature since boot; 0 when the counters cannot be read."""
    try:
        lines = netstat.read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return sum(int(table.get(name, "0")) for name in _MD5_COUNTERS)
    return 0


async def connect_test(
    peer: IPAddress,
    port: int,
    *,
    local: IPAddress | None,
    password: str | None,
    wait: float,
    md5_baseline: int | None = None,
) -> ConnectResult:
    """Connect from `local` to `peer`:`port` (with the MD5 password, if any) and close at
    once. Never raises for a network failure: the errno name is the result. MD5 drops are
    counted from `md5_baseline` (an earlier `md5_drops()`), or over the test itself."""
    family = socket.AF_INET6 if peer.version == 6 else socket.AF_INET
    drops_before = md5_drops() if md5_baseline is None else md5_baseline
    started = time.monotonic()
    error = ""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if password is not None:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5_sockopt(peer, password))
        if local is not None:
            sock.bind((str(local), 0))
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (str(peer), port)), wait)
    except TimeoutError:
        error = "ETIMEDOUT"
    except OSError as e:
        error = errno.errorcode.get(e.errno or 0, str(e))
    finally:
        sock.close()
    return ConnectResult(
        error=error, seconds=time.monotonic() - started, md5_drops=max(0, md5_drops() - drops_before)
    )
