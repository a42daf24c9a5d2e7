"""AddressManager against the real kernel, inside throwaway network namespaces `bvp-<pid>-<n>`.

Each namespace is removed in the fixture's `finally`, whatever the test did.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv6Address, ip_interface
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bgpvip.adapters import netlink
from bgpvip.adapters.netlink import (
    BGPVIP_PROTO,
    AddressManager,
    DummyUnsupported,
    InterfaceMissing,
    kernel_keeps_proto,
    label_for,
    local_address_for,
    read_addresses,
)

_counter = itertools.count()
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
V4 = ip_interface("192.0.2.10/32")
V6 = ip_interface("2001:db8::10/128")


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"bvp-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "set", "lo", "up")
        ip(name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip(name, "link", "set", "v0", "up")
        ip(name, "link", "set", "v1", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(params=["proto", "state-file"])
def manager(request: pytest.FixtureRequest, netns: str, tmp_path: Path) -> Iterator[AddressManager]:
    """Both ownership schemes: IFA_PROTO (this kernel) and the state file (kernels before 6.1)."""
    with AddressManager(netns, state_dir=tmp_path, ownership=request.param) as mgr:
        yield mgr


def kernel_addresses(ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(ifname, address/prefixlen) → label, proto, flags, read with a separate netlink socket."""
    with IPRoute(netns=ns, flags=0, groups=0) as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        return {
            (names[m["index"]], f"{m.get('address')}/{m['prefixlen']}"): {
                "label": m.get("label"),
                "proto": m.get("proto"),
                "flags": m.get("flags"),
            }
            for m in ipr.addr("dump")
        }


def dummy_supported(ns: str) -> bool:
    probe = subprocess.run(
        ["ip", "-n", ns, "link", "add", "bvpprobe0", "type", "dummy"], check=False, capture_output=True
    )
    if probe.returncode == 0:
        ip(ns, "link", "del", "bvpprobe0")
    return probe.returncode == 0


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("ifname", "label"),
    [
        ("lo", "lo:bgpvip"),
        ("vip0", "vip0:bgpvip"),
        ("eth0.100", "eth0.100:bgpvip"),
        ("enp3s0f1np", "enp3s0f1np:bv"),
    ],
    ids=["lo", "vip0", "8-chars", "10-chars"],
)
def test_label_fits_in_15_characters(ifname: str, label: str) -> None:
    assert label_for(ifname) == label
    assert len(label) <= 15


def test_no_label_for_very_long_interface_names() -> None:
    assert label_for("enp3s0f1np1v99") is None


@pytest.mark.parametrize(
    ("release", "keeps"),
    [("6.1.0-18-amd64", True), ("6.18.44-fc", True), ("5.15.0-91-generic", False), ("5.14.0-362.el9", False)],
)
def test_kernel_keeps_proto_from_6_1(release: str, keeps: bool) -> None:
    assert kernel_keeps_proto(release) is keeps


# --------------------------------------------------------------------------- in a namespace


@pytest.mark.netns
@root_only
def test_ipv4_on_lo_with_label_and_proto(manager: AddressManager, netns: str) -> None:
    assert manager.add("lo", V4) is True
    kernel = kernel_addresses(netns)[("lo", "192.0.2.10/32")]
    assert kernel["label"] == "lo:bgpvip"
    if manager.ownership == "proto":
        assert kernel["proto"] == BGPVIP_PROTO
    assert "lo:bgpvip" in ip(netns, "-4", "addr", "show", "dev", "lo")
    assert manager.has("lo", V4)
    assert manager.owned() == {("lo", V4)}
    assert manager.remove("lo", V4) is True
    assert ("lo", "192.0.2.10/32") not in kernel_addresses(netns)
    assert manager.owned() == set()
    assert not manager.has("lo", V4)


