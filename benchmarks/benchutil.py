"""The harness every benchmark shares: one preflight, one netlink watcher, one way to read a
process's CPU and memory, and one report writer.

- `preflight()` refuses to start without root and the tools a benchmark needs, and
  `machine_state()` says what else loads the machine (load average, BGP daemons and other
  benchmarks that are not ours), printed and stored with every result.
- `NetlinkWatch` stamps the route (and address) events of one namespace, usually the router
  r1's kernel table, as they arrive: the detector of every "until the route is gone/there"
  figure.
- `cpu_seconds()`, `memory()` and `sample_cpu()` read /proc for per-process figures.
- `start_report()`, `finish_report()`, `save_json()` and `write_docs_block()` give every report
  the same head (date, command, load, versions), the same JSON file and the same generated
  block in docs/performance.md.

Standard library only (plus `bgpvip` for its version), so the smoke tests and the lab share it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import importlib.metadata
import ipaddress
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LAB_DIR = REPO / "lab"
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

import nslab  # noqa: E402

# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    k = (len(s) - 1) * p
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(samples: Sequence[float]) -> dict[str, float] | None:
    """n, p50 (the median), p90, p99, min, max and mean of `samples`; None when empty."""
    if not samples:
        return None
    return {
        "n": len(samples),
        "p50": percentile(samples, 0.5),
        "p90": percentile(samples, 0.9),
        "p99": percentile(samples, 0.99),
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
    }


# --------------------------------------------------------------------------- processes


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM one process we started (by its PID), SIGKILL after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def first_line(cmd: list[str]) -> str:
    """The first line a command prints (stdout, then stderr), for version strings."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    text = (p.stdout + p.stderr).strip()
    return text.splitlines()[0] if text else "?"


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float | None:
    """User + system CPU seconds of `pid` (utime + stime of /proc/<pid>/stat); with
    `reaped_children`, plus those of the children it has waited for (cutime + cstime: the
    checks keepalived runs as scripts). None when the process is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    used = fields[11:15] if reaped_children else fields[11:13]
    return sum(int(x) for x in used) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` in the process tree."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parent_of[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> str:
    """The command line of `pid`, arguments joined by spaces ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def netns_pids(netns: str) -> list[int]:
    """The processes in network namespace `netns`."""
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def memory(pid: int) -> dict[str, float]:
    """Memory of `pid` in MB: `rss` and `pss` (smaps_rollup: PSS shares each page among the
    processes that map it, so PSS adds up across processes and RSS does not), `anon` (its own
    pages) and `file` (mapped files: the interpreter, shared libraries), `hwm` (peak RSS);
    and its `threads`. Empty when the process is gone."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                number = int(value.split()[0])
                name = {"VmRSS": "rss", "VmHWM": "hwm", "RssAnon": "anon", "RssFile": "file"}.get(key)
                if name is None:
                    out["threads"] = number
                else:
                    out[name] = round(number / 1024, 1)
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Pss":
                out["pss"] = round(int(value.split()[0]) / 1024, 1)
    return out


def stack_pids(speaker: Any) -> dict[str, int]:
    """The processes of a lab node's `bgpvip run` (`bgpvip_lab.Speaker`): the launcher, the
    ExaBGP it started and the speaker ExaBGP started (from its pid file)."""
    run = speaker.process.pid
    out = {"bgpvip run": run}
    for pid in children(run):
        out["exabgp"] = pid
    sp = speaker.speaker_pid()
    if sp is not None:
        out["speaker"] = sp
    return out


def sample_cpu(
    pids: Mapping[str, Iterable[int]], seconds: float, *, reaped_children: bool = False
) -> dict[str, Any]:
    """Share of one core (percent) used by each role's processes over `seconds`: the mean,
    and the highest one-second sample. Processes that end meanwhile are left out."""
    roles = {role: list(ps) for role, ps in pids.items()}

    def read() -> dict[int, float | None]:
        return {p: cpu_seconds(p, reaped_children=reaped_children) for ps in roles.values() for p in ps}

    first = prev = read()
    per_second: dict[str, list[float]] = {role: [] for role in roles}
    t0 = tick = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        time.sleep(min(1.0, seconds - (now - t0)))
        cur, t = read(), time.monotonic()
        for role, ps in roles.items():
            used = [cur[p] - prev[p] for p in ps if cur[p] is not None and prev[p] is not None]  # type: ignore[operator]
            per_second[role].append(round(100 * sum(used) / (t - tick), 1))
        prev, tick = cur, t
    elapsed = time.monotonic() - t0
    out: dict[str, Any] = {"seconds": round(elapsed, 1)}
    for role, ps in roles.items():
        used = [prev[p] - first[p] for p in ps if prev[p] is not None and first[p] is not None]  # type: ignore[operator]
        out[role] = {
            "percent": round(100 * sum(used) / elapsed, 2),
            "max_1s_percent": max(per_second[role], default=0.0),
            "per_second": per_second[role],
        }
    return out


# --------------------------------------------------------------------------- the machine

# Daemons that load the machine like the lab's own (by command name or command line).
_DAEMONS = {
    "bgpd": re.compile(r"^bgpd$"),
    "zebra": re.compile(r"^zebra$"),
    "bird": re.compile(r"^bird6?$"),
    "gobgpd": re.compile(r"^gobgpd$"),
    "keepalived": re.compile(r"^keepalived$"),
    "exabgp": re.compile(r"(^|[/ ])exabgp( |$)|-m exabgp( |$)"),
    "bgpvip": re.compile(r"(^|[/ ])bgpvip( |$)|-m bgpvip"),
    "benchmark": re.compile(r"benchmarks/\w+\.py"),
}


def loadavg() -> str:
    """The 1, 5 and 15-minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_state() -> dict[str, Any]:
    """What else runs here: load average, cores, and per kind the BGP daemons (and other
    benchmarks) that this process did not start."""
    mine = descendants(os.getpid()) | {os.getpid(), os.getppid()}
    others: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        line = cmdline(int(entry.name))
        for kind, pattern in _DAEMONS.items():
            if pattern.search(comm) or (kind in ("exabgp", "bgpvip", "benchmark") and pattern.search(line)):
                others[kind] = others.get(kind, 0) + 1
                break
    return {"loadavg": loadavg(), "cores": os.cpu_count() or 1, "others": dict(sorted(others.items()))}


