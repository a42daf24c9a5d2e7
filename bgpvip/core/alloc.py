"""LoadBalancer IP allocation: which pool addresses each Service gets, or why it gets none.

Pure side of the line. The controller turns Services into `AllocService` views (a `ServiceView`
plus what allocation reads: annotations, families, selector, age) and calls `allocate`, which
reads nothing but its arguments and remembers nothing between calls. Everything a previous run
decided is in the Services' `status.loadBalancer.ingress`, so a restarted controller, or a new
leader, rebuilds exactly the allocations the statuses record before it assigns anything new.

One run, in three passes, each in a fixed order (creationTimestamp, then namespace/name):

1. keep: a Service whose status already holds valid addresses for its current request keeps
   them; of two that hold one address they may not share, the older keeps it;
2. requests: Services asking for specific addresses get them if free or shareable;
3. assign: the rest get an address shared under their sharing key, or the lowest free address
   of the first pool (in config order) they may use.

Addresses are released only in pass 1; passes 2 and 3 only add. So a Service refused in pass 2
or 3 was refused with no more addresses taken than a re-run would see, and a re-run from the
written statuses refuses it again and keeps everything else: writing the result and allocating
again changes nothing (tests/unit/test_alloc.py checks this property).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bgpvip.core.config import Config, PoolConfig
from bgpvip.core.services import Key, ServiceView, takes_service

ANNOTATION_IPS = "bgpvip.io/loadBalancerIPs"
"""Comma-separated addresses the Service asks for, at most one per IP family."""
ANNOTATION_POOL = "bgpvip.io/pool"
"""The pool to allocate from, instead of the first auto-assign pool that admits the Service."""
ANNOTATION_SHARING_KEY = "bgpvip.io/sharing-key"
"""Services with the same key may share an address (see `share_refusal`)."""

SINGLE_STACK = "SingleStack"
PREFER_DUAL_STACK = "PreferDualStack"
REQUIRE_DUAL_STACK = "RequireDualStack"

_FAMILY_NAMES = {"IPv4": 4, "IPv6": 6}
_SHARING_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._:/-]{0,251}[A-Za-z0-9])?$")
_MAX_SHOWN = 80
_MAX_LISTED = 5

Addr = tuple[int, int]
"""(IP version, address as an integer): hashable and cheap to compare."""


class Outcome(enum.StrEnum):
    ASSIGNED = "assigned"
    REFUSED = "refused"
    NOT_OURS = "notOurs"
    """Not a LoadBalancer Service of bgpvip's class: whatever it held from the pools is released."""


class AllocReason(enum.StrEnum):
    """Why a Service got its addresses, or none. Events use `event_reason` (UpperCamelCase)."""

    ASSIGNED = "assigned"
    POOL_EXHAUSTED = "poolExhausted"
    NOT_IN_ANY_POOL = "notInAnyPool"
    POOL_NOT_ALLOWED = "poolNotAllowed"
    POOL_MISMATCH = "poolMismatch"
    REQUEST_CONFLICT = "requestConflict"
    MALFORMED_ANNOTATION = "malformedAnnotation"
    MALFORMED_LOAD_BALANCER_IP = "malformedLoadBalancerIP"
    UNKNOWN_POOL = "unknownPool"
    FAMILY_UNAVAILABLE = "familyUnavailable"
    FAMILY_MISMATCH = "familyMismatch"
    INTERNAL_ERROR = "internalError"
    NOT_LOAD_BALANCER = "notLoadBalancer"
    OTHER_CLASS = "otherLoadBalancerClass"

    @property
    def event_reason(self) -> str:
        return self.value[0].upper() + self.value[1:]


# --------------------------------------------------------------------------- input


