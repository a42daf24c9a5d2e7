"""bgpvip's BFD against real routers: FRR 8.4 bfdd on the lab's r1, and BIRD 2 `protocol bfd`
in a pair of namespaces of this module's own. No BGP and no speaker yet: a small runner
(`helpers/bfd_runner.py`) runs the adapter on an asyncio loop inside the node's namespace.

What the routers report is the assertion: `vtysh -c 'show bfd peers json'`, `birdc show bfd
sessions` and BIRD's log of session events. Timing figures are printed (`-s` shows them).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nslab
import pytest

from tests.lab.conftest import HELPERS_DIR, new_prefix

DETECTION = 0.3  # 100 ms x 3, both sides
SLACK = 0.1
"""Scheduling slack of the router's own timer on a shared 2-core machine."""
RUNNER = HELPERS_DIR / "bfd_runner.py"


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


class Runner:
    """bfd_runner.py in a namespace; its JSON lines are collected by a reader thread."""

    def __init__(self, netns: str, sessions: list[str], *extra: str) -> None:
        argv = ["ip", "netns", "exec", netns, sys.executable, str(RUNNER)]
        for s in sessions:
            argv += ["--session", s]
        self.proc = subprocess.Popen(
            [*argv, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.log: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr or []), daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.expect(lambda e: e["event"] == "started", 20)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            self.log.append(event)
            self.events.put(event)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def expect(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"runner: no matching event in {timeout}s; stderr: {''.join(self.stderr)[-2000:]}"
                ) from None
            if match(event):
                return event

    def status(self) -> list[dict[str, Any]]:
        self.send(cmd="status")
        return list(self.expect(lambda e: e["event"] == "status", 5)["sessions"])

    def transitions(self) -> list[dict[str, Any]]:
        return [e for e in self.log if e["event"] == "transition"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.send(cmd="quit")
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        for t in self._threads:
            t.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


# --------------------------------------------------------------------------- the routers


class Frr:
    """r1 of the lab with bfdd, and static BFD peers for n1 (no BGP needed)."""

    name = "frr"

    def __init__(self, lab: nslab.Lab) -> None:
        self.lab = lab
        self.node_ns = lab.ns("n1")
        self.local = {4: lab.node_ip("n1", 4), 6: lab.node_ip("n1", 6)}
        self.router = {4: lab.peer_ip("n1", 4), 6: lab.peer_ip("n1", 6)}

    def sessions(self) -> dict[str, dict[str, Any]]:
        return {p["peer"]: p for p in self.lab.vtysh_json("show bfd peers json")}

    def state(self, family: int) -> str:
        return str(self.sessions()[self.local[family]]["status"])


class Bird:
    """BIRD 2 in a namespace of its own, linked to a node namespace by a veth pair."""

    name = "bird"

    def __init__(self, prefix: str, workdir: Path) -> None:
        self.router_ns, self.node_ns = f"{prefix}r", f"{prefix}n"
        self.local = {4: "10.88.0.2", 6: "fd88::2"}
        self.router = {4: "10.88.0.1", 6: "fd88::1"}
        self.workdir = workdir
        self.ctl = workdir / "bird.ctl"
        self.logfile = workdir / "bird.log"
        self.pid: int | None = None

    def up(self) -> None:
        for ns in (self.router_ns, self.node_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            "-n",
            self.router_ns,
            "link",
            "add",
            "eth1",
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "netns",
            self.node_ns,
        )
        for ns, side in ((self.router_ns, self.router), (self.node_ns, self.local)):
            _ip("-n", ns, "addr", "add", f"{side[4]}/24", "dev", "eth1")
            _ip("-n", ns, "-6", "addr", "add", f"{side[6]}/64", "dev", "eth1", "nodad")
            _ip("-n", ns, "link", "set", "eth1", "up")
        conf = self.workdir / "bird.conf"
        conf.write_text(
            f"""router id {self.router[4]};
log "{self.logfile}" all;
timeformat base iso long ms;
timeformat log iso long ms;
timeformat protocol iso long ms;
protocol device {{}}
protocol bfd {{
  debug {{ events }};
  interface "eth1" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
  neighbor {self.local[4]} dev "eth1" local {self.router[4]};
  neighbor {self.local[6]} dev "eth1" local {self.router[6]};
}}
"""
        )
        pidfile = self.workdir / "bird.pid"
        _ip("netns", "exec", self.router_ns, "bird", "-c", str(conf), "-s", str(self.ctl), "-P", str(pidfile))
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", 5, "bird's pid file")
        self.pid = int(pidfile.read_text())
        wait_until(lambda: "bfd1" in self.birdc("show bfd sessions"), 5, "bird answering")

    def down(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not Path(f"/proc/{self.pid}").exists(), 5, "bird to exit")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        for ns in (self.router_ns, self.node_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def birdc(self, cmd: str) -> str:
        return subprocess.run(
            ["birdc", "-s", str(self.ctl), *cmd.split()],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def sessions(self) -> dict[str, dict[str, Any]]:
        """`show bfd sessions`: address -> state, since, interval (s), timeout (s)."""
        out: dict[str, dict[str, Any]] = {}
        for line in self.birdc("show bfd sessions").splitlines():
            m = re.match(r"^(\S+)\s+(\S+)\s+(\w+)\s+(\S+ \S+)\s+([\d.]+)\s+([\d.]+)\s*$", line)
            if m:
                out[m[1]] = {
                    "interface": m[2],
                    "state": m[3],
                    "since": m[4],
                    "interval": float(m[5]),
                    "timeout": float(m[6]),
                }
        return out

    def state(self, family: int) -> str:
        return str(self.sessions()[self.local[family]]["state"]).lower()

    def events(self) -> list[tuple[float, str, str, str]]:
        """(wall time, address, old state, new state) from BIRD's log."""
        found = []
        for line in self.logfile.read_text().splitlines():
            m = re.match(r"^(\S+ \S+) .*Session to (\S+) changed state from (\w+) to (\w+)", line)
            if m:
                wall = datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
                found.append((wall, m[2], m[3], m[4]))
        return found


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def frr() -> Iterator[Frr]:
    lab = nslab.Lab(os.environ.get("BGPVIP_LAB_TOPOLOGY", nslab.DEFAULT_TOPOLOGY), new_prefix(), bfd=True)
    try:
        lab.up()
        router = Frr(lab)
        lines = ["configure terminal", "bfd"]
        for family in (4, 6):
            lines += [
                f"peer {router.local[family]} local-address {router.router[family]} interface eth1",
                "receive-interval 100",
                "transmit-interval 100",
                "detect-multiplier 3",
                "exit",
            ]
        lab.vtysh([*lines, "end"])
        yield router
    finally:
        lab.down()


@pytest.fixture(scope="module")
def bird(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bird]:
    if shutil.which("bird") is None or shutil.which("birdc") is None:
        pytest.skip("BIRD 2 is not installed (bird, birdc)")
    router = Bird(new_prefix().replace("bvt", "bvb"), tmp_path_factory.mktemp("bird"))
    try:
        router.up()
        yield router
    finally:
        router.down()


@pytest.fixture(params=["frr", "bird"])
def router(request: pytest.FixtureRequest) -> Frr | Bird:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture
def runner(router: Frr | Bird) -> Iterator[Runner]:
    sessions = [f"{router.router[f]},{router.local[f]}" for f in (4, 6)]
    r = Runner(router.node_ns, sessions)
    try:
        wait_until(lambda: all(router.state(f) == "up" for f in (4, 6)), 15, f"{router.name} sessions Up")
        wait_until(lambda: not any(s["polling"] for s in r.status()), 5, "the polls for the fast rate")
        yield r
    finally:
        r.stop()
        if r.proc.returncode not in (0, None):
            print("".join(r.stderr)[-3000:])


# --------------------------------------------------------------------------- the tests


def test_sessions_come_up_ipv4_and_ipv6(router: Frr | Bird, runner: Runner) -> None:
    ours = {s["peer"]: s for s in runner.status()}
    for family in (4, 6):
        s = ours[router.router[family]]
        assert s["state"] == "Up"
        assert (s["transmit_interval_ms"], s["receive_interval_ms"], s["detection_time_ms"]) == (
            100,
            100,
            300,
        )
        assert s["discarded"] == 0
    reported = router.sessions()
    print(f"\n{router.name} reports: {json.dumps(reported, indent=1)}")
    for family in (4, 6):
        theirs = reported[router.local[family]]
        if isinstance(router, Frr):
            assert theirs["status"] == "up"
            assert theirs["remote-id"] == ours[router.router[family]]["local_discriminator"]
            assert theirs["id"] == ours[router.router[family]]["remote_discriminator"]
            assert (theirs["remote-transmit-interval"], theirs["remote-receive-interval"]) == (100, 100)
            assert theirs["remote-detect-multiplier"] == 3
        else:
            assert theirs["state"] == "Up"
            assert (theirs["interval"], theirs["timeout"]) == (0.1, 0.3)


def test_a_stalled_loop_is_seen_down_within_the_detection_time(router: Frr | Bird, runner: Runner) -> None:
    """Fate sharing: a blocked event loop sends nothing, and the router notices."""
    runner.send(cmd="pause", seconds=1.5)
    stall = runner.expect(lambda e: e["event"] == "paused", 5)["wall"]
    # Poll the router back to back; the router went down no later than the end of the first
    # query that saw it, minus that query's own duration (it may have read the state at its end).
    before = after = time.time()
    while all(router.state(f) == "up" for f in (4, 6)):
        before = time.time()
        if before - stall > 1.4:
            pytest.fail(f"{router.name} still sees the session Up {before - stall:.2f}s into the stall")
    after = time.time()
    seen = after - stall
    bound = seen - (after - before)
    print(
        f"\n{router.name}: Down seen {seen * 1000:.0f} ms after the stall began (query {1000 * (after - before):.0f} ms)"
    )
    assert bound <= DETECTION + SLACK
    if isinstance(router, Frr):
        down = [p for p in router.sessions().values() if p["status"] == "down"]
        assert down and all(p["diagnostic"] == "control detection time expired" for p in down)
    else:
        wait_until(
            lambda: any(e[3] == "Down" and e[0] > stall for e in router.events()), 2, "BIRD's log of the Down"
        )
        first = min(e[0] for e in router.events() if e[3] == "Down" and e[0] > stall)
        print(f"{router.name}: its log says Down {1000 * (first - stall):.0f} ms after the stall began")
        assert first - stall <= DETECTION + SLACK
    # when the loop runs again, the sessions come back by themselves
    runner.expect(lambda e: e["event"] == "resumed", 5)
    wait_until(lambda: all(router.state(f) == "up" for f in (4, 6)), 10, f"{router.name} Up again")


def test_admin_down_is_reported_as_a_planned_stop(router: Frr | Bird, runner: Runner) -> None:
    runner.send(cmd="admin_down")
    runner.expect(lambda e: e["event"] == "done", 5)
    ours = [e for e in runner.transitions() if e["new"] == "AdminDown"]
    assert len(ours) == 2 and all(e["diag"] == 7 and not e["failure"] for e in ours)
    wait_until(lambda: all(router.state(f) == "down" for f in (4, 6)), 2, f"{router.name} Down")
    time.sleep(2.0)  # AdminDown keeps flowing at the slow rate: the router must not come back to Init
    reported = router.sessions()
    print(f"\n{router.name} after AdminDown: {json.dumps(reported, indent=1)}")
    for family in (4, 6):
        theirs = reported[router.local[family]]
        if isinstance(router, Frr):
            assert theirs["status"] == "down"
            assert theirs["remote-diagnostic"] == "administratively down"
            assert theirs["diagnostic"] == "neighbor signaled session down"
        else:
            assert theirs["state"] == "Down"
            assert theirs["interval"] == 1.0  # BIRD is back at its idle rate, not running a handshake
    runner.send(cmd="admin_up")
    wait_until(lambda: all(router.state(f) == "up" for f in (4, 6)), 10, f"{router.name} Up again")


def test_timer_change_runs_a_poll_the_router_follows(router: Frr | Bird, runner: Runner) -> None:
    before = {e["name"] for e in runner.transitions()}
    count = len(runner.transitions())
    runner.send(cmd="reconfigure", tx=300, rx=200, mult=4)
    runner.expect(lambda e: e["event"] == "done", 5)
    if isinstance(router, Frr):

        def applied() -> bool:
            return all(
                (p["remote-transmit-interval"], p["remote-receive-interval"], p["remote-detect-multiplier"])
                == (300, 200, 4)
                for p in router.sessions().values()
            )

    else:

        def applied() -> bool:
            # BIRD: its interval = max(its TX 100, our RX 200); its timeout = 4 x max(its RX, our TX 300)
            return all((s["interval"], s["timeout"]) == (0.2, 1.2) for s in router.sessions().values())

    wait_until(applied, 5, f"{router.name} applying the new timers")
    print(f"\n{router.name} after the change: {json.dumps(router.sessions(), indent=1)}")
    ours = {s["peer"]: s for s in runner.status()}
    for family in (4, 6):
        s = ours[router.router[family]]
        assert s["state"] == "Up" and not s["polling"]
        assert s["transmit_interval_ms"] == 300
    assert len(runner.transitions()) == count, f"a state change during the poll: {before}"
    assert all(router.state(f) == "up" for f in (4, 6))
