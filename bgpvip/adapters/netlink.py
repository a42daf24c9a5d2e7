"""Local addresses through netlink: the VIPs bgpvip puts on interfaces, and nothing else.

I/O side of the line. bgpvip marks every address it adds so that it only ever removes its own
(an operator's address on the same interface is left alone). The mark is the kernel's address
protocol attribute `IFA_PROTO` (Linux 6.1+), set to `BGPVIP_PROTO` for both IPv4 and IPv6 and
read back from every dump; IPv4 addresses also get the label `<ifname>:bgpvip` that operators
see in `ip addr`. On older kernels, which accept the attribute but drop it, ownership is kept
in a small state file instead (`<state_dir>/addresses.json`).

Two ways to the kernel. Everything that changes something or asks one question (`add`,
`remove`, `has`, the dummy interfaces, `local_address_for`) goes through pyroute2, which is
imported, and its `IPRoute` socket opened, on the first such call. `owned()` reads one link
dump and one address dump through a plain rtnetlink socket instead (`read_addresses`, standard
library only), because it is all a speaker that only announces Kubernetes Service IPs ever
calls: it looks for addresses a previous configuration left behind, at start and on every
resync. Importing pyroute2 would add 6 MB of resident memory to such a speaker for nothing.

Errors: EEXIST on add and EADDRNOTAVAIL on remove mean "already so" and are not errors; a
missing interface raises `InterfaceMissing`; every other netlink error propagates (pyroute2's
`NetlinkError` from the pyroute2 calls, `OSError` from `owned`).

The calls are synchronous and fast (one netlink round trip, or one dump). pyroute2's
synchronous API runs its own event loop, which cannot happen inside a running one, so every
call is handed to one private thread: the methods can be called from the asyncio loop, from
`asyncio.to_thread`, or from plain code alike. The same thread enters a named network
namespace (tests) for a moment to open the rtnetlink socket of `owned()` there.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import json
import logging
import os
import platform
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from socket import AF_INET, AF_INET6
from typing import Any, Literal, NamedTuple, TypeVar

from bgpvip.core.model import IPAddress, IPInterface
from bgpvip.lean import submodules


class _Pyroute2(NamedTuple):
    IPRoute: Any
    NetlinkError: Any
    IFA_F_NODAD: int
    IFF_UP: int


_pyroute2_lock = threading.Lock()


@functools.cache
def _pyroute2() -> _Pyroute2:
    """pyroute2's few names bgpvip uses, imported on first call (6 MB: see the module docstring)."""
    with _pyroute2_lock:  # the stand-ins of bgpvip.lean are process-wide for a moment
        # pyroute2 without its package __init__ (every netlink family it has): see bgpvip/lean.py
        linux, exceptions, ifaddrmsg, ifinfmsg = submodules(
            "pyroute2",
            "pyroute2.iproute.linux",
            "pyroute2.netlink.exceptions",
            "pyroute2.netlink.rtnl.ifaddrmsg",
            "pyroute2.netlink.rtnl.ifinfmsg",
        )
    return _Pyroute2(linux.IPRoute, exceptions.NetlinkError, ifaddrmsg.IFA_F_NODAD, ifinfmsg.IFF_UP)


