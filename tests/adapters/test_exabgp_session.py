"""ExaBgpSession against an in-memory ExaBGP: two os.pipe()s, the test plays ExaBGP's side."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from ipaddress import ip_network

import pytest

from bgpvip.adapters.exabgp import (
    Eof,
    ExaBgpClosed,
    ExaBgpError,
    ExaBgpSession,
    ExaBgpTimeout,
    NeighborEvent,
    Shutdown,
)
from bgpvip.core.model import Attributes, Route

pytestmark = pytest.mark.timeout(10)

STATE_UP = (
    '{ "exabgp": "5.0.0", "time": 1.0, "host" : "vm", "pid" : 7, "ppid" : 1, "counter": 2, "type": "state", '
    '"neighbor": { "address": { "local": "10.0.1.2", "peer": "10.0.1.1" }, "asn": { "local": 65100, '
    '"peer": 65000 }, "router-id": "10.0.1.2" , "state": "up" } }'
)
RIB_LINE = (
    "neighbor 10.0.1.1 local-ip 10.0.1.2 local-as 65100 peer-as 65000 router-id 10.0.1.2 family-allowed in-open "
    "ipv4 unicast {prefix} next-hop 10.0.1.2 med 100"
)


def route(prefix: str, **attributes: object) -> Route:
    return Route(prefix=ip_network(prefix), attributes=Attributes(**attributes))  # type: ignore[arg-type]


class FakeExaBgp:
    """ExaBGP's end of the two pipes: reads the helper's commands, writes acks and events."""

    def __init__(self) -> None:
        self.to_helper_r, self.to_helper_w = os.pipe()
        self.from_helper_r, self.from_helper_w = os.pipe()
        self._commands = os.fdopen(self.from_helper_r, "rb")
        self.closed_stdin = False

    async def read_command(self) -> str:
        line = await asyncio.to_thread(self._commands.readline)
        return line.decode("ascii").rstrip("\n")

    async def read_commands(self, count: int) -> list[str]:
        return [await self.read_command() for _ in range(count)]

    def write(self, *lines: str) -> None:
        os.write(self.to_helper_w, "".join(line + "\n" for line in lines).encode())

    def close_helper_stdin(self) -> None:
        if not self.closed_stdin:
            os.close(self.to_helper_w)
            self.closed_stdin = True

    def close(self) -> None:
        self.close_helper_stdin()
        self._commands.close()
        for fd in (self.to_helper_r, self.from_helper_w):
            os.close(fd)


@pytest.fixture
async def exabgp() -> AsyncIterator[FakeExaBgp]:
    fake = FakeExaBgp()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
async def session(exabgp: FakeExaBgp) -> AsyncIterator[ExaBgpSession]:
    session = ExaBgpSession(exabgp.to_helper_r, exabgp.from_helper_w, command_timeout=2.0)
    await session.start()
    try:
        yield session
    finally:
        await session.close()
        # EOF ends the reader thread; wait for it so no thread outlives the test
        exabgp.close_helper_stdin()
        async with asyncio.timeout(2):
            while True:
                if not session.reading:
                    break
                await asyncio.sleep(0.01)


async def test_acks_match_commands_in_order_with_events_between(
    exabgp: FakeExaBgp, session: ExaBgpSession
) -> None:
    first = asyncio.create_task(session.command("clear adj-rib out", timeout=2))
    second = asyncio.create_task(session.command("flush adj-rib out", timeout=2))
    assert await exabgp.read_command() == "clear adj-rib out"
    exabgp.write(STATE_UP, "done", "")
    assert await exabgp.read_command() == "flush adj-rib out"  # only once the first was answered
    exabgp.write("neighbor 10.0.1.1 down - hold timer expired", "", "error")
    assert await first is True
    assert await second is False
    assert await session.event_queue.get() == NeighborEvent("10.0.1.1", "up")
    assert await session.event_queue.get() == NeighborEvent("10.0.1.1", "down", "hold timer expired")
    assert session.event_queue.empty()


async def test_announce_batches_and_reports_an_error_in_any_batch(
    exabgp: FakeExaBgp, session: ExaBgpSession
) -> None:
    session.batch_size = 2
    routes = [route(f"198.51.100.{i}/32", med=1) for i in range(1, 6)]

    async def exabgp_side(answers: list[str]) -> list[str]:
        seen = []
        for answer in answers:
            seen.append(await exabgp.read_command())
            exabgp.write(answer)
        return seen

    side = asyncio.create_task(exabgp_side(["done", "done", "done"]))
    assert await session.announce(routes) is True
    assert await side == [
        "announce attributes next-hop self med 1 nlri 198.51.100.1/32 198.51.100.2/32",
        "announce attributes next-hop self med 1 nlri 198.51.100.3/32 198.51.100.4/32",
        "announce attributes next-hop self med 1 nlri 198.51.100.5/32",
    ]
    side = asyncio.create_task(exabgp_side(["done", "error", "done"]))
    assert await session.withdraw(routes) is False
    assert (await side)[0] == "withdraw attributes nlri 198.51.100.1/32 198.51.100.2/32"


async def test_window_bounds_the_unacked_batches(exabgp: FakeExaBgp, session: ExaBgpSession) -> None:
    session.batch_size = 1
    session.window = 2
    announcing = asyncio.create_task(session.announce([route(f"198.51.100.{i}/32") for i in range(1, 5)]))
    assert len(await exabgp.read_commands(2)) == 2
    await asyncio.sleep(0.05)
    assert not announcing.done()
    exabgp.write("done")
    assert len(await exabgp.read_commands(1)) == 1
    exabgp.write("done")
    await exabgp.read_command()
    exabgp.write("done", "done")
    assert await announcing is True


async def test_invalid_line_is_not_sent(exabgp: FakeExaBgp, session: ExaBgpSession) -> None:
    with pytest.raises(ValueError):
        await session.command("announce route 0.0.0.0/0 next-hop self\nshutdown")
    with pytest.raises(ValueError):
        await session.announce([route("198.51.100.1/32", communities=("65000:1]\nshutdown",))])
    probe = asyncio.create_task(session.command("clear adj-rib out"))
    assert await exabgp.read_command() == "clear adj-rib out"
    exabgp.write("done")
    assert await probe


async def test_timeout_then_the_late_ack_is_not_taken_for_the_next_command(
    exabgp: FakeExaBgp, session: ExaBgpSession
) -> None:
    with pytest.raises(ExaBgpTimeout):
        await session.command("clear adj-rib out", timeout=0.05)
    nxt = asyncio.create_task(session.command("flush adj-rib out"))
    assert await exabgp.read_commands(2) == ["clear adj-rib out", "flush adj-rib out"]
    exabgp.write("done")  # late, for the command that timed out
    await asyncio.sleep(0.05)
    assert not nxt.done()
    exabgp.write("error")
    assert await nxt is False


async def test_cancelled_command_keeps_its_ack_slot(exabgp: FakeExaBgp, session: ExaBgpSession) -> None:
    cancelled = asyncio.create_task(session.command("clear adj-rib out"))
    await exabgp.read_command()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    nxt = asyncio.create_task(session.command("flush adj-rib out"))
    await exabgp.read_command()
    exabgp.write("error", "done")
    assert await nxt is True


async def test_eof_fails_waiting_commands_and_queues_eof(exabgp: FakeExaBgp, session: ExaBgpSession) -> None:
    waiting = asyncio.create_task(session.command("clear adj-rib out"))
    await exabgp.read_command()
    exabgp.write("shutdown 7 1")
    exabgp.close_helper_stdin()
    with pytest.raises(ExaBgpClosed):
        await waiting
    assert [e async for e in session.events()] == [Shutdown(), Eof()]
    assert session.closed
    with pytest.raises(ExaBgpClosed):
        await session.command("clear adj-rib out")


async def test_broken_pipe_is_closed(exabgp: FakeExaBgp) -> None:
    session = ExaBgpSession(exabgp.to_helper_r, exabgp.from_helper_w)
    await session.start()
    exabgp._commands.close()  # ExaBGP no longer reads: writes fail with EPIPE
    with pytest.raises(ExaBgpClosed):
        await session.command("clear adj-rib out")
    exabgp.close_helper_stdin()
    assert await session.event_queue.get() == Eof()


async def test_adj_rib_out_collects_output_but_not_events(exabgp: FakeExaBgp, session: ExaBgpSession) -> None:
    dump = asyncio.create_task(session.adj_rib_out())
    assert await exabgp.read_command() == "show adj-rib out extensive"
    exabgp.write(
        RIB_LINE.format(prefix="198.51.100.1/32"),
        STATE_UP,
        "neighbor 10.0.1.1 up",
        "",
        RIB_LINE.format(prefix="198.51.100.2/32"),
        "something ExaBGP 5.1 might print",
        "done",
    )
    assert await dump == {route("198.51.100.1/32", med=100), route("198.51.100.2/32", med=100)}
    assert await session.event_queue.get() == NeighborEvent("10.0.1.1", "up")
    assert await session.event_queue.get() == NeighborEvent("10.0.1.1", "up")


async def test_lines_split_across_reads_are_put_back_together(
    exabgp: FakeExaBgp, session: ExaBgpSession
) -> None:
    """The reader hands over whole lines per read, however ExaBGP's writes cut them."""
    dump = asyncio.create_task(session.adj_rib_out())
    await exabgp.read_command()
    text = "".join(RIB_LINE.format(prefix=f"198.51.100.{i}/32") + "\n" for i in range(1, 4)) + "done\n"
    pieces = [text[:17], text[17:150], text[150:151], text[151:-3], text[-3:]]
    for piece in pieces:
        os.write(exabgp.to_helper_w, piece.encode())
        await asyncio.sleep(0.01)  # separate reads on the helper's side
    assert await dump == {route(f"198.51.100.{i}/32", med=100) for i in range(1, 4)}


