"""Probes against real servers on 127.0.0.1 (ephemeral ports), real TLS and real processes.

Timing assertions are deliberately loose (a loaded 2-core CI box); the measured figures live
in the adapter's report, not here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpvip.adapters.probes import ExecProbe, HttpProbe, Probe, TcpProbe, make_probe, run_check
from bgpvip.core.config import ExecCheck, HttpCheck, KubeApiserverCheck, TcpCheck
from bgpvip.core.model import ProbeResult
from tests.pki import issue

SLACK = 1.0
"""Generous allowance for a loaded CI machine on top of any expected time."""


# --------------------------------------------------------------------------- test servers


@dataclass
class HttpServer:
    """A scriptable HTTP/1.1 server on 127.0.0.1 that counts connections and requests."""

    status: int = 200
    body: bytes = b"ok\n"
    chunked: bool = False
    keep_alive: bool = True
    hang: bool = False
    close_idle_after: float | None = None
    """Close a connection that has been idle this long (like a server's keep-alive timeout)."""
    drop_reused: bool = False
    """Close a reused connection when its next request arrives, without answering (the idle-close race)."""
    ssl_context: ssl.SSLContext | None = None
    unauthorized_without_client_cert: bool = False
    """Answer 401 to a connection that presented no client certificate, as a kube-apiserver
    with `--anonymous-auth=false` does (its TLS layer asks for a certificate but accepts none)."""
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> HttpServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}/healthz"

    async def kill(self) -> None:
        """Stop listening and drop every connection, as a dying process would."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        served = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(self.close_idle_after):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                if self.drop_reused and served:
                    return
                self.requests.append(head.decode().split("\r\n", 1)[0])
                if self.hang:
                    await reader.read()  # never answers; ends when either side drops the connection
                    return
                anonymous = not writer.get_extra_info("peercert")
                status = 401 if self.unauthorized_without_client_cert and anonymous else self.status
                writer.write(self._response(head, status))
                await writer.drain()
                served += 1
                if not self.keep_alive:
                    return
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    def _response(self, head: bytes, status: int) -> bytes:
        lines = [f"HTTP/1.1 {status} X"]
        if not self.keep_alive:
            lines.append("Connection: close")
        body = b"" if head.startswith(b"HEAD ") else self.body
        if self.chunked and not body:
            lines.append("Transfer-Encoding: chunked")
            payload = b""
        elif self.chunked:
            lines.append("Transfer-Encoding: chunked")
            half = len(self.body) // 2
            payload = b"".join(
                f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in (body[:half], body[half:]) if p
            )
            payload += b"0\r\nX-Trailer: yes\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(self.body)}")
            payload = body
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


@pytest.fixture
async def http_server() -> AsyncIterator[Callable[..., Any]]:
    servers: list[HttpServer] = []

    async def start(**kwargs: Any) -> HttpServer:
        server = await HttpServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.kill()


@pytest.fixture
async def probes() -> AsyncIterator[Callable[[Probe], Probe]]:
    """Registers probes so every test closes its connections, whatever happens."""
    made: list[Probe] = []

    def track(probe: Probe) -> Probe:
        made.append(probe)
        return probe

    yield track
    for probe in made:
        await probe.aclose()


def http(url: str, **kwargs: Any) -> HttpCheck:
    return HttpCheck(type="http", url=url, **kwargs)


async def eventually(condition: Callable[[], object], within: float = SLACK) -> None:
    """Poll `condition` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a kube-apiserver-like serving cert (SAN `kubernetes`, not 127.0.0.1), a client cert."""
    d = tmp_path_factory.mktemp("tls")
    ca = issue(d, "ca", cn="bgpvip-test-ca", issuer=None)
    issue(
        d,
        "server",
        cn="kube-apiserver",
        issuer=ca,
        sans=(x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default")),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    issue(d, "client", cn="bgpvip-probe", issuer=ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    issue(d, "other-ca", cn="someone-else", issuer=None)
    return Pki(
        ca=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
        other_ca=d / "other-ca.crt",
    )


def server_tls(
    pki: Pki,
    *,
    require_client_cert: bool = False,
    ask_client_cert: bool = False,
    seen_sni: list[str | None] | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert or ask_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        ctx.load_verify_locations(pki.ca)
    if seen_sni is not None:

        def record(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            seen_sni.append(name)

        ctx.sni_callback = record
    return ctx


# --------------------------------------------------------------------------- http


@pytest.mark.parametrize(
    ("status", "expect", "ok"),
    [(200, (200,), True), (503, (200,), False), (503, (200, 503), True), (301, (200,), False)],
    ids=["200", "503", "503-expected", "redirect-is-not-health"],
)
async def test_http_status(
    http_server: Any, probes: Any, status: int, expect: tuple[int, ...], ok: bool
) -> None:
    server = await http_server(status=status)
    result = await probes(make_probe(http(server.url, expect_status=expect))).run()
    assert result.ok is ok
    assert result.detail == f"HTTP {status}"
    assert not result.broken
    assert 0 < result.duration < SLACK
    assert result.at == pytest.approx(time.monotonic(), abs=SLACK)


async def test_http_keep_alive_reuses_one_connection(http_server: Any, probes: Any) -> None:
    server = await http_server()
    probe = probes(make_probe(http(server.url, headers={"X-Check": "1"})))
    results = [await probe.run() for _ in range(20)]
    assert all(r.ok for r in results)
    assert server.connections == 1
    assert server.requests == ["GET /healthz HTTP/1.1"] * 20


async def test_http_head_and_chunked_bodies_keep_the_connection(http_server: Any, probes: Any) -> None:
    server = await http_server(chunked=True, body=b"x" * 5000)
    probe = probes(make_probe(http(server.url)))
    head = probes(make_probe(http(server.url, method="HEAD")))
    assert [(await probe.run()).detail for _ in range(3)] == ["HTTP 200"] * 3
    assert (await head.run()).ok and (await head.run()).ok
    assert server.connections == 2


async def test_http_large_body_is_not_read_but_status_counts(http_server: Any, probes: Any) -> None:
    server = await http_server(body=b"x" * 200_000)
    probe = probes(make_probe(http(server.url)))
    assert (await probe.run()).ok
    assert (await probe.run()).ok
    assert server.connections == 2


async def test_http_server_without_keep_alive(http_server: Any, probes: Any) -> None:
    server = await http_server(keep_alive=False)
    probe = probes(make_probe(http(server.url)))
    assert all([(await probe.run()).ok for _ in range(3)])
    assert server.connections == 3


async def test_http_idle_connection_closed_by_server_is_no_failure(http_server: Any, probes: Any) -> None:
    server = await http_server(close_idle_after=0.05)
    probe = probes(make_probe(http(server.url)))
    assert (await probe.run()).ok
    await asyncio.sleep(0.3)
    result = await probe.run()
    assert result.ok, result
    assert server.connections == 2


async def test_http_reused_connection_dying_under_the_request_is_retried(
    http_server: Any, probes: Any
) -> None:
    server = await http_server(drop_reused=True)
    probe = probes(make_probe(http(server.url)))
    results = [await probe.run() for _ in range(3)]
    assert all(r.ok for r in results), results
    assert server.connections == 3


async def test_http_fresh_connection_closed_without_answer_is_broken(http_server: Any, probes: Any) -> None:
    async def slam(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.transport.abort()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await probes(make_probe(http(f"http://127.0.0.1:{port}/"))).run()
    finally:
        server.close()
        await server.wait_closed()
    assert not result.ok
    assert result.broken
    assert result.detail in ("connection closed", "connection reset")


async def test_http_server_that_never_answers_times_out(http_server: Any, probes: Any) -> None:
    server = await http_server(hang=True)
    probe = probes(make_probe(http(server.url, timeout=0.3)))
    result = await probe.run()
    assert not result.ok
    assert result.detail == "timed out after 0.3s"
    assert not result.broken
    assert 0.3 <= result.duration < 0.3 + SLACK


async def test_http_connection_refused_is_broken(probes: Any) -> None:
    result = await probes(make_probe(http(f"http://127.0.0.1:{free_port()}/"))).run()
    assert (result.ok, result.detail, result.broken) == (False, "connection refused", True)


async def test_http_status_line_garbage(probes: Any) -> None:
    async def junk(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await r.read()  # until the probe hangs up
        w.transport.abort()

    server = await asyncio.start_server(junk, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await probes(make_probe(http(f"http://127.0.0.1:{port}/"))).run()
    finally:
        server.close()
        await server.wait_closed()
    assert not result.ok
    assert result.detail.startswith("bad HTTP response: status line")


# --------------------------------------------------------------------------- https


async def test_https_tls_server_name_verifies_and_is_sent_as_sni(
    http_server: Any, probes: Any, pki: Pki
) -> None:
    sni: list[str | None] = []
    server = await http_server(ssl_context=server_tls(pki, seen_sni=sni))
    probe = probes(make_probe(http(server.url, ca_file=pki.ca, tls_server_name="kubernetes")))
    results = [await probe.run() for _ in range(20)]
    assert all(r.ok for r in results), results[0]
    assert server.connections == 1
    assert sni == ["kubernetes"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tls_server_name": "wrong.example"}, "Hostname mismatch"),
        ({}, "IP address mismatch"),
        ({"tls_server_name": "kubernetes", "ca_file": "other"}, "unable to get local issuer"),
    ],
    ids=["wrong-name", "url-ip-not-in-cert", "wrong-ca"],
)
async def test_https_verification_failures(
    http_server: Any, probes: Any, pki: Pki, kwargs: dict[str, Any], fragment: str
) -> None:
    server = await http_server(ssl_context=server_tls(pki))
    kwargs = {"ca_file": pki.ca, **kwargs}
    if kwargs["ca_file"] == "other":
        kwargs["ca_file"] = pki.other_ca
    result = await probes(make_probe(http(server.url, **kwargs))).run()
    assert not result.ok
    assert result.detail.startswith("TLS: certificate verify failed"), result.detail
    assert fragment in result.detail
    assert not result.broken


async def test_https_insecure_skips_verification(http_server: Any, probes: Any, pki: Pki) -> None:
    server = await http_server(ssl_context=server_tls(pki))
    result = await probes(make_probe(http(server.url, insecure=True))).run()
    assert result.ok, result


async def test_https_client_certificate(http_server: Any, probes: Any, pki: Pki) -> None:
    server = await http_server(ssl_context=server_tls(pki, require_client_cert=True))
    common = {"ca_file": pki.ca, "tls_server_name": "kubernetes"}
    with_cert = probes(
        make_probe(http(server.url, client_cert=pki.client_cert, client_key=pki.client_key, **common))
    )
    without = probes(make_probe(http(server.url, **common)))
    assert (await with_cert.run()).ok
    failed = await without.run()
    assert not failed.ok
    assert failed.detail.startswith("TLS: "), failed.detail


async def test_https_missing_ca_file_is_a_result_not_an_exception(probes: Any, tmp_path: Path) -> None:
    result = await probes(make_probe(http("https://127.0.0.1:1/", ca_file=tmp_path / "nope.crt"))).run()
    assert not result.ok
    assert result.detail == f"TLS setup: CA file {tmp_path / 'nope.crt'} does not exist"


def make_pki(directory: Path, name: str) -> Pki:
    """A whole cluster PKI as `kubeadm init` makes it: a CA, an apiserver certificate, a probe
    client certificate. Each call is a different CA (a second `kubeadm init`)."""
    d = directory / name
    d.mkdir()
    ca = issue(d, "ca", cn=f"kubernetes-{name}", issuer=None)
    issue(d, "server", cn="kube-apiserver", issuer=ca, sans=(x509.DNSName("kubernetes"),))
    issue(d, "client", cn="bgpvip-probe", issuer=ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key", d / "ca.crt"
    )


def install(src: Path, dst: Path) -> None:
    """Write a file the way kubeadm and most tools do: a new file renamed into place."""
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(src.read_bytes())
    tmp.replace(dst)


async def test_kube_apiserver_check_waits_for_the_ca_and_follows_a_new_cluster(
    http_server: Any, probes: Any, tmp_path: Path
) -> None:
    """Before `kubeadm init` there is no CA; after `kubeadm reset` and a second `kubeadm init`
    there is a different one. The probe was stuck on the first (certificate verify failed)
    until bgpvip restarted, and kubeadm waited for an endpoint that never came."""
    pki_dir = tmp_path / "etc-kubernetes-pki"
    pki_dir.mkdir()
    ca_path = pki_dir / "ca.crt"
    first, second = make_pki(tmp_path, "first"), make_pki(tmp_path, "second")
    server = await http_server(ssl_context=server_tls(first))
    probe = probes(make_probe(KubeApiserverCheck(type="kube-apiserver", port=server.port, ca_file=ca_path)))

    missing = await probe.run()
    assert (missing.ok, missing.detail) == (False, f"TLS setup: CA file {ca_path} does not exist")

    install(first.ca, ca_path)  # kubeadm init writes the CA
    assert (await probe.run()).ok

    await server.kill()  # kubeadm reset; kubeadm init: a new CA, a new apiserver certificate
    server = await http_server(ssl_context=server_tls(second), port=server.port)
    install(second.ca, ca_path)
    result = await probe.run()
    assert result.ok, result.detail


async def test_ca_rotation_is_followed_on_a_kept_alive_connection(
    http_server: Any, probes: Any, tmp_path: Path
) -> None:
    """A changed CA drops the kept-alive connection, so the new trust is checked at once."""
    first, second = make_pki(tmp_path, "first"), make_pki(tmp_path, "second")
    ca_path = tmp_path / "ca.crt"
    install(first.ca, ca_path)
    server = await http_server(ssl_context=server_tls(first))
    probe = probes(make_probe(http(server.url, ca_file=ca_path, tls_server_name="kubernetes")))
    assert all([(await probe.run()).ok for _ in range(5)])
    assert server.connections == 1
    install(second.ca, ca_path)  # the server still has a certificate from the first CA
    rotated = await probe.run()
    assert not rotated.ok, "the kept-alive connection must not outlive the trust it was made with"
    assert rotated.detail.startswith("TLS: certificate verify failed"), rotated.detail
    install(first.ca, ca_path)
    assert (await probe.run()).ok
    assert server.connections == 2


async def test_unchanged_tls_files_are_not_loaded_again(http_server: Any, probes: Any, pki: Pki) -> None:
    server = await http_server(ssl_context=server_tls(pki))
    probe = probes(make_probe(http(server.url, ca_file=pki.ca, tls_server_name="kubernetes")))
    assert isinstance(probe, HttpProbe)
    for _ in range(10):
        assert (await probe.run()).ok
    assert probe._material.generation == 1
    assert server.connections == 1


async def test_kube_apiserver_check_with_a_client_certificate_when_anonymous_auth_is_off(
    http_server: Any, probes: Any, tmp_path: Path
) -> None:
    """`--anonymous-auth=false`: /readyz answers 401 forever to an anonymous probe. A probe
    certificate signed by the cluster CA is enough; it may be made after bgpvip starts."""
    cluster = make_pki(tmp_path, "cluster")
    server = await http_server(
        ssl_context=server_tls(cluster, ask_client_cert=True), unauthorized_without_client_cert=True
    )
    anonymous = probes(
        make_probe(KubeApiserverCheck(type="kube-apiserver", port=server.port, ca_file=cluster.ca))
    )
    assert (await anonymous.run()).detail == "HTTP 401"

    cert, key = tmp_path / "bgpvip-probe.crt", tmp_path / "bgpvip-probe.key"
    check = KubeApiserverCheck(
        type="kube-apiserver", port=server.port, ca_file=cluster.ca, client_cert=cert, client_key=key
    )
    probe = probes(make_probe(check))
    not_yet = await probe.run()
    assert (not_yet.ok, not_yet.detail) == (False, f"TLS setup: client certificate {cert} does not exist")
    install(cluster.client_key, key)
    install(cluster.client_cert, cert)
    result = await probe.run()
    assert result.ok, result.detail
    assert server.requests[-1] == "GET /readyz HTTP/1.1"


@pytest.mark.timeout(10)
async def test_tls_files_that_are_fifos_fail_the_probe_without_blocking(probes: Any, tmp_path: Path) -> None:
    fifo = tmp_path / "ca.crt"
    os.mkfifo(fifo)
    result = await probes(make_probe(http("https://127.0.0.1:1/", ca_file=fifo))).run()
    assert result.detail == f"TLS setup: CA file {fifo} is a FIFO, not a regular file"


async def test_kube_apiserver_check_readyz(http_server: Any, probes: Any, pki: Pki) -> None:
    server = await http_server(ssl_context=server_tls(pki))
    check = KubeApiserverCheck(type="kube-apiserver", port=server.port, ca_file=pki.ca)
    probe = probes(make_probe(check))
    assert isinstance(probe, HttpProbe)
    result = await probe.run()
    assert result.ok, result
    assert server.requests == ["GET /readyz HTTP/1.1"]


async def test_kube_apiserver_check_sends_its_exclusions(http_server: Any, probes: Any, pki: Pki) -> None:
    server = await http_server(ssl_context=server_tls(pki))
    check = KubeApiserverCheck(
        type="kube-apiserver", port=server.port, ca_file=pki.ca, exclude=("etcd", "etcd-readiness")
    )
    assert (await probes(make_probe(check)).run()).ok
    assert server.requests == ["GET /readyz?exclude=etcd&exclude=etcd-readiness HTTP/1.1"]


# --------------------------------------------------------------------------- noticing death


KILLABLE_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


@pytest.fixture
async def killable_server() -> AsyncIterator[Callable[[], Any]]:
    """Start a real HTTP server process; the test kills it with SIGKILL. Reaped in any case."""
    procs: list[asyncio.subprocess.Process] = []

    async def start() -> tuple[asyncio.subprocess.Process, int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILLABLE_SERVER, stdout=asyncio.subprocess.PIPE
        )
        procs.append(proc)
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 10))
        return proc, port

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_wait_broken_returns_when_the_server_is_killed(killable_server: Any, probes: Any) -> None:
    proc, port = await killable_server()
    probe = probes(make_probe(http(f"http://127.0.0.1:{port}/", interval=10.0)))
    assert (await probe.run()).ok
    watch = asyncio.create_task(probe.wait_broken())
    await asyncio.sleep(0.1)
    assert not watch.done()
    killed = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.wait_for(watch, SLACK)
    noticed = time.monotonic() - killed
    result = await probe.run()
    assert (result.ok, result.detail, result.broken) == (False, "connection refused", True)
    assert noticed < SLACK


async def test_wait_broken_does_not_spin_on_a_server_closing_idle_connections(
    http_server: Any, probes: Any
) -> None:
    server = await http_server(close_idle_after=0.01)
    probe = probes(make_probe(http(server.url, interval=0.1)))
    assert (await probe.run()).ok
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(probe.wait_broken(), 1.0)
    # at most 3 reconnects per 0.1 s interval: about 30 in a second; unlimited would be about 100
    assert 2 <= server.connections <= 40
    assert (await probe.run()).ok


async def test_wait_broken_waits_while_the_target_is_known_down(probes: Any) -> None:
    probe = probes(make_probe(http(f"http://127.0.0.1:{free_port()}/", interval=0.01)))
    assert (await probe.run()).broken
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(probe.wait_broken(), 0.3)


async def test_tcp_wait_broken_ignores_a_banner_and_notices_death(probes: Any) -> None:
    writers: list[asyncio.StreamWriter] = []

    async def banner(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        w.write(b"220 hello\r\n")
        await w.drain()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    probe = probes(make_probe(TcpCheck(type="tcp", port=port, interval=10.0)))
    try:
        assert (await probe.run()).ok
        watch = asyncio.create_task(probe.wait_broken())
        await asyncio.sleep(0.2)
        assert not watch.done()
        server.close()
        for w in writers:
            w.transport.abort()
        await asyncio.wait_for(watch, SLACK)
    finally:
        server.close()
        await server.wait_closed()
    assert (await probe.run()).detail == "connection refused"


# --------------------------------------------------------------------------- tcp


async def test_tcp_ok_and_refused(http_server: Any, probes: Any) -> None:
    server = await http_server()
    ok = await probes(make_probe(TcpCheck(type="tcp", port=server.port))).run()
    assert (ok.ok, ok.detail, ok.broken) == (True, "connected", False)
    refused = await probes(make_probe(TcpCheck(type="tcp", host="localhost", port=free_port()))).run()
    assert (refused.ok, refused.detail, refused.broken) == (False, "connection refused", True)


# --------------------------------------------------------------------------- exec


def exec_check(*argv: str, timeout: float = 2.0) -> ExecCheck:
    return ExecCheck(type="exec", command=argv, timeout=timeout)


async def test_exec_ok() -> None:
    result = await ExecProbe(exec_check("true")).run()
    assert (result.ok, result.detail, result.broken) == (True, "exit 0", False)


async def test_exec_failure_reports_first_stderr_line() -> None:
    script = "echo to-stdout; echo >&2; echo 'db is down: '$(printf 'x%.0s' $(seq 300)) >&2; exit 3"
    result = await ExecProbe(exec_check("sh", "-c", script)).run()
    assert not result.ok
    assert result.detail.startswith("exit 3: db is down: xxx")
    assert result.detail.endswith("… (320 characters)")
    assert len(result.detail) < 250


async def test_exec_missing_command() -> None:
    result = await ExecProbe(exec_check("/nonexistent/check")).run()
    assert not result.ok
    assert result.detail.startswith("cannot run /nonexistent/check")


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


async def test_exec_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; sleep 30 & sleep 30"
    start = time.monotonic()
    result = await ExecProbe(exec_check("sh", "-c", script, timeout=0.5)).run()
    elapsed = time.monotonic() - start
    assert (result.ok, result.detail) == (False, "timed out after 0.5s")
    assert elapsed < 0.5 + SLACK
    pgid = int(pidfile.read_text())
    await eventually(lambda: not _group_members(pgid))


async def test_exec_cancelled_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(ExecProbe(exec_check("sh", "-c", f"echo $$ > {pidfile}; sleep 30")).run())
    await eventually(lambda: pidfile.exists() and pidfile.read_text().strip())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pgid = int(pidfile.read_text())
    await eventually(lambda: not _group_members(pgid))


async def test_exec_wait_broken_never_returns() -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ExecProbe(exec_check("true")).wait_broken(), 0.1)


# --------------------------------------------------------------------------- run_check


async def test_run_check_emits_on_the_timer_and_at_once_on_death(http_server: Any) -> None:
    server = await http_server()
    probe = make_probe(http(server.url, interval=0.1))
    results: list[ProbeResult] = []
    got = asyncio.Event()
    delays = iter([0.01, 0.01, 30.0])

    def emit(result: ProbeResult) -> None:
        results.append(result)
        got.set()

    task = asyncio.create_task(run_check(probe, emit=emit, next_delay=lambda: next(delays, 30.0)))
    try:
        while len(results) < 3:
            await asyncio.wait_for(got.wait(), SLACK)
            got.clear()
        assert all(r.ok for r in results)
        killed = time.monotonic()
        await server.kill()
        await asyncio.wait_for(got.wait(), SLACK)
        assert time.monotonic() - killed < SLACK
        assert (results[3].ok, results[3].detail, results[3].broken) == (False, "connection refused", True)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert server.connections == 1


async def test_run_check_stamps_results_with_the_given_clock() -> None:
    results: list[ProbeResult] = []
    task = asyncio.create_task(
        run_check(
            ExecProbe(exec_check("true")), emit=results.append, next_delay=lambda: 0.01, clock=lambda: 42.0
        )
    )
    await eventually(lambda: len(results) >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert {r.at for r in results} == {42.0}


async def test_run_check_closes_the_kept_connection_when_cancelled(http_server: Any) -> None:
    server = await http_server()
    results: list[ProbeResult] = []
    task = asyncio.create_task(
        run_check(make_probe(http(server.url)), emit=results.append, next_delay=lambda: 30.0)
    )
    await eventually(lambda: results)
    assert server._writers
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: not server._writers)


async def test_make_probe_types() -> None:
    assert isinstance(make_probe(TcpCheck(type="tcp", port=1)), TcpProbe)
    assert isinstance(make_probe(exec_check("true")), ExecProbe)
    assert isinstance(make_probe(http("http://127.0.0.1/")), HttpProbe)


async def test_exec_cancelled_while_starting_leaves_nothing_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    for _ in range(5):
        pidfile.unlink(missing_ok=True)
        task = asyncio.create_task(
            ExecProbe(exec_check("sh", "-c", f"echo $$ > {pidfile}; sleep 30 & sleep 30")).run()
        )
        await asyncio.sleep(0)
        task.cancel()
        start = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - start < SLACK
        if pidfile.exists() and pidfile.read_text().strip():
            leader = int(pidfile.read_text())
            await eventually(lambda: not _group_members(leader))  # noqa: B023 (awaited here)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.sampled_from(
                [
                    b"HTTP/1.1 200 OK\r\n",
                    b"HTTP/1.0 503 X\r\n",
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    b"Content-Length: 5\r\n",
                    b"Content-Length: -1\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                    b"Connection: close\r\n",
                    b"\r\n",
                    b"5\r\nhello\r\n",
                    b"zz\r\n",
                    b"0\r\n\r\n",
                    b" folded\r\n",
                    b"no-colon\r\n",
                ]
            ),
            max_size=8,
        ).map(b"".join),
    )
)
async def test_http_probe_never_raises_whatever_the_server_sends(probes: Any, payload: bytes) -> None:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(payload)
        await w.drain()
        w.write_eof()
        await r.read()
        w.transport.abort()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        probe = probes(make_probe(http(f"http://127.0.0.1:{port}/", timeout=0.5)))
        result = await probe.run()
        await probe.aclose()
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(result, ProbeResult)
    assert result.ok == (result.detail == "HTTP 200")
