"""A Kubernetes API server for tests: real HTTP/1.1 on 127.0.0.1, spoken to by the official client.

Test side, I/O. kmock 0.8 was considered and not used: its emulator lists with a constant
`resourceVersion: '...'`, keeps no per-object resourceVersion, ignores `resourceVersion`,
`timeoutSeconds` and selectors on watches, sends no BOOKMARKs and never answers 410, so the very
behaviours the watcher must survive could not be produced with it.

What is served, with the semantics of a real kube-apiserver where it matters to a client:
core/v1 services (+ `/status`), nodes (+ `/status`), events; discovery.k8s.io/v1
endpointslices; coordination.k8s.io/v1 leases. Lists carry a global, monotonically increasing
`resourceVersion`, honour `labelSelector`, `fieldSelector` (metadata.name/namespace), `limit` and
`continue` (a consistent snapshot; 410 once the history behind it is compacted) and
`resourceVersion` + `resourceVersionMatch=Exact` (410 when too old). Watches stream JSON lines
with chunked encoding from a resourceVersion, send BOOKMARKs when asked, end after
`timeoutSeconds`, and answer a resourceVersion older than the kept history with an ERROR event
carrying code 410, as the real server does. Writes: create, update with optimistic concurrency
(409 on a stale resourceVersion), merge-patch and strategic-merge-patch, delete with
preconditions and finalizers; status subresources ignore everything but status and the main
resource ignores status.

Optionally it serves HTTPS (`tls_dir`: a CA and a serving certificate from tests/pki.py) and
requires a bearer token (`token`), as the real server does for a ServiceAccount: a request
without it gets 401 Unauthorized and a line in `misuse`.

Misuse fails loudly: an unknown path, verb, content type, query parameter or selector gets a
proper `Status` error (404/405/415/400) *and* a line in `misuse`, which the tests' fixture
asserts is empty.
"""

from __future__ import annotations

import base64
import bisect
import copy
import ipaddress
import json
import logging
import re
import secrets
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from kubernetes import client

from bgpvip.adapters.kube.connection import Connection

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


RESOURCES = {
    r.plural: r
    for r in (
        ResourceType("", "v1", "services", "Service", namespaced=True, has_status=True),
        ResourceType("", "v1", "nodes", "Node", namespaced=False, has_status=True),
        ResourceType("", "v1", "events", "Event", namespaced=True, has_status=False),
        ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, False),
        ResourceType("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True, has_status=False),
    )
}

_COMMON_PARAMS = {"pretty"}
_PARAMS = {
    "list": {
        "labelSelector",
        "fieldSelector",
        "limit",
        "continue",
        "resourceVersion",
        "resourceVersionMatch",
        "timeoutSeconds",
        "watch",
        "allowWatchBookmarks",
    },
    "watch": {
        "watch",
        "labelSelector",
        "fieldSelector",
        "resourceVersion",
        "resourceVersionMatch",
        "timeoutSeconds",
        "allowWatchBookmarks",
    },
    "get": {"resourceVersion"},
    "create": {"fieldManager", "fieldValidation"},
    "update": {"fieldManager", "fieldValidation"},
    "patch": {"fieldManager", "fieldValidation"},
    "delete": {"gracePeriodSeconds", "propagationPolicy"},
}

# Lists that strategic merge patch merges by a key instead of replacing (from the API types).
_MERGE_KEYS = {
    ("spec", "ports"): "port",
    ("status", "conditions"): "type",
    ("metadata", "ownerReferences"): "uid",
    ("spec", "taints"): "key",
}
_MERGE_PRIMITIVES = {("metadata", "finalizers")}


class ApiError(Exception):
    """An error answered as a Kubernetes `Status` object."""

    def __init__(
        self, code: int, reason: str, message: str, details: Obj | None = None, *, misuse: bool = False
    ) -> None:
        super().__init__(message)
        self.misuse = misuse
        """The client asked for something no real apiserver serves, or the fake cannot serve."""
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _not_found(res: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.plural} "{name}" not found', {"name": name, "kind": res.plural})


def _no_such_path(path: str) -> ApiError:
    return ApiError(
        404, "NotFound", f"the server could not find the requested resource ({path})", misuse=True
    )


def _not_allowed(method: str, path: str) -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", f"the server does not allow method {method} on {path}", misuse=True
    )


def _conflict(res: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {res.plural} "{name}": the object has been modified;'
        " please apply your changes to the latest version and try again",
        {"name": name, "kind": res.plural},
    )


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str = ""
    body: Any = None
    status: int = 0
    unknown_params: tuple[str, ...] = ()
    rbac: tuple[str, str, str] | None = None
    """(API group, resource[/subresource], verb) as RBAC sees the request; None if not routed."""

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


@dataclass(frozen=True)
class _Call:
    """One routed request: who to answer, what was asked, on which object."""

    h: _Handler
    rec: Recorded
    res: ResourceType
    ns: str | None
    name: str | None
    status: bool

    @property
    def obj_name(self) -> str:
        assert self.name is not None
        return self.name


