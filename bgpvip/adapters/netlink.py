"""Local addresses through netlink (pyroute2): the VIPs bgpvip puts on interfaces, and nothing else.

I/O side of the line. bgpvip marks every address it adds so that it only ever removes its own
(an operator's address on the same interface is left alone). The mark is the kernel's address
protocol attribute `IFA_PROTO` (Linux 6.1+), set to `BGPVIP_PROTO` for both IPv4 and IPv6 and
read back from every dump; IPv4 addresses also get the label `<ifname>:bgpvip` that operators
see in `ip addr`. On older kernels, which accept the attribute but drop it, ownership is kept
in a small state file instead (`<state_dir>/addresses.json`).

Errors: EEXIST on add and EADDRNOTAVAIL on remove mean "already so" and are not errors; a
missing interface raises `InterfaceMissing`; every other netlink error propagates.

The calls are synchronous and fast (one netlink round trip, or one dump). pyroute2's
synchronous API runs its own event loop, which cannot happen inside a running one, so every
call is handed to one private thread: the methods can be called from the asyncio loop, from
`asyncio.to_thread`, or from plain code alike.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import platform
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from socket import AF_INET, AF_INET6
from typing import Any, Literal, TypeVar

from bgpvip.core.model import IPAddress, IPInterface
from bgpvip.lean import submodules

# pyroute2 without its package __init__ (every netlink family it has): see bgpvip/lean.py
_linux, _exceptions, _ifaddrmsg, _ifinfmsg = submodules(
    "pyroute2",
    "pyroute2.iproute.linux",
    "pyroute2.netlink.exceptions",
    "pyroute2.netlink.rtnl.ifaddrmsg",
    "pyroute2.netlink.rtnl.ifinfmsg",
)
IPRoute = _linux.IPRoute
NetlinkError = _exceptions.NetlinkError
IFA_F_NODAD: int = _ifaddrmsg.IFA_F_NODAD
IFF_UP: int = _ifinfmsg.IFF_UP

log = logging.getLogger(__name__)

BGPVIP_PROTO = 0x62
"""`IFA_PROTO` value on addresses bgpvip adds ('b'). Values above 3 are free for userspace."""
LABEL_SUFFIXES = (":bgpvip", ":bv")
"""IPv4 label suffixes, longest first. A label holds at most 15 characters, so `<ifname>:bgpvip`
fits names up to 8 characters and `<ifname>:bv` up to 12; longer names get no label (the
kernel then shows the interface name), which loses nothing because ownership is `IFA_PROTO`."""
DUMMY_ALIAS = "bgpvip"
"""`ifalias` of dummy interfaces created by `ensure_dummy`, so `remove_dummy` only removes those."""
_IFNAMSIZ = 16
_PROTO_KERNEL = (6, 1)

T = TypeVar("T")
Ownership = Literal["proto", "state-file"]


class InterfaceMissing(LookupError):
    """The interface named for a VIP does not exist (ENODEV)."""

    def __init__(self, ifname: str):
        super().__init__(f"interface {ifname!r} does not exist")
        self.ifname = ifname


class DummyUnsupported(RuntimeError):
    """The kernel cannot create dummy interfaces (built without CONFIG_DUMMY)."""

    def __init__(self, ifname: str):
        super().__init__(
            f"cannot create dummy interface {ifname!r}: this kernel has no dummy driver "
            "(load the `dummy` module, or put the VIPs on `lo`)"
        )
        self.ifname = ifname


def label_for(ifname: str) -> str | None:
    """The IPv4 label bgpvip gives its addresses on `ifname`, or None when no suffix fits."""
    for suffix in LABEL_SUFFIXES:
        if len(ifname) + len(suffix) < _IFNAMSIZ:
            return ifname + suffix
    return None


def kernel_keeps_proto(release: str | None = None) -> bool:
    """Whether this kernel stores `IFA_PROTO` (added in Linux 6.1)."""
    match = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return match is not None and (int(match[1]), int(match[2])) >= _PROTO_KERNEL


class AddressManager:
    """Adds, lists and removes the addresses bgpvip owns, in one network namespace.

    `netns` names a namespace under /var/run/netns (tests); None is the current one.
    `ownership` is detected from the kernel version when not given; `state_dir` is only used
    with `state-file` ownership.
    """

    def __init__(
        self,
        netns: str | None = None,
        *,
        state_dir: Path = Path("/run/bgpvip"),
        ownership: Ownership | None = None,
    ):
        self.ownership: Ownership = ownership or ("proto" if kernel_keeps_proto() else "state-file")
        self._state_file = state_dir / "addresses.json"
        self._recorded: set[tuple[str, IPInterface]] = set()
        if self.ownership == "state-file":
            self._recorded = self._load_state()
        if netns is not None and not Path("/var/run/netns", netns).exists():
            # Checked here: pyroute2 leaks its socket and event loop when it fails to enter one.
            raise FileNotFoundError(errno.ENOENT, "no such network namespace", netns)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bgpvip-netlink")
        try:
            # flags=0: never create the namespace by accident; groups=0: no unread broadcasts pile up.
            self._ipr: Any = self._thread.submit(IPRoute, netns=netns, flags=0, groups=0).result()
        except BaseException:
            self._thread.shutdown()
            raise

    def close(self) -> None:
        self._thread.submit(self._ipr.close).result()
        self._thread.shutdown()

    def __enter__(self) -> AddressManager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], T]) -> T:
        return self._thread.submit(fn).result()

    # ------------------------------------------------------------------ addresses

    def add(self, ifname: str, iface: IPInterface) -> bool:
        """Put `iface` on `ifname`, owned by bgpvip. Idempotent.

        Returns False, changing nothing, when the same address is already there but not
        bgpvip's: the address is present, yet bgpvip will never remove it.
        """

        def add() -> bool:
            index = self._index(ifname)
            attrs = self._attributes(ifname, iface)
            if self.ownership == "state-file" and (ifname, iface) not in self._recorded:
                if self._find(index, iface, exact=False) is not None:
                    return _not_ours(ifname, iface)
                # Recorded before the kernel has it, so a crash in between cannot orphan it.
                self._record(ifname, iface, present=True)
            try:
                self._ipr.addr("add", index=index, **attrs)
                return True
            except NetlinkError as e:
                if e.code == errno.ENODEV:
                    raise InterfaceMissing(ifname) from None
                if e.code != errno.EEXIST:
                    raise
            existing = self._find(index, iface, exact=False)
            if existing is None or not self._owns(ifname, existing):
                return _not_ours(ifname, iface)
            # Ours already: `replace` re-asserts label and flags in case something changed them.
            self._ipr.addr("replace", index=index, **attrs)
            return True

        return self._call(add)

    def remove(self, ifname: str, iface: IPInterface) -> bool:
        """Remove `iface` from `ifname` if bgpvip put it there.

        Returns True when it was removed; False when it was already gone (or its interface
        was), or when it is not bgpvip's, in which case it stays.
        """

        def remove() -> bool:
            try:
                index = self._index(ifname)
            except InterfaceMissing:
                self._record(ifname, iface, present=False)
                return False
            existing = self._find(index, iface, exact=True)
            if existing is None:
                self._record(ifname, iface, present=False)
                return False
            if not self._owns(ifname, existing):
                log.warning("address %s on %s is not bgpvip's: not removing it", iface, ifname)
                return False
            try:
                self._ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            except NetlinkError as e:
                if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                    raise
            self._record(ifname, iface, present=False)
            return True

        return self._call(remove)

    def has(self, ifname: str, iface: IPInterface) -> bool:
        """Whether `iface` (address and prefix length) is on `ifname`, whoever put it there."""

        def has() -> bool:
            try:
                index = self._index(ifname)
            except InterfaceMissing:
                return False
            return self._find(index, iface, exact=True) is not None

        return self._call(has)

    def owned(self) -> set[tuple[str, IPInterface]]:
        """Every (interface, address) bgpvip owns right now, on any interface."""

        def owned() -> set[tuple[str, IPInterface]]:
            names = {link["index"]: link.get("ifname") for link in self._ipr.link("dump")}
            present: set[tuple[str, IPInterface]] = set()
            result: set[tuple[str, IPInterface]] = set()
            for msg in self._ipr.addr("dump"):
                ifname = names.get(msg["index"])
                if ifname is None:
                    continue
                key = (ifname, _interface_of(msg))
                present.add(key)
                if msg.get("proto") == BGPVIP_PROTO or key in self._recorded:
                    result.add(key)
            if self.ownership == "state-file" and not self._recorded <= present:
                self._recorded &= present
                self._save_state()
            return result

        return self._call(owned)

    def _index(self, ifname: str) -> int:
        try:
            links = self._ipr.link("get", ifname=ifname)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                raise InterfaceMissing(ifname) from None
            raise
        return int(links[0]["index"])

    def _attributes(self, ifname: str, iface: IPInterface) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "address": str(iface.ip),
            "prefixlen": iface.network.prefixlen,
            "proto": BGPVIP_PROTO,
        }
        if iface.version == 4:
            label = label_for(ifname)
            if label is not None:
                attrs["label"] = label
        else:
            # No duplicate address detection: a VIP must be usable at once, and the network
            # learns it from BGP, not from neighbour discovery.
            attrs["flags"] = IFA_F_NODAD
        return attrs

    def _dump(self, index: int, family: int) -> Iterator[Any]:
        for msg in self._ipr.addr("dump", family=family):
            if msg["index"] == index:
                yield msg

    def _find(self, index: int, iface: IPInterface, *, exact: bool) -> Any | None:
        """The kernel's message for `iface` on `index`; `exact=False` ignores the prefix length."""
        for msg in self._dump(index, AF_INET if iface.version == 4 else AF_INET6):
            found = _interface_of(msg)
            if found.ip == iface.ip and (not exact or found.network.prefixlen == iface.network.prefixlen):
                return msg
        return None

    def _owns(self, ifname: str, msg: Any) -> bool:
        if self.ownership == "proto":
            return bool(msg.get("proto") == BGPVIP_PROTO)
        return (ifname, _interface_of(msg)) in self._recorded

    # ------------------------------------------------------------------ state file (kernels < 6.1)

    def _record(self, ifname: str, iface: IPInterface, *, present: bool) -> None:
        if self.ownership != "state-file":
            return
        key = (ifname, iface)
        if (key in self._recorded) == present:
            return
        if present:
            self._recorded.add(key)
        else:
            self._recorded.discard(key)
        self._save_state()

    def _load_state(self) -> set[tuple[str, IPInterface]]:
        try:
            rows = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return set()
        return {(str(ifname), ipaddress.ip_interface(addr)) for ifname, addr in rows}

    def _save_state(self) -> None:
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted([ifname, str(iface)] for ifname, iface in self._recorded)))
        os.replace(tmp, self._state_file)

    # ------------------------------------------------------------------ interfaces and routes

    def ensure_dummy(self, ifname: str) -> bool:
        """Create dummy interface `ifname` (up, marked as bgpvip's) unless it exists.

        Returns True when it was created. An existing interface is left as it is, except that
        one bgpvip created earlier is set up again.
        """

        def ensure() -> bool:
            try:
                link = self._ipr.link("get", ifname=ifname)[0]
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise
            else:
                if link.get("ifalias") == DUMMY_ALIAS and not link["flags"] & IFF_UP:
                    self._ipr.link("set", index=link["index"], state="up")
                return False
            try:
                self._ipr.link("add", ifname=ifname, kind="dummy")
            except NetlinkError as e:
                if e.code == errno.EOPNOTSUPP:
                    raise DummyUnsupported(ifname) from None
                if e.code != errno.EEXIST:
                    raise
                return False
            index = self._index(ifname)
            self._ipr.link("set", index=index, ifalias=DUMMY_ALIAS, state="up")
            return True

        return self._call(ensure)

    def remove_dummy(self, ifname: str) -> bool:
        """Delete `ifname` if `ensure_dummy` created it. Returns True when it was deleted."""

        def remove() -> bool:
            try:
                link = self._ipr.link("get", ifname=ifname)[0]
            except NetlinkError as e:
                if e.code == errno.ENODEV:
                    return False
                raise
            if link.get("ifalias") != DUMMY_ALIAS:
                return False
            try:
                self._ipr.link("del", index=link["index"])
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise
            return True

        return self._call(remove)

    def local_address_for(self, peer: IPAddress) -> IPAddress | None:
        """The source address the kernel would use to reach `peer`; None when it has no route."""

        def lookup() -> IPAddress | None:
            try:
                routes = self._ipr.route("get", dst=str(peer))
            except NetlinkError as e:
                if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                    return None
                raise
            for route in routes:
                src = route.get("prefsrc")
                if src:
                    return ipaddress.ip_address(src)
            return None

        return self._call(lookup)


def local_address_for(peer: IPAddress, netns: str | None = None) -> IPAddress | None:
    """`AddressManager.local_address_for` for one-off use, e.g. while rendering ExaBGP's config."""
    with AddressManager(netns, ownership="proto") as mgr:
        return mgr.local_address_for(peer)


def _not_ours(ifname: str, iface: IPInterface) -> bool:
    log.warning("address %s on %s exists and is not bgpvip's: leaving it alone", iface, ifname)
    return False


def _interface_of(msg: Any) -> IPInterface:
    address = msg.get("local") or msg.get("address")
    return ipaddress.ip_interface(f"{address}/{msg['prefixlen']}")