def machine_warnings(state: Mapping[str, Any], *, idle_load: float = 0.5) -> list[str]:
    """Why figures measured now would not be those of an idle machine."""
    out = []
    one = float(state["loadavg"].split()[0])
    if one >= idle_load:
        out.append(f"the machine is not idle: load average {state['loadavg']} on {state['cores']} cores")
    if state["others"]:
        listed = ", ".join(f"{n} {kind}" for kind, n in state["others"].items())
        out.append(f"other processes that load the machine like the lab does are running: {listed}")
    return out


def machine_text(state: Mapping[str, Any]) -> str:
    """One line: the load average and what else ran."""
    others = ", ".join(f"{n} {kind}" for kind, n in state.get("others", {}).items()) or "none"
    return (
        f"load average {state['loadavg']} on {state['cores']} cores; other BGP daemons/benchmarks: {others}"
    )


def preflight(
    *,
    files: Iterable[Path] = (),
    tools: Iterable[str] = (),
    exabgp: bool = True,
    why_root: str = "network namespaces, FRR",
) -> str | None:
    """Why this benchmark cannot run here (root, FRR, ExaBGP, `files`, `tools`), or None."""
    if os.geteuid() != 0:
        return f"needs root ({why_root})"
    for path in (nslab.FRR_BIN / "zebra", nslab.FRR_BIN / "bgpd", *files):
        if not Path(path).exists():
            return f"{path} is missing"
    for tool in ("ip", "vtysh", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if exabgp:
        try:
            nslab.exabgp_command()
        except nslab.LabError as exc:
            return str(exc)
    return None


# --------------------------------------------------------------------------- the route watcher

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
_SO_RCVBUFFORCE = 33
_RTM_NEWADDR, _RTM_DELADDR, _RTM_NEWROUTE, _RTM_DELROUTE, _RTM_GETROUTE = 20, 21, 24, 25, 26
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_RT_TABLE_MAIN = 254
_RTA_DST, _RTA_TABLE = 1, 15
_IFA_ADDRESS, _IFA_LOCAL = 1, 2


class NetlinkWatch:
    """IPv4 route events (main table) and, with `addresses`, IPv4 address events of one
    network namespace, each stamped with time.monotonic() as it arrives.

    A thread blocks in recv() on a NETLINK_ROUTE socket and stamps each datagram when the
    kernel hands it over: event driven, sub-millisecond resolution. Keys are a route's
    destination ("198.51.100.10/32") or an address ("198.51.100.10"); `events[key]` is the
    (time, added) history of each.

    With `pool`, the set of the pool's /32 routes present is kept too (`present`), seeded from
    a full dump (RTM_GETROUTE) and resynchronised from one when the receive buffer overflows
    (ENOBUFS, counted in `overflows`); `arm(n)` then `wait_count()` give the time the set
    reached exactly n routes."""

    def __init__(
        self,
        netns: str,
        *,
        routes: bool = True,
        addresses: bool = False,
        pool: ipaddress.IPv4Network | None = None,
        rcvbuf: int = 2 << 20,
    ) -> None:
        self.netns = netns
        groups = (RTMGRP_IPV4_ROUTE if routes else 0) | (RTMGRP_IPV4_IFADDR if addresses else 0)
        self._range = (int(pool.network_address), int(pool.broadcast_address)) if pool is not None else None
        self._sock = nslab.socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, 0)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.bind((0, groups))
        self._sock.settimeout(0.2)
        self._dump_sock = nslab.socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self._dump_sock.bind((0, 0))
        self._dump_sock.settimeout(5.0)
        self._dump_lock = threading.Lock()
        self._seq = 0
        self.cond = threading.Condition()
        self.events: dict[str, list[tuple[float, bool]]] = {}
        self.overflows = 0
        self._target: int | None = None
        self._hit: float | None = None
        self.present: set[str] = self.dump() if pool is not None else set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"netlink-{netns}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
        self._dump_sock.close()

    # ----- parsing

    def _in_pool(self, raw: bytes, dst_len: int) -> bool:
        if self._range is None or dst_len != 32:
            return False
        ip = int.from_bytes(raw, "big")
        return self._range[0] <= ip <= self._range[1]

    def _parse(self, data: bytes) -> list[tuple[str, bool, bool]]:
        """(key, added, in the pool) of every IPv4 main-table route and IPv4 address message."""
        out: list[tuple[str, bool, bool]] = []
        offset, n = 0, len(data)
        while offset + 16 <= n:
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            start, end = offset + 16, offset + length
            offset += (length + 3) & ~3
            if kind in (_RTM_NEWROUTE, _RTM_DELROUTE) and end - start >= 12:
                family, dst_len, _s, _t, table = struct.unpack_from("=BBBBB", data, start)
                if family != socket.AF_INET:
                    continue
                attrs = nslab.rtattrs(data, start + 12, end)
                if _RTA_TABLE in attrs:
                    table = struct.unpack("=I", attrs[_RTA_TABLE])[0]
                raw = attrs.get(_RTA_DST)
                if table != _RT_TABLE_MAIN or raw is None:
                    continue
                key = f"{socket.inet_ntop(socket.AF_INET, raw)}/{dst_len}"
                out.append((key, kind == _RTM_NEWROUTE, self._in_pool(raw, dst_len)))
            elif kind in (_RTM_NEWADDR, _RTM_DELADDR) and end - start >= 8:
                if data[start] != socket.AF_INET:
                    continue
                attrs = nslab.rtattrs(data, start + 8, end)
                raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
                if raw is not None:
                    out.append((socket.inet_ntop(socket.AF_INET, raw), kind == _RTM_NEWADDR, False))
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._overflowed()
                    continue
                return
            t = time.monotonic()
            found = self._parse(data)
            if not found:
                continue
            with self.cond:
                for key, added, pooled in found:
                    self.events.setdefault(key, []).append((t, added))
                    if pooled:
                        if added:
                            self.present.add(key)
                        else:
                            self.present.discard(key)
                if self._target is not None and self._hit is None and len(self.present) == self._target:
                    self._hit = t
                self.cond.notify_all()

    def _overflowed(self) -> None:
        fresh = self.dump() if self._range is not None else set()
        with self.cond:
            self.overflows += 1
            self.present = fresh
            if self._target is not None and self._hit is None and len(fresh) == self._target:
                self._hit = time.monotonic()
            self.cond.notify_all()

    def dump(self) -> set[str]:
        """The pool's /32 routes in the main table right now (a full RTM_GETROUTE dump)."""
        with self._dump_lock:
            self._seq += 1
            seq = self._seq
            body = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
            header = struct.pack(
                "=IHHII", 16 + len(body), _RTM_GETROUTE, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0
            )
            self._dump_sock.send(header + body)
            found: set[str] = set()
            while True:
                data = self._dump_sock.recv(1 << 20)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind, _f, mseq, _pid = struct.unpack_from("=IHHII", data, offset)
                    if length < 16:
                        break
                    if mseq == seq and kind == _NLMSG_DONE:
                        return found
                    if mseq == seq and kind == _NLMSG_ERROR:
                        code = struct.unpack_from("=i", data, offset + 16)[0]
                        if code:
                            raise OSError(-code, os.strerror(-code))
                        return found
                    offset += (length + 3) & ~3
                found.update(key for key, _added, pooled in self._parse(data) if pooled)

    # ----- single keys

    def last_event(self, key: str) -> float | None:
        with self.cond:
            history = self.events.get(key)
            return history[-1][0] if history else None

    def count(self, key: str, added: bool, after: float, before: float = math.inf) -> int:
        with self.cond:
            return sum(1 for t, a in self.events.get(key, ()) if a == added and after <= t <= before)

    def wait(
        self,
        key: str,
        added: bool,
        after: float,
        deadline: float,
        confirm: Callable[[], bool],
        *,
        grace: float = 0.2,
    ) -> tuple[float, str] | None:
        """The first add (`added`) or delete event of `key` after `after` whose outcome
        `confirm()` sees: (t, "event"); (t, "poll") if the state was reached without an event
        within `grace` (counted in the results; not seen so far); None at the deadline."""
        cursor = 0
        polled_at: float | None = None
        while True:
            hit = None
            with self.cond:
                history = self.events.get(key, [])
                for i in range(cursor, len(history)):
                    t, a = history[i]
                    if t > after and a == added:
                        hit = (i, t)
                        break
                if hit is None:
                    cursor = len(history)
                    self.cond.wait(timeout=0.05)
            if hit is not None:
                cursor = hit[0] + 1
                if confirm():
                    return hit[1], "event"
                continue
            now = time.monotonic()
            if polled_at is None and confirm():
                polled_at = now  # give the event a moment to arrive before falling back
            elif polled_at is not None and now - polled_at > grace:
                return polled_at, "poll"
            if now > deadline:
                return None

    # ----- the pool

    def count_present(self) -> int:
        with self.cond:
            return len(self.present)

    def arm(self, target: int) -> None:
        """Record the time the set of the pool's /32s next becomes exactly `target` in size."""
        with self.cond:
            self._target = target
            self._hit = None

    def wait_count(self, deadline: float, poll: float = 0.1) -> tuple[float, str, int]:
        """(time, "event" | "poll", dumped count) once the armed count is reached, confirmed by
        a dump. Raises TimeoutError at the deadline with how far it got."""
        target = self._target
        if target is None:
            raise RuntimeError("wait_count() without arm()")
        last_poll = 0.0
        while True:
            with self.cond:
                hit = self._hit
                overflowed = self.overflows
                if hit is None:
                    self.cond.wait(timeout=poll)
                    hit = self._hit
                have = len(self.present)
            now = time.monotonic()
            if hit is not None or (overflowed and now - last_poll >= poll):
                last_poll = now
                dumped = len(self.dump())
                if dumped == target:
                    if hit is not None and not overflowed:
                        return hit, "event", dumped
                    return (hit if hit is not None else now), "poll", dumped
                with self.cond:
                    if self._hit == hit:
                        self._hit = None  # a transient count (e.g. replaced routes); keep waiting
            if now > deadline:
                raise TimeoutError(f"the pool has {have} /32s (dump: {len(self.dump())}), want {target}")


