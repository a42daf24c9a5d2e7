"""Kubernetes Service IPs: which LoadBalancer IPs this node announces, and why (or why not).

Pure side of the line. The Kubernetes adapter turns API objects into the small frozen views
below and hands the reconcile loop `KubeEvent`s; the loop folds them into a `KubeState` with
`KubeState.apply` and calls `decide_services`, which reads nothing but its arguments.

Why `KubeState` is persistent rather than a mutable store: the loop's world is a value
(`world = world.apply(event)`), so an old world must never change under a reader. Copying a
10,000-entry dict per watch event would make a burst of N events cost O(N²), so the maps are
split into `SHARDS` small dicts behind a tuple: an update copies one shard (about N/256
entries) and the tuple of shards, and shares everything else with the previous state.
"""

from __future__ import annotations

import builtins
import enum
import ipaddress
import zlib
from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any, Generic, TypeVar, overload

from bgpvip.core.config import Config, PoolConfig, route_attributes
from bgpvip.core.model import Attributes, Decision, IPAddress, IPNetwork, Reason, Route, one_route_per_prefix

Key = tuple[str, str]
"""(namespace, name); cluster-scoped objects (Nodes) use an empty namespace."""

LOAD_BALANCER = "LoadBalancer"
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
DRAIN_ANNOTATION = "bgpvip.io/drain"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_MAX_SHOWN = 80
_UNSPECIFIED = IPv4Address(0)


class KubeKind(enum.StrEnum):
    """The three kinds of object the speaker watches."""

    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    NODE = "Node"


# --------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class ServiceView:
    """The fields of a Service that decide its announcements, and nothing else."""

    namespace: str
    name: str
    uid: str = ""
    type: str = ""
    """`spec.type`; empty when missing, which never matches `LoadBalancer`."""
    load_balancer_class: str | None = None
    external_traffic_policy: str = "Cluster"
    """`Local` or `Cluster` (the API's default); anything else is treated as `Cluster`."""
    ingress_ips: tuple[str, ...] = ()
    """`status.loadBalancer.ingress[].ip` exactly as the API gave them, unparsed, so a
    malformed one is refused with a reason instead of vanishing at the boundary."""
    external_ips: tuple[str, ...] = ()
    """`spec.externalIPs`, unparsed for the same reason."""
    ports: tuple[tuple[str, int], ...] = ()
    """(protocol, port) pairs of `spec.ports`."""
    selector_hash: int | None = None
    """`selector_hash(spec.selector)`; None for a Service without a selector."""
    labels: tuple[tuple[str, str], ...] = ()
    """All labels, sorted, for pools with a `service_selector`. Kept whole (keys and common
    values interned by the adapter) so a config reload that adds a selector needs no relist."""

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def source(self) -> str:
        return f"service/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class EndpointView:
    """One endpoint of an EndpointSlice. Conditions follow discovery/v1: a missing `ready`
    means ready, a missing `serving` means the same as `ready`, a missing `terminating` false."""

    node_name: str | None
    ready: bool
    serving: bool
    terminating: bool

    @property
    def usable(self) -> bool:
        """Traffic may be sent here: ready, or terminating but still serving."""
        return self.ready or self.serving


@dataclass(frozen=True, slots=True)
class EndpointSliceView:
    namespace: str
    name: str
    service_name: str
    """The `kubernetes.io/service-name` label; empty for a slice that belongs to no Service."""
    endpoints: tuple[EndpointView, ...] = ()
    address_type: str = "IPv4"
    """`addressType` (required by the API): `IPv4`, `IPv6` or `FQDN`. kube-proxy serves each
    address family from that family's slices only, so only those count for an address."""

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def service_key(self) -> Key:
        return (self.namespace, self.service_name)


@dataclass(frozen=True, slots=True)
class NodeView:
    """This node as the API sees it. Only one Node is watched, so all labels are kept."""

    name: str
    ready: bool = False
    """The Ready condition is `True`."""
    ready_detail: str = ""
    """Status and reason of the Ready condition when it is not True, for the decision text."""
    labels: tuple[tuple[str, str], ...] = ()
    drain: str | None = None
    """Value of the `bgpvip.io/drain` annotation, if any."""

    @property
    def key(self) -> Key:
        return ("", self.name)

    @property
    def drained(self) -> bool:
        return self.drain is not None and self.drain.strip().lower() == "true"

    @property
    def excluded(self) -> bool:
        return any(k == EXCLUDE_LABEL for k, _ in self.labels)


View = ServiceView | EndpointSliceView | NodeView


def view_kind(view: View) -> KubeKind:
    if isinstance(view, ServiceView):
        return KubeKind.SERVICE
    if isinstance(view, EndpointSliceView):
        return KubeKind.ENDPOINT_SLICE
    return KubeKind.NODE


