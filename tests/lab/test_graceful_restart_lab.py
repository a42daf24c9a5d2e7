"""Planned restarts lose nothing, unplanned failures drop the node fast: with graceful restart
negotiated and BFD at 100 ms x 3, against real FRR 8.4 (bgpd + bfdd) and BIRD 2.0.12.

The node's side is `helpers/grlab.NodeStack`: real ExaBGP with `gr_node.py` as its API process
(the VIP, bgpvip's BFD adapter on the same loop, End-of-RIB after announcing). The tests use
only its event methods (`planned_restart`, `helper_restart`, `cut_link`, ...), so the same
tests can drive `bgpvip run` once the speaker does this itself. The router configurations are
`grlab.frr_config()` and `grlab.bird_config()`: the blocks docs/frr.md and docs/bird.md
recommend. The matrix behind the recommendation is `helpers/gr_matrix.py`
(docs/performance.md#planned-restarts).

What is asserted is what the router does: its kernel route for the VIP (polled every 10 ms)
and new client connections through it (every 20 ms).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import nslab
import pytest

from tests.lab.conftest import new_prefix
from tests.lab.helpers import grlab

DETECTION = 0.3
"""100 ms x 3."""
SLACK = 0.25
"""The router's own scheduling and route removal on a shared 2-core machine."""
WATCHDOG = 0.3
"""How late an ExaBGP answer may be before the helper stops BFD (`NodeOptions.watchdog`)."""
HANDOVER_WINDOW = 3 * 2.0
"""How long the router waits for a handed-over BFD session's next packet (3 x 2 s): a planned
restart is only shown harmless once this has passed with the VIP still there."""


class Rig:
    def __init__(self, lab: nslab.Lab, node: grlab.NodeStack) -> None:
        self.lab = lab
        self.node = node
        self.router = grlab.Router(lab)

    def steady(self) -> None:
        self.node.wait_steady(self.router, timeout=60)

    def restart_node(self, options: grlab.NodeOptions) -> None:
        self.node.terminate()
        self.node.options = options
        self.node.start()
        self.steady()


