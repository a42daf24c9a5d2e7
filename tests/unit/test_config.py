"""bgpvip.core.config: defaults, a full config, and the exact path and message of every error."""

from __future__ import annotations

import copy
import re
import typing
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bgpvip.core import config as cfg
from bgpvip.core.config import ConfigError, load
from bgpvip.core.text import clip, quote

MINIMAL: dict[str, Any] = {
    "bgp": {"local_as": 65001, "peers": [{"address": "192.0.2.1", "peer_as": 65000}]},
}

# Every field of every model is set here, to a value that differs from its default wherever
# the validators allow it; test_full_config_sets_every_field keeps it that way.
FULL: dict[str, Any] = {
    "node_name": "cp-1.example",
    "bgp": {
        "local_as": 65100,
        "router_id": "192.0.2.10",
        "peers": [
            {
                "address": "192.0.2.1",
                "peer_as": 65000,
                "name": "frr-a",
                "local_as": 65100,
                "local_address": "192.0.2.10",
                "hold_time": 30,
                "password_file": "/etc/bgpvip/frr-a.password",
                "multihop_ttl": 2,
                "families": ["ipv4"],
                "passive": True,
                "graceful_restart": 120,
                "port": 1179,
                "bfd": {"transmit_interval_ms": 200, "receive_interval_ms": 300, "detect_multiplier": 4},
                "listen": False,
                "route_refresh": False,
            },
            {"address": "2001:db8::1", "peer_as": 65000, "families": ["ipv6"]},
        ],
    },
    "vips": [
        {
            "address": "198.51.100.10",
            "name": "kube-api",
            "interface": "dummy0",
            "require": "any",
            "priority": 200,
            "med": 50,
            "local_preference": 300,
            "communities": ["65000:100", "no-export"],
            "large_communities": ["65000:1:2"],
            "as_path_prepend": 2,
            "checks": [
                {
                    "type": "kube-apiserver",
                    "host": "::1",
                    "port": 16443,
                    "path": "/livez",
                    "ca_file": "/etc/k8s/ca.crt",
                    "tls_server_name": "kubernetes.default",
                    "insecure": False,
                    "client_cert": "/etc/kubernetes/pki/bgpvip-probe.crt",
                    "client_key": "/etc/kubernetes/pki/bgpvip-probe.key",
                    "exclude": ["etcd", "etcd-readiness"],
                    "on_failure": "lower-preference",
                    "med_penalty": 500,
                    "prepend_penalty": 3,
                    "interval": 0.5,
                    "fast_interval": 0.05,
                    "timeout": 2.0,
                    "rise": 4,
                    "fall": 3,
                },
                {
                    "type": "http",
                    "url": "https://127.0.0.1:8443/healthz",
                    "method": "HEAD",
                    "expect_status": [200, 204],
                    "headers": {"Host": "api.example"},
                    "ca_file": "/etc/ssl/ca.pem",
                    "tls_server_name": "api.example",
                    "insecure": False,
                    "client_cert": "/etc/ssl/client.pem",
                    "client_key": "/etc/ssl/client.key",
                    "on_failure": "lower-preference",
                    "med_penalty": 100,
                    "prepend_penalty": 0,
                    "interval": 0.2,
                    "fast_interval": 0.03,
                    "timeout": 0.5,
                    "rise": 2,
                    "fall": 1,
                },
                {"type": "tcp", "host": "127.0.0.2", "port": 5432, "interval": 0.3},
                {
                    "type": "exec",
                    "command": ["/usr/local/bin/check-db", "--quick"],
                    "on_failure": "lower-preference",
                    "med_penalty": 0,
                    "prepend_penalty": 2,
                    "interval": 5.0,
                    "fast_interval": 0.5,
                    "timeout": 3.0,
                    "rise": 1,
                    "fall": 5,
                },
            ],
        },
        {"address": "2001:db8:cafe::10", "interface": None},
    ],
    "priority": 100,
    "priority_attribute": "as-path",
    "drain_file": "/etc/bgpvip/drain",
    "runtime_dir": "/run/bgpvip-test",
    "shutdown_delay": 5.0,
    "release_delay": 0.5,
    "resync_interval": 60.0,
    "pools": [
        {
            "name": "public",
            "addresses": ["203.0.113.0/25", "203.0.113.200-203.0.113.210", "2001:db8:1::/120"],
            "auto_assign": False,
            "allow_external_ips": True,
            "namespaces": ["default", "web"],
            "service_selector": {"example.com/tier": "frontend"},
            "med": 10,
            "local_preference": 200,
            "communities": ["65000:200"],
            "large_communities": ["65000:2:3"],
            "as_path_prepend": 1,
        }
    ],
    "kubernetes": {
        "enabled": True,
        "kubeconfig": "/etc/bgpvip/kubeconfig",
        "load_balancer_class": "example.com/lb",
        "include_unclassed": True,
        "node_selector": {"node-role.kubernetes.io/edge": ""},
        "watch_timeout": 60.0,
    },
    "status": {"enabled": False, "listen": "::1", "port": 9999},
    "exabgp": {"reactor_speed": 0.5, "executable": "/opt/exabgp/bin/exabgp", "log_level": "DEBUG"},
}


def with_(base: dict[str, Any], **top: Any) -> dict[str, Any]:
    d = copy.deepcopy(base)
    d.update(copy.deepcopy(top))
    return d


def vip(address: str = "198.51.100.1", **kw: Any) -> dict[str, Any]:
    return {"address": address, **kw}


def tcp(**kw: Any) -> dict[str, Any]:
    return {"type": "tcp", "port": 80, **kw}


def http(**kw: Any) -> dict[str, Any]:
    return {"type": "http", "url": "http://127.0.0.1/healthz", **kw}


def problems_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        load(data)
    return exc.value.problems


# --------------------------------------------------------------------------- valid configs


# fmt: off
DEFAULTS = [
    # (path, getter, documented default)
    ("node_name", lambda c: c.node_name, None),
    ("vips", lambda c: c.vips, ()),
    ("priority", lambda c: c.priority, None),
    ("priority_attribute", lambda c: c.priority_attribute, "med"),
    ("drain_file", lambda c: c.drain_file, Path("/var/lib/bgpvip/drain")),
    ("runtime_dir", lambda c: c.runtime_dir, Path("/run/bgpvip")),
    ("shutdown_delay", lambda c: c.shutdown_delay, 2.0),
    ("release_delay", lambda c: c.release_delay, 1.0),
    ("resync_interval", lambda c: c.resync_interval, 30.0),
    ("pools", lambda c: c.pools, ()),
    ("bgp.router_id", lambda c: c.bgp.router_id, None),
    ("peer.name", lambda c: c.bgp.peers[0].name, None),
    ("peer.label", lambda c: c.bgp.peers[0].label, "192.0.2.1"),
    ("peer.local_as", lambda c: c.bgp.peers[0].local_as, None),
    ("peer.local_address", lambda c: c.bgp.peers[0].local_address, None),
    ("peer.hold_time", lambda c: c.bgp.peers[0].hold_time, 9),
    ("peer.password_file", lambda c: c.bgp.peers[0].password_file, None),
    ("peer.multihop_ttl", lambda c: c.bgp.peers[0].multihop_ttl, None),
    ("peer.families", lambda c: c.bgp.peers[0].families, ("ipv4",)),
    ("peer.passive", lambda c: c.bgp.peers[0].passive, False),
    ("peer.graceful_restart", lambda c: c.bgp.peers[0].graceful_restart, None),
    ("peer.port", lambda c: c.bgp.peers[0].port, 179),
    ("peer.listen", lambda c: c.bgp.peers[0].listen, "auto"),
    ("peer.route_refresh", lambda c: c.bgp.peers[0].route_refresh, True),
    ("kubernetes.enabled", lambda c: c.kubernetes.enabled, False),
    ("kubernetes.kubeconfig", lambda c: c.kubernetes.kubeconfig, None),
    ("kubernetes.load_balancer_class", lambda c: c.kubernetes.load_balancer_class, "bgpvip.io/bgp"),
    ("kubernetes.include_unclassed", lambda c: c.kubernetes.include_unclassed, False),
    ("kubernetes.node_selector", lambda c: c.kubernetes.node_selector, {}),
    ("kubernetes.watch_timeout", lambda c: c.kubernetes.watch_timeout, 300.0),
    ("status.enabled", lambda c: c.status.enabled, True),
    ("status.listen", lambda c: c.status.listen, IPv4Address("127.0.0.1")),
    ("status.port", lambda c: c.status.port, 9474),
    ("exabgp.reactor_speed", lambda c: c.exabgp.reactor_speed, 0.1),
    ("exabgp.executable", lambda c: c.exabgp.executable, "exabgp"),
    ("exabgp.log_level", lambda c: c.exabgp.log_level, "INFO"),
]
# fmt: on


