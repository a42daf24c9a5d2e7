"""The Kubernetes manifests under k8s/: well-formed, complete, and consistent with the code.

Pure YAML reading: neither kubectl nor kustomize is needed (or used). What is checked is what a
typo would silently break in a cluster: the ConfigMap's config must load, the speaker's RBAC must
be exactly what bgpvip/adapters/kube/ uses (tests/adapters/test_rbac.py derives that from the
requests it makes), the DaemonSet must probe the port the shipped config
listens on, and every kustomization must point at files that exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

import bgpvip
from bgpvip.configfile import expand_env
from bgpvip.core.config import Config, load
from bgpvip.launcher.prepare import SPEAKER_STOP_GRACE
from bgpvip.launcher.supervisor import EXABGP_STOP_GRACE

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
NAMESPACE = "bgpvip-system"
SERVICE_ACCOUNT = "bgpvip-speaker"
CONFIG_PATH = "/etc/bgpvip/config.yaml"
# `bgpvip run` gives the speaker shutdown_delay + SPEAKER_STOP_GRACE to withdraw, then ExaBGP
# EXABGP_STOP_GRACE before it kills it: the kubelet must not SIGKILL the pod before that.
SUPERVISOR_STOP_BUDGET = SPEAKER_STOP_GRACE + EXABGP_STOP_GRACE


def _yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))


def _is_kustomization(path: Path) -> bool:
    return path.name in KUSTOMIZATION_NAMES


def _load_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _objects() -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for path in _yaml_files():
        if _is_kustomization(path):
            continue
        for i, doc in enumerate(_load_all(path)):
            yield path, i, doc


def _find(kind: str, name: str, under: Path = K8S) -> dict[str, Any]:
    found = [
        doc
        for path, _, doc in _objects()
        if path.is_relative_to(under) and doc.get("kind") == kind and doc["metadata"].get("name") == name
    ]
    assert len(found) == 1, f"expected exactly one {kind} {name} under {under}, found {len(found)}"
    return found[0]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="module")
def config() -> Config:
    cm = _find("ConfigMap", "bgpvip-config", K8S / "speaker")
    # as the speaker reads it: ${NODE_NAME} comes from the DaemonSet's downward-API env
    text = expand_env(cm["data"]["config.yaml"], {"NODE_NAME": "node-1", "HOST_IP": "192.0.2.11"})
    return load(yaml.safe_load(text))


@pytest.fixture(scope="module")
def daemonset() -> dict[str, Any]:
    return _find("DaemonSet", "bgpvip-speaker", K8S / "speaker")


@pytest.fixture(scope="module")
def pod(daemonset: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    c: dict[str, Any] = only
    return c


# --------------------------------------------------------------------------- every file


def test_there_are_manifests() -> None:
    files = {_rel(p) for p in _yaml_files()}
    for expected in (
        "k8s/kustomization.yaml",
        "k8s/namespace.yaml",
        "k8s/speaker/daemonset.yaml",
        "k8s/static-pod/bgpvip-vip.yaml",
    ):
        assert expected in files


@pytest.mark.parametrize("path", _yaml_files(), ids=_rel)
def test_every_document_is_a_named_kubernetes_object(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{_rel(path)} holds no YAML document"
    for i, doc in enumerate(docs):
        where = f"{_rel(path)} document {i}"
        assert isinstance(doc, dict), f"{where} is not a mapping"
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], f"{where}: no apiVersion"
        assert isinstance(doc.get("kind"), str) and doc["kind"], f"{where}: no kind"
        if _is_kustomization(path):
            # kustomize's own file format: not an API object, so no metadata.name
            assert doc["apiVersion"].startswith("kustomize.config.k8s.io/"), where
            assert doc["kind"] == "Kustomization", where
            continue
        name = (doc.get("metadata") or {}).get("name")
        assert isinstance(name, str) and name, f"{where}: no metadata.name"


def _unknown_fields(data: Any, type_name: str, path: str) -> Iterator[str]:
    """Keys the Kubernetes API does not have, found through the official client's generated models
    (their `attribute_map` holds the API's field names, `openapi_types` the nested types)."""
    from kubernetes.client import models

    lowered = type_name.lower()
    if lowered.startswith("list[") and isinstance(data, list):
        for i, item in enumerate(data):
            yield from _unknown_fields(item, type_name[5:-1], f"{path}[{i}]")
        return
    model = getattr(models, type_name, None) if type_name.startswith("V") else None
    if model is None or not isinstance(data, dict):
        return  # a scalar, a map of strings, or int-or-string
    api_names = {api: attr for attr, api in model.attribute_map.items()}
    for key, value in data.items():
        if key not in api_names:
            yield f"{path}.{key}"
        else:
            yield from _unknown_fields(value, model.openapi_types[api_names[key]], f"{path}.{key}")


@pytest.mark.parametrize("path", [p for p in _yaml_files() if not _is_kustomization(p)], ids=_rel)
def test_every_field_exists_in_the_kubernetes_api(path: Path) -> None:
    # kubectl would reject a misspelt field (or, with older clients, silently drop it)
    for i, doc in enumerate(_load_all(path)):
        version = doc["apiVersion"].rsplit("/", 1)[-1]
        model = f"{version[0].upper()}{version[1:]}{doc['kind']}"
        unknown = list(_unknown_fields(doc, model, doc["kind"]))
        assert not unknown, f"{_rel(path)} document {i}: fields the API does not have: {unknown}"


def test_images_are_the_documented_default_at_the_package_version() -> None:
    images = [
        c["image"]
        for _, _, doc in _objects()
        for c in _containers(doc)
        if c["image"].startswith("ghcr.io/bgpvip/")
    ]
    assert images, "no bgpvip image in k8s/"
    assert set(images) == {f"ghcr.io/bgpvip/bgpvip:{bgpvip.__version__}"}


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec") or {}
    if doc.get("kind") in ("DaemonSet", "Deployment", "StatefulSet", "Job"):
        spec = spec["template"]["spec"]
    elif doc.get("kind") != "Pod":
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


# --------------------------------------------------------------------------- kustomize


def _kustomizations() -> list[Path]:
    return [p for p in _yaml_files() if _is_kustomization(p)]


def _resources() -> list[tuple[Path, str]]:
    out = []
    for k in _kustomizations():
        (doc,) = _load_all(k)
        out += [(k, r) for r in doc.get("resources", [])]
    return out


@pytest.mark.parametrize(("kustomization", "resource"), _resources(), ids=str)
def test_kustomization_resources_exist(kustomization: Path, resource: str) -> None:
    target = kustomization.parent / resource
    top_level = kustomization == K8S / "kustomization.yaml"
    if top_level and resource.rstrip("/") == "controller" and not target.exists():
        pytest.skip("k8s/controller/ is not written yet")
    assert "://" not in resource, f"{_rel(kustomization)}: remote resource {resource}"
    assert target.exists(), f"{_rel(kustomization)}: resource {resource} does not exist"
    if target.is_dir():
        assert any((target / n).is_file() for n in KUSTOMIZATION_NAMES), (
            f"{_rel(kustomization)}: directory {resource} has no kustomization.yaml"
        )


def test_top_level_kustomization_installs_namespace_speaker_and_controller() -> None:
    (doc,) = _load_all(K8S / "kustomization.yaml")
    assert doc["namespace"] == NAMESPACE
    assert [r.rstrip("/") for r in doc["resources"]] == ["namespace.yaml", "speaker", "controller"]
    ns = _find("Namespace", NAMESPACE)
    # hostNetwork, hostPath and NET_ADMIN are refused by Pod Security "baseline"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_every_manifest_outside_static_pod_is_installed_by_a_kustomization() -> None:
    listed: set[Path] = set()
    for k, r in _resources():
        target = (k.parent / r).resolve()
        if target.is_file():
            listed.add(target)
    # k8s/controller/ is another kustomization; its own files are checked through it
    for path in _yaml_files():
        if _is_kustomization(path) or path.is_relative_to(K8S / "static-pod"):
            continue
        assert path.resolve() in listed, f"{_rel(path)} is not in any kustomization's resources"


def test_static_pod_is_not_in_the_kustomization() -> None:
    # the kubelet runs it from /etc/kubernetes/manifests/, before any API server exists
    for k, r in _resources():
        assert "static-pod" not in str((k.parent / r).resolve().relative_to(K8S)), _rel(k)


# --------------------------------------------------------------------------- the shipped config


def test_configmap_holds_a_valid_kubernetes_config(config: Config) -> None:
    assert config.kubernetes.enabled
    assert config.kubernetes.kubeconfig is None, "in the cluster: the ServiceAccount, not a kubeconfig"
    assert config.kubernetes.load_balancer_class == "bgpvip.io/bgp"
    assert config.pools, "Service IPs need a pool"
    assert config.bgp.peers


def test_configmap_config_has_nothing_node_specific(config: Config) -> None:
    # One ConfigMap for every node: what differs per node must be derived on the node
    # (node_name comes from the downward API through ${NODE_NAME}).
    assert config.node_name == "node-1", "node_name must be ${NODE_NAME}, not a fixed name"
    assert config.bgp.router_id is None, "router_id would be the same on every node"
    for peer in config.bgp.peers:
        assert peer.local_address is None, f"{peer.label}: local_address would be the same on every node"
    assert config.priority is None, "priority would be the same on every node"


def test_configmap_status_endpoint_stays_on_loopback(config: Config) -> None:
    # unauthenticated: with hostNetwork, any other address is reachable from outside the node
    assert config.status.enabled
    assert ip_address(str(config.status.listen)).is_loopback


# --------------------------------------------------------------------------- RBAC


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb))
    return out


