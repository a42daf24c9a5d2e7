"""Health probes: http(s), tcp and exec checks that turn a target's state into `ProbeResult` values.

I/O side of the line. A probe talks to the network or starts a process; it never decides
anything. `run()` never raises (cancellation aside) and always ends within the check's
`timeout`. `wait_broken()` lets the loop notice a dead target between two probes instead of
at the next one: http and tcp probes hold one idle connection to the target and report when
it dies. `run_check()` is the loop for one check; the pure health machine lives in the core.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from bgpvip import __version__
from bgpvip.core.config import ExecCheck, HttpCheck, KubeApiserverCheck, TcpCheck
from bgpvip.core.model import ProbeResult
from bgpvip.core.text import clip
from bgpvip.tls import TlsFiles, TlsMaterial, TlsSetupError

log = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024
"""Longest status line plus headers accepted from a server."""
_MAX_BODY = 64 * 1024
"""Body bytes read and discarded to keep a connection reusable; a longer body ends the connection."""
_MAX_OUTPUT = 4096
"""Bytes of an exec check's stdout and stderr kept (the rest is drained and dropped)."""
_MAX_DETAIL = 200
"""Characters of a result's detail kept: room for an error naming a file by its full path."""
_RECONNECT_BURST = 3
"""Reconnect tests allowed per `interval` between probes. More than one, because a killed server's
listening socket can still complete one handshake while the process is being torn down."""
_CLOSE_GRACE = 0.25
"""Seconds a graceful close (TLS close_notify) may take before the connection is aborted."""
_REAP_GRACE = 1.0
"""Seconds to wait for a killed process group leader to be reaped."""
_EXIT_FLUSH = 0.1
"""Seconds to wait for an exited command's pipes to reach EOF (a detached grandchild may hold them)."""


class Probe(Protocol):
    """What `run_check` needs from a probe. Fakes in the daemon tests implement the same three methods."""

    async def run(self) -> ProbeResult:
        """Probe once; never raises, ends within the check's timeout."""
        ...

    async def wait_broken(self) -> None:
        """Return when the target is seen to die between probes; may never return."""
        ...

    async def aclose(self) -> None:
        """Release connections; the probe may still be run again afterwards."""
        ...


def make_probe(check: HttpCheck | KubeApiserverCheck | TcpCheck | ExecCheck) -> Probe:
    """The probe for one configured check."""
    if isinstance(check, KubeApiserverCheck):
        return HttpProbe(check.as_http())
    if isinstance(check, HttpCheck):
        return HttpProbe(check)
    if isinstance(check, TcpCheck):
        return TcpProbe(check)
    return ExecProbe(check)


