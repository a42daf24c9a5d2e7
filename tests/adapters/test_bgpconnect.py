"""The TCP connection test of a down session: the kernel's answer, and its MD5 drop counters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from ipaddress import ip_address
from pathlib import Path

import pytest

from bgpvip.adapters import bgpconnect
from bgpvip.core.peers import ConnectResult, explain_connect

LOOPBACK = ip_address("127.0.0.1")


async def test_refused() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = await bgpconnect.connect_test(LOOPBACK, port, local=LOOPBACK, password=None, wait=5)
    assert result.error == "ECONNREFUSED"


async def test_connects() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        result = await bgpconnect.connect_test(
            LOOPBACK, server.getsockname()[1], local=None, password=None, wait=5
        )
    assert result.error == ""


def test_md5_sockopt_is_struct_tcp_md5sig() -> None:
    v4 = bgpconnect.md5_sockopt(ip_address("10.0.1.1"), "s3cret")
    assert len(v4) == 128 + 8 + 80
    assert v4[:8] == socket.AF_INET.to_bytes(2, sys.byteorder) + b"\0\0" + bytes([10, 0, 1, 1])
    assert v4[128:136] == b"\0\0" + (6).to_bytes(2, sys.byteorder) + b"\0" * 4
    assert v4[136:142] == b"s3cret" and v4[142:] == b"\0" * 74
    v6 = bgpconnect.md5_sockopt(ip_address("fd00:1::1"), "k")
    assert v6[8:24] == ip_address("fd00:1::1").packed
    with pytest.raises(ValueError):
        bgpconnect.md5_sockopt(LOOPBACK, "x" * 81)


def test_md5_drops_reads_the_tcpext_counters(tmp_path: Path) -> None:
    netstat = tmp_path / "netstat"
    netstat.write_text(
        "TcpExt: SyncookiesSent TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure Other\n"
        "TcpExt: 1 2 3 4 5\n"
        "IpExt: InNoRoutes\n"
        "IpExt: 9\n"
    )
    assert bgpconnect.md5_drops(netstat) == 9
    assert bgpconnect.md5_drops(tmp_path / "missing") == 0


def test_unanswered_syn_reads_syn_sent_sockets_from_proc(tmp_path: Path) -> None:
    """/proc/net/tcp and tcp6 as Linux prints them: addresses in 32-bit words of host order."""
    (tmp_path / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        # 10.0.1.2:40051 -> 10.0.1.1:179, SYN-SENT, retransmitted 3 times
        "   0: 0201000A:9C73 0101000A:00B3 02 00000001:00000000 01:00000C4A 00000003     0        0 0 2 0\n"
        # the same peer on another port, and an established socket to it
        "   1: 0201000A:9C74 0101000A:00B4 02 00000001:00000000 01:00000C4A 00000007     0        0 0 2 0\n"
        "   2: 0201000A:00B3 0101000A:9C75 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0\n"
    )
    (tmp_path / "tcp6").write_text(
        "  sl  local_address                         remote_address                        st\n"
        # fd00:1::2 -> fd00:1::1 port 179, SYN-SENT, no retransmission yet
        "   0: 010000FD000000000000000002000000:9C76 010000FD000000000000000001000000:00B3 02 0 0 0 00000000\n"
    )
    assert bgpconnect.unanswered_syn(ip_address("10.0.1.1"), 179, tmp_path) == 3
    assert bgpconnect.unanswered_syn(ip_address("10.0.1.9"), 179, tmp_path) is None
    assert bgpconnect.unanswered_syn(ip_address("fd00:1::1"), 179, tmp_path) == 0
    assert bgpconnect.unanswered_syn(ip_address("10.0.1.1"), 179, tmp_path / "missing") is None


# In a network namespace of its own: a BGP-like listener with an MD5 key for 127.0.0.1, then
# connection tests with the right key, a wrong one and none.
SCRIPT = """
import asyncio, json, socket
from ipaddress import ip_address
from bgpvip.adapters import bgpconnect
lo = ip_address("127.0.0.1")
server = socket.socket()
server.setsockopt(socket.IPPROTO_TCP, bgpconnect.TCP_MD5SIG, bgpconnect.md5_sockopt(lo, "right"))
server.bind(("127.0.0.1", 179))
server.listen()
async def main():
    out = {}
    for name, password in (("right", "right"), ("wrong", "wrong"), ("none", None)):
        r = await bgpconnect.connect_test(lo, 179, local=lo, password=password, wait=1.5)
        out[name] = [r.error, r.md5_drops]
    print(json.dumps(out))
asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace of its own needs root")
def test_a_wrong_or_missing_md5_password_never_connects_and_the_kernel_counts_it() -> None:
    shell = 'ip link set lo up && exec "$0" -c "$1"'
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", shell, sys.executable, SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert results["right"] == ["", 0]
    for name in ("wrong", "none"):
        error, drops = results[name]
        assert error == "ETIMEDOUT", name
        assert drops > 0, f"{name}: the listener's kernel drops the unsigned or badly signed SYNs"
        text = explain_connect(ConnectResult(error, 1.5, drops), port=179, md5=name == "wrong")
        assert "never completes" in text and "MD5" in text