@pytest.mark.netns
@root_only
@pytest.mark.parametrize("kind", ["dummy", "veth"])
def test_ipv6_on_an_interface(manager: AddressManager, netns: str, kind: str) -> None:
    ifname = "v0"
    if kind == "dummy":
        if not dummy_supported(netns):
            pytest.skip("this kernel has no dummy driver (CONFIG_DUMMY)")
        ip(netns, "link", "add", "vip0", "type", "dummy")
        ip(netns, "link", "set", "vip0", "up")
        ifname = "vip0"
    assert manager.add(ifname, V6) is True
    kernel = kernel_addresses(netns)[(ifname, "2001:db8::10/128")]
    if manager.ownership == "proto":
        assert kernel["proto"] == BGPVIP_PROTO
    shown = ip(netns, "-6", "addr", "show", "dev", ifname)
    assert "2001:db8::10/128" in shown
    assert "tentative" not in shown.split("2001:db8::10/128", 1)[1].split("\n", 1)[0]
    assert manager.owned() == {(ifname, V6)}
    assert manager.has(ifname, V6)
    assert manager.remove(ifname, V6) is True
    assert manager.owned() == set()


@pytest.mark.netns
@root_only
@pytest.mark.parametrize(
    ("ifname", "address"), [("lo", "192.0.2.20/32"), ("v0", "2001:db8::20/128")], ids=["ipv4", "ipv6"]
)
def test_an_address_bgpvip_did_not_add_is_never_touched(
    manager: AddressManager, netns: str, ifname: str, address: str
) -> None:
    ip(netns, "addr", "add", address, "dev", ifname, *(["nodad"] if ":" in address else []))
    before = kernel_addresses(netns)[(ifname, address)]
    iface = ip_interface(address)
    assert manager.has(ifname, iface)
    assert manager.owned() == set()
    assert manager.remove(ifname, iface) is False
    assert manager.add(ifname, iface) is False
    assert kernel_addresses(netns)[(ifname, address)] == before
    assert manager.owned() == set()
    assert manager.remove(ifname, iface) is False
    assert (ifname, address) in kernel_addresses(netns)


@pytest.mark.netns
@root_only
def test_add_is_idempotent_and_reasserts_the_label(manager: AddressManager, netns: str) -> None:
    assert manager.add("lo", V4) is True
    assert manager.add("lo", V4) is True
    assert manager.add("v0", V6) is True
    assert manager.add("v0", V6) is True
    assert manager.owned() == {("lo", V4), ("v0", V6)}
    assert sum(1 for key in kernel_addresses(netns) if key[1] in ("192.0.2.10/32", "2001:db8::10/128")) == 2


@pytest.mark.netns
@root_only
def test_remove_of_an_absent_address_is_fine(manager: AddressManager) -> None:
    assert manager.remove("lo", V4) is False
    assert manager.remove("v0", V6) is False


@pytest.mark.netns
@root_only
def test_missing_interface(manager: AddressManager) -> None:
    with pytest.raises(InterfaceMissing, match="'vip9' does not exist"):
        manager.add("vip9", V4)
    assert manager.has("vip9", V4) is False
    assert manager.remove("vip9", V4) is False


@pytest.mark.netns
@root_only
def test_other_errors_propagate(manager: AddressManager, netns: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.conf.v0.disable_ipv6=1"], check=True
    )
    with pytest.raises(NetlinkError) as raised:
        manager.add("v0", V6)
    assert raised.value.code == errno.EACCES


@pytest.mark.netns
@root_only
def test_callable_from_inside_a_running_event_loop(manager: AddressManager) -> None:
    async def from_the_loop() -> set[tuple[str, Any]]:
        assert manager.add("lo", V4) is True
        assert await asyncio.to_thread(manager.owned) == manager.owned()
        return manager.owned()

    # The loop runs in its own thread so the test leaves the main thread's event loop state alone.
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, from_the_loop()).result() == {("lo", V4)}


@pytest.mark.netns
@root_only
def test_state_file_ownership_survives_a_restart(netns: str, tmp_path: Path) -> None:
    with AddressManager(netns, state_dir=tmp_path, ownership="state-file") as first:
        first.add("lo", V4)
        first.add("v0", V6)
    rows = json.loads((tmp_path / "addresses.json").read_text())
    assert sorted(rows) == [["lo", "192.0.2.10/32"], ["v0", "2001:db8::10/128"]]
    ip(netns, "addr", "del", "2001:db8::10/128", "dev", "v0")
    with AddressManager(netns, state_dir=tmp_path, ownership="state-file") as second:
        assert second.owned() == {("lo", V4)}
        assert second.remove("lo", V4) is True
    assert json.loads((tmp_path / "addresses.json").read_text()) == []


