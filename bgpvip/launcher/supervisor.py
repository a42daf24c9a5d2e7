"""`bgpvip run`'s long-lived part: start ExaBGP, pass signals on, and stop in the right order.

I/O side, standard library only: this process waits on ExaBGP for the life of the node, so it
loads nothing else (bgpvip/launcher/prepare.py renders the configuration and then replaces
itself with this program, `python -m bgpvip.launcher`). ExaBGP runs as our child with
bgpvip's speaker as its API process. On SIGTERM/SIGINT the order matters: first the
speaker withdraws every route and waits `shutdown_delay` (routers converge while the host
still answers on its VIPs), then it closes the sessions with Cease and has ExaBGP stop. A stop
marker in the runtime directory keeps a speaker that ExaBGP respawns in the meantime from
announcing again.
SIGHUP is passed to the speaker only (it reloads VIPs and checks); ExaBGP would treat SIGHUP
as a reload of its own configuration.

Between events the process sleeps in sigwaitinfo(): the signals it acts on (ExaBGP's exit is
SIGCHLD) are blocked and taken one at a time by the main loop, so nothing wakes it while all
is well, and no handler ever runs in the middle of the loop's work.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from bgpvip import logs
from bgpvip.runfiles import PID_FILE, STOP_MARKER

log = logs.get("run")

EXABGP_STOP_GRACE = 15.0
"""Seconds ExaBGP gets after SIGTERM before it is killed."""
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
WAITED = frozenset({signal.SIGCHLD, signal.SIGHUP, *STOP_SIGNALS})


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Running, and not a zombie: the speaker is ExaBGP's child, not ours, so after it exits
    it stays a zombie until ExaBGP reaps it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


class Supervisor:
    """ExaBGP (`exabgp`: its command line, started with `env`) and the speaker it runs, whose
    pid file is in `runtime_dir`; `speaker_grace`: how long the speaker may take to stop."""

    def __init__(
        self,
        exabgp: Sequence[str],
        *,
        runtime_dir: Path,
        speaker_grace: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.exabgp = list(exabgp)
        self.runtime = runtime_dir
        self.speaker_grace = speaker_grace
        self.env = dict(env if env is not None else os.environ)
        self.proc: subprocess.Popen[bytes] | None = None
        self._early: list[int] = []
        self._stopping = False

    def run(self) -> int:
        log.info(logs.kv("exabgp-start", argv=" ".join(self.exabgp)))
        # A signal that comes before the mask is set is kept by this handler; the mask is set
        # only after ExaBGP has started, because a child inherits its parent's mask.
        previous = {s: signal.signal(s, self._early_signal) for s in WAITED}
        try:
            self.proc = subprocess.Popen(self.exabgp, env=self.env)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
            for s, handler in previous.items():
                signal.signal(s, handler)
        pending, self._early = self._early, []
        kill_at: float | None = None
        while (code := self.proc.poll()) is None:
            if not pending:
                timeout = None if kill_at is None else kill_at - time.monotonic()
                if timeout is not None and timeout <= 0:
                    log.warning(logs.kv("exabgp-kill", pid=self.proc.pid))
                    self.proc.kill()
                    kill_at = None
                    continue
                info = signal.sigwaitinfo(WAITED) if timeout is None else signal.sigtimedwait(WAITED, timeout)
                if info is not None:
                    pending.append(info.si_signo)
                continue
            signum = pending.pop(0)
            if signum == signal.SIGHUP:
                self._on_hup()
            elif signum in STOP_SIGNALS and not self._stopping:
                log.info(logs.kv("stop", signal=signal.Signals(signum).name))
                self._stopping = True
                self._stop_in_order()
                kill_at = time.monotonic() + EXABGP_STOP_GRACE
        (self.runtime / STOP_MARKER).unlink(missing_ok=True)
        if self._stopping:
            log.info(logs.kv("stopped", exabgp_exit=code))
            return 0
        log.error(logs.kv("exabgp-exited", code=code))
        return code if code else 1

    def _early_signal(self, signum: int, frame: FrameType | None) -> None:
        self._early.append(signum)

    def _on_hup(self) -> None:
        pid = _read_pid(self.runtime / PID_FILE)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGHUP)

    def _stop_in_order(self) -> None:
        """Speaker first (withdraw, wait, remove addresses), then ExaBGP."""
        (self.runtime / STOP_MARKER).touch()
        pidfile = self.runtime / PID_FILE
        pid = _read_pid(pidfile)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.speaker_grace
            # The speaker removes its pid file as the last thing it does.
            while pidfile.exists() and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert self.proc is not None
        # the speaker has normally closed the sessions with Cease and told ExaBGP to stop
        running = self.proc.poll() is None
        log.info(logs.kv("exabgp-stop", pid=self.proc.pid, running=running))
        if running:
            self.proc.send_signal(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bgpvip.launcher --runtime-dir DIR --speaker-grace S -- EXABGP ARGS...`, as
    `bgpvip run` starts it; ExaBGP gets this process's environment."""
    parser = argparse.ArgumentParser(
        prog="python -m bgpvip.launcher",
        description="What `bgpvip run` becomes once the configuration is rendered: runs ExaBGP "
        "(the command after --) and stops the speaker and ExaBGP in order.",
    )
    parser.add_argument("--runtime-dir", type=Path, required=True, help="bgpvip's runtime directory")
    parser.add_argument(
        "--speaker-grace", type=float, required=True, help="seconds the speaker may take to stop"
    )
    parser.add_argument("exabgp", nargs="+", help="ExaBGP's command line")
    args = parser.parse_args(argv)
    logs.setup(os.environ.get("BGPVIP_LOG_LEVEL", "INFO"))
    supervisor = Supervisor(args.exabgp, runtime_dir=args.runtime_dir, speaker_grace=args.speaker_grace)
    return supervisor.run()
