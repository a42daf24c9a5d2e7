"""`bgpvip run`: render ExaBGP's configuration, start ExaBGP, and stop it in the right order.

I/O side. One command for systemd units and containers. ExaBGP runs as our child with
bgpvip's speaker as its API process. On SIGTERM/SIGINT the order matters: first the
speaker withdraws every route and waits `shutdown_delay` (routers converge while the host
still answers on its VIPs), then ExaBGP is stopped. A stop marker in the runtime directory
keeps a speaker that ExaBGP respawns in the meantime from announcing again.
SIGHUP is passed to the speaker only (it reloads VIPs and checks); ExaBGP would treat SIGHUP
as a reload of its own configuration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from bgpvip import logs
from bgpvip.adapters import exabgp as exa
from bgpvip.configfile import load_file, read_password
from bgpvip.core.config import Config, ConfigError
from bgpvip.core.model import IPAddress
from bgpvip.preflight import check_run, find_exabgp
from bgpvip.runfiles import PID_FILE, STOP_MARKER

log = logs.get("run")


def speaker_command(config_path: Path) -> list[str]:
    """How ExaBGP starts the speaker: this Python, this package, the same config file."""
    # abspath, not resolve(): a ConfigMap's file is a symlink into a timestamped directory that
    # the kubelet deletes on the next update; the speaker must keep the stable name.
    # bgpvip.speaker, not the CLI's `bgpvip speaker`: the same process without click (1.2 MB).
    return [sys.executable, "-m", "bgpvip.speaker", "--config", os.path.abspath(config_path)]


def resolve_local_addresses(config: Config) -> dict[IPAddress, IPAddress]:
    """Each peer's local address: configured, or the source the kernel would use to reach it."""
    out: dict[IPAddress, IPAddress] = {}
    problems: list[tuple[str, str]] = []
    for i, peer in enumerate(config.bgp.peers):
        if peer.local_address is not None:
            out[peer.address] = peer.local_address
            continue
        from bgpvip.adapters import netlink  # pyroute2 costs 70 ms; only needed here

        try:
            found = netlink.local_address_for(peer.address)
        except Exception as e:
            found = None
            problems.append((f"bgp.peers[{i}].local_address", f"unset, and no route to {peer.address}: {e}"))
            continue
        if found is None:
            problems.append(
                (f"bgp.peers[{i}].local_address", f"unset, and the kernel has no route to {peer.address}")
            )
        else:
            out[peer.address] = found
    if problems:
        raise ConfigError(problems)
    return out


def read_passwords(config: Config) -> dict[IPAddress, str]:
    out: dict[IPAddress, str] = {}
    for i, peer in enumerate(config.bgp.peers):
        if peer.password_file is None:
            continue
        try:
            out[peer.address] = read_password(peer.password_file)
        except (OSError, ValueError) as e:
            raise ConfigError([(f"bgp.peers[{i}].password_file", str(e))]) from None
    return out


def render(config: Config, config_path: Path, *, speaker: list[str] | None = None) -> str:
    return exa.render_config(
        config,
        process_command=speaker or speaker_command(config_path),
        local_addresses=resolve_local_addresses(config),
        passwords=read_passwords(config),
    )


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
    def __init__(self, config: Config, config_path: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.runtime = config.runtime_dir
        self.env = dict(env if env is not None else os.environ)
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop_requested = False
        self._stopping = False

    def prepare(self) -> list[str]:
        try:
            self.runtime.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                [("runtime_dir", f"{self.runtime} cannot be created: {e.strerror or e}")]
            ) from None
        (self.runtime / STOP_MARKER).unlink(missing_ok=True)
        conf = self.runtime / "exabgp.conf"
        text = render(self.config, self.config_path)
        tmp = conf.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        tmp.replace(conf)
        self.env.update(exa.exabgp_environment(self.config.exabgp, self.runtime))
        # glibc gives threads that allocate at once their own malloc arenas (up to 8 per core),
        # each holding on to freed memory; the speaker has watcher, recorder and worker threads.
        # With two arenas and a single decide thread, the speaker's growth over 1,000 changes at
        # 10,000 Services went from +26 MB to +11-12 MB (measured together with that day's other
        # Service changes, not apart).
        self.env.setdefault("MALLOC_ARENA_MAX", "2")
        return [find_exabgp(self.config.exabgp.executable), str(conf)]

    def run(self) -> int:
        argv = self.prepare()
        log.info(logs.kv("exabgp-start", argv=" ".join(argv)))
        self.proc = subprocess.Popen(argv, env=self.env)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        # Signal handlers only set flags: waiting inside a handler while the main thread sits
        # in Popen.wait() would stall on the wait lock.
        kill_at: float | None = None
        while True:
            try:
                code = self.proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if self._stop_requested and not self._stopping:
                self._stopping = True
                self._stop_in_order()
                kill_at = time.monotonic() + 15.0
            if kill_at is not None and time.monotonic() > kill_at:
                log.warning(logs.kv("exabgp-kill", pid=self.proc.pid))
                self.proc.kill()
                kill_at = None
        (self.runtime / STOP_MARKER).unlink(missing_ok=True)
        if self._stopping:
            log.info(logs.kv("stopped", exabgp_exit=code))
            return 0
        log.error(logs.kv("exabgp-exited", code=code))
        return code if code else 1

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        pid = _read_pid(self.runtime / PID_FILE)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGHUP)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if not self._stop_requested:
            log.info(logs.kv("stop", signal=signal.Signals(signum).name))
        self._stop_requested = True

    def _stop_in_order(self) -> None:
        """Speaker first (withdraw, wait, remove addresses), then ExaBGP."""
        (self.runtime / STOP_MARKER).touch()
        pidfile = self.runtime / PID_FILE
        pid = _read_pid(pidfile)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + max(self.config.shutdown_delay, self.config.release_delay) + 15.0
            # The speaker removes its pid file as the last thing it does.
            while pidfile.exists() and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert self.proc is not None
        if self.proc.poll() is None:
            log.info(logs.kv("exabgp-stop", pid=self.proc.pid))
            self.proc.send_signal(signal.SIGTERM)


def run_main(config_path: Path) -> int:
    logs.setup(os.environ.get("BGPVIP_LOG_LEVEL", "INFO"))
    try:
        config = load_file(config_path)
        check_run(config)
        supervisor = Supervisor(config, config_path)
        return supervisor.run()
    except ConfigError as e:
        print(f"bgpvip: invalid configuration {config_path}:\n{e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"bgpvip: {e}", file=sys.stderr)
        return 127