@dataclass(frozen=True, slots=True)
class AllocService(ServiceView):
    """A Service as allocation sees it: the speaker's view plus the request and its age.

    Annotation and spec values are kept as the API gave them (text), so a malformed one is
    refused with a reason instead of vanishing at the boundary."""

    created: str = ""
    """`metadata.creationTimestamp` (RFC 3339, so text order is time order); empty sorts first."""
    resource_version: str = ""
    requested_ips: str | None = None
    """The `bgpvip.io/loadBalancerIPs` annotation, unparsed; None when absent."""
    pool: str | None = None
    """The `bgpvip.io/pool` annotation; None when absent."""
    sharing_key: str | None = None
    """The `bgpvip.io/sharing-key` annotation; None when absent."""
    load_balancer_ip: str | None = None
    """The deprecated `spec.loadBalancerIP`, used when the annotation is absent."""
    ip_families: tuple[str, ...] = ()
    """`spec.ipFamilies` (`IPv4`, `IPv6`), primary first: the families addresses are taken from.
    The apiserver always sets it; empty means IPv4 (both for a dual-stack policy)."""
    ip_family_policy: str | None = None
    """`spec.ipFamilyPolicy`; None or an unknown value means SingleStack."""
    selector: tuple[tuple[str, str], ...] = ()
    """`spec.selector`, sorted: Services with the same one may share an address under Local."""

    @property
    def order(self) -> tuple[str, str, str]:
        return (self.created, self.namespace, self.name)


# --------------------------------------------------------------------------- output


@dataclass(frozen=True, slots=True)
class Allocation:
    """The decision for one Service."""

    key: Key
    outcome: Outcome
    reason: AllocReason
    message: str
    """Human text for Events and logs; names the addresses, pools and what to change."""
    ips: tuple[str, ...] = ()
    """Assigned addresses, canonical text, primary family first."""
    pools: tuple[str, ...] = ()
    """The pool of each address in `ips`."""
    status_ips: tuple[str, ...] | None = None
    """What `status.loadBalancer.ingress` should hold; None leaves the status alone."""

    @property
    def assigned(self) -> bool:
        return self.outcome is Outcome.ASSIGNED


@dataclass(frozen=True, slots=True)
class PoolUsage:
    pool: str
    family: int
    size: int
    """Addresses of this family in the pool."""
    used: int
    """Distinct addresses held (a shared address counts once)."""
    services: int
    """Services holding an address of this family in the pool."""


@dataclass(frozen=True, slots=True)
class Allocations:
    by_service: Mapping[Key, Allocation] = field(default_factory=dict)
    """One entry per input Service, sorted by (namespace, name)."""
    usage: tuple[PoolUsage, ...] = ()
    """Per pool and family, in config order."""

    def holders(self) -> dict[str, tuple[Key, ...]]:
        """Address text → the Services it is assigned to, sorted."""
        out: dict[str, list[Key]] = {}
        for key, a in self.by_service.items():
            for ip in a.ips:
                out.setdefault(ip, []).append(key)
        return {ip: tuple(sorted(keys)) for ip, keys in out.items()}


# --------------------------------------------------------------------------- helpers


def _shown(text: str) -> str:
    """A hostile string made safe and short for a message."""
    r = repr(text)
    return r if len(r) <= _MAX_SHOWN else r[: _MAX_SHOWN - 4] + "...'"


def _listed(names: Iterable[str]) -> str:
    items = list(names)
    if len(items) > _MAX_LISTED:
        return ", ".join(items[:_MAX_LISTED]) + f" and {len(items) - _MAX_LISTED} more"
    return ", ".join(items) or "none"


def _family_name(version: int) -> str:
    return f"IPv{version}"


# Pure, and the same addresses come back on every run (they are in the statuses): parsing and
# printing them were half the time of a run at 10,000 Services.
@functools.lru_cache(maxsize=1 << 16)
def _text(addr: Addr) -> str:
    version, n = addr
    return str(ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n))


@functools.lru_cache(maxsize=1 << 16)
def parse_ip(text: str) -> Addr | str:
    """An address from a Service, or why it is refused (scoped and special-purpose addresses)."""
    if not isinstance(text, str) or len(text) > 45 or "%" in text:
        return "is not an IP address"
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return "is not an IP address"
    if a.is_unspecified or a.is_loopback or a.is_multicast or a.is_link_local:
        return "is an unspecified, loopback, multicast or link-local address"
    return (a.version, int(a))


