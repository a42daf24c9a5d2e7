"""The ExaBGP 5 configuration and environment `bgpvip run` starts ExaBGP with.

I/O side of the line (what ExaBGP will read), but the functions are pure: they return text
and a dict; the caller writes the file and reads the password files. Every statement was
checked against ExaBGP 5.0.15's parser (configuration/neighbor, capability, process) and
the tests run `exabgp validate` on the rendered text.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from bgpvip.core.config import Config, ExabgpConfig, PeerConfig
from bgpvip.core.model import IPAddress

PROCESS_NAME = "bgpvip"
BGP_PORT = 179

# characters that end or split a word in ExaBGP's configuration tokeniser (format.tokens)
_SPECIAL = set(" \t;{}[],#")
# cannot appear even inside quotes: the tokeniser unescapes backslashes on the whole line
# first, and a quote of the other kind inside a quoted word re-opens quoting
_UNQUOTABLE = set("\"'\\")
_MAX_MD5_PASSWORD = 80

# Keyed by peer address, as an ipaddress object or its text (Mapping keys are invariant, so
# the key type stays open and is normalised here).
AddressMap = Mapping[Any, IPAddress | str]
PasswordMap = Mapping[Any, str]


def _address(value: object) -> IPAddress:
    return ipaddress.ip_address(str(value))


def _lookup(mapping: Mapping[Any, object], peer: IPAddress) -> object:
    for key, value in mapping.items():
        if _address(key) == peer:
            return value
    return None


def _word(value: str, what: str) -> str:
    """`value` as one token of ExaBGP's configuration, quoted when it must be."""
    if not value:
        raise ValueError(f"{what} is empty")
    if not all(" " <= c <= "~" for c in value) or _UNQUOTABLE & set(value):
        raise ValueError(f"{what} {value!r} has a quote, backslash, control or non-ASCII character")
    return f'"{value}"' if _SPECIAL & set(value) else value


def _password(peer: PeerConfig, passwords: PasswordMap) -> str | None:
    password = _lookup(passwords, peer.address)
    if password is None:
        if peer.password_file is not None:
            raise ValueError(f"peer {peer.label}: password_file is set but no password was passed")
        return None
    if not isinstance(password, str) or not 1 <= len(password) <= _MAX_MD5_PASSWORD:
        raise ValueError(f"peer {peer.label}: the MD5 password must be 1-{_MAX_MD5_PASSWORD} characters")
    if not all(" " <= c <= "~" for c in password) or _UNQUOTABLE & set(password):
        raise ValueError(
            f"peer {peer.label}: the MD5 password may hold printable ASCII except quotes and backslash"
        )
    return password


def _local_address(peer: PeerConfig, local_addresses: AddressMap) -> IPAddress:
    if peer.local_address is not None:
        return peer.local_address
    found = _lookup(local_addresses, peer.address)
    if found is None:
        raise ValueError(f"peer {peer.label}: no local address (set local_address or resolve it)")
    local = _address(str(found))
    if local.version != peer.address.version:
        raise ValueError(f"peer {peer.label}: local address {local} is not of the peer's family")
    return local


def _router_id(config: Config, local_addresses: AddressMap) -> str:
    if config.bgp.router_id is not None:
        return str(config.bgp.router_id)
    first = _local_address(config.bgp.peers[0], local_addresses)
    if first.version != 4:
        raise ValueError("bgp.router_id must be set when the first peer's local address is IPv6")
    return str(first)


def _neighbor(
    peer: PeerConfig,
    *,
    router_id: str,
    local_as: int,
    local_address: IPAddress,
    password: str | None,
    listen: bool,
) -> list[str]:
    if peer.hold_time in (1, 2):
        raise ValueError(
            f"peer {peer.label}: ExaBGP takes a hold time of 0 or at least 3, not {peer.hold_time}"
        )
    if "ipv6" in peer.families and peer.address.version == 4:
        # ExaBGP resolves `next-hop self` from local-address; for an IPv6 route on an IPv4
        # session it raises "does not have the same family" and every announce fails
        raise ValueError(f"peer {peer.label}: IPv6 routes need an IPv6 session (peer address {peer.address})")
    lines = [
        f"neighbor {peer.address} {{",
        f"    router-id {router_id};",
        f"    local-address {local_address};",
        f"    local-as {peer.local_as or local_as};",
        f"    peer-as {peer.peer_as};",
        f"    hold-time {peer.hold_time};",
    ]
    if password is not None:
        lines.append(f'    md5-password "{password}";')
    if peer.multihop_ttl is not None:
        lines.append(f"    outgoing-ttl {peer.multihop_ttl};")
    if peer.passive:
        lines += ["    passive true;", f"    listen {peer.port};"]
    else:
        if peer.port != 179:
            lines.append(f"    connect {peer.port};")
        if listen:
            # ExaBGP connects out and backs off up to 60 s between attempts; accepting the
            # router's own connection brings the session back as soon as the router is back
            lines.append(f"    listen {BGP_PORT};")
    # `show adj-rib out` reads this cache, and it re-sends routes after a session flap
    lines.append("    adj-rib-out true;")
    lines.append("    family {")
    lines += [f"        {family} unicast;" for family in ("ipv4", "ipv6") if family in peer.families]
    lines.append("    }")
    lines.append("    capability {")
    if peer.graceful_restart is None:
        lines.append("        graceful-restart disable;")
    else:
        lines.append(f"        graceful-restart {peer.graceful_restart};")
    lines.append(f"        route-refresh {'enable' if peer.route_refresh else 'disable'};")
    lines.append("    }")
    lines += [
        "    api {",
        f"        processes [ {PROCESS_NAME} ];",
        "        neighbor-changes;",
        # the families each session settled on (a router may take none of ours), and the
        # NOTIFICATIONs that end a session (why it is down; that our Cease went out)
        "        negotiated;",
        "        send { parsed; notification; }",
        "        receive { parsed; notification; }",
        "    }",
        "}",
    ]
    return lines


