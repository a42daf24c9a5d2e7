"""`bgpvip speaker` as a real process, with this test playing ExaBGP on its stdin/stdout.

Covers the lifecycle rules ExaBGP imposes: never crash-loop on a bad config (ExaBGP gives up
after five helper deaths in about a minute), start as soon as the file is fixed, and exit
cleanly when ExaBGP goes away (EOF, `shutdown`, or a new parent). The VIP has
`interface: null`, so no root is needed.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bgpvip.launcher.prepare import speaker_command
from bgpvip.runfiles import STOP_MARKER

pytestmark = pytest.mark.timeout(60)

VIP = "198.51.100.10"


def config_doc(tmp_path: Path, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "bgp": {
            "local_as": 65100,
            "peers": [{"address": "192.0.2.1", "peer_as": 65000, "local_address": "192.0.2.2"}],
        },
        "vips": [{"name": "web", "address": VIP, "interface": None}],
        "runtime_dir": str(tmp_path / "run"),
        "drain_file": str(tmp_path / "drain"),
        "status": {"enabled": False},
        "shutdown_delay": 0.1,
    }
    doc.update(over)
    return doc


class FakeExaBgpPipes:
    """The ExaBGP end of the API pipes: reads commands, answers `done`."""

    def __init__(self, argv: list[str], *, stderr_file: Path | None = None, **kw: Any) -> None:
        self._stderr_file = stderr_file
        err: Any = stderr_file.open("wb") if stderr_file is not None else subprocess.PIPE
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, **kw)
        if stderr_file is not None:
            err.close()
        assert self.proc.stdout is not None and self.proc.stdin is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = b""

    def read_line(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"no line from the speaker; stderr so far:\n{self.stderr()}")
                chunk = self.proc.stdout.read()
                if not chunk:
                    raise EOFError(f"speaker closed stdout; stderr:\n{self.stderr()}")
                self._buf += chunk
        finally:
            sel.close()
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        if self._stderr_file is not None:
            return self._stderr_file.read_text(errors="replace")
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def speaker_argv(config: Path) -> list[str]:
    """The command `bgpvip run` has ExaBGP start."""
    return speaker_command(config)


def cli_argv(config: Path) -> list[str]:
    """`bgpvip speaker`, for people who run ExaBGP themselves."""
    return [sys.executable, "-m", "bgpvip", "speaker", "--config", str(config)]


def neighbors_json(fsm: str = "ESTABLISHED", families: tuple[str, ...] = ("ipv4 unicast",)) -> str:
    """ExaBGP 5.0.15's `show neighbor json` for the one peer of `config_doc` (trimmed)."""
    return json.dumps(
        [
            {
                "state": "up" if fsm == "ESTABLISHED" else "down",
                "fsm": fsm,
                "local": {"families": {"ipv4 unicast": True}, "address": "192.0.2.2"},
                "peer": {"families": {"ipv4 unicast": fsm == "ESTABLISHED"}, "address": "192.0.2.1"},
                "families": list(families) if fsm == "ESTABLISHED" else [],
            }
        ]
    )


def handshake_and_announce(exa: FakeExaBgpPipes, neighbors: str | None = None) -> str:
    """What a speaker asks ExaBGP when it starts, then its first announcement."""
    assert exa.read_line() == "show adj-rib out extensive"
    exa.send("done")
    assert exa.read_line() == "show neighbor json"
    exa.send(neighbors or neighbors_json())
    exa.send("done")
    line = exa.read_line()
    exa.send("done")
    return line


@pytest.mark.parametrize("argv", [speaker_argv, cli_argv], ids=["bgpvip.speaker", "bgpvip-speaker-cli"])
def test_announces_and_exits_0_on_eof(tmp_path: Path, argv: Callable[[Path], list[str]]) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config_doc(tmp_path)))
    exa = FakeExaBgpPipes(argv(cfg))
    try:
        line = handshake_and_announce(exa)
        assert line.startswith("announce attributes next-hop self") and line.endswith(f"nlri {VIP}/32")
        exa.send(
            '{"exabgp": "5.0.0", "type": "state", "neighbor": {"address": {"peer": "192.0.2.1"}, "state": "up"}}'
        )
        assert exa.proc.stdin is not None
        exa.proc.stdin.close()
        assert exa.proc.wait(timeout=10) == 0
        assert "event=exabgp-gone" in exa.stderr()
    finally:
        exa.close()


