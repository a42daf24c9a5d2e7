#!/usr/bin/env python3
"""A kube-apiserver stand-in for the lab: its health endpoints, its graceful stop, its etcd.

What it answers, as kube-apiserver does (k8s.io/apiserver `healthz`):

- `/readyz`, `/livez`, `/healthz`: each runs its named checks (ping, log, etcd, ...; `/readyz`
  also has informer-sync and shutdown, and etcd-readiness from v1.25, `--minor`). All pass:
  200 `ok` (with `?verbose`: one `[+]name ok` line each, then `readyz check passed`). One
  fails: 500 with every check's line (`[-]etcd failed: reason withheld`) and `readyz check
  failed`. `?exclude=NAME` (repeatable) leaves a check out (`[+]etcd excluded: ok`); a name
  the endpoint does not have adds `warn: some health checks cannot be excluded: no matches
  for "NAME"` and changes nothing else. `/readyz/etcd` and friends run one check. Like
  kube-apiserver, `/livez` and `/healthz` include the etcd check: they fail while etcd does.
- `/version`: 200 with the version JSON, whatever etcd does (it needs no storage).
- etcd: "down" for this server while any `--etcd-down-file` exists. The etcd checks then
  take `--etcd-timeout` seconds to fail, like kube-apiserver's etcd client waiting for a
  connection until its `--etcd-healthcheck-timeout` deadline. Give every node the same file
  for an outage of the one shared etcd, a file of its own for one node losing its etcd.
- SIGTERM: `--shutdown-delay-duration`. The `shutdown` check fails (so `/readyz` answers 500)
  while everything else is still served for `--shutdown-delay` seconds; then it stops
  listening and exits. SIGKILL is the crash: nothing answers at once.
- Over HTTPS with `--tls-cert`/`--tls-key`, as kube-apiserver serves; plain HTTP without.
- Lab additions, not kube-apiserver's: `GET /` answers this node's name, and every answer
  carries `X-Lab-Node: <name>`, so a client can count which node served it.

Anything else is 404. Connections are HTTP/1.1 keep-alive, as API clients and probes use them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # the TLS handshake runs in the connection's own thread, never in the accept loop
        request.settimeout(5)
        conn = self.tls.wrap_socket(request, server_side=True)
        conn.settimeout(None)
        try:
            super().finish_request(conn, client_address)
        finally:
            self.shutdown_request(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            return  # a probe that gave up, a client that went away: routine in the lab
        super().handle_error(request, client_address)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--shutdown-delay", type=float, default=3.0)
    parser.add_argument("--etcd-down-file", action="append", default=[], metavar="PATH")
    parser.add_argument("--etcd-timeout", type=float, default=2.0)
    parser.add_argument("--minor", type=int, default=23, help="Kubernetes minor version (default 23)")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    stopping = threading.Event()

    def etcd() -> bool:
        if any(os.path.exists(p) for p in args.etcd_down_file):
            time.sleep(args.etcd_timeout)
            return False
        return True

    def shutdown() -> bool:
        return not stopping.is_set()

    def always() -> bool:
        return True

    hooks: list[tuple[str, Callable[[], bool]]] = [
        ("poststarthook/generic-apiserver-start-informers", always),
        ("poststarthook/rbac/bootstrap-roles", always),
    ]
    common: list[tuple[str, Callable[[], bool]]] = [("ping", always), ("log", always), ("etcd", etcd)]
    readyz = [*common]
    if args.minor >= 25:
        readyz.append(("etcd-readiness", etcd))
    readyz += [("informer-sync", always), *hooks, ("shutdown", shutdown)]
    endpoints = {"readyz": readyz, "livez": [*common, *hooks], "healthz": [*common, *hooks]}
    version = json.dumps(
        {
            "major": "1",
            "minor": str(args.minor),
            "gitVersion": f"v1.{args.minor}.17",
            "platform": "linux/amd64",
        },
        indent=2,
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Lab-Node", args.name)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            path, query = parts.path.rstrip("/") or "/", parse_qs(parts.query, keep_blank_values=True)
            if path == "/":
                self.answer(200, f"{args.name}\n".encode())
            elif path == "/version":
                self.answer(200, version, "application/json")
            elif path.lstrip("/") in endpoints:
                self.health(path.lstrip("/"), query)
            elif path.lstrip("/").split("/", 1)[0] in endpoints:
                endpoint, name = path.lstrip("/").split("/", 1)
                check = dict(endpoints[endpoint]).get(name)
                if check is None:
                    self.answer(404, b"404 page not found\n")
                elif check():
                    self.answer(200, b"ok")
                else:
                    self.answer(500, f"internal server error: {name} check failed\n".encode())
            else:
                self.answer(404, b"404 page not found\n")

        def health(self, endpoint: str, query: dict[str, list[str]]) -> None:
            excluded = set(query.get("exclude", []))
            lines, failed = [], False
            for name, check in endpoints[endpoint]:
                if name in excluded:
                    excluded.discard(name)
                    lines.append(f"[+]{name} excluded: ok")
                elif check():
                    lines.append(f"[+]{name} ok")
                else:
                    lines.append(f"[-]{name} failed: reason withheld")
                    failed = True
            if excluded:
                names = ",".join(f'"{n}"' for n in sorted(excluded))
                lines.append(f"warn: some health checks cannot be excluded: no matches for {names}")
            if failed:
                # always verbose on failure, and http.Error's newline at the end
                self.answer(500, ("\n".join(lines) + f"\n{endpoint} check failed\n").encode())
            elif "verbose" in query:
                self.answer(200, ("\n".join(lines) + f"\n{endpoint} check passed\n").encode())
            else:
                self.answer(200, b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = Server(("0.0.0.0", args.port), Handler)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.tls = ctx

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        print(f"gracesrv {args.name}: SIGTERM, unready for {args.shutdown_delay}s", flush=True)

        def finish() -> None:
            time.sleep(args.shutdown_delay)
            server.shutdown()

        threading.Thread(target=finish, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    scheme = "https" if args.tls_cert else "http"
    print(f"gracesrv {args.name} listening on {scheme}://0.0.0.0:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    print(f"gracesrv {args.name}: stopped", flush=True)


if __name__ == "__main__":
    main()
