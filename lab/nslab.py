#!/usr/bin/env python3
"""Build the containerlab topology ``lab/bgpvip.clab.yml`` with Linux network namespaces.

Where Docker is missing (CI, the development machines) this runner reads the same
topology file containerlab deploys and builds the same lab: one namespace per node
(``{prefix}{node}``), one veth pair per link named after its endpoints, the nodes'
``exec`` lines run inside their namespaces, and FRR (zebra, bgpd, optionally bfdd) on the
router node with the router's bound ``frr.conf`` (or BIRD 2 or GoBGP with the configuration
its ``bgpvip.bird-conf`` / ``bgpvip.gobgp-conf`` label names: ``Lab(router_software=...)``).

It is a test tool, on the I/O side of everything: it shells out to ``ip``, ``vtysh`` and
the FRR daemons, and talks rtnetlink to the router's namespace for fast route polling.
Everything it creates is recorded in a state file so ``down`` can remove it even after
the runner crashed; ``down`` also sweeps by name prefix, so it is idempotent.

Python API (``lab/`` on sys.path)::

    lab = Lab(DEFAULT_TOPOLOGY, prefix="bvlab-")
    lab.up()
    try:
        start_exabgp(lab, "n1", ["/usr/bin/python3", "speaker.py"])
        lab.wait_prefix("198.51.100.10/32", nexthops=["10.0.1.2"])
    finally:
        lab.down()

CLI: ``python3 lab/nslab.py [--prefix P] [--topology FILE] COMMAND`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import functools
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

LAB_DIR = Path(__file__).resolve().parent
REPO_DIR = LAB_DIR.parent
HELPERS_DIR = LAB_DIR / "helpers"
DEFAULT_TOPOLOGY = LAB_DIR / "bgpvip.clab.yml"
DEFAULT_PREFIX = "bvlab-"
STATE_ROOT = Path(os.environ.get("BGPVIP_LAB_STATE_ROOT", "/run/bgpvip-lab"))
FRR_BIN = Path(os.environ.get("BGPVIP_LAB_FRR_BIN", "/usr/lib/frr"))
FRR_RUN = Path("/var/run/frr")
NETNS_DIR = Path("/run/netns")

# One trailing dash and no other: then no lab's prefix is a prefix of another lab's
# names, and "{prefix}{n}{a|b}" temporary names stay within IFNAMSIZ (15).
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,10}-$")

FRR_USER = "frr"
FRR_DAEMONS_ALWAYS = ("zebra", "bgpd")
FRR_DAEMONS_OPTIONAL = ("bfdd",)
BIRD_BIN = Path(os.environ.get("BGPVIP_LAB_BIRD_BIN", "/usr/sbin"))
GOBGP_BIN = Path(os.environ.get("BGPVIP_LAB_GOBGP_BIN", "/usr/bin"))

ROUTER_SOFTWARE = ("frr", "bird", "gobgp")
"""What the router node runs (a per-lab choice): the topology's FRR, or BIRD 2 or GoBGP with
the configuration its `bgpvip.bird-conf` / `bgpvip.gobgp-conf` label names."""


class LabError(RuntimeError):
    """The lab could not be built, queried or torn down."""


class LabCommandError(subprocess.CalledProcessError):
    """A command inside the lab failed; the message carries its output."""

    def __str__(self) -> str:
        cmd = self.cmd if isinstance(self.cmd, str) else shlex.join(str(c) for c in self.cmd)
        parts = [f"command {cmd!r} exited with {self.returncode}"]
        if self.stdout:
            parts.append(f"stdout:\n{_text(self.stdout).rstrip()}")
        if self.stderr:
            parts.append(f"stderr:\n{_text(self.stderr).rstrip()}")
        return "\n".join(parts)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    image: str
    exec: tuple[str, ...]
    labels: dict[str, str]
    binds: tuple[tuple[Path, str], ...]  # (host path, container path)

    @property
    def role(self) -> str:
        """``router`` / ``node`` / ``client``: label ``bgpvip.role``, else guessed from the image."""
        role = self.labels.get("bgpvip.role")
        if role:
            return role
        return "router" if "frr" in self.image.lower() else "node"

    @property
    def asn(self) -> int | None:
        value = self.labels.get("bgpvip.asn")
        return int(value) if value else None

    def bind(self, container_path: str) -> Path | None:
        for host, inside in self.binds:
            if inside == container_path:
                return host
        return None


@dataclass(frozen=True)
class Link:
    a: tuple[str, str]  # (node, interface)
    b: tuple[str, str]


@dataclass(frozen=True)
class Topology:
    name: str
    path: Path
    nodes: dict[str, Node]
    links: tuple[Link, ...]

    @property
    def routers(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.role == "router"]

    def addresses(self, node: str) -> list[tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
        """(interface, address) pairs the node's ``exec`` lines configure, in order."""
        found = []
        for line in self.nodes[node].exec:
            parsed = _parse_addr_line(line)
            if parsed:
                found.append(parsed)
        return found

    def peer_of(self, node: str, ifname: str) -> tuple[str, str] | None:
        for link in self.links:
            if link.a == (node, ifname):
                return link.b
            if link.b == (node, ifname):
                return link.a
        return None


def _parse_addr_line(line: str) -> tuple[str, Any] | None:
    """``ip [-4|-6] addr add ADDR dev IF`` -> (IF, ip_interface(ADDR)); anything else -> None."""
    try:
        tokens = shlex.split(line)
    except ValueError:
        return None
    if not tokens or tokens[0] != "ip":
        return None
    rest = [t for t in tokens[1:] if not t.startswith("-")]
    if len(rest) < 3 or not "address".startswith(rest[0]) or rest[1] not in ("add", "replace"):
        return None
    try:
        address = ipaddress.ip_interface(rest[2])
        dev = rest[rest.index("dev") + 1]
    except (ValueError, IndexError):
        return None
    return dev, address


def load_topology(path: str | os.PathLike[str]) -> Topology:
    path = Path(path).resolve()
    with path.open() as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or "topology" not in doc:
        raise LabError(f"{path}: not a containerlab topology (no 'topology' key)")
    topo = doc["topology"] or {}
    defaults = topo.get("defaults") or {}
    nodes: dict[str, Node] = {}
    for name, spec in (topo.get("nodes") or {}).items():
        spec = spec or {}
        binds = []
        for bind in spec.get("binds") or defaults.get("binds") or []:
            host, _, rest = str(bind).partition(":")
            inside = rest.split(":")[0]
            binds.append(((path.parent / host).resolve(), inside))
        nodes[str(name)] = Node(
            name=str(name),
            kind=str(spec.get("kind") or defaults.get("kind") or "linux"),
            image=str(spec.get("image") or defaults.get("image") or ""),
            exec=tuple(str(x) for x in spec.get("exec") or []),
            labels={str(k): str(v) for k, v in (spec.get("labels") or {}).items()},
            binds=tuple(binds),
        )
    links = []
    for i, link in enumerate(topo.get("links") or []):
        endpoints = link.get("endpoints") or []
        if len(endpoints) != 2:
            raise LabError(f"{path}: links[{i}] needs exactly two endpoints, got {endpoints!r}")
        ends = []
        for ep in endpoints:
            node, _, ifname = str(ep).partition(":")
            if node not in nodes or not ifname:
                raise LabError(f"{path}: links[{i}] endpoint {ep!r} does not name a node:interface")
            if len(ifname) > 15:
                raise LabError(f"{path}: links[{i}] interface name {ifname!r} is longer than 15 characters")
            ends.append((node, ifname))
        links.append(Link(a=ends[0], b=ends[1]))
    return Topology(name=str(doc.get("name") or path.stem), path=path, nodes=nodes, links=tuple(links))


