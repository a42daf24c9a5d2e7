"""The real bgpvip speaker in the lab: per-node configs, start/stop, health switches, the demo.

Used by `lab/nslab.py demo`, by tests/lab and by the benchmarks. Each node gets its own
work directory under the lab's state dir (config, runtime dir, drain file, health file), so
three speakers on one machine never share a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from nslab import HELPERS_DIR, Lab, node_bgpvip_dir, socket_in_netns

REPO = Path(__file__).resolve().parent.parent
HEALTH_PORT = 8080


def node_workdir(lab: Lab, node: str) -> Path:
    d = node_bgpvip_dir(lab, node)
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_node_config(lab: Lab, node: str, config: dict[str, Any]) -> Path:
    """Write `node`'s config where `nslab.py exec` points `$BGPVIP_CONFIG` in that node."""
    path = node_workdir(lab, node) / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def node_config(
    lab: Lab,
    node: str,
    vips: Sequence[dict[str, Any]],
    *,
    families: Sequence[str] = ("ipv4",),
    peer: dict[str, Any] | None = None,
    **over: Any,
) -> dict[str, Any]:
    """A bgpvip config for `node` peering with the lab router: one session per family in
    `families` (`ipv4` over IPv4, `ipv6` over IPv6, named `r1` and `r1v6`), each with the
    settings in `peer` added."""
    work = node_workdir(lab, node)
    topo = lab.topology
    peer_node = lab.peer_node(node)
    peers = [
        {
            "name": peer_node if family == "ipv4" else f"{peer_node}v6",
            "address": lab.peer_ip(node, 4 if family == "ipv4" else 6),
            "peer_as": topo.nodes[peer_node].asn or 65000,
            "local_address": lab.node_ip(node, 4 if family == "ipv4" else 6),
            "hold_time": 3,
            "families": [family],
            **(peer or {}),
        }
        for family in families
    ]
    config: dict[str, Any] = {
        "node_name": node,
        "bgp": {
            "local_as": topo.nodes[node].asn or 65100,
            "router_id": lab.node_ip(node, 4),
            "peers": peers,
        },
        "vips": list(vips),
        "runtime_dir": str(work / "run"),
        "drain_file": str(work / "drain"),
        "shutdown_delay": 1.0,
    }
    config.update(over)
    return config


def http_vip(address: str, *, port: int = HEALTH_PORT, name: str = "web", **check: Any) -> dict[str, Any]:
    """A VIP whose check is the node's own lab health server (`/healthz`)."""
    return {
        "name": name,
        "address": address,
        "interface": "lo",
        "checks": [{"type": "http", "url": f"http://127.0.0.1:{port}/healthz", **check}],
    }