def test_speaker_clusterrole_is_exactly_what_the_adapter_uses() -> None:
    role = _find("ClusterRole", "bgpvip-speaker", K8S / "speaker")
    read = {"list", "watch"}
    expected = {
        *(("", "services", v) for v in read),
        *(("", "nodes", v) for v in read),
        *(("discovery.k8s.io", "endpointslices", v) for v in read),
        ("", "events", "create"),
        ("", "events", "patch"),
        ("", "events", "list"),
    }
    grants = _grants(role)
    assert grants == expected
    assert not any("*" in part for grant in grants for part in grant)
    assert not any(resource.startswith("secrets") for _, resource, _ in grants)


def test_speaker_clusterrole_is_bound_to_the_speaker_serviceaccount_only() -> None:
    binding = _find("ClusterRoleBinding", "bgpvip-speaker", K8S / "speaker")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "bgpvip-speaker",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    ]
    sa = _find("ServiceAccount", SERVICE_ACCOUNT, K8S / "speaker")
    assert sa["metadata"].get("namespace", NAMESPACE) == NAMESPACE


def test_no_speaker_object_can_read_secrets() -> None:
    for path, _, doc in _objects():
        if doc["kind"] in ("ClusterRole", "Role") and path.is_relative_to(K8S / "speaker"):
            assert not any(r in {"secrets", "*"} for rule in doc["rules"] for r in rule["resources"])


