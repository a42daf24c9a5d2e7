#!/usr/bin/env python3
"""The node's side of a planned or unplanned restart, as the integrated speaker will play it:
an ExaBGP API process that announces a VIP and runs bgpvip's BFD adapter on its own event loop.

ExaBGP starts it (`process ... { run gr_node.py ...; encoder json; }`). It

- reads ExaBGP's stdin continuously (acks, JSON events), announces `--vip` after
  `--announce-delay` seconds (the speaker's first health checks), and with `--eor` sends
  End-of-RIB to each peer once that peer is up and the VIP is announced (ExaBGP's
  `manual-eor true;`);
- runs one BFD session (`--bfd PEER,LOCAL`, 100 ms x 3, C bit `--cbit`) on the same loop, so a
  stopped or killed helper stops BFD with it; with `--handover FILE` it goes on with the
  session a previous helper handed over in FILE (if still valid), and its `hand_over` command
  slows the session down and writes FILE;
- with `--watchdog S`, asks ExaBGP `version` every 0.1 s and stops BFD (no AdminDown: a
  failure) while an answer is more than S seconds late: a hung ExaBGP takes BFD down;
- obeys one JSON command per connection on the unix socket `--control`:
  `admin_down` (AdminDown to the router: a planned stop), `bfd_stop` (stop sending, as a
  crash would), `exabgp_shutdown` (`shutdown` to ExaBGP: every session closes WITHOUT a
  NOTIFICATION), `cease` (NOTIFICATION Cease, then `shutdown`), `hand_over` (BFD to
  `--handover-interval` ms with a poll, the session written to `--handover`, BFD closed
  without AdminDown), `exit` (leave at once), `status`;
- appends one JSON object per event, with the wall time, to `--events`.

Diagnostics go to stderr (ExaBGP's log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bgpvip.adapters.bfd import Bfd, PeerSpec, Transition, dumps, loads
from bgpvip.adapters.exabgp import codec
from bgpvip.core.bfd import Timers
from bgpvip.core.bfd_packet import State

TIMERS = Timers(desired_min_tx=100_000, required_min_rx=100_000, detect_mult=3)


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.events = open(args.events, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        self.bfd: Bfd | None = None
        self.spec: PeerSpec | None = None
        self.announced = asyncio.Event()
        self.up_peers: set[str] = set()
        self.pending: list[tuple[str, float]] = []  # commands waiting for their ack
        self.watchdog_tripped = False

    def emit(self, event: str, **fields: Any) -> None:
        self.events.write(
            json.dumps({"event": event, "wall": time.time(), "pid": os.getpid(), **fields}) + "\n"
        )

    def write(self, line: str) -> None:
        self.pending.append((line, time.monotonic()))
        sys.stdout.write(codec.validate_line(line) + "\n" if line != "version" else "version\n")
        sys.stdout.flush()

    # ------------------------------------------------------------------ BFD

    def bfd_start(self) -> None:
        if self.args.bfd is None or self.bfd is not None:
            return
        peer, local = self.args.bfd.split(",")
        self.spec = PeerSpec(
            peer=ip_address(peer),
            local=ip_address(local),
            timers=TIMERS,
            control_plane_independent=self.args.cbit == 1,
        )
        self.bfd = Bfd(on_transition=self.on_transition)
        resume = None
        if self.args.handover:
            path = Path(self.args.handover)
            if path.exists():
                records = loads(path.read_text())
                path.unlink()
                resume = next((r for r in records if r.matches(self.spec, time.time())), None)
        self.bfd.add(self.spec, resume=resume)
        resumed = self.bfd.status()[0].state == State.UP  # a fresh session starts Down
        self.emit("bfd-start", cbit=self.args.cbit, resumed=resumed)

    def bfd_stop(self, why: str) -> None:
        if self.bfd is not None:
            self.bfd.close()
            self.bfd = None
            self.emit("bfd-stop", why=why)

    def on_transition(self, t: Transition) -> None:
        self.emit("bfd", old=t.old.label, new=t.new.label, diag=int(t.diag), remote=t.remote_state.label)

    # ------------------------------------------------------------------ ExaBGP

    async def read_exabgp(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            message = codec.parse_line(text)
            if isinstance(message, codec.Ack):
                if self.pending:
                    command, _ = self.pending.pop(0)
                    if command != "version":
                        self.emit("ack", command=command, ok=message.ok)
            elif isinstance(message, codec.NeighborEvent):
                self.emit("neighbor", peer=message.peer, state=message.state, reason=message.reason)
                if message.state == "up":
                    self.up_peers.add(message.peer)
                    if self.args.eor:
                        asyncio.get_running_loop().create_task(self.send_eor(message.peer))
                elif message.state == "down":
                    self.up_peers.discard(message.peer)
        self.emit("exabgp-eof")

    async def announce(self) -> None:
        await asyncio.sleep(self.args.announce_delay)
        self.write(f"announce attributes next-hop self nlri {self.args.vip}")
        self.announced.set()
        self.emit("announced", vip=self.args.vip)

    async def send_eor(self, peer: str) -> None:
        await self.announced.wait()
        if peer in self.up_peers:
            self.write(codec.encode_eor(ip_address(self.args.vip.split("/")[0]).version, [peer]))
            self.emit("eor", peer=peer)

    async def watchdog(self) -> None:
        limit = self.args.watchdog
        while True:
            await asyncio.sleep(0.1)
            late = [t for c, t in self.pending if time.monotonic() - t > limit]
            if late and not self.watchdog_tripped:
                self.watchdog_tripped = True
                self.emit("watchdog", state="exabgp-not-answering")
                self.bfd_stop("ExaBGP does not answer")
            elif not late and self.watchdog_tripped:
                self.watchdog_tripped = False
                self.emit("watchdog", state="exabgp-answering")
                self.bfd_start()
            if not any(c == "version" for c, _ in self.pending):
                self.write("version")

    # ------------------------------------------------------------------ control

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            cmd = json.loads(await reader.readline())["cmd"]
            reply: dict[str, Any] = {"ok": True, "cmd": cmd}
            self.emit("control", cmd=cmd)
            if cmd == "admin_down":
                if self.bfd is not None:
                    self.bfd.admin_down()
            elif cmd == "bfd_stop":
                self.bfd_stop("asked")
            elif cmd == "exabgp_shutdown":
                self.write(codec.SHUTDOWN_COMMAND)
            elif cmd == "cease":
                self.write(codec.CEASE_COMMAND)
                await asyncio.sleep(0.2)
                self.write(codec.SHUTDOWN_COMMAND)
            elif cmd == "hand_over":
                if self.bfd is not None:
                    records = await self.bfd.hand_over(
                        transmit_interval_ms=self.args.handover_interval, wall_now=time.time()
                    )
                    self.bfd = None
                    Path(self.args.handover).write_text(dumps(records))  # noqa: ASYNC240 - once, on the way out
                    reply["sessions"] = len(records)
                    self.emit("bfd-handed-over", sessions=len(records))
            elif cmd == "exit":
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
                os._exit(0)
            elif cmd == "status":
                reply["bfd"] = [s.state.label for s in self.bfd.status()] if self.bfd else []
                reply["up"] = sorted(self.up_peers)
            else:
                reply = {"ok": False, "error": f"unknown command {cmd!r}"}
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        finally:
            writer.close()

    async def run(self) -> int:
        self.emit("started", vip=self.args.vip, ppid=os.getppid())
        server = None
        if self.args.control:
            Path(self.args.control).unlink(missing_ok=True)  # noqa: ASYNC240 - before anything runs
            server = await asyncio.start_unix_server(self.control, path=self.args.control)
        self.bfd_start()
        tasks = [asyncio.ensure_future(self.announce())]
        if self.args.watchdog:
            tasks.append(asyncio.ensure_future(self.watchdog()))
        await self.read_exabgp()
        # ExaBGP is gone: whatever the reason, nobody announces for this host any more
        for task in tasks:
            task.cancel()
        self.bfd_stop("ExaBGP exited")
        if server is not None:
            server.close()
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vip", required=True, help="host route to announce, e.g. 198.51.100.20/32")
    parser.add_argument("--bfd", help="PEER,LOCAL: run a BFD session to PEER from LOCAL")
    parser.add_argument("--cbit", type=int, choices=(0, 1), default=0)
    parser.add_argument("--eor", action="store_true", help="send End-of-RIB after announcing (manual-eor)")
    parser.add_argument("--announce-delay", type=float, default=0.0)
    parser.add_argument("--watchdog", type=float, default=0.0, help="stop BFD when ExaBGP is this late")
    parser.add_argument("--control", help="unix socket for commands")
    parser.add_argument("--handover", help="file for a BFD session handed over across a restart")
    parser.add_argument("--handover-interval", type=int, default=2000, help="ms, while handed over")
    parser.add_argument("--events", required=True, help="file to append JSON events to")
    args = parser.parse_args()
    return asyncio.run(Node(args).run())


if __name__ == "__main__":
    sys.exit(main())
