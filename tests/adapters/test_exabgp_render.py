"""ExaBGP configuration and environment: golden text, and ExaBGP 5 itself parses what we render."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from bgpvip.adapters.exabgp import exabgp_environment, render_config
from bgpvip.core.config import Config, ExabgpConfig, load

GOLDEN_COMMAND = ["/usr/local/bin/bgpvip", "speaker", "--config", "/etc/bgpvip/config.yaml"]

FRR_CONFIG: dict[str, Any] = {
    "bgp": {
        "local_as": 65100,
        "router_id": "10.0.1.2",
        "peers": [
            {"address": "10.0.1.1", "peer_as": 65000, "name": "r1", "graceful_restart": 120},
            {"address": "fd00:1::1", "peer_as": 65000, "families": ["ipv6", "ipv4"], "hold_time": 3},
            {
                "address": "10.0.9.1",
                "peer_as": 4200000000,
                "local_as": 4200000001,
                "local_address": "10.0.0.2",
                "multihop_ttl": 3,
                "port": 1179,
            },
            {"address": "10.0.8.1", "peer_as": 65000, "passive": True},
        ],
    }
}
FRR_LOCAL = {"10.0.1.1": "10.0.1.2", "fd00:1::1": "fd00:1::2", "10.0.8.1": "10.0.8.2"}

RTX_CONFIG: dict[str, Any] = {
    "bgp": {
        "local_as": 65101,
        "peers": [
            {
                "address": "192.0.2.1",
                "peer_as": 65000,
                "name": "rtx1220",
                "hold_time": 9,
                "password_file": "/etc/bgpvip/rtx.password",
            }
        ],
    }
}
RTX_LOCAL = {"192.0.2.1": "192.0.2.11"}
RTX_PASSWORDS = {"192.0.2.1": "CHANGE-ME"}

PARSE_SCRIPT = """
import json, sys
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.configuration.configuration import Configuration

env = getenv()
env.log.enable = False
log.init(env)
configuration = Configuration([sys.argv[1]])
if not configuration.reload():
    sys.exit(str(configuration.error))
neighbors = []
for n in configuration.neighbors.values():
    neighbors.append({
        **{k: n[k] if n[k] is None or type(n[k]) in (bool, int) else str(n[k]) for k in (
            "peer-address", "local-address", "router-id", "local-as", "peer-as", "hold-time", "md5-password",
            "passive", "listen", "connect", "outgoing-ttl", "adj-rib-out")},
        "hold-time": int(n["hold-time"]),
        "local-as": int(n["local-as"]),
        "peer-as": int(n["peer-as"]),
        "families": sorted(f"{afi} {safi}" for afi, safi in n.families()),
        "graceful-restart": n["capability"]["graceful-restart"],
        "route-refresh": n["capability"]["route-refresh"],
        "processes": n.api["processes"],
        "neighbor-changes": n.api["neighbor-changes"],
        **{k: n.api[k] for k in ("negotiated", "send-notification", "receive-notification", "receive-update",
                                 "send-update", "receive-keepalive")},
    })
