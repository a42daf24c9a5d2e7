"""`bgpvip controller`, the command: its help and refusals, and a real process against the fake
apiserver. A separate process has no fake clock: the wait for its first status write is a
deadline on real time, a hang detector, and nothing here measures a duration."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from click.testing import CliRunner

from bgpvip.cli import main as cli
from tests.controller.helpers import CONFIG_DOC, NS, ingress, service
from tests.kubeapi import FakeKubeAPI


def test_cli_help_and_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["controller", "--help"])
    assert (
        out.exit_code == 0 and "bgpvip.io/loadBalancerIPs" in out.output and "--lease-duration" in out.output
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: 5\n")
    out = runner.invoke(cli, ["controller", "--config", str(bad)])
    assert out.exit_code == 2 and "invalid" in out.output and "bgp: is required" in out.output
    out = runner.invoke(cli, ["controller", "--config", str(bad), "--renew-deadline", "20"])
    assert out.exit_code == 2 and "--renew-deadline < --lease-duration" in out.output


def test_the_command_runs_allocates_and_stops_cleanly_on_sigterm(api: FakeKubeAPI, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
                "current-context": "fake",
            }
        )
    )
    config = tmp_path / "config.yaml"
    # as in the shared ConfigMap: ${VAR} expansion happens in the controller too
    doc = {**CONFIG_DOC, "node_name": "${NODE_NAME:-none}"}
    config.write_text(yaml.safe_dump({**doc, "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig)}}))
    api.put("services", service("web"))
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bgpvip",
                "controller",
                "--config",
                str(config),
                "--namespace",
                NS,
                "--identity",
                "proc",
                "--port",
                "0",
            ],
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 20
            while ingress(api, "web") != ("203.0.113.0",):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lease = api.get("leases", NS, "bgpvip-controller")
    assert lease is not None and not lease["spec"].get("holderIdentity"), "released on SIGTERM"
    text = log.read_text()
    assert "event=allocated service=default/web ips=203.0.113.0" in text
    assert "event=controller-stopped identity=proc released=True" in text
