"""ExaBGP 5 API text: routes to command lines, and the lines ExaBGP writes back to values.

I/O side of the line, but every function here is pure: nothing reads or writes a stream.
`ExaBgpSession` (session.py) does the I/O with these functions. Facts checked against
ExaBGP 5.0.15's source and a running instance:

- `announce attributes <attrs> nlri P1 P2 ...` takes the address family from the *last*
  prefix and applies it to all of them: a mixed IPv4/IPv6 batch announces garbage
  (198.51.100.1/32 went out as the IPv6 route c633:6401::/32). Batches are one family each.
  IPv6 batches work with `next-hop self` (`IPSelf` takes the batch's family and is resolved
  per neighbor from its `local-address`), so there is no per-route fallback.
- `withdraw attributes nlri P1 P2 ...` exists (`reactor/api/command/announce.py`). A route
  is keyed by family and prefix only, so a withdrawal needs no attributes and no next hop.
  Withdrawing an unknown prefix still answers `done`.
- An `as-path [...]` is sent verbatim: ExaBGP prepends the local AS only when no AS path is
  given (`Attributes.pack`). `Attributes.as_path` is therefore the whole path.
- ACKs are the bare words `done` and `error` even with `encoder json`; events are JSON
  objects with an `"exabgp"` key (json encoder) or `neighbor <ip> up` lines (text encoder,
  each followed by an empty line).
- `show adj-rib out extensive` prints one line per route and neighbor, every attribute
  included, plus the neighbor's `local-ip` and `router-id`, which is what turns the printed
  next hop back into `self`. Its JSON form prints only prefix and family unless
  `api.show-routes-format=v2` is set, so the text form is the one parsed here.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bgpvip.core.model import Attributes, IPNetwork, Route

DEFAULT_BATCH_SIZE = 1000
"""Prefixes per `announce attributes` line. Measured with ExaBGP 5.0.15 (reactor.speed 0.1)
against FRR 8.4: 10,000 /32s in batches of 1,000 were acked within 1.5-2.2 s and all in FRR's
table 0.2 s later; one route per line manages about 1,000 routes/s."""

MAX_LINE_LENGTH = 256 * 1024
"""Longest line accepted. ExaBGP drops a helper whose unterminated command passes 1 MiB;
1,000 IPv6 prefixes take at most 44 KiB."""

ADJ_RIB_OUT_COMMAND = "show adj-rib out extensive"

NEIGHBORS_COMMAND = "show neighbor json"
"""Every configured neighbor with its FSM state, configured and negotiated families: one JSON
list on one line, then `done`."""

CEASE_COMMAND = "neighbor * teardown 2"
"""NOTIFICATION Cease / Administrative Shutdown (RFC 4486) to every established peer. ExaBGP
reconnects at once afterwards (its `teardown` always restarts the peer), so a clean stop
follows it with SHUTDOWN_COMMAND as soon as the NOTIFICATIONs are out."""

SHUTDOWN_COMMAND = "shutdown"
"""ExaBGP stops: closes every session (without a NOTIFICATION) and exits."""

_MAX_U32 = 4_294_967_295
_MAX_U16 = 65_535

# ExaBGP's names for well-known communities, spelled as bgpvip's config spells them.
_WELL_KNOWN_BY_VALUE = {
    0xFFFFFF01: "no-export",
    0xFFFFFF02: "no-advertise",
    0xFFFFFF03: "no-export-subconfed",
    0xFFFFFF04: "nopeer",
}
_WELL_KNOWN_BY_NAME = {name: value for value, name in _WELL_KNOWN_BY_VALUE.items()}
# ExaBGP prints these for values it knows by name; only the config spelling is ever written.
_EXABGP_COMMUNITY_NAMES = {**_WELL_KNOWN_BY_NAME, "no-peer": 0xFFFFFF04, "blackhole": 0xFFFF029A}

_LITERAL_COMMANDS = frozenset(
    {
        ADJ_RIB_OUT_COMMAND,
        "clear adj-rib out",
        "flush adj-rib out",
        "announce eor",
        "announce eor ipv4 unicast",
        "announce eor ipv6 unicast",
        NEIGHBORS_COMMAND,
        CEASE_COMMAND,
        SHUTDOWN_COMMAND,
    }
)

_FAMILY_NAMES = {4: "ipv4", 6: "ipv6"}


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Ack:
    """`done` (ok) or `error` (not ok): the answer to the oldest command still waiting."""

    ok: bool


@dataclass(frozen=True, slots=True)
class NeighborEvent:
    peer: str
    state: Literal["up", "down", "connected"]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What a session settled on, from ExaBGP's `negotiated` message (api `negotiated;`),
    which comes just before the session's `up`."""

    peer: str
    families: frozenset[str]
    """Unicast families both sides announced: `ipv4`, `ipv6`. Empty when the router's OPEN
    carried no multiprotocol capability: ExaBGP then sends nothing on the session."""
    route_refresh: bool = False