def __getattr__(name: str) -> Any:
    """`netlink.IPRoute`, `netlink.NetlinkError`, ... as before, importing pyroute2 on first use."""
    if name in _Pyroute2._fields:
        return getattr(_pyroute2(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        self._netns = netns
        self._ipr: Any = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bgpvip-netlink")

    def close(self) -> None:
        def close() -> None:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

        try:
            self._call(close)
        finally:
            self._thread.shutdown()

    def __enter__(self) -> AddressManager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], T]) -> T:
        return self._thread.submit(fn).result()

    def prepare(self) -> Future[None]:
        """Import pyroute2 and open its socket now, in the private thread, instead of on the
        first `add`: a speaker with VIPs calls this at start, so that its first announcement
        does not wait for the import. Returns at once; the future is done when it is ready,
        and every later call runs after it (one thread)."""

        def prepare() -> None:
            self._iproute()

        return self._thread.submit(prepare)

    @property
    def ready(self) -> bool:
        """Whether pyroute2's socket is open (`prepare` or a first call has run)."""
        return self._ipr is not None

    def _iproute(self) -> Any:
        """pyroute2's socket, opened on first use. Only ever called in the private thread."""
        if self._ipr is None:
            # flags=0: never create the namespace by accident; groups=0: no unread broadcasts pile up.
            self._ipr = _pyroute2().IPRoute(netns=self._netns, flags=0, groups=0)
        return self._ipr

    # ------------------------------------------------------------------ addresses

    def add(self, ifname: str, iface: IPInterface) -> bool:
        """Put `iface` on `ifname`, owned by bgpvip. Idempotent.

        Returns False, changing nothing, when the same address is already there but not
        bgpvip's: the address is present, yet bgpvip will never remove it.
        """

        def add() -> bool:
            ipr, nl = self._iproute(), _pyroute2()
            index = self._index(ifname)
            attrs = self._attributes(ifname, iface)
            if self.ownership == "state-file" and (ifname, iface) not in self._recorded:
                if self._find(index, iface, exact=False) is not None:
                    return _not_ours(ifname, iface)
                # Recorded before the kernel has it, so a crash in between cannot orphan it.
                self._record(ifname, iface, present=True)
            try:
                ipr.addr("add", index=index, **attrs)
                return True
            except nl.NetlinkError as e:
                if e.code == errno.ENODEV:
                    raise InterfaceMissing(ifname) from None
                if e.code != errno.EEXIST:
                    raise
            existing = self._find(index, iface, exact=False)
            if existing is None or not self._owns(ifname, existing):
                return _not_ours(ifname, iface)
            # Ours already: `replace` re-asserts label and flags in case something changed them.
            ipr.addr("replace", index=index, **attrs)
            return True

        return self._call(add)

    def remove(self, ifname: str, iface: IPInterface) -> bool:
        """Remove `iface` from `ifname` if bgpvip put it there.

        Returns True when it was removed; False when it was already gone (or its interface
        was), or when it is not bgpvip's, in which case it stays.
        """

        def remove() -> bool:
            ipr, nl = self._iproute(), _pyroute2()
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
                ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            except nl.NetlinkError as e:
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
            present: set[tuple[str, IPInterface]] = set()
            result: set[tuple[str, IPInterface]] = set()
            for ifname, iface, proto in read_addresses(self._netns):
                key = (ifname, iface)
                present.add(key)
                if proto == BGPVIP_PROTO or key in self._recorded:
                    result.add(key)
            if self.ownership == "state-file" and not self._recorded <= present:
                self._recorded &= present
                self._save_state()
            return result

        return self._call(owned)

    def _index(self, ifname: str) -> int:
        try:
            links = self._iproute().link("get", ifname=ifname)
        except _pyroute2().NetlinkError as e:
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
            attrs["flags"] = _pyroute2().IFA_F_NODAD
        return attrs

    def _dump(self, index: int, family: int) -> Iterator[Any]:
        for msg in self._iproute().addr("dump", family=family):
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
            ipr, nl = self._iproute(), _pyroute2()
            try:
                link = ipr.link("get", ifname=ifname)[0]
            except nl.NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise
            else:
                if link.get("ifalias") == DUMMY_ALIAS and not link["flags"] & nl.IFF_UP:
                    ipr.link("set", index=link["index"], state="up")
                return False
            try:
                ipr.link("add", ifname=ifname, kind="dummy")
            except nl.NetlinkError as e:
                if e.code == errno.EOPNOTSUPP:
                    raise DummyUnsupported(ifname) from None
                if e.code != errno.EEXIST:
                    raise
                return False
            index = self._index(ifname)
            ipr.link("set", index=index, ifalias=DUMMY_ALIAS, state="up")
            return True

        return self._call(ensure)

    def remove_dummy(self, ifname: str) -> bool:
        """Delete `ifname` if `ensure_dummy` created it. Returns True when it was deleted."""

        def remove() -> bool:
            ipr, nl = self._iproute(), _pyroute2()
            try:
                link = ipr.link("get", ifname=ifname)[0]
            except nl.NetlinkError as e:
                if e.code == errno.ENODEV:
                    return False
                raise
            if link.get("ifalias") != DUMMY_ALIAS:
                return False
            try:
                ipr.link("del", index=link["index"])
            except nl.NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise
            return True

        return self._call(remove)

    def local_address_for(self, peer: IPAddress) -> IPAddress | None:
        """The source address the kernel would use to reach `peer`; None when it has no route."""

        def lookup() -> IPAddress | None:
            ipr, nl = self._iproute(), _pyroute2()
            try:
                routes = ipr.route("get", dst=str(peer))
            except nl.NetlinkError as e:
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