process = configuration.processes["bgpvip"]
print(json.dumps({"neighbors": neighbors, "run": process["run"], "encoder": process["encoder"]}))
"""

needs_exabgp = pytest.mark.skipif(shutil.which("exabgp") is None, reason="exabgp is not installed")


def frr() -> Config:
    return load(FRR_CONFIG)


def rtx() -> Config:
    return load(RTX_CONFIG)


def with_peer(config: dict[str, Any], **changes: Any) -> Config:
    data = json.loads(json.dumps(config))
    data["bgp"]["peers"][0].update(changes)
    return load(data)


def parsed_by_exabgp(text: str, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "exabgp.conf"
    path.write_text(text)
    validate = subprocess.run(
        ["exabgp", "validate", "--neighbor", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    result = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


# --------------------------------------------------------------------------- golden


def test_golden_frr(golden: Callable[[str, str], None]) -> None:
    golden(
        "exabgp_frr.conf.txt", render_config(frr(), process_command=GOLDEN_COMMAND, local_addresses=FRR_LOCAL)
    )


def test_golden_rtx(golden: Callable[[str, str], None]) -> None:
    text = render_config(
        rtx(), process_command=GOLDEN_COMMAND, local_addresses=RTX_LOCAL, passwords=RTX_PASSWORDS
    )
    golden("exabgp_rtx.conf.txt", text)


# --------------------------------------------------------------------------- ExaBGP reads it as meant


@needs_exabgp
def test_exabgp_parses_the_frr_config(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bgpvip", "speaker", "--config", "/etc/bgp vip/a,b;c.yaml"]
    parsed = parsed_by_exabgp(
        render_config(frr(), process_command=command, local_addresses=FRR_LOCAL, passwords={}), tmp_path
    )
    assert parsed["run"] == command
    assert parsed["encoder"] == "json"
    common = {
        "router-id": "10.0.1.2",
        "md5-password": None,
        "adj-rib-out": True,
        "route-refresh": True,
        "processes": ["bgpvip"],
        "neighbor-changes": ["bgpvip"],
        "negotiated": ["bgpvip"],
        "send-notification": ["bgpvip"],
        "receive-notification": ["bgpvip"],
        # no UPDATE or KEEPALIVE is copied to the helper
        "receive-update": [],
        "send-update": [],
        "receive-keepalive": [],
    }
    assert parsed["neighbors"] == [
        {
            **common,
            "peer-address": "10.0.1.1",
            "local-address": "10.0.1.2",
            "local-as": 65100,
            "peer-as": 65000,
            "hold-time": 9,
            "passive": False,
            "listen": 179,
            "connect": 0,
            "outgoing-ttl": None,
            "families": ["ipv4 unicast"],
            "graceful-restart": 120,
        },
        {
            **common,
            "peer-address": "fd00:1::1",
            "local-address": "fd00:1::2",
            "local-as": 65100,
            "peer-as": 65000,
            "hold-time": 3,
            "passive": False,
            "listen": 179,
            "connect": 0,
            "outgoing-ttl": None,
            "families": ["ipv4 unicast", "ipv6 unicast"],
            "graceful-restart": False,
        },
        {
            **common,
            "peer-address": "10.0.9.1",
            "local-address": "10.0.0.2",
            "local-as": 4200000001,
            "peer-as": 4200000000,
            "hold-time": 9,
            "passive": False,
            "listen": 179,
            "connect": 1179,
            "outgoing-ttl": 3,
            "families": ["ipv4 unicast"],
            "graceful-restart": False,
        },
        {
            **common,
            "peer-address": "10.0.8.1",
            "local-address": "10.0.8.2",
            "local-as": 65100,
            "peer-as": 65000,
            "hold-time": 9,
            "passive": True,
            "listen": 179,
            "connect": 0,
            "outgoing-ttl": None,
            "families": ["ipv4 unicast"],
            "graceful-restart": False,
        },
    ]


@needs_exabgp
@pytest.mark.parametrize("password", ["CHANGE-ME", "with space #;{}[],=", "x" * 80])
def test_exabgp_parses_the_rtx_config(tmp_path: Path, password: str) -> None:
    text = render_config(
        rtx(), process_command=[sys.executable], local_addresses=RTX_LOCAL, passwords={"192.0.2.1": password}
    )
    (neighbor,) = parsed_by_exabgp(text, tmp_path)["neighbors"]
    assert neighbor["md5-password"] == password
    assert neighbor["router-id"] == "192.0.2.11"
    assert (neighbor["local-as"], neighbor["peer-as"], neighbor["hold-time"]) == (65101, 65000, 9)
    assert neighbor["families"] == ["ipv4 unicast"]
    assert neighbor["graceful-restart"] is False


@needs_exabgp
def test_listen_and_route_refresh_can_be_turned_off(tmp_path: Path) -> None:
    """For a host where another daemon holds port 179, and a router that refuses route refresh."""
    config = with_peer(RTX_CONFIG, listen=False, route_refresh=False)
    text = render_config(
        config, process_command=[sys.executable], local_addresses=RTX_LOCAL, passwords=RTX_PASSWORDS
    )
    assert "listen" not in text
    assert "route-refresh disable;" in text
    (neighbor,) = parsed_by_exabgp(text, tmp_path)["neighbors"]
    assert (neighbor["listen"], neighbor["passive"], neighbor["route-refresh"]) == (0, False, False)


def test_listening_names_the_peers_that_listen() -> None:
    """`bgpvip run` passes the peers whose port it could bind (`listen: auto`)."""
    everyone = render_config(frr(), process_command=GOLDEN_COMMAND, local_addresses=FRR_LOCAL)
    assert everyone.count("listen 179;") == 4  # three peers, and the passive one's own
    nobody = render_config(frr(), process_command=GOLDEN_COMMAND, local_addresses=FRR_LOCAL, listening=[])
    assert nobody.count("listen 179;") == 1
    one = render_config(
        frr(), process_command=GOLDEN_COMMAND, local_addresses=FRR_LOCAL, listening=["fd00:1::1"]
    )
    assert one.count("listen 179;") == 2
    assert "    hold-time 3;\n    listen 179;" in one


# --------------------------------------------------------------------------- refused input


@pytest.mark.parametrize(
    "password",
    [
        pytest.param('a"b', id="double-quote"),
        pytest.param("a'b", id="single-quote"),
        pytest.param("a\\nb", id="backslash"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("p\u00e4ss", id="non-ascii"),
        pytest.param("", id="empty"),
        pytest.param("x" * 81, id="too-long"),
    ],
)
def test_bad_passwords(password: str) -> None:
    with pytest.raises(ValueError, match="password"):
        render_config(
            rtx(),
            process_command=GOLDEN_COMMAND,
            local_addresses=RTX_LOCAL,
            passwords={"192.0.2.1": password},
        )


@pytest.mark.parametrize(
    ("config", "kwargs", "match"),
    [
        pytest.param(rtx, {"passwords": {}}, "password_file", id="password-not-read"),
        pytest.param(rtx, {"local_addresses": {}}, "no local address", id="no-local-address"),
        pytest.param(rtx, {"local_addresses": {"192.0.2.1": "fd00::2"}}, "family", id="local-address-family"),
        pytest.param(rtx, {"process_command": []}, "empty", id="no-command"),
        pytest.param(rtx, {"process_command": ["bgpvip"]}, "absolute", id="relative-command"),
        pytest.param(rtx, {"process_command": ["/bin/x", 'a"b']}, "quote", id="quote-in-argument"),
        pytest.param(rtx, {"process_command": ["/bin/x", "a\nb"]}, "control", id="newline-in-argument"),
        pytest.param(rtx, {"process_command": ["/bin/x", ""]}, "empty", id="empty-argument"),
        # IPv6 over an IPv4 session and hold times of 1-2 s are refused earlier, by
        # config.load (tests/unit/test_config.py::test_peer_constraints_exabgp_needs).
        pytest.param(
            lambda: with_peer(RTX_CONFIG, address="fd00::1", families=["ipv6"], password_file=None),
            {"local_addresses": {"fd00::1": "fd00::2"}},
            "router_id",
            id="router-id-needed",
        ),
    ],
)
def test_refused_configs(config: Callable[[], Config], kwargs: Mapping[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {
        "process_command": GOLDEN_COMMAND,
        "local_addresses": RTX_LOCAL,
        "passwords": RTX_PASSWORDS,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        render_config(config(), **arguments)


def test_local_addresses_keys_may_be_addresses_or_strings() -> None:
    from ipaddress import ip_address

    by_string = render_config(
        rtx(), process_command=GOLDEN_COMMAND, local_addresses=RTX_LOCAL, passwords=RTX_PASSWORDS
    )
    by_address = render_config(
        rtx(),
        process_command=GOLDEN_COMMAND,
        local_addresses={ip_address("192.0.2.1"): ip_address("192.0.2.11")},
        passwords={ip_address("192.0.2.1"): "CHANGE-ME"},
    )
    assert by_string == by_address


# --------------------------------------------------------------------------- environment


@needs_exabgp
def test_exabgp_reads_the_environment_over_conflicting_settings(tmp_path: Path) -> None:
    environment = exabgp_environment(ExabgpConfig(reactor_speed=0.25, log_level="DEBUG"), tmp_path)
    (tmp_path / "exabgp.env").write_text("[exabgp.api]\nack = false\n")
    parent = {k: v for k, v in os.environ.items() if not k.lower().startswith("exabgp")}
    # the underscore spelling and an env file lose against the dotted names we set
    parent |= {"exabgp_api_ack": "false", "exabgp_api_cli": "true", "exabgp_reactor_speed": "1.0"}
    result = subprocess.run(
        ["exabgp", "env", "--env"],
        env=parent | environment,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    effective = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    for name, value in environment.items():
        if name.startswith("exabgp."):
            assert effective[name].strip("'") == value, name
    assert effective["exabgp.reactor.speed"] == "0.25"
    assert effective["exabgp.log.level"] == "DEBUG"


def test_environment_defaults(tmp_path: Path) -> None:
    environment = exabgp_environment(ExabgpConfig(), tmp_path, user="bgpvip")
    assert environment["exabgp.api.ack"] == "true"
    assert environment["exabgp.api.cli"] == "false"
    assert environment["exabgp.tcp.bind"] == ""
    assert environment["exabgp.daemon.user"] == "bgpvip"
    assert environment["exabgp.reactor.speed"] == "0.1"
    assert environment["EXABGP_ENVFILE"] == str(tmp_path / "exabgp.env")
    with pytest.raises(ValueError, match="absolute"):
        exabgp_environment(ExabgpConfig(), "run/bgpvip")