@pytest.mark.parametrize(
    ("kubernetes", "says"),
    [
        ({"enabled": True, "kubeconfig": "/nonexistent/kubeconfig"}, "No such file"),
        ({"enabled": True}, "Service host/port is not set"),
    ],
    ids=["missing-kubeconfig", "not-in-a-cluster"],
)
def test_a_kubernetes_connection_that_cannot_be_built_is_an_api_outage(
    tmp_path: Path, kubernetes: dict[str, Any], says: str
) -> None:
    """The VIPs are announced and stay up; the Service side waits (fail static), logs why and
    retries; the process neither exits nor crash-loops."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config_doc(tmp_path, kubernetes=kubernetes)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    exa = FakeExaBgpPipes(speaker_argv(cfg), env=env)
    try:
        line = handshake_and_announce(exa)
        assert line.endswith(f"nlri {VIP}/32"), "the VIP side runs without the API"
        time.sleep(1.5)  # real process, real time: a crash-looping speaker would be gone by now
        assert exa.proc.poll() is None, exa.stderr()
        assert exa.proc.stdin is not None
        exa.proc.stdin.close()
        assert exa.proc.wait(timeout=10) == 0
        err = exa.stderr()
        assert "API unavailable" in err and says in err, err
        assert "Traceback" not in err, err
    finally:
        exa.close()


def test_exits_on_shutdown_notice(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config_doc(tmp_path)))
    exa = FakeExaBgpPipes(speaker_argv(cfg))
    try:
        handshake_and_announce(exa)
        exa.send("shutdown 1234 1")
        assert exa.proc.wait(timeout=10) == 0
    finally:
        exa.close()


@pytest.mark.parametrize("kind", ["invalid-field", "impossible-date"])
def test_bad_config_waits_instead_of_crash_looping_then_starts_when_fixed(tmp_path: Path, kind: str) -> None:
    cfg = tmp_path / "config.yaml"
    bad = config_doc(tmp_path)
    if kind == "invalid-field":
        bad["vips"][0]["checks"] = [{"type": "tcp", "port": 80, "interval": 0}]
        text, words = json.dumps(bad), "vips[0].checks[0].interval: must be >= 0.005"
    else:  # PyYAML raised ValueError for it, which crashed the speaker at start
        text, words = json.dumps(bad)[:-1] + ', "node_name": 2024-99-99}', "cannot read '2024-99-99'"
    cfg.write_text(text)
    exa = FakeExaBgpPipes(speaker_argv(cfg))
    try:
        time.sleep(1.5)
        assert exa.proc.poll() is None, "a bad config must not make the helper exit (ExaBGP's respawn budget)"
        exa.send(
            '{"exabgp": "5.0.0", "type": "state", "neighbor": {"address": {"peer": "192.0.2.1"}, "state": "up"}}'
        )
        cfg.write_text(json.dumps(config_doc(tmp_path)))
        line = handshake_and_announce(exa)
        assert line.endswith(f"nlri {VIP}/32")
        assert exa.proc.stdin is not None
        exa.proc.stdin.close()
        assert exa.proc.wait(timeout=10) == 0
        assert words in exa.stderr()
    finally:
        exa.close()


def test_bad_reloads_keep_the_speaker_running_on_its_last_good_config(tmp_path: Path) -> None:
    """Files that raised ValueError or RecursionError in the reload task killed the speaker
    (and ExaBGP respawned it into the same crash): each is rejected, the speaker stays, and a
    good file afterwards is applied."""
    cfg = tmp_path / "config.yaml"
    good = json.dumps(config_doc(tmp_path))
    cfg.write_text(good)
    log = tmp_path / "speaker.log"
    exa = FakeExaBgpPipes(speaker_argv(cfg), stderr_file=log)
    bad_files = [
        good[:-1] + ', "node_name": 2024-99-99}',
        good[:-1] + ', "priority": ' + "9" * 5000 + "}",
        good[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}",
    ]
    try:
        handshake_and_announce(exa)
        for n, text in enumerate(bad_files, start=1):
            cfg.write_text(text)
            exa.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while exa.stderr().count("event=reload-rejected") < n:
                assert exa.proc.poll() is None, f"the speaker died on a bad reload:\n{exa.stderr()}"
                assert time.monotonic() < deadline, f"no reload-rejected:\n{exa.stderr()}"
                time.sleep(0.05)
        assert "Traceback" not in exa.stderr()
        second = "198.51.100.11"
        cfg.write_text(
            json.dumps(
                config_doc(
                    tmp_path,
                    vips=[{"address": VIP, "interface": None}, {"address": second, "interface": None}],
                )
            )
        )
        exa.proc.send_signal(signal.SIGHUP)
        line = exa.read_line()
        exa.send("done")
        assert line.endswith(f"nlri {second}/32")
        assert exa.proc.stdin is not None
        exa.proc.stdin.close()
        assert exa.proc.wait(timeout=10) == 0
    finally:
        exa.close()


def test_sigterm_withdraws_and_exits_0(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config_doc(tmp_path)))
    exa = FakeExaBgpPipes(speaker_argv(cfg))
    try:
        handshake_and_announce(exa)
        exa.proc.terminate()
        line = exa.read_line()
        assert line == f"withdraw attributes nlri {VIP}/32"
        exa.send("done")
        assert exa.proc.wait(timeout=10) == 0
        assert not (tmp_path / "run" / "speaker.pid").exists()
    finally:
        exa.close()


def test_exits_when_its_parent_changes(tmp_path: Path) -> None:
    """ExaBGP killed with SIGKILL: the speaker is reparented and must not linger."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config_doc(tmp_path)))
    pidfile = tmp_path / "pid"
    # an intermediate parent that starts the speaker (stdin kept open by us) and dies at once
    launcher = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen({speaker_argv(cfg)!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", launcher], stdin=subprocess.PIPE)
    try:
        parent.wait(timeout=10)
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state == "Z":
                break
            time.sleep(0.1)
        else:
            os.kill(pid, 9)
            pytest.fail("the speaker kept running after its parent died")
    finally:
        assert parent.stdin is not None
        parent.stdin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int, path: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                body: str = answer.read().decode()
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_status(port: int, cond: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = json.loads(get(port, "/status"))
        if (status["decisions"] and cond(status)) or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_a_respawned_speaker_knows_the_sessions_from_exabgp(tmp_path: Path) -> None:
    """ExaBGP restarts its helper while the session stays up: no `up` event will come, so the
    new speaker asks (`show neighbor json`); the peer must not read `unknown`, nor vanish from
    the metrics."""
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config_doc(tmp_path, status={"enabled": True, "port": port})))
    exa = FakeExaBgpPipes(speaker_argv(cfg))
    try:
        handshake_and_announce(exa)
        status = wait_status(port, lambda s: s["decisions"][0]["announced"])
        (peer,) = status["peers"]
        assert (peer["state"], peer["families_negotiated"], peer["reason"]) == ("up", ["ipv4"], "")
        decision = status["decisions"][0]
        assert (decision["announced"], decision["reason"]) == (True, "healthy")
        metrics = get(port, "/metrics")
        assert 'bgpvip_peer_up{peer="192.0.2.1"} 1.0' in metrics
        assert 'bgpvip_vip_announced{address="198.51.100.10",vip="web"} 1.0' in metrics
    finally:
        exa.close()


def test_a_session_up_without_the_family_is_no_announcement(tmp_path: Path) -> None:
    """A router whose OPEN had no capabilities: the session is established, ExaBGP settles on
    no family and sends nothing. bgpvip must say so, not claim the route is announced."""
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config_doc(tmp_path, status={"enabled": True, "port": port})))
    exa = FakeExaBgpPipes(speaker_argv(cfg))
    try:
        handshake_and_announce(exa, neighbors_json(families=()))
        status = wait_status(port, lambda s: s["decisions"][0]["reason"] != "checkPending")
        decision = status["decisions"][0]
        assert (decision["announce"], decision["announced"], decision["reason"]) == (
            True,
            False,
            "familyNotNegotiated",
        )
        assert "192.0.2.1 up without ipv4 unicast" in decision["detail"]
        (peer,) = status["peers"]
        assert peer["state"] == "up"
        assert peer["reason"].startswith("up without ipv4 unicast")
        metrics = get(port, "/metrics")
        assert 'bgpvip_peer_up{peer="192.0.2.1"} 0.0' in metrics
        assert 'bgpvip_peer_established{peer="192.0.2.1"} 1.0' in metrics
        assert 'bgpvip_peer_family_up{family="ipv4",peer="192.0.2.1"} 0.0' in metrics
        assert 'bgpvip_vip_announced{address="198.51.100.10",vip="web"} 0.0' in metrics
        # the session comes back with the family: now it is announced
        exa.send(
            '{"exabgp": "5.0.0", "type": "state", "neighbor": {"address": {"peer": "192.0.2.1"}, '
            '"state": "down", "reason": "notification received (6,4)"}}'
        )
        exa.send(
            '{"exabgp": "5.0.0", "type": "negotiated", "neighbor": {"address": {"peer": "192.0.2.1"}, '
            '"negotiated": {"families": ["ipv4 unicast"], "refresh": "normal"}}}'
        )
        exa.send(
            '{"exabgp": "5.0.0", "type": "state", "neighbor": {"address": {"peer": "192.0.2.1"}, "state": "up"}}'
        )
        status = wait_status(port, lambda s: s["decisions"][0]["announced"])
        assert status["decisions"][0]["reason"] == "healthy"
        assert 'bgpvip_peer_up{peer="192.0.2.1"} 1.0' in get(port, "/metrics")
    finally:
        exa.close()