@pytest.mark.netns
@root_only
def test_local_address_for(netns: str) -> None:
    ip(netns, "addr", "add", "10.1.0.1/24", "dev", "v0")
    ip(netns, "addr", "add", "2001:db8:1::1/64", "dev", "v0", "nodad")
    with AddressManager(netns) as mgr:
        assert mgr.local_address_for(IPv4Address("10.1.0.7")) == IPv4Address("10.1.0.1")
        assert mgr.local_address_for(IPv6Address("2001:db8:1::7")) == IPv6Address("2001:db8:1::1")
        assert mgr.local_address_for(IPv4Address("198.51.100.1")) is None
        assert mgr.local_address_for(IPv6Address("2001:db8:ff::1")) is None
    assert local_address_for(IPv4Address("10.1.0.7"), netns) == IPv4Address("10.1.0.1")


@pytest.mark.netns
@root_only
def test_missing_namespace_is_an_error_not_a_new_namespace() -> None:
    name = f"bvp-{os.getpid()}-absent"
    with pytest.raises(FileNotFoundError, match=f"no such network namespace: '{name}'"):
        AddressManager(name)
    assert not Path(f"/var/run/netns/{name}").exists()
    with pytest.raises(FileNotFoundError, match=name):
        read_addresses(name)
    assert not Path(f"/var/run/netns/{name}").exists()


@pytest.mark.netns
@root_only
def test_a_namespace_removed_under_the_manager_is_an_error_from_owned(netns: str) -> None:
    with AddressManager(netns) as mgr:
        subprocess.run(["ip", "netns", "del", netns], check=True)
        with pytest.raises(FileNotFoundError, match=netns):
            mgr.owned()


@pytest.mark.netns
@root_only
def test_ensure_dummy(netns: str) -> None:
    with AddressManager(netns) as mgr:
        if not dummy_supported(netns):
            with pytest.raises(DummyUnsupported, match="no dummy driver"):
                mgr.ensure_dummy("vip0")
            return
        assert mgr.ensure_dummy("vip0") is True
        shown = ip(netns, "link", "show", "vip0")
        assert ",UP" in shown
        assert "alias bgpvip" in shown
        ip(netns, "link", "set", "vip0", "down")
        assert mgr.ensure_dummy("vip0") is False
        assert ",UP" in ip(netns, "link", "show", "vip0")
        assert mgr.add("vip0", V4) is True
        assert mgr.remove_dummy("vip0") is True
        assert mgr.remove_dummy("vip0") is False


@pytest.mark.netns
@root_only
def test_remove_dummy_leaves_other_interfaces(netns: str) -> None:
    with AddressManager(netns) as mgr:
        assert mgr.ensure_dummy("v0") is False
        assert mgr.remove_dummy("v0") is False
    assert "v0" in ip(netns, "link", "show", "v0")


# --------------------------------------------------------------------------- owned() without pyroute2


def pyroute2_addresses(ns: str) -> list[tuple[str, Any, int | None]]:
    """What the pyroute2 version of `owned()` read: (ifname, interface, proto) of every address."""
    with IPRoute(netns=ns, flags=0, groups=0) as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        return [
            (
                names[m["index"]],
                ip_interface(f"{m.get('local') or m.get('address')}/{m['prefixlen']}"),
                m.get("proto"),
            )
            for m in ipr.addr("dump")
        ]


class CountingSocket:
    """A real rtnetlink socket that counts the recvmsg() calls each request took."""

    def __init__(self, sock: Any):
        self.sock = sock
        self.reads: list[int] = []

    def __enter__(self) -> CountingSocket:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()

    def sendto(self, data: bytes, address: Any) -> int:
        self.reads.append(0)
        return int(self.sock.sendto(data, address))

    def recvmsg(self, size: int) -> Any:
        self.reads[-1] += 1
        return self.sock.recvmsg(size)


