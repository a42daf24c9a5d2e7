#!/usr/bin/env python3
"""Run bgpvip's BFD adapter on an asyncio loop, alone, for the lab: no BGP, no speaker.

Started inside a node's namespace (`ip netns exec NS python bfd_runner.py ...`). It prints one
JSON object per line on stdout (`{"event": "transition", ...}`, replies to commands) and reads
one JSON command per line on stdin:

  {"cmd": "status"}                          -> {"event": "status", "sessions": [...]}
  {"cmd": "pause", "seconds": S}             blocks the event loop for S seconds (time.sleep):
                                             a hung speaker; replies {"event": "paused", "wall": T}
                                             with the wall-clock time the stall began, then
                                             {"event": "resumed", "wall": T} once it is over
  {"cmd": "admin_down"} / {"cmd": "admin_up"}
  {"cmd": "reconfigure", "tx": MS, "rx": MS, "mult": N}
  {"cmd": "quit"}                            AdminDown, then exit

`--duration S` runs for S seconds without reading stdin, then prints the process CPU time
(`{"event": "cpu", "user": .., "system": .., "wall": ..}`) and exits: the cost measurement.

  --session PEER,LOCAL[,IFACE]   one per session (repeatable)
  --tx MS --rx MS --mult N       timers of every session (default 100, 100, 3)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import asdict
from ipaddress import ip_address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bgpvip.adapters.bfd import Bfd, PeerSpec, Transition
from bgpvip.core.bfd import Timers
from bgpvip.core.bfd_packet import Diag, State


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(_plain(obj), default=str) + "\n")
    sys.stdout.flush()


def _plain(value: Any) -> Any:
    """States by name ("Up"), diagnostics by code (7), addresses as text."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, State):
        return value.label
    if isinstance(value, Diag):
        return int(value)
    return value


def on_transition(t: Transition) -> None:
    emit({"event": "transition", "wall": time.time(), **asdict(t)})


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--session", action="append", required=True)
    parser.add_argument("--tx", type=int, default=100)
    parser.add_argument("--rx", type=int, default=100)
    parser.add_argument("--mult", type=int, default=3)
    parser.add_argument("--duration", type=float)
    args = parser.parse_args()
    timers = Timers(desired_min_tx=args.tx * 1000, required_min_rx=args.rx * 1000, detect_mult=args.mult)
    bfd = Bfd(on_transition=on_transition)
    specs = []
    for text in args.session:
        peer, local, *iface = text.split(",")
        spec = PeerSpec(
            peer=ip_address(peer),
            local=ip_address(local),
            timers=timers,
            interface=iface[0] if iface else None,
        )
        bfd.add(spec)
        specs.append(spec)
    emit({"event": "started", "pid": os.getpid(), "sessions": len(specs)})
    if args.duration is not None:
        up_at: float | None = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30 and up_at is None:
            await asyncio.sleep(0.05)
            if all(s.state == State.UP for s in bfd.status()):
                up_at = time.monotonic()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        w0 = time.monotonic()
        await asyncio.sleep(args.duration)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        status = bfd.status()
        emit(
            {
                "event": "cpu",
                "all_up": up_at is not None,
                "user": r1.ru_utime - r0.ru_utime,
                "system": r1.ru_stime - r0.ru_stime,
                "wall": time.monotonic() - w0,
                "packets_out": sum(s.packets_out for s in status),
                "packets_in": sum(s.packets_in for s in status),
                "states": [s.state for s in status],
            }
        )
        await bfd.shutdown(linger=0.1)
        return 0

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        what = cmd["cmd"]
        if what == "status":
            emit({"event": "status", "sessions": [asdict(s) for s in bfd.status()]})
        elif what == "pause":
            emit({"event": "paused", "wall": time.time()})
            time.sleep(float(cmd["seconds"]))  # noqa: ASYNC251 - the point: a stalled loop sends nothing
            emit({"event": "resumed", "wall": time.time()})
        elif what == "admin_down":
            bfd.admin_down()
            emit({"event": "done", "cmd": what, "wall": time.time()})
        elif what == "admin_up":
            bfd.admin_up()
            emit({"event": "done", "cmd": what, "wall": time.time()})
        elif what == "reconfigure":
            new = Timers(
                desired_min_tx=cmd["tx"] * 1000, required_min_rx=cmd["rx"] * 1000, detect_mult=cmd["mult"]
            )
            for spec in specs:
                bfd.reconfigure(spec.peer, new, spec.interface)
            emit({"event": "done", "cmd": what, "wall": time.time()})
        elif what == "quit":
            break
    await bfd.shutdown(linger=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
