#!/usr/bin/env python3
"""Minimal ExaBGP API process for the lab demo (not bgpvip).

Announces the given prefixes with ``next-hop self`` on start, withdraws them while
``--withdraw-file`` exists and re-announces when it goes away. It reads its stdin
continuously (acks and events share it; an unread pipe would stall ExaBGP) and exits
when ExaBGP closes it. Diagnostics go to stderr, which ExaBGP passes through to its log.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prefixes", nargs="+")
    parser.add_argument("--withdraw-file", required=True)
    args = parser.parse_args()
    stop = threading.Event()

    def reader() -> None:
        for line in sys.stdin:
            print(f"minispeaker: < {line.rstrip()[:300]}", file=sys.stderr, flush=True)
        stop.set()

    threading.Thread(target=reader, daemon=True).start()

    def send(action: str) -> None:
        for prefix in args.prefixes:
            line = f"{action} route {prefix} next-hop self"
            print(f"minispeaker: > {line}", file=sys.stderr, flush=True)
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    parent = os.getppid()
    announced = False
    while not stop.is_set() and os.getppid() == parent:
        want = not os.path.exists(args.withdraw_file)
        if want != announced:
            send("announce" if want else "withdraw")
            announced = want
        stop.wait(0.01)
    return 0


if __name__ == "__main__":
    sys.exit(main())