# ---------------------------------------------------------------------- owned(): plain rtnetlink

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # length, type
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_RTM_NEWLINK, _RTM_GETLINK, _RTM_NEWADDR, _RTM_GETADDR = 16, 18, 20, 22
_IFLA_IFNAME = 3
_IFA_ADDRESS, _IFA_LOCAL, _IFA_PROTO = 1, 2, 11
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_CLONE_NEWNET = 0x40000000
_RECV_SIZE = 65536
"""Larger than any one part of a dump (the kernel fills at most 32 KB per part)."""


def read_addresses(netns: str | None = None) -> list[tuple[str, IPInterface, int | None]]:
    """Every IPv4 and IPv6 address as (interface name, address, `IFA_PROTO` or None).

    One link dump and one address dump on a plain rtnetlink socket: what pyroute2's
    `link("dump")` and `addr("dump")` report, without importing pyroute2. `netns` names a
    namespace under /var/run/netns; the calling thread enters it for a moment.
    """
    with _rtnetlink_socket(netns) as sock:
        names: dict[int, str] = {}
        for payload in _rtnetlink_dump(sock, _RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0), _RTM_NEWLINK):
            index = _IFINFOMSG.unpack_from(payload)[2]
            name = _attributes(payload, _IFINFOMSG.size).get(_IFLA_IFNAME)
            if name is not None:
                names[index] = name.split(b"\0", 1)[0].decode()
        found: list[tuple[str, IPInterface, int | None]] = []
        for payload in _rtnetlink_dump(sock, _RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0), _RTM_NEWADDR):
            family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(payload)
            attrs = _attributes(payload, _IFADDRMSG.size)
            # IFA_LOCAL is the address itself; IFA_ADDRESS the peer's on a point-to-point link.
            address = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
            ifname = names.get(index)
            if ifname is None or address is None or family not in (AF_INET, AF_INET6):
                continue
            iface_type = ipaddress.IPv4Interface if family == AF_INET else ipaddress.IPv6Interface
            proto = attrs.get(_IFA_PROTO)
            found.append((ifname, iface_type((address, prefixlen)), proto[0] if proto else None))
        return found


def _rtnetlink_socket(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket in `netns` (None: this thread's); it stays in the namespace it was made in."""
    with _entered(netns):
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)


@contextlib.contextmanager
def _entered(netns: str | None) -> Iterator[None]:
    """This thread inside network namespace `netns` (under /var/run/netns) until the block ends."""
    if netns is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(Path("/var/run/netns", netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(target)
    finally:
        os.close(home)


def _setns(fd: int) -> None:
    """Move this thread into the network namespace `fd` (os.setns is Python 3.12+)."""
    import ctypes  # only needed for a named namespace, which only tests use

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def _rtnetlink_dump(sock: socket.socket, request: int, body: bytes, reply: int) -> Iterator[bytes]:
    """Send one dump request; yield the payload of every `reply` message until NLMSG_DONE."""
    seq = 1
    sock.sendto(
        _NLMSGHDR.pack(_NLMSGHDR.size + len(body), request, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body,
        (0, 0),
    )
    while True:
        data, _ancillary, flags, _address = sock.recvmsg(_RECV_SIZE)
        if flags & socket.MSG_TRUNC:
            raise OSError(errno.EMSGSIZE, "netlink: a dump message was truncated")
        for kind, msg_seq, payload in _messages(data):
            if msg_seq != seq:
                continue
            if kind == _NLMSG_DONE:
                return
            if kind == reply:
                yield payload


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence, payload) of each netlink message in one datagram; an error reply raises OSError."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise OSError(errno.EBADMSG, "netlink: malformed message")
        payload = data[offset + _NLMSGHDR.size : offset + length]
        # NLMSG_ERROR carries a negative errno (0 is an acknowledgement); so may NLMSG_DONE after a dump.
        if kind in (_NLMSG_ERROR, _NLMSG_DONE) and len(payload) >= 4:
            code = -struct.unpack_from("=i", payload)[0]
            if code > 0:
                raise OSError(code, f"netlink: {os.strerror(code)}")
        yield kind, seq, payload
        offset += (length + 3) & ~3


def _attributes(payload: bytes, offset: int) -> dict[int, bytes]:
    """Type → value of the route attributes in `payload` from `offset` (the first of each type)."""
    attrs: dict[int, bytes] = {}
    while offset + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, offset)
        if length < _RTATTR.size or offset + length > len(payload):
            break
        attrs.setdefault(kind & _NLA_TYPE_MASK, payload[offset + _RTATTR.size : offset + length])
        offset += (length + 3) & ~3
    return attrs
