"""`bgpvip routes` shows the latest probe result of a failing check, not the first one.

A DOWN check whose error changed (the CA appeared and the server now answers 403 or 500)
kept showing "TLS setup: ... No such file or directory" for up to 30 s: the loop recomputed
decisions only on state changes, so the decision detail and the per-check view waited for
the next resync. Probe results that change nothing a decision shows still cost no pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgpvip.core import health as healthmod
from bgpvip.core.config import CheckKey, load
from bgpvip.core.desired import NodeState, decide_vip
from bgpvip.core.model import Applied, ProbeResult, Reason
from bgpvip.reconcile import ProbeDone, Reconciler, World, seed_health
from bgpvip.status import StatusBoard
from tests.fakes import FakeExaBGP, FakeNetlink

pytestmark = [pytest.mark.timeout(10)]

CONFIG = load(
    {
        "bgp": {
            "local_as": 65100,
            "peers": [{"address": "10.0.1.1", "peer_as": 65000, "local_address": "10.0.1.2"}],
        },
        "vips": [
            {
                "name": "api",
                "address": "198.51.100.10",
                "interface": None,
                "checks": [{"type": "kube-apiserver", "rise": 3, "fall": 2}],
            }
        ],
    }
)
API = CheckKey("api", 0)
MISSING_CA = "TLS setup: CA file /etc/kubernetes/pki/ca.crt does not exist"


def result(ok: bool, detail: str) -> ProbeResult:
    return ProbeResult(ok=ok, detail=detail)


@contextlib.asynccontextmanager
async def loop() -> AsyncIterator[tuple[Reconciler, StatusBoard]]:
    netlink = FakeNetlink()
    exa = FakeExaBGP(netlink, needs_address=set())
    netlink.exa = exa
    board = StatusBoard("cp1")
    world = World(config=CONFIG, health=seed_health(CONFIG, set(), 0.0))
    rec = Reconciler(world, Applied(), exa, netlink, observer=board)
    task = asyncio.create_task(rec.run())
    await settle()
    try:
        yield rec, board
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def probe(rec: Reconciler, ok: bool, detail: str) -> None:
    rec.post(ProbeDone(API, result(ok, detail)))
    await settle()


def shown(board: StatusBoard) -> tuple[str, str, Any]:
    snap = board.snapshot()
    (decision,) = snap["decisions"]
    (check,) = snap["checks"]
    return decision["reason"], decision["detail"], check["last"]


async def test_a_failing_checks_new_error_replaces_the_old_one() -> None:
    async with loop() as (rec, board):
        await probe(rec, False, MISSING_CA)
        assert shown(board) == (
            "checkFailing",
            f"checks[0] (kube-apiserver /readyz): {MISSING_CA}",
            MISSING_CA,
        )
        await probe(rec, False, "HTTP 403")  # kubeadm wrote the CA; the apiserver is starting
        assert shown(board) == ("checkFailing", "checks[0] (kube-apiserver /readyz): HTTP 403", "HTTP 403")
        await probe(rec, False, "HTTP 500")
        assert shown(board) == ("checkFailing", "checks[0] (kube-apiserver /readyz): HTTP 500", "HTTP 500")


async def test_rising_progress_is_shown_as_it_happens() -> None:
    async with loop() as (rec, board):
        await probe(rec, False, "HTTP 500")
        await probe(rec, True, "HTTP 200")
        assert shown(board)[:2] == ("checkPending", "checks[0] (kube-apiserver /readyz): 1/3 successes")
        await probe(rec, True, "HTTP 200")
        assert shown(board)[:2] == ("checkPending", "checks[0] (kube-apiserver /readyz): 2/3 successes")
        await probe(rec, True, "HTTP 200")
        assert shown(board)[0] == Reason.HEALTHY.value


async def test_results_that_change_nothing_shown_cost_no_pass() -> None:
    async with loop() as (rec, _board):
        await probe(rec, False, "HTTP 500")
        passes = rec.reconciles
        for _ in range(10):
            await probe(rec, False, "HTTP 500")
        assert rec.reconciles == passes
        await probe(rec, False, "timed out after 1.0s")
        assert rec.reconciles == passes + 1


async def test_the_check_view_shows_the_latest_result_between_passes() -> None:
    async with loop() as (rec, board):
        for _ in range(3):
            await probe(rec, True, "HTTP 200")
        assert shown(board)[0] == "healthy"
        passes = rec.reconciles
        await probe(rec, True, "HTTP 204")  # still UP: no decision changes, no pass
        assert rec.reconciles == passes
        assert shown(board)[2] == "HTTP 204"


SOME_RESULTS = st.lists(
    st.tuples(st.booleans(), st.sampled_from(["HTTP 200", "HTTP 403", "HTTP 500", "connection refused"])),
    max_size=30,
)


@given(results=SOME_RESULTS, rise=st.integers(1, 4), fall=st.integers(1, 4))
def test_property_equal_descriptions_give_equal_decisions(
    results: list[tuple[bool, str]], rise: int, fall: int
) -> None:
    """What `described` leaves out never shows in a decision, so skipping the pass is safe."""
    vip = CONFIG.vips[0]
    h = healthmod.initial()
    for ok, detail in results:
        new = healthmod.step(h, result(ok, detail), rise=rise, fall=fall)
        if healthmod.described(new) == healthmod.described(h):
            assert decide_vip(CONFIG, vip, {API: new}, NodeState()) == decide_vip(
                CONFIG, vip, {API: h}, NodeState()
            )
        h = new
