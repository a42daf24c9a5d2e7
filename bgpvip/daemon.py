"""The speaker process: composition root of the adapters, the reconcile loop and the tasks.

I/O side. ExaBGP starts this as its API process (`bgpvip speaker`). Startup policy:
read ExaBGP's Adj-RIB-Out first and seed health from it, so a restarted helper never
withdraws a healthy route; never crash-loop (ExaBGP terminates itself after five helper
deaths in about 64 s): a bad config keeps the process alive and waiting for a good one, and
an unexpected crash pauses before exiting. Shutdown policy: SIGTERM withdraws everything,
waits `shutdown_delay`, removes the addresses and exits 0; ExaBGP going away (EOF,
`shutdown`, a new parent) exits at once and leaves addresses in place for a graceful restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from bgpvip import logs, memory
from bgpvip.adapters import bgpconnect, netlink, probes
from bgpvip.adapters import exabgp as exa
from bgpvip.configfile import file_stamp, load_file, read_password
from bgpvip.core import services as svc
from bgpvip.core.config import CheckKey, Config, ConfigError, PeerConfig
from bgpvip.core.desired import NodeState, check_keys
from bgpvip.core.event_policy import SERVICE_REFUSALS, speaker_events
from bgpvip.core.model import Applied, ProbeResult, Route
from bgpvip.core.peers import PeerStatus, explain_connect, explain_unanswered
from bgpvip.reconcile import (
    ConfigChanged,
    DrainChanged,
    PeerChanged,
    PeerNegotiated,
    PeerNotification,
    PeerProbed,
    PeersRead,
    ProbeDone,
    Reconciler,
    Resync,
    ServicesChanged,
    StopRequested,
    World,
    seed_health,
)
from bgpvip.runfiles import PID_FILE, STOP_MARKER
from bgpvip.status import StatusBoard, status_server

if TYPE_CHECKING:  # loaded by KubeBridge: a speaker without Service IPs never needs it
    from bgpvip.adapters import kube

log = logs.get("daemon")

# ExaBGP kills itself after 5 helper deaths within ~64 s; pausing this long before an
# unexpected exit keeps us at no more than 5 deaths per 65 s whatever goes wrong.
CRASH_PAUSE = 13.0
DRAIN_POLL = 0.2
CONFIG_POLL = 2.0
# ExaBGP does not tell a refused connection from a closed one, and says nothing of one that
# never completes. A session down this long gets the kernel's view of ExaBGP's own attempts
# each second; a TCP connection test of the speaker's own runs right after one of ExaBGP's
# attempts failed at the TCP level, at most once per gap.
DIAGNOSE_AFTER = 2.0
DIAGNOSE_GAP = 5.0
DIAGNOSE_WAIT = 5.0
CEASE_WAIT = 2.0


TCP_FAILED = "closing connection"
"""ExaBGP's `down` reason for a connection that failed or was closed at the TCP level."""


class ExaBgpGone(Exception):
    """ExaBGP closed our stdin, said `shutdown`, or our parent changed."""


def node_name(config: Config) -> str:
    return config.node_name or socket.gethostname().split(".")[0].lower()


def prepare_addresses(config: Config, addresses: netlink.AddressManager) -> asyncio.Future[None] | None:
    """Start-up work at start-up: when a VIP has an interface, import pyroute2 and open its
    socket now (in the adapter's thread), not when the first healthy check asks for an
    address. None when there is nothing to do: a speaker for Service IPs only never loads
    pyroute2 (see bgpvip/adapters/netlink.py)."""
    if addresses.ready or not any(vip.interface is not None for vip in config.vips):
        return None
    return asyncio.wrap_future(addresses.prepare())


