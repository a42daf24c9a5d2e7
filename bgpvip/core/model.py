"""Values the core computes with: routes, decisions, actions, probe results.

Pure side of the line: frozen dataclasses only. Nothing here performs I/O or imports an
adapter; adapters translate their raw input into these values at the boundary.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Protocol

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
IPInterface = IPv4Interface | IPv6Interface


def host_network(address: IPAddress | str) -> IPNetwork:
    """The /32 (IPv4) or /128 (IPv6) host route for an address."""
    addr = ipaddress.ip_address(address)
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Attributes:
    """BGP path attributes of an announcement. Hashable, so routes can be grouped by them."""

    med: int | None = None
    local_preference: int | None = None
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    as_path: tuple[int, ...] = ()
    """AS numbers prepended to the path (ExaBGP `as-path [...]`); empty means none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One host route bgpvip announces. Only /32 and /128 exist; checked here.

    The hash is computed once: with 10,000 Service routes the loop compares whole sets of
    routes on every pass, and `ipaddress`'s own `__hash__` (pure Python) dominated that."""

    prefix: IPNetwork
    attributes: Attributes = field(default_factory=Attributes)
    next_hop: str = "self"
    _hash: int = field(init=False, repr=False, compare=False, default=0)
    key: tuple[int, int] = field(init=False, repr=False, compare=False, default=(0, 0))
    """(IP version, address as an integer): identifies the prefix, and hashes in C."""

    def __post_init__(self) -> None:
        if self.prefix.prefixlen != self.prefix.max_prefixlen:
            raise ValueError(f"bgpvip only announces host routes, not {self.prefix}")
        object.__setattr__(self, "_hash", hash((self.prefix, self.attributes, self.next_hop)))
        object.__setattr__(self, "key", (self.prefix.version, int(self.prefix.network_address)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def family(self) -> int:
        return self.prefix.version


class Reason(enum.StrEnum):
    """Why a VIP or Service IP is announced, or why it is not."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    """Announced, with lower preference: a `lower-preference` check is not up."""
    CHECK_FAILING = "checkFailing"
    CHECK_PENDING = "checkPending"
    KEPT_FROM_PREVIOUS = "keptFromPrevious"
    DRAINED = "drained"
    STOPPING = "stopping"
    NO_CHECKS_DISABLED = "checksDisabled"
    FAMILY_NOT_PEERED = "familyNotPeered"
    # Service IPs (Kubernetes)
    NOT_IN_POOL = "notInPool"
    NO_LOCAL_ENDPOINTS = "noLocalEndpoints"
    NO_READY_ENDPOINTS = "noReadyEndpoints"
    NODE_NOT_READY = "nodeNotReady"
    NODE_EXCLUDED = "nodeExcluded"
    NODE_NOT_SELECTED = "nodeNotSelected"
    NODE_DRAINED = "nodeDrained"
    OTHER_CLASS = "otherLoadBalancerClass"
    HAS_ENDPOINTS = "hasEndpoints"
    POOL_NOT_ALLOWED = "poolNotAllowed"
    EXTERNAL_IP_NOT_ALLOWED = "externalIPNotAllowed"
    INVALID_ADDRESS = "invalidAddress"
    NODE_UNKNOWN = "nodeUnknown"
    KUBE_NOT_SYNCED = "kubeNotSynced"
    # announced to ExaBGP, but no BGP session carries it (core/peers.py)
    FAMILY_NOT_NEGOTIATED = "familyNotNegotiated"
    PEERS_DOWN = "peersDown"


NOT_DELIVERED = frozenset({Reason.FAMILY_NOT_NEGOTIATED, Reason.PEERS_DOWN})
"""Reasons of a decision that announces (the route is in ExaBGP) while no router receives it:
such a route does not count as announced."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Whether one address is announced from this host, and why. What `bgpvip routes` prints."""

    address: IPAddress
    announce: bool
    reason: Reason
    detail: str = ""
    """Human text for the reason, e.g. the last check error."""
    source: str = ""
    """Where the address comes from: `vip/<name>` or `service/<namespace>/<name>`."""
    route: Route | None = None
    """The route that is (or would be) announced; None when the address is refused outright."""
    interface: str | None = None
    """Interface that holds the address while announced; None when bgpvip does not manage it."""
    written: str = ""
    """The address as the Service wrote it (`::ffff:203.0.113.13`, or invalid text), for Events
    and logs; empty for VIPs. Two refused entries of one Service differ here, not in `address`."""


class DecisionTable(Protocol):
    """Many decisions kept outside `Desired` (the Service decisions, `services.ServiceDecisions`):
    `Desired.decisions` sorts them in only when somebody asks (status, `bgpvip routes`)."""

    def sorted_decisions(self) -> tuple[Decision, ...]: ...


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Desired:
    """What should be true on this host right now: routes, local addresses, and the reasons."""

    routes: frozenset[Route] = frozenset()
    addresses: frozenset[tuple[str, IPInterface]] = frozenset()
    """(interface name, address/prefixlen) pairs bgpvip must hold."""
    own: tuple[Decision, ...] = ()
    """The VIP decisions, sorted."""
    table: DecisionTable | None = None
    """The Service decisions, as the Kubernetes side computed them (before `override`)."""
    override: tuple[Reason, str] | None = None
    """Drained or stopping: every announcing decision of `table` reads as not announced, why."""
    undelivered: tuple[tuple[int, Reason, str], ...] = ()
    """(IP version, reason, detail) for each family no BGP session carries: the announcing
    decisions of `table` in that family read so (the route stays in ExaBGP)."""
    release_delay: float = 0.0
    """Seconds an address stays after its route was withdrawn (the router is still converging)."""
    release_now: frozenset[tuple[int, int]] = frozenset()
    """Prefixes (`Route.key`) whose address goes at once after the withdraw: nothing serves it."""
    _merged: list[tuple[Decision, ...]] = field(default_factory=list, init=False, repr=False, compare=False)

    def __eq__(self, other: object) -> bool:
        """Equal when routes, addresses and every decision are (however they are stored)."""
        if not isinstance(other, Desired):
            return NotImplemented
        return (self.routes, self.addresses, self.decisions) == (
            other.routes,
            other.addresses,
            other.decisions,
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def decisions(self) -> tuple[Decision, ...]:
        """Every decision, sorted by address then source. Built on first use and kept: at
        10,000 Services this costs milliseconds, which the reconcile loop never pays."""
        if not self._merged:
            self._merged.append(self._merge())
        return self._merged[0]

    def _merge(self) -> tuple[Decision, ...]:
        if self.table is None:
            return self.own
        services = overridden(self.table.sorted_decisions(), self.override, self.undelivered)
        if not self.own:
            return services
        # Both parts are sorted by (family, address, source); a stable sort of the two keeps it.
        return tuple(sorted((*self.own, *services), key=decision_order))


def overridden(
    decisions: tuple[Decision, ...],
    override: tuple[Reason, str] | None,
    undelivered: tuple[tuple[int, Reason, str], ...] = (),
) -> tuple[Decision, ...]:
    """`decisions` as a drain or stop shows them (every announcing one reads as not announced),
    or else as the sessions show them (an announcing one whose family no session carries
    reads with that reason)."""
    if override is not None:
        reason, detail = override
        return tuple(
            replace(d, announce=False, reason=reason, detail=detail) if d.announce else d for d in decisions
        )
    if not undelivered:
        return decisions
    by_family = {version: (reason, detail) for version, reason, detail in undelivered}
    out = []
    for d in decisions:
        problem = by_family.get(d.address.version) if d.announce else None
        out.append(d if problem is None else replace(d, reason=problem[0], detail=problem[1]))
    return tuple(out)


def one_route_per_prefix(decisions: Iterable[Decision]) -> frozenset[Route]:
    """The routes of the announcing decisions, one per prefix whatever the inputs say; on a
    conflict the choice is stable (the smallest repr), so input order never shows."""
    by_prefix: dict[IPNetwork, Route] = {}
    for d in decisions:
        if d.announce and d.route is not None:
            current = by_prefix.get(d.route.prefix)
            if current is None or repr(d.route) < repr(current):
                by_prefix[d.route.prefix] = d.route
    return frozenset(by_prefix.values())


def decision_order(d: Decision) -> tuple[int, int, str]:
    return (d.address.version, int(d.address), d.source)


# Actions: what the reconcile loop asks the adapters to do, in order.


@dataclass(frozen=True, slots=True)
class AddAddress:
    interface: str
    address: IPInterface


@dataclass(frozen=True, slots=True)
class RemoveAddress:
    interface: str
    address: IPInterface


@dataclass(frozen=True, slots=True)
class Announce:
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class Withdraw:
    routes: tuple[Route, ...]


Action = AddAddress | RemoveAddress | Announce | Withdraw


@dataclass(frozen=True, slots=True)
class Applied:
    """What the adapters have confirmed: routes ExaBGP acknowledged, addresses the kernel holds."""

    routes: frozenset[Route] = frozenset()
    addresses: frozenset[tuple[str, IPInterface]] = frozenset()
    """Addresses bgpvip put there (it owns them, and may remove them)."""
    foreign: frozenset[tuple[str, IPInterface]] = frozenset()
    """Addresses bgpvip wants that were already there and are not its own: present, so a
    route may be announced for them, but never added again or removed by bgpvip."""


@dataclass(frozen=True, slots=True)
class UnitFailure:
    """Why one prefix is not where the plan wanted it: the step that failed, and since when."""

    step: str
    """`withdraw`, `address-remove`, `address-add` or `announce`."""
    error: str
    since: float
    """Clock reading (the loop's clock) of the first failure in a row."""
    attempts: int = 1

    @property
    def reason(self) -> str:
        """A reason in the style of `Reason`, for `bgpvip routes` and the metrics."""
        return {
            "withdraw": "withdrawFailed",
            "address-remove": "addressRemoveFailed",
            "address-add": "addressFailed",
            "announce": "announceFailed",
        }.get(self.step, "failed")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """The outcome of one health probe. Probes produce these and never raise."""

    ok: bool
    detail: str = ""
    """Short text: `HTTP 200`, `connection refused`, `timed out after 1.0s`, `exit 3: ...`."""
    duration: float = 0.0
    """Seconds the probe took."""
    at: float = 0.0
    """Monotonic clock reading when the probe finished."""
    broken: bool = False
    """True when the target was seen to die (connection reset/closed, refused): a hard failure."""
