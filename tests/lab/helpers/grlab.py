"""Planned and unplanned restarts of a node, measured at the router: the harness of
tests/lab/test_graceful_restart_lab.py and of the matrix in `gr_matrix.py`.

A `NodeStack` is what runs on the lab's node n1: real ExaBGP and, as its API process,
`gr_node.py` (announces a VIP, runs bgpvip's BFD on its own loop, sends End-of-RIB with
`--eor`). It is the stand-in for `bgpvip run`: every event a test needs is one method
(`kill_helper`, `stop_exabgp`, `planned_restart`, ...), so the tests can later drive the
integrated speaker through the same methods.

Router configurations (`frr_config`, `bird_config`) are the lab's own r1 configurations plus
BFD and the graceful-restart settings under test; the documented blocks in docs/frr.md and
docs/bird.md are these.

What a trial measures: a `Watch` polls the router's kernel route for the VIP every 10 ms and
a `ClientLoop` opens a new TCP connection to the VIP every 20 ms from the client namespace;
each reports when the route went and came back and which connections failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nslab

HELPERS = Path(__file__).resolve().parent
GR_NODE = HELPERS / "gr_node.py"
LAB_HELPERS = Path(nslab.__file__).resolve().parent / "helpers"
VIP = "198.51.100.20"
PORT = 8080
NODE = "n1"
RESTART_TIME = 10
"""Graceful-restart time the node advertises in the lab (seconds)."""


# --------------------------------------------------------------------------- router configs


def frr_config(*, bfd: bool = True, check_control_plane: bool = False) -> str:
    """The lab's frr.conf with a 100 ms x 3 BFD profile on the NODES peer group and, when
    asked, `bfd check-control-plane-failure`. FRR is a graceful-restart helper by default."""
    base = (nslab.LAB_DIR / "r1" / "frr.conf").read_text()
    extra = ""
    if bfd:
        extra = (
            "bfd\n profile bgpvip\n  receive-interval 100\n  transmit-interval 100\n"
            "  detect-multiplier 3\n exit\nexit\n"
        )
        lines = [" neighbor NODES bfd", " neighbor NODES bfd profile bgpvip"]
        if check_control_plane:
            lines.append(" neighbor NODES bfd check-control-plane-failure")
        base = base.replace(
            " neighbor 10.0.1.2 peer-group NODES\n",
            " neighbor 10.0.1.2 peer-group NODES\n" + "\n".join(lines) + "\n",
        )
    return base.replace("router bgp 65000\n", extra + "router bgp 65000\n", 1)


def bird_config(*, bfd: str = "on") -> str:
    """The lab's bird.conf with `protocol bfd` (100 ms x 3) and `bfd on|graceful|off` plus
    `graceful restart on` in the nodes template."""
    base = (nslab.LAB_DIR / "r1" / "bird.conf").read_text()
    bfd_proto = 'protocol bfd {\n  interface "eth*" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n}\n'
    settings = "  graceful restart on;\n"
    if bfd != "off":
        settings += f"  bfd {bfd};\n"
        base = base.replace("template bgp nodes {\n", bfd_proto + "\ntemplate bgp nodes {\n", 1)
    return base.replace("  error wait time 1, 10;\n", "  error wait time 1, 10;\n" + settings, 1)


# --------------------------------------------------------------------------- the node


@dataclass
class NodeOptions:
    graceful_restart: bool = True
    manual_eor: bool = True
    bfd: bool = True
    cbit: int = 1
    """The C bit bgpvip sends (docs/bfd.md: why 1)."""
    announce_delay: float = 0.0
    watchdog: float = 0.3
    hold_time: int = 3


@dataclass
class NodeStack:
    """ExaBGP + gr_node.py on n1, announcing VIP/32."""

    lab: nslab.Lab
    options: NodeOptions
    exabgp: Any = None
    generation: int = 0
    workdir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir = self.lab.state_dir / "gr"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.workdir / "events.jsonl"
        self.control_path = self.workdir / "control.sock"
        self.handover_path = self.workdir / "bfd-handover.json"

    # ----- setup

    def prepare(self) -> None:
        """The VIP on n1's loopback and a server answering on it (once per lab)."""
        self.lab.exec(NODE, ["ip", "addr", "replace", f"{VIP}/32", "dev", "lo"])
        self.lab.popen(
            NODE,
            [sys.executable, str(LAB_HELPERS / "namesrv.py"), "--name", NODE, "--port", str(PORT)],
            name="namesrv",
        )
        self.lab.wait_tcp(NODE, VIP, PORT, timeout=10)

    def helper_command(self) -> list[str]:
        o = self.options
        cmd = [sys.executable, str(GR_NODE), "--vip", f"{VIP}/32", "--events", str(self.events_path)]
        cmd += ["--control", str(self.control_path), "--announce-delay", str(o.announce_delay)]
        cmd += ["--handover", str(self.handover_path)]
        if o.bfd:
            cmd += ["--bfd", f"{self.lab.peer_ip(NODE)},{self.lab.node_ip(NODE)}", "--cbit", str(o.cbit)]
        if o.manual_eor and o.graceful_restart:
            cmd.append("--eor")
        if o.watchdog:
            cmd += ["--watchdog", str(o.watchdog)]
        return cmd

    def start(self) -> None:
        """Start ExaBGP (it starts the helper)."""
        o = self.options
        extra = ""
        if o.graceful_restart:
            extra = f"capability {{ graceful-restart {RESTART_TIME}; }}\n"
            if o.manual_eor:
                extra += "manual-eor true;\n"
        self.generation += 1
        self.exabgp = nslab.start_exabgp(
            self.lab, NODE, self.helper_command(), extra_neighbor_conf=extra, hold_time=o.hold_time
        )

    def events(self) -> list[dict[str, Any]]:
        try:
            text = self.events_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def helper_pid(self) -> int:
        started = [e for e in self.events() if e["event"] == "started"]
        if not started:
            raise RuntimeError("the helper has not started")
        return int(started[-1]["pid"])

    def control(self, cmd: str, timeout: float = 3.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.control_path))
            s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return json.loads(data) if data else {}

    def wait_steady(self, router: Router, timeout: float = 30.0) -> None:
        """BGP Established, BFD Up at the router (when on), the VIP in the router's kernel,
        and the helper answering."""
        deadline = time.monotonic() + timeout
        peer = self.lab.node_ip(NODE)
        while True:
            try:
                ok = (
                    self.lab.bgp_peer_states().get(peer) == "Established"
                    and (not self.options.bfd or router.bfd_state(peer) == "up")
                    and self.lab.route(f"{VIP}/32") is not None
                    and self.control("status", timeout=1).get("ok") is True
                )
                ok = ok and self._restart_over()
                if ok:  # and the path works end to end: a client reaches the VIP
                    self.lab.wait_tcp("client", VIP, PORT, timeout=0.5)
            except (OSError, ValueError, TimeoutError, nslab.LabError):
                ok = False
            if ok:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"node not steady after {timeout}s: bgp={self.lab.bgp_peer_states()} "
                    f"bfd={router.bfd_state(peer)} route={self.lab.route(f'{VIP}/32')}\n"
                    + "\n".join(json.dumps(e) for e in self.events()[-15:])
                )
            time.sleep(0.05)

    def _restart_over(self) -> bool:
        """The latest helper has announced and, with manual End-of-RIB, sent it after the
        latest session came up: until then the router may still hold the VIP as stale from
        a previous restart, and a second restart then is not the event under test."""
        events = self.events()
        starts = [e["wall"] for e in events if e["event"] == "started"]
        if not starts:
            return False
        mine = [e for e in events if e["wall"] >= starts[-1]]
        if not any(e["event"] == "announced" for e in mine):
            return False
        if not (self.options.graceful_restart and self.options.manual_eor):
            return True
        ups = [e["wall"] for e in events if e["event"] == "neighbor" and e["state"] == "up"]
        return bool(ups) and any(e["event"] == "eor" and e["wall"] >= ups[-1] for e in events)

    # ----- events (each returns the wall time the event began)

    def _signal(self, pid: int, sig: int) -> float:
        t = time.time()
        os.kill(pid, sig)
        return t

    def kill_helper(self) -> float:
        """SIGKILL of the API process: ExaBGP respawns it; BFD dies with it."""
        return self._signal(self.helper_pid(), signal.SIGKILL)

    def stop_helper(self) -> float:
        return self._signal(self.helper_pid(), signal.SIGSTOP)

    def cont_helper(self) -> None:
        os.kill(self.helper_pid(), signal.SIGCONT)

    def kill_exabgp(self) -> float:
        """SIGKILL of ExaBGP: the kernel closes its TCP session (FIN, no NOTIFICATION); the
        helper sees its stdin close and stops BFD."""
        return self._signal(self.exabgp.pid, signal.SIGKILL)

    def stop_exabgp(self) -> float:
        return self._signal(self.exabgp.pid, signal.SIGSTOP)

    def cont_exabgp(self) -> None:
        os.kill(self.exabgp.pid, signal.SIGCONT)

    def cut_link(self) -> float:
        """The path dies silently, as behind a switch: each side's neighbour entry for the other
        points at a MAC nobody has, so every packet is lost and no carrier changes (a veth
        going down would tell the router at once, which a real link cut often does not)."""
        router = self.lab.router or "r1"
        t = time.time()
        for ns, addr in ((NODE, self.lab.peer_ip(NODE)), (router, self.lab.node_ip(NODE))):
            self.lab.exec(
                ns,
                [
                    "ip",
                    "neigh",
                    "replace",
                    addr,
                    "lladdr",
                    "02:00:00:00:de:ad",
                    "nud",
                    "permanent",
                    "dev",
                    "eth1",
                ],
            )
        return t

    def restore_link(self) -> None:
        router = self.lab.router or "r1"
        for ns, addr in ((NODE, self.lab.peer_ip(NODE)), (router, self.lab.node_ip(NODE))):
            self.lab.exec(ns, ["ip", "neigh", "del", addr, "dev", "eth1"], check=False)

    def reap(self) -> None:
        """Wait for ExaBGP (and so its helper) to be gone after a kill or a stop."""
        if self.exabgp is not None:
            with contextlib.suppress(Exception):
                self.exabgp.wait(timeout=10)

    def terminate(self) -> None:
        if self.exabgp is not None and self.exabgp.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.exabgp.pid, signal.SIGCONT)
                os.kill(self.exabgp.pid, signal.SIGKILL)
            self.reap()
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            os.kill(self.helper_pid(), signal.SIGKILL)

    def planned_restart(self, sequence: str = "close-then-admin-down", gap: float = 0.0) -> float:
        """A planned restart of ExaBGP and the speaker (`systemctl restart`, an upgrade).

        Sequences:
        - `handover`: BFD slows down with a poll and is handed over (no AdminDown, the router's
          session stays Up), then ExaBGP closes every session without a NOTIFICATION; the new
          helper goes on with the BFD session;
        - `close-then-admin-down`: ExaBGP closes every session without a NOTIFICATION
          (`shutdown`), then BFD AdminDown, then the processes exit;
        - `admin-down-then-close`: AdminDown first, then the sessions close;
        - `close-only`: the sessions close, and BFD stops without AdminDown (the router's
          detection time runs out);
        - `cease`: NOTIFICATION Cease first (`neighbor * teardown 2`, bgpvip's clean stop
          before this work): what graceful restart cannot help with.
        Then the new ExaBGP starts `gap` seconds later; its helper announces, then sends EOR."""
        t = time.time()
        if sequence == "handover":
            self.control("hand_over")
            self.control("exabgp_shutdown")
        elif sequence == "admin-down-then-close":
            self.control("admin_down")
            time.sleep(0.05)
            self.control("exabgp_shutdown")
        elif sequence == "close-then-admin-down":
            self.control("exabgp_shutdown")
            self._wait_session_closed()
            self.control("admin_down")
            time.sleep(0.05)
        elif sequence == "close-only":
            self.control("exabgp_shutdown")
        elif sequence == "cease":
            self.control("cease")
        else:
            raise ValueError(sequence)
        self.reap()
        time.sleep(gap)
        self.start()
        return t

    def _wait_session_closed(self, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(
                e["event"] == "exabgp-eof" or (e["event"] == "neighbor" and e["state"] == "down")
                for e in self.events()[-5:]
            ):
                return
            time.sleep(0.005)

    def helper_restart(self, how: str) -> float:
        """ExaBGP keeps running; the API process exits and ExaBGP starts a new one (the
        speaker's upgrade, or a crash of it alone): `admin-down` first, `handover` of the BFD
        session first, or `silent` (it just exits)."""
        t = time.time()
        if how == "admin-down":
            self.control("admin_down")
            time.sleep(0.05)
        elif how == "handover":
            self.control("hand_over")
        elif how != "silent":
            raise ValueError(how)
        with contextlib.suppress(OSError, ValueError):
            self.control("exit")
        return t


# --------------------------------------------------------------------------- the router


class Router:
    def __init__(self, lab: nslab.Lab) -> None:
        self.lab = lab
        self.kind = lab.router_software

    def bfd_state(self, peer: str) -> str:
        if self.kind == "frr":
            for p in self.lab.vtysh_json("show bfd peers json"):
                if p.get("peer") == peer:
                    return str(p.get("status"))
            return "absent"
        out = self.lab.routing().birdc("show bfd sessions")  # type: ignore[attr-defined]
        for line in out.splitlines():
            words = line.split()
            if words and words[0] == peer:
                return words[2].lower()
        return "absent"


# --------------------------------------------------------------------------- measuring


class Watch:
    """Polls the router's kernel table for the VIP every 10 ms in a thread: when it went,
    when it came back."""

    def __init__(self, lab: nslab.Lab) -> None:
        self.lab = lab
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        reader = nslab.RouteReader(self.lab.ns(self.lab.router or "r1"))
        try:
            while not self._stop.is_set():
                self.samples.append((time.time(), reader.route(f"{VIP}/32") is not None))
                time.sleep(0.01)
        finally:
            reader.close()

    def gone_at(self, after: float) -> float | None:
        for t, present in self.samples:
            if t >= after and not present:
                return t
        return None

    def back_at(self, after: float) -> float | None:
        gone = self.gone_at(after)
        if gone is None:
            return None
        for t, present in self.samples:
            if t > gone and present:
                return t
        return None

    def present_now(self) -> bool:
        return bool(self.samples and self.samples[-1][1])


class ClientLoop:
    """A new TCP connection to VIP:8080 from the client namespace every 20 ms (0.5 s timeout)."""

    def __init__(self, lab: nslab.Lab, interval: float = 0.02) -> None:
        self.lab = lab
        self.interval = interval
        self.results: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            ok = True
            try:
                with self.lab.socket("client") as s:
                    s.settimeout(0.5)
                    s.connect((VIP, PORT))
            except OSError:
                ok = False
            self.results.append((t, ok))
            self._stop.wait(max(0.0, self.interval - (time.time() - t)))

    def failed(self, after: float = 0.0) -> int:
        return sum(1 for t, ok in self.results if t >= after and not ok)

    def total(self, after: float = 0.0) -> int:
        return sum(1 for t, _ in self.results if t >= after)


@dataclass
class Outcome:
    event: str
    dropped: bool
    drop_after: float | None
    """Seconds from the event to the VIP gone from the router's kernel."""
    back_after: float | None
    failed: int
    total: int
    eor_after: float | None = None
    """Planned restarts: seconds from the event to the new speaker's End-of-RIB."""

    def cell(self) -> str:
        if not self.dropped:
            return f"kept, {self.failed}/{self.total} failed"
        assert self.drop_after is not None
        return f"dropped {self.drop_after:.2f}s, {self.failed}/{self.total} failed"


@contextlib.contextmanager
def measuring(lab: nslab.Lab) -> Iterator[tuple[Watch, ClientLoop]]:
    with Watch(lab) as watch, ClientLoop(lab) as client:
        time.sleep(0.2)
        yield watch, client


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - t0