# --------------------------------------------------------------------------- reports


def versions(repo: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """What a report names: kernel, FRR, ExaBGP, `extra` (the benchmark's own tools), Python,
    bgpvip with its commit (and whether the tree had uncommitted changes), CPU and OS."""
    import bgpvip

    rev = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    commit = rev.stdout.strip() if rev.returncode == 0 else "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "kernel": platform.release(),
        "frr": first_line([str(nslab.FRR_BIN / "zebra"), "--version"]),
        "exabgp": importlib.metadata.version("exabgp"),
        **extra,
        "python": platform.python_version(),
        "bgpvip": f"{bgpvip.__version__} (git {commit}{', uncommitted changes' if dirty else ''})",
        "cpu": f"{os.cpu_count()} x {cpu_model}",
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
    }


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--results-dir, --write-docs and --docs: where a report goes."""
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=REPO / "bench-results",
        help="where the JSON goes (bench-results/)",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="rewrite this benchmark's block of the docs file"
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=REPO / "docs" / "performance.md",
        help="docs file for --write-docs (docs/performance.md)",
    )


def log(msg: str) -> None:
    """A progress line on stderr (stdout is the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_report(script: str, argv: Sequence[str] | None) -> tuple[dict[str, Any], datetime.datetime]:
    """The head every report starts with: date, the command as run, and the machine's state
    (printed as warnings when it is not idle). SIGTERM becomes KeyboardInterrupt from here on,
    so a benchmark ends through its cleanup as on Ctrl-C."""
    name = os.path.relpath(Path(sys.argv[0]).resolve(), Path.cwd()) if argv is None else script
    command = shlex.join(["python3", name, *(sys.argv[1:] if argv is None else argv)])
    started = datetime.datetime.now(datetime.UTC).astimezone()
    state = machine_state()
    for warning in machine_warnings(state):
        log(f"WARNING: {warning}; the figures will not be those of an idle machine")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    report: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "loadavg_before": state["loadavg"],
        "machine_before": state,
    }
    return report, started