async def test_an_unchanged_dump_is_not_parsed_again(exabgp: FakeExaBgp, session: ExaBgpSession) -> None:
    async def dump(method: str, *prefixes: str) -> object:
        task = asyncio.create_task(getattr(session, method)())
        assert await exabgp.read_command() == "show adj-rib out extensive"
        exabgp.write(*(RIB_LINE.format(prefix=p) for p in prefixes), "done")
        return await task

    assert await dump("adj_rib_out", "198.51.100.1/32") == {route("198.51.100.1/32", med=100)}
    assert await dump("adj_rib_out_changed", "198.51.100.1/32") is None  # same text as last time
    changed = await dump("adj_rib_out_changed", "198.51.100.1/32", "198.51.100.2/32")
    assert changed == {route("198.51.100.1/32", med=100), route("198.51.100.2/32", med=100)}
    assert await dump("adj_rib_out_changed", "198.51.100.1/32", "198.51.100.2/32") is None
    assert await dump("adj_rib_out_changed", "198.51.100.1/32") == {route("198.51.100.1/32", med=100)}


async def test_adj_rib_out_error(exabgp: FakeExaBgp, session: ExaBgpSession) -> None:
    dump = asyncio.create_task(session.adj_rib_out())
    await exabgp.read_command()
    exabgp.write("error")
    with pytest.raises(ExaBgpError):
        await dump


