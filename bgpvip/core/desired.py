"""compute(): from configuration, health and node state to the routes and addresses wanted now.

Pure side of the line. Every configured VIP (and every Service IP handed in) gets a Decision
with a reason, whether it is announced or not; `bgpvip routes` prints exactly these.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from bgpvip.core.config import (
    NO_PENALTY,
    Check,
    CheckKey,
    Config,
    HttpCheck,
    KubeApiserverCheck,
    Penalty,
    VipConfig,
    effective_priority,
    failure_penalty,
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


def vip_attributes(config: Config, vip: VipConfig, penalty: Penalty = NO_PENALTY) -> Attributes:
    """BGP attributes of a VIP's route, including the node priority (MED or AS-path prepend) and
    the penalty of its failing `lower-preference` checks."""
    a = route_attributes(config, vip, effective_priority(config, vip))
    med = a.med
    if med is None and any(failure_penalty(config, c).med for c in vip.checks):
        # an explicit 0, not "missing": routers that take a missing MED as the worst
        # (Yamaha RTX, missing-as-worst) would otherwise prefer the penalised route
        med = 0
    if penalty.med:
        med = (med or 0) + penalty.med
    as_path = a.as_path
    if penalty.prepend:
        prepends = (len(as_path) - 1 if as_path else 0) + penalty.prepend
        as_path = (config.bgp.local_as,) * (prepends + 1)
    if (med, as_path) == (a.med, a.as_path):
        return a
    return replace(a, med=med, as_path=as_path)


def vip_route(config: Config, vip: VipConfig, penalty: Penalty = NO_PENALTY) -> Route:
    return Route(prefix=host_prefix(vip), attributes=vip_attributes(config, vip, penalty))


def vip_interface_address(vip: VipConfig) -> IPInterface:
    return ipaddress.ip_interface(f"{vip.address}/{vip.address.max_prefixlen}")


def check_keys(vip: VipConfig) -> tuple[CheckKey, ...]:
    return tuple(CheckKey(vip.label, i) for i in range(len(vip.checks)))


def check_label(check: Check) -> str:
    """How a check is named in details: its kind, and what it asks for where that tells two
    checks of one kind apart (`kube-apiserver /readyz?exclude=etcd`)."""
    if isinstance(check, KubeApiserverCheck):
        return f"kube-apiserver {check.target}"
    if isinstance(check, HttpCheck):
        parts = urlsplit(check.url)
        return f"http {parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    return check.type


def _not_up(name: str, check: Check, h: Health) -> str | None:
    """Why a check does not count as up, or None when it does."""
    if h.state == State.DOWN:
        return f"{name}: {h.last_failure.detail if h.last_failure else 'failed'}"
    if h.state in (State.INIT, State.RISING):
        return f"{name}: {h.count}/{check.rise} successes"
    return None


def _describe_failure(vip: VipConfig, healths: Mapping[CheckKey, Health]) -> tuple[Reason, str]:
    failing: list[str] = []
    pending: list[str] = []
    for key, check in zip(check_keys(vip), vip.checks, strict=True):
        if check.on_failure != "withdraw":
            continue
        h = healths.get(key, initial_health())
        why = _not_up(f"checks[{key.index}] ({check_label(check)})", check, h)
        if why is not None:
            (failing if h.state == State.DOWN else pending).append(why)
    if failing:
        return Reason.CHECK_FAILING, "; ".join(failing)
    return Reason.CHECK_PENDING, "; ".join(pending) or "waiting for checks"


def vip_penalty(
    config: Config, vip: VipConfig, healths: Mapping[CheckKey, Health]
) -> tuple[Penalty, tuple[str, ...]]:
    """The summed penalty of the VIP's `lower-preference` checks that are not up (DOWN, or not
    risen yet: a route is not preferred before its checks have shown it deserves to be), and
    why each of them is not up."""
    penalty, why = NO_PENALTY, []
    for key, check in zip(check_keys(vip), vip.checks, strict=True):
        p = failure_penalty(config, check)
        if not p:
            continue
        reason = _not_up(
            f"checks[{key.index}] ({check_label(check)})", check, healths.get(key, initial_health())
        )
        if reason is not None:
            penalty += p
            why.append(reason)
    return penalty, tuple(why)


def describe_penalty(p: Penalty) -> str:
    parts = [f"MED +{p.med}"] if p.med else []
    if p.prepend:
        parts.append(f"{p.prepend} AS-path prepend{'s' if p.prepend > 1 else ''}")
    return ", ".join(parts)


def decide_vip(
    config: Config, vip: VipConfig, healths: Mapping[CheckKey, Health], node: NodeState
) -> Decision:
    """Announce while the `withdraw` checks pass (as `require` says); failing `lower-preference`
    checks only make the announced route less preferred (reason `degraded`)."""
    penalty, penalised = vip_penalty(config, vip, healths)
    route = vip_route(config, vip, penalty)

    def decision(announce: bool, reason: Reason, detail: str) -> Decision:
        return Decision(
            address=vip.address,
            announce=announce,
            reason=reason,
            detail=detail,
            source=f"vip/{vip.label}",
            route=route,
            interface=vip.interface,
        )

    if node.stopping:
        return decision(False, Reason.STOPPING, "shutting down")
    hard = [
        healths.get(k, initial_health())
        for k, c in zip(check_keys(vip), vip.checks, strict=True)
        if c.on_failure == "withdraw"
    ]
    healthy = combine(hard, vip.require)
    if healthy and node.drained:
        return decision(False, Reason.DRAINED, f"drain file {config.drain_file} exists")
    if healthy and penalised:
        return decision(
            True,
            Reason.DEGRADED,
            f"announced with lower preference ({describe_penalty(penalty)}): " + "; ".join(penalised),
        )
    if healthy:
        ups = sum(healths.get(k, initial_health()).up for k in check_keys(vip))
        return decision(
            True, Reason.HEALTHY, f"{ups}/{len(vip.checks)} checks up" if vip.checks else "no checks"
        )
    reason, detail = _describe_failure(vip, healths)
    return decision(False, reason, f"drained; {detail}" if node.drained else detail)


def announced_as_penalised(config: Config, vip: VipConfig, route: Route) -> bool:
    """Whether `route` (as ExaBGP carries it) has more MED or a longer AS path than the VIP's
    unpenalised route: a restarted speaker then starts its `lower-preference` checks not UP, so
    that it keeps the route penalised until they pass instead of claiming full preference."""
    healthy = vip_attributes(config, vip)
    a = route.attributes
    return (a.med or 0) > (healthy.med or 0) or len(a.as_path) > len(healthy.as_path)


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
    withdrawal would only keep local clients from going through the router. Only `withdraw`
    checks count: a `lower-preference` check never withdraws, and may watch something else."""
    for key, check in zip(check_keys(vip), vip.checks, strict=True):
        if check.on_failure != "withdraw":
            continue
        h = healths.get(key)
        if h is not None and h.state == State.DOWN and h.last_failure is not None and h.last_failure.broken:
            return True
    return False
