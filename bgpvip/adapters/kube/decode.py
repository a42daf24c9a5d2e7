"""API JSON → bgpvip's views (`bgpvip.core.services`, `bgpvip.core.alloc`), at the boundary.

I/O side (pure functions, but they know the API's JSON). Lists and watch events are decoded by
msgspec straight into small typed structs that name only the fields bgpvip reads, so the rest
of each object (managedFields, annotations nobody reads, ...) is skipped without being built,
then turned into the core's frozen views. A real apiserver validates field types, so the typed
path almost always succeeds; if an object does not fit it (a proxy, a future API version, a
test's hostile object), that object alone is decoded leniently as plain JSON and every bad
value is kept as text for the core to refuse with a reason. Nothing is dropped silently: an
object without a name is `MalformedObject`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from bgpvip.core.alloc import ANNOTATION_IPS, ANNOTATION_POOL, ANNOTATION_SHARING_KEY, AllocService
from bgpvip.core.services import (
    DRAIN_ANNOTATION,
    SERVICE_NAME_LABEL,
    EndpointSliceView,
    EndpointView,
    NodeView,
    ServiceView,
    View,
    selector_hash,
)

T = TypeVar("T")


class MalformedObject(ValueError):
    """An API object without the identity (name) needed to track it."""


# --------------------------------------------------------------------------- typed structs


class _Meta(msgspec.Struct, rename={"resource_version": "resourceVersion"}):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resource_version: str = ""
    labels: dict[str, str] | None = None


class _MetaFull(_Meta, rename={"resource_version": "resourceVersion", "created": "creationTimestamp"}):
    annotations: dict[str, str] | None = None
    created: str = ""


class _Port(msgspec.Struct):
    port: int | None = None
    protocol: str | None = None


class _Ingress(msgspec.Struct):
    ip: str | None = None


class _LoadBalancer(msgspec.Struct):
    ingress: list[_Ingress] | None = None


class _ServiceStatus(msgspec.Struct, rename={"load_balancer": "loadBalancer"}):
    load_balancer: _LoadBalancer | None = None


_SPEC_NAMES = {
    "load_balancer_class": "loadBalancerClass",
    "external_traffic_policy": "externalTrafficPolicy",
    "external_ips": "externalIPs",
    "load_balancer_ip": "loadBalancerIP",
    "ip_families": "ipFamilies",
    "ip_family_policy": "ipFamilyPolicy",
}


class _ServiceSpec(msgspec.Struct, rename=_SPEC_NAMES):
    type: str | None = None
    load_balancer_class: str | None = None
    external_traffic_policy: str | None = None
    external_ips: list[str] | None = None
    ports: list[_Port] | None = None
    selector: dict[str, str] | None = None


class _AllocSpec(_ServiceSpec, rename=_SPEC_NAMES):
    load_balancer_ip: str | None = None
    ip_families: list[str] | None = None
    ip_family_policy: str | None = None


class _Service(msgspec.Struct):
    metadata: _Meta | None = None
    spec: _ServiceSpec | None = None
    status: _ServiceStatus | None = None


class _AllocServiceObj(msgspec.Struct):
    metadata: _MetaFull | None = None
    spec: _AllocSpec | None = None
    status: _ServiceStatus | None = None


class _Conditions(msgspec.Struct):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class _Endpoint(msgspec.Struct, rename={"node_name": "nodeName"}):
    node_name: str | None = None
    conditions: _Conditions | None = None


class _Slice(msgspec.Struct, rename={"address_type": "addressType"}):
    metadata: _Meta | None = None
    address_type: str | None = None
    endpoints: list[_Endpoint] | None = None


class _Condition(msgspec.Struct):
    type: str = ""
    status: str = ""
    reason: str = ""


class _NodeStatus(msgspec.Struct):
    conditions: list[_Condition] | None = None


class _Node(msgspec.Struct):
    metadata: _MetaFull | None = None
    status: _NodeStatus | None = None


class _ListMeta(msgspec.Struct, rename={"resource_version": "resourceVersion", "continue_": "continue"}):
    resource_version: str = ""
    continue_: str = ""


class _List(msgspec.Struct, Generic[T]):
    metadata: _ListMeta | None = None
    items: list[T] | None = None


class _RawList(msgspec.Struct):
    metadata: _ListMeta | None = None
    items: list[msgspec.Raw] | None = None


class _WatchEvent(msgspec.Struct):
    type: str = ""
    object: msgspec.Raw = msgspec.Raw(b"null")


class _Identity(msgspec.Struct):
    metadata: _Meta | None = None


class _Status(msgspec.Struct):
    code: int = 0
    reason: str = ""
    message: str = ""


# --------------------------------------------------------------------------- shared values


def _labels(v: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    # Keys repeat across objects and are interned; values are mostly unique (app names), and
    # interning unique strings only grows the interpreter's intern table.
    if not v:
        return ()
    return tuple(sorted((sys.intern(k), val) for k, val in v.items() if isinstance(val, str)))


_PORTS: dict[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]] = {}


def _shared_ports(ports: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """Most Services expose one of a few port sets (80/443, ...): share one tuple per set."""
    shared = _PORTS.get(ports)
    if shared is None:
        if len(_PORTS) > 10_000:
            _PORTS.clear()
        shared = _PORTS.setdefault(ports, ports)
    return shared


_ENDPOINTS: dict[tuple[str | None, bool, bool, bool], EndpointView] = {}
"""Identical endpoints (same node, same conditions) share one immutable view."""


def _endpoint(node: str | None, ready: bool, serving: bool, terminating: bool) -> EndpointView:
    key = (node, ready, serving, terminating)
    view = _ENDPOINTS.get(key)
    if view is None:
        if len(_ENDPOINTS) > 100_000:
            _ENDPOINTS.clear()
        view = _ENDPOINTS.setdefault(key, EndpointView(node, ready, serving, terminating))
    return view


def _identity(meta: _Meta | None, namespaced: bool) -> tuple[str, str]:
    if meta is None or not meta.name:
        raise MalformedObject("object without metadata.name")
    if namespaced and not meta.namespace:
        raise MalformedObject(f"{meta.name}: object without metadata.namespace")
    return (sys.intern(meta.namespace) if namespaced else ""), meta.name


# --------------------------------------------------------------------------- typed → views


def _service(obj: _Service | _AllocServiceObj, label_keys: Collection[str] | None) -> ServiceView:
    ns, name = _identity(obj.metadata, namespaced=True)
    meta = obj.metadata
    assert meta is not None
    spec = obj.spec or _ServiceSpec()
    lb = obj.status.load_balancer if obj.status is not None else None
    ingress = (lb.ingress if lb is not None else None) or ()
    ports = tuple((sys.intern(p.protocol or "TCP"), p.port) for p in spec.ports or () if p.port is not None)
    labels = _labels(meta.labels)
    if label_keys is not None:
        # Values of selector keys are few (tier=edge, ...): share them.
        labels = tuple((k, sys.intern(v)) for k, v in labels if k in label_keys)
    return ServiceView(
        namespace=ns,
        name=name,
        uid=meta.uid,
        type=sys.intern(spec.type or "ClusterIP"),
        load_balancer_class=None
        if spec.load_balancer_class is None
        else sys.intern(spec.load_balancer_class),
        external_traffic_policy=sys.intern(spec.external_traffic_policy or "Cluster"),
        ingress_ips=tuple(i.ip for i in ingress if i.ip is not None),
        external_ips=tuple(spec.external_ips or ()),
        ports=_shared_ports(ports),
        selector_hash=selector_hash(spec.selector) if spec.selector else None,
        labels=labels,
    )


def _slice(obj: _Slice) -> EndpointSliceView:
    ns, name = _identity(obj.metadata, namespaced=True)
    assert obj.metadata is not None
    endpoints = []
    for e in obj.endpoints or ():
        c = e.conditions or _Conditions()
        ready = c.ready is not False
        serving = ready if c.serving is None else c.serving
        node = sys.intern(e.node_name) if e.node_name is not None else None
        endpoints.append(_endpoint(node, ready, serving, c.terminating is True))
    return EndpointSliceView(
        namespace=ns,
        name=name,
        service_name=(obj.metadata.labels or {}).get(SERVICE_NAME_LABEL, ""),
        endpoints=tuple(endpoints),
        address_type=sys.intern(obj.address_type or ""),
    )


def _node(obj: _Node) -> NodeView:
    _, name = _identity(obj.metadata, namespaced=False)
    assert obj.metadata is not None
    ready, detail = False, "no Ready condition"
    for c in (obj.status.conditions if obj.status is not None else None) or ():
        if c.type == "Ready":
            ready = c.status == "True"
            detail = f"Ready={c.status} {c.reason}".strip()[:200]
    return NodeView(
        name=name,
        ready=ready,
        ready_detail="" if ready else detail,
        labels=_labels(obj.metadata.labels),
        drain=(obj.metadata.annotations or {}).get(DRAIN_ANNOTATION),
    )


def _alloc(obj: _AllocServiceObj) -> AllocService:
    base = _service(obj, None)
    meta, spec = obj.metadata, obj.spec or _AllocSpec()
    assert meta is not None
    annotations = meta.annotations or {}
    return AllocService(
        **{f: getattr(base, f) for f in ServiceView.__slots__},
        created=meta.created,
        resource_version=meta.resource_version,
        requested_ips=annotations.get(ANNOTATION_IPS),
        pool=annotations.get(ANNOTATION_POOL),
        sharing_key=annotations.get(ANNOTATION_SHARING_KEY),
        load_balancer_ip=spec.load_balancer_ip or None,
        ip_families=tuple(spec.ip_families or ()),
        ip_family_policy=spec.ip_family_policy,
        selector=tuple(sorted((spec.selector or {}).items())),
    )


# --------------------------------------------------------------------------- lenient (plain JSON)


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _seq(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _text(v: Any) -> str:
    """A string field; anything else that is present becomes text the core will refuse."""
    if isinstance(v, str):
        return v
    return "" if v is None else json.dumps(v)[:100]


def _optional(v: Any) -> str | None:
    return None if v is None else _text(v)


def _plain_meta(obj: Mapping[str, Any], cls: type[_Meta] = _Meta) -> _Meta:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return cls()
    labels = {k: v for k, v in _map(meta.get("labels")).items() if isinstance(v, str)}
    fields: dict[str, Any] = {
        "name": _text(meta.get("name")),
        "namespace": _text(meta.get("namespace")),
        "uid": _text(meta.get("uid")),
        "resource_version": _text(meta.get("resourceVersion")),
        "labels": labels,
    }
    if cls is _MetaFull:
        fields["annotations"] = {k: _text(v) for k, v in _map(meta.get("annotations")).items()}
        fields["created"] = _text(meta.get("creationTimestamp"))
    return cls(**fields)


def _plain_service(obj: Mapping[str, Any], full: bool = False) -> _AllocServiceObj:
    spec = _map(obj.get("spec"))
    ingress = _seq(_map(_map(obj.get("status")).get("loadBalancer")).get("ingress"))
    ports = [
        _Port(p.get("port"), _text(p.get("protocol")) or None)
        for p in map(_map, _seq(spec.get("ports")))
        if isinstance(p.get("port"), int) and not isinstance(p.get("port"), bool)
    ]
    selector = _map(spec.get("selector"))
    return _AllocServiceObj(
        metadata=_plain_meta(obj, _MetaFull),  # type: ignore[arg-type]
        spec=_AllocSpec(
            type=_text(spec.get("type")) or None,
            load_balancer_class=_optional(spec.get("loadBalancerClass")),
            external_traffic_policy=_text(spec.get("externalTrafficPolicy")) or None,
            external_ips=[_text(ip) for ip in _seq(spec.get("externalIPs"))],
            ports=ports,
            selector={str(k): _text(v) for k, v in selector.items()} or None,
            load_balancer_ip=_optional(spec.get("loadBalancerIP")),
            ip_families=[_text(f) for f in _seq(spec.get("ipFamilies"))],
            ip_family_policy=_optional(spec.get("ipFamilyPolicy")),
        ),
        status=_ServiceStatus(
            _LoadBalancer(
                [_Ingress(_text(_map(i).get("ip"))) for i in ingress if _map(i).get("ip") is not None]
            )
        ),
    )


def _plain_slice(obj: Mapping[str, Any]) -> _Slice:
    endpoints = []
    for e in map(_map, _seq(obj.get("endpoints"))):
        c = _map(e.get("conditions"))

        def flag(v: Any) -> bool | None:
            return v if isinstance(v, bool) else None

        node = e.get("nodeName")
        endpoints.append(
            _Endpoint(
                node if isinstance(node, str) else None,
                _Conditions(flag(c.get("ready")), flag(c.get("serving")), flag(c.get("terminating"))),
            )
        )
    return _Slice(_plain_meta(obj), _text(obj.get("addressType")), endpoints)


def _plain_node(obj: Mapping[str, Any]) -> _Node:
    conditions = [
        _Condition(_text(c.get("type")), _text(c.get("status")), _text(c.get("reason")))
        for c in map(_map, _seq(_map(obj.get("status")).get("conditions")))
    ]
    return _Node(_plain_meta(obj, _MetaFull), _NodeStatus(conditions))  # type: ignore[arg-type]


def service_view(obj: Mapping[str, Any], label_keys: Collection[str] | None = None) -> ServiceView:
    """A Service as plain JSON → ServiceView. Never raises on a bad spec or status: bad values
    are kept as text for the core to refuse with a reason. `label_keys`: keep only these labels
    (None: all)."""
    return _service(_plain_service(obj), label_keys)


def endpoint_slice_view(obj: Mapping[str, Any]) -> EndpointSliceView:
    """A discovery.k8s.io/v1 EndpointSlice → EndpointSliceView, with the API's rules for
    missing conditions: ready unknown → ready; serving unknown → as ready; terminating → false."""
    return _slice(_plain_slice(obj))


def node_view(obj: Mapping[str, Any]) -> NodeView:
    return _node(_plain_node(obj))


def alloc_service_view(obj: Mapping[str, Any]) -> AllocService:
    """A Service (JSON) → the allocator's view: every label, the request annotations, IP
    families, selector and age. Never raises on bad values (kept as text)."""
    return _alloc(_plain_service(obj))


# --------------------------------------------------------------------------- codecs per kind


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How one kind is decoded: a fast typed decoder for whole lists and single objects, and a
    lenient fallback for an object that does not fit the types."""

    typed: type[T]
    convert: Callable[[T], View]
    plain: Callable[[Mapping[str, Any]], T]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_list", msgspec.json.Decoder(_List[self.typed]))  # type: ignore[name-defined]
        object.__setattr__(self, "_one", msgspec.json.Decoder(self.typed))

    def view(self, raw: bytes | msgspec.Raw) -> View:
        """One object → its view; MalformedObject if it has no identity."""
        try:
            obj = self._one.decode(raw)  # type: ignore[attr-defined]
        except msgspec.ValidationError:
            plain = msgspec.json.decode(raw)
            if not isinstance(plain, Mapping):
                raise MalformedObject("not a JSON object") from None
            obj = self.plain(plain)
        return self.convert(obj)

    def page(self, body: bytes, malformed: Callable[[Exception], None]) -> tuple[list[View], str, str]:
        """A list page → (views, resourceVersion, continue token). Objects that cannot be
        turned into views are reported to `malformed` and left out."""
        views: list[View] = []
        try:
            page = self._list.decode(body)  # type: ignore[attr-defined]
        except msgspec.ValidationError:
            raw = msgspec.json.decode(body, type=_RawList)
            for item in raw.items or ():
                try:
                    views.append(self.view(item))
                except (MalformedObject, msgspec.DecodeError) as e:
                    malformed(e)
            meta = raw.metadata or _ListMeta()
            return views, meta.resource_version, meta.continue_
        for obj in page.items or ():
            try:
                views.append(self.convert(obj))
            except MalformedObject as e:
                malformed(e)
        meta = page.metadata or _ListMeta()
        return views, meta.resource_version, meta.continue_