def selector_hash(selector: Mapping[str, str]) -> int | None:
    """A process-independent hash of a label selector (crc32 of the sorted pairs)."""
    if not selector:
        return None
    text = "\0".join(f"{k}={v}" for k, v in sorted(selector.items()))
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class KubeSynced:
    """A complete, successful list of one kind: the loop replaces that kind wholesale.

    The only event that can make objects disappear in bulk, and it is only sent after the API
    answered a list. An unreachable API produces `KubeUnavailable`, never an empty `KubeSynced`."""

    kind: KubeKind
    snapshot: tuple[View, ...]
    resource_version: str = ""


@dataclass(frozen=True, slots=True)
class KubeUpsert:
    """An object was added or modified (watch ADDED/MODIFIED)."""

    view: View

    @property
    def kind(self) -> KubeKind:
        return view_kind(self.view)


@dataclass(frozen=True, slots=True)
class KubeDelete:
    """An object was deleted (watch DELETED)."""

    kind: KubeKind
    key: Key


@dataclass(frozen=True, slots=True)
class KubeUnavailable:
    """The API could not be reached for this kind. Keep everything as it is (fail static);
    a `KubeSynced` follows when the API answers again."""

    kind: KubeKind
    error: str


@dataclass(frozen=True, slots=True)
class KubeListPage:
    """One page of a kind's first list, before its `KubeSynced`: lets the speaker announce
    what is certain while the rest of 10,000 Services is still being listed.

    Folded in only while the kind was never synced (a relist changes nothing until it is
    complete: fail static). `first` starts the list over: a list restarted after its
    continuation expired must not keep objects from the abandoned one."""

    kind: KubeKind
    views: tuple[View, ...]
    first: bool = False


KubeEvent = KubeSynced | KubeUpsert | KubeDelete | KubeUnavailable | KubeListPage


# --------------------------------------------------------------------------- persistent map

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

SHARDS = 256
_EMPTY: dict[object, object] = {}
_MISSING = object()


class ShardedMap(Mapping[K, V], Generic[K, V]):
    """An immutable mapping whose `set`/`delete` copy one of `SHARDS` dicts and share the rest.

    The shards are never mutated after construction; every empty shard is the same empty dict.
    """

    __slots__ = ("_len", "_shards")

    def __init__(self, shards: tuple[dict[K, V], ...] | None = None, length: int = 0) -> None:
        empty: dict[K, V] = _EMPTY  # type: ignore[assignment]
        self._shards: tuple[dict[K, V], ...] = shards if shards is not None else (empty,) * SHARDS
        self._len = length

    @classmethod
    def from_items(cls, items: Iterable[tuple[K, V]]) -> ShardedMap[K, V]:
        shards: list[dict[K, V]] = [{} for _ in range(SHARDS)]
        for k, v in items:
            shards[hash(k) % SHARDS][k] = v
        empty: dict[K, V] = _EMPTY  # type: ignore[assignment]
        return cls(tuple(s or empty for s in shards), sum(len(s) for s in shards))

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) % SHARDS][key]

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) % SHARDS]

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"ShardedMap({len(self)} items)"

    # Mapping's generic get/items/values go through __getitem__ per key (and KeyError for a
    # miss), which doubled the time of a memoised decision run at 10,000 Services.
    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, /, default: V | T) -> V | T: ...
    def get(self, key: K, /, default: object = None) -> object:
        return self._shards[hash(key) % SHARDS].get(key, default)

    def items(self) -> ItemsView[K, V]:
        return _ShardedItems(self)

    def values(self) -> ValuesView[V]:
        return _ShardedValues(self)

    def updated(self, changes: Mapping[K, V | None]) -> ShardedMap[K, V]:
        """Many `set`s (value) and `delete`s (None) at once: each touched shard is copied once
        and the tuple of shards once, instead of both per key (a list page is 500 keys)."""
        if not changes:
            return self
        by_shard: dict[int, list[tuple[K, V | None]]] = {}
        for k, v in changes.items():
            by_shard.setdefault(hash(k) % SHARDS, []).append((k, v))
        shards = list(self._shards)
        length = self._len
        for i, items in by_shard.items():
            new = dict(shards[i])
            for k, v in items:
                had = k in new
                if v is None:
                    if had:
                        del new[k]
                        length -= 1
                else:
                    new[k] = v
                    length += 0 if had else 1
            shards[i] = new or _EMPTY  # type: ignore[assignment]
        return ShardedMap(tuple(shards), length)

    def set(self, key: K, value: V) -> ShardedMap[K, V]:
        i = hash(key) % SHARDS
        old = self._shards[i]
        if key in old and old[key] is value:
            return self
        new = dict(old)
        new[key] = value
        length = self._len + (0 if key in old else 1)
        return ShardedMap((*self._shards[:i], new, *self._shards[i + 1 :]), length)

    def changed_keys(self, older: ShardedMap[K, V]) -> builtins.set[K]:
        """Keys added, removed or bound to another object since `older`: shards that are the
        same object are skipped whole, so after a few `set`s this costs O(SHARDS) rather
        than O(len). Values are compared by identity, which is what "changed" means here."""
        changed: builtins.set[K] = builtins.set()
        for new, old in zip(self._shards, older._shards, strict=True):
            if new is old:
                continue
            for k, v in new.items():
                if old.get(k, _MISSING) is not v:
                    changed.add(k)
            changed.update(k for k in old if k not in new)
        return changed

    def delete(self, key: K) -> ShardedMap[K, V]:
        i = hash(key) % SHARDS
        old = self._shards[i]
        if key not in old:
            return self
        new = dict(old)
        del new[key]
        shard: dict[K, V] = new or _EMPTY  # type: ignore[assignment]
        return ShardedMap((*self._shards[:i], shard, *self._shards[i + 1 :]), self._len - 1)