@dataclass(frozen=True, slots=True)
class Notification:
    """A BGP NOTIFICATION ExaBGP sent or received (api `send`/`receive` `notification;`)."""

    peer: str
    direction: Literal["send", "receive"]
    code: int
    subcode: int
    text: str = ""
    """The printable part of the data (an RFC 8203 shutdown communication, for example)."""


@dataclass(frozen=True, slots=True)
class NeighborStatus:
    """One neighbor as `show neighbor json` describes it."""

    peer: str
    local: str
    fsm: str
    """ExaBGP's FSM state: IDLE, ACTIVE, CONNECT, OPENSENT, OPENCONFIRM, ESTABLISHED."""
    configured: frozenset[str]
    """Unicast families of the neighbor's `family` block: `ipv4`, `ipv6`."""
    negotiated: frozenset[str] | None
    """Unicast families negotiated on the session; None while it is not established."""

    @property
    def established(self) -> bool:
        return self.fsm == "ESTABLISHED"


@dataclass(frozen=True, slots=True)
class Shutdown:
    """ExaBGP is stopping; it sends SIGTERM to its helpers 0.1 s later."""


@dataclass(frozen=True, slots=True)
class Eof:
    """ExaBGP closed the helper's stdin: it has gone away."""


@dataclass(frozen=True, slots=True)
class Unknown:
    line: str


Message = Ack | NeighborEvent | Negotiated | Notification | Shutdown | Unknown
Event = NeighborEvent | Negotiated | Notification | Shutdown | Eof

_STATES: dict[str, Literal["up", "down", "connected"]] = {
    "up": "up",
    "down": "down",
    "connected": "connected",
}


# --------------------------------------------------------------------------- attribute values


def _u32(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U32:
        raise ValueError(f"{what} must be an integer 0-{_MAX_U32}, not {value!r}")
    return value


def _number(token: str, what: str, low: int = 0, high: int = _MAX_U32) -> int:
    # str.isdigit() accepts non-ASCII digits such as '²'; ExaBGP's pipe is ASCII only
    if not token.isascii() or not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise ValueError(f"{what} {token!r} is not a decimal number")
    value = int(token)
    if not low <= value <= high:
        raise ValueError(f"{what} {token!r} is out of range {low}-{high}")
    return value


def _community_value(text: object) -> int:
    if not isinstance(text, str):
        raise ValueError(f"community {text!r} is not a string")
    known = _EXABGP_COMMUNITY_NAMES.get(text)
    if known is not None:
        return known
    high, sep, low = text.partition(":")
    if not sep:
        raise ValueError(f"community {text!r}: use ASN:VALUE (both 0-65535) or a well-known name")
    return _number(high, "community", 0, _MAX_U16) << 16 | _number(low, "community", 0, _MAX_U16)


def _community_text(value: int) -> str:
    return _WELL_KNOWN_BY_VALUE.get(value) or f"{value >> 16}:{value & 0xFFFF}"


def _large_community_value(text: object) -> tuple[int, int, int]:
    if not isinstance(text, str):
        raise ValueError(f"large community {text!r} is not a string")
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"large community {text!r}: use A:B:C, each 0-{_MAX_U32}")
    a, b, c = (_number(p, "large community", 0, _MAX_U32) for p in parts)
    return a, b, c