@pytest.mark.parametrize(("getter", "expected"), [d[1:] for d in DEFAULTS], ids=[d[0] for d in DEFAULTS])
def test_minimal_config_has_documented_defaults(getter: Callable[[cfg.Config], Any], expected: Any) -> None:
    assert getter(load(MINIMAL)) == expected


VIP_DEFAULTS = [
    ("name", None),
    ("label", "198.51.100.1"),
    ("interface", "lo"),
    ("checks", ()),
    ("require", "all"),
    ("priority", None),
    ("med", None),
    ("local_preference", None),
    ("communities", ()),
    ("large_communities", ()),
    ("as_path_prepend", 0),
]


@pytest.mark.parametrize(("attr", "expected"), VIP_DEFAULTS, ids=[a for a, _ in VIP_DEFAULTS])
def test_minimal_vip_has_documented_defaults(attr: str, expected: Any) -> None:
    config = load(with_(MINIMAL, vips=[vip()]))
    assert getattr(config.vips[0], attr) == expected


CHECK_DEFAULTS = [
    # (id, check, (interval, fast_interval, timeout, rise, fall))
    ("tcp", tcp(), (0.1, 0.02, 1.0, 3, 2)),
    ("http", http(), (0.1, 0.02, 1.0, 3, 2)),
    ("kube-apiserver", {"type": "kube-apiserver"}, (0.1, 0.02, 1.0, 3, 2)),
    ("exec", {"type": "exec", "command": ["/bin/true"]}, (1.0, 0.1, 2.0, 3, 2)),
]


@pytest.mark.parametrize(
    ("check", "timing"), [c[1:] for c in CHECK_DEFAULTS], ids=[c[0] for c in CHECK_DEFAULTS]
)
def test_check_timing_defaults(check: dict[str, Any], timing: tuple[float, float, float, int, int]) -> None:
    c = load(with_(MINIMAL, vips=[vip(checks=[check])])).vips[0].checks[0]
    assert (c.interval, c.fast_interval, c.timeout, c.rise, c.fall) == timing


def test_check_type_specific_defaults() -> None:
    checks = (
        load(with_(MINIMAL, vips=[vip(checks=[http(), {"type": "kube-apiserver"}, tcp()])])).vips[0].checks
    )
    h, k, t = checks
    assert isinstance(h, cfg.HttpCheck)
    assert (h.method, h.expect_status, h.headers, h.ca_file, h.insecure) == ("GET", (200,), {}, None, False)
    assert (h.tls_server_name, h.client_cert, h.client_key) == (None, None, None)
    assert isinstance(k, cfg.KubeApiserverCheck)
    assert (k.host, k.port, k.path) == ("127.0.0.1", 6443, "/readyz")
    assert (k.ca_file, k.tls_server_name, k.insecure) == (
        Path("/etc/kubernetes/pki/ca.crt"),
        "kubernetes",
        False,
    )
    assert isinstance(t, cfg.TcpCheck)
    assert t.host == "127.0.0.1"


def test_pool_defaults() -> None:
    pool = load(with_(MINIMAL, pools=[{"name": "p", "addresses": ["203.0.113.0/24"]}])).pools[0]
    assert (pool.auto_assign, pool.allow_external_ips, pool.namespaces, pool.service_selector) == (
        True,
        False,
        (),
        {},
    )


def _model_fields(model: type[BaseModel], data: Any, path: str) -> list[str]:
    """Every `path.field` of `model` that `data` leaves unset, recursing into nested models."""
    missing: list[str] = []
    for name, info in model.model_fields.items():
        if name not in data:
            missing.append(f"{path}{name}")
            continue
        sub = info.annotation
        value = data[name]
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            missing += _model_fields(sub, value, f"{path}{name}.")
    return missing


def test_full_config_sets_every_field() -> None:
    """FULL stays complete as fields are added: each model's fields appear in some instance."""
    missing = _model_fields(cfg.Config, FULL, "")
    missing += _model_fields(cfg.BgpConfig, FULL["bgp"], "bgp.")
    missing += _model_fields(cfg.PeerConfig, FULL["bgp"]["peers"][0], "bgp.peers[0].")
    missing += _model_fields(cfg.VipConfig, FULL["vips"][0], "vips[0].")
    missing += _model_fields(cfg.PoolConfig, FULL["pools"][0], "pools[0].")
    checks = {c["type"]: c for c in FULL["vips"][0]["checks"]}
    # the tcp check keeps most defaults, so that a mostly-default check is loaded too
    models = {"http": cfg.HttpCheck, "kube-apiserver": cfg.KubeApiserverCheck, "exec": cfg.ExecCheck}
    for tag, model in models.items():
        missing += _model_fields(model, checks[tag], f"checks[{tag}].")
    assert missing == []


def test_full_config_loads_every_field() -> None:
    c = load(FULL)
    assert c.node_name == "cp-1.example"
    assert c.bgp.router_id == IPv4Address("192.0.2.10")
    p = c.bgp.peers[0]
    assert (p.label, p.local_as, p.local_address, p.hold_time) == (
        "frr-a",
        65100,
        IPv4Address("192.0.2.10"),
        30,
    )
    assert (p.password_file, p.multihop_ttl, p.families) == (
        Path("/etc/bgpvip/frr-a.password"),
        2,
        ("ipv4",),
    )
    assert (p.passive, p.graceful_restart, p.port) == (True, 120, 1179)
    assert p.bfd is not None and (p.bfd.transmit_interval_ms, p.bfd.detect_multiplier) == (200, 4)
    assert (p.listen, p.route_refresh) == (False, False)
    assert c.bgp.peers[1].label == "2001:db8::1"
    v = c.vips[0]
    assert (v.label, v.interface, v.require, v.priority) == ("kube-api", "dummy0", "any", 200)
    assert (v.med, v.local_preference, v.as_path_prepend) == (50, 300, 2)
    assert (v.communities, v.large_communities) == (("65000:100", "no-export"), ("65000:1:2",))
    kube, web, db, script = v.checks
    assert isinstance(kube, cfg.KubeApiserverCheck)
    assert (kube.host, kube.port, kube.path, kube.rise, kube.fall) == ("::1", 16443, "/livez", 4, 3)
    assert kube.exclude == ("etcd", "etcd-readiness")
    assert (kube.on_failure, kube.med_penalty, kube.prepend_penalty) == ("lower-preference", 500, 3)
    assert cfg.failure_penalty(c, kube) == cfg.Penalty(med=500, prepend=3)
    assert kube.as_http().url == "https://[::1]:16443/livez?exclude=etcd&exclude=etcd-readiness"
    assert isinstance(web, cfg.HttpCheck)
    assert (web.method, web.expect_status, web.headers) == ("HEAD", (200, 204), {"Host": "api.example"})
    assert (web.client_cert, web.client_key) == (Path("/etc/ssl/client.pem"), Path("/etc/ssl/client.key"))
    assert (kube.as_http().client_cert, kube.as_http().client_key) == (
        Path("/etc/kubernetes/pki/bgpvip-probe.crt"),
        Path("/etc/kubernetes/pki/bgpvip-probe.key"),
    )
    assert isinstance(db, cfg.TcpCheck)
    assert (db.host, db.port, db.interval) == ("127.0.0.2", 5432, 0.3)
    assert (db.on_failure, cfg.failure_penalty(c, db)) == ("withdraw", cfg.NO_PENALTY)
    assert cfg.failure_penalty(c, script) == cfg.Penalty(prepend=2)
    assert isinstance(script, cfg.ExecCheck)
    assert script.command == ("/usr/local/bin/check-db", "--quick")
    assert c.vips[1].address == IPv6Address("2001:db8:cafe::10")
    assert c.vips[1].interface is None
    assert (c.priority, c.priority_attribute, c.drain_file) == (100, "as-path", Path("/etc/bgpvip/drain"))
    assert (c.runtime_dir, c.shutdown_delay, c.resync_interval) == (Path("/run/bgpvip-test"), 5.0, 60.0)
    assert c.release_delay == 0.5
    pool = c.pools[0]
    assert pool.ranges[1] == (IPv4Address("203.0.113.200"), IPv4Address("203.0.113.210"))
    assert pool.contains(IPv6Address("2001:db8:1::ff"))
    assert not pool.contains(IPv4Address("203.0.113.150"))
    assert (pool.auto_assign, pool.allow_external_ips, pool.namespaces) == (False, True, ("default", "web"))
    assert c.kubernetes.node_selector == {"node-role.kubernetes.io/edge": ""}
    assert (c.status.enabled, c.status.listen, c.status.port) == (False, IPv6Address("::1"), 9999)
    assert (c.exabgp.reactor_speed, c.exabgp.log_level) == (0.5, "DEBUG")


