"""`bgpvip check-config` and the pre-flight of `bgpvip run`, through the CLI: every bad file and
every missing piece of the host is a named error and a non-zero exit, never a traceback."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpvip import preflight
from bgpvip.cli import main as cli
from bgpvip.core.config import load
from tests import pki
from tests.unit.test_configfile import HOSTILE

pytestmark = [pytest.mark.timeout(60)]


def base_doc(tmp_path: Path, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "bgp": {
            "local_as": 65100,
            "peers": [{"address": "10.0.1.1", "peer_as": 65000, "local_address": "10.0.1.2"}],
        },
        "vips": [{"address": "198.51.100.10", "interface": None}],
        "runtime_dir": str(tmp_path / "run"),
        "drain_file": str(tmp_path / "drain"),
        # the ExaBGP that this test environment has (next to this Python, as `bgpvip run` finds it)
        "exabgp": {"executable": str(Path(sys.executable).parent / "exabgp")},
    }
    doc.update(over)
    return doc


def check(
    tmp_path: Path, doc: dict[str, Any] | str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    f = tmp_path / "config.yaml"
    f.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    result = CliRunner().invoke(cli, ["check-config", str(f), *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_a_good_config_is_ok(tmp_path: Path) -> None:
    code, out, err = check(tmp_path, base_doc(tmp_path))
    assert (code, err) == (0, "")
    assert out.startswith(f"{tmp_path / 'config.yaml'}: OK (1 VIPs, 1 peers, 0 pools)")


@pytest.mark.parametrize(("text", "words"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_files_are_reported_not_crashed_on(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "config.yaml"
    f.write_bytes(text.encode("utf-8", "surrogateescape"))
    result = CliRunner().invoke(cli, ["check-config", str(f)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert words in result.stderr


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bgp: {local_as: 65100}\nnode_name: 2024-99-99\n", "cannot read '2024-99-99'"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
    ],
    ids=["impossible-date", "deep-nesting"],
)
def test_check_config_as_a_process_prints_no_traceback(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "config.yaml"
    f.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "bgpvip", "check-config", str(f)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert words in run.stderr


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_property_check_config_never_prints_a_traceback(tmp_path: Path, data: bytes) -> None:
    f = tmp_path / "fuzz.yaml"
    f.write_bytes(data)
    result = CliRunner().invoke(cli, ["check-config", "--no-files", str(f)])
    assert isinstance(result.exception, SystemExit) or result.exception is None
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1)


# --------------------------------------------------------------------------- what `run` needs


def test_runtime_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    code, _, err = check(tmp_path, base_doc(tmp_path))
    assert code == 1
    assert f"runtime_dir: {tmp_path / 'run'} exists and is not a directory" in err


def test_runtime_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    code, _, err = check(tmp_path, base_doc(tmp_path, runtime_dir=str(tmp_path / "f" / "run")))
    assert code == 1
    assert f"cannot be created: {tmp_path / 'f'} is not a directory" in err


def test_exabgp_executable_missing_or_not_executable(tmp_path: Path) -> None:
    code, _, err = check(tmp_path, base_doc(tmp_path, exabgp={"executable": "no-such-exabgp"}))
    assert code == 1
    assert "exabgp.executable: cannot find the ExaBGP executable 'no-such-exabgp' in PATH" in err
    plain = tmp_path / "exabgp"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    code, _, err = check(tmp_path, base_doc(tmp_path, exabgp={"executable": str(plain)}))
    assert code == 1 and "exabgp.executable: cannot find" in err


def test_no_files_skips_the_host(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    doc = base_doc(tmp_path, exabgp={"executable": "no-such-exabgp"}, kubernetes={"enabled": True})
    code, out, err = check(tmp_path, doc, "--no-files")
    assert (code, err) == (0, "")
    assert ": OK" in out


@pytest.mark.parametrize("broken", ["runtime-dir", "exabgp"])
def test_run_refuses_before_starting_exabgp(tmp_path: Path, broken: str) -> None:
    """`bgpvip run` died with a FileExistsError traceback, or exit 127 without naming the field."""
    if broken == "runtime-dir":
        (tmp_path / "run").write_text("")
        doc, words = base_doc(tmp_path), f"runtime_dir: {tmp_path / 'run'} exists and is not a directory"
    else:
        doc = base_doc(tmp_path, exabgp={"executable": str(tmp_path / "exabgp")})
        words = f"exabgp.executable: cannot find the ExaBGP executable '{tmp_path / 'exabgp'}'"
    f = tmp_path / "config.yaml"
    f.write_text(json.dumps(doc))
    run = subprocess.run(
        [sys.executable, "-m", "bgpvip", "run", "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2
    assert words in run.stderr
    assert "Traceback" not in run.stderr and "exabgp-start" not in run.stderr
    checked = CliRunner().invoke(cli, ["check-config", str(f)])
    assert words in checked.stderr, "check-config says the same"


# --------------------------------------------------------------------------- TLS material


def test_https_check_files_are_loaded_as_the_probe_loads_them(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    ca = tmp_path / "ca"
    ca.mkdir()
    authority = pki.issue(ca, "ca", cn="ca", issuer=None)
    pki.issue(ca, "client", cn="bgpvip-probe", issuer=authority)
    pki.issue(ca, "other", cn="other", issuer=authority)
    checks = [
        {"type": "http", "url": "https://127.0.0.1/", "ca_file": str(garbage)},
        {"type": "http", "url": "https://127.0.0.1/", "ca_file": str(ca / "ca.crt"),
         "client_cert": str(ca / "client.crt"), "client_key": str(ca / "other.key")},
        {"type": "kube-apiserver", "ca_file": str(ca / "ca.crt"),
         "client_cert": str(ca / "client.crt"), "client_key": str(ca / "client.key")},
    ]  # fmt: skip
    doc = base_doc(tmp_path, vips=[{"address": "198.51.100.10", "interface": None, "checks": checks}])
    code, _, err = check(tmp_path, doc)
    assert code == 1
    lines = [line.strip() for line in err.splitlines()[1:]]
    assert lines == [
        f"vips[0].checks[0].ca_file: CA file {garbage}: no start line: cadata does not contain a certificate",
        f"vips[0].checks[1].client_cert: client certificate {ca / 'client.crt'} with key "
        f"{ca / 'other.key'}: key values mismatch",
    ]


def test_kube_apiserver_files_not_written_yet_are_notes(tmp_path: Path) -> None:
    """Before `kubeadm init` there is no CA (nor a probe certificate signed by it): ExecStartPre
    must not fail then, but it says so."""
    pki_dir = tmp_path / "pki"
    check_ = {"type": "kube-apiserver", "ca_file": str(pki_dir / "ca.crt"),
              "client_cert": str(pki_dir / "probe.crt"), "client_key": str(pki_dir / "probe.key")}  # fmt: skip
    doc = base_doc(tmp_path, vips=[{"address": "198.51.100.10", "interface": None, "checks": [check_]}])
    code, out, err = check(tmp_path, doc)
    assert (code, err) == (0, "")
    assert f"note: vips[0].checks[0].ca_file: {pki_dir / 'ca.crt'} does not exist yet" in out
    assert f"note: vips[0].checks[0].client_cert: {pki_dir / 'probe.crt'} does not exist yet" in out


def test_referenced_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    check_ = {"type": "http", "url": "https://127.0.0.1/", "ca_file": str(fifo)}
    doc = base_doc(tmp_path, vips=[{"address": "198.51.100.10", "interface": None, "checks": [check_]}])
    code, _, err = check(tmp_path, doc)
    assert code == 1
    assert f"vips[0].checks[0].ca_file: {fifo} is a FIFO, not a regular file" in err


# --------------------------------------------------------------------------- Kubernetes


def kubeconfig(tmp_path: Path, **over: Any) -> dict[str, Any]:
    (tmp_path / "ca.crt").write_text("x")
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "admin@k",
        "contexts": [{"name": "admin@k", "context": {"cluster": "k", "user": "admin"}}],
        "clusters": [
            {"name": "k", "cluster": {"server": "https://10.0.0.1:6443", "certificate-authority": "ca.crt"}}
        ],
        "users": [{"name": "admin", "user": {"client-certificate-data": base64.b64encode(b"x").decode()}}],
    }
    doc.update(over)
    return doc


def test_a_valid_kubeconfig_passes(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(tmp_path)))
    assert preflight.kubeconfig_problems(path) == []
    code, _, err = check(tmp_path, base_doc(tmp_path, kubernetes={"enabled": True, "kubeconfig": str(path)}))
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"current-context": None}, "has no current-context"),
        ({"current-context": "nope"}, "context 'nope' is not in contexts"),
        ({"contexts": "x"}, "contexts is not a list"),
        ({"clusters": []}, "cluster 'k' is not in clusters"),
        ({"users": [{"name": "someone", "user": {}}]}, "user 'admin' is not in users"),
        ({"clusters": [{"name": "k", "cluster": {"certificate-authority": "ca.crt"}}]}, "cluster 'k' has no https:// server"),
        ({"clusters": [{"name": "k", "cluster": {"server": "https://a", "certificate-authority": "missing.crt"}}]},
         "certificate-authority: {dir}/missing.crt does not exist"),
        ({"users": [{"name": "admin", "user": {"client-key-data": "***"}}]}, "client-key-data is not base64"),
        ({"contexts": [{"name": "admin@k", "context": {"cluster": "k"}}] * 2}, "context 'admin@k' is in contexts 2 times"),
    ],
    ids=["no-current-context", "unknown-context", "contexts-not-list", "no-cluster", "no-user",
         "no-server", "missing-ca-file", "bad-base64", "context-twice"],
)  # fmt: skip
def test_kubeconfig_problems_name_the_field(tmp_path: Path, over: dict[str, Any], words: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(tmp_path, **over)))
    code, _, err = check(tmp_path, base_doc(tmp_path, kubernetes={"enabled": True, "kubeconfig": str(path)}))
    assert code == 1
    assert f"kubernetes.kubeconfig: {path}: {words.format(dir=tmp_path)}" in err


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "kubeconfig {path} does not exist"),
        ("- a list\n", "{path} is not a kubeconfig (not a mapping)"),
        ("a: [unclosed\n", "{path}: not valid YAML at line 2"),
        ("", "{path} is not a kubeconfig (not a mapping)"),
    ],
    ids=["missing", "not-a-mapping", "not-yaml", "empty"],
)
def test_kubeconfig_that_is_not_one(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    code, _, err = check(tmp_path, base_doc(tmp_path, kubernetes={"enabled": True, "kubeconfig": str(path)}))
    assert code == 1
    assert f"kubernetes.kubeconfig: {words.format(path=path)}" in err


def test_kubeconfig_not_checked_while_kubernetes_is_off(tmp_path: Path) -> None:
    doc = base_doc(tmp_path, kubernetes={"enabled": False, "kubeconfig": str(tmp_path / "missing")})
    assert check(tmp_path, doc)[0] == 0


def test_in_cluster_without_a_pod_environment(tmp_path: Path) -> None:
    config = load(base_doc(tmp_path, kubernetes={"enabled": True}))
    sa = tmp_path / "sa"
    assert preflight.kubernetes_problems(config, environ={}, service_account=sa) == [
        ("kubernetes.kubeconfig", "unset, so the in-cluster ServiceAccount is used, but "
         "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not in a pod? set kubernetes.kubeconfig)"),
        ("kubernetes.kubeconfig", "unset, so the in-cluster ServiceAccount is used, but "
         f"{sa}/token does not exist (automountServiceAccountToken: false?)"),
        ("kubernetes.kubeconfig", "unset, so the in-cluster ServiceAccount is used, but "
         f"{sa}/ca.crt does not exist (automountServiceAccountToken: false?)"),
    ]  # fmt: skip
    sa.mkdir()
    (sa / "token").write_text("")
    (sa / "ca.crt").write_text("x")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert preflight.kubernetes_problems(config, environ=env, service_account=sa) == [
        ("kubernetes.kubeconfig", f"unset, so the in-cluster ServiceAccount is used, but {sa}/token is empty")
    ]
    (sa / "token").write_text("t")
    assert preflight.kubernetes_problems(config, environ=env, service_account=sa) == []


def test_in_cluster_through_the_cli(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""}
    code, _, err = check(tmp_path, base_doc(tmp_path, kubernetes={"enabled": True}), env=env)
    assert code == 1
    assert (
        "kubernetes.kubeconfig: unset, so the in-cluster ServiceAccount is used, but KUBERNETES_SERVICE_HOST"
        in err
    )
