"""compute(): from configuration, health and node state to the routes and addresses wanted now.

Pure side of the line. Every configured VIP (and every Service IP handed in) gets a Decision
with a reason, whether it is announced or not; `bgpvip routes` prints exactly these.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from bgpvip.core.config import (
    CheckKey,
    Config,
    VipConfig,
    effective_priority,
    host_prefix,
    route_attributes,
)
from bgpvip.core.health import Health, State, combine
from bgpvip.core.health import initial as initial_health
from bgpvip.core.model import (
    Attributes,
    Decision,
    Desired,
    IPInterface,
    Reason,
    Route,
    decision_order,
    one_route_per_prefix,
)
from bgpvip.core.peers import PeerStatus, family_problems
from bgpvip.core.services import ServiceDecisions


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeState:
    """Local operator state that overrides health."""

    drained: bool = False
    """The drain file exists: withdraw every route, keep running."""
    stopping: bool = False
    """SIGTERM received: withdraw every route before exiting."""


def vip_attributes(config: Config, vip: VipConfig) -> Attributes:
    """BGP attributes of a VIP's route, including the node priority (MED or AS-path prepend)."""
    return route_attributes(config, vip, effective_priority(config, vip))


def vip_route(config: Config, vip: VipConfig) -> Route:
    return Route(prefix=host_prefix(vip), attributes=vip_attributes(config, vip))


def vip_interface_address(vip: VipConfig) -> IPInterface:
    return ipaddress.ip_interface(f"{vip.address}/{vip.address.max_prefixlen}")


def check_keys(vip: VipConfig) -> tuple[CheckKey, ...]:
    return tuple(CheckKey(vip.label, i) for i in range(len(vip.checks)))


def _describe_failure(vip: VipConfig, healths: Mapping[CheckKey, Health]) -> tuple[Reason, str]:
    failing: list[str] = []
    pending: list[str] = []
    for key, check in zip(check_keys(vip), vip.checks, strict=True):
        h = healths.get(key, initial_health())
        name = f"checks[{key.index}] ({check.type})"
        if h.state == State.DOWN:
            last = h.last_failure.detail if h.last_failure else "failed"
            failing.append(f"{name}: {last}")
        elif h.state in (State.INIT, State.RISING):
            pending.append(f"{name}: {h.count}/{check.rise} successes")
    if failing:
        return Reason.CHECK_FAILING, "; ".join(failing)
    return Reason.CHECK_PENDING, "; ".join(pending) or "waiting for checks"


def decide_vip(
    config: Config, vip: VipConfig, healths: Mapping[CheckKey, Health], node: NodeState
) -> Decision:
    def decision(announce: bool, reason: Reason, detail: str) -> Decision:
        return Decision(
            address=vip.address,
            announce=announce,
            reason=reason,
            detail=detail,
            source=f"vip/{vip.label}",
            route=vip_route(config, vip),
            interface=vip.interface,
        )

    if node.stopping:
        return decision(False, Reason.STOPPING, "shutting down")
    vip_healths = [healths.get(k, initial_health()) for k in check_keys(vip)]
    healthy = combine(vip_healths, vip.require)
    if healthy and node.drained:
        return decision(False, Reason.DRAINED, f"drain file {config.drain_file} exists")
    if healthy:
        ups = sum(h.up for h in vip_healths)
        return decision(
            True, Reason.HEALTHY, f"{ups}/{len(vip_healths)} checks up" if vip_healths else "no checks"
        )
    reason, detail = _describe_failure(vip, healths)
    return decision(False, reason, f"drained; {detail}" if node.drained else detail)


HELD_SOURCE = "service/?"
"""The source of the Service routes held before Kubernetes was listed (not known yet)."""