async def test_noise_does_not_stop_the_session(exabgp: FakeExaBgp, session: ExaBgpSession) -> None:
    os.write(exabgp.to_helper_w, b"\xff\xfe garbage \x00\n{not json\n" + b"x" * 300_000 + b"\ndone\n")
    waiting = asyncio.create_task(session.command("clear adj-rib out"))
    await exabgp.read_command()
    exabgp.write("done")
    assert await waiting is True  # the first `done` had no command: it is logged and dropped
    assert session.unknown_lines >= 3


async def test_command_before_start_is_an_error(exabgp: FakeExaBgp) -> None:
    session = ExaBgpSession(exabgp.to_helper_r, exabgp.from_helper_w)
    with pytest.raises(RuntimeError):
        await session.command("clear adj-rib out")


async def test_wait_parent_gone(exabgp: FakeExaBgp) -> None:
    parents = iter([100, 100, 100, 1])
    session = ExaBgpSession(exabgp.to_helper_r, exabgp.from_helper_w, getppid=lambda: next(parents))
    async with asyncio.timeout(1):
        await session.wait_parent_gone(interval=0.01)


async def test_binary_streams_work_too(exabgp: FakeExaBgp) -> None:
    with (
        os.fdopen(exabgp.to_helper_r, "rb", closefd=False) as stdin,
        os.fdopen(exabgp.from_helper_w, "wb", closefd=False) as stdout,
    ):
        async with ExaBgpSession(stdin, stdout) as session:
            waiting = asyncio.create_task(session.command("clear adj-rib out"))
            assert await exabgp.read_command() == "clear adj-rib out"
            exabgp.write("done")
            assert await waiting
            exabgp.close_helper_stdin()
            assert await session.event_queue.get() == Eof()


def notification(peer: str, direction: str = "send", code: int = 6, subcode: int = 2) -> str:
    return (
        '{ "exabgp": "5.0.0", "time": 1.0, "host" : "vm", "pid" : 7, "ppid" : 1, "counter": 9, '
        f'"type": "notification", "neighbor": {{ "address": {{ "local": "x", "peer": "{peer}" }}, '
        f'"asn": {{ "local": 65100, "peer": 65000 }}, "direction": "{direction}", '
        f'"notification": {{ "code": {code}, "subcode": {subcode}, "data": "0x", "message": "" }} }} }}'
    )


