"""`bgpvip run` as a real process, with a fake ExaBGP and a fake speaker that record what
happens to them: the long-lived process loads only the standard library and sleeps while all
is well, and it keeps the rules it always had: SIGHUP to the speaker only, on SIGTERM the
speaker first (with the stop marker in place) and then ExaBGP, and ExaBGP's fate as its exit
status. No root needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

# ExaBGP's stand-in: runs the speaker's stand-in as ExaBGP runs its API process, records the
# signals it gets and the environment `bgpvip run` gave it, exits when told to.
FAKE_EXABGP = """\
#!{python}
import os, signal, subprocess, sys, time
runtime = os.path.dirname(sys.argv[1])
def event(text):
    with open(os.path.join(runtime, "events.log"), "a") as f:
        f.write(text + "\\n")
with open(os.path.join(runtime, "exabgp.pid"), "w") as f:
    f.write(str(os.getpid()))
event(f"exabgp start conf={{sys.argv[1]}} ack={{os.environ.get('exabgp.api.ack')}}")
speaker = subprocess.Popen([sys.executable, {speaker!r}, runtime])
def on_term(signum, frame):
    event(f"exabgp SIGTERM speaker_done={{not os.path.exists(os.path.join(runtime, 'speaker.pid'))}}")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGHUP, lambda s, f: event("exabgp SIGHUP"))
exit_code = os.environ.get("FAKE_EXABGP_EXIT")
while True:
    if exit_code is not None and os.path.exists(os.path.join(runtime, "speaker.pid")):
        speaker.kill()
        speaker.wait()
        sys.exit(int(exit_code))
    time.sleep(0.05)
"""

FAKE_SPEAKER = """\
import os, signal, sys, time
runtime = sys.argv[1]
def event(text):
    with open(os.path.join(runtime, "events.log"), "a") as f:
        f.write(text + "\\n")
def on_term(signum, frame):
    event(f"speaker SIGTERM stop_marker={os.path.exists(os.path.join(runtime, 'stopping'))}")
    time.sleep(0.3)  # withdrawing
    os.unlink(os.path.join(runtime, "speaker.pid"))
    event("speaker exit")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGHUP, lambda s, f: event("speaker SIGHUP"))
with open(os.path.join(runtime, "speaker.pid.tmp"), "w") as f:
    f.write(str(os.getpid()))
os.replace(os.path.join(runtime, "speaker.pid.tmp"), os.path.join(runtime, "speaker.pid"))
event("speaker ready")
while True:
    signal.pause()
"""


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


class Run:
    """`bgpvip run` with the fakes, and what they recorded."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        speaker = tmp_path / "fake_speaker.py"
        speaker.write_text(FAKE_SPEAKER)
        exabgp = tmp_path / "fake-exabgp"
        exabgp.write_text(FAKE_EXABGP.format(python=sys.executable, speaker=str(speaker)))
        exabgp.chmod(0o755)
        self.runtime = tmp_path / "run"
        doc = {
            "bgp": {
                "local_as": 65100,
                "peers": [{"address": "192.0.2.1", "peer_as": 65000, "local_address": "192.0.2.2"}],
            },
            "vips": [{"name": "web", "address": "198.51.100.10", "interface": None}],
            "runtime_dir": str(self.runtime),
            "drain_file": str(tmp_path / "drain"),
            "shutdown_delay": 0.5,
            "exabgp": {"executable": str(exabgp)},
        }
        config = tmp_path / "config.yaml"
        config.write_text(json.dumps(doc))
        self.stderr = tmp_path / "stderr.log"
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bgpvip", "run", "--config", str(config)],
                stderr=err,
                env={**os.environ, **env},
            )

    def events(self) -> list[str]:
        try:
            return (self.runtime / "events.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def wait_ready(self) -> None:
        wait_until(f"the fake speaker never started: {self.log()}", lambda: "speaker ready" in self.events())

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def stop(self) -> None:
        """End whatever is left, should a test fail half-way (the fakes recorded their pids)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for name in ("speaker.pid", "exabgp.pid"):
            try:
                os.kill(int((self.runtime / name).read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


@pytest.fixture
def bgpvip_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(**env: str) -> Run:
        run = Run(tmp_path, env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.stop()


def voluntary_switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for {pid}")


def test_the_long_lived_process_loads_only_the_standard_library() -> None:
    """What `bgpvip run` becomes imports nothing outside the standard library besides its own
    few modules: not pydantic, the config model, the renderer or pyroute2."""
    code = textwrap.dedent(
        """
        import json, sys
        before = set(sys.modules)
        import bgpvip.launcher.supervisor
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    ours = {m for m in loaded if m.split(".")[0] == "bgpvip"}
    others = [m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names and m not in ours]
    assert others == [], others
    assert ours == {
        "bgpvip",
        "bgpvip.launcher",
        "bgpvip.launcher.supervisor",
        "bgpvip.logs",
        "bgpvip.runfiles",
    }


def test_bgpvip_run_becomes_the_supervisor_and_sleeps_while_all_is_well(
    bgpvip_run: Callable[..., Run],
) -> None:
    run = bgpvip_run()
    run.wait_ready()
    pid = run.proc.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:3] == [b"-m", b"bgpvip.launcher"], cmdline  # the same process, a fresh program
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "pydantic_core" not in maps
    assert run.events()[0] == f"exabgp start conf={run.runtime / 'exabgp.conf'} ack=true"
    before = voluntary_switches(pid)
    time.sleep(1.0)
    assert voluntary_switches(pid) == before, "the supervisor woke up with nothing to do"


def test_sighup_goes_to_the_speaker_only(bgpvip_run: Callable[..., Run]) -> None:
    run = bgpvip_run()
    run.wait_ready()
    run.proc.send_signal(signal.SIGHUP)
    wait_until("the speaker got no SIGHUP", lambda: "speaker SIGHUP" in run.events())
    run.proc.send_signal(signal.SIGHUP)
    wait_until("the speaker got one SIGHUP", lambda: run.events().count("speaker SIGHUP") == 2)
    assert "exabgp SIGHUP" not in run.events()
    assert run.proc.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_goes_to_the_speaker_first_then_exabgp_and_exits_0(
    bgpvip_run: Callable[..., Run], signum: int
) -> None:
    run = bgpvip_run()
    run.wait_ready()
    run.proc.send_signal(signum)
    run.proc.send_signal(signum)  # a second one changes nothing
    assert run.proc.wait(timeout=30) == 0, run.log()
    assert run.events()[1:] == [
        "speaker ready",
        "speaker SIGTERM stop_marker=True",
        "speaker exit",
        "exabgp SIGTERM speaker_done=True",
    ]
    assert not (run.runtime / "stopping").exists()
    assert "event=stopped exabgp_exit=0" in run.log()


@pytest.mark.parametrize(("exabgp_exit", "expected"), [("3", 3), ("0", 1)])
def test_exabgp_exiting_on_its_own_is_the_exit_status(
    bgpvip_run: Callable[..., Run], exabgp_exit: str, expected: int
) -> None:
    """ExaBGP's own status, or 1 when it exited 0 without being asked: systemd restarts either."""
    run = bgpvip_run(FAKE_EXABGP_EXIT=exabgp_exit)
    assert run.proc.wait(timeout=30) == expected, run.log()
    assert f"event=exabgp-exited code={exabgp_exit}" in run.log()