@dataclass(frozen=True)
class _Change:
    rv: int
    plural: str
    type: str
    obj: Obj
    prev: Obj | None


@dataclass
class _Watch:
    plural: str
    namespace: str | None
    labels: Callable[[Obj], bool]
    fields: Callable[[Obj], bool]
    bookmarks: bool
    handler: BaseHTTPRequestHandler
    bookmark_gen: int = 0


# --------------------------------------------------------------------------- selectors


def _split_requirements(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\(([^()]*)\)$")
_EQ_RE = re.compile(r"^([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)$")
_KEY_RE = re.compile(r"^(!?)([\w./-]+)$")


def parse_label_selector(text: str) -> Callable[[Obj], bool]:
    """labels.Parse: equality (`a=b`, `a==b`, `a!=b`), set (`a in (x,y)`, `a notin (x)`),
    existence (`a`, `!a`). Raises ApiError 400 on anything else."""
    checks: list[Callable[[dict[str, str]], bool]] = []
    for req in _split_requirements(text):
        if m := _SET_RE.match(req):
            key, op = m[1], m[2]
            values = {v.strip() for v in m[3].split(",") if v.strip()}
            if op == "in":
                checks.append(lambda ls, k=key, vs=values: ls.get(k) in vs)
            else:
                checks.append(lambda ls, k=key, vs=values: ls.get(k) not in vs)
        elif m := _EQ_RE.match(req):
            key, op, value = m[1], m[2], m[3]
            if op == "!=":
                checks.append(lambda ls, k=key, v=value: ls.get(k) != v)
            else:
                checks.append(lambda ls, k=key, v=value: ls.get(k) == v)
        elif m := _KEY_RE.match(req):
            neg, key = m[1] == "!", m[2]
            checks.append(lambda ls, k=key, n=neg: (k in ls) != n)
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {req!r}", misuse=True)

    def match(obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(c(labels) for c in checks)

    return match


_FIELDS: dict[str, Callable[[Obj], str]] = {
    "metadata.name": lambda o: (o.get("metadata") or {}).get("name", ""),
    "metadata.namespace": lambda o: (o.get("metadata") or {}).get("namespace", ""),
}
# The extra field labels kube-apiserver supports for core/v1 Events (pkg/apis/core/v1/conversion.go).
_EVENT_FIELDS: dict[str, Callable[[Obj], str]] = {
    "source": lambda o: (o.get("source") or {}).get("component", ""),
    "reason": lambda o: o.get("reason", ""),
    "type": lambda o: o.get("type", ""),
    "reportingComponent": lambda o: o.get("reportingComponent", ""),
    **{
        f"involvedObject.{f}": (lambda o, f=f: str((o.get("involvedObject") or {}).get(f, "")))
        for f in ("kind", "namespace", "name", "uid", "apiVersion")
    },
}


def parse_field_selector(text: str, plural: str = "") -> Callable[[Obj], bool]:
    """metadata.name and metadata.namespace (every resource), and Events' own field labels."""
    fields = {**_FIELDS, **(_EVENT_FIELDS if plural == "events" else {})}
    checks: list[Callable[[Obj], bool]] = []
    for req in _split_requirements(text):
        m = re.match(r"^([\w.]+)\s*(==|=|!=)\s*(.*)$", req)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {req!r}", misuse=True)
        fld, op, value = m[1], m[2], m[3]
        if fld not in fields:
            raise ApiError(400, "BadRequest", f'field label not supported: "{fld}"', misuse=True)
        get = fields[fld]
        if op == "!=":
            checks.append(lambda o, g=get, v=value: g(o) != v)
        else:
            checks.append(lambda o, g=get, v=value: g(o) == v)
    return lambda obj: all(c(obj) for c in checks)


# --------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch for the fields our resources use: maps merge, lists replace,
    except the lists in `_MERGE_KEYS` (merged by key) and `_MERGE_PRIMITIVES` (union)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive is not None:
        raise ApiError(
            422, "Invalid", f"fake apiserver: unsupported $patch {directive!r} at {path}", misuse=True
        )
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            raise ApiError(
                422, "Invalid", f"fake apiserver: unsupported directive {k!r} at {path}", misuse=True
            )
        sub = (*path, k)
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            result[k] = strategic_merge_patch(result.get(k), v, sub)
        elif isinstance(v, list) and sub in _MERGE_KEYS:
            result[k] = _merge_list(result.get(k) or [], v, _MERGE_KEYS[sub], sub)
        elif isinstance(v, list) and sub in _MERGE_PRIMITIVES:
            old = list(result.get(k) or [])
            result[k] = old + [x for x in v if x not in old]
        else:
            result[k] = copy.deepcopy(v)
    return result


def _merge_list(old: list[Any], patch: list[Any], key: str, path: tuple[str, ...]) -> list[Any]:
    out = [copy.deepcopy(x) for x in old]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise ApiError(
                422, "Invalid", f"fake apiserver: list item at {path} lacks merge key {key!r}", misuse=True
            )
        idx = next((i for i, x in enumerate(out) if isinstance(x, dict) and x.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
        elif idx is None:
            out.append(copy.deepcopy(item))
        else:
            out[idx] = strategic_merge_patch(out[idx], item, path)
    return out


# --------------------------------------------------------------------------- server


def _drop_type_dependent_fields(new: Obj, old: Obj) -> None:
    """What kube-apiserver's Service strategy does on every update: a Service that is not (or is
    no longer) a LoadBalancer has its `status.loadBalancer` cleared, and one that leaves
    `type: LoadBalancer` loses the `spec.loadBalancerClass` it did not change itself (the field
    is only valid on LoadBalancers)."""
    spec, old_spec = new.get("spec") or {}, old.get("spec") or {}
    if spec.get("type") == "LoadBalancer":
        return
    if isinstance(new.get("status"), dict) and new["status"].get("loadBalancer"):
        new["status"] = {**new["status"], "loadBalancer": {}}
    if (
        old_spec.get("type") == "LoadBalancer"
        and "loadBalancerClass" in spec
        and spec.get("loadBalancerClass") == old_spec.get("loadBalancerClass")
    ):
        del spec["loadBalancerClass"]


_ADDRESS_TYPES = {"IPv4": 4, "IPv6": 6, "FQDN": 0}


def _validate(res: ResourceType, obj: Obj) -> None:
    """The validation of a real apiserver for what tests are likely to get wrong: an EndpointSlice
    needs an `addressType`, and its addresses must be of that type. Refused with 422, loudly."""
    if res.plural != "endpointslices":
        return
    name = (obj.get("metadata") or {}).get("name", "")
    kind = obj.get("addressType")
    if kind not in _ADDRESS_TYPES:
        raise ApiError(
            422,
            "Invalid",
            f'EndpointSlice.discovery.k8s.io "{name}" is invalid: addressType: Unsupported value:'
            f' {kind!r}: supported values: "FQDN", "IPv4", "IPv6"',
            misuse=True,
        )
    endpoints = obj.get("endpoints")
    for i, e in enumerate(endpoints if isinstance(endpoints, list) else []):
        addresses = e.get("addresses") if isinstance(e, dict) else None
        for j, address in enumerate(addresses if isinstance(addresses, list) else []):
            try:
                version = ipaddress.ip_address(address).version
            except ValueError:
                version = 0
            if _ADDRESS_TYPES[kind] and version != _ADDRESS_TYPES[kind]:
                raise ApiError(
                    422,
                    "Invalid",
                    f'EndpointSlice.discovery.k8s.io "{name}" is invalid: endpoints[{i}].addresses[{j}]:'
                    f" Invalid value: {address!r}: must be a valid {kind} address",
                    misuse=True,
                )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _same_content(a: Obj, b: Obj) -> bool:
    def strip(o: Obj) -> Obj:
        o = dict(o)
        meta = dict(o.get("metadata") or {})
        meta.pop("resourceVersion", None)
        meta.pop("managedFields", None)
        o["metadata"] = meta
        return o

    return strip(a) == strip(b)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, addr: tuple[str, int], api: FakeKubeAPI, tls: ssl.SSLContext | None) -> None:
        self.api = api
        self.tls = tls
        super().__init__(addr, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:
            # The handshake happens in the connection's own thread (_Handler.setup), so a slow
            # or silent client cannot hold up accepting the next one.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("fake apiserver: connection from %s ended with an error", client_address, exc_info=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.api._outage == "reset":
            request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.close()
            return
        with self.api._lock:
            self.api._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.api._lock:
            self.api._conns.discard(request)
        super().shutdown_request(request)


class FakeKubeAPI:
    """The server. Use as a context manager, or `start()` / `stop()`."""

    def __init__(
        self,
        *,
        history_window: int = 10_000,
        bookmark_interval: float | None = None,
        start_rv: int = 1000,
        tls_dir: Path | None = None,
        token: str | None = None,
        authz_warmup: float = 0.0,
        user: str = "system:serviceaccount:bgpvip-system:bgpvip",
    ) -> None:
        self.tls_dir = tls_dir
        """Serve HTTPS with `server.crt`/`server.key` from this directory (its `ca.crt` signed
        them: tests/pki.py's `serving_certificate`); None: plain HTTP."""
        self.token = token
        """Bearer token every request must carry; None: no authentication."""
        self.authz_warmup = authz_warmup
        """Seconds after each start (and `restore()`) during which every request is refused with
        403, as a real kube-apiserver refuses ServiceAccount requests for about a second after it
        starts, while its RBAC authorizer has not loaded the roles yet."""
        self.user = user
        """The user named in 403 messages."""
        self._warm_at = 0.0
        self._tls: ssl.SSLContext | None = None
        if tls_dir is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(tls_dir / "server.crt", tls_dir / "server.key")
        self.history_window = history_window
        """Changes kept for watches; a watch from before the oldest kept change gets 410."""
        self.bookmark_interval = bookmark_interval
        """Seconds between BOOKMARKs on watches that allow them; None: only `send_bookmarks()`."""
        self.requests: list[Recorded] = []
        self.misuse: list[str] = []
        self.before_request: Callable[[Recorded], None] | None = None
        """Called (in the server thread) before each request is served, e.g. to compact between
        the pages of a list so the server's own 410 logic answers the next one."""
        self._injected: list[tuple[Callable[[Recorded], bool], ApiError, list[int]]] = []
        self._lock = threading.Condition()
        self._rv = start_rv
        self._floor = start_rv
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {p: {} for p in RESOURCES}
        self._history: list[_Change] = []
        self._list_cache: dict[tuple[Any, ...], tuple[dict[tuple[str, str], Obj], list[tuple[str, str]]]] = {}
        self._history_rvs: list[int] = []
        self._watches: list[_Watch] = []
        self._drop_gen = 0
        self._bookmark_gen = 0
        self._silent = False
        self._outage: str | None = None
        self._stopping = False
        self._conns: set[socket.socket] = set()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def connection(self) -> Connection:
        """bgpvip's connection settings for this server: its URL, CA and token."""
        ca = (self.tls_dir / "ca.crt").read_text() if self.tls_dir is not None else None
        return Connection(server=self.url, source="fake apiserver", ca=ca, token=self.token)

    def configuration(self) -> client.Configuration:
        """A client configuration for this server: its URL, CA and token."""
        c = client.Configuration(host=self.url)
        if self.tls_dir is not None:
            c.ssl_ca_cert = str(self.tls_dir / "ca.crt")
        if self.token is not None:
            c.api_key = {"authorization": f"Bearer {self.token}"}
        return c

    def start(self) -> FakeKubeAPI:
        self._serve(0)
        return self

    def _serve(self, port: int) -> None:
        self._warm_at = time.monotonic() + self.authz_warmup
        server = _HTTPServer(("127.0.0.1", port), self, self._tls)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-kube-api", daemon=True
        )
        self._thread.start()

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _cut_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
            self._drop_gen += 1
            self._lock.notify_all()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._close_listener()
        self._cut_connections()

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- test controls

    def inject_outage(self, mode: str = "refuse") -> None:
        """The API goes away. `refuse`: the port is closed (connection refused) and every open
        connection is cut; `reset`: connections are accepted and reset at once; `error`: every
        request gets 503 ServiceUnavailable."""
        if mode not in ("refuse", "reset", "error"):
            raise ValueError(mode)
        self._outage = mode
        if mode == "refuse":
            self._close_listener()
        self._cut_connections()

    def restore(self) -> None:
        """The API comes back on the same port, with its state and history intact."""
        mode, self._outage = self._outage, None
        if mode == "refuse":
            self._serve(self.port)
        else:
            self._warm_at = time.monotonic() + self.authz_warmup

    def drop_watches(self) -> None:
        """Cut every open watch stream mid-way (no terminating chunk), as a broken connection would."""
        with self._lock:
            self._drop_gen += 1
            self._lock.notify_all()

    def compact(self) -> None:
        """Forget all history: a watch or consistent list from any earlier resourceVersion gets 410."""
        with self._lock:
            self._history.clear()
            self._history_rvs.clear()
            self._floor = self._rv

    def silence_watches(self, silent: bool = True) -> None:
        """Watches send nothing at all and ignore timeoutSeconds, like a hung apiserver."""
        with self._lock:
            self._silent = silent
            self._lock.notify_all()

    def inject_error(
        self, match: Callable[[Recorded], bool], code: int, reason: str, message: str = "", *, times: int = 1
    ) -> None:
        """Answer the next `times` requests that `match` with this HTTP status and a Status body."""
        with self._lock:
            self._injected.append((match, ApiError(code, reason, message or f"injected {code}"), [times]))

    def send_bookmarks(self) -> None:
        with self._lock:
            self._bookmark_gen += 1
            self._lock.notify_all()

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watches)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
            time.sleep(0.005)

    def requests_for(self, plural: str, *, watch: bool | None = None, method: str = "GET") -> list[Recorded]:
        with self._lock:
            reqs = list(self.requests)
        return [
            r
            for r in reqs
            if r.method == method
            and self._plural_of(r.path) == plural
            and (watch is None or r.watch == watch)
        ]

    @staticmethod
    def _plural_of(path: str) -> str | None:
        for part in reversed(path.split("/")):
            if part in RESOURCES:
                return part
        return None

    # ----------------------------------------------------------------- in-process seeding

    def put(self, plural: str, obj: Obj) -> Obj:
        """Create or replace an object whole (status included), as an admin write would."""
        res = RESOURCES[plural]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not res.namespaced:
            meta.pop("namespace", None)
        elif not meta.get("namespace"):
            meta["namespace"] = "default"
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        with self._lock:
            old = self._objects[plural].get(_key(obj))
            if old is None:
                return self._create_locked(res, obj)
            meta.setdefault("uid", old["metadata"]["uid"])
            meta.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"])
            meta.pop("resourceVersion", None)
            return self._store_locked(res, obj, old)

    def remove(self, plural: str, namespace: str, name: str) -> None:
        with self._lock:
            res = RESOURCES[plural]
            old = self._objects[plural].get((namespace if res.namespaced else "", name))
            if old is None:
                raise _not_found(res, name)
            self._delete_locked(res, old)

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            obj = self._objects[plural].get((namespace if RESOURCES[plural].namespaced else "", name))
            return copy.deepcopy(obj)

    def objects(self, plural: str) -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(o) for _, o in sorted(self._objects[plural].items())]

    # ----------------------------------------------------------------- storage (lock held)

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _record_change(self, plural: str, kind: str, obj: Obj, prev: Obj | None) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self._history.append(_Change(rv, plural, kind, obj, prev))
        self._history_rvs.append(rv)
        excess = len(self._history) - self.history_window
        if excess > 0:
            self._floor = self._history[excess - 1].rv
            del self._history[:excess]
            del self._history_rvs[:excess]
        self._lock.notify_all()

    def _create_locked(self, res: ResourceType, obj: Obj) -> Obj:
        _validate(res, obj)
        meta = obj["metadata"]
        key = _key(obj)
        if key in self._objects[res.plural]:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{res.plural} "{key[1]}" already exists',
                {"name": key[1], "kind": res.plural},
            )
        meta["uid"] = meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = meta.get("creationTimestamp") or _now()
        meta["resourceVersion"] = str(self._next_rv())
        meta.setdefault("generation", 1)
        self._objects[res.plural][key] = obj
        self._record_change(res.plural, "ADDED", obj, None)
        return obj

    def _store_locked(self, res: ResourceType, obj: Obj, old: Obj) -> Obj:
        if res.plural == "services":
            _drop_type_dependent_fields(obj, old)
        _validate(res, obj)
        if _same_content(obj, old):
            return old
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove_locked(res, obj, old)
        if obj.get("spec") != old.get("spec"):
            meta["generation"] = int((old.get("metadata") or {}).get("generation", 1)) + 1
        meta["resourceVersion"] = str(self._next_rv())
        self._objects[res.plural][_key(obj)] = obj
        self._record_change(res.plural, "MODIFIED", obj, old)
        return obj

    def _delete_locked(self, res: ResourceType, old: Obj) -> Obj:
        if (old.get("metadata") or {}).get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            return self._store_locked(res, new, old)
        return self._remove_locked(res, copy.deepcopy(old), old)

    def _remove_locked(self, res: ResourceType, final: Obj, prev: Obj) -> Obj:
        final["metadata"]["resourceVersion"] = str(self._next_rv())
        del self._objects[res.plural][_key(prev)]
        self._record_change(res.plural, "DELETED", final, prev)
        return final

    def _state_at(self, plural: str, rv: int) -> dict[tuple[str, str], Obj]:
        """The objects as they were at `rv`, rebuilt by undoing later changes."""
        if rv < self._floor:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self._floor})")
        if rv > self._rv:
            raise ApiError(504, "Timeout", f"Too large resource version: {rv}, current: {self._rv}")
        state = dict(self._objects[plural])
        start = bisect.bisect_right(self._history_rvs, rv)
        for change in reversed(self._history[start:]):
            if change.plural != plural:
                continue
            key = _key(change.obj)
            if change.prev is None:
                state.pop(key, None)
            else:
                state[key] = change.prev
        return state

    # ----------------------------------------------------------------- HTTP dispatch

    def handle(self, h: _Handler) -> None:
        parts = urlsplit(h.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        rec = Recorded(h.command, parts.path, query, h.headers.get("Content-Type", ""))
        with self._lock:
            self.requests.append(rec)
        try:
            length = int(h.headers.get("Content-Length") or 0)
            raw = h.rfile.read(length) if length else b""
            if raw:
                try:
                    rec.body = json.loads(raw)
                except ValueError as e:
                    raise ApiError(400, "BadRequest", f"invalid JSON body: {e}", misuse=True) from None
            if self.token is not None and not self._authorized(h.headers.get("Authorization", "")):
                raise ApiError(401, "Unauthorized", "Unauthorized", misuse=True)
            if self._outage == "error":
                raise ApiError(503, "ServiceUnavailable", "fake apiserver: outage injected")
            if time.monotonic() < self._warm_at:
                raise self._forbidden(rec)
            if self.before_request is not None:
                self.before_request(rec)
            with self._lock:
                for match, error, left in self._injected:
                    if left[0] > 0 and match(rec):
                        left[0] -= 1
                        raise error
            self._route(h, rec)
        except ApiError as e:
            if e.misuse:
                self._misuse(f"{rec.method} {h.path}: {e.code} {e.message}")
            rec.status = e.code
            h.send_json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            rec.status = rec.status or 499

    def _forbidden(self, rec: Recorded) -> ApiError:
        """The 403 of an apiserver whose RBAC authorizer is not ready yet, worded as the real one."""
        verb = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        m = re.fullmatch(r"(?:/api/v1|/apis/([^/]+)/[^/]+)(?:/namespaces/([^/]+))?/([^/]+)(?:/.*)?", rec.path)
        group, ns, plural = (m[1] or "", m[2], m[3]) if m else ("", None, rec.path)
        action = verb.get(rec.method, rec.method.lower())
        if rec.method == "GET" and m and rec.path.rstrip("/").endswith(plural):
            action = "watch" if rec.watch else "list"
        scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
        return ApiError(
            403,
            "Forbidden",
            f'{plural} is forbidden: User "{self.user}" cannot {action} resource "{plural}" in API group'
            f' "{group}" {scope}',
            {"kind": plural},
        )

    def _authorized(self, header: str) -> bool:
        # The scheme is case-insensitive (RFC 7235), as kube-apiserver reads it; the official
        # client's in-cluster loader sends "bearer".
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self.token

    def _misuse(self, text: str) -> None:
        log.error("fake apiserver misuse: %s", text)
        with self._lock:
            self.misuse.append(text)

    def _route(self, h: _Handler, rec: Recorded) -> None:
        path = rec.path
        if path == "/version" and rec.method == "GET":
            rec.status = 200
            h.send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake"})
            return
        m = re.fullmatch(
            r"(?P<prefix>/api/v1|/apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
            r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?",
            path,
        )
        res = RESOURCES.get(m["plural"]) if m else None
        if m is None or res is None or m["prefix"] != res.prefix:
            raise _no_such_path(path)
        ns, name, sub = m["ns"], m["name"], m["sub"]
        if (
            (ns is not None and not res.namespaced)
            or (ns is None and name is not None and res.namespaced)
            or (sub is not None and (sub != "status" or not res.has_status))
        ):
            raise _no_such_path(path)
        if name is None:
            action = {"GET": "list", "POST": "create"}.get(rec.method)
            if action == "list" and rec.query.get("watch") in ("true", "1"):
                action = "watch"
        else:
            action = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(rec.method)
        if action is None or (sub == "status" and action == "delete"):
            raise _not_allowed(rec.method, path)
        rec.rbac = (res.group, res.plural + ("/status" if sub == "status" else ""), action)
        unknown = tuple(sorted(set(rec.query) - _PARAMS[action] - _COMMON_PARAMS))
        if unknown:
            rec.unknown_params = unknown
            self._misuse(f"{rec.method} {rec.path}: unknown query parameters {unknown}")
        getattr(self, f"_do_{action}")(_Call(h, rec, res, ns, name, sub == "status"))

    def _body(self, rec: Recorded) -> Obj:
        if not isinstance(rec.body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object", misuse=True)
        return rec.body

    def _selectors(self, rec: Recorded) -> tuple[Callable[[Obj], bool], Callable[[Obj], bool]]:
        return (
            parse_label_selector(rec.query.get("labelSelector", "")),
            parse_field_selector(rec.query.get("fieldSelector", ""), self._plural_of(rec.path) or ""),
        )

    # ----------------------------------------------------------------- verbs

    def _do_list(self, c: _Call) -> None:
        rec = c.rec
        labels, fields = self._selectors(rec)
        limit = int(rec.query.get("limit") or 0)
        token = rec.query.get("continue")
        rv_param = rec.query.get("resourceVersion", "")
        match = rec.query.get("resourceVersionMatch", "")
        start_after: tuple[str, str] | None = None
        with self._lock:
            if token:
                try:
                    decoded = json.loads(base64.urlsafe_b64decode(token))
                    at, start_after = int(decoded["rv"]), (decoded["start"][0], decoded["start"][1])
                except (ValueError, KeyError, TypeError, IndexError):
                    raise ApiError(
                        400, "BadRequest", f"invalid continue token {token!r}", misuse=True
                    ) from None
                if at < self._floor:
                    raise ApiError(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result."
                        " You can start a new list without the continue parameter.",
                    )
            elif rv_param and match == "Exact":
                at = int(rv_param)
            elif match and match != "NotOlderThan":
                raise ApiError(400, "BadRequest", f"invalid resourceVersionMatch {match!r}", misuse=True)
            else:
                at = self._rv
            # The pages of one list share `at`; the objects as of `at` never change (history is
            # only undone, and a compacted `at` was refused above), so the sorted selection is
            # kept for the next page: a page costs O(limit), as from an API server's cache,
            # instead of O(all objects) (the Service benchmark lists 10,000 in 20 pages).
            cache_key = (
                c.res.plural,
                at,
                c.ns,
                rec.query.get("labelSelector", ""),
                rec.query.get("fieldSelector", ""),
            )
            cached = self._list_cache.get(cache_key)
            if cached is None:
                state = self._state_at(c.res.plural, at)
                cached = (
                    state,
                    sorted(
                        k
                        for k, o in state.items()
                        if (c.ns is None or k[0] == c.ns) and labels(o) and fields(o)
                    ),
                )
                self._list_cache[cache_key] = cached
                while len(self._list_cache) > 8:
                    self._list_cache.pop(next(iter(self._list_cache)))
        state, keys = cached
        if start_after is not None:
            keys = keys[bisect.bisect_right(keys, start_after) :]
        if limit:
            keys_page, more = keys[:limit], len(keys) - limit
        else:
            keys_page, more = keys, 0
        meta: Obj = {"resourceVersion": str(at)}
        if more > 0:
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": at, "start": list(keys_page[-1])}).encode()
            ).decode()
            meta["remainingItemCount"] = more
        items = []
        for k in keys_page:
            item = dict(state[k])
            item.pop("apiVersion", None)
            item.pop("kind", None)
            items.append(item)
        rec.status = 200
        c.h.send_json(
            200,
            {"kind": f"{c.res.kind}List", "apiVersion": c.res.api_version, "metadata": meta, "items": items},
        )

    def _do_get(self, c: _Call) -> None:
        with self._lock:
            obj = self._objects[c.res.plural].get((c.ns or "", c.obj_name))
        if obj is None:
            raise _not_found(c.res, c.obj_name)
        c.rec.status = 200
        c.h.send_json(200, obj)

    def _do_create(self, c: _Call) -> None:
        res = c.res
        if res.namespaced and c.ns is None:
            raise _not_allowed(c.rec.method, c.rec.path)
        obj = copy.deepcopy(self._body(c.rec))
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace") not in (None, "", c.ns):
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = c.ns
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", f"{res.kind} is invalid: metadata.name: Required value")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        for k in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp"):
            meta.pop(k, None)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        if res.plural == "services":
            obj["status"] = {"loadBalancer": {}}
        with self._lock:
            created = self._create_locked(res, obj)
        c.rec.status = 201
        c.h.send_json(201, created)

    def _write(self, c: _Call, change: Callable[[Obj], Obj]) -> Obj:
        res, name = c.res, c.obj_name
        with self._lock:
            old = self._objects[res.plural].get((c.ns or "", name))
            if old is None:
                raise _not_found(res, name)
            new = change(copy.deepcopy(old))
            if not isinstance(new, dict):
                raise ApiError(422, "Invalid", "the result of the patch is not an object")
            meta = new.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise _conflict(res, name)
            if res.has_status:
                if c.status:
                    kept = copy.deepcopy(old)
                    kept["status"] = new.get("status")
                    new = kept
                else:
                    new["status"] = copy.deepcopy(old.get("status"))
            for k in ("uid", "creationTimestamp", "namespace", "name"):
                if k in old["metadata"]:
                    new["metadata"][k] = old["metadata"][k]
            new["apiVersion"], new["kind"] = res.api_version, res.kind
            return self._store_locked(res, new, old)

    def _do_update(self, c: _Call) -> None:
        body = copy.deepcopy(self._body(c.rec))
        written = self._write(c, lambda _old: body)
        c.rec.status = 200
        c.h.send_json(200, written)

    def _do_patch(self, c: _Call) -> None:
        ctype = c.rec.content_type.split(";")[0].strip()
        patch = c.rec.body
        fn: Callable[[Obj], Obj]
        if ctype == "application/merge-patch+json":
            fn = lambda old: merge_patch(old, patch)  # noqa: E731
        elif ctype == "application/strategic-merge-patch+json":
            fn = lambda old: strategic_merge_patch(old, patch)  # noqa: E731
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - the fake accepts"
                f" application/merge-patch+json, application/strategic-merge-patch+json (got {ctype!r})",
                misuse=True,
            )
        written = self._write(c, fn)
        c.rec.status = 200
        c.h.send_json(200, written)

    def _do_delete(self, c: _Call) -> None:
        body = c.rec.body if isinstance(c.rec.body, dict) else {}
        pre = body.get("preconditions") or {}
        with self._lock:
            old = self._objects[c.res.plural].get((c.ns or "", c.obj_name))
            if old is None:
                raise _not_found(c.res, c.obj_name)
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {pre['uid']}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise _conflict(c.res, c.obj_name)
            gone = self._delete_locked(c.res, old)
        c.rec.status = 200
        c.h.send_json(200, gone)

    def _do_watch(self, c: _Call) -> None:
        rec, res, ns, h = c.rec, c.res, c.ns, c.h
        labels, fields = self._selectors(rec)
        timeout = float(rec.query.get("timeoutSeconds") or 0) or None
        rv_param = rec.query.get("resourceVersion", "")
        w = _Watch(res.plural, ns, labels, fields, rec.query.get("allowWatchBookmarks") == "true", h)
        deadline = time.monotonic() + timeout if timeout else None
        rec.status = 200
        h.start_stream()
        with self._lock:
            drop_gen = self._drop_gen
            w.bookmark_gen = self._bookmark_gen
            if rv_param in ("", "0"):
                pos = self._rv
                initial = [
                    {"type": "ADDED", "object": o}
                    for k, o in sorted(self._objects[res.plural].items())
                    if (ns is None or k[0] == ns) and labels(o) and fields(o)
                ]
            else:
                pos = int(rv_param)
                initial = []
                if pos < self._floor:
                    gone = ApiError(410, "Expired", f"too old resource version: {pos} ({self._floor})")
                    initial = [{"type": "ERROR", "object": gone.status()}]
                    pos = -1
                elif pos > self._rv:
                    self._misuse(f"watch from a future resourceVersion {pos} (current {self._rv})")
                    too_new = ApiError(504, "Timeout", "Too large resource version")
                    initial = [{"type": "ERROR", "object": too_new.status()}]
                    pos = -1
            self._watches.append(w)
        try:
            if not h.write_events(initial) or pos < 0:
                h.end_stream()
                return
            self._stream(w, pos, drop_gen, deadline)
        finally:
            with self._lock:
                self._watches.remove(w)

    def _stream(self, w: _Watch, pos: int, drop_gen: int, deadline: float | None) -> None:
        h = w.handler
        last_bookmark = time.monotonic()
        while True:
            with self._lock:
                while True:
                    if self._stopping or self._drop_gen != drop_gen:
                        h.abort()
                        return
                    now = time.monotonic()
                    if not self._silent:
                        if deadline is not None and now >= deadline:
                            break
                        if self._history_rvs and self._history_rvs[-1] > pos:
                            break
                        if w.bookmarks and w.bookmark_gen != self._bookmark_gen:
                            break
                        if (
                            w.bookmarks
                            and self.bookmark_interval
                            and now - last_bookmark >= self.bookmark_interval
                        ):
                            break
                    waits = [0.2]
                    if deadline is not None:
                        waits.append(deadline - now)
                    if w.bookmarks and self.bookmark_interval:
                        waits.append(last_bookmark + self.bookmark_interval - now)
                    self._lock.wait(max(0.001, min(waits)))
                if pos < self._floor:
                    events = [
                        {"type": "ERROR", "object": ApiError(410, "Expired", "watch fell behind").status()}
                    ]
                    done = True
                else:
                    start = bisect.bisect_right(self._history_rvs, pos)
                    events = [e for c in self._history[start:] if (e := self._event_for(w, c)) is not None]
                    pos = self._rv
                    done = deadline is not None and time.monotonic() >= deadline
                    if w.bookmarks and (
                        w.bookmark_gen != self._bookmark_gen
                        or (
                            self.bookmark_interval
                            and time.monotonic() - last_bookmark >= self.bookmark_interval
                        )
                    ):
                        w.bookmark_gen = self._bookmark_gen
                        last_bookmark = time.monotonic()
                        events.append(self._bookmark(w.plural, pos))
            if not h.write_events(events):
                return
            if done:
                h.end_stream()
                return

    def _bookmark(self, plural: str, rv: int) -> Obj:
        res = RESOURCES[plural]
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": res.kind,
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(rv)},
            },
        }

    @staticmethod
    def _event_for(w: _Watch, c: _Change) -> Obj | None:
        """The event this watcher sees for a change, with selector transitions as the watch cache
        does them: leaving the selection is DELETED, entering it is ADDED."""
        if c.plural != w.plural:
            return None

        def sees(o: Obj | None) -> bool:
            return (
                o is not None
                and (w.namespace is None or _key(o)[0] == w.namespace)
                and w.labels(o)
                and w.fields(o)
            )

        now, before = sees(c.obj), sees(c.prev)
        if c.type == "DELETED":
            return {"type": "DELETED", "object": c.obj} if before else None
        if now and before:
            return {"type": "MODIFIED", "object": c.obj}
        if now:
            return {"type": "ADDED", "object": c.obj}
        if before:
            return {"type": "DELETED", "object": c.obj}
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers, body and each watch event go out in separate send()s; with Nagle on, a
    # kept-alive client would wait ~40 ms for its own delayed ACK per response. kube-apiserver
    # (Go's net/http) sets TCP_NODELAY too.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake apiserver: " + format, *args)

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # a failed handshake ends here, in handle_error
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    def _dispatch(self) -> None:
        self.server.api.handle(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def write_events(self, events: Iterable[Obj]) -> bool:
        try:
            for e in events:
                line = json.dumps(e, separators=(",", ":")).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def abort(self) -> None:
        """Cut the connection without ending the chunked body."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