NEIGHBORS_JSON = (
    '[{"state": "up", "duration": 4, "fsm": "ESTABLISHED", "local": {"families": {"ipv4 unicast": true}, '
    '"address": "10.0.1.2"}, "peer": {"families": {"ipv4 unicast": true}, "address": "10.0.1.1"}, '
    '"families": ["ipv4 unicast"]}, {"state": "down", "duration": 0, "fsm": "ACTIVE", "local": {"families": '
    '{"ipv6 unicast": true}, "address": "fd00:1::2"}, "peer": {"families": {"ipv6 unicast": null}, '
    '"address": "fd00:1::1"}, "families": []}]'
)


async def test_neighbor_status_reads_show_neighbor_json(exabgp: FakeExaBgp, session: ExaBgpSession) -> None:
    task = asyncio.create_task(session.neighbor_status())
    assert await exabgp.read_command() == "show neighbor json"
    exabgp.write(STATE_UP, NEIGHBORS_JSON, "done")
    statuses = await task
    assert [(n.peer, n.fsm, n.negotiated) for n in statuses] == [
        ("10.0.1.1", "ESTABLISHED", frozenset({"ipv4"})),
        ("fd00:1::1", "ACTIVE", None),
    ]
    assert await session.event_queue.get() == NeighborEvent("10.0.1.1", "up")


async def test_neighbor_status_that_is_not_json_is_an_error(
    exabgp: FakeExaBgp, session: ExaBgpSession
) -> None:
    task = asyncio.create_task(session.neighbor_status())
    assert await exabgp.read_command() == "show neighbor json"
    exabgp.write("please specify summary, extensive or configuration", "done")
    with pytest.raises(ExaBgpError, match="printed no JSON"):
        await task


async def test_announcements_name_the_neighbors_of_their_family(
    exabgp: FakeExaBgp, session: ExaBgpSession
) -> None:
    session.neighbors = {4: ("10.0.1.1",), 6: ("fd00:1::1",)}
    task = asyncio.create_task(session.announce([route("198.51.100.1/32"), route("fd00:cafe::1/128")]))
    assert (
        await exabgp.read_command()
        == "neighbor 10.0.1.1 announce attributes next-hop self nlri 198.51.100.1/32"
    )
    exabgp.write("done")
    assert await exabgp.read_command() == (
        "neighbor fd00:1::1 announce attributes next-hop self nlri fd00:cafe::1/128"
    )
    exabgp.write("done")
    assert await task is True


async def test_cease_then_shutdown_as_soon_as_every_notification_is_out(
    exabgp: FakeExaBgp, session: ExaBgpSession
) -> None:
    task = asyncio.create_task(session.cease_and_shutdown(["10.0.1.1", "fd00:1::1"], wait=5))
    assert await exabgp.read_command() == "neighbor * teardown 2"
    # a NOTIFICATION received, or sent to a peer not waited for, changes nothing
    exabgp.write(
        "done", notification("10.0.1.1", "receive"), notification("10.0.9.9"), notification("10.0.1.1")
    )
    await asyncio.sleep(0.05)
    assert not task.done()
    exabgp.write(notification("fd00:1::1"))
    assert await exabgp.read_command() == "shutdown"
    assert await task is True
    exabgp.write("shutdown in progress", "done")
    events = [await session.event_queue.get() for _ in range(4)]
    assert [(e.peer, e.direction) for e in events] == [  # type: ignore[union-attr]
        ("10.0.1.1", "receive"),
        ("10.0.9.9", "send"),
        ("10.0.1.1", "send"),
        ("fd00:1::1", "send"),
    ]
    # the ack of `shutdown` was consumed: the next command gets its own
    nxt = asyncio.create_task(session.command("flush adj-rib out"))
    assert await exabgp.read_command() == "flush adj-rib out"
    exabgp.write("error")
    assert await nxt is False


async def test_cease_with_no_session_up_stops_exabgp_at_once(
    exabgp: FakeExaBgp, session: ExaBgpSession
) -> None:
    task = asyncio.create_task(session.cease_and_shutdown([], wait=5))
    assert await exabgp.read_command() == "neighbor * teardown 2"
    exabgp.write("done")
    assert await exabgp.read_command() == "shutdown"
    assert await task is True


async def test_cease_stops_exabgp_after_the_wait_when_a_notification_never_comes(
    exabgp: FakeExaBgp, session: ExaBgpSession
) -> None:
    task = asyncio.create_task(session.cease_and_shutdown(["10.0.1.1"], wait=0.2))
    assert await exabgp.read_command() == "neighbor * teardown 2"
    exabgp.write("done")
    assert await exabgp.read_command() == "shutdown"
    assert await task is False
