"""bgpvip's configuration: frozen, validated types and `load(mapping) -> Config`.

Pure side of the line: this module never reads a file (see `bgpvip.configfile` for that).
Every error names the exact field, e.g. `vips[1].checks[0].interval: must be > 0`, and
`bgpvip check-config` runs the very same function. Each setting documents its default and
the reason for it; `docs/configuration.md` is generated from these docstrings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote as url_quote
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    ValidationError,
    field_validator,
    model_validator,
)

from bgpvip.core.bfd import Timers
from bgpvip.core.model import Attributes
from bgpvip.core.text import clip, quote

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_COMMUNITY_RE = re.compile(r"^(\d{1,5}):(\d{1,5})$")
_LARGE_COMMUNITY_RE = re.compile(r"^(\d{1,10}):(\d{1,10}):(\d{1,10})$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_CHECK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_WELL_KNOWN_COMMUNITIES = frozenset({"no-export", "no-advertise", "no-export-subconfed", "nopeer"})


def _not_boolean(v: Any) -> Any:
    # pydantic takes true as 1: `peer_as: yes` rendered `peer-as 1;`
    if isinstance(v, bool):
        raise ValueError(
            "is a boolean, not a number (YAML reads yes, no, on, off, true and false as booleans)"
        )
    return v


_Int = Annotated[int, BeforeValidator(_not_boolean)]
"""Every integer field is an `_Int` (a test walks the models to keep it so)."""
_Float = Annotated[float, BeforeValidator(_not_boolean)]
"""Every float field is a `_Float`."""
_ASN = Annotated[_Int, Field(ge=1, le=4_294_967_295)]


def _check_name(v: str) -> str:
    if not _NAME_RE.match(v):
        raise ValueError("must be 1-63 characters of letters, digits, '.', '_' or '-'")
    return v


_Name = Annotated[str, AfterValidator(_check_name)]
"""Names of peers, VIPs and pools: they end up in logs, metric labels and Event text."""


def _address_text(v: Any) -> Any:
    # pydantic takes integers (and so YAML `true`) as addresses: `address: yes` became 0.0.0.1
    if isinstance(v, int):
        raise ValueError("must be an IP address written as text, e.g. 192.0.2.1")
    return v


_IPAddress = Annotated[IPvAnyAddress, BeforeValidator(_address_text)]
_IPv4Address = Annotated[IPv4Address, BeforeValidator(_address_text)]


MAX_PROBLEMS = 50
"""Problems a ConfigError lists; a file with more gets a count of the rest."""
_MAX_PATH = 200
_MAX_MESSAGE = 400


class ConfigError(Exception):
    """A configuration that cannot be used. `problems` holds (path, message) pairs.

    Paths and messages are clipped and their number capped: they quote the input, which can
    be of any size, and they end up in the log and in `/status`."""

    def __init__(self, problems: list[tuple[str, str]]):
        kept = [(clip(path, _MAX_PATH), clip(msg, _MAX_MESSAGE)) for path, msg in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            kept.append(("", f"... and {len(problems) - MAX_PROBLEMS} more problems"))
        self.problems = kept
        super().__init__("\n".join(f"{path}: {msg}" if path else msg for path, msg in kept))


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        str_strip_whitespace=True,
    )


# --------------------------------------------------------------------------- checks


MIN_PROBE_INTERVAL = 0.005
MIN_PROBE_TIMEOUT = 0.01
MIN_EXEC_INTERVAL = 0.05


class _CheckTiming(_Model):
    interval: _Float = Field(default=0.1, ge=MIN_PROBE_INTERVAL, le=3600)
    """Seconds between probes while the check is steady (UP or DOWN). Default 0.1: a local
    probe costs microseconds of CPU, and the interval bounds how late a failure is seen.
    At least 0.005: a shorter pause turns the probe loop into a busy loop that takes a whole
    core, and sees a failure no sooner than the target can show one."""

    fast_interval: _Float = Field(default=0.02, ge=MIN_PROBE_INTERVAL, le=3600)
    """Seconds between probes while the check is changing state (after a first failure or a
    first success), like HAProxy's `fastinter`. Default 0.02: it confirms a failure (or a
    recovery) within a few tens of milliseconds without shortening the steady interval.
    At least 0.005, for the same reason as `interval`."""

    timeout: _Float = Field(default=1.0, ge=MIN_PROBE_TIMEOUT, le=3600)
    """Hard limit in seconds for one probe; a probe still running then counts as a failure and
    is cut off. Default 1.0: far above a healthy local response, so one slow answer under load
    is a single failure, which `fall` absorbs. At least 0.01: below that a healthy target
    fails whenever the host is busy for a moment. A hung target (accepts, never answers) is
    withdrawn after about `fall` times `timeout`."""

    rise: _Int = Field(default=3, ge=1, le=1000)
    """Consecutive successes before a check counts as UP. Default 3: a flapping backend has to
    answer three times in a row (about 40 ms at `fast_interval`) before traffic returns."""

    fall: _Int = Field(default=2, ge=1, le=1000)
    """Consecutive failures before a check counts as DOWN. Default 2: one lost or slow probe
    never withdraws a route, and the second failure comes `fast_interval` after the first."""

    on_failure: Literal["withdraw", "lower-preference"] = "withdraw"
    """What this check failing does to its VIP's route. `withdraw` (the default): the route
    goes, as `require` says. `lower-preference`: the route stays announced, with a higher MED
    and/or a longer AS path (`med_penalty`, `prepend_penalty`) while the check is not UP, so
    every node whose checks all pass wins wherever one exists, and the VIP stays routable while
    any node announces it. For a dependency the service can partly work without, such as etcd
    behind kube-apiserver: see docs/control-plane-vip.md for the set-up and its risk. Such a
    check never withdraws the route: `require` counts only the `withdraw` checks, and a VIP
    whose checks all lower preference is announced whenever the speaker runs (as one without
    checks), preferred while they pass."""
    med_penalty: _Int | None = Field(default=None, ge=0, le=4_294_967_295)
    """MED added to the route while this `lower-preference` check is not UP; the penalties of
    several failing checks add up. Default: 1000 when `priority_attribute` is `med` (the
    default) and `prepend_penalty` is unset, else 0. 1000 is more than any MED `priority`
    gives (at most 254), so a penalised route loses against every healthy node's and keeps its
    place among the other penalised ones: when every node is penalised, ECMP (or the node
    `priority` picks) stays as it was. With an explicit `med` that differs between your nodes,
    the penalty must exceed the largest difference. A VIP with a MED penalty always carries a
    MED (0 when nothing else sets one), because routers that take a missing MED as the worst
    (Yamaha RTX, FRR's `bgp bestpath med missing-as-worst`) would prefer the penalised route."""
    prepend_penalty: _Int | None = Field(default=None, ge=0, le=16)
    """AS-path prepends (of `bgp.local_as`) added while this `lower-preference` check is not UP;
    several failing checks add up. Default: 11 when `priority_attribute` is `as-path` and
    `med_penalty` is unset, else 0. 11 is one more than the most prepends `priority` adds (10),
    so a penalised route loses against every healthy node's even on routers that do not compare
    MED between your nodes (nodes in different ASes), and keeps its place among the others."""

    @model_validator(mode="after")
    def _penalties(self) -> _CheckTiming:
        if self.on_failure == "withdraw":
            problems = [
                _FieldError(name, "applies only with on_failure: lower-preference")
                for name in ("med_penalty", "prepend_penalty")
                if getattr(self, name) is not None
            ]
            _raise_all(problems)
        elif (self.med_penalty, self.prepend_penalty) != (None, None) and not (
            self.med_penalty or self.prepend_penalty
        ):
            raise ValueError(
                "on_failure: lower-preference needs med_penalty or prepend_penalty above 0 (or neither "
                "set, for the defaults): with both 0 a failing check changes nothing"
            )
        return self


class HttpCheck(_CheckTiming):
    """GET a URL; healthy when the status is one of `expect_status`."""

    type: Literal["http"]
    url: str
    """`http://` or `https://` URL, for example `https://127.0.0.1:6443/readyz`."""
    method: Literal["GET", "HEAD", "POST", "OPTIONS"] = "GET"
    """HTTP method. Default GET, what `/readyz` and `/healthz` endpoints expect."""
    expect_status: tuple[Annotated[_Int, Field(ge=100, le=599)], ...] = (200,)
    """Status codes that count as healthy. Default 200 only: a redirect or 401 is not health."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (for example `Host`)."""
    ca_file: Path | None = None
    """PEM bundle to verify the server's certificate. Default: the system trust store. Read
    again whenever the file changes, without a restart."""
    tls_server_name: str | None = None
    """Name to verify the certificate against (and send as SNI) instead of the URL's host;
    `kubernetes` matches every kube-apiserver serving certificate."""
    insecure: bool = False
    """Skip certificate verification. Default false; prefer `ca_file`."""
    client_cert: Path | None = None
    """PEM client certificate for servers that require one. Read again when the file changes,
    like `ca_file`."""
    client_key: Path | None = None
    """PEM key for `client_cert`."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://")
        if not parts.hostname:
            raise ValueError("has no host")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"bad port in {quote(parts.netloc)}") from None
        if any(ord(c) < 33 or ord(c) == 127 for c in v):
            raise ValueError("must not contain spaces or control characters")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not re.fullmatch(r"[A-Za-z0-9-]+", k) or any(c in val for c in "\r\n\0"):
                raise ValueError(f"bad header {quote(k)}")
        return v

    @model_validator(mode="after")
    def _tls(self) -> HttpCheck:
        _client_pair(self.client_cert, self.client_key)
        if self.insecure and self.ca_file is not None:
            raise ValueError("set either ca_file or insecure, not both")
        return self


def _client_pair(cert: Path | None, key: Path | None) -> None:
    if (cert is None) != (key is None):
        raise ValueError("client_cert and client_key go together")


class KubeApiserverCheck(_CheckTiming):
    """The local kube-apiserver's `/readyz`, verified with the cluster CA (kubeadm paths).

    Needs no credentials: `/readyz` is readable anonymously in a default cluster. A cluster
    with `--anonymous-auth=false` needs `client_cert` and `client_key`."""

    type: Literal["kube-apiserver"]
    host: str = "127.0.0.1"
    """Where the local kube-apiserver listens. Default loopback, so only this node counts."""
    port: _Int = Field(default=6443, ge=1, le=65535)
    """kube-apiserver's secure port. Default 6443, kubeadm's."""
    path: str = "/readyz"
    """Readiness endpoint. Default `/readyz`: it turns false while the apiserver shuts down."""
    ca_file: Path | None = Path("/etc/kubernetes/pki/ca.crt")
    """Cluster CA. Default kubeadm's path. It may appear after bgpvip starts (`kubeadm init`
    writes it): until then the check fails and says so. Read again whenever the file changes
    (`kubeadm reset` and a new `kubeadm init`, a CA rotation), without a restart."""
    tls_server_name: str = "kubernetes"
    """Name checked in the serving certificate. Default `kubernetes`: every apiserver
    certificate carries it, while 127.0.0.1 usually is not a SAN."""
    insecure: bool = False
    """Skip certificate verification (only for clusters without the kubeadm CA path)."""
    client_cert: Path | None = None
    """PEM client certificate for clusters that refuse anonymous requests
    (`--anonymous-auth=false`, a CIS benchmark item), where `/readyz` answers 401. Any identity
    the cluster CA signed may read `/readyz` (`system:public-info-viewer`), so a `CN=bgpvip-probe`
    certificate with no groups is enough: authentication for one read-only URL, not API
    credentials (docs/control-plane-vip.md shows how to make it). Default: none, anonymous.
    Like the CA, it may appear after bgpvip starts, and is read again when it changes."""
    client_key: Path | None = None
    """PEM key for `client_cert`."""

    @model_validator(mode="after")
    def _client(self) -> KubeApiserverCheck:
        _client_pair(self.client_cert, self.client_key)
        return self

    exclude: tuple[str, ...] = ()
    """Named checks of `path` for kube-apiserver to leave out, sent as `exclude=NAME` query
    parameters (documented in Kubernetes' "API health endpoints" reference). `[etcd,
    etcd-readiness]` makes `/readyz` answer without asking etcd: the usual `withdraw` check
    next to a `lower-preference` check of the whole `/readyz` (docs/control-plane-vip.md).
    kube-apiserver ignores a name it does not have (its answer carries a warning line and stays
    200; `etcd-readiness` exists from v1.25), so one list serves every version. Default none."""

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            ip_address(v)
        except ValueError:
            if not _HOSTNAME_RE.fullmatch(v):
                raise ValueError("must be an IP address or a host name") from None
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(ord(c) < 33 or ord(c) == 127 for c in v):
            raise ValueError("must start with '/' and contain no spaces or control characters")
        return v

    @field_validator("exclude")
    @classmethod
    def _exclude(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not _CHECK_NAME_RE.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a kube-apiserver check name (like etcd or poststarthook/rbac/bootstrap-roles)"
                )
        return v

    @property
    def target(self) -> str:
        """The path and query asked for: `path` with one `exclude=NAME` per excluded check."""
        if not self.exclude:
            return self.path
        query = "&".join(f"exclude={url_quote(name, safe='/')}" for name in self.exclude)
        return f"{self.path}{'&' if '?' in self.path else '?'}{query}"

    def as_http(self) -> HttpCheck:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return HttpCheck(
            type="http",
            url=f"https://{host}:{self.port}{self.target}",
            ca_file=None if self.insecure else self.ca_file,
            tls_server_name=self.tls_server_name,
            insecure=self.insecure,
            client_cert=self.client_cert,
            client_key=self.client_key,
            interval=self.interval,
            fast_interval=self.fast_interval,
            timeout=self.timeout,
            rise=self.rise,
            fall=self.fall,
            on_failure=self.on_failure,
            med_penalty=self.med_penalty,
            prepend_penalty=self.prepend_penalty,
        )


class TcpCheck(_CheckTiming):
    """Healthy while a TCP connection to host:port succeeds."""

    type: Literal["tcp"]
    host: str = "127.0.0.1"
    """Host to connect to. Default loopback: the service on this host."""
    port: _Int = Field(ge=1, le=65535)
    """TCP port of the service."""


class ExecCheck(_CheckTiming):
    """Run a command (no shell); healthy when it exits 0 within `timeout`."""

    type: Literal["exec"]
    command: tuple[str, ...] = Field(min_length=1)
    """argv of the command, e.g. `["/usr/local/bin/check-db", "--quick"]`. No shell is used."""
    interval: _Float = Field(default=1.0, ge=MIN_EXEC_INTERVAL, le=3600)
    """Seconds between runs while steady. Default 1.0: starting a process costs milliseconds
    of CPU, unlike a socket probe. At least 0.05: more often, starting processes becomes the
    host's main work."""
    fast_interval: _Float = Field(default=0.1, ge=MIN_EXEC_INTERVAL, le=3600)
    """Seconds between runs while the state changes. Default 0.1. At least 0.05, as `interval`."""
    timeout: _Float = Field(default=2.0, ge=MIN_EXEC_INTERVAL, le=3600)
    """Hard limit for one run; the process group is killed then. Default 2.0. At least 0.05:
    starting a process alone can take that long on a busy host."""


Check = Annotated[HttpCheck | KubeApiserverCheck | TcpCheck | ExecCheck, Field(discriminator="type")]


# --------------------------------------------------------------------------- BGP


class BfdConfig(_Model):
    """BFD with this peer (RFC 5880 asynchronous mode, RFC 5881 single hop, no echo, no
    authentication), run inside bgpvip's speaker. `bfd: {}` enables it with the defaults; leave
    the key out to disable it. The router must run BFD for this host too (docs/bfd.md). The
    intervals actually used are negotiated: each side sends no faster than the other accepts.
    Being built: the speaker does not start BFD sessions yet, so this block has no effect."""

    transmit_interval_ms: _Int = Field(default=100, ge=50, le=60000, strict=True)
    """Desired minimum interval between the packets this host sends, in milliseconds. Default
    100: with `detect_multiplier` 3 the router declares this host down 0.3 s after its last
    packet, which leaves the router's own route removal inside a 0.4 s failover. At least 50, provisional:
    the shortest interval the speaker's event loop is expected to keep under load without a
    false Down; it will be replaced by a measured figure. Maximum 60000, as on FRR."""

    receive_interval_ms: _Int = Field(default=100, ge=50, le=60000, strict=True)
    """Required minimum interval between the packets this host accepts from the router, in
    milliseconds. Default 100, the router-side mirror of `transmit_interval_ms`. At least 50,
    provisional for the same reason: a late read on a busy loop would look like a lost router.
    Maximum 60000."""

    detect_multiplier: _Int = Field(default=3, ge=2, le=255, strict=True)
    """How many of this host's packets in a row the router may miss before it declares the
    session down: the router's detection time is this value times the negotiated interval of
    this host's packets (this host uses the router's multiplier the other way). Default 3, the
    common choice. At least 2: with 1 a single lost or late packet is a Down (FRR refuses 1
    too). At most 255, one byte on the wire."""

    def timers(self) -> Timers:
        """The session timers for the core, in the wire's microseconds."""
        return Timers(
            desired_min_tx=self.transmit_interval_ms * 1000,
            required_min_rx=self.receive_interval_ms * 1000,
            detect_mult=self.detect_multiplier,
        )


def _bfd_shorthand(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(
            "use `bfd: {}` to enable BFD with the defaults (or a mapping of settings); "
            "leave the key out to disable it"
        )
    return v


class PeerConfig(_Model):
    """One upstream BGP router."""

    address: _IPAddress
    """The router's address."""
    peer_as: _ASN
    """The router's AS number."""
    name: _Name | None = None
    """Label used in logs and `bgpvip routes`. Default: the address."""
    local_as: _ASN | None = None
    """This host's AS towards this peer. Default: `bgp.local_as`."""
    local_address: _IPAddress | None = None
    """This host's address on the session, used as next hop. Default: the source address the
    kernel picks to reach `address` (resolved when the ExaBGP config is rendered)."""
    hold_time: _Int = Field(default=9, ge=0, le=65535)
    """BGP hold time in seconds (0 disables keepalives). Default 9: a dead host loses its
    routes within 9 s even without BFD, and 9 is valid on Yamaha RTX (3..28800)."""
    password_file: Path | None = None
    """File holding the TCP MD5 password (first line). Kept out of the config so the config
    can live in a ConfigMap or git."""
    multihop_ttl: _Int | None = Field(default=None, ge=1, le=255)
    """Outgoing TTL for a peer that is not directly connected. Default: unset (TTL 1 is not
    forced; ExaBGP's default)."""
    families: tuple[Literal["ipv4", "ipv6"], ...] = ("ipv4",)
    """Address families on this session. Default IPv4 only: Yamaha RTX and most small routers
    speak nothing else, and an unknown capability can make a router refuse the session."""
    passive: bool = False
    """Wait for the router to connect instead of connecting. Default false."""
    graceful_restart: _Int | None = Field(default=None, ge=1, le=4095)
    """Advertise graceful restart with this restart time. Default off: with it, the router keeps
    routes of a stopped speaker for this long, which is the opposite of a fast withdrawal."""
    port: _Int = Field(default=179, ge=1, le=65535)
    """The router's BGP port."""
    bfd: Annotated[BfdConfig | None, BeforeValidator(_bfd_shorthand)] = None
    """BFD towards this peer, see below. Default off: the router has to be configured for it,
    and Yamaha RTX has no BFD."""
    listen: bool | Literal["auto"] = "auto"
    """Also accept the router's connections on port 179 of `local_address`, not only connect
    out. ExaBGP's own reconnect attempts back off up to a minute, so after a long router
    outage the session would come back up to a minute after the router does; the router's
    own connection is accepted at once. Default `auto`: listen when `bgpvip run` can bind
    the port, otherwise log `listen-skipped` with the reason (another BGP daemon such as
    Calico's BIRD holds it, or no CAP_NET_BIND_SERVICE) and only connect out. `true`
    refuses to start when the port cannot be bound; `false` never listens."""
    route_refresh: bool = True
    """Advertise route refresh (RFC 2918), so the router can ask for the routes again after it
    changed its import policy (FRR `clear bgp ... soft in`, a BIRD `configure`, GoBGP
    `softresetin`) without resetting the session. Default true; turn it off only for a router
    that refuses the capability."""

    @field_validator("families")
    @classmethod
    def _families(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one of ipv4, ipv6")
        if len(set(v)) != len(v):
            raise ValueError("lists a family twice")
        return v

    @field_validator("hold_time")
    @classmethod
    def _hold(cls, v: int) -> int:
        if v in (1, 2):
            raise ValueError("must be 0 (no keepalives) or at least 3 (RFC 4271)")
        return v

    @model_validator(mode="after")
    def _ipv6_needs_ipv6_session(self) -> PeerConfig:
        if "ipv6" in self.families and self.address.version == 4:
            raise _FieldError(
                "families",
                "ipv6 needs a peer with an IPv6 address: ExaBGP cannot derive an IPv6 next hop "
                "from an IPv4 session; add a second peer entry for the router's IPv6 address",
            )
        return self

    @property
    def label(self) -> str:
        return self.name or str(self.address)


class BgpConfig(_Model):
    local_as: _ASN
    """This host's AS number. Use a 2-byte private ASN (64512-65534) towards Yamaha RTX."""
    router_id: _IPv4Address | None = None
    """BGP router id. Default: the first peer's local address (must be IPv4 then)."""
    peers: tuple[PeerConfig, ...] = Field(min_length=1)
    """The upstream routers. Every VIP is announced to every peer of its family."""

    @model_validator(mode="after")
    def _unique(self) -> BgpConfig:
        problems: list[_FieldError] = []
        seen: dict[Any, int] = {}
        for i, p in enumerate(self.peers):
            if p.address in seen:
                problems.append(_FieldError(f"peers[{i}].address", f"duplicate of peers[{seen[p.address]}]"))
                continue
            seen[p.address] = i
        _raise_all(problems)
        return self


# --------------------------------------------------------------------------- VIPs


def _check_communities(v: tuple[str, ...]) -> tuple[str, ...]:
    for c in v:
        m = _COMMUNITY_RE.match(c)
        if c in _WELL_KNOWN_COMMUNITIES:
            continue
        if not m or int(m[1]) > 65535 or int(m[2]) > 65535:
            raise ValueError(f"{quote(c)} is not a community: use ASN:VALUE, both 0-65535, or no-export")
    return v


def _check_large_communities(v: tuple[str, ...]) -> tuple[str, ...]:
    for c in v:
        m = _LARGE_COMMUNITY_RE.match(c)
        if not m or any(int(x) > 4_294_967_295 for x in m.groups()):
            raise ValueError(f"{quote(c)} is not a large community: use A:B:C, each 0-4294967295")
    return v


class RouteAttributes(_Model):
    med: _Int | None = Field(default=None, ge=0, le=4_294_967_295)
    """MULTI_EXIT_DISC; lower is preferred. Default: unset (or derived from `priority`)."""
    local_preference: _Int | None = Field(default=None, ge=0, le=4_294_967_295)
    """LOCAL_PREF, only meaningful towards iBGP peers. Default unset."""
    communities: tuple[str, ...] = ()
    """Standard communities, `ASN:VALUE` or `no-export`."""
    large_communities: tuple[str, ...] = ()
    """Large communities, `A:B:C`."""
    as_path_prepend: _Int = Field(default=0, ge=0, le=16)
    """Prepend this host's AS this many times. Default 0."""

    _v_comm = field_validator("communities")(classmethod(lambda cls, v: _check_communities(v)))
    _v_large = field_validator("large_communities")(classmethod(lambda cls, v: _check_large_communities(v)))


class VipConfig(RouteAttributes):
    """One address this host announces while its checks pass."""

    address: _IPAddress
    """The VIP: announced as a /32 (IPv4) or /128 (IPv6)."""
    name: _Name | None = None
    """Label used in logs, metrics and `bgpvip routes`. Default: the address."""
    interface: str | None = "lo"
    """Interface that gets the address (labelled `<interface>:bgpvip` for IPv4) before it is
    announced. Default `lo`, so the host accepts traffic for it without answering ARP.
    `null` leaves addresses alone (something else manages them)."""
    checks: tuple[Check, ...] = ()
    """Health checks. None: the VIP is announced whenever the speaker runs."""
    require: Literal["all", "any"] = "all"
    """`all`: every check must be UP; `any`: one is enough. Default all."""
    priority: _Int | None = Field(default=None, ge=1, le=254)
    """keepalived-style priority, higher wins. Overrides the top-level `priority` for this VIP."""

    @field_validator("interface")
    @classmethod
    def _ifname(cls, v: str | None) -> str | None:
        if v is not None and not _IFNAME_RE.match(v):
            raise ValueError("is not a Linux interface name (1-15 characters, no spaces or '/')")
        return v

    @field_validator("address")
    @classmethod
    def _addr(cls, v: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
        if v.is_unspecified or v.is_multicast or v.is_loopback or v.is_link_local:
            raise ValueError(f"{v} cannot be a VIP (unspecified, multicast, loopback or link-local)")
        return v

    @property
    def label(self) -> str:
        return self.name or str(self.address)


_LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _check_labels(v: dict[str, str]) -> dict[str, str]:
    for k, val in v.items():
        if not _LABEL_KEY_RE.match(k):
            raise ValueError(f"{quote(k)} is not a Kubernetes label key")
        if not _LABEL_VALUE_RE.match(val):
            raise ValueError(f"{quote(val)} (for {quote(k)}) is not a Kubernetes label value")
    return v


AddressRange = tuple[IPv4Address, IPv4Address] | tuple[IPv6Address, IPv6Address]


def parse_address_block(text: str) -> AddressRange:
    """`203.0.113.0/24`, `203.0.113.10-203.0.113.20` or a single address -> (first, last)."""
    text = text.strip()
    if "-" in text:
        lo_s, hi_s = (t.strip() for t in text.split("-", 1))
        try:
            lo, hi = ip_address(lo_s), ip_address(hi_s)
        except ValueError:
            raise ValueError(
                f"{quote(text)} is not a range: use FIRST-LAST, e.g. 203.0.113.10-203.0.113.20"
            ) from None
        if lo.version != hi.version:
            raise ValueError(f"{quote(text)} mixes IPv4 and IPv6")
        if int(hi) < int(lo):
            raise ValueError(f"{quote(text)} ends before it starts")
        return (lo, hi)  # type: ignore[return-value]
    try:
        net = ip_network(text, strict=True)
    except ValueError as e:
        detail = str(e).replace(repr(text), "it")  # ipaddress quotes the whole input
        raise ValueError(f"{quote(text)} is not a CIDR or range ({clip(detail)})") from None
    return (net[0], net[-1])  # type: ignore[return-value]


class PoolConfig(RouteAttributes):
    """An address pool: LoadBalancer IPs are allocated from it and only its addresses are ever
    announced for Services."""

    name: _Name
    """Pool name, used in the `bgpvip.io/pool` annotation, Events and metrics."""
    addresses: tuple[str, ...] = Field(min_length=1)
    """CIDRs (`203.0.113.0/24`), ranges (`203.0.113.10-203.0.113.20`) or single addresses,
    IPv4 and IPv6. Network and broadcast addresses of a CIDR are usable: they are /32 routes."""
    auto_assign: bool = True
    """Allocate from this pool when a Service names no pool. Default true; set false for a
    pool that only serves explicit requests (`bgpvip.io/pool` or a requested address)."""
    allow_external_ips: bool = False
    """Also announce `spec.externalIPs` that lie in this pool. Default false: any user who can
    create a Service could otherwise attract traffic for an address (CVE-2020-8554)."""
    namespaces: tuple[str, ...] = ()
    """Only Services in these namespaces may use the pool. Default: every namespace."""
    service_selector: dict[str, str] = Field(default_factory=dict)
    """Only Services with all these labels may use the pool. Default: every Service."""

    _v_sel = field_validator("service_selector")(classmethod(lambda cls, v: _check_labels(v)))

    @field_validator("addresses")
    @classmethod
    def _blocks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[_FieldError] = []
        for i, block in enumerate(v):
            try:
                parse_address_block(block)
            except ValueError as e:
                problems.append(_FieldError(f"[{i}]", str(e)))
        _raise_all(problems)
        return v

    @property
    def ranges(self) -> tuple[AddressRange, ...]:
        return tuple(parse_address_block(b) for b in self.addresses)

    def contains(self, address: IPv4Address | IPv6Address) -> bool:
        return any(
            lo.version == address.version and int(lo) <= int(address) <= int(hi) for lo, hi in self.ranges
        )


class KubernetesConfig(_Model):
    """Service IPs from the Kubernetes API (the DaemonSet speaker and the controller)."""

    enabled: bool = False
    """Watch Services, EndpointSlices and this Node. Default false: the control-plane VIP mode
    needs no credentials at all."""
    kubeconfig: Path | None = None
    """kubeconfig file. Default: the in-cluster ServiceAccount."""
    load_balancer_class: str = "bgpvip.io/bgp"
    """Handle Services whose `spec.loadBalancerClass` is this."""
    include_unclassed: bool = False
    """Also handle LoadBalancer Services without a class. Default false, so bgpvip can run
    next to another load-balancer implementation."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Announce Service IPs only from nodes with these labels. Default: every node."""
    watch_timeout: _Float = Field(default=300.0, ge=10, le=86400)
    """A watch that delivers nothing (not even a bookmark) for this long is restarted.
    Default 300. At least 10: every restart is a new request to the apiserver, and a quiet
    cluster sends nothing for longer than that."""

    _v_sel = field_validator("node_selector")(classmethod(lambda cls, v: _check_labels(v)))


class StatusConfig(_Model):
    enabled: bool = True
    """Serve `/status`, `/metrics` and `/healthz`."""
    listen: _IPAddress = IPv4Address("127.0.0.1")
    """Address to bind. Default loopback: the endpoint is unauthenticated."""
    port: _Int = Field(default=9474, ge=1, le=65535)
    """TCP port. Default 9474."""


class ExabgpConfig(_Model):
    reactor_speed: _Float = Field(default=0.1, ge=0.01, le=5)
    """ExaBGP's `exabgp.reactor.speed`. ExaBGP's loop waits up to speed/100 seconds for input
    between its rounds and wakes at once when the speaker writes a command or a router sends a
    message, so a health failure reaches the router equally fast at any speed. What the speed
    changes: how often an idle ExaBGP wakes up, how fast it works through a long queue of
    announcements (it takes them in slices with a wait in between), and how far its own
    reconnection after the Cease that ends each session on a stop gets before ExaBGP exits.
    Default 0.1: thousands of Service routes at start reach the router sooner, and at a stop
    the router sees the Cease last. A host that only announces VIPs can set 5 to idle at a
    fraction of the CPU, at the price of a reconnection the router may see reset after the
    Cease. The measurements are in docs/performance.md. At least 0.01: shorter waits make
    ExaBGP's idle loop a busy one."""
    executable: str = Field(default="exabgp", min_length=1)
    """ExaBGP command `bgpvip run` starts (looked up in PATH, then next to bgpvip).
    `bgpvip check-config` and `bgpvip run` check that it exists and is executable."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """ExaBGP's log level."""


class Config(_Model):
    """The whole bgpvip configuration file."""

    node_name: str | None = None
    """This host's name in logs, metrics and Events. Default: the hostname."""
    bgp: BgpConfig
    vips: tuple[VipConfig, ...] = ()
    priority: _Int | None = Field(default=None, ge=1, le=254)
    """keepalived-style priority of this host (1-254, higher wins) for routers without ECMP,
    such as Yamaha RTX. Default unset: all healthy hosts announce equally (ECMP)."""
    priority_attribute: Literal["med", "as-path"] = "med"
    """How priority reaches the router: `med` sets MED = 255 - priority (lower MED wins, so
    higher priority wins); `as-path` prepends the local AS (254 - priority) times, at most
    10, for routers that do not compare MED between your hosts. Default med."""
    drain_file: Path = Path("/var/lib/bgpvip/drain")
    """While this file exists every route is withdrawn (`bgpvip drain` creates it). Default
    under /var/lib so a drain survives a reboot during maintenance."""
    runtime_dir: Path = Path("/run/bgpvip")
    """Rendered ExaBGP config, pid and stop markers. Default /run/bgpvip (tmpfs)."""
    shutdown_delay: _Float = Field(default=2.0, ge=0, le=600)
    """Seconds between withdrawing everything and removing addresses on SIGTERM: routers must
    converge before the host stops answering on the VIP. Default 2.0."""
    release_delay: _Float = Field(default=1.0, ge=0, le=600)
    """Seconds a VIP's address stays on its interface after its route was withdrawn (a failing
    check, a drain that removes the VIP, a reload that removes it). Routers keep sending traffic
    for the prefix until they have processed the withdrawal and changed their forwarding table;
    while the address stays, that traffic is still answered here instead of being dropped (or,
    with `net.ipv4.ip_forward=1` as kubeadm sets it, sent back to the router in a loop). The
    same holds for a kube-apiserver that answers `/readyz` with 503 while it keeps serving
    during `--shutdown-delay-duration`. Announcing the VIP again before the delay is over keeps
    the address. When the check saw the server die (connection refused or reset) nothing could
    answer on the address, and it goes at once, so local clients go through the router.
    0 removes the address right after the withdrawal. Default 1.0: several times a router's
    usual convergence, short next to any `--shutdown-delay-duration` worth setting. SIGTERM
    waits `shutdown_delay` instead, or this if it is longer."""
    resync_interval: _Float = Field(default=30.0, ge=1, le=86400)
    """Seconds between full re-assertions of routes and addresses, in case something outside
    bgpvip changed them. Default 30: re-announcing an identical route sends nothing on the wire.
    At least 1: each resync dumps ExaBGP's whole Adj-RIB-Out and the kernel's addresses, and
    back to back they keep the speaker and ExaBGP busy with nothing to find."""
    pools: tuple[PoolConfig, ...] = ()
    """Address pools for Service IPs (Kubernetes mode and the controller)."""
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    exabgp: ExabgpConfig = Field(default_factory=ExabgpConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)

    @field_validator("node_name")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", v):
            raise ValueError("must be a DNS-1123 name (lowercase letters, digits, '-', '.')")
        return v

    @model_validator(mode="after")
    def _cross(self) -> Config:
        problems: list[_FieldError] = []
        seen: dict[Any, int] = {}
        names: dict[str, int] = {}
        families = {f for p in self.bgp.peers for f in p.families}
        for i, v in enumerate(self.vips):
            if v.address in seen:
                problems.append(_FieldError(f"vips[{i}].address", f"duplicate of vips[{seen[v.address]}]"))
                continue
            seen[v.address] = i
            if v.label in names:
                problems.append(_FieldError(f"vips[{i}].name", f"duplicate of vips[{names[v.label]}]"))
            names.setdefault(v.label, i)
            fam = "ipv4" if v.address.version == 4 else "ipv6"
            if fam not in families:
                problems.append(
                    _FieldError(
                        f"vips[{i}].address", f"is {fam} but no peer carries {fam} (bgp.peers[*].families)"
                    )
                )
        pool_names: dict[str, int] = {}
        spans: list[tuple[int, int, int, int, int]] = []  # version, lo, hi, pool, block
        for i, pool in enumerate(self.pools):
            if pool.name in pool_names:
                problems.append(
                    _FieldError(f"pools[{i}].name", f"duplicate of pools[{pool_names[pool.name]}]")
                )
            pool_names.setdefault(pool.name, i)
            for j, (lo, hi) in enumerate(pool.ranges):
                overlap = next(
                    (
                        (oi, oj)
                        for ver, olo, ohi, oi, oj in spans
                        if ver == lo.version and int(lo) <= ohi and olo <= int(hi)
                    ),
                    None,
                )
                if overlap is not None:
                    problems.append(
                        _FieldError(
                            f"pools[{i}].addresses[{j}]",
                            f"overlaps pools[{overlap[0]}].addresses[{overlap[1]}]",
                        )
                    )
                spans.append((lo.version, int(lo), int(hi), i, j))
                fam = "ipv4" if lo.version == 4 else "ipv6"
                if fam not in families:
                    problems.append(
                        _FieldError(
                            f"pools[{i}].addresses[{j}]",
                            f"is {fam} but no peer carries {fam} (bgp.peers[*].families)",
                        )
                    )
        for i, v in enumerate(self.vips):
            for pool in self.pools:
                if pool.contains(v.address):
                    problems.append(
                        _FieldError(
                            f"vips[{i}].address",
                            f"lies in pool {pool.name!r}; VIPs and pools must not overlap",
                        )
                    )
        for i, v in enumerate(self.vips):
            worst = vip_base_med(self, v) + sum(failure_penalty(self, c).med for c in v.checks)
            if worst > MAX_MED:
                problems.append(
                    _FieldError(
                        f"vips[{i}].checks",
                        f"with every lower-preference check failing the MED would be {worst}, over "
                        f"{MAX_MED}: lower their med_penalty (or the VIP's med)",
                    )
                )
        prepends = self.priority_attribute == "as-path" or any(
            v.as_path_prepend for v in (*self.vips, *self.pools)
        )
        prepends = prepends or any(failure_penalty(self, c).prepend for v in self.vips for c in v.checks)
        if prepends:
            for i, peer in enumerate(self.bgp.peers):
                if peer.local_as not in (None, self.bgp.local_as):
                    problems.append(
                        _FieldError(
                            f"bgp.peers[{i}].local_as",
                            "differs from bgp.local_as, but AS-path prepending (as_path_prepend or "
                            "priority_attribute: as-path) prepends bgp.local_as to every peer",
                        )
                    )
        if self.bgp.router_id is None:
            first = self.bgp.peers[0].local_address
            if first is not None and first.version != 4:
                problems.append(
                    _FieldError("bgp.router_id", "must be set when the first peer's local_address is IPv6")
                )
        _raise_all(problems)
        return self


class _FieldError(ValueError):
    """Raised inside validators to point at a nested field path."""

    def __init__(self, path: str, msg: str):
        self.path = path
        self.msg = msg
        super().__init__(f"{path}: {msg}")


class _FieldErrors(ValueError):
    """Several `_FieldError`s from one validator, so that all of them are reported at once."""

    def __init__(self, errors: list[_FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _raise_all(problems: list[_FieldError]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise _FieldErrors(problems)


# --------------------------------------------------------------------------- loading

_DISCRIMINATORS = {"http", "kube-apiserver", "tcp", "exec"}


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for n, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif (part in _DISCRIMINATORS and n >= 2 and loc[n - 2] == "checks") or part.startswith("function-"):
            continue
        else:
            name = clip(part)  # an unknown key, or a header name, can be of any length
            out += f".{name}" if out else name
    return out


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling; see docs/configuration.md)"
    ctx = err.get("ctx") or {}
    bounds = {
        "greater_than": ("gt", ">"),
        "greater_than_equal": ("ge", ">="),
        "less_than": ("lt", "<"),
        "less_than_equal": ("le", "<="),
    }
    if err["type"] in bounds:
        key, op = bounds[err["type"]]
        return f"must be {op} {ctx.get(key)} (got {quote(err.get('input'))})"
    if err["type"] == "missing":
        return "is required"
    if err["type"] == "union_tag_invalid":
        return f"unknown check type {ctx.get('tag')!r}: use one of http, kube-apiserver, tcp, exec"
    if err["type"] == "union_tag_not_found":
        return "needs a `type`: one of http, kube-apiserver, tcp, exec"
    return msg


def load(data: Any) -> Config:
    """Validate a parsed config document. Raises ConfigError naming every bad field."""
    if not isinstance(data, Mapping):
        raise ConfigError([("", f"the config must be a mapping, not {type(data).__name__}")])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems: list[tuple[str, str, str]] = []
        for err in e.errors():
            loc = tuple(err["loc"])
            if err["type"] == "invalid_key":
                path, msg = _format_loc(loc[:-1]), f"key {quote(loc[-1])} must be a string"
            else:
                path, msg = _format_loc(loc), _message(err)
            ctx = err.get("ctx") or {}
            inner = ctx.get("error")
            inners = inner.errors if isinstance(inner, _FieldErrors) else [inner]
            for sub in inners:
                sub_path, sub_msg = path, msg
                if isinstance(sub, _FieldError):
                    sep = "" if sub.path.startswith("[") or not path else "."
                    sub_path, sub_msg = f"{path}{sep}{sub.path}", sub.msg
                problems.append((sub_path, sub_msg, err["type"]))
        # pydantic also reports a too-short list when its only items were invalid: noise
        paths = [p for p, _, _ in problems]
        kept = [
            (p, m)
            for p, m, t in problems
            if not (t == "too_short" and any(o != p and o.startswith(p + "[") for o in paths))
        ]
        raise ConfigError(kept) from None


# --------------------------------------------------------------------------- derived values


@dataclass(frozen=True, slots=True)
class CheckKey:
    """Identifies one check of one VIP across reloads: (vip label, index)."""

    vip: str
    index: int

    def __str__(self) -> str:
        return f"{self.vip}/checks[{self.index}]"


MAX_PRIORITY_PREPENDS = 10


def route_attributes(config: Config, source: RouteAttributes, priority: int | None) -> Attributes:
    """BGP attributes of a VIP's or a pool's routes, with the host's priority applied as MED
    (255 - priority, unless a MED is set) or as AS-path prepends (254 - priority, at most 10)."""
    med = source.med
    prepend = source.as_path_prepend
    if priority is not None:
        if config.priority_attribute == "med":
            if med is None:
                med = 255 - priority
        else:
            prepend += min(MAX_PRIORITY_PREPENDS, 254 - priority)
    return Attributes(
        med=med,
        local_preference=source.local_preference,
        communities=tuple(source.communities),
        large_communities=tuple(source.large_communities),
        # ExaBGP sends an explicit as-path verbatim (it adds the local AS only when no path
        # is given), so N prepends means the local AS N+1 times.
        as_path=(config.bgp.local_as,) * (prepend + 1) if prepend else (),
    )


def effective_priority(config: Config, vip: VipConfig) -> int | None:
    return vip.priority if vip.priority is not None else config.priority


MAX_MED = 4_294_967_295
DEFAULT_MED_PENALTY = 1000
DEFAULT_PREPEND_PENALTY = MAX_PRIORITY_PREPENDS + 1


@dataclass(frozen=True, slots=True)
class Penalty:
    """What a failing `lower-preference` check adds to its VIP's route: MED and AS-path prepends."""

    med: int = 0
    prepend: int = 0

    def __add__(self, other: Penalty) -> Penalty:
        return Penalty(self.med + other.med, self.prepend + other.prepend)

    def __bool__(self) -> bool:
        return bool(self.med or self.prepend)


NO_PENALTY = Penalty()


def failure_penalty(config: Config, check: Check) -> Penalty:
    """The penalty of one check while it is not UP: nothing for a `withdraw` check; for a
    `lower-preference` one its own penalties, or the default for `priority_attribute`."""
    if check.on_failure != "lower-preference":
        return NO_PENALTY
    if check.med_penalty is None and check.prepend_penalty is None:
        if config.priority_attribute == "med":
            return Penalty(med=DEFAULT_MED_PENALTY)
        return Penalty(prepend=DEFAULT_PREPEND_PENALTY)
    return Penalty(med=check.med_penalty or 0, prepend=check.prepend_penalty or 0)


def vip_base_med(config: Config, vip: VipConfig) -> int:
    """The MED of a VIP's healthy route as a router compares it (a missing MED counts as 0)."""
    if vip.med is not None:
        return vip.med
    priority = effective_priority(config, vip)
    if priority is not None and config.priority_attribute == "med":
        return 255 - priority
    return 0


def host_prefix(vip: VipConfig) -> IPv4Network | IPv6Network:
    return ip_network(f"{vip.address}/{vip.address.max_prefixlen}")