def test_stop_by_bgpvip_run_ends_the_sessions_with_cease(tmp_path: Path) -> None:
    """`bgpvip run` leaves its stop marker and sends SIGTERM: withdraw, wait, then Cease to the
    established peers, and `shutdown` to ExaBGP as soon as ExaBGP reports it sent."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config_doc(tmp_path)))
    exa = FakeExaBgpPipes(speaker_argv(cfg))
    try:
        handshake_and_announce(exa)
        (tmp_path / "run" / STOP_MARKER).touch()
        exa.proc.terminate()
        assert exa.read_line() == f"withdraw attributes nlri {VIP}/32"
        exa.send("done")
        assert exa.read_line() == "neighbor * teardown 2"
        exa.send("done")
        exa.send(
            '{"exabgp": "5.0.0", "type": "notification", "neighbor": {"address": {"peer": "192.0.2.1"}, '
            '"direction": "send", "notification": {"code": 6, "subcode": 2, "data": "0x", "message": ""}}}'
        )
        assert exa.read_line() == "shutdown"
        exa.send("shutdown in progress")
        exa.send("done")
        assert exa.proc.wait(timeout=10) == 0
        log = exa.stderr()
        assert "event=cease peers=192.0.2.1 notified=True" in log
        assert log.index("event=withdraw") < log.index("event=stop-wait") < log.index("event=cease")
    finally:
        exa.close()


def test_a_stop_without_bgpvip_run_leaves_the_sessions_to_exabgp(tmp_path: Path) -> None:
    """SIGTERM to the speaker alone (ExaBGP respawns it): withdraw, but no Cease."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(config_doc(tmp_path)))
    exa = FakeExaBgpPipes(speaker_argv(cfg))
    try:
        handshake_and_announce(exa)
        exa.proc.terminate()
        assert exa.read_line() == f"withdraw attributes nlri {VIP}/32"
        exa.send("done")
        assert exa.proc.wait(timeout=10) == 0
        assert "event=cease" not in exa.stderr()
    finally:
        exa.close()
