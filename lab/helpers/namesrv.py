#!/usr/bin/env python3
"""Tiny HTTP server for the lab: answers every GET with this node's name (IPv4 and IPv6).

`/healthz` is the health endpoint bgpvip (or ExaBGP's healthcheck, or keepalived) probes:
200, or 503 while `--health-file` exists; with `--slow-every N` every Nth health request
answers only after `--slow-seconds`, to show that one slow probe does not withdraw a route.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--health-file", help="while this file exists, /healthz answers 503")
    parser.add_argument("--slow-every", type=int, default=0, help="every Nth /healthz is slow")
    parser.add_argument("--slow-seconds", type=float, default=1.5)
    args = parser.parse_args()
    body = f"{args.name}\n".encode()
    health_requests = itertools.count(1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real health endpoints do

        def do_GET(self) -> None:
            code, text = 200, body
            if self.path.startswith("/healthz"):
                n = next(health_requests)
                if args.slow_every and n % args.slow_every == 0:
                    time.sleep(args.slow_seconds)
                if args.health_file and os.path.exists(args.health_file):
                    code, text = 503, b"unhealthy\n"
                else:
                    text = b"ok\n"
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with DualStackServer(("::", args.port), Handler) as server:
        print(f"namesrv {args.name} listening on [::]:{args.port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