# --------------------------------------------------------------------------- DaemonSet


def test_daemonset_runs_on_the_host_network_as_the_speaker(pod: dict[str, Any]) -> None:
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod.get("automountServiceAccountToken", True) is True, "the speaker needs its token"


def test_daemonset_runs_bgpvip_run_with_the_mounted_config(container: dict[str, Any]) -> None:
    argv = [*container.get("command", ["bgpvip"]), *container["args"]]  # ENTRYPOINT is bgpvip
    assert argv == ["bgpvip", "run", "--config", CONFIG_PATH]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BGPVIP_CONFIG"] == CONFIG_PATH


def test_daemonset_has_only_net_admin_and_bind_service(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    sc = container["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE"]}
    assert sc.get("privileged", False) is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert not pod.get("hostPID") and not pod.get("hostIPC")


def _volume_for(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume that holds `path` in the container, and the path inside that volume."""
    wanted = PurePosixPath(path)
    best: tuple[PurePosixPath, dict[str, Any]] | None = None
    for m in container["volumeMounts"]:
        mount = PurePosixPath(m["mountPath"])
        if (wanted == mount or mount in wanted.parents) and (
            best is None or len(mount.parts) > len(best[0].parts)
        ):
            best = (mount, m)
    assert best is not None, f"nothing is mounted at or above {path}"
    mount, m = best
    inside = PurePosixPath(m.get("subPath", "")) / wanted.relative_to(mount)
    (volume,) = [v for v in pod["volumes"] if v["name"] == m["name"]]
    return volume, str(inside)


def test_daemonset_mounts_the_configmap_at_the_config_path(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    volume, inside = _volume_for(pod, container, CONFIG_PATH)
    cm = volume["configMap"]
    assert cm["name"] == "bgpvip-config"
    keys = {i["path"]: i["key"] for i in cm.get("items", [])} or {"config.yaml": "config.yaml"}
    assert keys[inside] == "config.yaml"


def test_daemonset_volumes_match_the_config_paths(
    pod: dict[str, Any], container: dict[str, Any], config: Config
) -> None:
    # the drain file must survive pod restarts: a hostPath; runtime state and /tmp are the pod's
    drain, _ = _volume_for(pod, container, str(config.drain_file))
    assert drain["hostPath"]["path"] == str(config.drain_file.parent)
    runtime, _ = _volume_for(pod, container, str(config.runtime_dir))
    assert "emptyDir" in runtime
    tmp, _ = _volume_for(pod, container, "/tmp")
    assert "emptyDir" in tmp


def test_daemonset_outlasts_the_ordered_shutdown(pod: dict[str, Any], config: Config) -> None:
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > config.shutdown_delay
    assert grace >= config.shutdown_delay + SUPERVISOR_STOP_BUDGET


def test_daemonset_probes_the_status_endpoint(container: dict[str, Any], config: Config) -> None:
    # liveness must not fail on a refused config reload (that would restart every node at once)
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe not in container:
            continue
        get = container[probe]["httpGet"]
        assert get["path"] == ("/livez" if probe == "livenessProbe" else "/healthz"), probe
        assert get["port"] == config.status.port, probe
        # kubelet probes go to the pod IP (the node's address with hostNetwork) unless `host`
        # says otherwise; a loopback listener needs host: 127.0.0.1 (or ::1)
        listen = ip_address(str(config.status.listen))
        if listen.is_loopback:
            assert get.get("host") == str(listen), probe
        assert get.get("scheme", "HTTP") == "HTTP", probe


def test_daemonset_rolls_one_node_at_a_time(daemonset: dict[str, Any]) -> None:
    strategy = daemonset["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 1
    # a surge pod would be a second BGP speaker on the same node address
    assert strategy["rollingUpdate"].get("maxSurge", 0) == 0


def test_daemonset_selector_matches_its_pods(daemonset: dict[str, Any]) -> None:
    selector = daemonset["spec"]["selector"]["matchLabels"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_daemonset_stays_off_control_plane_nodes_unless_told(pod: dict[str, Any]) -> None:
    # Control-plane nodes run the static pod bgpvip-vip: a second BGP session from the same node
    # address would collide with it. The toleration is there for when the affinity is removed.
    role = "node-role.kubernetes.io/control-plane"
    assert {"key": role, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (term,) = required["nodeSelectorTerms"]
    assert {"key": role, "operator": "DoesNotExist"} in term["matchExpressions"]


# --------------------------------------------------------------------------- static pod


def test_static_pod_has_no_kubernetes_credentials() -> None:
    pod = _find("Pod", "bgpvip-vip", K8S / "static-pod")
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert "serviceAccount" not in spec
    assert spec["hostNetwork"] is True