def share_refusal(a: AllocService, b: AllocService) -> str | None:
    """None when `a` and `b` may share an address, else why not.

    They may when both carry the same `bgpvip.io/sharing-key`, no (protocol, port) is used by
    both, and either both use externalTrafficPolicy Cluster or both select the same pods: with
    Local, a node announces the address only where the Service has endpoints, which is the same
    set of nodes only if the endpoints are the same pods. An empty selector is never "the same":
    nothing says the hand-made endpoints of two such Services coincide."""
    if a is b or (a.name == b.name and a.namespace == b.namespace):
        return None
    if not a.sharing_key and not b.sharing_key:
        return f"neither has a {ANNOTATION_SHARING_KEY} annotation"
    if not a.sharing_key or not b.sharing_key:
        who = a if not a.sharing_key else b
        return f"{who.namespace}/{who.name} has no {ANNOTATION_SHARING_KEY} annotation"
    if a.sharing_key != b.sharing_key:
        return f"their sharing keys differ ({_shown(a.sharing_key)} and {_shown(b.sharing_key)})"
    clash = sorted(set(a.ports) & set(b.ports))
    if clash:
        return "both use " + ", ".join(f"{proto}/{port}" for proto, port in clash[:_MAX_LISTED])
    both_cluster = a.external_traffic_policy != "Local" and b.external_traffic_policy != "Local"
    if not both_cluster and not (a.selector and a.selector == b.selector):
        return "one uses externalTrafficPolicy Local and their pod selectors differ"
    return None


def _labels_match(labels: tuple[tuple[str, str], ...], selector: Mapping[str, str]) -> bool:
    if not selector:
        return True
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector.items())


@dataclass(slots=True, eq=False)
class _Pool:
    index: int
    config: PoolConfig
    ranges: dict[int, tuple[tuple[int, int], ...]]
    """IP version → (first, last) blocks, in config order."""

    @property
    def name(self) -> str:
        return self.config.name

    def size(self, version: int) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges.get(version, ()))

    def refusal(self, svc: AllocService) -> str | None:
        """None when the Service may use this pool, else why not."""
        cfg = self.config
        if cfg.namespaces and svc.namespace not in cfg.namespaces:
            return f"pool {cfg.name!r} admits only namespaces {_listed(cfg.namespaces)}"
        if not _labels_match(svc.labels, cfg.service_selector):
            wanted = ",".join(f"{k}={v}" for k, v in sorted(cfg.service_selector.items()))
            return f"pool {cfg.name!r} admits only Services labelled {wanted}"
        return None


class _Pools:
    def __init__(self, pools: Iterable[PoolConfig]) -> None:
        self.pools: list[_Pool] = []
        self.blocks: list[tuple[int, int, int, _Pool]] = []
        for i, cfg in enumerate(pools):
            ranges: dict[int, list[tuple[int, int]]] = {}
            pool = _Pool(i, cfg, {})
            for lo, hi in cfg.ranges:
                ranges.setdefault(lo.version, []).append((int(lo), int(hi)))
                self.blocks.append((lo.version, int(lo), int(hi), pool))
            pool.ranges = {v: tuple(r) for v, r in ranges.items()}
            self.pools.append(pool)
        self.by_name = {p.name: p for p in self.pools}

    def find(self, addr: Addr) -> _Pool | None:
        version, n = addr
        for v, lo, hi, pool in self.blocks:
            if v == version and lo <= n <= hi:
                return pool
        return None

    def names(self) -> str:
        return _listed(p.name for p in self.pools)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class _Request:
    """A Service's request, validated against the config (everything that does not depend on
    what other Services hold)."""

    svc: AllocService
    families: tuple[int, ...]
    """IP versions wanted, primary first."""
    required: int
    """How many of `families` must be granted: all of them, or one for PreferDualStack."""
    explicit: tuple[Addr, ...] = ()
    """Requested addresses, in `families` order; empty for automatic assignment."""
    pools: tuple[_Pool, ...] = ()
    """Where automatic assignment may take addresses from, in config order."""
    held: tuple[Addr, ...] = ()
    """Addresses in the status, parsed, the first of each wanted family."""


