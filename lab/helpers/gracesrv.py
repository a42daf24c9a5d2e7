#!/usr/bin/env python3
"""An HTTP server that stops the way kube-apiserver does, for the lab.

`GET /readyz` answers 200, `GET /` this node's name. On SIGTERM it keeps serving but answers
`/readyz` with 503 for `--shutdown-delay` seconds (kube-apiserver's
`--shutdown-delay-duration`: load balancers see it unready and take it out while it still
serves), then stops listening and exits. SIGKILL is the crash case: nothing answers at once.
Connections are HTTP/1.1 keep-alive, as real API clients use them.
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--shutdown-delay", type=float, default=3.0)
    args = parser.parse_args()
    body = f"{args.name}\n".encode()
    stopping = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            code, text = 200, body
            if self.path.startswith("/readyz"):
                code, text = (503, b"shutting down\n") if stopping.is_set() else (200, b"ok\n")
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = Server(("0.0.0.0", args.port), Handler)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

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
    print(f"gracesrv {args.name} listening on 0.0.0.0:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    print(f"gracesrv {args.name}: stopped", flush=True)


if __name__ == "__main__":
    main()