def test_config_is_frozen() -> None:
    c = load(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        c.priority = 10  # type: ignore[misc]


def test_kube_apiserver_as_http_uses_kubeadm_ca_and_server_name() -> None:
    check = load(with_(MINIMAL, vips=[vip(checks=[{"type": "kube-apiserver", "rise": 5, "fall": 4}])]))
    kube = check.vips[0].checks[0]
    assert isinstance(kube, cfg.KubeApiserverCheck)
    h = kube.as_http()
    assert h.url == "https://127.0.0.1:6443/readyz"
    assert h.ca_file == Path("/etc/kubernetes/pki/ca.crt")
    assert h.tls_server_name == "kubernetes"
    assert h.insecure is False
    assert (h.method, h.expect_status, h.rise, h.fall) == ("GET", (200,), 5, 4)


@pytest.mark.parametrize(
    ("extra", "url", "ca_file"),
    [
        ({"host": "::1"}, "https://[::1]:6443/readyz", Path("/etc/kubernetes/pki/ca.crt")),
        ({"insecure": True}, "https://127.0.0.1:6443/readyz", None),
        (
            {"port": 16443, "path": "/livez?verbose"},
            "https://127.0.0.1:16443/livez?verbose",
            Path("/etc/kubernetes/pki/ca.crt"),
        ),
        (
            {"exclude": ["etcd", "etcd-readiness"]},
            "https://127.0.0.1:6443/readyz?exclude=etcd&exclude=etcd-readiness",
            Path("/etc/kubernetes/pki/ca.crt"),
        ),
        (
            {"path": "/readyz?verbose", "exclude": ["poststarthook/rbac/bootstrap-roles"]},
            "https://127.0.0.1:6443/readyz?verbose&exclude=poststarthook/rbac/bootstrap-roles",
            Path("/etc/kubernetes/pki/ca.crt"),
        ),
    ],
    ids=["ipv6-host-bracketed", "insecure-drops-ca", "port-and-path", "exclude", "exclude-after-a-query"],
)
def test_kube_apiserver_as_http_variants(extra: dict[str, Any], url: str, ca_file: Path | None) -> None:
    h = cfg.KubeApiserverCheck(type="kube-apiserver", **extra).as_http()
    assert (h.url, h.ca_file) == (url, ca_file)


@pytest.mark.parametrize(
    ("top", "check", "penalty"),
    [
        ({}, {}, cfg.Penalty(med=cfg.DEFAULT_MED_PENALTY)),
        ({"priority_attribute": "as-path"}, {}, cfg.Penalty(prepend=cfg.DEFAULT_PREPEND_PENALTY)),
        ({}, {"med_penalty": 70}, cfg.Penalty(med=70)),
        ({}, {"prepend_penalty": 2}, cfg.Penalty(prepend=2)),
        ({"priority_attribute": "as-path"}, {"med_penalty": 5}, cfg.Penalty(med=5)),
        ({}, {"med_penalty": 0, "prepend_penalty": 1}, cfg.Penalty(prepend=1)),
        ({}, {"med_penalty": 9, "prepend_penalty": 1}, cfg.Penalty(med=9, prepend=1)),
    ],
    ids=[
        "default-med",
        "default-as-path",
        "med-only",
        "prepend-only",
        "med-in-as-path-mode",
        "zero-med",
        "both",
    ],
)
def test_failure_penalty(top: dict[str, Any], check: dict[str, Any], penalty: cfg.Penalty) -> None:
    c = load(with_(MINIMAL, **top, vips=[vip(checks=[tcp(on_failure="lower-preference", **check), tcp()])]))
    soft, hard = c.vips[0].checks
    assert cfg.failure_penalty(c, soft) == penalty
    assert cfg.failure_penalty(c, hard) == cfg.NO_PENALTY


def test_a_vip_whose_checks_all_lower_preference_loads() -> None:
    c = load(with_(MINIMAL, vips=[vip(checks=[tcp(on_failure="lower-preference")], require="any")]))
    assert [ch.on_failure for ch in c.vips[0].checks] == ["lower-preference"]


def test_the_largest_med_with_every_penalty_loads() -> None:
    checks = [tcp(on_failure="lower-preference", med_penalty=1000)] * 2
    assert load(with_(MINIMAL, vips=[vip(med=4294967295 - 2000, checks=checks)]))
    assert problems_of(with_(MINIMAL, vips=[vip(med=4294967295 - 1999, checks=checks)]))


@pytest.mark.parametrize(
    ("priority", "vip_priority", "expected"),
    [(None, None, None), (100, None, 100), (100, 200, 200), (None, 50, 50)],
    ids=["unset", "global", "vip-overrides", "vip-only"],
)
def test_effective_priority(priority: int | None, vip_priority: int | None, expected: int | None) -> None:
    c = load(with_(MINIMAL, priority=priority, vips=[vip(priority=vip_priority)]))
    assert cfg.effective_priority(c, c.vips[0]) == expected


@pytest.mark.parametrize(
    ("block", "first", "last"),
    [
        ("203.0.113.0/30", "203.0.113.0", "203.0.113.3"),
        ("203.0.113.7", "203.0.113.7", "203.0.113.7"),
        ("203.0.113.10 - 203.0.113.20", "203.0.113.10", "203.0.113.20"),
        ("2001:db8::/127", "2001:db8::", "2001:db8::1"),
    ],
    ids=["cidr", "single", "range-with-spaces", "ipv6-cidr"],
)
def test_parse_address_block(block: str, first: str, last: str) -> None:
    assert cfg.parse_address_block(block) == (ip_address(first), ip_address(last))


# --------------------------------------------------------------------------- errors

V6 = {
    "bgp": {"local_as": 65001, "peers": [{"address": "2001:db8::1", "peer_as": 65000, "families": ["ipv6"]}]}
}
POOL = {"name": "p", "addresses": ["203.0.113.0/24"]}

DROP = object()  # marks a top-level key to delete from MINIMAL

# fmt: off
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, top-level keys replaced in MINIMAL, exact path, substring of the message)
    ("interval-zero", {"vips": [vip(), vip("198.51.100.2", checks=[tcp(interval=0)])]}, "vips[1].checks[0].interval", "must be >= 0.005 (got 0)"),
    ("interval-too-big", {"vips": [vip(checks=[tcp(interval=7200)])]}, "vips[0].checks[0].interval", "must be <= 3600"),
    ("interval-nan", {"vips": [vip(checks=[tcp(interval=float("nan"))])]}, "vips[0].checks[0].interval", "got nan"),
    ("rise-zero", {"vips": [vip(checks=[http(rise=0)])]}, "vips[0].checks[0].rise", "must be >= 1 (got 0)"),
    ("fall-negative", {"vips": [vip(checks=[{"type": "kube-apiserver", "fall": -1}])]}, "vips[0].checks[0].fall", "must be >= 1"),
    ("exec-timeout", {"vips": [vip(checks=[{"type": "exec", "command": ["x"], "timeout": 0}])]}, "vips[0].checks[0].timeout", "must be >= 0.05"),
    ("unknown-top-field", {"vip": []}, "vip", "unknown field"),
    ("unknown-vip-field", {"vips": [vip(adress="x")]}, "vips[0].adress", "unknown field"),
    ("unknown-check-field", {"vips": [vip(checks=[tcp(intervall=1)])]}, "vips[0].checks[0].intervall", "unknown field"),
    ("unknown-peer-field", {"bgp": {"local_as": 1, "peers": [{"address": "192.0.2.1", "peer_as": 2, "asn": 3}]}}, "bgp.peers[0].asn", "unknown field"),
    ("unknown-check-type", {"vips": [vip(checks=[{"type": "icmp"}])]}, "vips[0].checks[0]", "unknown check type 'icmp'"),
    ("missing-check-type", {"vips": [vip(checks=[{"port": 80}])]}, "vips[0].checks[0]", "needs a `type`"),
    ("check-not-a-mapping", {"vips": [vip(checks=["tcp"])]}, "vips[0].checks[0]", "dictionary"),
    ("missing-bgp", {"bgp": DROP}, "bgp", "is required"),
    ("bgp-not-a-mapping", {"bgp": 65001}, "bgp", "valid dictionary"),
    ("missing-port", {"vips": [vip(checks=[{"type": "tcp"}])]}, "vips[0].checks[0].port", "is required"),
    ("missing-url", {"vips": [vip(checks=[{"type": "http"}])]}, "vips[0].checks[0].url", "is required"),
    ("missing-exec-command", {"vips": [vip(checks=[{"type": "exec"}])]}, "vips[0].checks[0].command", "is required"),
    ("empty-exec-command", {"vips": [vip(checks=[{"type": "exec", "command": []}])]}, "vips[0].checks[0].command", "at least 1"),
    ("missing-vip-address", {"vips": [{"name": "a"}]}, "vips[0].address", "is required"),
    ("missing-peer-as", {"bgp": {"local_as": 1, "peers": [{"address": "192.0.2.1"}]}}, "bgp.peers[0].peer_as", "is required"),
    ("missing-local-as", {"bgp": {"peers": [{"address": "192.0.2.1", "peer_as": 1}]}}, "bgp.local_as", "is required"),
    ("no-peers", {"bgp": {"local_as": 1, "peers": []}}, "bgp.peers", "at least 1"),
    ("asn-zero", {"bgp": {"local_as": 0, "peers": [{"address": "192.0.2.1", "peer_as": 1}]}}, "bgp.local_as", "must be >= 1"),
    ("asn-too-big", {"bgp": {"local_as": 1, "peers": [{"address": "192.0.2.1", "peer_as": 2**32}]}}, "bgp.peers[0].peer_as", "must be <= 4294967295"),
    ("bad-peer-address", {"bgp": {"local_as": 1, "peers": [{"address": "frr", "peer_as": 2}]}}, "bgp.peers[0].address", "not a valid IPv4 or IPv6"),
    ("bad-peer-name", {"bgp": {"local_as": 1, "peers": [{"address": "192.0.2.1", "peer_as": 2, "name": "a b"}]}}, "bgp.peers[0].name", "1-63 characters"),
    ("peer-families-empty", {"bgp": {"local_as": 1, "peers": [{"address": "192.0.2.1", "peer_as": 2, "families": []}]}}, "bgp.peers[0].families", "at least one"),
    ("peer-families-twice", {"bgp": {"local_as": 1, "peers": [{"address": "192.0.2.1", "peer_as": 2, "families": ["ipv4", "ipv4"]}]}}, "bgp.peers[0].families", "twice"),
    ("peer-family-unknown", {"bgp": {"local_as": 1, "peers": [{"address": "192.0.2.1", "peer_as": 2, "families": ["vpnv4"]}]}}, "bgp.peers[0].families[0]", "'ipv4' or 'ipv6'"),
    ("duplicate-peer", {"bgp": {"local_as": 1, "peers": [{"address": "192.0.2.1", "peer_as": 2}, {"address": "192.0.2.1", "peer_as": 3}]}}, "bgp.peers[1].address", "duplicate of peers[0]"),
    ("router-id-needed", {"bgp": {"local_as": 1, "peers": [{"address": "2001:db8::1", "peer_as": 2, "local_address": "2001:db8::2", "families": ["ipv6"]}]}}, "bgp.router_id", "must be set"),
    ("router-id-ipv6", {"bgp": {"local_as": 1, "router_id": "2001:db8::2", "peers": [{"address": "192.0.2.1", "peer_as": 2}]}}, "bgp.router_id", "IPv4"),
    ("duplicate-vip-address", {"vips": [vip(name="a"), vip(name="b")]}, "vips[1].address", "duplicate of vips[0]"),
    ("duplicate-vip-name", {"vips": [vip(name="a"), vip("198.51.100.2", name="a")]}, "vips[1].name", "duplicate of vips[0]"),
    ("vip-name-clashes-with-label", {"vips": [vip(), vip("198.51.100.2", name="198.51.100.1")]}, "vips[1].name", "duplicate of vips[0]"),
    ("vip-ipv6-without-ipv6-peer", {"vips": [vip(), vip("2001:db8::10")]}, "vips[1].address", "is ipv6 but no peer carries ipv6"),
    ("vip-ipv4-without-ipv4-peer", {**V6, "vips": [vip()]}, "vips[0].address", "is ipv4 but no peer carries ipv4"),
    ("vip-not-an-address", {"vips": [vip("198.51.100.0/24")]}, "vips[0].address", "not a valid IPv4 or IPv6"),
    ("vip-address-integer", {"vips": [{"address": 3325256705}]}, "vips[0].address", "written as text"),
    ("vip-address-yaml-true", {"vips": [{"address": True}]}, "vips[0].address", "written as text"),
    ("peer-address-integer", {"bgp": {"local_as": 1, "peers": [{"address": 3221225985, "peer_as": 2}]}}, "bgp.peers[0].address", "written as text"),
    ("router-id-integer", {"bgp": {"local_as": 1, "router_id": 1, "peers": [{"address": "192.0.2.1", "peer_as": 2}]}}, "bgp.router_id", "written as text"),
    ("status-listen-integer", {"status": {"listen": 2130706433}}, "status.listen", "written as text"),
    ("vip-bad-name", {"vips": [vip(name="kube api")]}, "vips[0].name", "1-63 characters"),
    ("vip-loopback", {"vips": [vip("127.0.0.53")]}, "vips[0].address", "cannot be a VIP"),
    ("vip-loopback-v6", {"vips": [vip("::1")]}, "vips[0].address", "cannot be a VIP"),
    ("vip-multicast", {"vips": [vip("239.1.1.1")]}, "vips[0].address", "cannot be a VIP"),
    ("vip-multicast-v6", {"vips": [vip("ff02::1")]}, "vips[0].address", "cannot be a VIP"),
    ("vip-unspecified", {"vips": [vip("0.0.0.0")]}, "vips[0].address", "cannot be a VIP"),
    ("vip-link-local", {"vips": [vip("169.254.1.1")]}, "vips[0].address", "cannot be a VIP"),
    ("vip-bad-require", {"vips": [vip(require="most")]}, "vips[0].require", "'all' or 'any'"),
    ("vip-priority-zero", {"vips": [vip(priority=0)]}, "vips[0].priority", "must be >= 1"),
    ("vip-priority-255", {"vips": [vip(priority=255)]}, "vips[0].priority", "must be <= 254"),
    ("priority-255", {"priority": 255}, "priority", "must be <= 254 (got 255)"),
    ("priority-attribute", {"priority_attribute": "local-pref"}, "priority_attribute", "'med' or 'as-path'"),
    ("med-negative", {"vips": [vip(med=-1)]}, "vips[0].med", "must be >= 0"),
    ("prepend-too-many", {"vips": [vip(as_path_prepend=17)]}, "vips[0].as_path_prepend", "must be <= 16"),
    ("community-value-too-big", {"vips": [vip(communities=["65000:70000"])]}, "vips[0].communities", "'65000:70000' is not a community"),
    ("community-garbage", {"vips": [vip(communities=["no_export"])]}, "vips[0].communities", "use ASN:VALUE"),
    ("community-large-form", {"vips": [vip(communities=["1:2:3"])]}, "vips[0].communities", "is not a community"),
    ("large-community-two-parts", {"vips": [vip(large_communities=["65000:1"])]}, "vips[0].large_communities", "'65000:1' is not a large community"),
    ("large-community-too-big", {"vips": [vip(large_communities=["4294967296:1:1"])]}, "vips[0].large_communities", "each 0-4294967295"),
    ("pool-bad-community", {"pools": [{**POOL, "communities": ["x"]}]}, "pools[0].communities", "is not a community"),
    ("interface-space", {"vips": [vip(interface="eth 0")]}, "vips[0].interface", "not a Linux interface name"),
    ("interface-slash", {"vips": [vip(interface="eth0/1")]}, "vips[0].interface", "not a Linux interface name"),
    ("interface-too-long", {"vips": [vip(interface="a" * 16)]}, "vips[0].interface", "1-15 characters"),
    ("interface-empty", {"vips": [vip(interface="")]}, "vips[0].interface", "not a Linux interface name"),
    ("url-scheme", {"vips": [vip(checks=[http(url="ftp://127.0.0.1/")])]}, "vips[0].checks[0].url", "must start with http:// or https://"),
    ("url-no-scheme", {"vips": [vip(checks=[http(url="127.0.0.1/healthz")])]}, "vips[0].checks[0].url", "must start with http://"),
    ("url-control-char", {"vips": [vip(checks=[http(url="http://127.0.0.1/a\nb")])]}, "vips[0].checks[0].url", "control characters"),
    ("url-space", {"vips": [vip(checks=[http(url="http://127.0.0.1/a b")])]}, "vips[0].checks[0].url", "spaces"),
    ("url-no-host", {"vips": [vip(checks=[http(url="http:///healthz")])]}, "vips[0].checks[0].url", "has no host"),
    ("url-bad-port", {"vips": [vip(checks=[http(url="http://127.0.0.1:99999/")])]}, "vips[0].checks[0].url", "bad port"),
    ("url-not-a-string", {"vips": [vip(checks=[http(url=80)])]}, "vips[0].checks[0].url", "valid string"),
    ("http-method", {"vips": [vip(checks=[http(method="DELETE")])]}, "vips[0].checks[0].method", "'GET'"),
    ("http-expect-status", {"vips": [vip(checks=[http(expect_status=[200, 600])])]}, "vips[0].checks[0].expect_status[1]", "must be <= 599"),
    ("header-value-newline", {"vips": [vip(checks=[http(headers={"Host": "a\r\nX-Evil: 1"})])]}, "vips[0].checks[0].headers", "bad header 'Host'"),
    ("header-name-space", {"vips": [vip(checks=[http(headers={"X Y": "1"})])]}, "vips[0].checks[0].headers", "bad header 'X Y'"),
    ("header-value-not-string", {"vips": [vip(checks=[http(headers={"tcp": 1})])]}, "vips[0].checks[0].headers.tcp", "valid string"),
    ("client-cert-without-key", {"vips": [vip(checks=[http(client_cert="/c.pem")])]}, "vips[0].checks[0]", "client_cert and client_key go together"),
    ("client-key-without-cert", {"vips": [vip(checks=[http(client_key="/c.key")])]}, "vips[0].checks[0]", "go together"),
    ("ca-file-with-insecure", {"vips": [vip(checks=[http(ca_file="/ca.pem", insecure=True)])]}, "vips[0].checks[0]", "either ca_file or insecure"),
    ("kube-path-without-slash", {"vips": [vip(checks=[{"type": "kube-apiserver", "path": "readyz"}])]}, "vips[0].checks[0].path", "must start with '/'"),
    ("kube-path-space", {"vips": [vip(checks=[{"type": "kube-apiserver", "path": "/ready z"}])]}, "vips[0].checks[0].path", "no spaces"),
    ("kube-host-slash", {"vips": [vip(checks=[{"type": "kube-apiserver", "host": "a/b"}])]}, "vips[0].checks[0].host", "IP address or a host name"),
    ("tcp-port-zero", {"vips": [vip(checks=[tcp(port=0)])]}, "vips[0].checks[0].port", "must be >= 1 (got 0)"),
    ("pool-overlap-across", {"pools": [POOL, {"name": "q", "addresses": ["203.0.113.10-203.0.113.20"]}]}, "pools[1].addresses[0]", "overlaps pools[0].addresses[0]"),
    ("pool-overlap-within", {"pools": [{"name": "p", "addresses": ["203.0.113.0/25", "203.0.113.100"]}]}, "pools[0].addresses[1]", "overlaps pools[0].addresses[0]"),
    ("pool-overlap-edge", {"pools": [{"name": "p", "addresses": ["203.0.113.0/25", "203.0.113.127-203.0.113.130"]}]}, "pools[0].addresses[1]", "overlaps"),
    ("pool-range-reversed", {"pools": [{"name": "p", "addresses": ["203.0.113.0/28", "203.0.113.20-203.0.113.10"]}]}, "pools[0].addresses[1]", "ends before it starts"),
    ("pool-range-mixed-family", {"pools": [{"name": "p", "addresses": ["203.0.113.1-2001:db8::1"]}]}, "pools[0].addresses[0]", "mixes IPv4 and IPv6"),
    ("pool-range-garbage", {"pools": [{"name": "p", "addresses": ["203.0.113.1-x"]}]}, "pools[0].addresses[0]", "use FIRST-LAST"),
    ("pool-cidr-host-bits", {"pools": [{"name": "p", "addresses": ["203.0.113.1/24"]}]}, "pools[0].addresses[0]", "has host bits set"),
    ("pool-cidr-garbage", {"pools": [{"name": "p", "addresses": ["public"]}]}, "pools[0].addresses[0]", "is not a CIDR or range"),
    ("pool-empty", {"pools": [{"name": "p", "addresses": []}]}, "pools[0].addresses", "at least 1"),
    ("pool-bad-name", {"pools": [{"name": "my pool", "addresses": ["203.0.113.0/24"]}]}, "pools[0].name", "1-63 characters"),
    ("pool-duplicate-name", {"pools": [POOL, {"name": "p", "addresses": ["198.51.100.0/24"]}]}, "pools[1].name", "duplicate of pools[0]"),
    ("pool-ipv6-without-ipv6-peer", {"pools": [{"name": "p", "addresses": ["203.0.113.0/24", "2001:db8::/64"]}]}, "pools[0].addresses[1]", "is ipv6 but no peer carries ipv6"),
    ("vip-inside-pool", {"pools": [POOL], "vips": [vip(), vip("203.0.113.9")]}, "vips[1].address", "lies in pool 'p'"),
    ("pool-selector-key", {"pools": [{**POOL, "service_selector": {"-app": "web"}}]}, "pools[0].service_selector", "'-app' is not a Kubernetes label key"),
    ("pool-selector-value", {"pools": [{**POOL, "service_selector": {"app": "a b"}}]}, "pools[0].service_selector", "'a b' (for 'app') is not a Kubernetes label value"),
    ("pool-selector-prefix", {"pools": [{**POOL, "service_selector": {"Example.com/app": "web"}}]}, "pools[0].service_selector", "not a Kubernetes label key"),
    ("node-selector-value", {"kubernetes": {"node_selector": {"role": "edge!"}}}, "kubernetes.node_selector", "not a Kubernetes label value"),
    ("node-selector-key-exec", {"kubernetes": {"node_selector": {"exec": 1}}}, "kubernetes.node_selector.exec", "valid string"),
    ("watch-timeout", {"kubernetes": {"watch_timeout": 0}}, "kubernetes.watch_timeout", "must be >= 10"),
    ("status-port", {"status": {"port": 70000}}, "status.port", "must be <= 65535"),
    ("status-listen", {"status": {"listen": "localhost"}}, "status.listen", "not a valid IPv4 or IPv6"),
    ("exabgp-log-level", {"exabgp": {"log_level": "TRACE"}}, "exabgp.log_level", "'DEBUG'"),
    ("exabgp-reactor-speed", {"exabgp": {"reactor_speed": 10}}, "exabgp.reactor_speed", "must be <= 5"),
    ("node-name-uppercase", {"node_name": "Node-1"}, "node_name", "DNS-1123"),
    ("node-name-underscore", {"node_name": "node_1"}, "node_name", "DNS-1123"),
    ("node-name-trailing-dash", {"node_name": "node-"}, "node_name", "DNS-1123"),
    ("shutdown-delay-negative", {"shutdown_delay": -1}, "shutdown_delay", "must be >= 0"),
    ("release-delay-negative", {"release_delay": -0.1}, "release_delay", "must be >= 0"),
    ("resync-zero", {"resync_interval": 0}, "resync_interval", "must be >= 1"),
    ("kube-client-cert-without-key", {"vips": [vip(checks=[{"type": "kube-apiserver", "client_cert": "/c.pem"}])]}, "vips[0].checks[0]", "client_cert and client_key go together"),
    ("exabgp-executable-empty", {"exabgp": {"executable": ""}}, "exabgp.executable", "at least 1 character"),
    ("vips-not-a-list", {"vips": {"address": "198.51.100.1"}}, "vips", "valid tuple"),
    ("on-failure-unknown", {"vips": [vip(checks=[tcp(on_failure="ignore")])]}, "vips[0].checks[0].on_failure", "'withdraw' or 'lower-preference'"),
    ("on-failure-yaml-true", {"vips": [vip(checks=[tcp(on_failure=True)])]}, "vips[0].checks[0].on_failure", "'withdraw' or 'lower-preference'"),
    ("med-penalty-on-a-withdraw-check", {"vips": [vip(checks=[tcp(med_penalty=100)])]}, "vips[0].checks[0].med_penalty", "applies only with on_failure: lower-preference"),
    ("prepend-penalty-on-a-withdraw-check", {"vips": [vip(checks=[http(on_failure="withdraw", prepend_penalty=1)])]}, "vips[0].checks[0].prepend_penalty", "applies only with on_failure: lower-preference"),
    ("penalties-both-zero", {"vips": [vip(checks=[tcp(on_failure="lower-preference", med_penalty=0, prepend_penalty=0)])]}, "vips[0].checks[0]", "needs med_penalty or prepend_penalty above 0"),
    ("med-penalty-zero-alone", {"vips": [vip(checks=[tcp(on_failure="lower-preference", med_penalty=0)])]}, "vips[0].checks[0]", "with both 0 a failing check changes nothing"),
    ("med-penalty-negative", {"vips": [vip(checks=[tcp(on_failure="lower-preference", med_penalty=-1)])]}, "vips[0].checks[0].med_penalty", "must be >= 0"),
    ("med-penalty-too-big", {"vips": [vip(checks=[tcp(on_failure="lower-preference", med_penalty=2**32)])]}, "vips[0].checks[0].med_penalty", "must be <= 4294967295"),
    ("prepend-penalty-too-many", {"vips": [vip(checks=[tcp(on_failure="lower-preference", prepend_penalty=17)])]}, "vips[0].checks[0].prepend_penalty", "must be <= 16"),
    ("med-penalty-overflows-the-med", {"vips": [vip(med=4294967000, checks=[tcp(on_failure="lower-preference")])]}, "vips[0].checks", "the MED would be 4294968000, over 4294967295"),
    ("med-penalties-add-past-the-max", {"vips": [vip(checks=[tcp(on_failure="lower-preference", med_penalty=2**31), http(on_failure="lower-preference", med_penalty=2**31)])]}, "vips[0].checks", "would be 4294967296"),
    ("prepend-penalty-needs-one-local-as", {"bgp": {"local_as": 65001, "peers": [{"address": "192.0.2.1", "peer_as": 65000, "local_as": 65002}]}, "vips": [vip(checks=[tcp(on_failure="lower-preference", prepend_penalty=1)])]}, "bgp.peers[0].local_as", "differs from bgp.local_as"),
    ("kube-exclude-query-text", {"vips": [vip(checks=[{"type": "kube-apiserver", "exclude": ["etcd&verbose"]}])]}, "vips[0].checks[0].exclude", "'etcd&verbose' is not a kube-apiserver check name"),
    ("kube-exclude-space", {"vips": [vip(checks=[{"type": "kube-apiserver", "exclude": ["etcd readiness"]}])]}, "vips[0].checks[0].exclude", "is not a kube-apiserver check name"),
    ("kube-exclude-not-a-list", {"vips": [vip(checks=[{"type": "kube-apiserver", "exclude": "etcd"}])]}, "vips[0].checks[0].exclude", "valid tuple"),
]
# fmt: on