class ProbeManager:
    """One task per configured check; restarted only for checks whose definition changed."""

    def __init__(self, reconciler: Reconciler) -> None:
        self._rec = reconciler
        self._tasks: dict[CheckKey, tuple[Any, asyncio.Task[None]]] = {}

    def update(self, config: Config) -> None:
        wanted: dict[CheckKey, Any] = {}
        for vip in config.vips:
            for key, check in zip(check_keys(vip), vip.checks, strict=True):
                wanted[key] = check
        for key in list(self._tasks):
            check, task = self._tasks[key]
            if wanted.get(key) != check:
                task.cancel()
                del self._tasks[key]
        for key, check in wanted.items():
            if key not in self._tasks:
                self._tasks[key] = (check, asyncio.create_task(self._run(key, check), name=f"probe {key}"))

    async def _run(self, key: CheckKey, check: Any) -> None:
        probe = probes.make_probe(check)
        last: list[ProbeResult] = []

        def emit(result: ProbeResult) -> None:
            last[:] = [result]
            self._rec.post(ProbeDone(key, result))

        try:
            await probes.run_check(
                probe,
                emit=emit,
                next_delay=lambda: self._rec.next_delay(key, last[0] if last else None),
            )
        finally:
            with contextlib.suppress(Exception):
                await probe.aclose()

    async def close(self) -> None:
        tasks = [t for _, t in self._tasks.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()


class KubeBridge:
    """Kubernetes into the loop: the watcher's events fold into a KubeState; after each burst
    the `ServiceDecider` brings the Service decisions up to date (deciding again only the
    Services that changed; in a thread, because the first pass over 10,000 Services takes a
    quarter of a second) and posts the table as one ServicesChanged. Until every kind was
    listed once nothing is posted, so the loop keeps the Service routes ExaBGP already had
    (fail static); an API outage leaves the state, and so the routes, as they are.

    Events on Services record announcements, withdrawals and refusals when a decision
    changes, as the core's policy says (`bgpvip.core.event_policy`): for the first table only
    the refusals, and the rest is summarised in the log."""

    REFUSALS = SERVICE_REFUSALS

    def __init__(self, rec: Reconciler, node: str) -> None:
        self._rec = rec
        self._node = node
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._decider = svc.ServiceDecider()
        # One thread decides, always the same: the first pass over 10,000 Services takes a
        # quarter of a second and must not hold the loop, and one thread means one malloc arena.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decide")
        self._early: svc.ServiceDecider | None = svc.ServiceDecider()
        self._early_version = -1
        self._early_posted: svc.ServiceDecisions | None = None
        self.state = svc.KubeState()
        self.table: svc.ServiceDecisions | None = None
        self._watch_settings: tuple[object, ...] = ()
        self._watcher: asyncio.Task[None] | None = None
        self._client: kube.KubeClient | None = None
        self._client_for: object = None
        self._recorder: kube.EventRecorder | None = None
        self.credentials: kube.Credentials | None = None
        """How the API is reached; a test may set it before `run()` (else: from the config)."""

    def config_changed(self) -> None:
        self._queue.put_nowait(None)

    async def _start_watcher(self, config: Config) -> None:
        """(Re)start the watch. A connection that cannot be resolved (no kubeconfig, no in-cluster
        environment) is an API outage like any other: the watcher reports `KubeUnavailable` and
        retries, the VIPs go on, the Service routes stay as they are."""
        from bgpvip.adapters import kube

        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(BaseException):
                await self._watcher
        if self._client is None or self._client_for != config.kubernetes:
            if self._client is not None:
                await self._client.aclose()
            credentials = self.credentials or kube.Credentials.for_config(config.kubernetes)
            self._client, self._client_for = kube.KubeClient(credentials), config.kubernetes
            if self._recorder is not None:
                await self._recorder.stop(within=2)
            self._recorder = kube.EventRecorder(self._client, component="bgpvip-speaker", host=self._node)
            self._recorder.start()
        watcher = kube.KubeWatcher.for_config(
            self._client,
            config,
            node_name=self._node,
            emit=self._queue.put_nowait,
            list_pages=self._early is not None,
        )
        self._watcher = asyncio.create_task(watcher.run(), name="kube-watch")
        self._watch_settings = (config.kubernetes, svc.pool_label_keys(config))
        log.info(logs.kv("kube-watch", node=self._node))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._start_watcher(self._rec.world.config)
            posted_version = -1
            posted_config: Config | None = None
            while True:
                items = [await self._queue.get()]
                while not self._queue.empty():
                    items.append(self._queue.get_nowait())
                for item in items:
                    if item is not None:
                        self.state = self.state.apply(item)
                config = self._rec.world.config
                if (config.kubernetes, svc.pool_label_keys(config)) != self._watch_settings:
                    await self._start_watcher(config)  # relists with the new label keys
                    continue
                if not self.state.ready:
                    await self._announce_early(config)
                    continue
                if self._early is not None:
                    # complete lists from now on. The early decider has decided the very same
                    # views already (a list hands over its pages' objects), so it carries on
                    # and the first complete table costs a pass over what changed, not 10,000.
                    self._decider, self._early = self._early, None
                if self.state.version == posted_version and config is posted_config:
                    continue
                state = self.state
                table = await loop.run_in_executor(
                    self._worker, self._decider.update, config, state, self._node
                )
                posted_version, posted_config = state.version, config
                previous, self.table = self.table, table
                if previous is not None and table.by_source is previous.by_source:
                    continue
                self._rec.post(ServicesChanged(table))
                self._record_changes(previous, table, state)
        finally:
            if self._watcher is not None:
                self._watcher.cancel()
                with contextlib.suppress(BaseException):
                    await self._watcher
            if self._recorder is not None:
                await self._recorder.stop(within=2)
            if self._client is not None:
                await self._client.aclose()
            self._worker.shutdown(wait=False, cancel_futures=True)

    async def _announce_early(self, config: Config) -> None:
        """While the first lists run: post what their pages already make certain, so that
        ExaBGP works on the first announcements while the rest is still being listed."""
        state = self.state
        if (
            self._early is None
            or svc.KubeKind.NODE not in state.synced
            or not state.services
            or state.version == self._early_version
        ):
            return
        self._early_version = state.version
        loop = asyncio.get_running_loop()
        table = await loop.run_in_executor(
            self._worker, self._early.update, config, state.partial, self._node
        )
        previous = self._early_posted
        if table.routes and (previous is None or table.routes != previous.routes):
            self._early_posted = table
            self._rec.post(ServicesChanged(table, partial=True))

    def _record_changes(
        self, previous: svc.ServiceDecisions | None, table: svc.ServiceDecisions, state: svc.KubeState
    ) -> None:
        from bgpvip.adapters import kube

        first = previous is None
        if first:
            sources: Iterable[str] = table.by_source.keys()
            announced = sum(1 for d in table if d.announce)
            log.info(
                logs.kv(
                    "services-decided",
                    decisions=len(table),
                    announcing=announced,
                    routes=len(table.routes),
                    refused=sum(1 for d in table if d.reason in self.REFUSALS),
                )
            )
        else:
            assert previous is not None
            sources = table.by_source.changed_keys(previous.by_source)
        if self._recorder is None:
            return
        for source in sources:
            _, _, rest = source.partition("/")
            namespace, _, name = rest.partition("/")
            view = state.services.get((namespace, name))
            if view is None:
                continue
            ref = kube.ObjectRef.service(view)
            before = None if previous is None else previous.by_source.get(source, ())
            for e in speaker_events(before, table.by_source.get(source, ()), node=self._node):
                self._recorder.record(ref, e.type, e.reason, e.message)


class RoutesViaExaBgp:
    """The reconcile loop's RoutePort on top of the ExaBGP session."""

    def __init__(self, session: exa.ExaBgpSession) -> None:
        self.session = session

    async def announce(self, routes: Any) -> bool:
        return await self.session.announce(routes)

    async def withdraw(self, routes: Any) -> bool:
        return await self.session.withdraw(routes)

    async def announced(self) -> set[Route]:
        return await self.session.adj_rib_out()

    async def announced_changed(self) -> set[Route] | None:
        return await self.session.adj_rib_out_changed()


class Speaker:
    def __init__(self, config_path: Path, *, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self.config_path = config_path
        self.stdin = stdin
        self.stdout = stdout
        self.board: StatusBoard | None = None
        self.bridge: KubeBridge | None = None
        self._next_test: dict[str, float] = {}
        self._tests: set[asyncio.Task[None]] = set()
        self.addresses: netlink.AddressManager | None = None

    async def run(self) -> int:
        # One session for the life of the process: its reader thread owns stdin and cannot
        # be stopped, so a second session would race it for ExaBGP's lines.
        session = exa.ExaBgpSession(self.stdin, self.stdout)
        await session.start()
        try:
            try:
                config = load_file(self.config_path)
            except ConfigError as e:
                found = await self._wait_for_good_config(session, e)
                if found is None:
                    return 0
                config = found
            return await self._run(config, session)
        except ExaBgpGone as e:
            log.info(logs.kv("exabgp-gone", detail=str(e)))
            return 0
        finally:
            await session.close()

    async def _wait_for_good_config(self, session: exa.ExaBgpSession, error: ConfigError) -> Config | None:
        """No usable config: keep ExaBGP's routes as they are (fail static), keep reading stdin
        so ExaBGP never blocks, and go on as soon as the file is fixed; None if ExaBGP left."""
        log.error(logs.kv("config-invalid", file=self.config_path, error=str(error)))
        stamp = file_stamp(self.config_path)
        gone = asyncio.create_task(self._pump_exabgp(session, None))
        try:
            while not gone.done():
                await asyncio.wait({gone}, timeout=CONFIG_POLL)
                now = file_stamp(self.config_path)
                if now == stamp or gone.done():
                    continue
                stamp = now
                try:
                    return load_file(self.config_path)
                except ConfigError as e:
                    log.error(logs.kv("config-invalid", file=self.config_path, error=str(e)))
            return None
        finally:
            gone.cancel()
            with contextlib.suppress(BaseException):
                await gone

    async def _until_gone(self, session: exa.ExaBgpSession, coro: Any) -> Any:
        """Await `coro`, unless ExaBGP goes away first (a new parent, or a closed pipe)."""
        work = asyncio.ensure_future(coro)
        parent = asyncio.create_task(session.wait_parent_gone())
        try:
            done, _ = await asyncio.wait({work, parent}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                try:
                    return work.result()
                except exa.ExaBgpClosed as e:
                    raise ExaBgpGone(str(e)) from None
            raise ExaBgpGone("parent process changed")
        finally:
            for t in (work, parent):
                t.cancel()

    async def _run(self, config: Config, session: exa.ExaBgpSession) -> int:
        name = node_name(config)
        runtime = config.runtime_dir
        with contextlib.suppress(OSError):
            runtime.mkdir(parents=True, exist_ok=True)
            (runtime / PID_FILE).write_text(f"{os.getpid()}\n")
        try:
            existing = await self._until_gone(session, session.adj_rib_out())
        except ExaBgpGone:
            raise
        except Exception as e:
            log.warning(logs.kv("adj-rib-out-failed", error=e))
            existing = set()
        # ExaBGP knew the sessions before this speaker started (a respawn): ask it
        neighbors = await self._until_gone(session, read_neighbors(session))
        if neighbors is not None:
            session.neighbors = exa.neighbors_by_family(neighbors)
        addresses = netlink.AddressManager(state_dir=config.runtime_dir)
        try:
            owned = addresses.owned()
        except Exception as e:
            log.warning(logs.kv("address-list-failed", error=e))
            owned = set()
        self.addresses = addresses
        warming = prepare_addresses(config, addresses)
        log.info(logs.kv("start", node=name, routes_in_exabgp=len(existing), addresses_owned=len(owned)))
        stopping = (runtime / STOP_MARKER).exists()
        world = World(
            config=config,
            health=seed_health(config, existing, time.monotonic()),
            node=NodeState(drained=config.drain_file.exists(), stopping=False),
            services=None if config.kubernetes.enabled else svc.ServiceDecisions(),
        )
        board = StatusBoard(name)
        self.board = board
        rec = Reconciler(
            world,
            Applied(routes=frozenset(existing), addresses=frozenset(owned)),
            RoutesViaExaBgp(session),
            addresses,
            observer=board,
            canonical=exa.canonical_route,
            # after a burst (the first list, a relist, a resync) the heap holds the pages it
            # freed; give them back so resident memory follows the live data (bgpvip/memory.py)
            on_idle=memory.release_if_worth_it,
        )
        if neighbors is not None:
            rec.post(peers_read(neighbors))
        if stopping:
            # `bgpvip run` is stopping ExaBGP and a respawned helper must not announce again.
            rec.post(StopRequested("stop marker present"))
        probe_mgr = ProbeManager(rec)
        server = None
        if config.status.enabled:
            server = status_server(
                board,
                str(config.status.listen),
                config.status.port,
                max_silence=max(60.0, 3 * config.resync_interval),
            )
            try:
                await server.start()
            except OSError as e:
                log.error(logs.kv("status-listen-failed", port=config.status.port, error=e))
                server = None

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, rec.post, StopRequested(sig.name))
        reload_now = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, reload_now.set)

        probe_mgr.update(config)
        background = [
            asyncio.create_task(self._pump_exabgp(session, rec), name="exabgp events"),
            asyncio.create_task(self._watch_drain(rec), name="drain"),
            asyncio.create_task(self._resync_timer(rec, session), name="resync"),
            asyncio.create_task(self._diagnose_peers(rec), name="diagnose"),
            asyncio.create_task(self._watch_config(rec, probe_mgr, board, reload_now), name="config"),
        ]
        bridge: KubeBridge | None = None
        if config.kubernetes.enabled:
            bridge = KubeBridge(rec, name)
            background.append(asyncio.create_task(bridge.run(), name="kubernetes"))
        self.bridge = bridge
        if warming is not None:
            # the probes run meanwhile; their results wait in the queue for the first reconcile
            began = time.monotonic()
            await self._until_gone(session, warming)
            log.info(logs.kv("netlink-ready", seconds=round(time.monotonic() - began, 3)))
        main = asyncio.create_task(rec.run(), name="reconcile")
        try:
            done, _ = await asyncio.wait([main, *background], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if isinstance(exc, ExaBgpGone):
                    log.info(logs.kv("exabgp-gone", detail=str(exc)))
                    return 0
                if exc is not None:
                    raise exc
            if main in done:
                if (runtime / STOP_MARKER).exists():
                    await self._cease(session, rec)
                log.info(logs.kv("exit", code=0))
                return 0
            raise RuntimeError(f"task ended unexpectedly: {[t.get_name() for t in done]}")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for t in [main, *background, *self._tests]:
                t.cancel()
            await probe_mgr.close()
            for t in [main, *background]:
                with contextlib.suppress(BaseException):
                    await t
            if server is not None:
                await server.close()
            with contextlib.suppress(OSError):
                (runtime / PID_FILE).unlink()

    async def _pump_exabgp(self, session: exa.ExaBgpSession, rec: Reconciler | None) -> None:
        """Hand neighbor events to the loop; raise ExaBgpGone when ExaBGP goes away."""
        parent = asyncio.create_task(session.wait_parent_gone())
        get: asyncio.Task[Any] | None = None
        try:
            while True:
                get = asyncio.create_task(session.event_queue.get())
                done, _ = await asyncio.wait({get, parent}, return_when=asyncio.FIRST_COMPLETED)
                if parent in done:
                    raise ExaBgpGone("parent process changed")
                ev = get.result()
                if isinstance(ev, exa.Shutdown | exa.Eof):
                    raise ExaBgpGone(type(ev).__name__.lower())
                if rec is None:
                    continue
                if isinstance(ev, exa.NeighborEvent):
                    rec.post(PeerChanged(ev.peer, ev.state, ev.reason))
                    if ev.state == "down" and ev.reason == TCP_FAILED:
                        self._test_connection(rec, ev.peer)
                elif isinstance(ev, exa.Negotiated):
                    rec.post(PeerNegotiated(ev.peer, ev.families))
                elif isinstance(ev, exa.Notification):
                    rec.post(PeerNotification(ev.peer, ev.direction, ev.code, ev.subcode, ev.text))
        finally:
            parent.cancel()
            if get is not None:
                get.cancel()  # a leftover getter would swallow the next event (EOF!)

    async def _watch_drain(self, rec: Reconciler) -> None:
        drained = rec.world.node.drained
        while True:
            await asyncio.sleep(DRAIN_POLL)
            now = rec.world.config.drain_file.exists()
            if now != drained:
                drained = now
                rec.post(DrainChanged(now))

    async def _resync_timer(self, rec: Reconciler, session: exa.ExaBgpSession) -> None:
        while True:
            await asyncio.sleep(rec.world.config.resync_interval)
            neighbors = await read_neighbors(session)
            if neighbors is not None:
                if session.neighbors is None:
                    session.neighbors = exa.neighbors_by_family(neighbors)
                rec.post(peers_read(neighbors))
            rec.post(Resync())

    async def _diagnose_peers(self, rec: Reconciler) -> None:
        """Every second, for each session down longer than DIAGNOSE_AFTER, what the kernel says
        of ExaBGP's own attempts: no route to the router, or a SYN nobody answers (no traffic
        of its own: a BGP daemon that accepts a connection counts its closing as a failure)."""
        md5_base: dict[str, int] = {}
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for peer in rec.world.config.bgp.peers:
                key = str(peer.address)
                st = rec.world.peers.get(key, PeerStatus())
                if st.state != "down":
                    md5_base.pop(key, None)
                    continue
                base = md5_base.setdefault(key, bgpconnect.md5_drops())
                if now - st.since < DIAGNOSE_AFTER:
                    continue
                diagnosis = self._kernel_view(peer, bgpconnect.md5_drops() - base)
                if diagnosis is not None:
                    rec.post(PeerProbed(key, diagnosis))

    @staticmethod
    def _kernel_view(peer: PeerConfig, md5_drops: int) -> str | None:
        try:
            if netlink.local_address_for(peer.address) is None:
                return f"no route to the router: this host's kernel has none to {peer.address}"
        except Exception as e:
            log.debug(logs.kv("route-lookup-failed", peer=peer.label, error=e))
        retransmits = bgpconnect.unanswered_syn(peer.address, peer.port)
        if retransmits is None or retransmits < 1:
            return None
        md5 = peer.password_file is not None
        return explain_unanswered(retransmits, port=peer.port, md5=md5, md5_drops=md5_drops)

    def _test_connection(self, rec: Reconciler, address: str) -> None:
        """One of ExaBGP's attempts just failed at the TCP level: test the connection now (the
        router's daemon is not accepting it this instant), at most once per DIAGNOSE_GAP."""
        now = time.monotonic()
        peer = next((p for p in rec.world.config.bgp.peers if str(p.address) == address), None)
        if peer is None or now < self._next_test.get(address, 0.0):
            return
        self._next_test[address] = now + DIAGNOSE_GAP
        task = asyncio.create_task(self._diagnose(rec, peer), name=f"connection test {address}")
        self._tests.add(task)
        task.add_done_callback(self._tests.discard)

    async def _diagnose(self, rec: Reconciler, peer: PeerConfig) -> None:
        try:
            password = read_password(peer.password_file) if peer.password_file else None
            local = peer.local_address or netlink.local_address_for(peer.address)
        except Exception as e:
            rec.post(PeerProbed(str(peer.address), f"cannot test the connection: {e}"))
            return
        result = await bgpconnect.connect_test(
            peer.address, peer.port, local=local, password=password, wait=DIAGNOSE_WAIT
        )
        rec.post(
            PeerProbed(str(peer.address), explain_connect(result, port=peer.port, md5=password is not None))
        )

    async def _cease(self, session: exa.ExaBgpSession, rec: Reconciler) -> None:
        """`bgpvip run` is stopping ExaBGP: close the sessions with Cease (Administrative
        Shutdown), not by dropping TCP, so routers take the next session from this host at
        once (GoBGP holds a peer idle for seconds after a silent close)."""
        established = sorted(peer for peer, st in rec.world.peers.items() if st.up)
        try:
            ok = await session.cease_and_shutdown(established, wait=CEASE_WAIT)
        except exa.ExaBgpError as e:
            log.warning(logs.kv("cease-failed", error=e))
            return
        log.info(logs.kv("cease", peers=",".join(established) or None, notified=ok))

    async def _watch_config(
        self, rec: Reconciler, probe_mgr: ProbeManager, board: StatusBoard, reload_now: asyncio.Event
    ) -> None:
        stamp = file_stamp(self.config_path)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reload_now.wait(), timeout=CONFIG_POLL)
            forced = reload_now.is_set()
            reload_now.clear()
            now = file_stamp(self.config_path)
            if not forced and now == stamp:
                continue
            stamp = now
            try:
                config = load_file(self.config_path)
            except ConfigError as e:
                board.config_error = str(e)
                board.m_config_reloads.labels("error").inc()
                log.error(
                    logs.kv(
                        "reload-rejected", file=self.config_path, error=str(e), keeping="last good config"
                    )
                )
                continue
            board.config_error = None
            old = rec.world.config
            if config == old:
                continue
            if config.bgp != old.bgp or config.exabgp != old.exabgp:
                log.warning(
                    logs.kv(
                        "reload-partial",
                        detail="bgp/exabgp settings need a restart of `bgpvip run`; VIPs reloaded",
                    )
                )
            board.m_config_reloads.labels("ok").inc()
            log.info(logs.kv("reload", vips=len(config.vips)))
            if self.addresses is not None and (warming := prepare_addresses(config, self.addresses)):
                await warming
            rec.post(ConfigChanged(config))
            probe_mgr.update(config)
            if self.bridge is not None:
                self.bridge.config_changed()


async def read_neighbors(session: exa.ExaBgpSession) -> tuple[exa.NeighborStatus, ...] | None:
    """ExaBGP's `show neighbor`, or None (logged) when it cannot be had."""
    try:
        return await session.neighbor_status()
    except exa.ExaBgpClosed:
        return None
    except Exception as e:
        log.warning(logs.kv("show-neighbor-failed", error=e))
        return None


def peers_read(neighbors: tuple[exa.NeighborStatus, ...]) -> PeersRead:
    return PeersRead(tuple((n.peer, n.established, n.negotiated) for n in neighbors))


def speaker_main(config_path: str | os.PathLike[str]) -> NoReturn:
    """Entry point of `bgpvip speaker`: ExaBGP's API process. stdout belongs to ExaBGP."""
    logs.setup(os.environ.get("BGPVIP_LOG_LEVEL", "INFO"))
    speaker = Speaker(Path(config_path), stdin=sys.stdin.buffer, stdout=sys.stdout.buffer)
    try:
        code = asyncio.run(speaker.run())
    except KeyboardInterrupt:
        code = 0
    except Exception:
        log.exception(logs.kv("crash", pause=CRASH_PAUSE))
        time.sleep(CRASH_PAUSE)
        code = 1
    # The stdin reader thread is blocked in readline() holding the buffer's lock; a normal
    # interpreter shutdown would abort on it ("could not acquire lock for <stdin>").
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