@functools.lru_cache(maxsize=256)
def canonical_attributes(attributes: Attributes) -> Attributes:
    """The attributes as ExaBGP stores and prints them: communities sorted by value, without
    duplicates, well-known ones by name. Raises ValueError for anything ExaBGP would not take.

    Compare routes in this form: what `show adj-rib out` returns is canonical."""
    med = None if attributes.med is None else _u32(attributes.med, "med")
    local_preference = (
        None if attributes.local_preference is None else _u32(attributes.local_preference, "local-preference")
    )
    communities = sorted({_community_value(c) for c in attributes.communities})
    large = sorted({_large_community_value(c) for c in attributes.large_communities})
    as_path = tuple(_u32(asn, "as-path AS number") for asn in attributes.as_path)
    if 0 in as_path:
        raise ValueError("as-path must not contain AS 0 (RFC 7607)")
    return Attributes(
        med=med,
        local_preference=local_preference,
        communities=tuple(_community_text(c) for c in communities),
        large_communities=tuple(f"{a}:{b}:{c}" for a, b, c in large),
        as_path=as_path,
    )


def _canonical_next_hop(next_hop: str, prefix: IPNetwork) -> str:
    if next_hop == "self":
        return next_hop
    try:
        address = ipaddress.ip_address(next_hop)
    except ValueError:
        raise ValueError(f"next hop {next_hop!r} is neither 'self' nor an IP address") from None
    if address.version != prefix.version:
        raise ValueError(f"next hop {next_hop} is not of the same family as {prefix}")
    return str(address)


def canonical_route(route: Route) -> Route:
    """`route` with canonical attributes and next hop (see `canonical_attributes`); `route`
    itself when it already is (10,000 Service routes are not copied)."""
    attributes = canonical_attributes(route.attributes)
    next_hop = _canonical_next_hop(route.next_hop, route.prefix)
    if attributes == route.attributes and next_hop == route.next_hop:
        return route
    return Route(
        prefix=route.prefix,
        attributes=attributes,
        next_hop=next_hop,
    )


# --------------------------------------------------------------------------- encoding


def _attribute_tokens(attributes: Attributes) -> list[str]:
    tokens: list[str] = []
    if attributes.med is not None:
        tokens += ["med", str(attributes.med)]
    if attributes.local_preference is not None:
        tokens += ["local-preference", str(attributes.local_preference)]
    if attributes.communities:
        tokens += ["community", "[" + " ".join(attributes.communities) + "]"]
    if attributes.large_communities:
        tokens += ["large-community", "[" + " ".join(attributes.large_communities) + "]"]
    if attributes.as_path:
        tokens += ["as-path", "[" + " ".join(str(asn) for asn in attributes.as_path) + "]"]
    return tokens


def _group_key(route: Route) -> tuple[Any, ...]:
    a = route.attributes
    return (
        route.family,
        route.next_hop != "self",
        route.next_hop,
        a.med is not None,
        a.med or 0,
        a.local_preference is not None,
        a.local_preference or 0,
        tuple(_community_value(c) for c in a.communities),
        tuple(_large_community_value(c) for c in a.large_communities),
        a.as_path,
    )


def _chunks(prefixes: Sequence[IPNetwork], size: int) -> Iterable[Sequence[IPNetwork]]:
    for start in range(0, len(prefixes), size):
        yield prefixes[start : start + size]


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")


Neighbors = Mapping[int, Sequence[str]]
"""Peer addresses by IP version (4, 6): the neighbors configured with that unicast family."""


