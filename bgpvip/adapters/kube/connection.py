"""Where the API is and how to authenticate: resolved by the official client, used without it.

I/O side. The official `kubernetes` package loads kubeconfigs (contexts, exec plugins, OIDC,
embedded certificates) and the in-cluster ServiceAccount exactly as kubectl does, but importing
it costs the long-running speaker a large share of its memory budget (docs/performance.md). So
it runs in a short-lived child process (`python -m bgpvip.adapters.kube.resolve`) that prints
the resolved `Connection` as JSON and exits; the speaker and the controller read that at
start, and again when the credential expires, when the server answers 401, or, for a
ServiceAccount token file, re-read the file itself, as the official client does (once a minute).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from bgpvip.adapters.kube.backoff import Backoff
from bgpvip.adapters.kube.http import USER_AGENT, CredentialsError
from bgpvip.core.config import KubernetesConfig

RESOLVE_TIMEOUT = 60.0
"""Seconds the child may take: an exec credential plugin can prompt a cloud's token service."""
TOKEN_REREAD = 60.0
"""Seconds between reads of a ServiceAccount token file (the official client's period)."""
EXPIRY_SKEW = 60.0
"""Resolve again this many seconds before a credential expires."""


class Connection(msgspec.Struct, frozen=True, kw_only=True):
    """What the child prints: everything needed to reach and authenticate to the API."""

    server: str
    """`https://host:port` (or `http://` for a local test server)."""
    source: str = ""
    """Where it came from, for logs: `kubeconfig /path (context x)` or `in-cluster`."""
    ca: str | None = None
    """PEM of the CAs to trust; None: the system's."""
    verify: bool = True
    """False only when the kubeconfig says `insecure-skip-tls-verify`."""
    tls_server_name: str | None = None
    client_cert: str | None = None
    """PEM of a client certificate, with `client_key`."""
    client_key: str | None = None
    token: str | None = None
    """Bearer token; None with a client certificate."""
    token_file: str | None = None
    """A file the token is re-read from (the in-cluster ServiceAccount token)."""
    expires: float | None = None
    """Unix time at which the token or certificate expires (exec plugins); None: unknown."""


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved connection, ready for the HTTP client."""

    url: str
    host: str
    port: int
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    headers: list[tuple[str, str]]
    generation: int


def ssl_context(conn: Connection) -> ssl.SSLContext | None:
    if not conn.server.startswith("https://"):
        return None
    ctx = ssl.create_default_context()
    if conn.ca:
        ctx.load_verify_locations(cadata=conn.ca)
    if not conn.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if conn.client_cert and conn.client_key:
        # ssl loads a certificate chain only from files: a private file, removed at once
        with tempfile.TemporaryDirectory(prefix="bgpvip-tls-") as tmp:
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            for path, text in ((cert, conn.client_cert), (key, conn.client_key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
            ctx.load_cert_chain(cert, key)
    return ctx


class Credentials:
    """The current `Target`, resolved by `resolve` when needed: at first use, after a 401
    (`rejected()`), and shortly before `expires`. A token file is re-read every `TOKEN_REREAD`
    seconds. A failed resolve is not repeated before its backoff delay has passed: callers get
    the same `CredentialsError` meanwhile, so several watchers do not start several children."""

    def __init__(
        self,
        resolve: Callable[[], Awaitable[Connection]],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        retry: Backoff | None = None,
    ) -> None:
        self._resolve = resolve
        self._clock = clock
        self._wall = wall
        self._retry = retry or Backoff(1.0, 60.0)
        self._lock = asyncio.Lock()
        self._conn: Connection | None = None
        self._target: Target | None = None
        self._token: str | None = None
        self._token_read_at = -float("inf")
        self._failed: CredentialsError | None = None
        self._retry_at = -float("inf")
        self.generation = 0
        self.resolves = 0

    @classmethod
    def static(cls, conn: Connection) -> Credentials:
        async def same() -> Connection:
            return conn

        return cls(same)

    @classmethod
    def for_config(cls, kube: KubernetesConfig) -> Credentials:
        return cls(lambda: resolve_in_child(kube))

    def rejected(self) -> None:
        """The server answered 401: resolve again before the next request."""
        self._conn = None

    async def get(self) -> Target:
        target = self._target
        if target is not None and self._conn is not None and not self._due():
            return target
        async with self._lock:
            if self._conn is None or self._expired():
                await self._load()
            if self._conn is not None and self._conn.token_file and self._clock() >= self._token_read_at:
                self._read_token(self._conn)
            assert self._target is not None
            return self._target

    def _due(self) -> bool:
        conn = self._conn
        return bool(
            self._expired() or (conn is not None and conn.token_file and self._clock() >= self._token_read_at)
        )

    def _expired(self) -> bool:
        conn = self._conn
        return conn is not None and conn.expires is not None and self._wall() >= conn.expires - EXPIRY_SKEW

    async def _load(self) -> None:
        if self._failed is not None and self._clock() < self._retry_at:
            raise self._failed
        try:
            self.resolves += 1
            conn = await self._resolve()
            context = ssl_context(conn)
            parts = urlsplit(conn.server)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise CredentialsError(f"server {conn.server!r} is not an http(s) URL")
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except CredentialsError as e:
            self._failed = e
        except (OSError, ssl.SSLError, ValueError) as e:
            self._failed = CredentialsError(f"unusable connection settings: {type(e).__name__}: {e}")
        else:
            self._failed = None
            self._retry.reset()
            self._conn = conn
            self._token = conn.token
            self.generation += 1
            self._target = Target(
                url=conn.server,
                host=parts.hostname,
                port=port,
                ssl=context,
                server_hostname=conn.tls_server_name or parts.hostname,
                headers=self._headers(parts.netloc),
                generation=self.generation,
            )
            self._token_read_at = self._clock() + TOKEN_REREAD
            return
        self._retry_at = self._clock() + self._retry.next()
        raise self._failed

    def _headers(self, netloc: str) -> list[tuple[str, str]]:
        headers = [("Host", netloc), ("User-Agent", USER_AGENT)]
        if self._token:
            headers.append(("Authorization", f"Bearer {self._token}"))
        return headers

    def _read_token(self, conn: Connection) -> None:
        assert conn.token_file is not None and self._target is not None
        self._token_read_at = self._clock() + TOKEN_REREAD
        try:
            token = Path(conn.token_file).read_text().strip()
        except OSError:
            return  # keep the last token; a 401 will say if it is no longer good
        if token and token != self._token:
            self._token = token
            netloc = urlsplit(conn.server).netloc
            self._target = dataclasses.replace(self._target, headers=self._headers(netloc))


async def resolve_in_child(kube: KubernetesConfig) -> Connection:
    """Run the official loader in `python -m bgpvip.adapters.kube.resolve` and read its answer."""
    args = [sys.executable, "-m", "bgpvip.adapters.kube.resolve"]
    if kube.kubeconfig is not None:
        args += ["--kubeconfig", str(kube.kubeconfig)]
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise CredentialsError(f"cannot start the credentials resolver: {e}") from None
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CredentialsError(
            f"resolving the API connection took longer than {RESOLVE_TIMEOUT:g}s"
        ) from None
    if proc.returncode != 0:
        why = " ".join(err.decode("utf-8", "replace").split())[-500:] or f"exit status {proc.returncode}"
        raise CredentialsError(why)
    try:
        return msgspec.json.decode(out, type=Connection)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CredentialsError(f"the credentials resolver printed something unexpected: {e}") from None