def held_service_routes(config: Config, announced: Iterable[Route]) -> tuple[Decision, ...]:
    """Fail static before Kubernetes was listed: keep the pool routes ExaBGP already carries
    (a restarted speaker must not withdraw Service IPs while its first list is in flight)."""
    held = []
    for r in announced:
        address = r.prefix.network_address
        if any(pool.contains(address) for pool in config.pools):
            held.append(
                Decision(
                    address=address,
                    announce=True,
                    reason=Reason.KEPT_FROM_PREVIOUS,
                    detail="Kubernetes not listed yet: kept as ExaBGP had it",
                    source=HELD_SOURCE,
                    route=r,
                )
            )
    return tuple(held)


def compute(
    config: Config,
    healths: Mapping[CheckKey, Health],
    node: NodeState,
    service_decisions: ServiceDecisions | Iterable[Decision] = (),
    peers: Mapping[str, PeerStatus] | None = None,
) -> Desired:
    """The full desired state. Deterministic: the same inputs in any order give the same result.

    Service decisions come as a `ServiceDecisions` table (the speaker) or plain decisions (tests,
    held routes). The table's routes are taken as they are: with 10,000 Services this function
    does no work per Service, only set operations the interpreter runs in C.

    `peers` (address → session status) only changes reasons: a route whose family no session
    carries is still announced to ExaBGP (it goes out when a session comes up) but its decision
    says why no router has it (`peers.family_problems`)."""
    table = (
        service_decisions
        if isinstance(service_decisions, ServiceDecisions)
        else ServiceDecisions.of(service_decisions)
    )
    own = sorted((decide_vip(config, vip, healths, node) for vip in config.vips), key=decision_order)
    problems = family_problems(config.bgp.peers, peers) if peers else {}
    if problems and not node.stopping:
        own = [_undelivered(d, problems) for d in own]
    override: tuple[Reason, str] | None = None
    if node.stopping:
        override = (Reason.STOPPING, "shutting down")
    elif node.drained:
        override = (Reason.DRAINED, f"drain file {config.drain_file} exists")
    # (VIPs and pools cannot overlap in a valid config, so a Service route never meets a VIP's.)
    routes = one_route_per_prefix(own)
    if override is None and table.routes:
        clash = {r.prefix for r in routes} & {r.prefix for r in table.routes} if routes else set()
        routes = routes | (
            table.routes if not clash else frozenset(r for r in table.routes if r.prefix not in clash)
        )
    addresses: set[tuple[str, IPInterface]] = set()
    by_label = {f"vip/{vip.label}": vip for vip in config.vips}
    for d in own:
        vip = by_label[d.source]
        # The address stays while the VIP is healthy, drained or not: a drain moves new
        # connections away but lets established ones finish on this host.
        keep = d.announce or d.reason == Reason.DRAINED
        if keep and vip.interface is not None:
            addresses.add((vip.interface, vip_interface_address(vip)))
    return Desired(
        routes=routes,
        addresses=frozenset(addresses),
        own=tuple(own),
        table=table if len(table.by_source) else None,
        override=override,
        undelivered=tuple((v, reason, detail) for v, (reason, detail) in sorted(problems.items())),
        release_delay=config.release_delay,
        release_now=frozenset(
            (vip.address.version, int(vip.address)) for vip in config.vips if server_gone(vip, healths)
        ),
    )


def _undelivered(d: Decision, problems: Mapping[int, tuple[Reason, str]]) -> Decision:
    problem = problems.get(d.address.version) if d.announce else None
    if problem is None:
        return d
    reason, detail = problem
    return replace(d, reason=reason, detail=f"{detail}; {d.detail}" if d.detail else detail)


def server_gone(vip: VipConfig, healths: Mapping[CheckKey, Health]) -> bool:
    """Whether a check of `vip` is down because it saw its server die (connection refused or
    reset): nothing answers on the VIP here any more, so holding its address after the
    withdrawal would only keep local clients from going through the router."""
    for key in check_keys(vip):
        h = healths.get(key)
        if h is not None and h.state == State.DOWN and h.last_failure is not None and h.last_failure.broken:
            return True
    return False