def neighbor_selector(family: int, neighbors: Neighbors | None) -> str:
    """The `neighbor A , neighbor B ` prefix that sends a line only to the neighbors of
    `family`: ExaBGP logs an error for every route of a family a neighbor does not carry.
    Empty when every neighbor carries it (or nothing is known). Raises ValueError when no
    neighbor does."""
    if neighbors is None:
        return ""
    peers = sorted({str(ipaddress.ip_address(p)) for p in neighbors.get(family, ())})
    if not peers:
        raise ValueError(f"no ExaBGP neighbor carries {_FAMILY_NAMES.get(family, family)} unicast")
    everyone = {str(ipaddress.ip_address(p)) for members in neighbors.values() for p in members}
    if set(peers) == everyone:
        return ""
    return " , ".join(f"neighbor {p}" for p in peers) + " "


def encode_announce(
    routes: Iterable[Route], *, batch_size: int = DEFAULT_BATCH_SIZE, neighbors: Neighbors | None = None
) -> list[str]:
    """Validated `announce attributes ... nlri ...` lines: one per family, next hop and
    attribute set, at most `batch_size` prefixes each, prefixes in ascending order. With
    `neighbors`, each line names the neighbors of its family (`neighbor_selector`).

    Raises ValueError for a route ExaBGP would not take, for one prefix given twice with
    different attributes (ExaBGP would keep whichever came last), or for a family no
    neighbor carries."""
    _check_batch_size(batch_size)
    by_prefix: dict[IPNetwork, Route] = {}
    for route in routes:
        route = canonical_route(route)
        seen = by_prefix.setdefault(route.prefix, route)
        if seen != route:
            raise ValueError(f"{route.prefix} is to be announced twice with different attributes")
    groups: dict[tuple[Any, ...], list[Route]] = {}
    for route in by_prefix.values():
        groups.setdefault(_group_key(route), []).append(route)
    lines = []
    for key in sorted(groups):
        members = groups[key]
        selector = neighbor_selector(members[0].family, neighbors)
        head = [
            "announce",
            "attributes",
            "next-hop",
            members[0].next_hop,
            *_attribute_tokens(members[0].attributes),
        ]
        prefixes = sorted(r.prefix for r in members)
        for chunk in _chunks(prefixes, batch_size):
            lines.append(validate_line(selector + " ".join([*head, "nlri", *map(str, chunk)])))
    return lines


def encode_withdraw(
    routes: Iterable[Route], *, batch_size: int = DEFAULT_BATCH_SIZE, neighbors: Neighbors | None = None
) -> list[str]:
    """Validated `withdraw attributes nlri ...` lines, one family per line, prefixes sorted,
    with the neighbors of the family as for `encode_announce`.

    Only the prefix matters: ExaBGP keys its Adj-RIB-Out by family and prefix."""
    _check_batch_size(batch_size)
    by_family: dict[int, set[IPNetwork]] = {}
    for route in routes:
        by_family.setdefault(route.family, set()).add(route.prefix)
    lines = []
    for family in sorted(by_family):
        prefixes = sorted(by_family[family])
        selector = neighbor_selector(family, neighbors)
        for chunk in _chunks(prefixes, batch_size):
            lines.append(
                validate_line(selector + " ".join(["withdraw", "attributes", "nlri", *map(str, chunk)]))
            )
    return lines


# --------------------------------------------------------------------------- validation


class _Tokens:
    def __init__(self, line: str):
        # the same bracket spacing ExaBGP's `formated()` applies before it tokenises
        self.items = line.replace("[", "[ ").replace("]", " ]").split()
        self.pos = 0

    def peek(self) -> str | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ValueError("line ends too early")
        self.pos += 1
        return token

    def expect(self, word: str) -> None:
        token = self.take()
        if token != word:
            raise ValueError(f"expected {word!r}, found {token!r}")

    def bracketed(self, what: str) -> list[str]:
        self.expect("[")
        values = []
        while (token := self.take()) != "]":
            values.append(token)
        if not values:
            raise ValueError(f"empty {what} list")
        return values