async def run_check(
    probe: Probe,
    *,
    emit: Callable[[ProbeResult], None],
    next_delay: Callable[[], float],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Probe, `emit` the result, pause `next_delay()` seconds or until `wait_broken()` fires; repeat.

    Results are stamped with `clock()` when emitted, so the health machine sees times from the
    same clock as the rest of the loop (a fake one in tests). Runs until cancelled and closes
    the probe on the way out.
    """
    try:
        while True:
            result = await probe.run()
            emit(dataclasses.replace(result, at=clock()))
            await _pause(probe, next_delay())
    finally:
        await probe.aclose()


async def _pause(probe: Probe, delay: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(delay, 0.0)
    watch = asyncio.create_task(probe.wait_broken())
    try:
        await asyncio.wait({watch}, timeout=max(delay, 0.0))
    finally:
        if not watch.done():
            watch.cancel()
        # The probe's connection must be idle again before the next run() reads from it.
        await asyncio.wait({watch})
    if not watch.cancelled() and (exc := watch.exception()) is not None:
        log.warning("wait_broken failed, probing on the timer only this time: %r", exc)
        await asyncio.sleep(max(0.0, deadline - loop.time()))


def _result(ok: bool, detail: str, start: float, *, broken: bool = False) -> ProbeResult:
    now = time.monotonic()
    return ProbeResult(ok=ok, detail=_shorten(detail), duration=now - start, at=now, broken=broken)


def _shorten(text: str) -> str:
    # details quote what a server or a command sent, which has no size limit
    return clip(text, _MAX_DETAIL)


def _timed_out(timeout: float) -> str:
    return f"timed out after {timeout}s"


def _describe_error(exc: BaseException) -> tuple[str, bool]:
    """(detail, broken) for a failed connection or exchange."""
    if isinstance(exc, TlsSetupError):
        return f"TLS setup: {exc}", False
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message}", False
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
        return f"TLS: {reason}", False
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", True
    if isinstance(exc, ConnectionResetError):
        return "connection reset", True
    if isinstance(exc, _RejectedAfterHandshake):
        return "TLS: closed by the server after the handshake (client certificate rejected?)", False
    if isinstance(exc, _NoResponse):
        return _describe_error(exc.cause) if exc.cause is not None else ("connection closed", True)
    if isinstance(exc, _ClosedError | asyncio.IncompleteReadError):
        return "connection closed mid-response", True
    if isinstance(exc, BrokenPipeError):
        return "connection closed", True
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}", False
    if isinstance(exc, _HttpProtocolError):
        return f"bad HTTP response: {exc}", False
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)).lower(), False
    return f"probe error: {type(exc).__name__}: {exc}", False


class _NoResponse(Exception):
    """The connection died before the first response byte: EOF (cause None), RST or a TLS error."""

    def __init__(self, cause: OSError | None):
        super().__init__(cause)
        self.cause = cause


class _ClosedError(Exception):
    """The server closed the connection in the middle of a response."""


class _RejectedAfterHandshake(Exception):
    """A fresh TLS connection closed by the server before any response byte."""


class _HttpProtocolError(Exception):
    """The server's answer is not HTTP/1.x as this client understands it."""


# --------------------------------------------------------------------------- connections


@dataclass(slots=True, eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def looks_alive(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await self.writer.wait_closed()
        except BaseException as exc:
            self.abort()
            if not isinstance(exc, Exception):
                raise


async def _open_stream(
    host: str, port: int, *, ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None
) -> _Conn:
    """Connect to each address of `host` in turn; the first error is raised when all fail.

    asyncio's own multi-address connect merges the errors of all addresses into one message,
    which would hide a plain "connection refused" when `localhost` has both ::1 and 127.0.0.1.
    """
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    first_error: OSError | None = None
    for address in addresses:
        try:
            reader, writer = await asyncio.open_connection(
                address,
                port,
                ssl=ssl_context,
                server_hostname=server_hostname if ssl_context else None,
                limit=_MAX_HEAD,
            )
        except ssl.SSLError:
            raise
        except OSError as exc:
            first_error = first_error or exc
            continue
        return _Conn(reader, writer)
    raise first_error or OSError(f"{host} has no address")


class _WatchedTarget:
    """One idle connection to the target, watched between probes, for `wait_broken()`.

    A connection that ends (EOF or RST) does not by itself mean the target died: servers close
    idle connections by design. So a fresh connection is tried at once; only when that fails is
    the target reported broken. At most `_RECONNECT_BURST` such tests run per `interval`, so a
    server that closes every connection right away costs a few connections per interval, never
    a spin.
    """

    def __init__(self, *, interval: float, timeout: float):
        self._interval = interval
        self._timeout = timeout
        self._idle: _Conn | None = None
        self._reachable = False
        self._reconnects: collections.deque[float] = collections.deque(maxlen=_RECONNECT_BURST)

    async def _open(self) -> _Conn:
        raise NotImplementedError

    def _idle_data_ok(self) -> bool:
        """Whether bytes arriving on the idle connection are harmless (a greeting banner)."""
        return True

    async def _connect(self) -> _Conn:
        try:
            conn = await self._open()
        except BaseException:
            self._reachable = False
            raise
        self._reachable = True
        return conn

    async def wait_broken(self) -> None:
        after_eof = False
        while True:
            if self._idle is None:
                if not self._reachable:
                    # Already known down (or never probed): the next probe says when it is back.
                    await asyncio.get_running_loop().create_future()
                if after_eof:
                    recent = self._reconnects
                    if len(recent) == recent.maxlen:
                        await asyncio.sleep(max(0.0, recent[0] + self._interval - time.monotonic()))
                    recent.append(time.monotonic())
                try:
                    async with asyncio.timeout(self._timeout):
                        self._idle = await self._connect()
                except Exception as exc:
                    log.debug("target unreachable between probes: %r", exc)
                    return
            conn = self._idle
            await self._until_closed(conn)
            self._idle = None
            conn.abort()
            after_eof = True

    async def _until_closed(self, conn: _Conn) -> None:
        received = 0
        while True:
            try:
                data = await conn.reader.read(4096)
            except (OSError, EOFError):
                return
            if not data or not self._idle_data_ok():
                return
            received += len(data)
            if received > _MAX_BODY:
                return

    async def aclose(self) -> None:
        conn, self._idle = self._idle, None
        if conn is not None:
            await conn.close()


# --------------------------------------------------------------------------- http


def _quickack(conn: _Conn) -> None:
    """ACK the answer at once instead of after Linux's delayed-ACK timer (40 ms or more).

    A server with Nagle on that writes the headers and the body in two segments (Python's
    http.server, many small health endpoints) holds the body until the headers are ACKed; on a
    kept-alive connection probed every few tens of ms the kernel delays that ACK, and each probe
    took ~43 ms instead of <1 ms (measured, docs/performance.md). The flag is not sticky, so it
    is set again for every request."""
    sock = conn.writer.get_extra_info("socket")
    if sock is not None and _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class HttpProbe(_WatchedTarget):
    """An HTTP/1.1 GET (or HEAD, POST, OPTIONS) over one kept-alive connection.

    The connection is reused between probes, so a 100 ms probe to a TLS endpoint costs one
    request, not a handshake. A reused connection that the server closed while idle is
    replaced transparently: the request is retried once on a fresh connection when the old
    one died before any response byte.

    TLS material (CA, client certificate and key) is looked at on every probe and loaded again
    when a file changed (`bgpvip.tls.TlsMaterial`): after `kubeadm reset` and a new `kubeadm
    init`, or a CA rotation, the next probe trusts the new CA, on a new connection. A file that
    is missing or cannot be loaded is a failing probe that says which, until it is fixed.
    """

    def __init__(self, check: HttpCheck):
        super().__init__(interval=check.interval, timeout=check.timeout)
        self.check = check
        url = urlsplit(check.url)
        self._tls = url.scheme == "https"
        if url.hostname is None:
            raise ValueError(f"URL without a host: {check.url}")
        self._host = url.hostname
        self._port = url.port or (443 if self._tls else 80)
        self._server_name = check.tls_server_name or self._host
        self._material = TlsMaterial(
            TlsFiles(check.ca_file, check.client_cert, check.client_key, check.insecure)
        )
        self._idle_generation = 0
        """The TLS material's generation the connections made so far trust."""
        self._request = self._build_request(url.netloc.rpartition("@")[2], url.path, url.query)

    def _build_request(self, authority: str, path: str, query: str) -> bytes:
        target = (path or "/") + (f"?{query}" if query else "")
        headers = {"Host": authority, "User-Agent": f"bgpvip/{__version__}", "Accept": "*/*"}
        if self.check.method == "POST":
            headers["Content-Length"] = "0"
        given = {k.lower(): k for k in headers}
        for name, value in self.check.headers.items():
            headers.pop(given.get(name.lower(), name), None)
            headers[name] = value
        lines = [f"{self.check.method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _context(self) -> ssl.SSLContext:
        """The current TLS context; a connection that trusts older material is dropped."""
        ctx = self._material.context()
        if self._material.generation != self._idle_generation:
            conn, self._idle = self._idle, None
            if conn is not None:
                conn.abort()
            self._idle_generation = self._material.generation
        return ctx

    async def _open(self) -> _Conn:
        ctx = self._context() if self._tls else None
        return await _open_stream(self._host, self._port, ssl_context=ctx, server_hostname=self._server_name)

    def _idle_data_ok(self) -> bool:
        return False

    async def run(self) -> ProbeResult:
        start = time.monotonic()
        if self._tls:
            try:
                self._context()
            except TlsSetupError as exc:
                self._reachable = False  # nothing to watch until the files are fixed
                return _result(False, f"TLS setup: {exc}", start)
        try:
            async with asyncio.timeout(self.check.timeout):
                status = await self._exchange()
        except TimeoutError:
            return _result(False, _timed_out(self.check.timeout), start)
        except Exception as exc:
            detail, broken = _describe_error(exc)
            if broken:
                self._reachable = False
            return _result(False, detail, start, broken=broken)
        return _result(status in self.check.expect_status, f"HTTP {status}", start)

    async def _exchange(self) -> int:
        conn, self._idle = self._idle, None
        if conn is not None and not conn.looks_alive():
            conn.abort()
            conn = None
        if conn is not None:
            try:
                return await self._request_on(conn)
            except _NoResponse as exc:
                log.debug("kept-alive connection died while idle (%r); reconnecting", exc.cause)
        conn = await self._connect()
        try:
            return await self._request_on(conn)
        except _NoResponse as exc:
            if self._tls and not isinstance(exc.cause, ssl.SSLError):
                # The server accepted and completed the handshake a moment ago, so it is alive:
                # TLS 1.3 servers reject a client certificate this way, often with a lost alert.
                raise _RejectedAfterHandshake() from exc
            raise

    async def _request_on(self, conn: _Conn) -> int:
        """Send the request and read the response; keeps `conn` for reuse when the server allows."""
        try:
            try:
                conn.writer.write(self._request)
                await conn.writer.drain()
                _quickack(conn)
                line = await conn.reader.readline()
            except OSError as exc:
                raise _NoResponse(exc) from exc
            except ValueError:
                raise _HttpProtocolError(f"status line longer than {_MAX_HEAD} bytes") from None
            if not line:
                raise _NoResponse(None)
            status, keep = await self._read_response(conn.reader, line)
        except BaseException:
            conn.abort()
            raise
        if keep:
            self._idle = conn
        else:
            # Not awaited: the status is known, and a slow close must not turn it into a timeout.
            conn.writer.close()
        return status

    async def _read_response(self, reader: asyncio.StreamReader, line: bytes) -> tuple[int, bool]:
        """(status, whether the connection can carry another request)."""
        while True:
            version, status = _parse_status_line(line)
            headers = await _read_headers(reader)
            if not 100 <= status < 200 or status == 101:
                break
            line = await _readline(reader)
        connection = {t.strip() for t in headers.get("connection", "").lower().split(",")}
        keep = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        if status == 101:
            return status, False
        if self.check.method == "HEAD" or status in (204, 304):
            return status, keep
        if "transfer-encoding" in headers:
            if headers["transfer-encoding"].lower().rsplit(",", 1)[-1].strip() != "chunked":
                return status, False
            return status, keep and await _discard_chunked(reader)
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise _HttpProtocolError("bad Content-Length") from None
            if length < 0:
                raise _HttpProtocolError("bad Content-Length")
            if length > _MAX_BODY:
                return status, False
            await reader.readexactly(length)
            return status, keep
        # Body delimited by the server closing: the status is all a health check needs.
        return status, False


def _parse_status_line(line: bytes) -> tuple[str, int]:
    if not line.endswith(b"\n"):
        raise _ClosedError()
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].isdigit():
        raise _HttpProtocolError(f"status line {_shorten(repr(line[:40]))}")
    status = int(parts[1])
    if not 100 <= status <= 999:
        raise _HttpProtocolError(f"status {status}")
    return parts[0], status


async def _readline(reader: asyncio.StreamReader) -> bytes:
    """One complete line of a response that has started."""
    try:
        line = await reader.readline()
    except ValueError:
        raise _HttpProtocolError(f"line longer than {_MAX_HEAD} bytes") from None
    if not line.endswith(b"\n"):
        raise _ClosedError()
    return line


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    total = 0
    while True:
        line = await _readline(reader)
        total += len(line)
        if total > _MAX_HEAD:
            raise _HttpProtocolError("headers too long")
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            return headers
        if text[0] in " \t":
            continue
        name, sep, value = text.partition(":")
        if not sep:
            raise _HttpProtocolError(f"header line {_shorten(repr(text[:40]))}")
        key = name.strip().lower()
        value = value.strip()
        if key in headers:
            if key == "content-length" and headers[key] != value:
                raise _HttpProtocolError("conflicting Content-Length")
            value = value if key == "content-length" else f"{headers[key]}, {value}"
        headers[key] = value


async def _discard_chunked(reader: asyncio.StreamReader) -> bool:
    """Read a chunked body; False when it is longer than `_MAX_BODY` (left unread)."""
    total = 0
    while True:
        line = await _readline(reader)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _HttpProtocolError("bad chunk size") from None
        if size == 0:
            break
        total += size
        if total > _MAX_BODY:
            return False
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise _HttpProtocolError("chunk not followed by CRLF")
    while True:
        if await _readline(reader) in (b"\r\n", b"\n"):
            return True


# --------------------------------------------------------------------------- tcp


class TcpProbe(_WatchedTarget):
    """Healthy while a TCP connection to host:port can be opened (and is closed again)."""

    def __init__(self, check: TcpCheck):
        super().__init__(interval=check.interval, timeout=check.timeout)
        self.check = check

    async def _open(self) -> _Conn:
        return await _open_stream(self.check.host, self.check.port)

    async def run(self) -> ProbeResult:
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.check.timeout):
                conn = await self._connect()
                await conn.close()
        except TimeoutError:
            return _result(False, _timed_out(self.check.timeout), start)
        except Exception as exc:
            detail, broken = _describe_error(exc)
            return _result(False, detail, start, broken=broken)
        return _result(True, "connected", start)


# --------------------------------------------------------------------------- exec


class _ExecProtocol(asyncio.SubprocessProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buf = self.stdout if fd == 1 else self.stderr
        room = _MAX_OUTPUT - len(buf)
        if room > 0:
            buf += data[:room]

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


class ExecProbe:
    """Runs a command (argv, no shell) in its own process group; healthy when it exits 0.

    At the timeout, or when the probe is cancelled, the whole process group is killed and the
    command reaped, so a hung check leaves nothing behind.
    """

    def __init__(self, check: ExecCheck):
        self.check = check

    async def run(self) -> ProbeResult:
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        proto = _ExecProtocol(loop)
        spawn = asyncio.ensure_future(
            loop.subprocess_exec(
                lambda: proto,
                *self.check.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        )
        try:
            transport, _ = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # Cancelled mid-spawn, asyncio itself would wait for the command's pipes to close, and a
            # child of the command can hold them for as long as it runs: finish, then kill the group.
            with contextlib.suppress(OSError):
                transport, _ = await spawn
                await _end(transport, proto)
            raise
        except OSError as exc:
            return _result(False, f"cannot run {self.check.command[0]}: {exc.strerror or exc}", start)
        try:
            done, _ = await asyncio.wait({proto.exited}, timeout=self.check.timeout)
            timed_out = not done
            # Also ends whatever the command left running in its group.
            _kill_group(transport.get_pid())
            await asyncio.wait({proto.exited}, timeout=_REAP_GRACE)
            await asyncio.wait({proto.finished}, timeout=_EXIT_FLUSH)
        finally:
            await _end(transport, proto)
        if timed_out:
            return _result(False, _timed_out(self.check.timeout), start)
        code = transport.get_returncode()
        if code == 0:
            return _result(True, "exit 0", start)
        if code is None:
            return _result(False, "did not exit after SIGKILL", start)
        if code < 0:
            return _result(False, f"killed by {signal.Signals(-code).name}", start)
        text = _first_line(proto.stderr) or _first_line(proto.stdout)
        return _result(False, f"exit {code}: {text}" if text else f"exit {code}", start)

    async def wait_broken(self) -> None:
        # A command has no connection to watch: only the timer triggers the next run.
        await asyncio.get_running_loop().create_future()

    async def aclose(self) -> None:
        return None


async def _end(transport: asyncio.SubprocessTransport, proto: _ExecProtocol) -> None:
    """Kill the command's group if it still runs and reap it, also on the way out of a cancellation."""
    if not proto.exited.done():
        _kill_group(transport.get_pid())
        await asyncio.wait({proto.exited}, timeout=_REAP_GRACE)
    transport.close()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _first_line(data: bytes | bytearray) -> str:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.strip():
            return line.strip()
    return ""