@pytest.mark.netns
@root_only
def test_owned_agrees_with_pyroute2_in_a_crowded_namespace(
    manager: AddressManager, netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ip(netns, "link", "add", "enp3s0f1np1v99", "type", "veth", "peer", "name", "v3")
    ip(netns, "link", "set", "enp3s0f1np1v99", "up")
    ip(netns, "addr", "add", "10.9.0.1", "peer", "10.9.0.2/32", "dev", "v0")  # IFA_LOCAL != IFA_ADDRESS
    ip(netns, "addr", "add", "10.8.0.1/24", "dev", "v1", "label", "v1:op")
    ours: set[tuple[str, Any]] = set()
    with IPRoute(netns=netns, flags=0, groups=0) as ipr:
        index = {name: ipr.link_lookup(ifname=name)[0] for name in ("lo", "v0", "v1", "enp3s0f1np1v99")}
        for n in range(400):
            ifname = ("lo", "v0", "v1", "enp3s0f1np1v99")[n % 4]
            iface = ip_interface(f"10.{20 + n // 250}.{n % 250}.1/{32 if n % 5 else 28}")
            attrs: dict[str, Any] = {"address": str(iface.ip), "prefixlen": iface.network.prefixlen}
            if n % 3 == 0:
                attrs["proto"] = BGPVIP_PROTO
                ours.add((ifname, iface))
            if n % 2 == 0 and label_for(ifname):
                attrs["label"] = label_for(ifname)
            ipr.addr("add", index=index[ifname], **attrs)
        for n in range(100):
            ifname = ("lo", "v1")[n % 2]
            iface = ip_interface(f"2001:db8:{n}::1/{128 if n % 3 else 64}")
            attrs = {"address": str(iface.ip), "prefixlen": iface.network.prefixlen, "flags": 0x02}  # NODAD
            if n % 4 == 0:
                attrs["proto"] = BGPVIP_PROTO
                ours.add((ifname, iface))
            ipr.addr("add", index=index[ifname], **attrs)

    sockets: list[CountingSocket] = []
    real = netlink._rtnetlink_socket

    def counting(ns: str | None) -> CountingSocket:
        sockets.append(CountingSocket(real(ns)))
        return sockets[-1]

    monkeypatch.setattr(netlink, "_rtnetlink_socket", counting)
    assert manager.owned() == ours
    assert len(sockets) == 1 and sockets[0].reads[1] >= 2, sockets[0].reads  # the address dump came in parts

    expected = pyroute2_addresses(netns)
    assert len(expected) > 500
    assert sorted(read_addresses(netns), key=repr) == sorted(expected, key=repr)
    assert {(i, a) for i, a, proto in expected if proto == BGPVIP_PROTO} == ours


@pytest.mark.netns
@root_only
def test_read_addresses_leaves_the_thread_in_its_own_namespace(netns: str) -> None:
    home = os.readlink("/proc/thread-self/ns/net")
    ip(netns, "addr", "add", "192.0.2.40/32", "dev", "lo")
    assert ("lo", ip_interface("192.0.2.40/32"), None) in read_addresses(netns)
    assert os.readlink("/proc/thread-self/ns/net") == home
    assert ("lo", ip_interface("192.0.2.40/32"), None) not in read_addresses()


@pytest.mark.netns
@root_only
def test_state_file_ownership_in_owned(netns: str, tmp_path: Path) -> None:
    """Without IFA_PROTO (kernels before 6.1) the state file alone says what is bgpvip's."""
    ip(netns, "addr", "add", "192.0.2.30/32", "dev", "lo")  # bgpvip's, by the state file
    ip(netns, "addr", "add", "192.0.2.31/32", "dev", "lo")  # an operator's
    ip(netns, "addr", "add", "2001:db8::30/128", "dev", "v0", "nodad")  # bgpvip's
    recorded = [["lo", "192.0.2.30/32"], ["v0", "192.0.2.99/32"], ["v0", "2001:db8::30/128"]]
    (tmp_path / "addresses.json").write_text(json.dumps(recorded))
    with AddressManager(netns, state_dir=tmp_path, ownership="state-file") as mgr:
        assert mgr.owned() == {
            ("lo", ip_interface("192.0.2.30/32")),
            ("v0", ip_interface("2001:db8::30/128")),
        }
        # 192.0.2.99 is gone from the kernel: forgotten
        assert json.loads((tmp_path / "addresses.json").read_text()) == [recorded[0], recorded[2]]
        assert mgr.remove("lo", ip_interface("192.0.2.31/32")) is False
        assert mgr.remove("lo", ip_interface("192.0.2.30/32")) is True
        assert mgr.owned() == {("v0", ip_interface("2001:db8::30/128"))}
    assert ("lo", "192.0.2.31/32") in kernel_addresses(netns)
    assert json.loads((tmp_path / "addresses.json").read_text()) == [recorded[2]]


@pytest.mark.netns
@root_only
def test_a_speaker_that_only_lists_addresses_never_imports_pyroute2(netns: str, tmp_path: Path) -> None:
    with IPRoute(netns=netns, flags=0, groups=0) as ipr:
        ipr.addr(
            "add",
            index=ipr.link_lookup(ifname="lo")[0],
            address="192.0.2.50",
            prefixlen=32,
            proto=BGPVIP_PROTO,
        )
    code = """
        import sys
        from ipaddress import ip_interface
        from pathlib import Path
        import bgpvip.daemon
        from bgpvip.adapters.netlink import AddressManager

        def pyroute2():
            return sorted(m for m in sys.modules if m.startswith("pyroute2"))

        ns, state_dir = sys.argv[1], Path(sys.argv[2])
        with AddressManager(ns, state_dir=state_dir) as mgr:
            assert mgr.owned() == {("lo", ip_interface("192.0.2.50/32"))}
        assert pyroute2() == [], pyroute2()
        with AddressManager(ns, state_dir=state_dir) as mgr:
            assert mgr.owned() == {("lo", ip_interface("192.0.2.50/32"))}
            assert pyroute2() == [], pyroute2()
            assert mgr.add("v0", ip_interface("192.0.2.51/32")) is True
            assert "pyroute2.iproute.linux" in pyroute2(), pyroute2()
            assert mgr.owned() == {("lo", ip_interface("192.0.2.50/32")), ("v0", ip_interface("192.0.2.51/32"))}
        """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), netns, str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert ("v0", "192.0.2.51/32") in kernel_addresses(netns)


