"""`ExaBgpSession`: bgpvip's side of the ExaBGP API pipe, for the reconcile loop.

I/O side. ExaBGP writes acks, command output and events into one stream (our stdin) with
blocking writes; a helper that stops reading stalls ExaBGP's reactor, keepalives stop and
every BGP session drops. So a dedicated thread reads stdin from start to EOF whatever the
loop is doing, and hands each line to the event loop. There, `done`/`error` complete the
oldest outstanding command (ExaBGP answers in order), neighbor events and `shutdown` go to
`event_queue`, and other lines are output of the oldest command (`show adj-rib out`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ipaddress
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

from bgpvip import logs
from bgpvip.adapters.exabgp import codec
from bgpvip.core.model import Route

log = logs.get("exabgp")

DEFAULT_COMMAND_TIMEOUT = 10.0
"""Seconds to wait for the ack of one command. ExaBGP acks a batch of 1,000 routes in tens of
milliseconds; ten seconds means it is stuck, not slow."""

DEFAULT_DUMP_TIMEOUT = 60.0
"""Seconds to wait for `show adj-rib out` to finish: 10,000 routes times several peers."""

DEFAULT_WINDOW = 1
"""Batches in flight before waiting for the oldest ack. Default 1: with 10,000 /32s in batches
of 1,000 against FRR (ExaBGP 5.0.15, 2 cores) windows of 1, 2, 4 and 10 all took 1.5-2.2 s to
the last ack; ExaBGP's CPU is the limit, not the round trip. The window only applies to
announce/withdraw batches, which ExaBGP always answers from its ordered queue."""


class ExaBgpError(Exception):
    """Talking to ExaBGP failed."""


class ExaBgpTimeout(ExaBgpError, TimeoutError):
    """ExaBGP did not answer in time. Transient: retry with backoff."""


class ExaBgpClosed(ExaBgpError, ConnectionError):
    """ExaBGP closed the pipe (it exited or is restarting us). Nothing more can be sent."""


@dataclass(eq=False)
class _Pending:
    line: str
    future: asyncio.Future[bool]
    output: list[str] | None = None
    abandoned: bool = False


_READ_SIZE = 1 << 16


def _digest(lines: list[str]) -> bytes:
    return hashlib.blake2b("\n".join(lines).encode(), digest_size=16).digest()


class ExaBgpSession:
    """Commands to ExaBGP with their acks, and the events ExaBGP sends.

    `stdin` is what ExaBGP writes to (the helper's standard input), `stdout` what it reads
    (the helper's standard output); both default to the process's own. Use as
    `async with ExaBgpSession() as session:` or call `start()` and `close()`.
    """

    def __init__(
        self,
        stdin: BinaryIO | int | None = None,
        stdout: BinaryIO | int | None = None,
        *,
        batch_size: int = codec.DEFAULT_BATCH_SIZE,
        window: int = DEFAULT_WINDOW,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        dump_timeout: float = DEFAULT_DUMP_TIMEOUT,
        getppid: Callable[[], int] = os.getppid,
    ):
        if window < 1:
            raise ValueError("window must be at least 1")
        self._reader = self._binary_reader(sys.stdin.buffer if stdin is None else stdin)
        self._writer = sys.stdout.buffer if stdout is None else stdout
        self.batch_size = batch_size
        self.window = window
        self.command_timeout = command_timeout
        self.dump_timeout = dump_timeout
        self._getppid = getppid
        self._ppid = getppid()
        self.event_queue: asyncio.Queue[codec.Event] = asyncio.Queue()
        """NeighborEvent, Negotiated, Notification, Shutdown, and one Eof when ExaBGP closes
        the pipe."""
        self.neighbors: codec.Neighbors | None = None
        """Peer addresses by IP version: announcements and withdrawals of a family go to these
        neighbors only (`codec.neighbor_selector`). None: to every neighbor."""
        self.unknown_lines = 0
        """Lines that were neither an ack, an event nor expected output (logged at debug)."""
        self._pending: collections.deque[_Pending] = collections.deque()
        self._write_lock = asyncio.Lock()
        # One command (or one run of batches) at a time: ExaBGP answers some commands on the
        # spot (`flush adj-rib out` with no peer up) and queues others (announce), so an
        # immediate answer could overtake a queued one if two callers interleaved.
        self._command_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._eof = False
        self._rib_digest: bytes | None = None
        self._cease_waiting: set[str] | None = None
        """Established peers whose Cease NOTIFICATION has not been reported sent yet."""
        self._cease_done: asyncio.Future[bool] | None = None
        self._shutdown_task: asyncio.Future[_Pending] | None = None

    @staticmethod
    def _binary_reader(stream: BinaryIO | int) -> BinaryIO:
        if isinstance(stream, int):
            # closefd=False: the descriptor belongs to the caller (or is our own stdin)
            return os.fdopen(stream, "rb", closefd=False)
        return stream

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start reading stdin. Call it first thing: ExaBGP blocks while nobody reads."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._read_forever, name="exabgp-stdin", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Fail the commands still waiting. The reader thread ends at EOF on stdin."""
        self._fail_pending(ExaBgpClosed("session closed"))
        self._eof = True

    async def __aenter__(self) -> ExaBgpSession:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True after EOF on stdin or close(): commands raise ExaBgpClosed."""
        return self._eof

    @property
    def reading(self) -> bool:
        """True while the reader thread runs (until ExaBGP closes our stdin)."""
        return self._thread is not None

    # ------------------------------------------------------------------ reading (thread)

    def _read_forever(self) -> None:
        """Hand the loop every complete line that has arrived, in one call per read: a
        `show adj-rib out` of 10,000 routes is 10,000 lines, and a wake-up of the loop per line
        cost more than parsing them. Lines longer than MAX_LINE_LENGTH come in pieces."""
        read = getattr(self._reader, "read1", None) or self._reader.read
        rest = b""
        try:
            while chunk := read(_READ_SIZE):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                while len(rest) >= codec.MAX_LINE_LENGTH:
                    lines.append(rest[: codec.MAX_LINE_LENGTH])
                    rest = rest[codec.MAX_LINE_LENGTH :]
                if lines and not self._post(self._on_lines, lines):
                    return
            if rest:
                self._post(self._on_lines, [rest])
        except Exception as e:  # a read error ends the stream exactly like EOF does
            self._post(log.error, logs.kv("exabgp_read_failed", error=repr(e)))
        self._post(self._on_eof)

    def _post(self, callback: Callable[..., object], *args: object) -> bool:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            return False
        return True

    # ------------------------------------------------------------------ dispatch (loop)

    def _on_lines(self, lines: list[bytes]) -> None:
        for raw in lines:
            self._on_line(raw)

    def _on_line(self, raw: bytes) -> None:
        line = raw.decode("ascii", errors="replace").rstrip("\r\n")
        if not line.strip():
            return  # the text encoder ends every event with an empty line
        message = codec.parse_line(line)
        if isinstance(message, codec.Ack):
            self._on_ack(message.ok, line)
        elif isinstance(
            message, codec.NeighborEvent | codec.Negotiated | codec.Notification | codec.Shutdown
        ):
            self.event_queue.put_nowait(message)
            if isinstance(message, codec.Notification):
                self._on_notification(message)
        elif self._pending and self._pending[0].output is not None and not codec.is_api_event(line):
            self._pending[0].output.append(line)
        else:
            self.unknown_lines += 1
            log.debug(logs.kv("exabgp_unknown_line", line=line[:200]))

    def _on_ack(self, ok: bool, line: str) -> None:
        if not self._pending:
            log.warning(logs.kv("exabgp_unexpected_ack", line=line))
            return
        pending = self._pending.popleft()
        if pending.abandoned:
            log.info(logs.kv("exabgp_late_ack", ok=ok, command=pending.line[:80]))
        elif not pending.future.done():
            pending.future.set_result(ok)

    def _on_eof(self) -> None:
        self._eof = True
        self._thread = None
        self._fail_pending(ExaBgpClosed("ExaBGP closed the API pipe"))
        self.event_queue.put_nowait(codec.Eof())

    def _fail_pending(self, error: ExaBgpError) -> None:
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                pending.future.set_exception(error)
                # retrieved here so an abandoned or cancelled waiter never logs "never retrieved"
                pending.future.exception()

    # ------------------------------------------------------------------ writing

    async def _send(self, line: str, *, collect: bool = False) -> _Pending:
        """Write one validated line and register it for its ack, in that order of the pipe."""
        codec.validate_line(line)
        if self._thread is None and not self._eof:
            raise RuntimeError("ExaBgpSession.start() was not called")
        if self._eof:
            raise ExaBgpClosed("ExaBGP closed the API pipe")
        assert self._loop is not None
        pending = _Pending(line, self._loop.create_future(), [] if collect else None)
        data = line.encode("ascii") + b"\n"
        async with self._write_lock:
            # registered before the bytes leave: the ack may come back before the write returns
            self._pending.append(pending)
            try:
                await asyncio.to_thread(self._write_blocking, data)
            except OSError as e:
                with contextlib.suppress(ValueError):
                    self._pending.remove(pending)
                raise ExaBgpClosed(f"cannot write to ExaBGP: {e}") from e
        return pending

    def _write_blocking(self, data: bytes) -> None:
        if isinstance(self._writer, int):
            view = memoryview(data)
            while view:
                view = view[os.write(self._writer, view) :]
        else:
            self._writer.write(data)
            self._writer.flush()

    async def _wait(self, pending: _Pending, limit: float) -> bool:
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), limit)
        except TimeoutError:
            # The ack may still come; it must be consumed by this entry, not the next command.
            pending.abandoned = True
            raise ExaBgpTimeout(f"no answer from ExaBGP within {limit:g}s to {pending.line[:80]!r}") from None
        except asyncio.CancelledError:
            pending.abandoned = True
            raise

    # an explicit timeout rather than the caller's asyncio.timeout(): expiry must raise the
    # transient ExaBgpTimeout and leave the command's slot in place for its late ack
    async def command(self, line: str, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Send one command and wait for its ack: True for `done`, False for `error`.

        Raises ValueError for a line that fails validation (nothing is sent), ExaBgpTimeout,
        or ExaBgpClosed."""
        async with self._command_lock:
            pending = await self._send(line)
            return await self._wait(pending, self.command_timeout if timeout is None else timeout)

    async def _run_batches(self, lines: Sequence[str]) -> bool:
        # ExaBGP runs announce/withdraw commands in order and answers each once, so a small
        # window of unacked batches only hides the round trip.
        limit = self.command_timeout
        waiting: collections.deque[_Pending] = collections.deque()
        ok = True
        async with self._command_lock:
            for line in lines:
                if len(waiting) >= self.window:
                    ok &= await self._wait(waiting.popleft(), limit)
                waiting.append(await self._send(line))
            while waiting:
                ok &= await self._wait(waiting.popleft(), limit)
        return ok

    async def announce(self, routes: Sequence[Route]) -> bool:
        """Announce routes in batches; True only if ExaBGP answered `done` to every batch.
        Each batch waits at most `command_timeout` for its ack."""
        lines = codec.encode_announce(routes, batch_size=self.batch_size, neighbors=self.neighbors)
        return await self._run_batches(lines)

    async def withdraw(self, routes: Sequence[Route]) -> bool:
        """Withdraw routes (by prefix) in batches; True only if every batch was `done`."""
        lines = codec.encode_withdraw(routes, batch_size=self.batch_size, neighbors=self.neighbors)
        return await self._run_batches(lines)

    async def adj_rib_out(self) -> set[Route]:
        """What ExaBGP holds for its peers, from `show adj-rib out extensive`.

        Routes stay in ExaBGP when a helper exits, so a new helper starts from this."""
        return self._parse_rib(await self._dump_rib())

    async def adj_rib_out_changed(self) -> set[Route] | None:
        """`adj_rib_out`, or None when ExaBGP printed exactly what it printed the last time
        (either method): a periodic resync of 10,000 unchanged routes then costs reading and
        hashing the text, not parsing it again."""
        lines = await self._dump_rib()
        if self._rib_digest == _digest(lines):
            return None
        return self._parse_rib(lines)

    async def _dump_rib(self) -> list[str]:
        return await self._dump(codec.ADJ_RIB_OUT_COMMAND, self.dump_timeout)

    async def _dump(self, command: str, limit: float) -> list[str]:
        async with self._command_lock:
            pending = await self._send(command, collect=True)
            ok = await self._wait(pending, limit)
        if not ok:
            raise ExaBgpError(f"ExaBGP answered `error` to {command}")
        assert pending.output is not None
        return pending.output

    async def neighbor_status(self) -> tuple[codec.NeighborStatus, ...]:
        """Every configured neighbor with its state and families, from `show neighbor json`:
        a helper ExaBGP (re)started knows nothing of the sessions until it asks.
        Raises ExaBgpError when ExaBGP's answer is not what ExaBGP 5 prints."""
        lines = await self._dump(codec.NEIGHBORS_COMMAND, self.command_timeout)
        try:
            return codec.parse_neighbors(lines)
        except ValueError as e:
            raise ExaBgpError(str(e)) from None

    async def cease_and_shutdown(self, established: Collection[str], wait: float = 2.0) -> bool:
        """Close every session with a Cease / Administrative Shutdown NOTIFICATION, then stop
        ExaBGP. True when ExaBGP reported a NOTIFICATION sent to every peer in `established`
        within `wait` seconds (ExaBGP is told to stop either way).

        ExaBGP's own shutdown closes sessions without a NOTIFICATION, and its `teardown`
        reconnects at once, so `shutdown` is written the moment the last NOTIFICATION is
        reported (from the line handler, not after a trip through the event loop's queue):
        a reconnection must not get as far as an established session. The session needs the
        neighbors' `send { parsed; notification; }` API flags (see render.py)."""
        assert self._loop is not None
        waiting = {str(ipaddress.ip_address(p)) for p in established}
        self._cease_done = self._loop.create_future()
        self._cease_waiting = waiting
        try:
            ok = await self.command(codec.CEASE_COMMAND)
            if not ok or not waiting:
                self._finish_cease()
            try:
                await asyncio.wait_for(asyncio.shield(self._cease_done), wait)
            except TimeoutError:
                log.warning(logs.kv("exabgp_cease_timeout", peers=",".join(sorted(waiting)) or None))
                self._finish_cease()
            return ok and not waiting
        finally:
            self._cease_waiting = None

    def _on_notification(self, message: codec.Notification) -> None:
        if self._cease_waiting is None or message.direction != "send":
            return
        self._cease_waiting.discard(message.peer)
        if not self._cease_waiting:
            self._finish_cease()

    def _finish_cease(self) -> None:
        """Write `shutdown` now: from the line handler when the last NOTIFICATION is out."""
        if self._cease_done is None or self._cease_done.done():
            return
        self._cease_done.set_result(True)
        if self._eof:
            return
        if self._write_lock.locked():
            # another command is between registering its ack and writing: keep the order
            self._shutdown_task = asyncio.ensure_future(self._send(codec.SHUTDOWN_COMMAND))
            return
        assert self._loop is not None
        pending = _Pending(codec.SHUTDOWN_COMMAND, self._loop.create_future())
        pending.abandoned = True  # nobody waits for this ack
        self._pending.append(pending)
        try:
            self._write_blocking(codec.SHUTDOWN_COMMAND.encode("ascii") + b"\n")
        except OSError as e:
            self._pending.remove(pending)
            log.warning(logs.kv("exabgp_shutdown_write_failed", error=e))

    def _parse_rib(self, lines: list[str]) -> set[Route]:
        self._rib_digest = _digest(lines)
        result = codec.parse_adj_rib_out_detailed(lines)
        if result.ignored:
            log.warning(
                logs.kv(
                    "exabgp_adj_rib_out_ignored", lines=len(result.ignored), first=result.ignored[0][:200]
                )
            )
        return set(result.routes)

    # ------------------------------------------------------------------ events and parent

    async def events(self) -> AsyncIterator[codec.Event]:
        """Events as they come; ends after Eof."""
        while True:
            event = await self.event_queue.get()
            yield event
            if isinstance(event, codec.Eof):
                return

    async def wait_parent_gone(self, interval: float = 0.5) -> None:
        """Return once our parent process changes (ExaBGP exited and we were re-parented).

        A parent of 1 counts as gone too: ExaBGP may have died before this session was made,
        and ExaBGP itself is never PID 1 (in a container, `bgpvip run` is)."""
        while True:
            ppid = self._getppid()
            if ppid != self._ppid or ppid == 1:
                return
            await asyncio.sleep(interval)
