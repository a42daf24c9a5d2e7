"""A live reload with a hostile config file: the speaker's config watcher rejects it, keeps the
last good config and the loop running, and shows the (clipped) error in /status.

The files are those PyYAML and pydantic used to turn into ValueError or RecursionError: the
reload task died with them, and with it the speaker, which ExaBGP then respawned into the same
crash every ~13.6 s while routes stayed frozen. SIGHUP-style reloads (`reload_now`), so nothing
waits on the poll timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bgpvip.core.config import Config, load
from bgpvip.core.model import Applied
from bgpvip.daemon import ProbeManager, Speaker
from bgpvip.reconcile import Reconciler, World, seed_health
from bgpvip.status import StatusBoard
from tests.fakes import FakeExaBGP, FakeNetlink

pytestmark = [pytest.mark.timeout(20)]

VIP = "198.51.100.10"
VIP2 = "198.51.100.11"


def doc(*vips: str) -> dict[str, Any]:
    return {
        "bgp": {
            "local_as": 65100,
            "peers": [{"address": "10.0.1.1", "peer_as": 65000, "local_address": "10.0.1.2"}],
        },
        "vips": [{"address": v, "interface": None} for v in vips],
        "status": {"enabled": False},
    }


GOOD = json.dumps(doc(VIP))
HEAD = GOOD[:-1]  # the good document without its closing brace, to append a bad member to

BAD_FILES = [
    ("impossible-date", HEAD + ', "node_name": 2024-99-99}', "cannot read '2024-99-99'"),
    ("huge-integer", HEAD + ', "priority": ' + "7" * 5000 + "}", "cannot read '7777"),
    ("deep-nesting", HEAD + ', "x": ' + "[" * 5000 + "]" * 5000 + "}", "nested more than 64 levels deep"),
    ("duplicate-key", HEAD + ', "vips": []}', "duplicate key 'vips'"),
    (
        "boolean-port",
        json.dumps({**doc(VIP), "status": {"enabled": False, "port": True}}),
        "status.port: is a boolean",
    ),
    ("spinning-timer", json.dumps({**doc(VIP), "resync_interval": 1e-9}), "resync_interval: must be >= 1"),
    (
        "huge-community",
        json.dumps({**doc(VIP), "vips": [{"address": VIP, "communities": ["1" * 1_000_000]}]}),
        "characters) is not a community",
    ),
]


@dataclass
class Running:
    rec: Reconciler
    board: StatusBoard
    reload_now: asyncio.Event
    path: Path

    def reloads(self, result: str) -> float:
        value = self.board.registry.get_sample_value("bgpvip_config_reloads_total", {"result": result})
        return value or 0.0

    async def reload(self, text: str) -> None:
        """Write the file, ask for a reload, and wait until the watcher has handled it."""
        before = self.reloads("ok") + self.reloads("error")
        self.path.write_text(text)
        self.reload_now.set()
        async with asyncio.timeout(5):
            while self.reloads("ok") + self.reloads("error") == before:  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0)
        for _ in range(20):  # let the loop fold a ConfigChanged in
            await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    path = tmp_path / "config.yaml"
    path.write_text(GOOD)
    config: Config = load(json.loads(GOOD))
    netlink = FakeNetlink()
    exa = FakeExaBGP(netlink, needs_address=set())
    netlink.exa = exa
    board = StatusBoard("n1")
    world = World(config=config, health=seed_health(config, set(), 0.0))
    rec = Reconciler(world, Applied(), exa, netlink, observer=board)
    probes = ProbeManager(rec)
    speaker = Speaker(path, stdin=None, stdout=None)  # type: ignore[arg-type]  # the watcher uses neither
    reload_now = asyncio.Event()
    loop_task = asyncio.create_task(rec.run())
    watcher = asyncio.create_task(speaker._watch_config(rec, probes, board, reload_now))
    try:
        yield Running(rec, board, reload_now, path)
        assert not loop_task.done() and not watcher.done(), "the loop and the watcher must survive"
    finally:
        for task in (watcher, loop_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await probes.close()


@pytest.mark.parametrize(("text", "words"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
async def test_bad_reload_keeps_the_last_good_config(tmp_path: Path, text: str, words: str) -> None:
    async with running(tmp_path) as r:
        good = r.rec.world.config
        await r.reload(text)
        assert r.reloads("error") == 1
        assert r.rec.world.config is good
        assert r.board.config_error is not None and words in r.board.config_error
        assert len(r.board.config_error) < 600, "the error quotes the input clipped"
        assert r.board.snapshot()["config_error"] == r.board.config_error
        # and the speaker still follows the file once it is fixed
        await r.reload(json.dumps(doc(VIP, VIP2)))
        assert r.reloads("ok") == 1
        assert r.board.config_error is None
        assert [str(v.address) for v in r.rec.world.config.vips] == [VIP, VIP2]