@pytest.fixture(scope="module", params=["frr", "bird"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    if request.param == "frr":
        lab = nslab.Lab(nslab.DEFAULT_TOPOLOGY, new_prefix(), bfd=True, router_config=grlab.frr_config())
    else:
        lab = nslab.Lab(
            nslab.DEFAULT_TOPOLOGY, new_prefix(), router_software="bird", router_config=grlab.bird_config()
        )
    node = grlab.NodeStack(lab, grlab.NodeOptions())
    try:
        lab.up()
        node.prepare()
        node.start()
        r = Rig(lab, node)
        r.steady()
        yield r
    finally:
        node.terminate()
        lab.down()


@pytest.fixture
def recommended(rig: Rig) -> Rig:
    """The node at the recommended settings (graceful restart with manual End-of-RIB, BFD
    C bit 0), steady, whatever the previous test left."""
    if rig.node.options != grlab.NodeOptions():
        rig.restart_node(grlab.NodeOptions())
    rig.steady()
    return rig


def _after(node: grlab.NodeStack, t: float, old_pid: int) -> list[dict[str, object]]:
    """The events of the helpers started after wall time `t` (not the one that was stopped)."""
    return [e for e in node.events() if e["wall"] >= t and e["pid"] != old_pid]


# --------------------------------------------------------------------------- planned


def test_planned_restart_loses_nothing(recommended: Rig) -> None:
    """`systemctl restart`: the BFD session is handed over (never Down at the router), ExaBGP
    closes the BGP session without a NOTIFICATION (the router keeps the routes as stale), the
    new speaker announces after its first health checks and only then sends End-of-RIB."""
    rig = recommended
    rig.restart_node(grlab.NodeOptions(announce_delay=1.0))
    old_pid = rig.node.helper_pid()
    with grlab.measuring(rig.lab) as (watch, client):
        t = rig.node.planned_restart("handover")
        rig.steady()
        time.sleep(max(0.0, t + HANDOVER_WINDOW + 1.0 - time.time()))
    assert watch.gone_at(t) is None, "the VIP left the router's table during a planned restart"
    assert client.failed(t) == 0 and client.total(t) > 50
    new = _after(rig.node, t, old_pid)
    names = [e["event"] for e in new]
    assert names.index("eor") > names.index("announced"), names  # End-of-RIB only after the VIP
    eor_at = next(float(e["wall"]) for e in new if e["event"] == "eor")  # type: ignore[arg-type]
    print(f"{rig.lab.router_software}: End-of-RIB {eor_at - t:.2f}s after the restart began")
    assert [e["resumed"] for e in new if e["event"] == "bfd-start"] == [True]
    assert [e for e in new if e["event"] == "bfd"] == []  # the resumed session never changed state


def test_helper_restart_loses_nothing(recommended: Rig) -> None:
    """ExaBGP keeps running and respawns the speaker: the BGP session is untouched and the BFD
    session goes on in the new process."""
    rig = recommended
    old_pid = rig.node.helper_pid()
    with grlab.measuring(rig.lab) as (watch, client):
        t = rig.node.helper_restart("handover")
        grlab.wait_for(lambda: rig.node.helper_pid() != old_pid, 10, "a respawned helper")
        rig.steady()
        time.sleep(max(0.0, t + HANDOVER_WINDOW + 1.0 - time.time()))
    assert watch.gone_at(t) is None
    assert client.failed(t) == 0 and client.total(t) > 50
    new = _after(rig.node, t, old_pid)
    assert [e["resumed"] for e in new if e["event"] == "bfd-start"] == [True]
    assert [e for e in new if e["event"] == "bfd"] == []


def test_without_manual_eor_a_slow_speaker_is_blackholed(recommended: Rig) -> None:
    """The trap: ExaBGP's own End-of-RIB goes out before the new speaker has announced, and
    the router drops the stale VIP until the announcement arrives."""
    rig = recommended
    rig.restart_node(grlab.NodeOptions(manual_eor=False, announce_delay=1.0))
    with grlab.measuring(rig.lab) as (watch, client):
        t = rig.node.planned_restart("handover")
        rig.steady()
    assert watch.gone_at(t) is not None
    assert client.failed(t) > 0


def test_admin_down_is_a_failure_to_the_router(recommended: Rig) -> None:
    """RFC 5882 §3.2 says a neighbour's AdminDown is not a path failure; FRR 8.4 and BIRD
    2.0.12 take BGP down for it all the same (bfdd/bfd.c `bs_up_handler` and bgpd/bgp_bfd.c
    `bfd_session_status_update`; proto/bfd/bfd.c `bfd_request_notify`), which is why the
    speaker hands its sessions over instead of sending AdminDown."""
    rig = recommended
    with grlab.measuring(rig.lab) as (watch, _client):
        t = rig.node.helper_restart("admin-down")
        time.sleep(1.0)
    gone = watch.gone_at(t)
    assert gone is not None and gone - t < 0.2


# --------------------------------------------------------------------------- unplanned


@pytest.mark.parametrize("event", ["cut-link", "stop-helper", "kill-helper", "stop-exabgp"])
def test_unplanned_failures_drop_the_node_fast_with_graceful_restart_on(recommended: Rig, event: str) -> None:
    rig = recommended
    node = rig.node
    limit = DETECTION + SLACK + (WATCHDOG + 0.1 if event == "stop-exabgp" else 0.0)
    with grlab.measuring(rig.lab) as (watch, _client):
        if event == "cut-link":
            t = node.cut_link()
        elif event == "stop-helper":
            t = node.stop_helper()
        elif event == "kill-helper":
            t = node.kill_helper()
        else:
            t = node.stop_exabgp()
        time.sleep(limit + 0.5)
        if event == "cut-link":
            node.restore_link()
        elif event == "stop-helper":
            node.cont_helper()
        elif event == "stop-exabgp":
            node.cont_exabgp()
    gone = watch.gone_at(t)
    assert gone is not None, f"{event}: the VIP stayed at the router"
    print(f"{rig.lab.router_software} {event}: VIP gone after {gone - t:.3f}s")
    assert gone - t <= limit


def test_a_killed_exabgp(recommended: Rig) -> None:
    """ExaBGP dies: the kernel closes its TCP session without a NOTIFICATION, so the router
    starts graceful restart before the BFD session times out. BIRD then ends graceful restart
    on the BFD Down (proto/bgp/bgp.c `bgp_bfd_notify`: `bgp_stop`); FRR 8.4 ignores a BFD
    Down once the BGP session is no longer Established (bgpd/bgp_fsm.c `bgp_stop`), and keeps
    the VIP stale until the node's restart time or its End-of-RIB."""
    rig = recommended
    with grlab.measuring(rig.lab) as (watch, client):
        t = rig.node.kill_exabgp()
        time.sleep(2.0)
        gone = watch.gone_at(t)
    rig.node.reap()
    rig.node.start()
    rig.steady()
    if rig.lab.router_software == "bird":
        assert gone is not None and gone - t <= DETECTION + SLACK
    else:
        assert gone is None and client.failed(t) == 0
