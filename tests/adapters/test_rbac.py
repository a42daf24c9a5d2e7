"""The RBAC rules under k8s/ grant exactly what the adapters call: the speaker's and the
controller's real code runs against the fake apiserver, which records each request's (group,
resource, verb) as RBAC sees it, and the set is compared with the manifests' grants."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from bgpvip.adapters.kube import Credentials, EventRecorder, KubeClient, KubeWatcher, ObjectRef
from bgpvip.controller import Controller, ControllerOptions
from tests.adapters.test_kube import endpoint_slice, node, until
from tests.controller.faketime import CountingClient, FakeTime, eventually
from tests.controller.helpers import CONFIG, ingress, service
from tests.kubeapi import FakeKubeAPI

K8S = Path(__file__).resolve().parents[2] / "k8s"


def grants(path: Path, kinds: tuple[str, ...]) -> set[tuple[str, str, str]]:
    out = set()
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] in kinds:
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        out.update((group, resource, verb) for verb in rule["verbs"])
    return out


def used(api: FakeKubeAPI) -> set[tuple[str, str, str]]:
    return {r.rbac for r in api.requests if r.rbac is not None}


async def test_the_speaker_uses_exactly_what_its_clusterrole_grants(
    api: FakeKubeAPI, kube: KubeClient
) -> None:
    api.put("nodes", node())
    api.put("services", service("web"))
    api.put("endpointslices", endpoint_slice("web", "worker-1"))
    state: list[Any] = []
    watcher = KubeWatcher(kube, node_name="worker-1", emit=state.append)
    task = asyncio.create_task(watcher.run())
    recorder = EventRecorder(kube, host="worker-1", patch_interval=0)
    recorder.start()
    ref = ObjectRef("default", "web")
    recorder.record(ref, "Warning", "Refused", "x")
    recorder.record(ref, "Warning", "Refused", "x")  # a repeat: a patch of the count
    assert await recorder.flush()
    await until(lambda: api.open_watches == 3)
    task.cancel()
    await recorder.stop()
    assert used(api) == grants(K8S / "speaker" / "rbac.yaml", ("ClusterRole",))


async def test_the_controller_uses_exactly_what_its_roles_grant(api: FakeKubeAPI) -> None:
    api.put("services", service("web"))
    api.put("services", service("outside", annotations={"bgpvip.io/loadBalancerIPs": "192.0.2.77"}))
    kube = CountingClient(Credentials.static(api.connection()))
    ft = FakeTime(busy=lambda: kube.in_flight > 0)
    options = ControllerOptions(identity="a", namespace="bgpvip-system", port=0)
    controller = Controller(CONFIG, kube, options, clock=ft.clock)
    controller.recorder.patch_interval = 0
    task = asyncio.create_task(controller.run())
    await eventually(lambda: ingress(api, "web"), what="a status written")
    await eventually(lambda: controller.recorder.stats.created >= 1, what="a refusal Event")
    controller.recorder.record(ObjectRef("default", "outside"), "Warning", "Again", "x")
    controller.recorder.record(ObjectRef("default", "outside"), "Warning", "Again", "x")
    await eventually(lambda: controller.recorder.stats.patched >= 1, what="an Event count patched")
    await ft.until(lambda: controller.elector.stats.renewed >= 1, within=options.renew_interval)
    controller.stop()
    await asyncio.wait_for(task, 10)
    await kube.aclose()
    granted = grants(K8S / "controller" / "rbac.yaml", ("ClusterRole", "Role"))
    assert used(api) == granted
