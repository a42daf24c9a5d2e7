"""AddressManager against the real kernel, inside throwaway network namespaces `bvp-<pid>-<n>`.

Each namespace is removed in the fixture's `finally`, whatever the test did.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv6Address, ip_interface
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bgpvip.adapters.netlink import (
    BGPVIP_PROTO,
    AddressManager,
    DummyUnsupported,
    InterfaceMissing,
    kernel_keeps_proto,
    label_for,
    local_address_for,
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
    with pytest.raises(FileNotFoundError):
        AddressManager(name)
    assert not Path(f"/var/run/netns/{name}").exists()


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