@pytest.mark.netns
@root_only
def test_a_speaker_with_vips_opens_netlink_at_start_not_at_its_first_announcement(
    netns: str, tmp_path: Path
) -> None:
    """The speaker awaits `prepare_addresses` before it starts the reconcile loop: when it
    returns, pyroute2 is imported and its socket open, so the first `address-add` (right
    after the first check goes up) does not pay for the import. A speaker without VIP
    interfaces does not load pyroute2 at all."""
    code = """
        import asyncio, sys
        from pathlib import Path
        from bgpvip.adapters.netlink import AddressManager
        from bgpvip.core.config import load
        from bgpvip.daemon import prepare_addresses

        def pyroute2():
            return sorted(m for m in sys.modules if m.startswith("pyroute2"))

        ns, state_dir = sys.argv[1], Path(sys.argv[2])
        bgp = {"local_as": 65100, "peers": [{"address": "192.0.2.1", "peer_as": 65000}]}
        services_only = load({"bgp": bgp, "pools": [{"name": "p", "addresses": ["203.0.113.0/24"]}]})
        with_vip = load({"bgp": bgp, "vips": [{"address": "198.51.100.10", "interface": "lo"}]})

        async def main():
            with AddressManager(ns, state_dir=state_dir) as mgr:
                assert prepare_addresses(services_only, mgr) is None
                assert not mgr.ready and pyroute2() == [], pyroute2()
                warming = prepare_addresses(with_vip, mgr)
                assert warming is not None
                await warming
                assert mgr.ready, "the socket is open before the loop starts"
                assert "pyroute2.iproute.linux" in pyroute2(), pyroute2()
                assert prepare_addresses(with_vip, mgr) is None, "done once"

        asyncio.run(main())
        """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), netns, str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- rtnetlink parsing, crafted bytes


def nlmsg(kind: int, body: bytes, seq: int = 1) -> bytes:
    msg = struct.pack("=IHHII", 16 + len(body), kind, 0x2, seq, 0) + body  # NLM_F_MULTI
    return msg + bytes(-len(msg) % 4)


def rta(kind: int, value: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(value), kind) + value
    return attr + bytes(-len(attr) % 4)


