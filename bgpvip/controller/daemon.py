"""The controller's composition root and process entry point.

I/O side. `Controller` builds the parts and runs them together: the read-only HTTP endpoint
(/healthz, /metrics, /status: `bgpvip.status.HttpServer`), the Event recorder, the leader
elector and the one loop (`bgpvip.controller.loop`); on stop the loop ends its term first, then
the elector releases the Lease (or leaves it to expire) and the recorder posts what is queued.
`controller_main` is `bgpvip controller`: config, credentials, signals, `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bgpvip import logs
from bgpvip.adapters.kube import Credentials, EventRecorder, KubeClient, KubeError, LeaderElector
from bgpvip.configfile import load_file
from bgpvip.controller.loop import AllocationLoop
from bgpvip.controller.metrics import ControllerMetrics, ControllerStats
from bgpvip.controller.options import DEFAULT_NAMESPACE, REAL_TIME, Clock, ControllerOptions
from bgpvip.core.config import Config, ConfigError
from bgpvip.status import HttpServer, json_body, metrics_body, text

log = logs.get("controller")

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class Controller:
    """The allocation controller. `await run()` until `stop()`; safe to run two in one process
    (tests) as long as they have different identities."""

    def __init__(
        self,
        config: Config,
        client: KubeClient,
        options: ControllerOptions,
        *,
        config_path: Path | None = None,
        recorder: EventRecorder | None = None,
        clock: Clock = REAL_TIME,
    ) -> None:
        self.options = options
        self.recorder = recorder or EventRecorder(
            client,
            component="bgpvip-controller",
            host=options.identity,
            adopt_other_hosts=True,
            clock=clock.now,
            wall=clock.wall,
        )
        self.metrics = ControllerMetrics()
        self.elector = LeaderElector(
            client,
            namespace=options.namespace,
            name=options.lease_name,
            identity=options.identity,
            lease_duration=options.lease_duration,
            renew_interval=options.renew_interval,
            renew_deadline=options.renew_deadline,
            retry_period=options.retry_period,
            on_change=self._leadership_changed,
            clock=clock.now,
            wall=clock.wall,
            sleep=clock.sleep,
        )
        self.loop = AllocationLoop(
            config,
            client,
            options,
            leadership=self.elector,
            recorder=self.recorder,
            metrics=self.metrics,
            config_path=config_path,
            clock=clock,
        )
        self.port = options.port

    def _leadership_changed(self, leading: bool) -> None:
        # the elector is built before the loop it reports to: the loop fences writes with it
        self.loop.leadership_changed(leading)

    @property
    def leading(self) -> bool:
        """This replica is the leader as far as the loop knows (the writes also check the Lease)."""
        return self.loop.leading

    @property
    def stats(self) -> ControllerStats:
        return self.loop.stats

    def stop(self, *, release: bool = True) -> None:
        """Stop `run()`. `release=False` leaves the Lease to expire, as a crash would."""
        self.loop.stop(release=release)

    async def run(self) -> None:
        server = HttpServer(
            {
                "/healthz": lambda: text(*self.healthy()),
                "/metrics": lambda: metrics_body(self.metrics.registry),
                "/status": lambda: json_body(self.status()),
            },
            self.options.listen,
            self.options.port,
            name="controller",
        )
        await server.start()
        self.port = server.port
        log.info(
            logs.kv(
                "controller-started",
                identity=self.options.identity,
                lease=f"{self.options.namespace}/{self.options.lease_name}",
                listen=f"{self.options.listen}:{self.port}",
                pools=len(self.loop.config.pools),
            )
        )
        self.recorder.start()
        self.elector.start()
        release = True
        try:
            release = await self.loop.run()
        finally:
            await server.close()
            await self.elector.stop(release=release)
            self.metrics.follower()
            await self.loop.wait_stopped()
            await self.recorder.stop()
            log.info(logs.kv("controller-stopped", identity=self.options.identity, released=release))

    def status(self) -> dict[str, Any]:
        return self.loop.status()

    def healthy(self) -> tuple[bool, str]:
        """Alive as long as this loop answers and the elector task runs; the API being away is
        not a reason to be restarted (fail static), so it is not checked here."""
        if not self.elector.alive:
            return False, "leader election is not running"
        return True, f"ok {'leader' if self.loop.leading else 'follower'}"


# --------------------------------------------------------------------------- entry point


def default_namespace() -> str:
    """The pod's namespace (from its ServiceAccount), else bgpvip-system."""
    try:
        return NAMESPACE_FILE.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def default_identity() -> str:
    """$POD_NAME (the Deployment sets it from the downward API), else the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def controller_main(config_path: Path, options: ControllerOptions, *, echo: Callable[[str], None]) -> int:
    """Run until SIGTERM/SIGINT. 0 after a clean stop, 2 for an unusable config or API client."""
    logs.setup(os.environ.get("BGPVIP_LOG_LEVEL", "INFO"))
    try:
        config = load_file(config_path, check_files=False)
    except ConfigError as e:
        echo(f"{config_path}: invalid")
        for path, msg in e.problems:
            echo(f"  {path}: {msg}" if path else f"  {msg}")
        return 2
    credentials = Credentials.for_config(config.kubernetes)

    async def main() -> int:
        try:
            await credentials.get()
        except KubeError as e:
            echo(f"cannot reach the Kubernetes API: {e}; outside a cluster, set kubernetes.kubeconfig")
            return 2
        client = KubeClient(credentials)
        controller = Controller(config, client, options, config_path=config_path)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, controller.stop)
        try:
            await controller.run()
        finally:
            await client.aclose()
        return 0

    return asyncio.run(main())