def _host_prefix(token: str) -> IPNetwork:
    try:
        network = ipaddress.ip_network(token, strict=True)
    except ValueError:
        raise ValueError(f"{token!r} is not a prefix") from None
    if str(network) != token or "/" not in token:
        raise ValueError(f"{token!r} is not written canonically as address/length")
    if network.prefixlen != network.max_prefixlen:
        raise ValueError(f"{token} is not a host route (/32 or /128)")
    return network


def _check_prefixes(tokens: _Tokens) -> None:
    prefixes = []
    while tokens.peek() is not None:
        prefixes.append(_host_prefix(tokens.take()))
    if not prefixes:
        raise ValueError("no prefix after 'nlri'")
    if len({p.version for p in prefixes}) != 1:
        raise ValueError("IPv4 and IPv6 prefixes mixed on one line (ExaBGP would corrupt them)")
    if len(set(prefixes)) != len(prefixes):
        raise ValueError("a prefix appears twice on one line")


def _check_announce(tokens: _Tokens) -> None:
    tokens.expect("next-hop")
    next_hop = tokens.take()
    if next_hop != "self":
        try:
            address = ipaddress.ip_address(next_hop)
        except ValueError:
            raise ValueError(f"next hop {next_hop!r} is neither 'self' nor an IP address") from None
        if str(address) != next_hop:
            raise ValueError(f"next hop {next_hop!r} is not written canonically")
    order = ["med", "local-preference", "community", "large-community", "as-path"]
    while (word := tokens.take()) != "nlri":
        if word not in order:
            raise ValueError(f"unknown or repeated attribute {word!r}")
        order = order[order.index(word) + 1 :]
        if word in ("med", "local-preference"):
            _number(tokens.take(), word)
        elif word == "community":
            for c in tokens.bracketed(word):
                _community_value(c)
        elif word == "large-community":
            for c in tokens.bracketed(word):
                _large_community_value(c)
        else:
            for asn in tokens.bracketed(word):
                _number(asn, "AS number", 1)
    _check_prefixes(tokens)
    if (
        next_hop != "self"
        and ipaddress.ip_address(next_hop).version != _host_prefix(tokens.items[-1]).version
    ):
        raise ValueError(f"next hop {next_hop} is not of the prefixes' family")


def _check_selector(tokens: _Tokens) -> None:
    seen = set()
    while True:
        tokens.expect("neighbor")
        peer = tokens.take()
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            raise ValueError(f"neighbor {peer!r} is not an IP address") from None
        if str(address) != peer:
            raise ValueError(f"neighbor {peer!r} is not written canonically")
        if address in seen:
            raise ValueError(f"neighbor {peer} named twice")
        seen.add(address)
        if tokens.peek() != ",":
            return
        tokens.take()


def validate_line(line: str) -> str:
    """Return `line` if it is one well-formed command bgpvip may send; raise ValueError if not.

    One line of printable ASCII, single spaces, and only the grammar bgpvip emits:
    `[neighbor A , neighbor B ...] announce attributes next-hop ... nlri ...`, the same
    `withdraw attributes nlri ...`, and a few fixed commands (`show adj-rib out extensive`,
    `show neighbor json`, `clear adj-rib out`, `flush adj-rib out`, `announce eor [ipv4|ipv6
    unicast]`, `neighbor * teardown 2`, `shutdown`)."""
    if not isinstance(line, str):
        raise ValueError(f"a command must be a str, not {type(line).__name__}")
    if not line or len(line) > MAX_LINE_LENGTH:
        raise ValueError(f"a command must be 1-{MAX_LINE_LENGTH} characters long")
    if not all(" " <= c <= "~" for c in line):
        raise ValueError(f"command contains a control or non-ASCII character: {line[:80]!r}")
    if line != line.strip() or "  " in line:
        raise ValueError(f"command has stray spaces: {line[:80]!r}")
    if line in _LITERAL_COMMANDS:
        return line
    tokens = _Tokens(line)
    try:
        if tokens.peek() == "neighbor":
            _check_selector(tokens)
        verb = tokens.take()
        tokens.expect("attributes")
        if verb == "announce":
            _check_announce(tokens)
        elif verb == "withdraw":
            tokens.expect("nlri")
            _check_prefixes(tokens)
        else:
            raise ValueError(f"unknown command {verb!r}")
    except ValueError as e:
        raise ValueError(f"{e}: {line[:120]!r}") from None
    return line