# --------------------------------------------------------------------------- netns and rtnetlink

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def socket_in_netns(
    netns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A socket created inside network namespace ``netns`` (usable from any thread afterwards).

    setns(CLONE_NEWNET) only moves the calling thread, so a short-lived thread does it:
    no fork, no subprocess, and the caller's own namespace never changes.
    """
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["sock"] = socket.socket(family, type, proto)
        except BaseException as exc:
            box["exc"] = exc

    thread = threading.Thread(target=work, name=f"setns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "exc" in box:
        raise box["exc"]
    sock: socket.socket = box["sock"]
    return sock


_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWLINK, _RTM_GETLINK, _RTM_NEWROUTE, _RTM_GETROUTE = 16, 18, 24, 26
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_RTM_F_FIB_MATCH = 0x2000
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_PRIORITY = 1, 4, 5, 6
_RTA_MULTIPATH, _RTA_TABLE, _RTA_VIA, _RTA_NH_ID = 9, 15, 18, 30
_IFLA_IFNAME = 3
_RTPROT = {
    2: "kernel",
    3: "boot",
    4: "static",
    11: "zebra",
    12: "bird",
    186: "bgp",
    187: "isis",
    188: "ospf",
    189: "rip",
    192: "eigrp",
    193: "babel",
    196: "openfabric",
}
_NO_ROUTE_ERRNOS = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENOENT, errno.ESRCH)


def _align4(n: int) -> int:
    return (n + 3) & ~3


def rtattrs(data: bytes, offset: int, end: int | None = None) -> dict[int, bytes]:
    """Netlink attributes (rtattr) from `offset` to `end` of a message: type -> payload."""
    end = len(data) if end is None else end
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += _align4(length)
    return out


def _addr(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


class RouteReader:
    """A tiny rtnetlink client bound to one namespace: route lookups cost ~0.1 ms, not a fork."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self._sock.settimeout(5.0)
        self._sock.bind((0, 0))
        self._seq = 0
        self._links: dict[int, str] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def _request(self, msgtype: int, flags: int, payload: bytes) -> list[bytes]:
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._sock.send(struct.pack("=IHHII", 16 + len(payload), msgtype, flags, seq, 0) + payload)
            bodies: list[bytes] = []
            while True:
                data = self._sock.recv(1 << 20)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, offset)
                    body = data[offset + 16 : offset + length]
                    offset += _align4(length)
                    if mseq != seq:
                        continue  # a reply to an earlier request that timed out
                    if kind == _NLMSG_DONE:
                        return bodies
                    if kind == _NLMSG_ERROR:
                        code = struct.unpack_from("=i", body)[0]
                        if code == 0:
                            return bodies
                        raise OSError(-code, os.strerror(-code))
                    bodies.append(body)
                    if not flags & _NLM_F_DUMP:
                        return bodies

    def links(self, refresh: bool = False) -> dict[int, str]:
        if refresh or not self._links:
            links = {}
            for body in self._request(
                _RTM_GETLINK, _NLM_F_REQUEST | _NLM_F_DUMP, struct.pack("=BxHiII", 0, 0, 0, 0, 0)
            ):
                index = struct.unpack_from("=i", body, 4)[0]
                name = rtattrs(body, 16).get(_IFLA_IFNAME, b"").split(b"\0")[0].decode()
                links[index] = name
            self._links = links
        return self._links

    def _dev(self, index: int) -> str:
        name = self.links().get(index)
        if name is None:
            name = self.links(refresh=True).get(index, str(index))
        return name

    def route(self, prefix: str) -> dict[str, Any] | None:
        """The FIB entry for exactly ``prefix`` (``ip route get fibmatch``), or None."""
        net = ipaddress.ip_network(prefix, strict=False)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        rtm = struct.pack("=BBBBBBBBI", family, net.max_prefixlen, 0, 0, 0, 0, 0, 0, _RTM_F_FIB_MATCH)
        raw = net.network_address.packed
        attr = struct.pack("=HH", 4 + len(raw), _RTA_DST) + raw
        try:
            bodies = self._request(_RTM_GETROUTE, _NLM_F_REQUEST, rtm + attr)
        except OSError as exc:
            if exc.errno in _NO_ROUTE_ERRNOS:
                return None
            raise
        if not bodies:
            return None
        route = self._parse_route(bodies[0])
        if route["dst"] != str(net):
            return None  # only a covering route (e.g. the /24 or a default) matched
        return route

    def _parse_route(self, body: bytes) -> dict[str, Any]:
        family, dst_len, _src, _tos, table, proto, _scope, rtype, _flags = struct.unpack_from(
            "=BBBBBBBBI", body
        )
        attrs = rtattrs(body, 12)
        if _RTA_DST in attrs:
            dst = _addr(family, attrs[_RTA_DST])
        else:
            dst = "0.0.0.0" if family == socket.AF_INET else "::"
        if _RTA_TABLE in attrs:
            table = struct.unpack("=I", attrs[_RTA_TABLE])[0]
        route: dict[str, Any] = {
            "dst": f"{dst}/{dst_len}",
            "protocol": _RTPROT.get(proto, str(proto)),
            "type": rtype,
            "table": table,
            "nexthops": [],
        }
        if _RTA_PRIORITY in attrs:
            route["metric"] = struct.unpack("=I", attrs[_RTA_PRIORITY])[0]
        if _RTA_NH_ID in attrs:
            route["nhid"] = struct.unpack("=I", attrs[_RTA_NH_ID])[0]
        if _RTA_GATEWAY in attrs or _RTA_VIA in attrs or _RTA_OIF in attrs:
            route["nexthops"].append(
                self._nexthop(family, attrs, struct.unpack("=I", attrs.get(_RTA_OIF, b"\0\0\0\0"))[0], 1)
            )
        if _RTA_MULTIPATH in attrs:
            mp = attrs[_RTA_MULTIPATH]
            offset = 0
            while offset + 8 <= len(mp):
                length, _nhflags, hops, ifindex = struct.unpack_from("=HBBi", mp, offset)
                if length < 8:
                    break
                nh_attrs = rtattrs(mp, offset + 8, offset + length)
                route["nexthops"].append(self._nexthop(family, nh_attrs, ifindex, hops + 1))
                offset += _align4(length)
        return route

    def _nexthop(self, family: int, attrs: dict[int, bytes], ifindex: int, weight: int) -> dict[str, Any]:
        hop: dict[str, Any] = {"weight": weight}
        if _RTA_GATEWAY in attrs:
            hop["gateway"] = _addr(family, attrs[_RTA_GATEWAY])
        elif _RTA_VIA in attrs:
            via_family = struct.unpack_from("=H", attrs[_RTA_VIA])[0]
            hop["gateway"] = _addr(via_family, attrs[_RTA_VIA][2:])
        if ifindex:
            hop["dev"] = self._dev(ifindex)
        return hop


# --------------------------------------------------------------------------- process helpers


def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks (guards against PID reuse), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _alive(pid: int, start: int | None = None) -> bool:
    now = _proc_start_time(pid)
    return now is not None and (start is None or now == start)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=env,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(
            f"command {shlex.join(cmd)!r} timed out after {timeout}s\n"
            f"stdout: {_text(exc.stdout)}\nstderr: {_text(exc.stderr)}"
        ) from None
    if check and proc.returncode != 0:
        raise LabCommandError(proc.returncode, list(cmd), proc.stdout, proc.stderr)
    return proc


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * lines))
            data = f.read().decode(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.splitlines()[-lines:])