def link_msg(index: int, name: str) -> bytes:
    return nlmsg(
        16, struct.pack("=BxHiII", 0, 1, index, 0, 0) + rta(0x8000 | 26, b"") + rta(3, name.encode() + b"\0")
    )


def addr_msg(family: int, prefixlen: int, index: int, *attrs: bytes) -> bytes:
    return nlmsg(20, struct.pack("=BBBBI", family, prefixlen, 0, 0, index) + b"".join(attrs))


def error_msg(code: int) -> bytes:
    return nlmsg(2, struct.pack("=i", code) + struct.pack("=IHHII", 20, 22, 0x301, 1, 0))


DONE = nlmsg(3, struct.pack("=i", 0))


class FakeRtnetlink:
    """Answers a link dump and an address dump with the datagrams given, one per recvmsg()."""

    def __init__(self, links: list[bytes], addresses: list[bytes]):
        self.replies = {18: links, 22: addresses}
        self.pending: list[bytes] = []

    def __enter__(self) -> FakeRtnetlink:
        return self

    def __exit__(self, *_exc: object) -> None:
        assert not self.pending, "a reply was left unread"

    def sendto(self, data: bytes, _address: Any) -> int:
        length, kind, flags = struct.unpack_from("=IHH", data)
        assert length == len(data) and flags == 0x301  # NLM_F_REQUEST | NLM_F_DUMP
        self.pending = list(self.replies[kind])
        return len(data)

    def recvmsg(self, _size: int) -> tuple[bytes, list[Any], int, Any]:
        return self.pending.pop(0), [], 0, (0, 0)


def test_read_addresses_parses_multi_part_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    v4, peer = bytes([192, 0, 2, 10]), bytes([192, 0, 2, 11])
    v6 = IPv6Address("2001:db8::10").packed
    fake = FakeRtnetlink(
        links=[link_msg(1, "lo") + link_msg(2, "v0"), link_msg(5, "enp3s0f1np1v99") + DONE],
        addresses=[
            addr_msg(
                2, 32, 1, rta(1, v4), rta(2, v4), rta(3, b"lo:bgpvip\0"), rta(11, bytes([BGPVIP_PROTO]))
            ),
            nlmsg(20, b"stale reply to another request", seq=7) + addr_msg(10, 128, 2, rta(1, v6)),
            addr_msg(2, 30, 5, rta(1, peer), rta(2, v4)),  # point-to-point: IFA_LOCAL is ours
            addr_msg(2, 32, 9, rta(2, v4)),  # an interface the link dump did not have
            addr_msg(17, 0, 1, rta(1, b"\x01")),  # not IPv4 or IPv6
            DONE,
        ],
    )
    monkeypatch.setattr(netlink, "_rtnetlink_socket", lambda _ns: fake)
    assert read_addresses() == [
        ("lo", ip_interface("192.0.2.10/32"), BGPVIP_PROTO),
        ("v0", ip_interface("2001:db8::10/128"), None),
        ("enp3s0f1np1v99", ip_interface("192.0.2.10/30"), None),
    ]


@pytest.mark.parametrize(
    "reply",
    [
        [error_msg(-errno.EACCES)],
        [addr_msg(2, 32, 1, rta(2, bytes(4))), error_msg(-errno.EACCES)],
        [addr_msg(2, 32, 1, rta(2, bytes(4))), nlmsg(3, struct.pack("=i", -errno.EACCES))],
    ],
    ids=["error", "error-after-a-part", "done-with-an-error"],
)
def test_an_error_reply_is_an_oserror(monkeypatch: pytest.MonkeyPatch, reply: list[bytes]) -> None:
    monkeypatch.setattr(
        netlink, "_rtnetlink_socket", lambda _ns: FakeRtnetlink([link_msg(1, "lo"), DONE], reply)
    )
    with pytest.raises(OSError, match="Permission denied") as raised:
        read_addresses()
    assert raised.value.errno == errno.EACCES


def test_an_acknowledgement_is_not_an_error_and_a_cut_message_is() -> None:
    assert [kind for kind, _seq, _payload in netlink._messages(error_msg(0) + DONE)] == [2, 3]
    with pytest.raises(OSError) as raised:
        list(netlink._messages(addr_msg(2, 32, 1, rta(2, bytes(4)))[:-4]))
    assert raised.value.errno == errno.EBADMSG
