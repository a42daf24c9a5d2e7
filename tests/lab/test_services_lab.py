"""Service IPs for real: `bgpvip run` on n1..n3 watching a Kubernetes API, announcing to FRR.

The API is tests/kubeapi.py's FakeKubeAPI (no kube-apiserver can run here), served to the
nodes through a TCP relay listening inside the client namespace (10.0.100.2:6443), so the
speakers reach it across r1 like a real API server. Outages cut the relay's upstream.
It serves HTTPS and requires a bearer token; the speakers run as the DaemonSet's pods do, with
the official client's in-cluster loader reading their ServiceAccount files (bgpvip_lab.InCluster).
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import nslab
import pytest
from bgpvip_lab import (
    InCluster,
    Relay,
    Speaker,
    in_cluster,
    node_config,
    node_workdir,
    start_speaker,
    write_kubeconfig,
)

from tests.kubeapi import FakeKubeAPI
from tests.pki import serving_certificate

NODES = ("n1", "n2", "n3")
API_ADDR = ("10.0.100.2", 6443)
POOL = "203.0.113.0/25"  # r1 accepts all of 203.0.113.0/24: the rest is "not ours" to bgpvip


def service(name: str, ip: str, *, policy: str = "Cluster", **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": {"app": name}},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "bgpvip.io/bgp",
            "externalTrafficPolicy": policy,
            "ports": [{"port": 80, "protocol": "TCP"}],
            "selector": {"app": name},
            **extra,
        },
        "status": {"loadBalancer": {"ingress": [{"ip": ip}]}},
    }


def endpoint_slice(service_name: str, *nodes: str) -> dict[str, Any]:
    return {
        "addressType": "IPv4",
        "metadata": {
            "name": f"{service_name}-x1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "endpoints": [
            {
                "addresses": [f"10.244.0.{i + 1}"],
                "nodeName": n,
                "conditions": {"ready": True, "serving": True},
            }
            for i, n in enumerate(nodes)
        ],
    }


def node_obj(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
    }


def gateways(lab: nslab.Lab, prefix: str) -> set[str]:
    route = lab.route(prefix)
    return {h["gateway"] for h in route.get("nexthops", []) if "gateway" in h} if route else set()


def wait_gateways(lab: nslab.Lab, prefix: str, nodes: set[str], timeout: float = 30.0) -> None:
    want = {lab.node_ip(n) for n in nodes}
    deadline = time.monotonic() + timeout
    while gateways(lab, prefix) != want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{prefix}: r1 has next hops {gateways(lab, prefix)}, want {want} ({nodes})")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def api(lab: nslab.Lab) -> Iterator[FakeKubeAPI]:
    tls = serving_certificate(lab.state_dir / "api-tls", ips=(API_ADDR[0], "127.0.0.1"))
    with FakeKubeAPI(tls_dir=tls, token=secrets.token_urlsafe(24)) as fake:
        relay = Relay(lab, "client", API_ADDR, ("127.0.0.1", fake.port))
        try:
            for n in NODES:
                fake.put("nodes", node_obj(n))
            yield fake
        finally:
            relay.close()
        assert fake.misuse == [], "a speaker used the API in a way no apiserver serves"


@pytest.fixture(scope="module")
def pod(lab: nslab.Lab, api: FakeKubeAPI) -> Iterator[InCluster]:
    assert api.tls_dir is not None and api.token is not None
    with in_cluster(lab, API_ADDR, ca=api.tls_dir / "ca.crt", token=api.token) as ic:
        yield ic


@pytest.fixture(scope="module")
def speakers(lab: nslab.Lab, api: FakeKubeAPI, pod: InCluster) -> Iterator[dict[str, Speaker]]:
    started = {}
    try:
        for n in NODES:
            node_workdir(lab, n)
            config = node_config(
                lab,
                n,
                [],
                pools=[{"name": "default", "addresses": [POOL]}],
                kubernetes={"enabled": True, "watch_timeout": 10},
            )
            started[n] = start_speaker(lab, n, config, kube=pod)
        yield started
    finally:
        for sp in started.values():
            try:
                sp.stop(timeout=30)
            except Exception:
                sp.process.kill()


def statuses(sp: Speaker) -> dict[str, dict[str, Any]]:
    return {d["source"]: d for d in sp.wait_status()["decisions"]}


def eventually(cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_cluster_policy_is_announced_from_every_node(
    lab: nslab.Lab, api: FakeKubeAPI, speakers: dict[str, Speaker]
) -> None:
    api.put("services", service("web", "203.0.113.10"))
    api.put("endpointslices", endpoint_slice("web", "n1"))
    wait_gateways(lab, "203.0.113.10/32", set(NODES))
    d = statuses(speakers["n3"])["service/default/web"]
    assert (d["announced"], d["reason"]) == (True, "hasEndpoints")


def test_local_policy_follows_the_endpoints(
    lab: nslab.Lab, api: FakeKubeAPI, speakers: dict[str, Speaker]
) -> None:
    api.put("services", service("db", "203.0.113.11", policy="Local"))
    api.put("endpointslices", endpoint_slice("db", "n2"))
    wait_gateways(lab, "203.0.113.11/32", {"n2"})
    assert statuses(speakers["n1"])["service/default/db"]["reason"] == "noLocalEndpoints"
    api.put("endpointslices", endpoint_slice("db", "n3"))
    wait_gateways(lab, "203.0.113.11/32", {"n3"})
    api.put("endpointslices", endpoint_slice("db"))
    wait_gateways(lab, "203.0.113.11/32", set())


def test_an_address_outside_every_pool_is_never_announced(
    lab: nslab.Lab, api: FakeKubeAPI, speakers: dict[str, Speaker]
) -> None:
    # r1 would accept 203.0.113.200 (its prefix-list allows the whole /24): only bgpvip refuses it
    api.put("services", service("evil", "203.0.113.200", externalIPs=["203.0.113.201"]))
    api.put("endpointslices", endpoint_slice("evil", "n1", "n2", "n3"))
    api.put("services", service("canary", "203.0.113.12"))
    api.put("endpointslices", endpoint_slice("canary", "n1"))
    wait_gateways(lab, "203.0.113.12/32", set(NODES))  # the speakers have seen both Services
    for sp in speakers.values():
        d = statuses(sp)["service/default/evil"]
        assert (d["announced"], d["reason"]) == (False, "notInPool")
    assert lab.route("203.0.113.200/32") is None
    assert lab.route("203.0.113.201/32") is None
    assert lab.bgp_prefix("203.0.113.200/32") == {}
    events = [
        o
        for o in api.objects("events")
        if o.get("involvedObject", {}).get("name") == "evil" and o.get("type") == "Warning"
    ]
    assert events, "a refused address gets a Warning Event on the Service"


def test_api_outage_changes_nothing_then_converges(
    lab: nslab.Lab, api: FakeKubeAPI, speakers: dict[str, Speaker]
) -> None:
    api.put("services", service("steady", "203.0.113.13"))
    api.put("endpointslices", endpoint_slice("steady", "n1"))
    wait_gateways(lab, "203.0.113.13/32", set(NODES))
    api.inject_outage("refuse")
    try:
        time.sleep(12)  # longer than watch_timeout (10 s): every watcher has noticed and retried
        assert gateways(lab, "203.0.113.13/32") == {lab.node_ip(n) for n in NODES}, "fail static"
        for sp in speakers.values():
            assert statuses(sp)["service/default/steady"]["announced"] is True
        # a change made while the speakers cannot see it arrives once the API returns
        api.remove("services", "default", "steady")
        time.sleep(1)
        assert gateways(lab, "203.0.113.13/32") == {lab.node_ip(n) for n in NODES}
    finally:
        api.restore()  # the API comes back on its port, as a restarted apiserver does
    returned = time.monotonic()
    wait_gateways(lab, "203.0.113.13/32", set(), timeout=30)
    took = time.monotonic() - returned
    print(f"converged {took:.2f}s after the API returned")
    # the watchers probe an unreachable API every 0.5 s (jittered), then list, decide and withdraw;
    # they used to sleep out a backoff of up to 30 s
    assert took < 2.0, f"converged {took:.2f}s after the API returned"


def test_controller_assigns_speakers_announce_client_connects(
    lab: nslab.Lab, api: FakeKubeAPI, speakers: dict[str, Speaker]
) -> None:
    """Issue 5 end to end: a Service created without an address gets one from the controller,
    the speakers announce it, and the client's TCP connection through r1 is answered."""
    work = lab.state_dir / "controller"
    work.mkdir(exist_ok=True)
    assert api.tls_dir is not None
    kubeconfig = write_kubeconfig(
        lab, ("127.0.0.1", api.port), ca=api.tls_dir / "ca.crt", token=api.token, path=work / "kubeconfig"
    )
    config = work / "config.yaml"
    config.write_text(
        "bgp: {local_as: 65100, peers: [{address: 10.0.1.1, peer_as: 65000}]}\n"
        f"pools: [{{name: default, addresses: ['203.0.113.64/26']}}]\n"
        f"kubernetes: {{enabled: true, kubeconfig: '{kubeconfig}'}}\n"
    )
    log = lab.log_dir / "controller.log"
    lab.register_log("controller", log)
    with log.open("w") as stderr:
        controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bgpvip",
                "controller",
                "--config",
                str(config),
                "--namespace",
                "bgpvip-system",
                "--identity",
                "lab",
                "--port",
                "0",
            ],
            stderr=stderr,
        )
    servers: list[subprocess.Popen[bytes]] = []
    address = ""
    try:
        svc = service("shop", "203.0.113.64")
        svc["status"] = {}
        api.put("services", svc)
        api.put("endpointslices", endpoint_slice("shop", "n1"))

        def assigned() -> bool:
            nonlocal address
            ingress = (api.get("services", "default", "shop") or {}).get("status", {}).get("loadBalancer", {})
            ips = [i.get("ip") for i in ingress.get("ingress", [])]
            address = ips[0] if ips else ""
            return bool(address)

        eventually(assigned, what=f"the controller writing an address; log:\n{log.read_text()}")
        assert address.startswith("203.0.113.") and 64 <= int(address.rsplit(".", 1)[1]) < 128
        wait_gateways(lab, f"{address}/32", set(NODES))
        # kube-proxy's part, which this lab has not got: the nodes accept the address and serve
        for n in NODES:
            lab.exec(n, ["ip", "addr", "add", f"{address}/32", "dev", "lo"])
            servers.append(
                lab.popen(
                    n, [sys.executable, str(nslab.HELPERS_DIR / "namesrv.py"), "--name", n, "--port", "8081"]
                )
            )
        lab.wait_tcp("client", address, 8081, timeout=20)
        assert lab.http_get("client", address, 8081).strip() in NODES
    finally:
        controller.send_signal(signal.SIGTERM)
        try:
            controller.wait(timeout=15)
        except subprocess.TimeoutExpired:
            controller.kill()
            controller.wait()
        for proc in servers:
            proc.kill()
            proc.wait()
        if address:
            for n in NODES:
                lab.exec(n, ["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)
