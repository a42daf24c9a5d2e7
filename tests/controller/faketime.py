"""Fake time for the controller's tests: one clock for its loop, leader elector, watcher and Event
recorder (`bgpvip.controller.options.Clock`), moved on by the test and by nothing else.

The fake apiserver answers over real HTTP from its own threads, so time may only move on when
the controller has nothing in flight: `settle()` waits (a hang detector bounds it, not a
measurement) until no request of the counting client is open, then `advance()` wakes the
sleepers due, timer by timer. Between calls to `advance()` fake time stands still: whatever a
test sees happen without advancing it happened without any timer."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bgpvip.adapters.kube import KubeClient
from bgpvip.controller.options import Clock

HANG = 10.0
"""Real seconds after which waiting for the controller to go quiet is a hang (a failure)."""


class CountingClient(KubeClient):
    """bgpvip's client, counting the requests it has in flight (a watch until it is open)."""

    in_flight = 0

    async def request(self, *args: Any, **kw: Any) -> bytes:
        self.in_flight += 1
        try:
            return await super().request(*args, **kw)
        finally:
            self.in_flight -= 1

    @contextlib.asynccontextmanager
    async def stream(self, *args: Any, **kw: Any) -> AsyncIterator[AsyncIterator[bytes]]:
        self.in_flight += 1
        opening = True
        try:
            async with super().stream(*args, **kw) as lines:
                self.in_flight -= 1
                opening = False
                yield lines
        finally:
            if opening:
                self.in_flight -= 1


class FakeTime:
    def __init__(self, busy: Callable[[], bool] = lambda: False, start: float = 1000.0) -> None:
        self.now = start
        self.busy = busy
        """True while something is in flight that time must wait for."""
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def clock(self) -> Clock:
        return Clock(now=lambda: self.now, wall=lambda: 1.7e9 + self.now, sleep=self.sleep)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), fut))
        await fut

    async def settle(self) -> None:
        """Let the controller finish what it does now: three looks in a row with nothing in
        flight (each look lets the loop read what the server sent meanwhile)."""
        deadline = time.monotonic() + HANG
        quiet = 0
        while quiet < 3:
            await asyncio.sleep(0.001)
            quiet = 0 if self.busy() else quiet + 1
            assert time.monotonic() < deadline, "the controller never went quiet"

    async def advance(self, seconds: float) -> None:
        """Move time on by `seconds`, waking each sleeper at its time."""
        await self.advance_to(self.now + seconds)

    async def advance_to(self, end: float) -> None:
        while True:
            await self.settle()
            wake = self._next_wake()
            if wake is None or wake > end:
                self.now = max(self.now, end)
                return
            self.now = max(self.now, wake)
            while self._sleepers and self._sleepers[0][0] <= self.now:
                _, _, fut = heapq.heappop(self._sleepers)
                if not fut.done():
                    fut.set_result(None)

    def _next_wake(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def until(self, predicate: Callable[[], Any], within: float) -> float:
        """Move time on, timer by timer, until `predicate` holds; the fake seconds that took.
        Fails when it does not hold within `within` fake seconds."""
        started = self.now
        await self.settle()
        while not predicate():
            wake = self._next_wake()
            assert wake is not None and wake - started <= within, (
                f"not within {within} s of fake time: {predicate}"
            )
            await self.advance_to(wake)
        return self.now - started


async def eventually(predicate: Callable[[], Any], what: str = "") -> None:
    """Wait, with fake time standing still, until `predicate` holds: what happens on events
    alone. Fails after `HANG` real seconds."""
    deadline = time.monotonic() + HANG
    while not predicate():
        assert time.monotonic() < deadline, f"never happened (fake time standing still): {what or predicate}"
        await asyncio.sleep(0.002)