@pytest.mark.parametrize(("top", "path", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_names_path_and_problem(top: dict[str, Any], path: str, message: str) -> None:
    data = with_(MINIMAL, **{k: v for k, v in top.items() if v is not DROP})
    for k in [k for k, v in top.items() if v is DROP]:
        del data[k]
    problems = problems_of(data)
    assert len(problems) == 1, problems
    assert problems[0][0] == path
    assert message in problems[0][1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a mapping, not list"),
        ("bgp: {}", "not str"),
        (None, "not NoneType"),
        ({1: 2, **MINIMAL}, "key 1"),
    ],
    ids=["list", "string", "empty-file", "non-string-key"],
)
def test_non_mapping_document(data: Any, message: str) -> None:
    problems = problems_of(data)
    assert len(problems) == 1
    assert problems[0][0] == ""
    assert message in problems[0][1]


def test_config_error_message_is_path_colon_message() -> None:
    with pytest.raises(ConfigError) as exc:
        load(with_(MINIMAL, priority=0, node_name="X"))
    lines = str(exc.value).splitlines()
    assert lines == [f"{path}: {msg}" for path, msg in exc.value.problems]
    assert "priority: must be >= 1 (got 0)" in lines


def test_several_field_errors_are_all_reported() -> None:
    data = with_(
        MINIMAL,
        node_name="Bad_Name",
        priority=0,
        vips=[vip(checks=[tcp(port=0), {"type": "icmp"}]), vip("198.51.100.2", interface="eth 0", bogus=1)],
        status={"port": 0},
    )
    assert sorted(p for p, _ in problems_of(data)) == sorted(
        [
            "node_name",
            "priority",
            "vips[0].checks[0].port",
            "vips[0].checks[1]",
            "vips[1].interface",
            "vips[1].bogus",
            "status.port",
        ]
    )


def test_several_cross_field_errors_are_all_reported() -> None:
    data = with_(
        MINIMAL,
        vips=[vip(), vip(), vip("2001:db8::1"), vip("203.0.113.1")],
        pools=[
            {"name": "p", "addresses": ["203.0.113.0/24", "203.0.113.0/25"]},
            {"name": "p", "addresses": ["2001:db8:1::/64"]},
        ],
    )
    assert problems_of(data) == [
        ("vips[1].address", "duplicate of vips[0]"),
        ("vips[2].address", "is ipv6 but no peer carries ipv6 (bgp.peers[*].families)"),
        ("pools[0].addresses[1]", "overlaps pools[0].addresses[0]"),
        ("pools[1].name", "duplicate of pools[0]"),
        ("pools[1].addresses[0]", "is ipv6 but no peer carries ipv6 (bgp.peers[*].families)"),
        ("vips[3].address", "lies in pool 'p'; VIPs and pools must not overlap"),
    ]


def test_several_bad_pool_blocks_are_all_reported() -> None:
    data = with_(MINIMAL, pools=[{"name": "p", "addresses": ["x", "203.0.113.0/24", "203.0.113.9/24"]}])
    assert [p for p, _ in problems_of(data)] == ["pools[0].addresses[0]", "pools[0].addresses[2]"]


def test_duplicate_peers_are_all_reported() -> None:
    peer = {"address": "192.0.2.1", "peer_as": 65000}
    data = with_(MINIMAL, bgp={"local_as": 1, "peers": [peer, peer, peer]})
    assert problems_of(data) == [
        ("bgp.peers[1].address", "duplicate of peers[0]"),
        ("bgp.peers[2].address", "duplicate of peers[0]"),
    ]


def test_ipv6_vip_and_pool_load_with_an_ipv6_peer() -> None:
    data = with_(
        MINIMAL,
        bgp={
            "local_as": 1,
            "peers": [
                {"address": "192.0.2.1", "peer_as": 2},
                {"address": "2001:db8::1", "peer_as": 2, "families": ["ipv6"]},
            ],
        },
        vips=[vip("2001:db8::10")],
        pools=[{"name": "p", "addresses": ["2001:db8:1::/64"]}],
    )
    c = load(data)
    assert cfg.host_prefix(c.vips[0]).prefixlen == 128


def test_surrounding_whitespace_is_stripped_not_kept() -> None:
    """YAML block scalars end in a newline; it must not reach an ExaBGP line or a header."""
    data = with_(
        MINIMAL,
        vips=[vip(interface="eth0\n", communities=["65000:1\n"], checks=[http(headers={"Host": "a\n"})])],
    )
    v = load(data).vips[0]
    assert (v.interface, v.communities) == ("eth0", ("65000:1",))
    check = v.checks[0]
    assert isinstance(check, cfg.HttpCheck)
    assert check.headers == {"Host": "a"}


# --------------------------------------------------------------------------- properties

# JSON-like values, the things a YAML document can hold.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**33), 2**33) | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


def _mappings(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of the mappings in FULL that are pydantic models (not free-form dicts)."""
    free_form = {"headers", "service_selector", "node_selector"}
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        if not prefix or prefix[-1] not in free_form:
            out.append(prefix)
        for k, v in node.items():
            out += _mappings(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _mappings(v, (*prefix, i))
    return out


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


FULL_PATHS = _paths(FULL)
FULL_MAPPINGS = _mappings(FULL)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(FULL_PATHS), json_values), min_size=1, max_size=3))
def test_property_load_never_crashes(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    """Whatever a field holds, load() returns a Config or raises ConfigError, never anything else;
    and every loaded kube-apiserver check converts to an HTTP check."""
    doc = copy.deepcopy(FULL)
    for path, value in edits:
        try:
            _set(doc, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a parent of this path
    try:
        c = load(doc)
    except ConfigError as e:
        assert e.problems
        assert all(isinstance(p, str) and m for p, m in e.problems)
        return
    for v in c.vips:
        for check in v.checks:
            if isinstance(check, cfg.KubeApiserverCheck):
                check.as_http()


@settings(max_examples=100, deadline=None)
@given(
    where=st.sampled_from(FULL_MAPPINGS),
    key=st.sampled_from(sorted(cfg._DISCRIMINATORS)) | st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True),
)
def test_property_unknown_field_is_reported_at_its_path(where: tuple[Any, ...], key: str) -> None:
    doc = copy.deepcopy(FULL)
    target: Any = doc
    for part in where:
        target = target[part]
    if key in target:
        return
    target[key] = 1
    expected = f"{_dotted(where)}.{key}" if where else key
    assert problems_of(doc) == [(expected, "unknown field (check the spelling; see docs/configuration.md)")]


@settings(max_examples=150, deadline=None)
@given(host=st.text(max_size=20), path=st.text(max_size=20))
def test_property_kube_apiserver_check_that_loads_converts_to_http(host: str, path: str) -> None:
    doc = with_(MINIMAL, vips=[vip(checks=[{"type": "kube-apiserver", "host": host, "path": "/" + path}])])
    try:
        check = load(doc).vips[0].checks[0]
    except ConfigError as e:
        assert {p for p, _ in e.problems} <= {"vips[0].checks[0].host", "vips[0].checks[0].path"}
        return
    assert isinstance(check, cfg.KubeApiserverCheck)
    h = check.as_http()
    assert h.url.startswith("https://")


def _peer_doc(**peer: Any) -> dict[str, Any]:
    return {"bgp": {"local_as": 65100, "peers": [{"address": "10.0.1.1", "peer_as": 65000, **peer}]}}


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        (_peer_doc(hold_time=2), "bgp.peers[0].hold_time", "at least 3"),
        (_peer_doc(families=["ipv4", "ipv6"]), "bgp.peers[0].families", "IPv6 address"),
        (
            {**_peer_doc(local_as=65101), "vips": [{"address": "198.51.100.1", "as_path_prepend": 1}]},
            "bgp.peers[0].local_as",
            "prepend",
        ),
    ],
    ids=["hold-time-2", "ipv6-family-on-ipv4-session", "prepend-with-per-peer-local-as"],
)
def test_peer_constraints_exabgp_needs(doc: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(doc)
    assert any(p == path and words in m for p, m in e.value.problems), e.value.problems


# --------------------------------------------------------------------------- numbers and timers

# Where an instance of each model sits in FULL; test_every_model_has_a_place keeps it complete.
MODEL_PLACES: dict[type[BaseModel], tuple[Any, ...]] = {
    cfg.Config: (),
    cfg.BgpConfig: ("bgp",),
    cfg.PeerConfig: ("bgp", "peers", 0),
    cfg.BfdConfig: ("bgp", "peers", 0, "bfd"),
    cfg.VipConfig: ("vips", 0),
    cfg.KubeApiserverCheck: ("vips", 0, "checks", 0),
    cfg.HttpCheck: ("vips", 0, "checks", 1),
    cfg.TcpCheck: ("vips", 0, "checks", 2),
    cfg.ExecCheck: ("vips", 0, "checks", 3),
    cfg.PoolConfig: ("pools", 0),
    cfg.KubernetesConfig: ("kubernetes",),
    cfg.StatusConfig: ("status",),
    cfg.ExabgpConfig: ("exabgp",),
}


def _types_in(tp: Any) -> list[Any]:
    """The plain types a field annotation is made of (through Annotated, unions, tuples)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return []
    if origin is not None:
        return [t for a in typing.get_args(tp) if a is not Ellipsis for t in _types_in(a)]
    return [tp]


def _numeric_fields(model: type[BaseModel]) -> list[tuple[str, bool]]:
    """(field, holds a list) for every field of `model` that takes integers or floats."""
    out = []
    for name, info in model.model_fields.items():
        kinds = _types_in(info.annotation)
        if int in kinds or float in kinds:
            out.append((name, typing.get_origin(info.annotation) is tuple))
    return out


def _models_reachable(model: type[BaseModel]) -> set[type[BaseModel]]:
    seen = {model}
    for info in model.model_fields.values():
        for t in _types_in(info.annotation):
            if isinstance(t, type) and issubclass(t, BaseModel) and t not in seen:
                seen |= _models_reachable(t)
    return seen


def test_every_model_has_a_place() -> None:
    assert _models_reachable(cfg.Config) == set(MODEL_PLACES)


NUMERIC_FIELDS = [
    (place, name, is_list)
    for model, place in MODEL_PLACES.items()
    for name, is_list in _numeric_fields(model)
]


@pytest.mark.parametrize(
    ("place", "name", "is_list"),
    NUMERIC_FIELDS,
    ids=[_dotted((*p, n)) for p, n, _ in NUMERIC_FIELDS],
)
@pytest.mark.parametrize("boolean", [True, False], ids=["true", "false"])
def test_booleans_are_refused_by_every_numeric_field(
    place: tuple[Any, ...], name: str, is_list: bool, boolean: bool
) -> None:
    """`peer_as: yes` was 1 and `port: no` was 0: YAML's booleans are not numbers."""
    doc = copy.deepcopy(FULL)
    _set(doc, (*place, name), [200, boolean] if is_list else boolean)
    path = _dotted((*place, name)) + ("[1]" if is_list else "")
    problems = problems_of(doc)
    assert len(problems) == 1, problems
    assert problems[0][0] == path
    assert problems[0][1].startswith("is a boolean, not a number")


def test_numeric_fields_are_found() -> None:
    """The walk above sees the fields the issue named, so the parametrisation is not empty."""
    found = {(model.__name__, n) for model in MODEL_PLACES for n, _ in _numeric_fields(model)}
    assert {
        ("PeerConfig", "peer_as"),
        ("BgpConfig", "local_as"),
        ("PeerConfig", "port"),
        ("TcpCheck", "rise"),
        ("VipConfig", "med"),
        ("Config", "shutdown_delay"),
        ("HttpCheck", "expect_status"),
        ("Config", "priority"),
    } <= found


# Timers whose zero means "none", with the reason; every other timer must have a minimum > 0.
TIMERS_ALLOWED_ZERO = {
    ("Config", "shutdown_delay"): "0 withdraws and removes the addresses at once, a valid choice",
    ("PeerConfig", "hold_time"): "0 disables keepalives (RFC 4271); 1 and 2 are refused",
    ("Config", "release_delay"): "0 removes a withdrawn VIP's address at once, a valid choice",
}


def _lower_bound(model: type[BaseModel], name: str) -> float | None:
    bounds = [
        getattr(m, attr)
        for m in model.model_fields[name].metadata
        for attr in ("ge", "gt")
        if getattr(m, attr, None) is not None
    ]
    return max(bounds) if bounds else None


TIMERS = [
    (model, place, name)
    for model, place in MODEL_PLACES.items()
    for name, _ in _numeric_fields(model)
    if any(w in name for w in ("interval", "timeout", "delay", "time", "speed"))
]


@pytest.mark.parametrize(("model", "place", "name"), TIMERS, ids=[_dotted((*p, n)) for _, p, n in TIMERS])
def test_every_timer_has_a_sane_minimum(model: type[BaseModel], place: tuple[Any, ...], name: str) -> None:
    """`interval: 1e-9` spun a core, `resync_interval: 1e-9` too: a timer is never near zero,
    its minimum is accepted, just under it is refused, and the reason is documented."""
    low = _lower_bound(model, name)
    assert low is not None
    if (model.__name__, name) in TIMERS_ALLOWED_ZERO:
        assert low == 0
        return
    assert low > 0
    description = " ".join((model.model_fields[name].description or "").split())
    assert f"At least {low:g}" in description, description
    doc = copy.deepcopy(FULL)
    _set(doc, (*place, name), low)
    load(doc)
    for bad in (low * 0.99, 1e-9, 0):
        _set(doc, (*place, name), bad)
        assert [p for p, _ in problems_of(doc)] == [_dotted((*place, name))]


def test_timers_are_found() -> None:
    names = {(m.__name__, n) for m, _, n in TIMERS}
    assert {
        ("TcpCheck", "interval"),
        ("TcpCheck", "fast_interval"),
        ("TcpCheck", "timeout"),
        ("ExecCheck", "interval"),
        ("Config", "resync_interval"),
        ("Config", "shutdown_delay"),
        ("KubernetesConfig", "watch_timeout"),
        ("ExabgpConfig", "reactor_speed"),
        ("PeerConfig", "hold_time"),
    } <= names


# --------------------------------------------------------------------------- unbounded input

MEGA = "x" * 1_000_000


@pytest.mark.parametrize(
    ("top", "path"),
    [
        ({"vips": [vip(communities=["1" + MEGA])]}, "vips[0].communities"),
        ({"vips": [vip(large_communities=[MEGA])]}, "vips[0].large_communities"),
        ({"vips": [vip(checks=[http(headers={"X:" + MEGA: "1"})])]}, "vips[0].checks[0].headers"),
        ({"vips": [vip(checks=[http(url="http://a:" + MEGA + "/")])]}, "vips[0].checks[0].url"),
        ({"pools": [{"name": "p", "addresses": [MEGA]}]}, "pools[0].addresses[0]"),
        ({"pools": [{"name": "p", "addresses": ["203.0.113.1-" + MEGA]}]}, "pools[0].addresses[0]"),
        ({"kubernetes": {"node_selector": {"a": MEGA}}}, "kubernetes.node_selector"),
        ({"kubernetes": {"node_selector": {MEGA: "a"}}}, "kubernetes.node_selector"),
        ({"priority": 10**5000}, "priority"),
        ({MEGA: 1}, MEGA[:60] + "… (1,000,000 characters)"),
    ],
    ids=[
        "community",
        "large-community",
        "header-name",
        "url-port",
        "pool-block",
        "pool-range",
        "label-value",
        "label-key",
        "huge-integer",
        "unknown-key",
    ],
)
def test_huge_input_is_not_echoed(top: dict[str, Any], path: str) -> None:
    """A 1 MB community made a 1 MB error line in the log and in /status."""
    (problem,) = problems_of(with_(MINIMAL, **top))
    assert problem[0] == path
    assert len(problem[0]) + len(problem[1]) < 400, problem
    assert "characters" in problem[1] or "bits" in problem[1] or "unknown field" in problem[1]


def test_config_error_lists_at_most_max_problems() -> None:
    error = ConfigError([(f"vips[{i}].address", "bad") for i in range(cfg.MAX_PROBLEMS + 7)])
    assert len(error.problems) == cfg.MAX_PROBLEMS + 1
    assert error.problems[-1] == ("", "... and 7 more problems")
    assert len(ConfigError([("p" * 10_000, "m" * 10_000)]).args[0]) < 1000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("short", "'short'"),
        ("a" * 100, "'" + "a" * 59 + "… (102 characters)"),
        (10**100, "an integer of 333 bits"),
        (12345, "12345"),
        (True, "True"),
    ],
    ids=["short", "long", "huge-int", "int", "bool"],
)
def test_quote(value: object, expected: str) -> None:
    assert quote(value) == expected


