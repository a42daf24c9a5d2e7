"""What the controller's tests share: the config, a running controller, Services as the API
holds them, and what to read back from the fake apiserver."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

from prometheus_client import generate_latest

from bgpvip.controller import Controller, ControllerOptions
from bgpvip.core.config import load
from tests.controller.faketime import eventually
from tests.kubeapi import FakeKubeAPI

NS = "bgpvip-system"
CLASS = "bgpvip.io/bgp"
DEFAULTS = ControllerOptions(identity="defaults")
"""The production settings: on fake time the tests use them as they are."""

CONFIG_DOC: dict[str, Any] = {
    "bgp": {
        "local_as": 65001,
        "peers": [
            {"address": "192.0.2.1", "peer_as": 65000},
            {"address": "2001:db8::1", "peer_as": 65000, "families": ["ipv6"]},
        ],
    },
    "pools": [
        {"name": "main", "addresses": ["203.0.113.0-203.0.113.3", "2001:db8:10::/126"]},
        {"name": "reserved", "addresses": ["198.51.100.0/30"], "auto_assign": False},
    ],
    "kubernetes": {"enabled": True},
}
CONFIG = load(CONFIG_DOC)


class Running:
    """A controller running as a task in the test's loop."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.task = asyncio.create_task(controller.run())

    async def stop(self, *, release: bool = True) -> None:
        if not self.task.done():
            self.controller.stop(release=release)
            await asyncio.wait_for(self.task, 10)


def service(
    name: str, ns: str = "default", *, annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": annotations or {},
            "labels": {"app": name},
        },
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": CLASS,
            "ports": [{"port": 80, "protocol": "TCP"}],
            "selector": {"app": name},
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            **spec,
        },
    }


def ingress(api: FakeKubeAPI, name: str, ns: str = "default") -> tuple[str, ...]:
    obj = api.get("services", ns, name)
    assert obj is not None, name
    return tuple(i["ip"] for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [])


def events(api: FakeKubeAPI, name: str, reason: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in api.objects("events")
        if e["involvedObject"]["name"] == name and (reason is None or e["reason"] == reason)
    ]


def status_writes(api: FakeKubeAPI) -> list[Any]:
    return [r for r in api.requests if r.method == "PATCH" and r.path.endswith("/status") and r.status == 200]


async def scrape(r: Running, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, r.controller.port, path)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(r: Running) -> str:
    return generate_latest(r.controller.metrics.registry).decode()


async def synced(r: Running) -> None:
    await eventually(
        lambda: r.controller.leading and r.controller.stats.reconciles > 0, what="leading and synced"
    )


def assert_never_doubled(api: FakeKubeAPI, before: dict[str, tuple[str, ...]]) -> None:
    """Replay every status write in order: no moment had one address in two Services' statuses
    (none of these tests shares addresses)."""
    state = dict(before)
    for r in status_writes(api):
        name = r.path.split("/")[-2]
        state[name] = tuple(i["ip"] for i in (r.body["status"]["loadBalancer"]["ingress"] or []))
        seen: dict[str, str] = {}
        for svc, ips in state.items():
            for ip in ips:
                assert ip not in seen, f"{ip} in the statuses of {seen[ip]} and {svc} at once"
                seen[ip] = svc