class _Refused(Exception):
    def __init__(self, reason: AllocReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _families(svc: AllocService) -> tuple[tuple[int, ...], str]:
    """Wanted IP versions, primary first, and the policy they follow.

    `spec.ipFamilies` decides, not the policy: the apiserver has already resolved the policy
    against what the cluster runs, and kube-proxy serves a Service's load-balancer addresses only
    in those families. A PreferDualStack Service in a single-stack cluster has one family, and an
    address of the other would be announced and then dropped at the node."""
    versions: list[int] = []
    for name in svc.ip_families:
        v = _FAMILY_NAMES.get(name)
        if v is not None and v not in versions:
            versions.append(v)
    policy = svc.ip_family_policy
    if policy == REQUIRE_DUAL_STACK:
        primary = versions[0] if versions else 4
        return (primary, 10 - primary), policy
    if policy == PREFER_DUAL_STACK:
        return tuple(versions) or (4, 6), policy
    return (versions[0] if versions else 4,), SINGLE_STACK


def _stack(policy: str, families: tuple[int, ...]) -> str:
    return f"{policy} {'/'.join(_family_name(v) for v in families)}"


def _requested(svc: AllocService) -> tuple[tuple[Addr, ...], str] | None:
    """The explicitly requested addresses and where they came from; None for automatic."""
    if svc.requested_ips is not None:
        where = f"annotation {ANNOTATION_IPS}"
        items = [t.strip() for t in svc.requested_ips.split(",")]
        if not any(items):
            raise _Refused(
                AllocReason.MALFORMED_ANNOTATION,
                f"{where} is empty: remove it to get an address assigned, or write one address per "
                "IP family, comma-separated, e.g. 203.0.113.10,2001:db8::10",
            )
        if len(items) > 2:
            raise _Refused(
                AllocReason.MALFORMED_ANNOTATION,
                f"{where} lists {len(items)} addresses: at most one IPv4 and one IPv6 address",
            )
        addrs: list[Addr] = []
        for item in items:
            parsed = parse_ip(item)
            if isinstance(parsed, str):
                raise _Refused(
                    AllocReason.MALFORMED_ANNOTATION,
                    f"{where}: {_shown(item)} {parsed}; write one address per IP family, comma-separated",
                )
            if any(a[0] == parsed[0] for a in addrs):
                raise _Refused(
                    AllocReason.MALFORMED_ANNOTATION,
                    f"{where} lists two {_family_name(parsed[0])} addresses: at most one per IP family",
                )
            addrs.append(parsed)
        return tuple(addrs), where
    if svc.load_balancer_ip:
        parsed = parse_ip(svc.load_balancer_ip.strip())
        if isinstance(parsed, str):
            raise _Refused(
                AllocReason.MALFORMED_LOAD_BALANCER_IP,
                f"spec.loadBalancerIP {_shown(svc.load_balancer_ip)} {parsed}",
            )
        return (parsed,), "spec.loadBalancerIP"
    return None


def _validate(svc: AllocService, pools: _Pools) -> _Request:
    """Everything about the request that does not depend on other Services; raises `_Refused`."""
    if svc.sharing_key is not None and not _SHARING_KEY_RE.match(svc.sharing_key):
        raise _Refused(
            AllocReason.MALFORMED_ANNOTATION,
            f"annotation {ANNOTATION_SHARING_KEY} {_shown(svc.sharing_key)} is not a key: use 1-253 "
            "letters, digits and . _ : / - (starting and ending with a letter or digit)",
        )
    named: _Pool | None = None
    if svc.pool is not None:
        named = pools.by_name.get(svc.pool.strip())
        if named is None:
            raise _Refused(
                AllocReason.UNKNOWN_POOL,
                f"annotation {ANNOTATION_POOL} names {_shown(svc.pool)}, which is not a configured pool "
                f"(pools: {pools.names()})",
            )
        why = named.refusal(svc)
        if why is not None:
            raise _Refused(AllocReason.POOL_NOT_ALLOWED, f"annotation {ANNOTATION_POOL}: {why}")
    families, policy = _families(svc)
    requested = _requested(svc)
    if requested is not None:
        addrs, where = requested
        versions = [a[0] for a in addrs]
        fits = (
            set(versions) == set(families) if policy != PREFER_DUAL_STACK else set(versions) <= set(families)
        )
        if not fits:
            shown = ", ".join(_text(a) for a in addrs)
            raise _Refused(
                AllocReason.FAMILY_MISMATCH,
                f"{where} asks for {shown}, but the Service is {_stack(policy, families)} "
                "(spec.ipFamilies, spec.ipFamilyPolicy): request one address of each of its families "
                "(PreferDualStack: of one or both)",
            )
        for a in addrs:
            pool = pools.find(a)
            if pool is None:
                raise _Refused(
                    AllocReason.NOT_IN_ANY_POOL,
                    f"{where} asks for {_text(a)}, which lies in no pool (pools: {pools.names()}); "
                    "only pool addresses are ever assigned or announced",
                )
            if named is not None and pool is not named:
                raise _Refused(
                    AllocReason.POOL_MISMATCH,
                    f"{where} asks for {_text(a)} from pool {pool.name!r}, but annotation "
                    f"{ANNOTATION_POOL} names pool {named.name!r}",
                )
            why = pool.refusal(svc)
            if why is not None:
                raise _Refused(AllocReason.POOL_NOT_ALLOWED, f"{where} asks for {_text(a)}: {why}")
        ordered = tuple(sorted(addrs, key=lambda a: families.index(a[0])))
        return _Request(
            svc, tuple(a[0] for a in ordered), len(ordered), explicit=ordered, held=_held(svc, families)
        )
    if named is not None:
        candidates: tuple[_Pool, ...] = (named,)
    else:
        auto = [p for p in pools.pools if p.config.auto_assign]
        candidates = tuple(p for p in auto if p.refusal(svc) is None)
        if not candidates:
            if not auto:
                raise _Refused(
                    AllocReason.POOL_NOT_ALLOWED,
                    "no pool assigns addresses automatically (every pool sets auto_assign: false): "
                    f"request an address with {ANNOTATION_IPS} or name a pool with {ANNOTATION_POOL}",
                )
            raise _Refused(
                AllocReason.POOL_NOT_ALLOWED,
                "no auto-assign pool admits this Service: "
                + "; ".join(why for p in auto if (why := p.refusal(svc)) is not None),
            )
    available = tuple(v for v in families if any(p.ranges.get(v) for p in candidates))
    if policy == PREFER_DUAL_STACK:
        families, required = available, 1
    else:
        required = len(families)
    if len(available) < required or not families:
        wanted = _families(svc)[0]
        missing = " or ".join(_family_name(v) for v in wanted if v not in available)
        raise _Refused(
            AllocReason.FAMILY_UNAVAILABLE,
            f"the Service is {_stack(policy, wanted)}, but no pool it may use has {missing} addresses "
            f"(pools it may use: {_listed(p.name for p in candidates)})",
        )
    return _Request(svc, families, required, pools=candidates, held=_held(svc, families))


def _held(svc: AllocService, families: tuple[int, ...]) -> tuple[Addr, ...]:
    """Valid status addresses, the first of each wanted family."""
    held: dict[int, Addr] = {}
    for text in svc.ingress_ips:
        parsed = parse_ip(text)
        if not isinstance(parsed, str) and parsed[0] in families and parsed[0] not in held:
            held[parsed[0]] = parsed
    return tuple(held.values())


# --------------------------------------------------------------------------- the run


class _Claims:
    """Who holds which address during one run."""

    def __init__(self) -> None:
        self.holders: dict[Addr, list[AllocService]] = {}
        self.by_key: dict[str, dict[Addr, None]] = {}
        self.cursors: dict[tuple[int, int, int], int] = {}

    def refusal(self, svc: AllocService, addr: Addr) -> str | None:
        for other in self.holders.get(addr, ()):
            why = share_refusal(svc, other)
            if why is not None:
                holder = f"{other.namespace}/{other.name}"
                return f"{_text(addr)} is held by {holder}, and they may not share it: {why}"
        return None

    def claim(self, svc: AllocService, addr: Addr) -> None:
        self.holders.setdefault(addr, []).append(svc)
        if svc.sharing_key:
            self.by_key.setdefault(svc.sharing_key, {})[addr] = None

    def lowest_free(self, pool: _Pool, version: int) -> Addr | None:
        """The lowest free address of the family in the pool. Only valid once nothing is released
        any more (passes 2 and 3): each block keeps a cursor below which everything is taken."""
        for i, (lo, hi) in enumerate(pool.ranges.get(version, ())):
            ck = (pool.index, version, i)
            n = self.cursors.get(ck, lo)
            while n <= hi and (version, n) in self.holders:
                n += 1
            self.cursors[ck] = n
            if n <= hi:
                return (version, n)
        return None


class _Run:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pools = _Pools(config.pools)
        self.claims = _Claims()
        self.granted: dict[Key, list[Addr]] = {}
        self.out: dict[Key, Allocation] = {}

    # ---- results

    def _refuse(self, svc: AllocService, reason: AllocReason, message: str) -> None:
        self.out[svc.key] = Allocation(svc.key, Outcome.REFUSED, reason, message, status_ips=())

    def _assign(self, req: _Request) -> None:
        svc = req.svc
        addrs = sorted(self.granted[svc.key], key=lambda a: req.families.index(a[0]))
        ips = tuple(_text(a) for a in addrs)
        pools = tuple(p.name if (p := self.pools.find(a)) else "" for a in addrs)
        shown = ", ".join(f"{ip} (pool {pool})" for ip, pool in zip(ips, pools, strict=True))
        self.out[svc.key] = Allocation(
            svc.key, Outcome.ASSIGNED, AllocReason.ASSIGNED, shown, ips, pools, status_ips=ips
        )

    def _not_ours(self, svc: AllocService) -> None:
        if svc.type != "LoadBalancer":
            reason, why = AllocReason.NOT_LOAD_BALANCER, f"spec.type is {_shown(svc.type)}"
        else:
            reason = AllocReason.OTHER_CLASS
            cls = "unset" if svc.load_balancer_class is None else _shown(svc.load_balancer_class)
            why = f"spec.loadBalancerClass is {cls}, not {self.config.kubernetes.load_balancer_class!r}"
            if svc.load_balancer_class is None:
                why += " (kubernetes.include_unclassed is false)"
        # Only pool addresses are released: anything else in the status was written by
        # someone else, for a Service that is theirs.
        kept = tuple(
            ip for ip in svc.ingress_ips if isinstance(a := parse_ip(ip), str) or self.pools.find(a) is None
        )
        released = [ip for ip in svc.ingress_ips if ip not in kept]
        message = f"not handled by bgpvip: {why}"
        if released:
            message += f"; releasing {', '.join(released)}"
        self.out[svc.key] = Allocation(
            svc.key, Outcome.NOT_OURS, reason, message, status_ips=kept if released else None
        )

    # ---- passes

    def keep(self, req: _Request) -> bool:
        """Pass 1. True when the Service is done (it keeps everything it needs)."""
        svc, claims = req.svc, self.claims
        if req.explicit:
            if sorted(req.held) != sorted(req.explicit):
                return False
            if any(claims.refusal(svc, a) is not None for a in req.explicit):
                return False
            valid = list(req.explicit)
        else:
            valid = [
                a
                for a in req.held
                if (pool := self.pools.find(a)) is not None
                and pool in req.pools
                and claims.refusal(svc, a) is None
            ]
            partial_ok = req.required == 1 and len(req.families) > 1
            if len(valid) < len(req.families) and not (partial_ok and valid):
                return False
        for a in valid:
            claims.claim(svc, a)
        self.granted[svc.key] = valid
        return len(valid) == len(req.families)

    def request(self, req: _Request) -> None:
        """Pass 2: explicitly requested addresses, all or none."""
        svc = req.svc
        for a in req.explicit:
            why = self.claims.refusal(svc, a)
            if why is not None:
                self._refuse(
                    svc,
                    AllocReason.REQUEST_CONFLICT,
                    f"requested {why}. Ask for another address, or give both Services the same "
                    f"{ANNOTATION_SHARING_KEY} (sharing needs distinct ports and either "
                    "externalTrafficPolicy Cluster on both or the same pod selector)",
                )
                return
        for a in req.explicit:
            self.claims.claim(svc, a)
        self.granted[svc.key] = list(req.explicit)
        self._assign(req)

    def assign(self, req: _Request) -> None:
        """Pass 3: automatic assignment of the families the Service still lacks."""
        svc = req.svc
        have = self.granted.get(svc.key, [])
        picked: list[Addr] = []
        exhausted: list[int] = []
        for version in req.families:
            if any(a[0] == version for a in have):
                continue
            a = self._pick(req, version)
            if a is None:
                exhausted.append(version)
            else:
                picked.append(a)
        if len(have) + len(picked) < req.required:
            names = " and ".join(_family_name(v) for v in exhausted)
            pools = [p for p in req.pools if any(p.ranges.get(v) for v in exhausted)]
            sizes = ", ".join(f"{p.name!r} ({sum(p.size(v) for v in exhausted)} addresses)" for p in pools)
            self._refuse(
                svc,
                AllocReason.POOL_EXHAUSTED,
                f"no free {names} address in {'pool' if len(pools) == 1 else 'pools'} {sizes}: every "
                "address is held by a Service that may not share it; the Service stays pending until "
                "one is released or the pool grows",
            )
            return
        for a in picked:
            self.claims.claim(svc, a)
        self.granted[svc.key] = [*have, *picked]
        self._assign(req)

    def _pick(self, req: _Request, version: int) -> Addr | None:
        svc, claims = req.svc, self.claims
        pools = [p for p in req.pools if p.ranges.get(version)]

        def usable(a: Addr) -> bool:
            return self.pools.find(a) in pools and claims.refusal(svc, a) is None

        # What the status held before the request changed, if still fine: fewer moves.
        for a in _held(svc, (version,)):
            if usable(a):
                return a
        if svc.sharing_key:
            rank = {id(p): i for i, p in enumerate(pools)}
            joinable = [
                (rank[id(pool)], a[1], a)
                for a in claims.by_key.get(svc.sharing_key, {})
                if a[0] == version
                and (pool := self.pools.find(a)) is not None
                and id(pool) in rank
                and claims.refusal(svc, a) is None
            ]
            if joinable:
                return min(joinable)[2]
        for pool in pools:
            free = claims.lowest_free(pool, version)
            if free is not None:
                return free
        return None

    def reserve(self, svc: AllocService) -> None:
        """A Service the allocator failed on keeps what its status holds, so nobody else gets it."""
        for text in svc.ingress_ips:
            parsed = parse_ip(text)
            if not isinstance(parsed, str) and self.pools.find(parsed) is not None:
                self.claims.claim(svc, parsed)

    def usage(self) -> tuple[PoolUsage, ...]:
        used: dict[tuple[int, int], set[Addr]] = {}
        users: dict[tuple[int, int], set[Key]] = {}
        for a, holders in self.claims.holders.items():
            pool = self.pools.find(a)
            assigned = [h for h in holders if (got := self.out.get(h.key)) is not None and got.assigned]
            if pool is None or not assigned:
                continue
            used.setdefault((pool.index, a[0]), set()).add(a)
            users.setdefault((pool.index, a[0]), set()).update(h.key for h in assigned)
        return tuple(
            PoolUsage(
                p.name,
                v,
                p.size(v),
                len(used.get((p.index, v), ())),
                len(users.get((p.index, v), ())),
            )
            for p in self.pools.pools
            for v in sorted(p.ranges)
        )


def allocate(config: Config, services: Iterable[AllocService]) -> Allocations:
    """Allocate addresses for every Service; one `Allocation` per Service, whatever its content.

    Deterministic: the result depends on the set of Services, not on their order. A Service the
    allocator itself fails on is refused with `internalError` and keeps its status untouched; the
    others are unaffected."""
    latest: dict[Key, AllocService] = {}
    for svc in sorted(services, key=lambda s: (s.namespace, s.name, s.uid, s.resource_version)):
        latest[(svc.namespace, svc.name)] = svc
    ordered = sorted(latest.values(), key=lambda s: s.order)
    run = _Run(config)
    requests: list[_Request] = []
    for svc in ordered:
        try:
            if not takes_service(config, svc):
                run._not_ours(svc)
                continue
            requests.append(_validate(svc, run.pools))
        except _Refused as r:
            run._refuse(svc, r.reason, r.message)
        except Exception as e:
            _failed(run, svc, e)
    pending: list[_Request] = []
    for req in requests:
        try:
            if run.keep(req):
                run._assign(req)
            else:
                pending.append(req)
        except Exception as e:
            _failed(run, req.svc, e)
    for stage, explicit in ((run.request, True), (run.assign, False)):
        for req in pending:
            if bool(req.explicit) != explicit:
                continue
            try:
                stage(req)
            except Exception as e:
                _failed(run, req.svc, e)
    return Allocations(dict(sorted(run.out.items())), run.usage())


def _failed(run: _Run, svc: AllocService, error: Exception) -> None:
    run.reserve(svc)
    run.out[svc.key] = Allocation(
        svc.key,
        Outcome.REFUSED,
        AllocReason.INTERNAL_ERROR,
        f"bgpvip failed to allocate for this Service ({type(error).__name__}: {_shown(str(error))}); "
        "its status is left as it is; please report this",
        status_ips=None,
    )
