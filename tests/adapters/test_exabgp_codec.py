"""The ExaBGP API codec: routes to validated lines, ExaBGP's lines to values."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpvip.adapters.exabgp import codec
from bgpvip.adapters.exabgp.codec import (
    Ack,
    Negotiated,
    NeighborEvent,
    NeighborStatus,
    Notification,
    Shutdown,
    Unknown,
    canonical_attributes,
    encode_announce,
    encode_withdraw,
    parse_adj_rib_out,
    parse_adj_rib_out_detailed,
    parse_line,
    parse_neighbors,
    validate_line,
)
from bgpvip.core.model import Action, Announce, Attributes, Route, Withdraw


def route(prefix: str, next_hop: str = "self", **attributes: object) -> Route:
    return Route(prefix=ip_network(prefix), attributes=Attributes(**attributes), next_hop=next_hop)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- golden

GOLDEN_ACTIONS: tuple[Announce | Withdraw, ...] = (
    Withdraw((route("198.51.100.9/32"), route("fd00:cafe::9/128"), route("198.51.100.8/32", med=5))),
    Announce(
        (
            route("198.51.100.3/32", med=100, communities=("65000:2", "no-export", "65000:1")),
            route("198.51.100.1/32", med=100, communities=("65000:1", "65000:2", "no-export")),
            route("198.51.100.2/32", med=100, communities=("no-export", "65000:2", "65000:1")),
            route("198.51.100.4/32", med=100, communities=("65000:1", "65000:2", "no-export")),
            route("203.0.113.10/32"),
            route(
                "203.0.113.11/32",
                local_preference=200,
                large_communities=("65000:2:1", "65000:1:2"),
                as_path=(65100, 65100, 65100),
            ),
            route("203.0.113.12/32", next_hop="10.0.1.20"),
            route("fd00:cafe::2/128", med=50, communities=("nopeer",)),
            route("fd00:cafe::1/128", med=50, communities=("nopeer",)),
            route("fd00:cafe::10/128", next_hop="fd00:1::20"),
        )
    ),
    Withdraw((route("203.0.113.12/32"),)),
)


def render_actions(actions: tuple[Action, ...], batch_size: int) -> str:
    out = []
    for action in actions:
        if isinstance(action, Announce):
            out.append(f"# Announce {len(action.routes)} routes")
            out += encode_announce(action.routes, batch_size=batch_size)
        elif isinstance(action, Withdraw):
            out.append(f"# Withdraw {len(action.routes)} routes")
            out += encode_withdraw(action.routes, batch_size=batch_size)
    return "\n".join(out) + "\n"


def test_golden_api_lines(golden: Callable[[str, str], None]) -> None:
    golden("api_lines.txt", render_actions(GOLDEN_ACTIONS, batch_size=3))


def test_lines_do_not_depend_on_input_order() -> None:
    shuffled: list[Action] = []
    rng = random.Random(7)
    for action in GOLDEN_ACTIONS:
        routes = list(action.routes)
        rng.shuffle(routes)
        shuffled.append(type(action)(tuple(routes)))
    assert render_actions(tuple(shuffled), 3) == render_actions(GOLDEN_ACTIONS, 3)


# --------------------------------------------------------------------------- encoding


def test_batches_hold_at_most_batch_size_sorted_prefixes() -> None:
    routes = [route(f"10.{i // 256}.{i % 256}.1/32", med=1) for i in range(2500)]
    lines = encode_announce(routes)
    assert [len(line.split(" nlri ")[1].split()) for line in lines] == [1000, 1000, 500]
    prefixes = [ip_network(p) for line in lines for p in line.split(" nlri ")[1].split()]
    assert prefixes == sorted(r.prefix for r in routes)
    assert len(encode_withdraw(routes, batch_size=700)) == 4


def test_each_line_carries_one_family() -> None:
    lines = encode_announce([route("198.51.100.1/32"), route("fd00:cafe::1/128"), route("198.51.100.2/32")])
    assert lines == [
        "announce attributes next-hop self nlri 198.51.100.1/32 198.51.100.2/32",
        "announce attributes next-hop self nlri fd00:cafe::1/128",
    ]
    assert encode_withdraw([route("fd00:cafe::1/128"), route("198.51.100.1/32")]) == [
        "withdraw attributes nlri 198.51.100.1/32",
        "withdraw attributes nlri fd00:cafe::1/128",
    ]


def test_nothing_to_send_gives_no_lines() -> None:
    assert encode_announce([]) == []
    assert encode_withdraw([]) == []


def test_same_prefix_twice() -> None:
    assert len(encode_announce([route("198.51.100.1/32"), route("198.51.100.1/32")])) == 1
    with pytest.raises(ValueError, match="twice"):
        encode_announce([route("198.51.100.1/32"), route("198.51.100.1/32", med=1)])


def test_canonical_attributes() -> None:
    attributes = Attributes(
        communities=("65535:65281", "65000:2", "no-export", "65000:1", "no-peer"),
        large_communities=("2:1:1", "1:2:3", "2:1:1"),
        as_path=(65100, 65100),
    )
    assert canonical_attributes(attributes) == Attributes(
        communities=("65000:1", "65000:2", "no-export", "nopeer"),
        large_communities=("1:2:3", "2:1:1"),
        as_path=(65100, 65100),
    )


@pytest.mark.parametrize(
    ("attributes", "next_hop"),
    [
        pytest.param({"communities": ("65536:1",)}, "self", id="community-too-large"),
        pytest.param({"communities": ("a:b",)}, "self", id="community-letters"),
        pytest.param({"communities": ("65000:1 nlri 0.0.0.0/0",)}, "self", id="community-injection"),
        pytest.param({"communities": ("65000:1\nannounce route 0.0.0.0/0",)}, "self", id="community-newline"),
        pytest.param({"communities": ("\uff16\uff15:1",)}, "self", id="community-fullwidth-digits"),
        pytest.param({"communities": ("065000:1",)}, "self", id="community-leading-zero"),
        pytest.param({"communities": ("",)}, "self", id="community-empty"),
        pytest.param({"communities": ("no-such-name",)}, "self", id="community-unknown-name"),
        pytest.param({"communities": (65000,)}, "self", id="community-not-a-string"),
        pytest.param({"large_communities": ("1:2",)}, "self", id="large-two-parts"),
        pytest.param({"large_communities": ("1:2:4294967296",)}, "self", id="large-too-large"),
        pytest.param({"med": -1}, "self", id="med-negative"),
        pytest.param({"med": 2**32}, "self", id="med-too-large"),
        pytest.param({"med": True}, "self", id="med-bool"),
        pytest.param({"local_preference": 1.5}, "self", id="local-preference-float"),
        pytest.param({"as_path": (0,)}, "self", id="as-zero"),
        pytest.param({"as_path": (2**32,)}, "self", id="as-too-large"),
        pytest.param({}, "fd00::1", id="next-hop-other-family"),
        pytest.param({}, "self; announce", id="next-hop-garbage"),
        pytest.param({}, "", id="next-hop-empty"),
    ],
)
def test_bad_routes_never_become_lines(attributes: dict[str, object], next_hop: str) -> None:
    with pytest.raises(ValueError):
        encode_announce([route("198.51.100.1/32", next_hop=next_hop, **attributes)])


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("announce attributes next-hop self nlri 198.51.100.1/32", id="plain"),
        pytest.param(
            "announce attributes next-hop self med 0 local-preference 4294967295 community [no-export 1:2] "
            "large-community [1:2:3] as-path [65100 4200000000] nlri 198.51.100.1/32 198.51.100.2/32",
            id="all-attributes",
        ),
        pytest.param("announce attributes next-hop fd00:1::2 nlri fd00:cafe::1/128", id="ipv6-next-hop"),
        pytest.param("withdraw attributes nlri fd00:cafe::1/128 fd00:cafe::2/128", id="withdraw"),
        pytest.param("show adj-rib out extensive", id="show"),
        pytest.param("clear adj-rib out", id="clear"),
        pytest.param("announce eor ipv6 unicast", id="eor"),
        pytest.param("show neighbor json", id="show-neighbor"),
        pytest.param("neighbor * teardown 2", id="cease"),
        pytest.param("shutdown", id="shutdown"),
        pytest.param("neighbor 10.0.0.1 announce attributes next-hop self nlri 1.2.3.4/32", id="neighbor"),
        pytest.param(
            "neighbor 10.0.0.1 , neighbor fd00::1 withdraw attributes nlri 1.2.3.4/32", id="neighbors"
        ),
    ],
)
def test_valid_lines(line: str) -> None:
    assert validate_line(line) == line


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("", id="empty"),
        pytest.param("announce attributes next-hop self nlri 198.51.100.1/32\n", id="newline"),
        pytest.param("announce attributes next-hop self nlri 198.51.100.1/32\r", id="carriage-return"),
        pytest.param("announce attributes next-hop self\tnlri 198.51.100.1/32", id="tab"),
        pytest.param("announce attributes next-hop self nlri 198.51.100.1/32\x00", id="nul"),
        pytest.param("announce attributes next-hop self nlri 198.51.100.1/32 \u00e9", id="non-ascii"),
        pytest.param("announce attributes next-hop self  nlri 198.51.100.1/32", id="double-space"),
        pytest.param(" announce attributes next-hop self nlri 198.51.100.1/32", id="leading-space"),
        pytest.param("announce attributes next-hop self nlri", id="no-prefix"),
        pytest.param("announce attributes next-hop self nlri 198.51.100.0/24", id="not-a-host-route"),
        pytest.param("announce attributes next-hop self nlri 198.51.100.1", id="no-length"),
        pytest.param(
            "announce attributes next-hop self nlri 198.51.100.1/32 fd00::1/128", id="mixed-families"
        ),
        pytest.param(
            "announce attributes next-hop self nlri 198.51.100.1/32 198.51.100.1/32", id="duplicate"
        ),
        pytest.param("announce attributes next-hop self nlri FD00::1/128", id="not-canonical"),
        pytest.param("announce attributes next-hop self origin egp nlri 198.51.100.1/32", id="unknown-attr"),
        pytest.param(
            "announce attributes next-hop self med 1 med 2 nlri 198.51.100.1/32", id="repeated-attr"
        ),
        pytest.param(
            "announce attributes next-hop self community [65000:1 nlri 198.51.100.1/32", id="open-list"
        ),
        pytest.param("announce attributes next-hop self community [] nlri 198.51.100.1/32", id="empty-list"),
        pytest.param("announce attributes next-hop 10.0.0.1 nlri fd00::1/128", id="next-hop-family"),
        pytest.param("announce attributes med 1 nlri 198.51.100.1/32", id="no-next-hop"),
        pytest.param("announce route 198.51.100.1/32 next-hop self", id="announce-route"),
        pytest.param("withdraw attributes next-hop self nlri 198.51.100.1/32", id="withdraw-attrs"),
        pytest.param("neighbor 10.0.0.1, neighbor 10.0.0.2 withdraw attributes nlri 1.2.3.4/32", id="comma"),
        pytest.param("neighbor 10.0.0.1 , withdraw attributes nlri 1.2.3.4/32", id="dangling-comma"),
        pytest.param("neighbor * announce attributes next-hop self nlri 1.2.3.4/32", id="neighbor-star"),
        pytest.param("neighbor 10.0.0.01 withdraw attributes nlri 1.2.3.4/32", id="neighbor-not-canonical"),
        pytest.param("neighbor FD00::1 withdraw attributes nlri 1.2.3.4/32", id="neighbor-upper-case"),
        pytest.param(
            "neighbor 10.0.0.1 , neighbor 10.0.0.1 withdraw attributes nlri 1.2.3.4/32", id="neighbor-twice"
        ),
        pytest.param("neighbor 10.0.0.1 local-as 1 withdraw attributes nlri 1.2.3.4/32", id="filter"),
        pytest.param("neighbor 10.0.0.1 teardown 2", id="teardown-one"),
        pytest.param("neighbor 10.0.0.1", id="neighbor-alone"),
        pytest.param("shutdown now", id="shutdown-args"),
        pytest.param("show neighbor extensive", id="show-neighbor-text"),
        pytest.param("show adj-rib out extensive json", id="show-json"),
    ],
)
def test_invalid_lines(line: str) -> None:
    with pytest.raises(ValueError):
        validate_line(line)


@given(st.text(max_size=300))
def test_validate_only_raises_value_error(text: str) -> None:
    try:
        assert validate_line(text) == text
    except ValueError:
        pass


_attributes = st.builds(
    Attributes,
    med=st.none() | st.integers(0, 2**32 - 1),
    local_preference=st.none() | st.integers(0, 2**32 - 1),
    communities=st.lists(
        st.sampled_from(["no-export", "nopeer", "no-advertise"])
        | st.builds(lambda a, b: f"{a}:{b}", st.integers(0, 65535), st.integers(0, 65535)),
        max_size=4,
    ).map(tuple),
    large_communities=st.lists(
        st.builds(lambda a, b, c: f"{a}:{b}:{c}", *(st.integers(0, 2**32 - 1),) * 3), max_size=3
    ).map(tuple),
    as_path=st.lists(st.integers(1, 2**32 - 1), max_size=4).map(tuple),
)
_prefixes = st.integers(0, 2**32 - 1).map(lambda i: IPv4Network((i, 32))) | st.integers(0, 2**128 - 1).map(
    lambda i: IPv6Network((i, 128))
)


@settings(max_examples=200)
@given(
    st.dictionaries(_prefixes, st.sampled_from(range(3)), max_size=40),
    st.lists(_attributes, min_size=3, max_size=3),
    st.integers(1, 7),
)
def test_every_route_lands_in_exactly_one_valid_line(
    chosen: dict[IPv4Network | IPv6Network, int], attribute_sets: list[Attributes], batch_size: int
) -> None:
    routes = [Route(prefix=p, attributes=attribute_sets[i]) for p, i in chosen.items()]
    lines = encode_announce(routes, batch_size=batch_size)
    seen = []
    for line in lines:
        assert validate_line(line) == line
        prefixes = line.split(" nlri ")[1].split(" ")
        assert 1 <= len(prefixes) <= batch_size
        seen += prefixes
    assert sorted(seen) == sorted(str(r.prefix) for r in routes)
    assert encode_announce(reversed(routes), batch_size=batch_size) == lines


# --------------------------------------------------------------------------- parse_line

STATE_UP = (
    '{ "exabgp": "5.0.0", "time": 1795303659.0087645, "host" : "vm", "pid" : 7230, "ppid" : 1, '
    '"counter": 2, "type": "state", "neighbor": { "address": { "local": "10.0.1.2", "peer": "10.0.1.1" }, '
    '"asn": { "local": 65100, "peer": 65000 }, "router-id": "10.0.1.2" , "state": "up" } }'
)
STATE_DOWN = (
    '{ "exabgp": "5.0.0", "time": 1795303715.247336, "host" : "vm", "pid" : 7230, "ppid" : 1, "counter": 3, '
    '"type": "state", "neighbor": { "address": { "local": "fd00:1::2", "peer": "fd00:1::1" }, '
    '"asn": { "local": 65100, "peer": 65000 }, "router-id": "10.0.1.2" , "state": "down", '
    '"reason": "stop, message [shutting down]" } }'
)
SHUTDOWN = (
    '{ "exabgp": "5.0.0", "time": 1795303715.2473915, "host" : "vm", "pid" : 7230, "ppid" : 1, '
    '"type": "notification", "notification": "shutdown" }'
)
# Printed by ExaBGP 5.0.15 (api `negotiated;`, `send { parsed; notification; }`, `receive {
# parsed; notification; }`) against FRR 8.4, the second with `dont-capability-negotiate`.
NEGOTIATED = (
    '{ "exabgp": "5.0.0", "time": 1796498751.1037428, "host" : "vm", "pid" : 12456, "ppid" : 1, "counter": 3, '
    '"type": "negotiated", "neighbor": { "address": { "local": "10.0.1.2", "peer": "10.0.1.1" }, '
    '"asn": { "local": 65100, "peer": 65000 }, "router-id": "10.0.1.2" , "negotiated": { "message_size": 65535, '
    '"hold_time": 3, "asn4": true, "multisession": false, "operational": false, "refresh": "enhanced", '
    '"families": ["ipv4 unicast", "ipv4 flow"], "nexthop": [], "add_path": {"send": [], "receive": []} }  } }'
)
NEGOTIATED_NOTHING = (
    '{ "exabgp": "5.0.0", "time": 1796499108.351, "host" : "vm", "pid" : 17484, "ppid" : 1, "counter": 2, '
    '"type": "negotiated", "neighbor": { "address": { "local": "10.0.1.2", "peer": "10.0.1.1" }, '
    '"asn": { "local": 65100, "peer": 65000 }, "router-id": "10.0.1.2" , "negotiated": { "message_size": 4096, '
    '"hold_time": 3, "asn4": false, "multisession": false, "operational": false, "refresh": "absent", '
    '"families": [], "nexthop": [], "add_path": {"send": [], "receive": []} }  } }'
)
CEASE_SENT = (
    '{ "exabgp": "5.0.0", "time": 1796498935.411, "host" : "vm", "pid" : 14497, "ppid" : 1, "counter": 9, '
    '"type": "notification", "neighbor": { "address": { "local": "fd00:1::2", "peer": "fd00:1::1" }, '
    '"asn": { "local": 65100, "peer": 65000 }, "router-id": "10.0.1.2" , "direction": "send", '
    '"notification": { "code": 6, "subcode": 2, "data": "0x1741646D696E6973747261746976652053687574646F776E", '
    '"message": "\\u0017Administrative Shutdown" }  } }'
)
BAD_AS_RECEIVED = (
    '{ "exabgp": "5.0.0", "time": 1, "host" : "vm", "pid" : 1, "ppid" : 1, "counter": 1, '
    '"type": "notification", "neighbor": { "address": { "local": "10.0.1.2", "peer": "10.0.1.1" }, '
    '"asn": { "local": 65100, "peer": 65000 }, "direction": "receive", '
    '"notification": { "code": 2, "subcode": 2, "data": "0x", "message": "" }  } }'
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param("done", Ack(True), id="done"),
        pytest.param("error\n", Ack(False), id="error"),
        pytest.param('{ "answer": "done", "message": "command completed" }', Ack(True), id="json-done"),
        pytest.param('{ "answer": "error", "message": "x" }', Ack(False), id="json-error"),
        pytest.param(STATE_UP, NeighborEvent("10.0.1.1", "up"), id="json-up"),
        pytest.param(
            STATE_DOWN, NeighborEvent("fd00:1::1", "down", "stop, message [shutting down]"), id="json-down"
        ),
        pytest.param(SHUTDOWN, Shutdown(), id="json-shutdown"),
        pytest.param(
            '{ "answer": "shutdown", "message": "exbgp exited" }', Shutdown(), id="json-answer-shutdown"
        ),
        pytest.param("shutdown 7230 1", Shutdown(), id="text-shutdown"),
        pytest.param("shutdown", Shutdown(), id="text-shutdown-bare"),
        pytest.param("neighbor 10.0.1.1 up", NeighborEvent("10.0.1.1", "up"), id="text-up"),
        pytest.param(
            "neighbor fd00:1::1 connected", NeighborEvent("fd00:1::1", "connected"), id="text-connected"
        ),
        pytest.param(
            "neighbor 10.0.1.1 down - peer reset, message [closing connection]",
            NeighborEvent("10.0.1.1", "down", "peer reset, message [closing connection]"),
            id="text-down",
        ),
        pytest.param("neighbor 10.0.1.1 down", NeighborEvent("10.0.1.1", "down"), id="text-down-bare"),
        pytest.param("neighbor not-an-ip up", Unknown("neighbor not-an-ip up"), id="text-bad-peer"),
        pytest.param("neighbor 10.0.1.1 up now", Unknown("neighbor 10.0.1.1 up now"), id="text-extra"),
        pytest.param("shutdown now", Unknown("shutdown now"), id="text-shutdown-words"),
        pytest.param("donee", Unknown("donee"), id="almost-done"),
        pytest.param(
            '{ "exabgp": "5.0.0", "type": "state", "neighbor": { "address": { "peer": 7 }, "state": "up" } }',
            Unknown(
                '{ "exabgp": "5.0.0", "type": "state", "neighbor": { "address": { "peer": 7 }, "state": "up" } }'
            ),
            id="json-peer-not-a-string",
        ),
        pytest.param(
            '{"exabgp": "5.0.0", "type": "update"}',
            Unknown('{"exabgp": "5.0.0", "type": "update"}'),
            id="update",
        ),
        pytest.param("[1, 2]", Unknown("[1, 2]"), id="json-list"),
        pytest.param(
            NEGOTIATED, Negotiated("10.0.1.1", frozenset({"ipv4"}), route_refresh=True), id="negotiated"
        ),
        pytest.param(NEGOTIATED_NOTHING, Negotiated("10.0.1.1", frozenset()), id="negotiated-nothing"),
        pytest.param(
            CEASE_SENT, Notification("fd00:1::1", "send", 6, 2, "Administrative Shutdown"), id="cease-sent"
        ),
        pytest.param(BAD_AS_RECEIVED, Notification("10.0.1.1", "receive", 2, 2), id="notification-received"),
        pytest.param(
            NEGOTIATED.replace('"families": ["ipv4 unicast", "ipv4 flow"]', '"families": "ipv4 unicast"'),
            Unknown(
                NEGOTIATED.replace('"families": ["ipv4 unicast", "ipv4 flow"]', '"families": "ipv4 unicast"')
            ),
            id="negotiated-families-not-a-list",
        ),
        pytest.param(
            CEASE_SENT.replace('"code": 6', '"code": 600'),
            Unknown(CEASE_SENT.replace('"code": 6', '"code": 600')),
            id="notification-code-out-of-range",
        ),
        pytest.param(
            CEASE_SENT.replace('"direction": "send"', '"direction": "sideways"'),
            Unknown(CEASE_SENT.replace('"direction": "send"', '"direction": "sideways"')),
            id="notification-direction",
        ),
    ],
)
def test_parse_line(line: str, expected: object) -> None:
    assert parse_line(line) == expected


@given(st.text())
def test_parse_line_never_raises(text: str) -> None:
    assert isinstance(parse_line(text), codec.Message)


@given(st.sampled_from([STATE_UP, STATE_DOWN, SHUTDOWN, NEGOTIATED, CEASE_SENT]), st.data())
def test_parse_line_survives_mangled_json(line: str, data: st.DataObject) -> None:
    chars = list(line)
    for _ in range(data.draw(st.integers(1, 5))):
        position = data.draw(st.integers(0, len(chars) - 1))
        action = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        if action == "delete":
            del chars[position]
        else:
            new = data.draw(st.sampled_from([*'{}[]":,\\0 \x00\u2028', "null", "1e999", "[[[[", "true"]))
            chars[position : position + (action == "replace")] = [new]
    assert isinstance(parse_line("".join(chars)), codec.Message)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.fixed_dictionaries(
        {"exabgp": _json, "type": st.sampled_from(["state", "notification", "negotiated"]) | _json},
        optional={"neighbor": _json, "notification": _json, "answer": _json},
    )
)
def test_parse_line_survives_json_of_the_wrong_shape(message: dict[str, object]) -> None:
    assert isinstance(parse_line(json.dumps(message)), codec.Message)


def test_deeply_nested_json_is_unknown() -> None:
    assert isinstance(parse_line("{" + '"a":[' * 100_000), Unknown)
    assert not codec.is_api_event("{" + '"a":[' * 100_000)


def test_is_api_event() -> None:
    assert codec.is_api_event(STATE_UP)
    assert codec.is_api_event(SHUTDOWN)
    assert not codec.is_api_event('{"peer": {"address": "10.0.1.1"}, "route": {}}')
    assert not codec.is_api_event("neighbor 10.0.1.1 up")


# --------------------------------------------------------------------------- show adj-rib out

# Printed by ExaBGP 5.0.15 for `show adj-rib out extensive` (two neighbors, routes sent to
# both show once per neighbor), with lines added by hand for the cases it does not cover.
ADJ_RIB_OUT = """\
neighbor 10.0.1.1 local-ip 10.0.1.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 unicast 198.51.100.1/32 next-hop 10.0.1.2 as-path ( 65100 65100 ) med 100 local-preference 200 \
community [ 65000:1 65000:2 no-export ] large-community [ 1:2:3 65000:1:2 ]
neighbor 10.0.1.1 local-ip 10.0.1.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 unicast 203.0.113.5/32 next-hop 10.0.1.2
neighbor 10.0.2.1 local-ip 10.0.2.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 unicast 203.0.113.5/32 next-hop 10.0.2.2
neighbor 10.0.1.1 local-ip 10.0.1.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 unicast 10.9.9.9/32 next-hop 10.0.1.2 community 65000:1
neighbor 10.0.1.1 local-ip 10.0.1.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 unicast 203.0.113.12/32 next-hop 10.0.1.20 origin igp large-community 65000:1:2
neighbor fd00:1::1 local-ip fd00:1::2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv6 unicast fd00:cafe::1/128 next-hop fd00:1::2 med 50 community 65000:7
neighbor fd00:1::1 local-ip fd00:1::2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 unicast 203.0.113.5/32 next-hop 10.0.1.2