@dataclass
class Speaker:
    """bgpvip (`bgpvip run`: ExaBGP + the speaker) running in one lab node."""

    lab: Lab
    node: str
    config_path: Path
    process: subprocess.Popen[bytes]
    workdir: Path
    log: Path | None = None
    log_offset: int = 0
    """Where this speaker's lines start in `log` (lab logs are appended to, run after run)."""
    health_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.health_file = self.workdir / "unhealthy"

    def bgpvip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.exec(
            self.node, [sys.executable, "-m", "bgpvip", *args, "--config", str(self.config_path)], check=check
        )

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.bgpvip("routes", "-o", "json").stdout)
        return data

    def routes_table(self) -> str:
        return self.bgpvip("routes").stdout

    def wait_status(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.bgpvip("routes", "-o", "json", check=False)
            if result.returncode == 0:
                data: dict[str, Any] = json.loads(result.stdout)
                return data
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise TimeoutError(f"{self.node}: status endpoint not answering: {result.stderr.strip()}")
            time.sleep(0.1)

    def log_text(self) -> str:
        """This speaker's own log lines (ExaBGP's and bgpvip's), not those of earlier runs."""
        if self.log is None:
            return ""
        with self.log.open("rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def drain(self) -> None:
        self.bgpvip("drain")

    def undrain(self) -> None:
        self.bgpvip("undrain")

    def set_healthy(self, healthy: bool) -> None:
        if healthy:
            self.health_file.unlink(missing_ok=True)
        else:
            self.health_file.touch()

    def withdraw(self) -> None:
        """What the demo calls: make this node's service unhealthy."""
        self.set_healthy(False)

    def speaker_pid(self) -> int | None:
        try:
            return int((self.workdir / "run" / "speaker.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM to `bgpvip run`, as systemd or the kubelet would send it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def start_health_server(
    lab: Lab, node: str, *, port: int = HEALTH_PORT, slow_every: int = 0, name: str = "namesrv"
) -> subprocess.Popen[bytes]:
    work = node_workdir(lab, node)
    argv = [
        sys.executable,
        str(HELPERS_DIR / "namesrv.py"),
        "--name",
        node,
        "--port",
        str(port),
        "--health-file",
        str(work / "unhealthy"),
    ]
    if slow_every:
        argv += ["--slow-every", str(slow_every)]
    proc = lab.popen(node, argv, name=name)
    lab.wait_tcp(node, "127.0.0.1", port, timeout=10)
    return proc


_SECRETS_MOUNTPOINT = Path("/var/run/secrets")
# Run in a private mount namespace: a tmpfs on /var/run/secrets holding a bind mount of the
# lab's ServiceAccount files at /var/run/secrets/kubernetes.io/serviceaccount, where kubelet
# mounts them in a pod and the official client's in-cluster loader reads them. $1: the files.
_MOUNT_SERVICE_ACCOUNT = (
    'mount -t tmpfs -o size=64k,mode=0755 bgpvip-lab "$0" && mkdir -p "$0/kubernetes.io/serviceaccount" && '
    'mount --bind "$1" "$0/kubernetes.io/serviceaccount" && shift && exec "$@"'
)


@dataclass(frozen=True)
class InCluster:
    """What a DaemonSet pod gets from Kubernetes, for a lab speaker: KUBERNETES_SERVICE_HOST and
    _PORT, and the ServiceAccount files (`token`, `ca.crt`, `namespace`) at their fixed path.

    The speaker then uses the official client's in-cluster loader, as in production. The files
    are mounted in a private mount namespace of the speaker's process tree (`start_speaker`),
    never on the host; the host only needs the empty mountpoint /var/run/secrets, which
    `in_cluster` creates when missing and removes again. (Removing it detaches the mounts of
    speakers still running in other mount namespaces: two labs that use this at the same time
    must end in the order they started.)"""

    host: str
    port: int
    files: Path

    @property
    def env(self) -> dict[str, str]:
        return {"KUBERNETES_SERVICE_HOST": self.host, "KUBERNETES_SERVICE_PORT": str(self.port)}

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        return [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", _MOUNT_SERVICE_ACCOUNT, str(_SECRETS_MOUNTPOINT), str(self.files), *cmd,
        ]  # fmt: skip


@contextlib.contextmanager
def in_cluster(lab: Lab, server: tuple[str, int], *, ca: Path, token: str) -> Iterator[InCluster]:
    """ServiceAccount files for speakers reaching the API at `server` over TLS (CA `ca`)."""
    files = lab.state_dir / "serviceaccount"
    files.mkdir(parents=True, exist_ok=True)
    (files / "token").write_text(token)
    (files / "ca.crt").write_bytes(ca.read_bytes())
    (files / "namespace").write_text("bgpvip-system")
    created = not _SECRETS_MOUNTPOINT.exists()
    if created:
        _SECRETS_MOUNTPOINT.mkdir(mode=0o755)
    try:
        yield InCluster(server[0], server[1], files)
    finally:
        if created:
            with contextlib.suppress(OSError):  # not empty: somebody else's; leave it
                _SECRETS_MOUNTPOINT.rmdir()


def start_speaker(
    lab: Lab, node: str, config: dict[str, Any], *, name: str = "bgpvip", kube: InCluster | None = None
) -> Speaker:
    """`bgpvip run` in `node`; with `kube`, as a pod that reaches the API with its ServiceAccount."""
    work = node_workdir(lab, node)
    path = write_node_config(lab, node, config)
    env = {"BGPVIP_LOG_LEVEL": os.environ.get("BGPVIP_LOG_LEVEL", "INFO"), "PYTHONUNBUFFERED": "1"}
    log = lab.log_dir / f"{node}-{name}.log"
    offset = log.stat().st_size if log.exists() else 0
    cmd = [sys.executable, "-m", "bgpvip", "run", "--config", str(path)]
    if kube is not None:
        env.update(kube.env)
        cmd = kube.wrap(cmd)
    proc = lab.popen(node, cmd, log_path=log, name=name, env=env)
    lab.register_log(f"{node} bgpvip", log)
    return Speaker(lab, node, path, proc, work, log, offset)


def start_demo_speaker(lab: Lab, node: str, vips: Sequence[str]) -> Speaker:
    """The shape nslab's demo expects: (lab, node, vips) -> object with .process and .withdraw()."""
    addresses = [v.split("/")[0] for v in vips]
    config = node_config(lab, node, [http_vip(a, name=f"vip{i}") for i, a in enumerate(addresses)])
    return start_speaker(lab, node, config)


def demo(lab: Lab, *, vip: str = "198.51.100.10", out: Callable[[str], None] = print) -> None:
    """Three nodes announce one VIP (ECMP at r1); n1's service fails and its route goes;
    the client keeps being served; n1 recovers; then every speaker stops in order."""
    prefix = f"{vip}/32"
    nodes = ["n1", "n2", "n3"]
    t0 = time.monotonic()
    lab.up()
    speakers: list[Speaker] = []
    try:
        out(f"== lab {lab.prefix} up in {time.monotonic() - t0:.1f}s: FRR router r1, nodes n1-n3, client")
        for node in nodes:
            start_health_server(lab, node)
            speakers.append(start_speaker(lab, node, node_config(lab, node, [http_vip(vip, name="web")])))
        hops = [lab.node_ip(n, 4) for n in nodes]
        waited = lab.wait_prefix(prefix, nexthops=hops, timeout=60)
        out(
            f"== bgpvip on n1, n2, n3 announced {prefix}; r1 installed it with 3 next hops after {waited:.1f}s"
        )
        out(lab.vtysh(f"show bgp ipv4 unicast {prefix}").rstrip())
        out(f"r1 kernel: {_route_text(lab, prefix)}")
        out("\n== bgpvip routes on n1:")
        out(speakers[0].routes_table().rstrip())
        answers = sorted({lab.http_get("client", vip, HEALTH_PORT).strip() for _ in range(12)})
        out(f"\n== client -> http://{vip}:{HEALTH_PORT}/ answered by: {', '.join(answers)}")

        out("\n== n1's service fails its health check")
        t_fail = time.monotonic()
        speakers[0].set_healthy(False)
        lab.wait_prefix(prefix, nexthops=hops[1:], timeout=30)
        out(f"r1 dropped n1 after {time.monotonic() - t_fail:.3f}s: {_route_text(lab, prefix)}")
        status = speakers[0].status()
        d = status["decisions"][0]
        out(f"n1 says: announced={d['announced']} reason={d['reason']} ({d['detail']})")
        answers = sorted({lab.http_get("client", vip, HEALTH_PORT).strip() for _ in range(12)})
        out(f"client still served, by: {', '.join(answers)}")

        out("\n== n1 recovers")
        t_ok = time.monotonic()
        speakers[0].set_healthy(True)
        lab.wait_prefix(prefix, nexthops=hops, timeout=30)
        out(f"r1 has n1 back after {time.monotonic() - t_ok:.3f}s: {_route_text(lab, prefix)}")

        out("\n== stopping every speaker (SIGTERM: withdraw, wait, remove address, stop ExaBGP)")
        for sp in speakers:
            sp.stop()
        lab.wait_prefix(prefix, present=False, timeout=30)
        out(f"{prefix} is gone from r1: {_route_text(lab, prefix)}")
    except BaseException:
        out(lab.logs())
        raise
    finally:
        lab.down()
        out(f"== lab {lab.prefix} down")


def _route_text(lab: Lab, prefix: str) -> str:
    route = lab.route(prefix)
    if not route:
        return "no route"
    hops = [h.get("gateway", "?") for h in route.get("nexthops", [])]
    return f"{prefix} via {', '.join(hops)}"


class Relay:
    """Accept in a lab namespace, connect to a server on the host's loopback, copy bytes.

    How lab nodes reach tests/kubeapi.py's fake Kubernetes API, which listens on the host's
    127.0.0.1: the relay listens in the client namespace, so nodes cross r1 to reach it. While
    the upstream refuses (an injected outage), accepted connections are closed at once."""

    def __init__(self, lab: Lab, node: str, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket_in_netns(lab.ns(node))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(64)
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True, name="relay").start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()  # the API is down: the node sees its connection dropped
                continue
            upstream.settimeout(None)
            # a relay stands in for the network and must not add Nagle delays of its own: a
            # small segment behind an unacknowledged one would wait ~40 ms for a delayed ACK
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._conns -= {src, dst}

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        with self._lock:
            for s in list(self._conns):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


def write_kubeconfig(
    lab: Lab,
    server: tuple[str, int],
    *,
    ca: Path | None = None,
    token: str | None = None,
    path: Path | None = None,
) -> Path:
    """A kubeconfig for the (fake) API server at `server`: HTTPS trusting `ca` when given, plain
    HTTP otherwise; a bearer `token` when given. Written to `path` (default: the lab's state dir)."""
    path = path or lab.state_dir / "kubeconfig"
    cluster: dict[str, Any] = {"server": f"{'https' if ca else 'http'}://{server[0]}:{server[1]}"}
    if ca is not None:
        cluster["certificate-authority"] = str(ca)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": cluster}],
        "users": [{"name": "lab", "user": {"token": token} if token else {}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        "current-context": "lab",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
