"""HTTP/1.1 to the Kubernetes API on asyncio streams (h11 parses, this module does the I/O).

I/O side. Requests return the raw body (bytes) for the caller to decode with msgspec; watches
yield the stream's lines as they arrive. Authentication and TLS come from `Credentials`
(bgpvip.adapters.kube.connection), which resolves them with the official client's loaders.
Kept-alive connections are reused for plain requests; each watch has its own connection.

Errors, by what the caller does next:
- `ApiError`: the server answered with a non-2xx status; carries the `Status` object's reason
  and message, so a log line says *why* (`403 Forbidden: services is forbidden: User ...`).
- `Unreachable`: no answer at all (refused, reset, timed out, TLS failure): one line naming the
  real cause, never a traceback.
- `CredentialsError`: no connection could be resolved (no kubeconfig, no in-cluster env).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import h11
import msgspec

if TYPE_CHECKING:
    from bgpvip.adapters.kube.connection import Credentials

USER_AGENT = "bgpvip"
READ_SIZE = 256 * 1024


class KubeError(Exception):
    """Any failure of a request to the API."""


class ApiError(KubeError):
    """A non-2xx answer, with the fields of the `Status` object the apiserver sends."""

    def __init__(self, status: int, reason: str = "", message: str = "", *, retry_after: float | None = None):
        self.status = status
        self.reason = reason
        """`Status.reason`: `Forbidden`, `NotFound`, `Expired`, ... (or the HTTP reason phrase)."""
        self.message = message
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"HTTP {self.status} {self.reason}".rstrip()
        return f"{text}: {self.message}" if self.message else text


class Unreachable(KubeError):
    """No HTTP answer: the connection was refused, reset, timed out, or TLS failed."""


class CredentialsError(KubeError):
    """The connection to the API could not be resolved (kubeconfig, in-cluster environment)."""


class _Status(msgspec.Struct):
    reason: str = ""
    message: str = ""


def describe(exc: BaseException) -> str:
    """One line naming what went wrong, for logs and `KubeUnavailable`."""
    if isinstance(exc, KubeError):
        text = str(exc)
    elif isinstance(exc, ssl.SSLCertVerificationError):
        text = f"TLS certificate not trusted: {exc.verify_message or exc.reason}"
    elif isinstance(exc, ssl.SSLError):
        text = f"TLS failed: {exc.reason or exc}"
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]


def url_path(path: str, query: Sequence[tuple[str, Any]] = ()) -> str:
    """`path` with its query string; booleans as the API writes them (`true`)."""
    if not query:
        return path
    pairs = [(k, "true" if v is True else "false" if v is False else str(v)) for k, v in query]
    return f"{path}?{urlencode(pairs, quote_via=quote, safe='')}"


class _Conn:
    """One HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.generation = generation
        """The credentials' generation it was opened with: a new CA or client certificate means
        new connections."""
        self.received = False

    async def send(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> None:
        data = self.h11.send(h11.Request(method=method, target=target, headers=headers))
        if body is not None:
            data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(h11.EndOfMessage())
        self.writer.write(data)
        await self.writer.drain()

    async def next_event(self, wait: float) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(wait):
                data = await self.reader.read(READ_SIZE)
            if data:
                self.received = True
            self.h11.receive_data(data)

    def reusable(self) -> bool:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return not self.reader.at_eof()
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def aclose(self, *, abort: bool = False) -> None:
        """Close, and let the transport finish closing (its socket is released on the loop).
        `abort`: without a TLS goodbye, which a server busy streaming never reads."""
        if abort:
            self.writer.transport.abort()
        else:
            self.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except TimeoutError:
            self.writer.transport.abort()
        except Exception:
            pass  # the connection was broken anyway


class KubeClient:
    """Requests and watches against one API server, on the running loop.

    `answering_for()` says how long the server has been answering since it last could not be
    reached (or since the client started): the retry policy treats a 403 in the first seconds
    as an authorizer that is not ready yet (bgpvip.adapters.kube.backoff.transient)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        connect_timeout: float = 5.0,
        max_idle: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._clock = clock
        self._idle: list[_Conn] = []
        self._answering_since: float | None = None
        self.requests = 0

    def answering_for(self) -> float | None:
        since = self._answering_since
        return None if since is None else self._clock() - since

    def _answered(self) -> None:
        if self._answering_since is None:
            self._answering_since = self._clock()

    def _unreachable(self) -> None:
        self._answering_since = None

    async def _connect(self) -> tuple[_Conn, list[tuple[str, str]]]:
        target = await self.credentials.get()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    target.host,
                    target.port,
                    ssl=target.ssl,
                    server_hostname=target.server_hostname if target.ssl is not None else None,
                    limit=READ_SIZE,
                )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            self._unreachable()
            raise Unreachable(f"{target.url}: {describe(e)}") from None
        return _Conn(reader, writer, target.generation), target.headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, Any]] = (),
        body: bytes | None = None,
        content_type: str = "application/json",
        time_limit: float = 30.0,
    ) -> bytes:
        """The body of a 2xx answer; ApiError, Unreachable or CredentialsError otherwise."""
        target = url_path(path, query)
        for attempt in range(2):
            conn, fresh = await self._take()
            try:
                status, reason, data = await self._exchange(
                    conn, method, target, body, content_type, time_limit
                )
            except (OSError, TimeoutError, ssl.SSLError, h11.ProtocolError) as e:
                await conn.aclose()
                # A kept-alive connection the server closed meanwhile fails before any byte comes
                # back: the request never reached the server, so it is sent again once.
                if not fresh and not conn.received and attempt == 0 and not isinstance(e, TimeoutError):
                    continue
                self._unreachable()
                raise Unreachable(f"{method} {path}: {describe(e)}") from None
            except BaseException:
                await conn.aclose()
                raise
            self._answered()
            if conn.reusable() and len(self._idle) < self.max_idle:
                self._idle.append(conn)
            else:
                await conn.aclose()
            if not 200 <= status <= 299:
                if status == 401:
                    self.credentials.rejected()
                raise _api_error(status, reason, data)
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    async def _take(self) -> tuple[_Conn, bool]:
        generation = self.credentials.generation
        while self._idle:
            conn = self._idle.pop()
            if conn.generation == generation and not conn.reader.at_eof():
                conn.received = False
                return conn, False
            await conn.aclose()
        conn, _ = await self._connect()
        return conn, True

    async def _exchange(  # noqa: PLR0917
        self, conn: _Conn, method: str, target: str, body: bytes | None, content_type: str, time_limit: float
    ) -> tuple[int, str, bytes]:
        headers = [*(await self.credentials.get()).headers, ("Accept", "application/json")]
        if body is not None:
            headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        self.requests += 1
        async with asyncio.timeout(time_limit):
            await conn.send(method, target, headers, body)
            response = await conn.next_event(time_limit)
            while isinstance(response, h11.InformationalResponse):
                response = await conn.next_event(time_limit)
            if not isinstance(response, h11.Response):
                raise h11.RemoteProtocolError(f"unexpected {type(response).__name__}")
            chunks: list[bytes] = []
            while True:
                event = await conn.next_event(time_limit)
                if isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionResetError("connection closed before the end of the response")
        return response.status_code, response.reason.decode("latin-1"), b"".join(chunks)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        path: str,
        query: Sequence[tuple[str, Any]] = (),
        *,
        read_timeout: float,
        open_timeout: float = 30.0,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A watch: enter to send the request (ApiError / Unreachable if it is not answered with
        200), then iterate over the lines of the stream. A read that waits longer than
        `read_timeout` raises TimeoutError: a silent watch is a dead one."""
        conn, headers = await self._connect()
        try:
            target = url_path(path, query)
            try:
                self.requests += 1
                async with asyncio.timeout(open_timeout):
                    await conn.send("GET", target, [*headers, ("Accept", "application/json")], None)
                    response = await conn.next_event(open_timeout)
                    while isinstance(response, h11.InformationalResponse):
                        response = await conn.next_event(open_timeout)
            except (OSError, TimeoutError, ssl.SSLError, h11.ProtocolError) as e:
                self._unreachable()
                raise Unreachable(f"watch {path}: {describe(e)}") from None
            if not isinstance(response, h11.Response):
                raise Unreachable(f"watch {path}: unexpected {type(response).__name__}")
            self._answered()
            if response.status_code != 200:
                chunks = []
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(open_timeout):
                        while isinstance(event := await conn.next_event(open_timeout), h11.Data):
                            chunks.append(bytes(event.data))
                if response.status_code == 401:
                    self.credentials.rejected()
                raise _api_error(response.status_code, response.reason.decode("latin-1"), b"".join(chunks))
            yield _lines(conn, read_timeout)
        finally:
            await conn.aclose(abort=True)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()


async def _lines(conn: _Conn, read_timeout: float) -> AsyncIterator[bytes]:
    """Newline-delimited JSON from a chunked body, each line as soon as it is complete."""
    buffer = b""
    while True:
        event = await conn.next_event(read_timeout)
        if isinstance(event, h11.Data):
            buffer += event.data
            if b"\n" not in buffer:
                continue
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                if line.strip():
                    yield line
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise ConnectionResetError("the watch stream ended without its last chunk")
    if buffer.strip():
        yield buffer


def _api_error(status: int, reason: str, body: bytes) -> ApiError:
    try:
        st = msgspec.json.decode(body, type=_Status)
        reason, message = st.reason or reason, st.message
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = " ".join(body[:300].decode("utf-8", "replace").split())
    return ApiError(status, reason, message)