class _ShardedItems(ItemsView[K, V]):
    _mapping: ShardedMap[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        for shard in self._mapping._shards:
            yield from shard.items()


class _ShardedValues(ValuesView[V]):
    _mapping: ShardedMap[Any, V]

    def __iter__(self) -> Iterator[V]:
        for shard in self._mapping._shards:
            yield from shard.values()


# --------------------------------------------------------------------------- state


def _empty_services() -> ShardedMap[Key, ServiceView]:
    return ShardedMap()


def _empty_slices() -> ShardedMap[Key, tuple[EndpointSliceView, ...]]:
    return ShardedMap()


def _empty_owners() -> ShardedMap[Key, Key]:
    return ShardedMap()


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeState:
    """What the API told us, as of the last event. Unchanged by `KubeUnavailable` (fail static)."""

    services: ShardedMap[Key, ServiceView] = field(default_factory=_empty_services)
    slices: ShardedMap[Key, tuple[EndpointSliceView, ...]] = field(default_factory=_empty_slices)
    """EndpointSlices grouped by the Service they belong to, each group sorted by slice name."""
    slice_owner: ShardedMap[Key, Key] = field(default_factory=_empty_owners)
    """Slice key → Service key, so a delete (which carries only the slice key) finds its group."""
    node: NodeView | None = None
    synced: frozenset[KubeKind] = frozenset()
    """Kinds listed successfully at least once. Before that, absence means "not known yet"."""
    unavailable: tuple[tuple[KubeKind, str], ...] = ()
    """Kinds whose API is unreachable right now, with the last error (for status output)."""
    version: int = 0
    """Counts applied events, so the loop can skip recomputing when nothing changed."""

    @property
    def ready(self) -> bool:
        """Every kind has been listed: decisions can rely on absence meaning absence."""
        return len(self.synced) == len(KubeKind)

    def apply(self, event: KubeEvent) -> KubeState:
        if isinstance(event, KubeUnavailable):
            others = tuple((k, e) for k, e in self.unavailable if k != event.kind)
            return replace(self, unavailable=(*others, (event.kind, event.error)), version=self.version + 1)
        if isinstance(event, KubeSynced):
            return self._synced(event)
        if isinstance(event, KubeListPage):
            return self._page(event)
        if isinstance(event, KubeUpsert):
            return self._upsert(event.view)
        return self._delete(event.kind, event.key)

    def _synced(self, event: KubeSynced) -> KubeState:
        state = replace(
            self,
            synced=self.synced | {event.kind},
            unavailable=tuple((k, e) for k, e in self.unavailable if k != event.kind),
            version=self.version + 1,
        )
        if event.kind is KubeKind.SERVICE:
            services = ShardedMap.from_items((v.key, v) for v in event.snapshot if isinstance(v, ServiceView))
            return replace(state, services=services)
        if event.kind is KubeKind.ENDPOINT_SLICE:
            groups: dict[Key, list[EndpointSliceView]] = {}
            owners: list[tuple[Key, Key]] = []
            for v in event.snapshot:
                if isinstance(v, EndpointSliceView):
                    groups.setdefault(v.service_key, []).append(v)
                    owners.append((v.key, v.service_key))
            slices = ShardedMap.from_items((k, self._same_group(k, _by_name(g))) for k, g in groups.items())
            return replace(state, slices=slices, slice_owner=ShardedMap.from_items(owners))
        nodes = [v for v in event.snapshot if isinstance(v, NodeView)]
        return replace(state, node=nodes[0] if nodes else None)

    def _same_group(self, key: Key, group: tuple[EndpointSliceView, ...]) -> tuple[EndpointSliceView, ...]:
        """The group this state already has when it holds the very same views (a list after
        its pages): identity is what tells the decider a Service is unchanged."""
        old = self.slices.get(key)
        return old if old is not None and old == group else group

    def _page(self, event: KubeListPage) -> KubeState:
        if event.kind in self.synced:
            return self
        state = self
        if event.first:
            if event.kind is KubeKind.SERVICE:
                state = replace(state, services=_empty_services())
            elif event.kind is KubeKind.ENDPOINT_SLICE:
                state = replace(state, slices=_empty_slices(), slice_owner=_empty_owners())
            else:
                state = replace(state, node=None)
        views = [v for v in event.views if view_kind(v) is event.kind]
        if event.kind is KubeKind.SERVICE:
            services = state.services.updated({v.key: v for v in views if isinstance(v, ServiceView)})
            return replace(state, services=services, version=self.version + 1)
        if event.kind is KubeKind.NODE:
            for view in views:
                state = state._upsert(view)
            return replace(state, version=self.version + 1)
        # EndpointSlices: regroup the touched Services once per page, not once per slice
        groups: dict[Key, list[EndpointSliceView]] = {}
        owners: dict[Key, Key | None] = {}
        for v in views:
            assert isinstance(v, EndpointSliceView)
            old_owner = owners[v.key] if v.key in owners else state.slice_owner.get(v.key)
            if old_owner is not None and old_owner != v.service_key:
                group = groups.setdefault(old_owner, list(state.slices.get(old_owner, ())))
                group[:] = [s for s in group if s.key != v.key]
            group = groups.setdefault(v.service_key, list(state.slices.get(v.service_key, ())))
            group[:] = [s for s in group if s.key != v.key]
            group.append(v)
            owners[v.key] = v.service_key
        slices = state.slices.updated({k: _by_name(g) if g else None for k, g in groups.items()})
        return replace(
            state,
            slices=slices,
            slice_owner=state.slice_owner.updated(owners),
            version=self.version + 1,
        )

    @property
    def partial(self) -> KubeState:
        """This state as if every kind had been listed: for deciding what is certain to be
        announced while the first lists are still running (see `KubeListPage`). An announcing
        decision on a part of a list is one on the whole: more objects only add endpoints."""
        return replace(self, synced=frozenset(KubeKind))

    def _upsert(self, view: View) -> KubeState:
        version = self.version + 1
        if isinstance(view, ServiceView):
            return replace(self, services=self.services.set(view.key, view), version=version)
        if isinstance(view, NodeView):
            return replace(self, node=view, version=version)
        slices, owners = self._without_slice(view.key)
        group = _by_name([*slices.get(view.service_key, ()), view])
        return replace(
            self,
            slices=slices.set(view.service_key, group),
            slice_owner=owners.set(view.key, view.service_key),
            version=version,
        )

    def _delete(self, kind: KubeKind, key: Key) -> KubeState:
        version = self.version + 1
        if kind is KubeKind.SERVICE:
            return replace(self, services=self.services.delete(key), version=version)
        if kind is KubeKind.NODE:
            node = None if self.node is not None and self.node.key == key else self.node
            return replace(self, node=node, version=version)
        slices, owners = self._without_slice(key)
        return replace(self, slices=slices, slice_owner=owners, version=version)

    def _without_slice(
        self, key: Key
    ) -> tuple[ShardedMap[Key, tuple[EndpointSliceView, ...]], ShardedMap[Key, Key]]:
        owner = self.slice_owner.get(key)
        if owner is None:
            return self.slices, self.slice_owner
        group = tuple(s for s in self.slices.get(owner, ()) if s.key != key)
        slices = self.slices.set(owner, group) if group else self.slices.delete(owner)
        return slices, self.slice_owner.delete(key)


def _by_name(group: Iterable[EndpointSliceView]) -> tuple[EndpointSliceView, ...]:
    return tuple(sorted(group, key=lambda s: s.name))


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class _Pools:
    """Pool address blocks as integers, parsed once per decision run instead of once per IP."""

    blocks: tuple[tuple[int, int, int, int], ...]
    """(ip version, first, last, pool index)"""
    pools: tuple[PoolConfig, ...]
    attributes: tuple[Attributes, ...]

    def find(self, address: IPAddress) -> int | None:
        n = int(address)
        for version, lo, hi, index in self.blocks:
            if version == address.version and lo <= n <= hi:
                return index
        return None


def pool_attributes(config: Config, pool: PoolConfig) -> Attributes:
    """BGP attributes of a pool's routes, with this host's `priority` applied as for VIPs
    (MED or AS-path prepend) so a router without ECMP still picks one node deterministically."""
    return route_attributes(config, pool, config.priority)


def pool_label_keys(config: Config) -> frozenset[str]:
    """The Service labels any pool's `service_selector` looks at: all the views need to keep."""
    return frozenset(k for pool in config.pools for k in pool.service_selector)


def _pools(config: Config) -> _Pools:
    blocks = tuple(
        (lo.version, int(lo), int(hi), i) for i, pool in enumerate(config.pools) for lo, hi in pool.ranges
    )
    return _Pools(blocks, config.pools, tuple(pool_attributes(config, p) for p in config.pools))


def _shown(text: str) -> str:
    """A hostile string made safe and short for a decision's detail."""
    r = repr(text)
    return r if len(r) <= _MAX_SHOWN else r[: _MAX_SHOWN - 4] + "...'"


@dataclass(frozen=True, slots=True)
class _Parsed:
    address: IPAddress | None
    """None when the text is refused; `why` says why."""
    why: str = ""
    text: str = ""
    """Canonical text of the address."""
    sort_key: tuple[int, int] = (0, 0)


def _parse(text: str) -> _Parsed:
    """Parse a Service's address text. Scoped and special-purpose addresses are refused."""
    if not isinstance(text, str) or len(text) > 45 or "%" in text:
        return _Parsed(None, "is not an IP address")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return _Parsed(None, "is not an IP address")
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_link_local:
        return _Parsed(None, "is an unspecified, loopback, multicast or link-local address")
    return _Parsed(addr, "", str(addr), (addr.version, int(addr)))


def _prefix(address: IPAddress) -> IPNetwork:
    # From the integer: ip_network((address, n)) would print and re-parse the address.
    net = IPv4Network((int(address), 32)) if address.version == 4 else IPv6Network((int(address), 128))
    # Python 3.11/3.12 give every /32 and /128 network its own `hosts` lambda and closure cell
    # (~200 B; 2 MB at 10,000 Services). A route's prefix never lists its hosts: drop it, so the
    # class's hosts() is what is left.
    vars(net).pop("hosts", None)
    return net


_DETAILS: dict[tuple[str, str], str] = {}


def _verdict_detail(origin: str, verdict: str) -> str:
    """`<origin>: <verdict>` for a decision about endpoints or the node, one string per distinct
    text. The address is the decision's own field (and a column of `bgpvip routes`), so it is
    left out here, and at 10,000 Services a few dozen strings serve every decision instead of
    10,000 different ones (~1.4 MB)."""
    key = (origin, verdict)
    text = _DETAILS.get(key)
    if text is None:
        if len(_DETAILS) > 10_000:
            _DETAILS.clear()
        text = _DETAILS.setdefault(key, f"{origin}: {verdict}")
    return text


def _labels_match(labels: tuple[tuple[str, str], ...], selector: Mapping[str, str]) -> bool:
    if not selector:
        return True
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector.items())