def render_config(
    config: Config,
    *,
    process_command: Sequence[str],
    local_addresses: AddressMap,
    passwords: PasswordMap | None = None,
    listening: Collection[Any] | None = None,
) -> str:
    """A complete ExaBGP 5 configuration: one `neighbor` per peer, all bound to the API
    process `bgpvip` that runs `process_command` with the JSON encoder.

    `local_addresses` maps peer address to this host's address on the session, for peers
    without `local_address` (ExaBGP needs it to resolve `next-hop self`). `passwords` maps
    peer address to its MD5 password, read by the caller from `password_file`. `listening`
    holds the (non-passive) peers whose connections ExaBGP also accepts on port 179; None:
    every peer whose `listen` is not false (the caller checks the port can be bound).
    Raises ValueError for anything ExaBGP would refuse or misread."""
    if not process_command:
        raise ValueError("process_command is empty")
    if not process_command[0].startswith("/"):
        # ExaBGP searches /etc/exabgp, the config's directory and PATH for a relative name
        raise ValueError(f"process_command must start with an absolute path, not {process_command[0]!r}")
    run = " ".join(_word(arg, "process_command argument") for arg in process_command)
    router_id = _router_id(config, local_addresses)
    out = [
        "# ExaBGP 5 configuration rendered by bgpvip; it is rewritten on every start.",
        "",
        f"process {PROCESS_NAME} {{",
        f"    run {run};",
        "    encoder json;",
        "}",
    ]
    listen = (
        {p.address for p in config.bgp.peers if p.listen is not False}
        if listening is None
        else {_address(p) for p in listening}
    )
    for peer in config.bgp.peers:
        out.append("")
        out += _neighbor(
            peer,
            router_id=router_id,
            local_as=config.bgp.local_as,
            local_address=_local_address(peer, local_addresses),
            password=_password(peer, passwords or {}),
            listen=peer.address in listen,
        )
    return "\n".join(out) + "\n"


def exabgp_environment(
    config: ExabgpConfig, runtime_dir: Path | str, *, user: str | None = None
) -> dict[str, str]:
    """Environment variables to start ExaBGP with, on top of the inherited environment.

    ExaBGP reads `exabgp.<section>.<option>` before `exabgp_<section>_<option>` and before
    its env file (environment/environment.py), so the dotted names win over anything set
    elsewhere. `user` is who ExaBGP runs as after start: default the current user, because
    ExaBGP started as root otherwise drops to `nobody`, and helpers it respawns later would
    run as nobody too, without the rights to manage addresses."""
    runtime = Path(runtime_dir)
    if not runtime.is_absolute():
        raise ValueError(f"runtime_dir must be absolute (ExaBGP changes to /), not {runtime}")
    return {
        # a distribution's /etc/exabgp/exabgp.env must not change the API bgpvip relies on
        "EXABGP_ENVFILE": str(runtime / "exabgp.env"),
        "exabgp.api.ack": "true",
        # routes `show adj-rib out` prints per reactor turn: 10,000 routes took 0.9 s at
        # ExaBGP's default of 1 and 0.3-0.4 s at 100
        "exabgp.api.chunk": "100",
        "exabgp.api.cli": "false",
        "exabgp.api.encoder": "json",
        "exabgp.api.respawn": "true",
        "exabgp.api.terminate": "false",
        "exabgp.bgp.passive": "false",
        "exabgp.daemon.daemonize": "false",
        "exabgp.daemon.user": user or pwd.getpwuid(os.geteuid()).pw_name,
        "exabgp.log.destination": "stderr",
        "exabgp.log.level": config.log_level,
        # otherwise a statistics line at INFO on every keepalive drowns the useful lines
        "exabgp.log.statistics": "false",
        "exabgp.reactor.speed": repr(config.reactor_speed),
        "exabgp.tcp.attempts": "0",
        # empty: no listening socket unless a passive neighbor asks for one (`listen`)
        "exabgp.tcp.bind": "",
    }