def service_codec(label_keys: Collection[str] | None) -> Codec[_Service]:
    keys = None if label_keys is None else frozenset(label_keys)
    return Codec(_Service, lambda o: _service(o, keys), _plain_service)  # type: ignore[arg-type]


SLICES: Codec[_Slice] = Codec(_Slice, _slice, _plain_slice)
NODES: Codec[_Node] = Codec(_Node, _node, _plain_node)
ALLOC_SERVICES: Codec[_AllocServiceObj] = Codec(_AllocServiceObj, _alloc, _plain_service)


# --------------------------------------------------------------------------- watch events

_EVENT = msgspec.json.Decoder(_WatchEvent)
_IDENTITY = msgspec.json.Decoder(_Identity)
_STATUS = msgspec.json.Decoder(_Status)


@dataclass(frozen=True, slots=True)
class WatchLine:
    type: str
    object: msgspec.Raw | None


def watch_line(line: bytes) -> WatchLine:
    """A watch line → its type and undecoded object; DecodeError/ValidationError if not JSON."""
    event = _EVENT.decode(line)
    return WatchLine(event.type, None if bytes(event.object) == b"null" else event.object)


def identity(raw: msgspec.Raw, namespaced: bool) -> tuple[tuple[str, str], str]:
    """(namespace, name) and resourceVersion of an object (DELETED, BOOKMARK)."""
    obj = _IDENTITY.decode(raw)
    meta = obj.metadata or _Meta()
    if not meta.name:
        return ("", ""), meta.resource_version
    return _identity(meta, namespaced), meta.resource_version


def resource_version(raw: msgspec.Raw) -> str:
    try:
        obj = _IDENTITY.decode(raw)
    except msgspec.ValidationError:
        return ""
    return obj.metadata.resource_version if obj.metadata is not None else ""


def status(raw: msgspec.Raw | None) -> tuple[int, str, str]:
    """(code, reason, message) of a Status object (an ERROR event)."""
    if raw is None:
        return 0, "", ""
    try:
        st = _STATUS.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0, "", ""
    return st.code, st.reason, st.message