# --------------------------------------------------------------------------- decoding


def _json_message(line: str) -> Message:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return Unknown(line)
    if not isinstance(data, dict):
        return Unknown(line)
    answer = data.get("answer")
    if answer in ("done", "error"):
        return Ack(answer == "done")
    if answer == "shutdown":
        return Shutdown()
    if "exabgp" not in data:
        return Unknown(line)
    kind = data.get("type")
    if kind == "notification" and data.get("notification") == "shutdown":
        return Shutdown()
    neighbor = data.get("neighbor")
    if not isinstance(neighbor, dict):
        return Unknown(line)
    address = neighbor.get("address")
    peer = address.get("peer") if isinstance(address, dict) else None
    if not isinstance(peer, str) or not _is_address(peer):
        return Unknown(line)
    if kind == "negotiated":
        return _negotiated(peer, neighbor.get("negotiated"), line)
    if kind == "notification":
        return _notification(peer, neighbor, line)
    if kind != "state":
        return Unknown(line)
    state = _STATES.get(str(neighbor.get("state")))
    reason = neighbor.get("reason", "")
    if not isinstance(peer, str) or state is None or not isinstance(reason, str):
        return Unknown(line)
    return NeighborEvent(peer=peer, state=state, reason=reason)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _unicast_families(names: object) -> frozenset[str] | None:
    """`["ipv4 unicast", "ipv6 flow"]` -> {"ipv4"}; None if it is not a list of strings."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return frozenset(n.split(" ", 1)[0] for n in names if n in ("ipv4 unicast", "ipv6 unicast"))


def _negotiated(peer: str, body: object, line: str) -> Message:
    if not isinstance(body, dict):
        return Unknown(line)
    families = _unicast_families(body.get("families"))
    if families is None:
        return Unknown(line)
    return Negotiated(
        peer=peer, families=families, route_refresh=body.get("refresh") in ("normal", "enhanced")
    )


MAX_NOTIFICATION_TEXT = 128
"""Characters kept of a NOTIFICATION's data: a shutdown communication is at most 255 bytes
(RFC 9003); the peer chooses it, so it is cut and stripped of anything unprintable."""


def printable(text: str, limit: int = MAX_NOTIFICATION_TEXT) -> str:
    """`text` without control or non-ASCII characters, at most `limit` characters."""
    cleaned = "".join(c if " " <= c <= "~" else " " for c in text)
    return " ".join(cleaned.split())[:limit]


def _notification(peer: str, neighbor: dict[str, Any], line: str) -> Message:
    direction = neighbor.get("direction")
    body = neighbor.get("notification")
    if direction not in ("send", "receive") or not isinstance(body, dict):
        return Unknown(line)
    code, subcode, message = body.get("code"), body.get("subcode"), body.get("message", "")
    if not (isinstance(code, int) and isinstance(subcode, int) and isinstance(message, str)):
        return Unknown(line)
    if isinstance(code, bool) or isinstance(subcode, bool) or not (0 <= code <= 255 and 0 <= subcode <= 255):
        return Unknown(line)
    return Notification(peer=peer, direction=direction, code=code, subcode=subcode, text=printable(message))


def _text_message(line: str) -> Message:
    words = line.split(" ")
    if words[0] == "shutdown" and len(words) <= 3 and all(w.isascii() and w.isdigit() for w in words[1:]):
        return Shutdown()
    if len(words) < 3 or words[0] != "neighbor":
        return Unknown(line)
    state = _STATES.get(words[2])
    try:
        ipaddress.ip_address(words[1])
    except ValueError:
        return Unknown(line)
    if state in ("up", "connected") and len(words) == 3:
        return NeighborEvent(peer=words[1], state=state)
    if state == "down":
        reason = " ".join(words[3:])
        return NeighborEvent(
            peer=words[1], state=state, reason=reason[2:] if reason.startswith("- ") else reason
        )
    return Unknown(line)


def parse_line(line: str) -> Message:
    """Classify one line ExaBGP wrote to the helper's stdin. Never raises."""
    try:
        text = line.strip()
        if text == "done":
            return Ack(True)
        if text == "error":
            return Ack(False)
        if text.startswith("{"):
            return _json_message(text)
        return _text_message(text)
    except Exception:  # the contract is "never raises": a bug here must not stop the reader
        return Unknown(line)


