"""The short-lived part of `bgpvip run`: load and check the configuration, render ExaBGP's,
then become the supervisor.

I/O side. Loading the config takes pydantic and the config model, and rendering may take
pyroute2 (a peer's local address); the process that then waits on ExaBGP for the life of the
node needs none of it. So this part runs first, and on success replaces itself (`os.execve`:
the same process id, so systemd and the kubelet still see one process and signal it) with
`python -m bgpvip.launcher` (bgpvip/launcher/supervisor.py), a fresh interpreter that imports
only the standard library. An invalid config, an unusable runtime_dir or a missing ExaBGP
executable is refused here, before ExaBGP starts.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bgpvip import logs
from bgpvip.adapters import exabgp as exa
from bgpvip.configfile import load_file, read_password
from bgpvip.core.config import Config, ConfigError
from bgpvip.core.model import IPAddress
from bgpvip.preflight import check_run, find_exabgp
from bgpvip.runfiles import STOP_MARKER

log = logs.get("run")

SPEAKER_STOP_GRACE = 15.0
"""Seconds the speaker gets on SIGTERM beyond `shutdown_delay` (or `release_delay`, if longer)
to withdraw, wait and remove its addresses, before ExaBGP is stopped all the same."""


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


def render(
    config: Config, config_path: Path, *, speaker: list[str] | None = None, check_ports: bool = False
) -> str:
    """ExaBGP's configuration; with `check_ports`, ExaBGP listens only where it can."""
    local = resolve_local_addresses(config)
    return exa.render_config(
        config,
        process_command=speaker or speaker_command(config_path),
        local_addresses=local,
        passwords=read_passwords(config),
        listening=listening_peers(config, local) if check_ports else None,
    )


def listening_peers(config: Config, local_addresses: Mapping[IPAddress, IPAddress]) -> set[IPAddress]:
    """The peers ExaBGP can accept connections from on port 179: `listen: true` and `auto`
    peers whose local address and port can be bound now. ExaBGP refuses to start when a port
    it must listen on is taken, and says so only in its own log: a `listen: true` (or
    passive) peer whose port cannot be bound raises ConfigError naming the peer; an `auto`
    one is logged (`listen-skipped`) and left to connect out only."""
    problems: list[tuple[str, str]] = []
    listening: set[IPAddress] = set()
    for i, peer in enumerate(config.bgp.peers):
        local = local_addresses.get(peer.address)
        if local is None or not (peer.passive or peer.listen is not False):
            continue
        port = peer.port if peer.passive else exa.BGP_PORT
        why = _cannot_listen(local, port)
        if why is None:
            if not peer.passive:
                listening.add(peer.address)
        elif peer.passive or peer.listen is True:
            field = f"bgp.peers[{i}].{'passive' if peer.passive else 'listen'}"
            problems.append((field, why + ("" if peer.passive else "; or set listen: false (or auto)")))
        else:
            log.warning(logs.kv("listen-skipped", peer=peer.label, reason=why, effect="connecting out only"))
    if problems:
        raise ConfigError(problems)
    return listening


def _cannot_listen(local: IPAddress, port: int) -> str | None:
    family = socket.AF_INET6 if local.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((str(local), port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {local} is in use by another program (another BGP daemon on this host?)"
                )
            if e.errno == errno.EACCES:
                return f"port {port} on {local} needs root or CAP_NET_BIND_SERVICE to listen on"
            return f"cannot listen on port {port} of {local}: {e.strerror}"
    return None


@dataclass(frozen=True)
class Launch:
    """What the supervisor needs, all of it plain values: ExaBGP's command line and
    environment, the runtime directory, and how long the speaker may take to stop."""

    exabgp: list[str]
    env: dict[str, str]
    runtime_dir: Path
    speaker_grace: float

    def command(self) -> list[str]:
        """`python -m bgpvip.launcher ...` with this Python."""
        return [
            sys.executable,
            "-m",
            "bgpvip.launcher",
            "--runtime-dir",
            str(self.runtime_dir),
            "--speaker-grace",
            repr(self.speaker_grace),
            "--",
            *self.exabgp,
        ]


def prepare(config: Config, config_path: Path, *, env: Mapping[str, str] | None = None) -> Launch:
    """Create the runtime directory, clear a stale stop marker and write ExaBGP's configuration
    (mode 0600: it holds MD5 passwords). ConfigError for what cannot be used."""
    runtime = config.runtime_dir
    try:
        runtime.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError([("runtime_dir", f"{runtime} cannot be created: {e.strerror or e}")]) from None
    (runtime / STOP_MARKER).unlink(missing_ok=True)
    conf = runtime / "exabgp.conf"
    text = render(config, config_path, check_ports=True)
    tmp = conf.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(conf)
    environment = dict(env if env is not None else os.environ)
    environment.update(exa.exabgp_environment(config.exabgp, runtime))
    # glibc gives threads that allocate at once their own malloc arenas (up to 8 per core),
    # each holding on to freed memory; the speaker has watcher, recorder and worker threads.
    environment.setdefault("MALLOC_ARENA_MAX", "2")
    return Launch(
        exabgp=[find_exabgp(config.exabgp.executable), str(conf)],
        env=environment,
        runtime_dir=runtime,
        speaker_grace=max(config.shutdown_delay, config.release_delay) + SPEAKER_STOP_GRACE,
    )


def run_main(config_path: Path) -> int:
    """`bgpvip run`: 2 for an unusable config, 127 without ExaBGP; otherwise it does not
    return but becomes the supervisor, whose exit status is `bgpvip run`'s."""
    logs.setup(os.environ.get("BGPVIP_LOG_LEVEL", "INFO"))
    try:
        config = load_file(config_path)
        check_run(config)
        launch = prepare(config, config_path)
    except ConfigError as e:
        print(f"bgpvip: invalid configuration {config_path}:\n{e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"bgpvip: {e}", file=sys.stderr)
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, launch.command(), launch.env)
    except OSError as e:
        print(f"bgpvip: cannot start the supervisor {sys.executable}: {e.strerror or e}", file=sys.stderr)
    return 1