def _netns_list() -> list[str]:
    proc = _run(["ip", "-j", "netns", "list"], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return [entry["name"] for entry in json.loads(proc.stdout)]


def _netns_pids(netns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


# --------------------------------------------------------------------------- the lab


@dataclass
class _Proc:
    pid: int
    start: int | None
    node: str
    name: str
    log: str | None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class Lab:
    """One lab instance: the topology built in namespaces named ``{prefix}{node}``.

    Several labs with different prefixes run side by side. A ``Lab`` for a prefix that is
    already up (started by another process) attaches to it through the state file.
    """

    def __init__(
        self,
        topology_path: str | os.PathLike[str] = DEFAULT_TOPOLOGY,
        prefix: str = DEFAULT_PREFIX,
        *,
        bfd: bool | None = None,
        state_root: str | os.PathLike[str] = STATE_ROOT,
        router_software: str | None = None,
        router_config: str | None = None,
    ) -> None:
        """``router_software``: ``frr`` (default, or ``$BGPVIP_LAB_ROUTER``), ``bird`` or
        ``gobgp`` on the router node; a Lab attaching to a running lab takes what it runs.
        ``router_config``: that software's configuration text, instead of the topology's file
        (a test's own variant, e.g. BIRD with ``protocol bfd``)."""
        if not PREFIX_RE.match(prefix):
            raise LabError(
                f"lab prefix {prefix!r} must match {PREFIX_RE.pattern} "
                "(lowercase, at most 12 characters, exactly one trailing '-')"
            )
        self.topology = load_topology(topology_path)
        self.prefix = prefix
        self.state_dir = Path(state_root) / prefix.rstrip("-")
        self.state_file = self.state_dir / "state.json"
        self.log_dir = self.state_dir / "logs"
        self.frr_dir = self.state_dir / "frr"
        self._bfd = bfd
        self._procs: list[_Proc] = []
        self._logs: dict[str, str] = {}
        self._readers: dict[str, RouteReader] = {}
        self._lock = threading.RLock()
        routers = self.topology.routers
        self.router = routers[0] if routers else None
        self.router_software = router_software or os.environ.get("BGPVIP_LAB_ROUTER", "frr")
        self.router_config = router_config
        self._load_state()
        if self.router_software not in ROUTER_SOFTWARE:
            raise LabError(
                f"router software {self.router_software!r}: use one of {', '.join(ROUTER_SOFTWARE)}"
            )
        self._routing: dict[str, RouterSoftware] = {}

    # ----- naming

    def ns(self, node: str) -> str:
        """Namespace name of ``node``."""
        if node not in self.topology.nodes:
            raise LabError(f"unknown node {node!r}; nodes: {', '.join(self.topology.nodes)}")
        return f"{self.prefix}{node}"

    @property
    def nodes(self) -> list[str]:
        return list(self.topology.nodes)

    def frr_pathspace(self, node: str | None = None) -> str:
        return self.ns(node or self._router())

    def _router(self) -> str:
        if self.router is None:
            raise LabError("the topology has no router node (label bgpvip.role: router or an frr image)")
        return self.router

    def node_ip(self, node: str, family: int = 4, ifname: str | None = None) -> str:
        """First address of ``family`` the topology gives ``node`` (on ``ifname`` if given)."""
        for dev, address in self.topology.addresses(node):
            if address.version == family and (ifname is None or dev == ifname):
                return str(address.ip)
        raise LabError(f"node {node!r} has no IPv{family} address in the topology")

    def peer_ip(self, node: str, family: int = 4) -> str:
        """Address of the other end of ``node``'s first link (the router, for n1..n3)."""
        for dev, address in self.topology.addresses(node):
            if address.version != family:
                continue
            peer = self.topology.peer_of(node, dev)
            if peer is None:
                continue
            for pdev, paddress in self.topology.addresses(peer[0]):
                if pdev == peer[1] and paddress.version == family:
                    return str(paddress.ip)
        raise LabError(f"cannot find the IPv{family} peer address of node {node!r}")

    def peer_node(self, node: str) -> str:
        for dev, _ in self.topology.addresses(node):
            peer = self.topology.peer_of(node, dev)
            if peer:
                return peer[0]
        raise LabError(f"node {node!r} has no link")

    # ----- state file

    @contextlib.contextmanager
    def _state_locked(self) -> Iterator[dict[str, Any]]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
            except (OSError, ValueError):
                state = {}
            yield state
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(self.state_file)

    def _load_state(self) -> None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        self._logs.update(state.get("logs", {}))
        self.router_software = state.get("router_software", self.router_software)
        for rec in state.get("pids", []):
            self._procs.append(
                _Proc(rec["pid"], rec.get("start"), rec.get("node", ""), rec.get("name", ""), rec.get("log"))
            )

    def _record_proc(self, proc: _Proc) -> None:
        with self._lock:
            self._procs.append(proc)
            if proc.log:
                self._logs[f"{proc.node}/{proc.name}"] = proc.log
        with self._state_locked() as state:
            state.setdefault("pids", []).append(
                {"pid": proc.pid, "start": proc.start, "node": proc.node, "name": proc.name, "log": proc.log}
            )
            if proc.log:
                state.setdefault("logs", {})[f"{proc.node}/{proc.name}"] = proc.log

    def register_log(self, label: str, path: str | os.PathLike[str]) -> None:
        """Include the tail of ``path`` in :meth:`logs` (e.g. a speaker's own log file)."""
        with self._lock:
            self._logs[label] = str(path)
        with self._state_locked() as state:
            state.setdefault("logs", {})[label] = str(path)

    def is_up(self) -> bool:
        existing = set(_netns_list())
        return all(self.ns(n) in existing for n in self.nodes)

    # ----- up / down

    def up(self, timeout: float = 30.0) -> Lab:
        """Build the lab; on failure tear down what was built and raise (logs in the exception notes)."""
        if self._leftovers():
            owner = self._owner()
            if owner is not None and owner != os.getpid() and _alive(owner):
                raise LabError(
                    f"lab {self.prefix!r} is in use by running process {owner}; "
                    "pick another prefix or run `down` for it"
                )
            print(f"nslab: removing leftovers of lab {self.prefix!r} first", file=sys.stderr)
            self.down()
        t0 = time.monotonic()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(exist_ok=True)
            self.frr_dir.mkdir(exist_ok=True)
            shutil.chown(self.frr_dir, FRR_USER, FRR_USER)
            with self._state_locked() as state:
                state.update(
                    prefix=self.prefix,
                    topology=str(self.topology.path),
                    owner_pid=os.getpid(),
                    namespaces=[self.ns(n) for n in self.nodes],
                    started=time.time(),
                    router_software=self.router_software,
                )
            for node in self.nodes:
                _run(["ip", "netns", "add", self.ns(node)])
                _run(["ip", "-n", self.ns(node), "link", "set", "lo", "up"])
            for link in self.topology.links:
                (na, ia), (nb, ib) = link.a, link.b
                _run(
                    [
                        "ip",
                        "link",
                        "add",
                        ia,
                        "netns",
                        self.ns(na),
                        "type",
                        "veth",
                        "peer",
                        "name",
                        ib,
                        "netns",
                        self.ns(nb),
                    ]
                )
                _run(["ip", "-n", self.ns(na), "link", "set", ia, "up"])
                _run(["ip", "-n", self.ns(nb), "link", "set", ib, "up"])
            for node in self.nodes:
                for line in self.topology.nodes[node].exec:
                    self._exec_line(node, line)
            for router in self.topology.routers:
                self.routing(router).start(deadline=t0 + timeout)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                exc.add_note(f"--- lab {self.prefix} logs at failure ---\n{self.logs()}")
            self.down()
            raise
        return self

    def _exec_line(self, node: str, line: str) -> None:
        tokens = shlex.split(line)
        if tokens and tokens[0] == "ip":
            cmd = ["ip", "-n", self.ns(node), *tokens[1:]]  # no mount namespace dance needed
        else:
            cmd = ["ip", "netns", "exec", self.ns(node), *tokens]
        try:
            _run(cmd)
        except LabCommandError as exc:
            raise LabError(f"exec line of node {node!r} failed: {line!r}\n{exc}") from None

    def routing(self, router: str | None = None) -> RouterSoftware:
        """The BGP software on ``router`` (default: the router): start, stop, its own view."""
        router = router or self._router()
        with self._lock:
            found = self._routing.get(router)
            if found is None:
                kind = {"frr": FrrRouter, "bird": BirdRouter, "gobgp": GobgpRouter}[self.router_software]
                found = self._routing[router] = kind(self, router)
            return found

    def _frr_daemons(self, router: str) -> dict[str, list[str]]:
        """Daemons to run on ``router`` with extra options from its bound daemons file."""
        node = self.topology.nodes[router]
        enabled: dict[str, bool] = {}
        options: dict[str, list[str]] = {}
        daemons_file = node.bind("/etc/frr/daemons")
        if daemons_file and daemons_file.exists():
            for raw in daemons_file.read_text().splitlines():
                m = re.match(r"^\s*(\w+?)(_options)?\s*=\s*(.*?)\s*$", raw)
                if not m or raw.lstrip().startswith("#"):
                    continue
                name, is_opt, value = m.group(1), m.group(2), m.group(3).strip("\"'")
                if is_opt:
                    options[name] = shlex.split(value)
                else:
                    enabled[name] = value == "yes"
        wanted = list(FRR_DAEMONS_ALWAYS)
        bfd = self._bfd if self._bfd is not None else enabled.get("bfdd", False)
        if bfd:
            wanted.append("bfdd")
        return {d: _strip_vty_addr(options.get(d, [])) for d in wanted}

    def _start_frr(self, router: str, deadline: float, only: Sequence[str] | None = None) -> None:
        """Start the router's daemons empty (``only`` these, on a restart), then apply frr.conf
        through vtysh (integrated config).

        Through vtysh each line reaches the daemon that owns it, and a bad line fails
        ``up()`` with FRR's message instead of being logged and skipped by every daemon.
        """
        node = self.topology.nodes[router]
        source = node.bind("/etc/frr/frr.conf")
        if source is None or not source.exists():
            raise LabError(f"router {router!r} has no bind for /etc/frr/frr.conf (or the file is missing)")
        conf = self.frr_dir / f"{router}-frr.conf"
        if self.router_config is not None:
            conf.write_text(self.router_config)
        else:
            shutil.copyfile(source, conf)
        conf.chmod(0o644)  # the daemons run as user frr
        empty = self.frr_dir / "empty.conf"
        empty.touch()
        empty.chmod(0o644)
        pathspace = self.frr_pathspace(router)
        vtysh_dir = self.frr_dir / pathspace  # --config_dir DIR -N NS reads DIR/NS/vtysh.conf
        vtysh_dir.mkdir(exist_ok=True)
        (vtysh_dir / "vtysh.conf").touch()
        rundir = FRR_RUN / pathspace
        rundir.mkdir(parents=True, exist_ok=True)
        shutil.chown(rundir, FRR_USER, FRR_USER)
        daemons = {d: o for d, o in self._frr_daemons(router).items() if only is None or d in only}
        for daemon in daemons:
            (rundir / f"{daemon}.vty").unlink(missing_ok=True)  # a killed daemon's leaves it behind
        for daemon, extra in daemons.items():
            pidfile = self.frr_dir / f"{router}-{daemon}.pid"
            log = self.frr_dir / f"{router}-{daemon}.log"
            cmd = [
                str(FRR_BIN / daemon),
                "-N",
                pathspace,
                "-f",
                str(empty),
                "-i",
                str(pidfile),
                "-P",
                "0",
                "--log",
                f"file:{log}",
                *extra,
            ]
            self.popen(router, cmd, log_path=self.frr_dir / f"{router}-{daemon}.out", name=daemon)
            self.register_log(f"{router}/{daemon}.log", log)
            if daemon == "zebra":
                # bgpd would retry, but starting it against a ready zebra is quicker and quieter
                self._wait_for(
                    (rundir / "zserv.api").exists,
                    deadline,
                    f"{router}: zebra's zserv.api",
                    router=router,
                )
        for daemon in daemons:
            self._wait_for(
                (rundir / f"{daemon}.vty").exists,
                deadline,
                f"{router}: {daemon}.vty",
                router=router,
            )
        # Pushed as interactive commands, not `vtysh -f`/`-b`: FRR 8.4 holds every peer
        # configured during a config *load* in Idle for ~4 s ("released from config-pending
        # hold"), and ExaBGP's reconnect backoff turns that into ~6 s before a first session.
        argv = [*self._vtysh_argv(router), "-c", "configure terminal"]
        for line in conf.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("!") and line.strip() != "end":
                argv += ["-c", line.rstrip()]
        proc = _run(argv, check=False)
        if proc.returncode != 0:
            raise LabError(
                f"{router}: FRR rejected {conf} (vtysh exited {proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr).strip()}"
            )
        # FRR refuses incoming sessions while a peer is Idle (its start timer, ~1 s); a speaker
        # connecting then would back off for seconds. Wait until the peers accept (soft limit).
        soft = min(deadline, time.monotonic() + 5.0)
        while time.monotonic() < soft:
            states = self.bgp_peer_states(router)
            if states and "Idle" not in states.values():
                break
            time.sleep(0.02)

    def _vtysh_argv(self, node: str | None = None) -> list[str]:
        return ["vtysh", "-N", self.frr_pathspace(node), "--config_dir", str(self.frr_dir)]

    def _wait_for(
        self, cond: Callable[[], bool], deadline: float, what: str, router: str | None = None
    ) -> None:
        while True:
            if cond():
                return
            if router:
                dead = [p for p in self._procs if p.node == router and p.popen and p.popen.poll() is not None]
                if dead:
                    raise LabError(
                        f"{what}: {dead[0].name} exited with {dead[0].popen.returncode}"  # type: ignore[union-attr]
                        f"\n{_tail(Path(dead[0].log or '/dev/null'), 30)}"
                    )
            if time.monotonic() > deadline:
                raise LabError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def _owner(self) -> int | None:
        try:
            return int(json.loads(self.state_file.read_text())["owner_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _leftovers(self) -> bool:
        names = set(_netns_list())
        return self.state_file.exists() or any(n.startswith(self.prefix) for n in names)

    def down(self, grace: float = 2.0) -> None:
        """Remove everything this lab (or a crashed runner for this prefix) created. Idempotent."""
        with self._lock:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()
            namespaces = sorted(n for n in _netns_list() if n.startswith(self.prefix))
            # 1. processes: the recorded ones (if still the same process) and all inside our namespaces
            targets: dict[int, int | None] = {}
            for proc in self._procs:
                if _alive(proc.pid, proc.start):
                    targets[proc.pid] = proc.start
            for ns in namespaces:
                for pid in _netns_pids(ns):
                    targets.setdefault(pid, _proc_start_time(pid))
            targets.pop(os.getpid(), None)
            for pid in targets:
                _kill(pid, signal.SIGTERM)
            self._reap(targets, time.monotonic() + grace)
            for pid, start in targets.items():
                if _alive(pid, start):
                    _kill(pid, signal.SIGKILL)
            self._reap(targets, time.monotonic() + 5.0)
            for proc in self._procs:
                if proc.popen is not None and proc.popen.returncode is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.popen.wait(timeout=1.0)
            # 2. namespaces (their veths go with them), then stray veths in the root namespace
            for ns in namespaces:
                _run(["ip", "netns", "del", ns], check=False)
            listing = _run(["ip", "-j", "link", "show"], check=False)
            if listing.returncode == 0 and listing.stdout.strip():
                for link in json.loads(listing.stdout):
                    if str(link.get("ifname", "")).startswith(self.prefix):
                        _run(["ip", "link", "del", link["ifname"]], check=False)
            # 3. FRR pathspace directories and our state
            if FRR_RUN.is_dir():
                for entry in FRR_RUN.iterdir():
                    if entry.name.startswith(self.prefix) and entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self._procs.clear()
            self._logs.clear()
            leftover = [n for n in _netns_list() if n.startswith(self.prefix)]
            if leftover:
                raise LabError(f"could not delete namespaces {leftover}")

    def _reap(self, targets: dict[int, int | None], deadline: float) -> None:
        popens: dict[int, subprocess.Popen[bytes]] = {
            p.pid: p.popen for p in self._procs if p.popen is not None
        }
        while True:
            for pid in targets:
                if pid in popens:
                    popens[pid].poll()
            if not any(_alive(pid, start) for pid, start in targets.items()):
                return
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ----- running things in nodes

    def _cmd(self, node: str, cmd: str | Sequence[str | os.PathLike[str]]) -> list[str]:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else [str(c) for c in cmd]
        return ["ip", "netns", "exec", self.ns(node), *argv]

    def exec(
        self,
        node: str,
        cmd: str | Sequence[str | os.PathLike[str]],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in ``node`` and capture its output (a string runs through ``sh -c``)."""
        return _run(self._cmd(node, cmd), check=check, timeout=timeout, input=input, env=env)

    def popen(
        self,
        node: str,
        cmd: str | Sequence[str | os.PathLike[str]],
        log_path: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in the background in ``node``; output goes to ``log_path``.

        The process is recorded (killed by :meth:`down`) and its log shows in :meth:`logs`.
        """
        argv = self._cmd(node, cmd)
        if name is None:
            name = Path(argv[4] if argv[4] != "sh" else "sh").name
        log = Path(log_path) if log_path else self.log_dir / f"{node}-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._record_proc(_Proc(popen.pid, _proc_start_time(popen.pid), node, name, str(log), popen))
        return popen

    def socket(
        self, node: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """A socket living in ``node``'s namespace (connect from the test process, no subprocess)."""
        return socket_in_netns(self.ns(node), family, type)

    def tcp_request(
        self, node: str, host: str, port: int, payload: bytes = b"", timeout: float = 3.0
    ) -> bytes:
        """Connect from ``node`` to host:port, send ``payload``, return everything read until EOF."""
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        with self.socket(node, family) as s:
            s.settimeout(timeout)
            s.connect((host, port))
            if payload:
                s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def http_get(self, node: str, host: str, port: int = 8080, path: str = "/", timeout: float = 3.0) -> str:
        """Body of ``GET http://host:port/path`` fetched from ``node``; raises on a non-200 answer."""
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raw = self.tcp_request(
            node, host, port, f"GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode(), timeout=timeout
        )
        head, _, body = raw.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 200 " not in status + " ":
            raise LabError(f"GET http://{hostport}{path} from {node}: {status or 'no answer'}")
        return body.decode(errors="replace")

    def wait_tcp(self, node: str, host: str, port: int, timeout: float = 10.0) -> float:
        """Wait until a TCP connection from ``node`` to host:port succeeds; returns seconds waited."""
        __tracebackhide__ = True  # pytest: show the caller's line and this message, not this loop
        t0 = time.monotonic()
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        last: Exception | None = None
        while time.monotonic() - t0 < timeout:
            with self.socket(node, family) as s:
                s.settimeout(max(0.05, min(1.0, timeout - (time.monotonic() - t0))))
                try:
                    s.connect((host, port))
                    return time.monotonic() - t0
                except OSError as exc:
                    last = exc
            time.sleep(0.01)
        raise TimeoutError(f"no TCP connection from {node} to {host}:{port} within {timeout}s: {last}")

    # ----- router queries

    def vtysh(self, cmd: str | Sequence[str], node: str | None = None, check: bool = True) -> str:
        """Output of vtysh command(s) on the router (FRR pathspace ``{prefix}{router}``)."""
        cmds = [cmd] if isinstance(cmd, str) else list(cmd)
        argv = self._vtysh_argv(node)
        for c in cmds:
            argv += ["-c", c]
        return _run(argv, check=check).stdout

    def vtysh_json(self, cmd: str, node: str | None = None) -> Any:
        out = self.vtysh(cmd, node)
        try:
            return json.loads(out) if out.strip() else {}
        except ValueError as exc:
            raise LabError(f"vtysh {cmd!r} did not return JSON: {out[:500]!r}") from exc

    def bgp_json(self, afi: str = "ipv4", node: str | None = None) -> Any:
        """``show bgp <afi> unicast json`` on the router."""
        return self.vtysh_json(f"show bgp {afi} unicast json", node)

    def bgp_summary(self, node: str | None = None) -> Any:
        return self.vtysh_json("show bgp summary json", node)

    def bgp_prefix(self, prefix: str, node: str | None = None) -> Any:
        """``show bgp <afi> unicast PREFIX json``: ``{}`` when the router has no path for it."""
        afi = "ipv6" if ipaddress.ip_network(prefix, strict=False).version == 6 else "ipv4"
        return self.vtysh_json(f"show bgp {afi} unicast {prefix} json", node)

    def bgp_peer_states(self, node: str | None = None) -> dict[str, str]:
        """Neighbor address -> BGP state (``Established`` when up), whatever the router runs."""
        return self.routing(node).peer_states()

    def wait_established(self, peers: Iterable[str], timeout: float = 30.0, node: str | None = None) -> float:
        """Wait until every peer in ``peers`` is Established at the router; returns seconds waited."""
        __tracebackhide__ = True  # pytest: show the caller's line and this message, not this loop
        wanted = set(peers)
        t0 = time.monotonic()
        while True:
            states = self.bgp_peer_states(node)
            if all(states.get(p) == "Established" for p in wanted):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(
                    f"BGP peers not Established after {timeout}s: "
                    f"{ {p: states.get(p, 'unknown') for p in sorted(wanted)} }"
                )
            time.sleep(0.05)

    def kernel_routes(self, family: int = 4, node: str | None = None) -> list[dict[str, Any]]:
        """``ip -j -<family> route show`` in the router (or ``node``)."""
        out = _run(["ip", "-n", self.ns(node or self._router()), "-j", f"-{family}", "route", "show"]).stdout
        return json.loads(out) if out.strip() else []

    def _reader(self, node: str) -> RouteReader:
        with self._lock:
            reader = self._readers.get(node)
            if reader is None:
                reader = self._readers[node] = RouteReader(self.ns(node))
            return reader

    def route(self, prefix: str, node: str | None = None) -> dict[str, Any] | None:
        """The router's kernel route for exactly ``prefix``, or None.

        ``{"dst": "198.51.100.10/32", "protocol": "bgp", "metric": 20, "table": 254, "type": 1,
        "nexthops": [{"gateway": "10.0.1.2", "dev": "eth1", "weight": 1}, ...]}`` (one entry
        per ECMP path; ``nhid`` too when zebra uses nexthop groups).
        """
        return self._reader(node or self._router()).route(prefix)

    def wait_prefix(
        self,
        prefix: str,
        present: bool = True,
        timeout: float = 10.0,
        nexthops: Iterable[str] | None = None,
        *,
        node: str | None = None,
        interval: float = 0.01,
    ) -> float:
        """Poll the router's kernel table until ``prefix`` is (or is not) there; returns seconds waited.

        With ``nexthops``, "present" means exactly that set of gateways. Raises TimeoutError
        with the kernel route and the router's BGP view of the prefix at the deadline.
        """
        __tracebackhide__ = True  # pytest: show the caller's line and this message, not this loop
        want = set(nexthops) if nexthops is not None else None
        t0 = time.monotonic()
        deadline = t0 + timeout
        route = None
        while True:
            route = self.route(prefix, node)
            gateways = {h.get("gateway") for h in route["nexthops"]} if route else set()
            done = (route is not None and (want is None or gateways == want)) if present else route is None
            now = time.monotonic()
            if done:
                return now - t0
            if now > deadline:
                break
            time.sleep(interval)
        router = node or self._router()
        expected = "present" if present else "absent"
        if present and want is not None:
            expected += f" with nexthops {sorted(want)}"
        details = [
            f"--- {what} ---\n{text.rstrip()}" for what, text in self.routing(router).diagnostics(prefix)
        ]
        raise TimeoutError(
            f"{prefix} not {expected} in {router}'s kernel table after {timeout}s; "
            f"kernel route now: {json.dumps(route)}\n" + "\n".join(details)
        )

    # ----- diagnostics

    def status(self) -> dict[str, Any]:
        existing = set(_netns_list())
        info: dict[str, Any] = {
            "prefix": self.prefix,
            "state_dir": str(self.state_dir),
            "namespaces": {self.ns(n): self.ns(n) in existing for n in self.nodes},
            "processes": [
                {"node": p.node, "name": p.name, "pid": p.pid, "alive": _alive(p.pid, p.start)}
                for p in self._procs
            ],
        }
        if self.router and self.ns(self.router) in existing:
            try:
                info["bgp_peers"] = self.bgp_peer_states()
            except Exception as exc:
                info["bgp_peers"] = f"unavailable: {exc}"
        return info

    def logs(self, lines: int = 80) -> str:
        """Router daemon logs, BGP state, kernel routes and the tails of every registered log."""
        out: list[str] = [f"===== lab {self.prefix} ({self.state_dir}) ====="]
        for p in self._procs:
            if p.popen is not None:
                p.popen.poll()
            state = (
                "alive"
                if _alive(p.pid, p.start)
                else (f"exited {p.popen.returncode}" if p.popen is not None else "gone")
            )
            out.append(f"process {p.node}/{p.name} pid {p.pid}: {state}")
        for router in self.topology.routers:
            for cmd, text in self.routing(router).diagnostics():
                out.append(f"----- {router} ({self.router_software}): {cmd} -----\n{text.rstrip()}")
            for family in (4, 6):
                try:
                    text = _run(
                        ["ip", "-n", self.ns(router), f"-{family}", "route", "show"], check=False
                    ).stdout
                except Exception as exc:
                    text = f"<unavailable: {exc}>"
                out.append(f"----- {router}: ip -{family} route -----\n{text.rstrip()}")
        for label, path in sorted(self._logs.items()):
            out.append(f"----- {label}: {path} (last {lines} lines) -----\n{_tail(Path(path), lines)}")
        return "\n".join(out)

    @classmethod
    def reap_stale(
        cls, name_prefix: str = "bvt", state_root: str | os.PathLike[str] = STATE_ROOT
    ) -> list[str]:
        """Tear down labs whose prefix starts with ``name_prefix`` and whose owner process is gone."""
        removed: list[str] = []
        root = Path(state_root)
        if not root.is_dir():
            return removed
        for entry in root.iterdir():
            state_file = entry / "state.json"
            if not entry.name.startswith(name_prefix) or not state_file.exists():
                continue
            try:
                state = json.loads(state_file.read_text())
                owner, prefix, topo = state["owner_pid"], state["prefix"], state["topology"]
            except (OSError, ValueError, KeyError):
                continue
            if _alive(owner):
                continue
            with contextlib.suppress(Exception):
                cls(topo if Path(topo).exists() else DEFAULT_TOPOLOGY, prefix, state_root=root).down()
                removed.append(prefix)
        return removed


# --------------------------------------------------------------------------- router software


class RouterSoftware:
    """The BGP software on the lab's router node: started and stopped by the lab, and asked
    for its own view of the sessions and routes, in its own CLI or JSON.

    ``paths(prefix)`` answers the same shape for every router: one dict per path the router
    holds for the prefix, ``{"nexthop": "10.0.1.2", "peer": "10.0.1.2", "med": 55 or None,
    "best": bool}``."""

    name = ""
    programs_kernel = True
    """Whether the router installs its routes in its namespace's kernel table."""
    bgp_daemons: tuple[str, ...] = ()

    def __init__(self, lab: Lab, node: str) -> None:
        self.lab = lab
        self.node = node
        self.dir = lab.state_dir / self.name
        self.started_at = 0.0
        """Monotonic time the BGP daemon was last started (for reconnection figures)."""

    def config_text(self) -> str:
        """The configuration: the Lab's ``router_config``, else the file the router node's
        ``bgpvip.<name>-conf`` label names (relative to the topology file)."""
        if self.lab.router_config is not None:
            return self.lab.router_config
        label = f"bgpvip.{self.name}-conf"
        rel = self.lab.topology.nodes[self.node].labels.get(label)
        if not rel:
            raise LabError(
                f"router {self.node!r} has no label {label!r} naming its {self.name} configuration"
            )
        return (self.lab.topology.path.parent / rel).read_text()

    def start(self, deadline: float | None = None) -> None:
        raise NotImplementedError

    def stop(self, grace: float = 5.0) -> None:
        """Stop the BGP daemon(s) (SIGTERM, as an operator's restart would; SIGKILL after
        ``grace``). The namespace stays: connections to it are refused meanwhile."""
        procs = [
            p
            for p in self.lab._procs
            if p.node == self.node and p.name in self.bgp_daemons and _alive(p.pid, p.start)
        ]
        for proc in procs:
            _kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            while _alive(proc.pid, proc.start) and time.monotonic() < deadline:
                if proc.popen is not None:
                    proc.popen.poll()
                time.sleep(0.01)
            if _alive(proc.pid, proc.start):
                _kill(proc.pid, signal.SIGKILL)
            if proc.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
        with self.lab._lock:  # gone on purpose: not a daemon that died while starting
            self.lab._procs = [p for p in self.lab._procs if p not in procs]

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def peer_states(self) -> dict[str, str]:
        raise NotImplementedError

    def paths(self, prefix: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def diagnostics(self, prefix: str | None = None) -> list[tuple[str, str]]:
        """(command, output) pairs for a failure report."""
        return []

    def _deadline(self, deadline: float | None) -> float:
        return deadline if deadline is not None else time.monotonic() + 30.0

    def _wait_ready(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        self.lab._wait_for(ready, deadline, f"{self.node}: {what}", router=self.node)

    @staticmethod
    def _capture(func: Callable[[], str]) -> str:
        try:
            return func()
        except Exception as exc:
            return f"<unavailable: {exc}>"


class FrrRouter(RouterSoftware):
    """FRR 8.4: zebra and bgpd (and bfdd), configured through vtysh; installs in the kernel.
    A restart restarts bgpd only: zebra keeps running, as it would under watchfrr."""

    name = "frr"
    bgp_daemons = ("bgpd",)

    def start(self, deadline: float | None = None) -> None:
        zebra = any(
            p.node == self.node and p.name == "zebra" and _alive(p.pid, p.start) for p in self.lab._procs
        )
        self.started_at = time.monotonic()
        self.lab._start_frr(self.node, self._deadline(deadline), only=None if not zebra else ("bgpd",))

    def peer_states(self) -> dict[str, str]:
        states: dict[str, str] = {}
        for family in self.lab.bgp_summary(self.node).values():
            if isinstance(family, dict):
                for peer, info in family.get("peers", {}).items():
                    states[peer] = info.get("state", "?")
        return states

    def paths(self, prefix: str) -> list[dict[str, Any]]:
        out = []
        for path in self.lab.bgp_prefix(prefix, self.node).get("paths", []):
            hops = path.get("nexthops") or [{}]
            out.append(
                {
                    "nexthop": hops[0].get("ip"),
                    "peer": path.get("peer", {}).get("peerId"),
                    "med": path.get("metric"),
                    "best": bool(path.get("bestpath", {}).get("overall")),
                }
            )
        return out

    def neighbor(self, address: str) -> dict[str, Any]:
        data: dict[str, Any] = self.lab.vtysh_json(f"show bgp neighbors {address} json", self.node)
        found: dict[str, Any] = data.get(address, {})
        return found

    def diagnostics(self, prefix: str | None = None) -> list[tuple[str, str]]:
        cmds = ["show bgp summary"]
        if prefix:
            cmds.append(f"show bgp {'ipv6' if ':' in prefix else 'ipv4'} unicast {prefix}")
        else:
            cmds += ["show bgp ipv4 unicast", "show bgp ipv6 unicast"]
        return [
            (c, self._capture(functools.partial(self.lab.vtysh, c, self.node, check=False))) for c in cmds
        ]


class BirdRouter(RouterSoftware):
    """BIRD 2 (``bird -f``), controlled with ``birdc`` over its own socket; its ``protocol
    kernel`` installs the routes in the router's kernel."""

    name = "bird"
    bgp_daemons = ("bird",)

    @property
    def socket_path(self) -> Path:
        return self.dir / f"{self.node}.ctl"

    @property
    def conf(self) -> Path:
        return self.dir / f"{self.node}.conf"

    def start(self, deadline: float | None = None) -> None:
        deadline = self._deadline(deadline)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.conf.exists():
            self.conf.write_text(self.config_text())
        check = _run([str(BIRD_BIN / "bird"), "-p", "-c", str(self.conf)], check=False)
        if check.returncode != 0:
            raise LabError(f"{self.node}: BIRD rejects {self.conf}:\n{check.stdout}{check.stderr}")
        self.socket_path.unlink(missing_ok=True)
        log = self.dir / f"{self.node}.log"
        cmd = [str(BIRD_BIN / "bird"), "-f", "-c", str(self.conf), "-s", str(self.socket_path)]
        cmd += ["-P", str(self.dir / f"{self.node}.pid")]
        self.started_at = time.monotonic()
        self.lab.popen(self.node, cmd, log_path=log, name="bird")
        self.lab.register_log(f"{self.node}/bird.log", log)
        self._wait_ready(lambda: self.birdc("show status", check=False).startswith("BIRD"), deadline, "birdc")

    def birdc(self, command: str, check: bool = True) -> str:
        """``birdc`` output (without the banner line); raises LabError for BIRD's errors."""
        proc = _run(
            [str(BIRD_BIN / "birdc"), "-s", str(self.socket_path), *shlex.split(command)], check=False
        )
        text = proc.stdout
        if check and (proc.returncode != 0 or "\nsyntax error" in text or text.startswith("Unable")):
            raise LabError(f"birdc {command!r} failed: {text}{proc.stderr}")
        return (
            text
            if text.startswith("Unable")
            else text.split("\n", 1)[-1]
            if text.startswith("BIRD")
            else text
        )

    def configure(self, text: str) -> str:
        """Reload with a new configuration (``birdc configure``); BGP sessions are kept where
        BIRD can (a changed import filter: route refresh, or its import table)."""
        self.conf.write_text(text)
        out = self.birdc("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise LabError(f"BIRD did not reconfigure: {out}")
        return out

    def protocols(self) -> dict[str, dict[str, str]]:
        """BGP protocols of ``show protocols all``: name -> its ``Key: value`` lines, plus state."""
        out: dict[str, dict[str, str]] = {}
        current: dict[str, str] | None = None
        for line in self.birdc("show protocols all").splitlines():
            if line and not line[0].isspace():
                words = line.split()
                current = None
                if len(words) >= 5 and words[1] == "BGP":
                    current = out[words[0]] = {
                        "state": words[3],
                        "since": words[4],
                        "info": " ".join(words[5:]),
                    }
            elif current is not None and ":" in line:
                key, _, value = line.strip().partition(":")
                current.setdefault(key, value.strip())
        return out

    def peer_states(self) -> dict[str, str]:
        states = {}
        for info in self.protocols().values():
            if "Neighbor address" in info:
                states[info["Neighbor address"]] = info.get("BGP state", info["state"])
        return states

    def neighbor(self, address: str) -> dict[str, str]:
        for name, info in self.protocols().items():
            if info.get("Neighbor address") == address:
                return {"name": name, **info}
        return {}

    def paths(self, prefix: str) -> list[dict[str, Any]]:
        by_name = {name: info.get("Neighbor address") for name, info in self.protocols().items()}
        out: list[dict[str, Any]] = []
        text = self.birdc(f"show route {prefix} all", check=False)
        if "Network not found" in text:
            return []
        for line in text.splitlines():
            m = re.search(r"unicast \[(\S+) [^\]]*\] (\*)?", line)
            if m:
                out.append(
                    {"nexthop": None, "peer": by_name.get(m.group(1)), "med": None, "best": bool(m.group(2))}
                )
            elif out and line.strip().startswith("BGP.next_hop:"):
                out[-1]["nexthop"] = line.split(":", 1)[1].split()[0]
            elif out and line.strip().startswith("BGP.med:"):
                out[-1]["med"] = int(line.split(":", 1)[1])
        return out

    def diagnostics(self, prefix: str | None = None) -> list[tuple[str, str]]:
        cmds = ["show protocols", f"show route {prefix} all" if prefix else "show route all"]
        return [(f"birdc {c}", self._capture(functools.partial(self.birdc, c, check=False))) for c in cmds]


class GobgpRouter(RouterSoftware):
    """GoBGP 3 (``gobgpd``), asked with ``gobgp -j`` inside the router's namespace. It does not
    program the kernel here (docs/gobgp.md): assert on its RIB."""

    name = "gobgp"
    programs_kernel = False
    bgp_daemons = ("gobgpd",)
    api = "127.0.0.1:50051"  # inside the router's namespace

    @property
    def conf(self) -> Path:
        return self.dir / f"{self.node}.toml"

    def start(self, deadline: float | None = None) -> None:
        deadline = self._deadline(deadline)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.conf.exists():
            self.conf.write_text(self.config_text())
        check = _run([str(GOBGP_BIN / "gobgpd"), "-d", "-f", str(self.conf)], check=False)
        if check.returncode != 0:
            raise LabError(f"{self.node}: gobgpd rejects {self.conf}:\n{check.stdout}{check.stderr}")
        log = self.dir / f"{self.node}.log"
        cmd = [str(GOBGP_BIN / "gobgpd"), "-f", str(self.conf), "-t", "toml", "--api-hosts", self.api]
        cmd += ["--pprof-disable", "-p", "-l", "info"]
        self.started_at = time.monotonic()
        self.lab.popen(self.node, cmd, log_path=log, name="gobgpd")
        self.lab.register_log(f"{self.node}/gobgpd.log", log)
        self._wait_ready(lambda: self.gobgp("neighbor", check=False).returncode == 0, deadline, "gobgp API")

    def gobgp(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.exec(self.node, [str(GOBGP_BIN / "gobgp"), *args], check=check)

    def gobgp_json(self, *args: str) -> Any:
        out = self.gobgp(*args, "-j").stdout
        return json.loads(out) if out.strip() else None

    def configure(self, text: str) -> None:
        """Apply a new configuration: gobgpd re-reads its file on SIGHUP (neighbors, policies)."""
        self.conf.write_text(text)
        for proc in self.lab._procs:
            if proc.node == self.node and proc.name == "gobgpd" and _alive(proc.pid, proc.start):
                os.kill(proc.pid, signal.SIGHUP)

    _STATES = {
        0: "Unknown",
        1: "Idle",
        2: "Connect",
        3: "Active",
        4: "OpenSent",
        5: "OpenConfirm",
        6: "Established",
    }

    def peer_states(self) -> dict[str, str]:
        states = {}
        for peer in self.gobgp_json("neighbor") or []:
            state = peer.get("state", {})
            states[state.get("neighbor_address") or peer["conf"]["neighbor_address"]] = self._STATES.get(
                state.get("session_state", 0), "?"
            )
        return states

    def neighbor(self, address: str) -> dict[str, Any]:
        data: dict[str, Any] = self.gobgp_json("neighbor", address) or {}
        return data

    def paths(self, prefix: str) -> list[dict[str, Any]]:
        afi = "ipv6" if ":" in prefix else "ipv4"
        data = self.gobgp_json("global", "rib", "-a", afi, prefix) or {}
        out = []
        for path in data.get(prefix, []):
            attrs = {a.get("type"): a for a in path.get("attrs", [])}
            nexthop = attrs.get(3, {}).get("nexthop") or attrs.get(14, {}).get("nexthop")
            out.append(
                {
                    "nexthop": nexthop,
                    "peer": path.get("neighbor-ip"),
                    "med": attrs.get(4, {}).get("metric"),
                    "best": bool(path.get("best")),
                }
            )
        return out

    def diagnostics(self, prefix: str | None = None) -> list[tuple[str, str]]:
        args = [("neighbor",), ("global", "rib", "-a", "ipv4"), ("global", "rib", "-a", "ipv6")]
        return [
            (f"gobgp {' '.join(a)}", self._capture(functools.partial(self._gobgp_text, *a))) for a in args
        ]

    def _gobgp_text(self, *args: str) -> str:
        return self.gobgp(*args, check=False).stdout


def _strip_vty_addr(options: list[str]) -> list[str]:
    """Drop ``-A ADDR`` / ``--vty_addr``: the lab disables the vty TCP port (``-P 0``) anyway."""
    out, skip = [], False
    for opt in options:
        if skip:
            skip = False
            continue
        if opt in ("-A", "--vty_addr"):
            skip = True
            continue
        if opt.startswith("--vty_addr="):
            continue
        out.append(opt)
    return out


# --------------------------------------------------------------------------- ExaBGP in a node

EXABGP_ENV = {
    # Verified against exabgp/environment/setup.py (5.0.15); each is exabgp.<section>.<option>
    # with dots as underscores.
    "exabgp_daemon_daemonize": "false",
    "exabgp_daemon_user": "root",  # else it drops to 'nobody' before forking the API helpers
    "exabgp_api_cli": "false",  # no named pipes: labs and nodes would share /run/exabgp.{in,out}
    "exabgp_tcp_bind": "",  # do not listen; ExaBGP connects out to the router
    "exabgp_reactor_speed": "0.1",  # shorter reactor sleep (BRIEF: 4.7 s -> 3.2 s for 10k routes)
    "exabgp_log_destination": "stdout",  # stdout is the per-node log file
    "exabgp_log_level": "INFO",
}


def exabgp_command() -> list[str]:
    """How to start ExaBGP: this interpreter's ``-m exabgp`` (no pyenv shim in the PID chain)."""
    import importlib.util

    if importlib.util.find_spec("exabgp") is not None:
        return [sys.executable, "-m", "exabgp"]
    exe = shutil.which("exabgp")
    if exe is None:
        raise LabError("exabgp is not installed")
    return [exe]


def exabgp_config(
    *,
    neighbors: Sequence[dict[str, Any]],
    run: str,
    process_name: str = "speaker",
    extra_neighbor_conf: str = "",
) -> str:
    """ExaBGP configuration text: one API process bound to every neighbor in ``neighbors``.

    Each neighbor is a dict with peer, local, router_id, local_as, peer_as, hold_time, family.
    """
    blocks = [f"process {process_name} {{\n    run {run};\n    encoder json;\n}}\n"]
    for n in neighbors:
        blocks.append(
            f"neighbor {n['peer']} {{\n"
            f"    router-id {n['router_id']};\n"
            f"    local-address {n['local']};\n"
            f"    local-as {n['local_as']};\n"
            f"    peer-as {n['peer_as']};\n"
            f"    hold-time {n['hold_time']};\n"
            f"    family {{ {n['family']} unicast; }}\n"
            f"    api {{ processes [ {process_name} ]; neighbor-changes; }}\n"
            + "".join(f"    {line}\n" for line in extra_neighbor_conf.splitlines() if line.strip())
            + "}\n"
        )
    return "\n".join(blocks)


def start_exabgp(
    lab: Lab,
    node: str,
    process_cmd: str | Sequence[str | os.PathLike[str]],
    extra_neighbor_conf: str = "",
    env: dict[str, str] | None = None,
    *,
    name: str = "exabgp",
    ipv6: bool = False,
    ipv4: bool = True,
    hold_time: int = 3,
    process_name: str = "speaker",
) -> subprocess.Popen[bytes]:
    """Start real ExaBGP in ``node`` peering with the router, running ``process_cmd`` as its API process.

    The config, a wrapper script for ``process_cmd`` and the log (ExaBGP's stdout/stderr,
    which includes the API process's stderr) live in ``lab.state_dir/exabgp``. ``env``
    is added to (and overrides) :data:`EXABGP_ENV`; the API process inherits it.
    """
    workdir = lab.state_dir / "exabgp"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = shlex.split(process_cmd) if isinstance(process_cmd, str) else [str(c) for c in process_cmd]
    wrapper = workdir / f"{node}-{name}-{process_name}.sh"
    # A wrapper keeps arbitrary argv quoting out of ExaBGP's config tokeniser.
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.join(argv)}\n")
    wrapper.chmod(0o755)
    peer_node = lab.peer_node(node)
    topo = lab.topology
    local_as = topo.nodes[node].asn or 65100
    peer_as = topo.nodes[peer_node].asn or 65000
    router_id = lab.node_ip(node, 4)
    neighbors = []
    for family, enabled in ((4, ipv4), (6, ipv6)):
        if enabled:
            neighbors.append(
                {
                    "peer": lab.peer_ip(node, family),
                    "local": lab.node_ip(node, family),
                    "router_id": router_id,
                    "local_as": local_as,
                    "peer_as": peer_as,
                    "hold_time": hold_time,
                    "family": f"ipv{family}",
                }
            )
    conf = workdir / f"{node}-{name}.conf"
    conf.write_text(
        exabgp_config(
            neighbors=neighbors,
            run=str(wrapper),
            process_name=process_name,
            extra_neighbor_conf=extra_neighbor_conf,
        )
    )
    envfile = workdir / "empty.env"  # so no exabgp.env found next to the installation applies
    envfile.touch()
    full_env = {**os.environ, **EXABGP_ENV, "EXABGP_ENVFILE": str(envfile), **(env or {})}
    return lab.popen(
        node,
        [*exabgp_command(), "server", str(conf)],
        log_path=lab.log_dir / f"{node}-{name}.log",
        name=name,
        env=full_env,
    )


# --------------------------------------------------------------------------- bgpvip in a node


def node_bgpvip_dir(lab: Lab, node: str) -> Path:
    """`node`'s own bgpvip files: its config, runtime_dir, drain file and health switch.

    Network namespaces share one filesystem: speakers in several nodes with bgpvip's default
    paths would share /run/bgpvip and /var/lib/bgpvip/drain, and `bgpvip drain` in one node
    would withdraw every node's routes."""
    return lab.state_dir / "bgpvip" / node


def node_bgpvip_env(lab: Lab, node: str) -> dict[str, str]:
    """For commands run in `node` by hand (`nslab.py exec`): bgpvip there defaults to the
    node's own config (`$BGPVIP_CONFIG`), so `bgpvip drain` drains that node only."""
    return {"BGPVIP_CONFIG": str(node_bgpvip_dir(lab, node) / "config.yaml")}


# --------------------------------------------------------------------------- the demo


class Speaker(Protocol):
    """What the demo needs from "the speaker" running on a node."""

    process: subprocess.Popen[bytes]

    def withdraw(self) -> None: ...


@dataclass
class MinimalSpeaker:
    """ExaBGP + ``lab/helpers/minispeaker.py``: announces VIPs, withdraws when a file appears."""

    process: subprocess.Popen[bytes]
    withdraw_file: Path

    def withdraw(self) -> None:
        self.withdraw_file.touch()


def start_minimal_speaker(lab: Lab, node: str, vips: Sequence[str]) -> MinimalSpeaker:
    """Put ``vips`` on the node's ``lo`` and announce them through ExaBGP with a minimal API process.

    The lead swaps this for a function starting the real bgpvip speaker with the same shape:
    ``(lab, node, vips) -> object with .process and .withdraw()``.
    """
    for vip in vips:
        lab.exec(node, ["ip", "addr", "replace", vip, "dev", "lo"])
    withdraw_file = lab.state_dir / f"{node}-withdraw"
    withdraw_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(HELPERS_DIR / "minispeaker.py"), "--withdraw-file", str(withdraw_file), *vips]
    return MinimalSpeaker(start_exabgp(lab, node, cmd), withdraw_file)


def demo(
    lab: Lab,
    start_speaker: Callable[[Lab, str, Sequence[str]], Speaker] = start_minimal_speaker,
    *,
    node: str = "n1",
    vip: str = "198.51.100.10",
    port: int = 8080,
    out: Callable[[str], None] = print,
) -> None:
    """Announce ``vip`` from ``node``, show it at the router, fetch it from the client, withdraw it."""
    prefix = f"{vip}/32" if ":" not in vip else f"{vip}/128"
    t0 = time.monotonic()
    lab.up()
    try:
        out(f"lab {lab.prefix} up in {time.monotonic() - t0:.2f}s (namespaces {lab.prefix}*)")
        lab.popen(
            node,
            [sys.executable, str(HELPERS_DIR / "namesrv.py"), "--name", node, "--port", str(port)],
            name="namesrv",
        )
        speaker = start_speaker(lab, node, [prefix])
        waited = lab.wait_prefix(prefix, nexthops=[lab.node_ip(node, 6 if ":" in vip else 4)], timeout=30)
        out(f"{prefix} installed at {lab.router} after {waited:.2f}s")
        out(lab.vtysh("show bgp ipv4 unicast").rstrip())
        out(f"kernel route: {json.dumps(lab.route(prefix))}")
        lab.wait_tcp(node, vip, port, timeout=10)
        out(f"client -> http://{vip}:{port}/ answered: {lab.http_get('client', vip, port).strip()!r}")
        speaker.withdraw()
        gone = lab.wait_prefix(prefix, present=False, timeout=30)
        out(f"withdrawn: {prefix} gone from {lab.router}'s kernel {gone:.2f}s after the trigger")
        out(f"kernel route now: {json.dumps(lab.route(prefix))}")
    except BaseException:
        out(lab.logs())
        raise
    finally:
        lab.down()
        out(f"lab {lab.prefix} down")


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nslab.py", description="Build lab/bgpvip.clab.yml with network namespaces (no Docker)."
    )
    parser.add_argument(
        "--prefix",
        default=os.environ.get("BGPVIP_LAB_PREFIX", DEFAULT_PREFIX),
        help=f"name prefix of namespaces and state (default {DEFAULT_PREFIX!r})",
    )
    parser.add_argument("--topology", default=str(DEFAULT_TOPOLOGY), help="containerlab topology file")
    parser.add_argument("--bfd", action="store_true", default=None, help="also run bfdd on the router")
    parser.add_argument(
        "--router",
        choices=ROUTER_SOFTWARE,
        default=None,
        help="BGP software on the router node (default frr, or $BGPVIP_LAB_ROUTER; a running lab keeps its own)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="build the lab and start FRR on the router")
    sub.add_parser("down", help="remove everything of this prefix (idempotent)")
    sub.add_parser("status", help="namespaces, processes, BGP peers (JSON)")
    p_exec = sub.add_parser(
        "exec", help="run a command in a node: exec NODE -- CMD... ($BGPVIP_CONFIG: the node's own config)"
    )
    p_exec.add_argument("node")
    p_exec.add_argument("cmd", nargs=argparse.REMAINDER)
    p_bgp = sub.add_parser("bgp-json", help="show bgp <afi> unicast json on the router")
    p_bgp.add_argument("--afi", default="ipv4", choices=["ipv4", "ipv6"])
    p_routes = sub.add_parser("routes-json", help="the router's kernel routes (ip -j route)")
    p_routes.add_argument("--family", type=int, default=4, choices=[4, 6])
    p_wait = sub.add_parser("wait-prefix", help="wait for a prefix in the router's kernel table")
    p_wait.add_argument("target", metavar="PREFIX")
    group = p_wait.add_mutually_exclusive_group()
    group.add_argument("--present", dest="present", action="store_true", default=True)
    group.add_argument("--absent", dest="present", action="store_false")
    p_wait.add_argument("--timeout", type=float, default=10.0)
    p_wait.add_argument("--nexthop", action="append", dest="nexthops", help="expected gateway (repeatable)")
    sub.add_parser("logs", help="router logs, BGP state and registered logs")
    p_cfg = sub.add_parser(
        "bgpvip-config",
        help="write NODE's own bgpvip config announcing VIPs (its own runtime_dir and drain file); "
        "print its path; then `exec NODE -- bgpvip run`",
    )
    p_cfg.add_argument("node")
    p_cfg.add_argument("vips", nargs="+", metavar="VIP")
    p_demo = sub.add_parser(
        "demo",
        help="up; bgpvip on n1-n3 announces a VIP (ECMP at r1), the client fetches it, n1 fails over; down",
    )
    p_demo.add_argument(
        "--minimal", action="store_true", help="use a minimal ExaBGP API script instead of bgpvip"
    )
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("nslab.py: needs root (network namespaces, FRR)", file=sys.stderr)
        return 2
    lab = Lab(args.topology, args.prefix, bfd=args.bfd, router_software=args.router)
    if args.command == "up":
        t0 = time.monotonic()
        lab.up()
        print(f"lab {lab.prefix} up in {time.monotonic() - t0:.2f}s; state in {lab.state_dir}")
        print(f"  nodes: {', '.join(f'{n} (netns {lab.ns(n)})' for n in lab.nodes)}")
        if lab.router and lab.router_software == "frr":
            print(f"  vtysh: {shlex.join(lab._vtysh_argv())} -c 'show bgp summary'")
        elif lab.router and lab.router_software == "bird":
            print(f"  birdc: birdc -s {lab.routing().dir / (lab.router + '.ctl')} show protocols")
        elif lab.router:
            print(f"  gobgp: ip netns exec {lab.ns(lab.router)} gobgp neighbor")
        print(f"  shell: ip netns exec {lab.ns(lab.nodes[0])} bash")
    elif args.command == "down":
        lab.down()
        print(f"lab {lab.prefix} down")
    elif args.command == "status":
        print(json.dumps(lab.status(), indent=2))
    elif args.command == "exec":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("exec needs a command: exec NODE -- CMD...")
        env = {**os.environ, **node_bgpvip_env(lab, args.node)}
        return subprocess.call(["ip", "netns", "exec", lab.ns(args.node), *cmd], env=env)
    elif args.command == "bgp-json":
        if lab.router_software != "frr":
            print("bgp-json is FRR's `show bgp ... json`; for BIRD and GoBGP use their CLI", file=sys.stderr)
            return 2
        print(json.dumps(lab.bgp_json(args.afi), indent=2))
    elif args.command == "routes-json":
        print(json.dumps(lab.kernel_routes(args.family), indent=2))
    elif args.command == "wait-prefix":
        try:
            waited = lab.wait_prefix(
                args.target, present=args.present, timeout=args.timeout, nexthops=args.nexthops
            )
        except TimeoutError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{args.target} {'present' if args.present else 'absent'} after {waited:.3f}s")
    elif args.command == "logs":
        print(lab.logs())
    elif args.command == "bgpvip-config":
        import bgpvip_lab  # lives next to this file

        vips = [{"name": f"vip{i}", "address": a, "interface": "lo"} for i, a in enumerate(args.vips)]
        print(bgpvip_lab.write_node_config(lab, args.node, bgpvip_lab.node_config(lab, args.node, vips)))
    elif args.command == "demo":
        if args.minimal:
            demo(lab)
        else:
            import bgpvip_lab  # the real speaker; lives next to this file

            bgpvip_lab.demo(lab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