neighbor 10.0.1.1 local-ip 10.0.1.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 unicast 198.51.100.7/32 next-hop 10.0.1.2 origin egp
neighbor 10.0.1.1 local-ip 10.0.1.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 unicast 198.51.100.8/32 next-hop 10.0.1.2 as-path ( 65100 ) [ 1 2 ]
neighbor 10.0.1.1 local-ip 10.0.1.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 unicast 198.51.100.9/32 next-hop 10.0.1.2 atomic-aggregate
neighbor 10.0.1.1 local-ip 10.0.1.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 unicast 198.51.100.0/24 next-hop 10.0.1.2
neighbor fd00:1::1 local-ip fd00:1::2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv6 unicast 198.51.100.1/32 next-hop fd00:1::2
neighbor 10.0.1.1 local-ip 10.0.1.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open \
ipv4 flow destination-ipv4 10.0.0.1/32 next-hop 10.0.1.2
10.0.1.1 ipv4 unicast 198.51.100.1/32 next-hop 10.0.1.2
{"10.0.1.1": {"routes": [{"prefix": "198.51.100.1/32", "family": "ipv4 unicast"}]}}
garbage \x00 line
"""


def test_parse_adj_rib_out() -> None:
    result = parse_adj_rib_out_detailed(ADJ_RIB_OUT.splitlines())
    assert result.routes == {
        route(
            "198.51.100.1/32",
            med=100,
            local_preference=200,
            communities=("65000:1", "65000:2", "no-export"),
            large_communities=("1:2:3", "65000:1:2"),
            as_path=(65100, 65100),
        ),
        route("203.0.113.5/32"),
        route("10.9.9.9/32", communities=("65000:1",)),
        route("203.0.113.12/32", next_hop="10.0.1.20", large_communities=("65000:1:2",)),
        route("fd00:cafe::1/128", med=50, communities=("65000:7",)),
    }
    assert len(result.ignored) == 9
    assert parse_adj_rib_out(ADJ_RIB_OUT.splitlines()) == set(result.routes)


def test_adj_rib_out_round_trips_the_encoder_attributes() -> None:
    announced = route(
        "198.51.100.1/32",
        med=100,
        local_preference=200,
        communities=("no-export", "65000:2", "65000:1"),
        large_communities=("65000:1:2", "1:2:3"),
        as_path=(65100, 65100),
    )
    (parsed,) = parse_adj_rib_out(ADJ_RIB_OUT.splitlines()[:1])
    assert parsed == codec.canonical_route(announced)
    assert encode_announce([parsed]) == encode_announce([announced])


@given(st.lists(st.text(max_size=200), max_size=5))
def test_parse_adj_rib_out_never_raises(lines: list[str]) -> None:
    result = parse_adj_rib_out_detailed(lines)
    assert len(result.routes) + len(result.ignored) <= len(lines)


# --------------------------------------------------------------------------- show neighbor json

# Printed by ExaBGP 5.0.15 for `show neighbor json` (one line): an established IPv4 session,
# an IPv6 neighbor that is connecting, and an IPv4 session established with a router whose
# OPEN carried no capabilities (FRR `dont-capability-negotiate`).
NEIGHBORS = json.dumps(
    [
        {
            "state": "up",
            "duration": 4,
            "fsm": "ESTABLISHED",
            "local": {
                "capabilities": {"asn4": True, "route-refresh": True},
                "families": {"ipv4 unicast": True},
                "add-path": {"ipv4 unicast": False},
                "address": "10.0.1.2",
                "as": 65100,
                "id": "10.0.1.2",
                "hold": 3,
            },
            "peer": {
                "capabilities": {"asn4": True, "route-refresh": True},
                "families": {"ipv4 unicast": True},
                "address": "10.0.1.1",
                "as": 65000,
                "id": "10.0.100.1",
                "hold": 3,
            },
            "messages": {"sent": {}, "received": {}},
            "capabilities": ["asn4", "route-refresh"],
            "families": ["ipv4 unicast"],
            "add-path": {"ipv4 unicast": "disabled"},
        },
        {
            "state": "down",
            "duration": 0,
            "fsm": "CONNECT",
            "local": {"families": {"ipv6 unicast": True}, "address": "fd00:1::2"},
            "peer": {"families": {"ipv6 unicast": None}, "address": "fd00:1::1"},
            "families": [],
        },
        {
            "state": "up",
            "duration": 0,
            "fsm": "ESTABLISHED",
            "local": {"families": {"ipv4 unicast": True, "ipv6 unicast": True}, "address": "10.0.2.2"},
            "peer": {"families": {"ipv4 unicast": False, "ipv6 unicast": False}, "address": "10.0.2.1"},
            "families": [],
        },
    ]
)


def test_parse_neighbors() -> None:
    assert parse_neighbors([NEIGHBORS]) == (
        NeighborStatus("10.0.1.1", "10.0.1.2", "ESTABLISHED", frozenset({"ipv4"}), frozenset({"ipv4"})),
        NeighborStatus("fd00:1::1", "fd00:1::2", "CONNECT", frozenset({"ipv6"}), None),
        NeighborStatus("10.0.2.1", "10.0.2.2", "ESTABLISHED", frozenset({"ipv4", "ipv6"}), frozenset()),
    )
    # "up" follows ExaBGP's whole seconds since establishment; the FSM is what counts
    assert [n.established for n in parse_neighbors([NEIGHBORS])] == [True, False, True]
    assert parse_neighbors(["[]"]) == ()


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([], id="nothing"),
        pytest.param(["please specify summary, extensive or configuration"], id="text"),
        pytest.param(['{"fsm": "ESTABLISHED"}'], id="not-a-list"),
        pytest.param(['[{"fsm": "ESTABLISHED"}]'], id="no-addresses"),
        pytest.param([NEIGHBORS.replace('"10.0.1.1"', '"r1"')], id="peer-not-an-address"),
        pytest.param([NEIGHBORS.replace('"families": ["ipv4 unicast"]', '"families": 7')], id="families"),
        pytest.param([NEIGHBORS.replace('"fsm": "CONNECT"', '"fsm": "CONN ECT"')], id="fsm"),
        pytest.param([NEIGHBORS[:-1]], id="truncated"),
    ],
)
def test_parse_neighbors_refuses_what_exabgp_does_not_print(lines: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_neighbors(lines)


@given(st.lists(st.text(max_size=200), max_size=3))
def test_parse_neighbors_raises_only_value_error(lines: list[str]) -> None:
    try:
        parse_neighbors(lines)
    except ValueError:
        pass


def test_neighbors_by_family() -> None:
    assert codec.neighbors_by_family(parse_neighbors([NEIGHBORS])) == {
        4: ("10.0.1.1", "10.0.2.1"),
        6: ("10.0.2.1", "fd00:1::1"),
    }


# --------------------------------------------------------------------------- neighbor selectors

DUAL_STACK = {4: ("10.0.1.1", "10.0.2.1"), 6: ("fd00:1::1",)}


def test_each_family_goes_to_its_own_neighbors_only() -> None:
    routes = [route("198.51.100.1/32"), route("fd00:cafe::1/128"), route("198.51.100.2/32", med=5)]
    assert encode_announce(routes, neighbors=DUAL_STACK) == [
        "neighbor 10.0.1.1 , neighbor 10.0.2.1 announce attributes next-hop self nlri 198.51.100.1/32",
        "neighbor 10.0.1.1 , neighbor 10.0.2.1 announce attributes next-hop self med 5 nlri 198.51.100.2/32",
        "neighbor fd00:1::1 announce attributes next-hop self nlri fd00:cafe::1/128",
    ]
    assert encode_withdraw(routes, neighbors=DUAL_STACK) == [
        "neighbor 10.0.1.1 , neighbor 10.0.2.1 withdraw attributes nlri 198.51.100.1/32 198.51.100.2/32",
        "neighbor fd00:1::1 withdraw attributes nlri fd00:cafe::1/128",
    ]


def test_no_selector_when_every_neighbor_carries_the_family() -> None:
    routes = [route("198.51.100.1/32")]
    plain = ["announce attributes next-hop self nlri 198.51.100.1/32"]
    assert encode_announce(routes, neighbors={4: ("10.0.1.1",)}) == plain
    assert encode_announce(routes, neighbors={4: ("10.0.1.1", "fd00:1::1"), 6: ("fd00:1::1",)}) == plain
    assert encode_announce(routes) == plain


def test_a_family_no_neighbor_carries_is_refused() -> None:
    with pytest.raises(ValueError, match="no ExaBGP neighbor carries ipv6 unicast"):
        encode_announce([route("fd00:cafe::1/128")], neighbors={4: ("10.0.1.1",)})
    with pytest.raises(ValueError, match="no ExaBGP neighbor carries ipv6 unicast"):
        encode_withdraw([route("fd00:cafe::1/128")], neighbors={4: ("10.0.1.1",), 6: ()})
