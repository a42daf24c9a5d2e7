"""The speaker's KubeBridge: which Events it records for Service decisions (the decisions
themselves are the core's, tested in tests/unit/test_services.py)."""

from __future__ import annotations

from typing import Any, cast

from bgpvip.core import services as svc
from bgpvip.core.config import load
from bgpvip.daemon import KubeBridge
from bgpvip.reconcile import Reconciler

NODE = "n1"
CONFIG = load(
    {
        "bgp": {"local_as": 65001, "peers": [{"address": "192.0.2.1", "peer_as": 65000}]},
        "pools": [{"name": "public", "addresses": ["203.0.113.0/24"]}],
        "kubernetes": {"enabled": True},
    }
)


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def record(self, ref: Any, type: str, reason: str, message: str) -> None:
        self.events.append((type, reason, message))


def state(*ingress: str) -> svc.KubeState:
    web = svc.ServiceView(
        "default",
        "web",
        uid="u1",
        type="LoadBalancer",
        load_balancer_class="bgpvip.io/bgp",
        ingress_ips=ingress,
    )
    s = svc.KubeState()
    for event in (
        svc.KubeSynced(svc.KubeKind.NODE, (svc.NodeView(NODE, ready=True),)),
        svc.KubeSynced(svc.KubeKind.ENDPOINT_SLICE, ()),
        svc.KubeSynced(svc.KubeKind.SERVICE, (web,)),
    ):
        s = s.apply(event)
    return s


def test_each_refused_entry_gets_its_own_event_showing_what_the_service_wrote() -> None:
    bridge = KubeBridge(cast(Reconciler, None), NODE)
    recorded = Recorded()
    bridge._recorder = recorded  # type: ignore[assignment]
    kube = state("203.0.113.300", "not-an-ip", "::ffff:203.0.113.13", "198.51.100.1")
    table = svc.ServiceDecider().update(CONFIG, kube, NODE)
    bridge._record_changes(None, table, kube)
    messages = [m for t, r, m in recorded.events if (t, r) == ("Warning", "Refused")]
    assert len(messages) == 4, recorded.events
    heads = {m.split(": ", 2)[0] + ": " + m.split(": ", 2)[1] for m in messages}
    assert heads == {
        "'203.0.113.300' not announced: invalidAddress",
        "'not-an-ip' not announced: invalidAddress",
        "198.51.100.1 not announced: notInPool",
        "::ffff:203.0.113.13 not announced: familyNotPeered",
    }, messages
    (mapped,) = [m for m in messages if m.startswith("::ffff")]
    assert "status.loadBalancer.ingress[2].ip ::ffff:203.0.113.13" in mapped and "cb00" not in mapped, mapped
    assert not any("0.0.0.0" in m for m in messages)
