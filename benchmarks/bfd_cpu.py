#!/usr/bin/env python3
"""CPU cost of bgpvip's BFD: per packet (timeit), and per process holding N sessions.

    sudo .venv/bin/python benchmarks/bfd_cpu.py --micro                  # encode/decode/receive/tick
    sudo .venv/bin/python benchmarks/bfd_cpu.py --sessions 1 10 --seconds 60

The process figure: two namespaces joined by a veth pair, N addresses on each side, and two
`tests/lab/helpers/bfd_runner.py` processes holding N sessions towards each other at
100 ms x 3 (so the measured one sends and receives about 10 packets a second per session).
The measured runner's user+system CPU over the window comes from getrusage; the load average
before and after is printed, because the figure is meaningless on a loaded machine. Everything
it creates (namespaces `bvbc<pid>a`/`b`) is removed when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import timeit
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchutil as bu  # noqa: E402

from bgpvip.core.bfd import Session, Timers  # noqa: E402
from bgpvip.core.bfd_packet import ControlPacket, State, decode, encode  # noqa: E402

RUNNER = ROOT / "tests" / "lab" / "helpers" / "bfd_runner.py"


def micro(number: int) -> dict[str, float]:
    """Microseconds per call of each step a packet goes through."""
    timers = Timers(desired_min_tx=100_000, required_min_rx=100_000, detect_mult=3)
    s = Session.start(timers, local_discr=1, now=0.0)
    hello = ControlPacket(
        state=State.DOWN,
        detect_mult=3,
        my_discriminator=2,
        your_discriminator=0,
        desired_min_tx=1_000_000,
        required_min_rx=100_000,
    )
    s, _ = s.receive(hello, now=0.0, ttl=255, rnd=0.5)
    up = ControlPacket(
        state=State.UP,
        detect_mult=3,
        my_discriminator=2,
        your_discriminator=1,
        desired_min_tx=100_000,
        required_min_rx=100_000,
    )
    s, _ = s.receive(up, now=0.01, ttl=255, rnd=0.5)
    s, _ = s.receive(replace(up, final=True), now=0.02, ttl=255, rnd=0.5)  # ends the poll for 100 ms
    assert s.state == State.UP and not s.polling
    data = encode(up)
    rng = random.Random(1)
    results = {}
    for name, stmt in {
        "encode": lambda: encode(up),
        "decode": lambda: decode(data),
        "receive (Up, steady)": lambda: s.receive(up, now=1.0, ttl=255, rnd=rng.random()),
        "tick (periodic send)": lambda: s.tick(s.next_tx or 0.0, rnd=rng.random()),
    }.items():
        best = min(timeit.repeat(stmt, number=number, repeat=5))
        results[name] = best / number * 1e6
    return results


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True)


def process_cost(n: int, seconds: float) -> dict[str, object]:
    base = f"bvbc{os.getpid() % 100000}"
    a, b = f"{base}a", f"{base}b"
    procs: list[subprocess.Popen[str]] = []
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v0", "netns", b)
        for ns, host in ((a, 1), (b, 101)):
            for i in range(n):
                sh("ip", "-n", ns, "addr", "add", f"10.99.{i}.{host}/16", "dev", "v0")
            sh("ip", "-n", ns, "link", "set", "v0", "up")
        pairs = [(f"10.99.{i}.1", f"10.99.{i}.101") for i in range(n)]
        peer_args = [x for lo, hi in pairs for x in ("--session", f"{lo},{hi}")]
        procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    b,
                    sys.executable,
                    str(RUNNER),
                    *peer_args,
                    "--duration",
                    str(seconds + 40),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
        measured_args = [x for lo, hi in pairs for x in ("--session", f"{hi},{lo}")]
        measured = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                a,
                sys.executable,
                str(RUNNER),
                *measured_args,
                "--duration",
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(measured)
        before = bu.loadavg()
        out, _ = measured.communicate(timeout=seconds + 60)
        after = bu.loadavg()
        cpu = next(json.loads(line) for line in out.splitlines() if '"cpu"' in line)
        busy = cpu["user"] + cpu["system"]
        return {
            "sessions": n,
            "seconds": round(cpu["wall"], 2),
            "all_up": cpu["all_up"],
            "states_at_end": sorted(set(cpu["states"])),
            "cpu_seconds": round(busy, 3),
            "percent_of_a_core": round(100 * busy / cpu["wall"], 2),
            "packets_out": cpu["packets_out"],
            "packets_in": cpu["packets_in"],
            "loadavg_before": before,
            "loadavg_after": after,
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro", action="store_true", help="per-call cost of the core (no root needed)")
    parser.add_argument("--number", type=int, default=20000, help="calls per timeit repeat")
    parser.add_argument("--sessions", type=int, nargs="*", default=[], help="session counts to measure")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.micro:
        for name, us in micro(args.number).items():
            print(f"{name:24s} {us:7.2f} us")
    if args.sessions:
        if os.geteuid() != 0:
            print("bfd_cpu.py: --sessions needs root (network namespaces)", file=sys.stderr)
            return 2
        for warning in bu.machine_warnings(bu.machine_state()):
            print(f"bfd_cpu.py: WARNING: {warning}", file=sys.stderr)
    for n in args.sessions:
        print(json.dumps(process_cost(n, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