def _selector_text(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _node_verdict(config: Config, kube: KubeState, node_name: str) -> tuple[Reason | None, str]:
    """None when this node may announce Service IPs, else the reason it may not."""
    node = kube.node
    if node is None or node.name != node_name:
        if KubeKind.NODE not in kube.synced:
            return Reason.KUBE_NOT_SYNCED, f"node {node_name} not listed from the API yet"
        return Reason.NODE_UNKNOWN, f"node {node_name} is not known to the API (check node_name)"
    if not node.ready:
        return Reason.NODE_NOT_READY, f"node {node_name} is not Ready ({node.ready_detail or 'no condition'})"
    selector = config.kubernetes.node_selector
    if not _labels_match(node.labels, selector):
        return (
            Reason.NODE_NOT_SELECTED,
            f"node {node_name} lacks labels {_selector_text(selector)} (kubernetes.node_selector)",
        )
    if node.excluded:
        return Reason.NODE_EXCLUDED, f"node {node_name} has label {EXCLUDE_LABEL}"
    if node.drained:
        return Reason.NODE_DRAINED, f"node {node_name} is annotated {DRAIN_ANNOTATION}={node.drain}"
    return None, ""


_ADDRESS_TYPE = {4: "IPv4", 6: "IPv6"}


def _endpoint_verdict(svc: ServiceView, kube: KubeState, node_name: str, version: int) -> tuple[Reason, str]:
    """Endpoints count for an address only from EndpointSlices of its family, as kube-proxy
    serves each family from that family's slices (a dual-stack Service's IPv6 address has no
    endpoint when only IPv4 slices have endpoints); FQDN slices count for neither."""
    if KubeKind.ENDPOINT_SLICE not in kube.synced:
        return Reason.KUBE_NOT_SYNCED, "EndpointSlices not listed from the API yet"
    family = _ADDRESS_TYPE[version]
    group = [s for s in kube.slices.get(svc.key, ()) if s.address_type == family]
    usable = [e for s in group for e in s.endpoints if e.usable]
    if svc.external_traffic_policy == "Local":
        local = sum(1 for e in usable if e.node_name == node_name)
        if local:
            return Reason.HAS_ENDPOINTS, f"{local} ready or serving endpoint(s) on {node_name} (Local)"
        return (
            Reason.NO_LOCAL_ENDPOINTS,
            f"externalTrafficPolicy Local and no ready or serving endpoint on {node_name}"
            f" ({len(usable)} elsewhere)",
        )
    if usable:
        return Reason.HAS_ENDPOINTS, f"{len(usable)} ready or serving endpoint(s) in the cluster (Cluster)"
    return (
        Reason.NO_READY_ENDPOINTS,
        f"no ready or serving endpoint in {len(group)} {family} EndpointSlice(s)",
    )


def takes_service(config: Config, svc: ServiceView) -> bool:
    """Whether this bgpvip handles the Service at all (type and loadBalancerClass)."""
    if svc.type != LOAD_BALANCER:
        return False
    kc = config.kubernetes
    if svc.load_balancer_class is None:
        return kc.include_unclassed
    return svc.load_balancer_class == kc.load_balancer_class


def _candidates(svc: ServiceView) -> Iterator[tuple[str, str, bool]]:
    """(raw address, where it came from, is it an externalIP), ingress first."""
    for i, ip in enumerate(svc.ingress_ips):
        yield ip, f"status.loadBalancer.ingress[{i}].ip", False
    for i, ip in enumerate(svc.external_ips):
        yield ip, f"spec.externalIPs[{i}]", True


def decide_services(config: Config, kube: KubeState, node_name: str) -> tuple[Decision, ...]:
    """A decision for every address of every Service this bgpvip handles, sorted by address.

    The reference: it decides every Service from scratch. The speaker uses `ServiceDecider`,
    which gives the same decisions (property-tested) deciding only what changed.

    Shared IPs: each Service sharing an address gets its own decision; the address is announced
    while any of them qualifies (`service_routes`), with one route carrying the pool's attributes.
    Nothing is decided before the first list of Services: absence would not yet mean absence.
    """
    if not config.kubernetes.enabled or KubeKind.SERVICE not in kube.synced:
        return ()
    run = _Run(config, kube, node_name)
    for svc in kube.services.values():
        if takes_service(config, svc):
            for address_key, decision in run.service(svc):
                run.add(address_key, decision)
    return run.result()


_Keyed = tuple[tuple[int, int], str, str, int, Decision]
"""(address sort key, source, detail, sequence, decision): sortable without comparing decisions."""


class _Run:
    """One `decide_services` call: what it computes once, and the decisions it collects."""

    def __init__(self, config: Config, kube: KubeState, node_name: str) -> None:
        self.kube = kube
        self.node_name = node_name
        self.pools = _pools(config)
        self.families = {4 if f == "ipv4" else 6 for p in config.bgp.peers for f in p.families}
        self.node_reason, self.node_detail = _node_verdict(config, kube, node_name)
        self.routes: dict[tuple[int, int], Route] = {}
        self.out: list[_Keyed] = []
        self.announcers: dict[tuple[int, int], list[str]] = {}

    def add(self, key: tuple[int, int], decision: Decision) -> None:
        self.out.append((key, decision.source, decision.detail, len(self.out), decision))
        if decision.announce:
            self.announcers.setdefault(key, []).append(decision.source)

    def service(self, svc: ServiceView, source: str = "") -> Iterator[tuple[tuple[int, int], Decision]]:
        """The Service's decisions with their address sort keys; shared-address notes come later."""
        source = source or svc.source
        seen: set[str] = set()
        for raw, origin, external in _candidates(svc):
            parsed = _parse(raw)
            if parsed.address is None:
                if raw not in seen:
                    seen.add(raw)
                    invalid = Decision(
                        address=_UNSPECIFIED,
                        announce=False,
                        reason=Reason.INVALID_ADDRESS,
                        detail=f"{origin} {_shown(raw)} {parsed.why}",
                        source=source,
                        written=raw,
                    )
                    yield (0, 0), invalid
            elif parsed.text not in seen:
                seen.add(parsed.text)
                yield parsed.sort_key, self.address(svc, parsed, origin, external, source, raw)

    def address(  # noqa: PLR0917
        self, svc: ServiceView, parsed: _Parsed, origin: str, external: bool, source: str, raw: str
    ) -> Decision:
        addr = parsed.address
        assert addr is not None
        where = f"{origin} {raw}"  # as the user wrote it: `::ffff:203.0.113.13`, not `::ffff:cb00:710d`

        def refuse(reason: Reason, detail: str) -> Decision:
            return Decision(
                address=addr, announce=False, reason=reason, detail=detail, source=source, written=raw
            )

        if addr.version not in self.families:
            return refuse(Reason.FAMILY_NOT_PEERED, f"{where}: no BGP peer carries ipv{addr.version}")
        index = self.pools.find(addr)
        if index is None:
            return refuse(Reason.NOT_IN_POOL, f"{where} lies in no configured pool")
        pool = self.pools.pools[index]
        if external and not pool.allow_external_ips:
            return refuse(
                Reason.EXTERNAL_IP_NOT_ALLOWED,
                f"{where} lies in pool {pool.name!r}, which does not set allow_external_ips",
            )
        if pool.namespaces and svc.namespace not in pool.namespaces:
            return refuse(
                Reason.POOL_NOT_ALLOWED,
                f"{where}: pool {pool.name!r} admits only namespaces {', '.join(pool.namespaces)}",
            )
        if not _labels_match(svc.labels, pool.service_selector):
            selector = _selector_text(pool.service_selector)
            return refuse(
                Reason.POOL_NOT_ALLOWED,
                f"{where}: pool {pool.name!r} admits only Services labelled {selector}",
            )
        route = self.routes.get(parsed.sort_key)
        if route is None:
            route = Route(prefix=_prefix(addr), attributes=self.pools.attributes[index])
            self.routes[parsed.sort_key] = route
        if self.node_reason is not None:
            reason, detail = self.node_reason, self.node_detail
        else:
            reason, detail = _endpoint_verdict(svc, self.kube, self.node_name, addr.version)
        return Decision(
            address=route.prefix.network_address,  # the same object as the route's: less memory
            announce=reason is Reason.HAS_ENDPOINTS,
            reason=reason,
            detail=_verdict_detail(origin, detail),
            source=source,
            route=route,
            written=raw,
        )

    def result(self) -> tuple[Decision, ...]:
        """Sorted; a non-qualifying Service's decision notes that its shared address is announced."""
        self.out.sort()
        decisions: list[Decision] = []
        for key, _, _, _, d in self.out:
            others = self.announcers.get(key)
            if others and not d.announce:
                d = _shared_note(d, others)
            decisions.append(d)
        return tuple(decisions)


def service_routes(decisions: Iterable[Decision]) -> frozenset[Route]:
    """The routes to announce: one per address that at least one Service qualifies for."""
    return frozenset(d.route for d in decisions if d.announce and d.route is not None)


def _shared_note(d: Decision, announcers: Iterable[str]) -> Decision:
    return replace(d, detail=f"{d.detail}; shared address announced for {', '.join(sorted(announcers))}")


AddressKey = tuple[int, int]
"""(IP version, address as an integer); (0, 0) for a refused, unparseable address."""
_INVALID: AddressKey = (0, 0)


def _display_order(d: Decision) -> tuple[AddressKey, str, str]:
    invalid = d.reason is Reason.INVALID_ADDRESS and d.route is None and d.address == _UNSPECIFIED
    return (_INVALID if invalid else (d.address.version, int(d.address)), d.source, d.detail)


def _empty_by_source() -> ShardedMap[str, tuple[Decision, ...]]:
    return ShardedMap()


@dataclass(frozen=True, slots=True, eq=False)
class ServiceDecisions:
    """The Service decisions of one moment, by source (`service/<namespace>/<name>`), and the
    routes they ask for. Persistent like `KubeState`: a newer table shares every unchanged
    entry with the one before, so `by_source.changed_keys(older.by_source)` finds what changed
    without looking at the rest, and `routes` is a set the loop compares in C, not per route."""

    by_source: ShardedMap[str, tuple[Decision, ...]] = field(default_factory=_empty_by_source)
    routes: frozenset[Route] = frozenset()
    """One route per address that at least one decision announces."""
    _sorted: list[tuple[Decision, ...]] = field(default_factory=list, init=False, repr=False)

    @classmethod
    def of(cls, decisions: Iterable[Decision]) -> ServiceDecisions:
        """A table from plain decisions (tests, the routes held before the first list)."""
        decisions = tuple(decisions)
        groups: dict[str, list[Decision]] = {}
        for d in decisions:
            groups.setdefault(d.source, []).append(d)
        # repr() orders a source's decisions, so that ties in `sorted_decisions` (one address
        # given twice by one source) do not depend on the order of the inputs
        return cls(
            ShardedMap.from_items((k, tuple(sorted(v, key=repr))) for k, v in groups.items()),
            one_route_per_prefix(decisions),
        )

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_source.values())

    def __iter__(self) -> Iterator[Decision]:
        for group in self.by_source.values():
            yield from group

    def sorted_decisions(self) -> tuple[Decision, ...]:
        """All decisions in `decide_services`' order. Built on first use and kept."""
        if not self._sorted:
            self._sorted.append(tuple(sorted(self, key=_display_order)))
        return self._sorted[0]


