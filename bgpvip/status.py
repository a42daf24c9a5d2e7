"""The status endpoint: `/status` (JSON), `/metrics` (Prometheus) and `/healthz`.

I/O side. `StatusBoard` is the reconcile loop's Observer: it keeps the last reconciled
picture (decisions with reasons and since-when, peers, checks) and the Prometheus metrics.
The HTTP server is a few lines of asyncio: it only ever reads the board.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bgpvip import __version__, logs
from bgpvip.core import health as healthmod
from bgpvip.core.config import CheckKey
from bgpvip.core.desired import check_keys
from bgpvip.core.model import (
    NOT_DELIVERED,
    Action,
    Applied,
    Decision,
    Desired,
    IPAddress,
    IPInterface,
    ProbeResult,
    Reason,
    Route,
    UnitFailure,
    overridden,
)
from bgpvip.core.peers import PeerStatus, carries, session_problem
from bgpvip.core.services import ServiceDecisions
from bgpvip.reconcile import World

log = logs.get("status")

_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def route_json(r: Route) -> dict[str, Any]:
    a = r.attributes
    out: dict[str, Any] = {"prefix": str(r.prefix), "next_hop": r.next_hop}
    if a.med is not None:
        out["med"] = a.med
    if a.local_preference is not None:
        out["local_preference"] = a.local_preference
    if a.communities:
        out["communities"] = list(a.communities)
    if a.large_communities:
        out["large_communities"] = list(a.large_communities)
    if a.as_path:
        out["as_path"] = list(a.as_path)
    return out


@dataclass(frozen=True, slots=True)
class _Since:
    announced: bool
    reason: str
    wall: float


def _groups(decisions: Iterable[Decision]) -> dict[str, tuple[Decision, ...]]:
    out: dict[str, list[Decision]] = {}
    for d in decisions:
        out.setdefault(d.source, []).append(d)
    return {k: tuple(v) for k, v in out.items()}


class StatusBoard:
    """The loop's Observer: the picture `/status` serves, and the metrics."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self.started = time.time()
        self.registry = CollectorRegistry()
        r = self.registry
        self.m_announced = Gauge(
            "bgpvip_routes_announced", "Routes ExaBGP acknowledged, by source kind", ["kind"], registry=r
        )
        self.m_decisions = Gauge(
            "bgpvip_addresses",
            "Configured addresses by kind, reason and whether announced",
            ["kind", "reason", "announced"],
            registry=r,
        )
        self.m_vip_announced = Gauge(
            "bgpvip_vip_announced", "1 while the VIP's route is announced", ["vip", "address"], registry=r
        )
        self.m_vip_degraded = Gauge(
            "bgpvip_vip_degraded",
            "1 while the VIP's route is announced with lower preference (a lower-preference check fails)",
            ["vip", "address"],
            registry=r,
        )
        self.m_check_up = Gauge(
            "bgpvip_check_up", "1 while the check counts as up", ["vip", "check"], registry=r
        )
        self.m_check_state = Gauge(
            "bgpvip_check_state", "1 for the check's current state", ["vip", "check", "state"], registry=r
        )
        self.m_check_results = Counter(
            "bgpvip_check_results", "Probe results", ["vip", "check", "result"], registry=r
        )
        self.m_check_duration = Histogram(
            "bgpvip_check_duration_seconds",
            "Probe duration",
            ["vip", "check"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.m_peer_up = Gauge(
            "bgpvip_peer_up",
            "1 while the BGP session is established and carries every family configured for it",
            ["peer"],
            registry=r,
        )
        self.m_peer_established = Gauge(
            "bgpvip_peer_established", "1 while the BGP session is established", ["peer"], registry=r
        )
        self.m_peer_family = Gauge(
            "bgpvip_peer_family_up",
            "1 while the established session carries the family (negotiated in the OPENs)",
            ["peer", "family"],
            registry=r,
        )
        self.m_reconciles = Counter("bgpvip_reconciles", "Reconcile passes", registry=r)
        self.m_reconcile_seconds = Histogram(
            "bgpvip_reconcile_duration_seconds", "Reconcile pass duration", buckets=_FAST_BUCKETS, registry=r
        )
        self.m_action_failures = Counter(
            "bgpvip_action_failures", "Actions an adapter failed or rejected", ["action"], registry=r
        )
        self.m_failing = Gauge(
            "bgpvip_prefixes_failing",
            "Prefixes whose last attempted step failed (retried on their own), by reason",
            ["reason"],
            registry=r,
        )
        self.m_held = Gauge(
            "bgpvip_addresses_held",
            "Addresses kept after their route was withdrawn, until routers have converged",
            registry=r,
        )
        self.m_foreign = Gauge(
            "bgpvip_addresses_not_owned",
            "Wanted addresses found on their interface but not bgpvip's (never removed by bgpvip)",
            registry=r,
        )
        self.m_drained = Gauge("bgpvip_drained", "1 while the drain file exists", registry=r)
        self.m_config_reloads = Counter(
            "bgpvip_config_reloads", "Config reloads by result", ["result"], registry=r
        )
        self.m_last_reconcile = Gauge(
            "bgpvip_last_reconcile_timestamp_seconds", "Unix time of the last reconcile pass", registry=r
        )
        self.world: World | None = None
        self.desired = Desired()
        self.applied = Applied()
        self._since: dict[str, dict[IPAddress, _Since]] = {}
        """source → address → since when its (announce, reason) holds"""
        self.last_reconcile_monotonic = time.monotonic()
        self.last_errors: list[dict[str, Any]] = []
        self.config_error: str | None = None
        self.failures: Mapping[tuple[int, int], UnitFailure] = {}
        self.held: Mapping[tuple[str, IPInterface], float] = {}
        """Held addresses and when (monotonic) they are released."""
        self._fresher: dict[CheckKey, healthmod.Health] = {}
        """Check health from probe results that came after the last pass (a result that changes
        no decision triggers no pass), so the per-check view shows the latest one."""

    # ---- Observer

    def reconciled(self, world: World, desired: Desired, applied: Applied, seconds: float) -> None:
        """Called after every pass. Costs O(decisions that changed): with 10,000 Services the
        loop must not pay a walk over all of them per event. Per-reason counts are left to
        `refresh_counts`, which the /metrics handler calls."""
        previous = self.desired
        self.world, self.desired, self.applied = world, desired, applied
        self._fresher.clear()  # the world holds every result folded in so far
        self.last_reconcile_monotonic = time.monotonic()
        self.m_reconciles.inc()
        self.m_reconcile_seconds.observe(seconds)
        self.m_last_reconcile.set(time.time())
        self.m_drained.set(1 if world.node.drained else 0)
        self.m_foreign.set(len(applied.foreign))
        now = time.time()
        self._track(_groups(desired.own), _groups(previous.own), now)
        new_t, old_t = desired.table, previous.table
        if (
            isinstance(new_t, ServiceDecisions)
            and isinstance(old_t, ServiceDecisions)
            and desired.override == previous.override
            and desired.undelivered == previous.undelivered
        ):
            changed = new_t.by_source.changed_keys(old_t.by_source)
            override, undelivered = desired.override, desired.undelivered
            self._track(
                {s: overridden(new_t.by_source.get(s, ()), override, undelivered) for s in changed},
                {s: () for s in changed},
                now,
            )
        elif new_t is not None or old_t is not None:
            everything = _groups(d for d in desired.decisions if not d.source.startswith("vip/"))
            gone = {s: () for s in self._since if not s.startswith("vip/") and s not in everything}
            self._track(everything, gone, now)
        # applied routes of the VIPs' prefixes, found through the (C-level) set of keys wanted
        vip_keys = {d.route.key for d in desired.own if d.route is not None}
        announced = (
            {r.key for r in desired.routes & applied.routes if r.key in vip_keys} if vip_keys else set()
        )
        for d in desired.own:
            is_announced = (
                d.announce
                and d.route is not None
                and d.route.key in announced
                and d.reason not in NOT_DELIVERED
            )
            labels = (d.source.split("/", 1)[1], str(d.address))
            self.m_vip_announced.labels(*labels).set(1 if is_announced else 0)
            self.m_vip_degraded.labels(*labels).set(1 if is_announced and d.reason == Reason.DEGRADED else 0)
        self._peer_metrics(world)

    def _peer_metrics(self, world: World) -> None:
        """For every configured peer, known or not (a restarted speaker asks ExaBGP first)."""
        for peer in world.config.bgp.peers:
            address = str(peer.address)
            st = world.peers.get(address, PeerStatus())
            self.m_peer_up.labels(address).set(1 if carries(peer, st) else 0)
            self.m_peer_established.labels(address).set(1 if st.up else 0)
            for family in peer.families:
                ok = st.up and (st.families is None or family in st.families)
                self.m_peer_family.labels(address, family).set(1 if ok else 0)

    def _track(
        self,
        groups: Mapping[str, tuple[Decision, ...]],
        previous: Mapping[str, tuple[Decision, ...]],
        now: float,
    ) -> None:
        """Since-when per decision: kept while (announce, reason) stays the same.

        Keyed by the decision's address object (shared with its route), and the decisions that
        change at the same moment in the same way share one `_Since`: after the first list of
        10,000 Services that is one object instead of 10,000 (~1 MB)."""
        for source in previous.keys() - groups.keys():
            self._since.pop(source, None)
        fresh: dict[tuple[bool, str], _Since] = {}
        for source, decisions in groups.items():
            old = self._since.get(source, {})
            new: dict[IPAddress, _Since] = {}
            for d in decisions:
                prev = old.get(d.address)
                if prev is None or prev.announced != d.announce or prev.reason != d.reason.value:
                    k = (d.announce, d.reason.value)
                    prev = fresh.get(k) or fresh.setdefault(k, _Since(d.announce, d.reason.value, now))
                new[d.address] = prev
            if new:
                self._since[source] = new
            else:
                self._since.pop(source, None)

    def metrics(self) -> tuple[int, str, bytes]:
        self.refresh_counts()
        return metrics_body(self.registry)

    def refresh_counts(self) -> None:
        """Per-kind/reason gauges, from the last pass. O(decisions), so done when scraped."""
        announced_prefixes = {r.prefix for r in self.applied.routes}
        counts: dict[tuple[str, str, str], int] = {}
        kinds: dict[str, int] = {"vip": 0, "service": 0}
        for d in self.desired.decisions:
            kind = d.source.split("/", 1)[0] or "other"
            is_announced = (
                d.announce
                and d.route is not None
                and d.route.prefix in announced_prefixes
                and d.reason not in NOT_DELIVERED
            )
            key = (kind, d.reason.value, "true" if is_announced else "false")
            counts[key] = counts.get(key, 0) + 1
            if is_announced:
                kinds[kind] = kinds.get(kind, 0) + 1
        self.m_decisions.clear()
        for (kind, reason, ann), n in counts.items():
            self.m_decisions.labels(kind, reason, ann).set(n)
        for kind, n in kinds.items():
            self.m_announced.labels(kind).set(n)

    def units(
        self, failures: Mapping[tuple[int, int], UnitFailure], held: Mapping[tuple[str, IPInterface], float]
    ) -> None:
        if failures or self.failures:
            counts: dict[str, int] = {}
            for f in failures.values():
                counts[f.reason] = counts.get(f.reason, 0) + 1
            self.m_failing.clear()
            for reason, n in counts.items():
                self.m_failing.labels(reason).set(n)
        self.failures, self.held = dict(failures), dict(held)
        self.m_held.set(len(held))

    def action_failed(self, action: Action, error: str) -> None:
        self.m_action_failures.labels(type(action).__name__.lower()).inc()
        self.last_errors = (
            [{"action": type(action).__name__, "error": error, "at": time.time()}, *self.last_errors]
        )[:10]

    def probe(self, key: CheckKey, result: ProbeResult, health: healthmod.Health) -> None:
        self._fresher[key] = health
        vip, check = key.vip, str(key.index)
        self.m_check_results.labels(vip, check, "ok" if result.ok else "fail").inc()
        self.m_check_duration.labels(vip, check).observe(result.duration)
        self.m_check_up.labels(vip, check).set(1 if health.up else 0)
        for st in healthmod.State:
            self.m_check_state.labels(vip, check, st.value).set(1 if st == health.state else 0)

    # ---- views

    def snapshot(self) -> dict[str, Any]:
        w = self.world
        announced_prefixes = {r.prefix for r in self.applied.routes}
        decisions = []
        for d in self.desired.decisions:
            decisions.append(self._decision_json(d, announced_prefixes))
        peers = []
        checks = []
        if w is not None:
            for p in w.config.bgp.peers:
                st = w.peers.get(str(p.address))
                peers.append(
                    {
                        "name": p.label,
                        "address": str(p.address),
                        "peer_as": p.peer_as,
                        "local_as": p.local_as or w.config.bgp.local_as,
                        "families": list(p.families),
                        "state": st.state if st else "unknown",
                        "since_seconds": round(time.monotonic() - st.since, 1) if st else None,
                        "families_negotiated": sorted(st.families)
                        if st and st.families is not None
                        else None,
                        "carries_every_family": carries(p, st) if st else False,
                        "reason": session_problem(p, st) if st else "",
                        "last_notification": st.notification if st else "",
                    }
                )
            for vip in w.config.vips:
                for key, check in zip(check_keys(vip), vip.checks, strict=True):
                    h = self._fresher.get(key) or w.health.get(key, healthmod.initial())
                    checks.append(
                        {
                            "vip": vip.label,
                            "index": key.index,
                            "type": check.type,
                            "on_failure": check.on_failure,
                            "state": h.state.value,
                            "up": h.up,
                            "last": h.last.detail if h.last else None,
                            "last_ok": h.last.ok if h.last else None,
                            "last_failure": h.last_failure.detail if h.last_failure else None,
                            "since_seconds": round(time.monotonic() - h.since, 1) if h.since else None,
                        }
                    )
        return {
            "node": self.node_name,
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 1),
            "drained": bool(w and w.node.drained),
            "stopping": bool(w and w.node.stopping),
            "peers": peers,
            "decisions": decisions,
            "checks": checks,
            "routes_announced": len(self.applied.routes),
            "addresses": sorted(f"{i} {a}" for i, a in self.applied.addresses),
            "errors": self.last_errors,
            "config_error": self.config_error,
        }

    def _decision_json(self, d: Decision, announced_prefixes: set[Any]) -> dict[str, Any]:
        is_announced = (
            d.route is not None
            and d.route.prefix in announced_prefixes
            and d.announce
            and d.reason not in NOT_DELIVERED
        )
        since = self._since.get(d.source, {}).get(d.address)
        key = (d.address.version, int(d.address))
        failure = self.failures.get(key)
        now = time.monotonic()
        held = [due for (_, a), due in self.held.items() if a.ip == d.address]
        foreign = [i for i, a in self.applied.foreign if a.ip == d.address]
        return {
            "address": str(d.address),
            "prefix": str(d.route.prefix) if d.route else None,
            "source": d.source,
            "announce": d.announce,
            "announced": is_announced,
            "reason": d.reason.value,
            "detail": d.detail,
            "interface": d.interface,
            "attributes": route_json(d.route) if d.route else None,
            "since": since.wall if since else None,
            "failure": (
                {
                    "reason": failure.reason,
                    "step": failure.step,
                    "error": failure.error,
                    "attempts": failure.attempts,
                    "for_seconds": round(max(0.0, now - failure.since), 1),
                }
                if failure is not None
                else None
            ),
            "address_held_seconds": round(max(0.0, max(held) - now), 3) if held else None,
            "address_not_owned": foreign[0] if foreign else None,
        }

    def alive(self, max_silence: float) -> tuple[bool, str]:
        age = time.monotonic() - self.last_reconcile_monotonic
        if age > max_silence:
            return False, f"no reconcile for {age:.0f}s"
        return True, "ok"

    def healthy(self, max_silence: float) -> tuple[bool, str]:
        if self.config_error is not None:
            return False, f"config error: {self.config_error}"
        return self.alive(max_silence)


Handler = Callable[[], tuple[int, str, bytes]]
"""Answers one GET: (status code, content type, body)."""

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def text(ok: bool, why: str) -> tuple[int, str, bytes]:
    return (200 if ok else 503), "text/plain", why.encode() + b"\n"


def json_body(data: object) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(data, indent=2).encode() + b"\n"


def metrics_body(registry: CollectorRegistry) -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, generate_latest(registry)


class HttpServer:
    """A tiny read-only HTTP/1.0 server: GET and HEAD on a fixed table of paths. The speaker's
    status endpoint and the controller's both use it."""

    def __init__(self, routes: Mapping[str, Handler], host: str, port: int, *, name: str = "status") -> None:
        self.routes = dict(routes)
        self.host = host
        self.port = port
        self.name = name
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(logs.kv(f"{self.name}-listening", address=f"{self.host}:{self.port}"))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        handler = self.routes.get(path)
        if handler is None:
            return 404, "text/plain", ("try " + ", ".join(sorted(self.routes)) + "\n").encode()
        return handler()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            parts = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(parts) == 3:
                method, path = parts[0], parts[1].split("?", 1)[0]
                code, ctype, body = self._answer(method, path)
            else:
                method, (code, ctype, body) = "", (400, "text/plain", b"bad request\n")
            writer.write(
                f"HTTP/1.0 {code} {_REASONS.get(code, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def status_server(board: StatusBoard, host: str, port: int, *, max_silence: float) -> HttpServer:
    """The speaker's endpoint: /status, /metrics, /healthz, and /livez for liveness only (the
    loop runs), so a rejected config reload does not make the kubelet restart every node's
    speaker at once; that is /healthz's business."""
    return HttpServer(
        {
            "/status": lambda: json_body(board.snapshot()),
            "/metrics": board.metrics,
            "/healthz": lambda: text(*board.healthy(max_silence)),
            "/livez": lambda: text(*board.alive(max_silence)),
        },
        host,
        port,
    )