def finish_report(report: dict[str, Any], wall_seconds: float) -> None:
    """Add the wall time and the machine's state at the end."""
    report["wall_seconds"] = round(wall_seconds, 1)
    state = machine_state()
    report["loadavg_after"] = state["loadavg"]
    report["machine_after"] = state


def load_line(report: Mapping[str, Any]) -> str:
    """The load line of every report: load average before and after, and what else ran."""
    others = report.get("machine_before", {}).get("others", {})
    listed = ", ".join(f"{n} {kind}" for kind, n in others.items()) or "none"
    load = f"load average before {report.get('loadavg_before', '?')}"
    if "loadavg_after" in report:  # not in a run that ended before it was read
        load = f"load average before/after {report.get('loadavg_before', '?')} / {report['loadavg_after']}"
    return f"{load}; other BGP daemons or benchmarks running at the start: {listed}"


def save_json(report: Mapping[str, Any], results_dir: Path, name: str, started: datetime.datetime) -> Path:
    """Write the report as bench-results/<name>-<timestamp>.json; returns the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{name}-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    return out


DOC_INTRO = """\
# Performance

Benchmarks of bgpvip against the tools it replaces, measured side by side in the namespace
lab (`lab/nslab.py`: real FRR 8.4 on the router r1, real ExaBGP on the nodes) on one
machine. They print figures; they are not timed tests. How to run them:
[benchmarks/README.md](../benchmarks/README.md).
"""


def write_docs_block(
    path: Path, block: str, *, section: str, begin: str, end: str, intro: str = DOC_INTRO
) -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in place of the generated
    block of `section` in `path`. A missing block goes at the end of the section, a missing
    section at the end of the file, a missing file starts from `intro`; the rest is kept."""
    text = path.read_text() if path.exists() else intro
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    elif section in text:
        head, rest = text.split(section, 1)
        nxt = rest.find("\n## ")
        body, tail = (rest, "") if nxt < 0 else (rest[: nxt + 1], rest[nxt + 1 :])
        text = head + section + body.rstrip("\n") + "\n\n" + block + "\n\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
