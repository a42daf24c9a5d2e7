"""docs/control-plane-vip.md says what the code does: the message quoted for a missing CA is
the probe's, the failure table is derived from the check's defaults, and the documented
openssl commands make a probe certificate that a server with anonymous auth off accepts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bgpvip.adapters.probes import make_probe
from bgpvip.core.config import KubeApiserverCheck, PeerConfig
from bgpvip.core.health import BROKEN_RECHECK_DELAY
from tests.adapters.test_probes import HttpServer, Pki, free_port, make_pki, server_tls

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "control-plane-vip.md"
KUBEADM_CA = Path("/etc/kubernetes/pki/ca.crt")


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC_PATH.read_text()


async def test_the_quoted_missing_ca_message_is_the_probes(doc: str, tmp_path: Path) -> None:
    assert KubeApiserverCheck(type="kube-apiserver").ca_file == KUBEADM_CA
    missing = tmp_path / "ca.crt"
    probe = make_probe(KubeApiserverCheck(type="kube-apiserver", port=free_port(), ca_file=missing))
    detail = (await probe.run()).detail
    await probe.aclose()
    as_on_a_node = detail.replace(str(missing), str(KUBEADM_CA))
    quoted = " ".join(doc.split())
    assert f'"{as_on_a_node}"' in quoted, as_on_a_node


def _row(doc: str, starts: str) -> str:
    rows = [line for line in doc.splitlines() if line.startswith(f"| {starts}")]
    assert len(rows) == 1, starts
    return rows[0]


def test_the_failure_table_is_derived_from_the_defaults(doc: str) -> None:
    c = KubeApiserverCheck(type="kube-apiserver")
    hold = PeerConfig.model_fields["hold_time"].default
    expected = {
        "apiserver crashes": f"| {BROKEN_RECHECK_DELAY:g} s |",
        "`/readyz` turns 500": f"| {c.interval + (c.fall - 1) * c.fast_interval:.2f} s |",
        "apiserver hung": f"| {c.interval + c.fall * c.timeout + (c.fall - 1) * c.fast_interval:.2f} s |",
        "the whole node dies": f"| {hold} s |",
    }
    for row, figure in expected.items():
        assert _row(doc, row).endswith(figure), (row, figure)
    recovery = c.interval + (c.rise - 1) * c.fast_interval
    assert f"{recovery:.2f} s at the defaults" in doc
    settings = (
        f"(`interval` {c.interval:g} s, `fast_interval` {c.fast_interval:g} s, `timeout` {c.timeout:g} s, "
        f"`fall` {c.fall}, `rise` {c.rise}) and of the peer (`hold_time` {hold} s)"
    )
    assert settings in " ".join(doc.split())


@pytest.fixture
def documented_certificate(doc: str, tmp_path: Path) -> tuple[Pki, Path, Path]:
    """(cluster PKI, certificate, key) made by the doc's commands, with the paths moved here."""
    (script,) = re.findall(r"```bash\n(# make-bgpvip-probe-cert.*?)```", doc, flags=re.DOTALL)
    cluster = make_pki(tmp_path, "cluster")
    out = tmp_path / "etc-bgpvip-pki"
    script = script.replace("/etc/kubernetes/pki", str(cluster.ca.parent)).replace(
        "/etc/bgpvip/pki", str(out)
    )
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True, capture_output=True, timeout=60)
    assert sorted(p.name for p in out.iterdir()) == ["bgpvip-probe.crt", "bgpvip-probe.key"]
    assert (out / "bgpvip-probe.key").stat().st_mode & 0o777 == 0o600
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(out / "bgpvip-probe.crt"), "-noout", "-subject"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert subject.strip() == "subject=CN = bgpvip-probe", "no groups (O=): nothing but authentication"
    return cluster, out / "bgpvip-probe.crt", out / "bgpvip-probe.key"


async def test_the_documented_probe_certificate_is_accepted_with_anonymous_auth_off(
    documented_certificate: tuple[Pki, Path, Path],
) -> None:
    cluster, cert, key = documented_certificate
    server = await HttpServer(
        ssl_context=server_tls(cluster, ask_client_cert=True), unauthorized_without_client_cert=True
    ).start()
    common: dict[str, Any] = {"type": "kube-apiserver", "port": server.port, "ca_file": cluster.ca}
    anonymous = make_probe(KubeApiserverCheck(**common))
    with_cert = make_probe(KubeApiserverCheck(**common, client_cert=cert, client_key=key))
    try:
        assert (await anonymous.run()).detail == "HTTP 401"
        result = await with_cert.run()
        assert result.ok, result.detail
    finally:
        for probe in (anonymous, with_cert):
            await probe.aclose()
        await server.kill()