def is_api_event(line: str) -> bool:
    """True for a JSON message from ExaBGP's encoder (it carries an `"exabgp"` key): such a
    line is an event even when it arrives in the middle of a command's output."""
    text = line.strip()
    if not text.startswith("{"):
        return False
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "exabgp" in data


# --------------------------------------------------------------------------- show neighbor json


def _families_enabled(value: object, what: str) -> frozenset[str]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    return frozenset(
        name.split(" ", 1)[0]
        for name, on in value.items()
        if on is True and name in ("ipv4 unicast", "ipv6 unicast")
    )


def _neighbor_status(item: object) -> NeighborStatus:
    if not isinstance(item, dict):
        raise ValueError("a neighbor is not an object")
    local, peer = item.get("local"), item.get("peer")
    if not isinstance(local, dict) or not isinstance(peer, dict):
        raise ValueError("a neighbor has no local/peer object")
    address, local_address, fsm = peer.get("address"), local.get("address"), item.get("fsm")
    if not isinstance(address, str) or not _is_address(address):
        raise ValueError(f"neighbor address {address!r} is not an IP address")
    if not isinstance(fsm, str) or not fsm.isalpha():
        raise ValueError(f"neighbor {address}: fsm {fsm!r}")
    established = fsm == "ESTABLISHED"
    negotiated = _unicast_families(item.get("families")) if established else None
    if established and negotiated is None:
        raise ValueError(f"neighbor {address}: families is not a list")
    return NeighborStatus(
        peer=str(ipaddress.ip_address(address)),
        local=str(local_address),
        fsm=fsm,
        configured=_families_enabled(local.get("families"), f"neighbor {address}: local families"),
        negotiated=negotiated,
    )


def parse_neighbors(lines: Iterable[str]) -> tuple[NeighborStatus, ...]:
    """The neighbors in the output of `show neighbor json` (ExaBGP 5: one JSON list on one
    line). Raises ValueError when the output is not that."""
    text = "".join(line.strip() for line in lines)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError(f"`show neighbor json` printed no JSON: {text[:120]!r}") from None
    if not isinstance(data, list):
        raise ValueError("`show neighbor json` printed no list")
    return tuple(_neighbor_status(item) for item in data)


def neighbors_by_family(statuses: Iterable[NeighborStatus]) -> dict[int, tuple[str, ...]]:
    """Peer addresses by IP version of the unicast families they are configured with: the
    `neighbors` argument of `encode_announce`."""
    out: dict[int, list[str]] = {}
    for status in statuses:
        for version, name in _FAMILY_NAMES.items():
            if name in status.configured:
                out.setdefault(version, []).append(status.peer)
    return {version: tuple(sorted(peers)) for version, peers in out.items()}


# --------------------------------------------------------------------------- show adj-rib out

_RIB_LINE = re.compile(
    r"neighbor (?P<peer>\S+) local-ip (?P<local>\S+) local-as \S+ peer-as \S+ router-id (?P<rid>\S+)"
    r" family-allowed \S+ (?P<afi>ipv4|ipv6) unicast (?P<prefix>\S+) next-hop (?P<nh>\S+)(?P<rest>.*)"
)


