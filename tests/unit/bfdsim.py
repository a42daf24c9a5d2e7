"""Two pure BFD sessions joined by a simulated link, on fake time, for the core tests.

Every packet goes through `encode()` and `decode()`, arrives after `delay` seconds unless its
sender's side of the link is cut, and is handed to the other session's `receive()` with TTL 255.
The randomness of the jitter comes from a seeded `random.Random`, so a run is reproducible.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from bgpvip.core.bfd import Output, Session, StateChange, Timers, Transmit
from bgpvip.core.bfd_packet import ControlPacket, Discard, decode, encode


def ms(value: float) -> int:
    """Milliseconds as the core's microseconds."""
    return round(value * 1000)


def timers(tx: float = 100, rx: float = 100, mult: int = 3) -> Timers:
    return Timers(desired_min_tx=ms(tx), required_min_rx=ms(rx), detect_mult=mult)


@dataclass
class Net:
    a: Session
    b: Session
    delay: float = 0.001
    seed: int = 0
    now: float = 0.0
    cut: set[str] = field(default_factory=set)
    """Senders ("a", "b") whose packets are lost."""
    changes: list[tuple[str, StateChange]] = field(default_factory=list)
    sent: list[tuple[float, str, ControlPacket]] = field(default_factory=list)
    discards: list[tuple[str, Discard]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._seq = itertools.count()

    def session(self, name: str) -> Session:
        return self.a if name == "a" else self.b

    def _set(self, name: str, s: Session) -> None:
        if name == "a":
            self.a = s
        else:
            self.b = s

    def apply(self, name: str, result: tuple[Session, tuple[Output, ...]]) -> None:
        """Store a session returned by an operation and route its outputs."""
        s, outputs = result
        self._set(name, s)
        other = "b" if name == "a" else "a"
        for o in outputs:
            if isinstance(o, Transmit):
                self.sent.append((self.now, name, o.packet))
                if name not in self.cut:
                    heapq.heappush(
                        self._queue, (self.now + self.delay, next(self._seq), other, encode(o.packet))
                    )
            elif isinstance(o, StateChange):
                self.changes.append((name, o))
            else:
                self.discards.append((name, o))

    def run_until(self, end: float) -> None:
        while True:
            times = [t for t in (self.a.next_deadline(), self.b.next_deadline()) if t is not None]
            if self._queue:
                times.append(self._queue[0][0])
            t = min(times, default=None)
            if t is None or t > end:
                self.now = end
                return
            self.now = max(self.now, t)
            if self._queue and self._queue[0][0] <= t:
                _, _, to, data = heapq.heappop(self._queue)
                packet = decode(data)
                assert isinstance(packet, ControlPacket), packet
                self.apply(to, self.session(to).receive(packet, now=self.now, ttl=255, rnd=self.rng.random()))
                continue
            for name in ("a", "b"):
                deadline = self.session(name).next_deadline()
                if deadline is not None and deadline <= t:
                    self.apply(name, self.session(name).tick(self.now, rnd=self.rng.random()))

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def sent_by(self, name: str, since: float = 0.0) -> list[tuple[float, ControlPacket]]:
        return [(t, p) for t, n, p in self.sent if n == name and t >= since]


def pair(ta: Timers | None = None, tb: Timers | None = None, *, seed: int = 0, delay: float = 0.001) -> Net:
    """Two fresh sessions (discriminators 0x1111 and 0x2222), b starting 10 ms after a."""
    return Net(
        Session.start(ta or timers(), local_discr=0x1111, now=0.0),
        Session.start(tb or timers(), local_discr=0x2222, now=0.01),
        seed=seed,
        delay=delay,
    )


def up_pair(ta: Timers | None = None, tb: Timers | None = None, *, seed: int = 0) -> Net:
    """A pair whose sessions are Up with the poll for the fast rate finished on both sides."""
    net = pair(ta, tb, seed=seed)
    net.run_for(3.0)
    assert net.a.state.label == net.b.state.label == "Up", (net.a, net.b)
    assert not net.a.polling and not net.b.polling
    return net
