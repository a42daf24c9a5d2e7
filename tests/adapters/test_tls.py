"""bgpvip.tls: the TLS material of an HTTPS check, loaded from its files and loaded again only
when one of them changes (stat stamps), with an error that names the file at fault."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import pytest

from bgpvip.tls import TlsFiles, TlsMaterial, TlsSetupError, build_context
from tests.pki import issue


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    ca = issue(d, "ca", cn="ca", issuer=None)
    issue(d, "client", cn="bgpvip-probe", issuer=ca)
    return d


def test_missing_ca_is_an_error_until_it_appears(cluster: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    material = TlsMaterial(TlsFiles(ca_file=ca))
    for _ in range(3):
        with pytest.raises(TlsSetupError, match=f"CA file {ca} does not exist") as e:
            material.context()
        assert e.value.field == "ca_file"
    assert material.generation == 1, "an unchanged missing file is not looked for again and again"
    ca.write_bytes((cluster / "ca.crt").read_bytes())
    assert isinstance(material.context(), ssl.SSLContext)
    assert material.generation == 2
    material.context()
    assert material.generation == 2


@pytest.mark.parametrize("change", ["rewrite-same-size", "rename-into-place", "chmod"])
def test_any_change_to_a_file_loads_it_again(cluster: Path, change: str) -> None:
    ca = cluster / "ca.crt"
    material = TlsMaterial(TlsFiles(ca_file=ca))
    material.context()
    before = material.generation
    data = ca.read_bytes()
    if change == "rewrite-same-size":
        st = ca.stat()
        ca.write_bytes(data)
        os.utime(ca, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    elif change == "rename-into-place":
        tmp = cluster / "ca.tmp"
        tmp.write_bytes(data)
        tmp.replace(ca)
    else:
        ca.chmod(0o600)
    material.context()
    assert material.generation == before + 1


def test_a_half_written_file_is_read_again_once_complete(cluster: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    data = (cluster / "ca.crt").read_bytes()
    ca.write_bytes(data[: len(data) // 2])
    material = TlsMaterial(TlsFiles(ca_file=ca))
    with pytest.raises(TlsSetupError):
        material.context()
    ca.write_bytes(data)
    material.context()


def test_an_empty_ca_file_is_an_error_not_the_system_trust_store(tmp_path: Path) -> None:
    """ssl.create_default_context(cadata="") silently trusts every public CA instead."""
    ca = tmp_path / "ca.crt"
    ca.write_text("\n")
    with pytest.raises(TlsSetupError, match=f"CA file {ca} is empty"):
        build_context(TlsFiles(ca_file=ca))


def test_an_encrypted_key_is_refused_without_a_passphrase_prompt(cluster: Path, tmp_path: Path) -> None:
    key = tmp_path / "enc.key"
    subprocess.run(
        [
            "openssl",
            "pkey",
            "-in",
            str(cluster / "client.key"),
            "-aes256",
            "-passout",
            "pass:x",
            "-out",
            str(key),
        ],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    files = TlsFiles(ca_file=cluster / "ca.crt", client_cert=cluster / "client.crt", client_key=key)
    with pytest.raises(TlsSetupError, match="the key is encrypted") as e:
        build_context(files)
    assert e.value.field == "client_cert"


def test_insecure_ignores_the_files() -> None:
    ctx = build_context(TlsFiles(insecure=True))
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_default_verifies_name_and_chain(cluster: Path) -> None:
    ctx = build_context(TlsFiles(ca_file=cluster / "ca.crt"))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1, "only the given CA, not the system store as well"