@dataclass(frozen=True, slots=True)
class AdjRibOut:
    routes: frozenset[Route]
    ignored: tuple[str, ...]
    """Lines that are not a route bgpvip can represent (other families, other attributes)."""


def _list(tokens: _Tokens, what: str) -> list[str]:
    if tokens.peek() == "[":
        return tokens.bracketed(what)
    return [tokens.take()]


def _as_path(tokens: _Tokens) -> tuple[int, ...]:
    # ExaBGP prints an AS_SEQUENCE as "( ... )" and an AS_SET as "[ ... ]"
    tokens.expect("(")
    path = []
    while (token := tokens.take()) != ")":
        path.append(_number(token, "AS number", 1))
    if tokens.peek() in ("(", "["):
        raise ValueError("AS path with several segments")
    return tuple(path)


@functools.lru_cache(maxsize=1024)
def _rib_attributes(rest: str) -> Attributes:
    """Attributes of a RIB line's tail. Cached: the routes of one pool share one text, and a
    resync re-reads 10,000 of them (ValueError is raised anew each time, never cached)."""
    return _parse_rib_attributes(rest)


def _parse_rib_attributes(rest: str) -> Attributes:
    tokens = _Tokens(rest.replace("(", " ( ").replace(")", " ) "))
    med = local_preference = None
    communities: list[str] = []
    large: list[str] = []
    as_path: tuple[int, ...] = ()
    while (word := tokens.peek()) is not None:
        tokens.take()
        if word == "origin":
            if tokens.take() != "igp":
                raise ValueError("origin other than igp")
        elif word == "as-path":
            as_path = _as_path(tokens)
        elif word == "med":
            med = _number(tokens.take(), "med")
        elif word == "local-preference":
            local_preference = _number(tokens.take(), "local-preference")
        elif word == "community":
            communities = _list(tokens, "community")
        elif word == "large-community":
            large = _list(tokens, "large-community")
        else:
            raise ValueError(f"attribute {word!r}")
    return canonical_attributes(
        Attributes(
            med=med,
            local_preference=local_preference,
            communities=tuple(communities),
            large_communities=tuple(large),
            as_path=as_path,
        )
    )


def _rib_route(line: str) -> Route:
    match = _RIB_LINE.fullmatch(line)
    if match is None:
        raise ValueError("not an extensive ipv4/ipv6 unicast line")
    prefix = _host_prefix(match["prefix"])
    if prefix.version != (4 if match["afi"] == "ipv4" else 6):
        raise ValueError("prefix of the wrong family")
    next_hop = _rib_next_hop(match["nh"], match["local"], match["rid"], prefix.version)
    return Route(prefix=prefix, attributes=_rib_attributes(match["rest"]), next_hop=next_hop)


@functools.lru_cache(maxsize=256)
def _rib_next_hop(nh: str, local: str, rid: str, version: int) -> str:
    next_hop = str(ipaddress.ip_address(nh))
    if next_hop == local or (version == 4 and ":" in local and next_hop == rid):
        # what `next-hop self` resolves to: the local address, or the router id for an IPv4
        # route on an IPv6 session (bgp/neighbor.py ip_self)
        return "self"
    return next_hop


def parse_adj_rib_out_detailed(lines: Iterable[str]) -> AdjRibOut:
    """Routes in the output of `show adj-rib out extensive`, one per prefix and attribute set
    (a route sent to several neighbors appears once), and the lines that were not routes."""
    routes: set[Route] = set()
    ignored: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            routes.add(_rib_route(line))
        except ValueError:
            ignored.append(line)
    return AdjRibOut(routes=frozenset(routes), ignored=tuple(ignored))


def parse_adj_rib_out(lines: Iterable[str]) -> set[Route]:
    """The routes of `parse_adj_rib_out_detailed`, as a set."""
    return set(parse_adj_rib_out_detailed(lines).routes)