def test_clip_keeps_short_text() -> None:
    assert clip("abc", 3) == "abc"
    assert clip("abcd", 3) == "abc… (4 characters)"


def _upper_bound(model: type[BaseModel], name: str) -> float | None:
    info = model.model_fields[name]
    metadata = list(info.metadata)
    for t in typing.get_args(info.annotation):  # tuple[Annotated[int, Field(le=...)], ...]
        metadata += [m for a in typing.get_args(t)[1:] for m in getattr(a, "metadata", [a])]
    bounds = [getattr(m, a) for m in metadata for a in ("le", "lt") if getattr(m, a, None) is not None]
    return min(bounds) if bounds else None


@pytest.mark.parametrize(
    ("model", "name"),
    [(m, n) for m in MODEL_PLACES for n, _ in _numeric_fields(m)],
    ids=[f"{m.__name__}.{n}" for m in MODEL_PLACES for n, _ in _numeric_fields(m)],
)
def test_every_number_has_an_upper_bound(model: type[BaseModel], name: str) -> None:
    """No number reaches ExaBGP, a timer or the kernel unbounded (overflow, or a timeout of
    years that is clearly a mistake)."""
    assert _upper_bound(model, name) is not None


def test_the_etcd_tolerant_config_of_the_control_plane_guide_loads() -> None:
    """docs/control-plane-vip.md's ready-to-paste checks load and ask what the guide says."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "control-plane-vip.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "lower-preference" in b]
    c = load(with_(MINIMAL, **yaml.safe_load(block)))
    hard, soft = c.vips[0].checks
    assert isinstance(hard, cfg.KubeApiserverCheck) and isinstance(soft, cfg.KubeApiserverCheck)
    assert hard.as_http().url == "https://127.0.0.1:6443/readyz?exclude=etcd&exclude=etcd-readiness"
    assert (hard.on_failure, soft.on_failure, soft.as_http().url) == (
        "withdraw",
        "lower-preference",
        "https://127.0.0.1:6443/readyz",
    )
    assert cfg.failure_penalty(c, soft) == cfg.Penalty(med=1000)
