#!/usr/bin/env python3
"""ExaBGP API process for the lab tests: announce on start, withdraw when a trigger file appears.

It reads stdin continuously in a thread (ExaBGP stalls if nobody drains it) and appends
every line it receives (acks ``done``/``error``, JSON neighbor events) to ``--events``,
so a test can see what ExaBGP answered. Exits when ExaBGP closes stdin or goes away.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefix", action="append", required=True, help="prefix to announce (repeatable)")
    parser.add_argument("--withdraw-file", required=True, help="withdraw once this file exists")
    parser.add_argument("--events", required=True, help="append every line read from ExaBGP here")
    parser.add_argument("--med", type=int, default=None)
    args = parser.parse_args()
    closed = threading.Event()

    def reader() -> None:
        with open(args.events, "a", buffering=1) as events:
            for line in sys.stdin:
                events.write(line)
        closed.set()

    threading.Thread(target=reader, daemon=True).start()

    def send(line: str) -> None:
        print(f"vip_api: > {line}", file=sys.stderr, flush=True)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    med = f" med {args.med}" if args.med is not None else ""
    for prefix in args.prefix:
        send(f"announce route {prefix} next-hop self{med}")
    parent = os.getppid()
    withdrawn = False
    while not closed.wait(0.01) and os.getppid() == parent:
        if not withdrawn and os.path.exists(args.withdraw_file):
            for prefix in args.prefix:
                send(f"withdraw route {prefix}")
            withdrawn = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