_Raw = tuple[Decision, ...]
"""One Service's decisions before shared-address notes."""


def _address_key(d: Decision) -> AddressKey:
    if d.route is not None:
        return d.route.key
    if d.reason is Reason.INVALID_ADDRESS:
        return _INVALID
    return (d.address.version, int(d.address))


class ServiceDecider:
    """`decide_services`, kept up to date instead of recomputed: each `update` decides again
    only the Services whose view or EndpointSlices are other objects than last time
    (`ShardedMap.changed_keys`, so finding them does not walk all Services) and the Services
    that share an address with them. Anything else a decision depends on (the config, this
    node's verdict, whether slices were listed) changing means deciding everything again.

    At 10,000 Services a full pass takes about a quarter of a second; one changed Service,
    well under a millisecond. Owned by one caller and not thread-safe; the tables it returns
    are immutable and may be handed to other threads."""

    def __init__(self) -> None:
        self.full_passes = 0
        """How often everything was decided again (tests check that a change is not one)."""
        self._reset()

    def _reset(self) -> None:
        self._context: tuple[object, ...] | None = None
        self._kube: KubeState | None = None
        self._raw: dict[str, _Raw] = {}
        self._at: dict[AddressKey, str | set[str]] = {}
        """Sources with a decision for the address: one (almost always), or a set of them."""
        self._announcing: dict[AddressKey, int] = {}
        """How many decisions announce the address (shared IPs: more than one)."""
        self._routes: set[Route] = set()
        self.table = ServiceDecisions()

    def update(self, config: Config, kube: KubeState, node_name: str) -> ServiceDecisions:
        if not config.kubernetes.enabled or KubeKind.SERVICE not in kube.synced:
            self._reset()
            return self.table
        run = _Run(config, kube, node_name)
        context = (
            config,
            node_name,
            run.node_reason,
            run.node_detail,
            KubeKind.ENDPOINT_SLICE in kube.synced,
        )
        previous = self._kube
        full = previous is None or context != self._context
        if full:
            self._reset()
            self.full_passes += 1
            dirty: Iterable[Key] = kube.services.keys()
        else:
            assert previous is not None
            dirty = kube.services.changed_keys(previous.services) | kube.slices.changed_keys(previous.slices)
        self._context, self._kube = context, kube

        touched: set[str] = set()
        affected: set[AddressKey] = set()
        for key in dirty:
            source = f"service/{key[0]}/{key[1]}"
            svc = kube.services.get(key)
            new: _Raw = ()
            if svc is not None and takes_service(config, svc):
                new = tuple(d for _, d in run.service(svc, source))
            old = self._raw.pop(source, ())
            if not old and not new:
                continue
            touched.add(source)
            self._forget(source, old, affected)
            if new:
                self._raw[source] = new
                self._remember(source, new, affected)
        # Sharers of an address whose announcers changed need their note written again.
        for a in affected:
            touched.update(self._sharers(a))

        if full:
            by_source = ShardedMap.from_items((s, self._noted(s)) for s in self._raw)
        else:
            by_source = self.table.by_source
            changes: dict[str, tuple[Decision, ...] | None] = {}
            for s in touched:
                if s not in self._raw:
                    if s in by_source:
                        changes[s] = None
                    continue
                noted = self._noted(s)
                if by_source.get(s) != noted:
                    changes[s] = noted
            by_source = by_source.updated(changes)
        self.table = ServiceDecisions(by_source, frozenset(self._routes))
        return self.table

    def _sharers(self, a: AddressKey) -> tuple[str, ...] | set[str]:
        at = self._at.get(a)
        if at is None:
            return ()
        return (at,) if isinstance(at, str) else at

    def _forget(self, source: str, raw: _Raw, affected: set[AddressKey]) -> None:
        for d in raw:
            a = _address_key(d)
            if a == _INVALID:
                continue
            affected.add(a)
            at = self._at.get(a)
            if at == source:
                del self._at[a]
            elif isinstance(at, set):
                at.discard(source)
                if len(at) == 1:
                    self._at[a] = next(iter(at))
            if d.announce:
                left = self._announcing[a] - 1
                if left:
                    self._announcing[a] = left
                else:
                    del self._announcing[a]
                    self._routes.discard(d.route)

    def _remember(self, source: str, raw: _Raw, affected: set[AddressKey]) -> None:
        for d in raw:
            a = _address_key(d)
            if a == _INVALID:
                continue
            affected.add(a)
            at = self._at.get(a)
            if at is None:
                self._at[a] = source
            elif isinstance(at, str):
                if at != source:
                    self._at[a] = {at, source}
            else:
                at.add(source)
            if d.announce and d.route is not None:
                n = self._announcing.get(a, 0)
                self._announcing[a] = n + 1
                if not n:
                    self._routes.add(d.route)

    def _noted(self, source: str) -> tuple[Decision, ...]:
        raw = self._raw[source]
        noted = [
            _shared_note(d, self._announcers(a)) if not d.announce and a in self._announcing else d
            for d, a in ((d, _address_key(d)) for d in raw)
        ]
        # nothing noted: the very same tuple (memory, and identity for the diffs downstream)
        return raw if all(n is d for n, d in zip(noted, raw, strict=True)) else tuple(noted)

    def _announcers(self, a: AddressKey) -> list[str]:
        return [s for s in self._sharers(a) if any(d.announce and _address_key(d) == a for d in self._raw[s])]
