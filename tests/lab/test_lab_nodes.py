"""Each lab node has its own bgpvip files: `bgpvip drain` in one node drains that node only.

Network namespaces share the filesystem. With bgpvip's default paths every node shared
/run/bgpvip and /var/lib/bgpvip/drain, so a drain in n1 withdrew n2's and n3's routes too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bgpvip_lab
import nslab
import pytest

from bgpvip.configfile import load_file

VIP = "198.51.100.10"
DEFAULT_DRAIN = Path("/var/lib/bgpvip/drain")


def nslab_cli(lab: nslab.Lab, *args: str) -> int:
    topology = os.environ.get("BGPVIP_LAB_TOPOLOGY", str(nslab.DEFAULT_TOPOLOGY))
    return nslab.main(["--prefix", lab.prefix, "--topology", topology, *args])


def test_each_node_gets_its_own_config_runtime_dir_and_drain_file(
    lab: nslab.Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {}
    for node in ("n1", "n2"):
        assert nslab_cli(lab, "bgpvip-config", node, VIP) == 0
        paths[node] = Path(capsys.readouterr().out.strip())
        assert paths[node] == nslab.node_bgpvip_dir(lab, node) / "config.yaml"
    configs = {node: load_file(path, check_files=False) for node, path in paths.items()}
    for node, config in configs.items():
        assert config.drain_file.parent == nslab.node_bgpvip_dir(lab, node)
        assert config.runtime_dir.parent == nslab.node_bgpvip_dir(lab, node)
    assert configs["n1"].drain_file != configs["n2"].drain_file
    assert configs["n1"].runtime_dir != configs["n2"].runtime_dir

    default_drained = DEFAULT_DRAIN.exists()
    bgpvip = [sys.executable, "-m", "bgpvip"]
    assert nslab_cli(lab, "exec", "n1", "--", *bgpvip, "drain", "--reason", "test") == 0
    assert configs["n1"].drain_file.exists()
    assert not configs["n2"].drain_file.exists(), "a drain in n1 must not drain n2"
    assert DEFAULT_DRAIN.exists() == default_drained, "nor the host's default drain file"
    assert nslab_cli(lab, "exec", "n1", "--", *bgpvip, "undrain") == 0
    assert not configs["n1"].drain_file.exists()
    assert nslab_cli(lab, "exec", "n2", "--", *bgpvip, "check-config") == 0


def test_the_demo_and_the_tests_use_the_same_per_node_files(lab: nslab.Lab) -> None:
    config = bgpvip_lab.node_config(lab, "n3", [])
    assert Path(config["drain_file"]).parent == nslab.node_bgpvip_dir(lab, "n3")
    assert Path(config["runtime_dir"]).parent == nslab.node_bgpvip_dir(lab, "n3")
    path = bgpvip_lab.write_node_config(lab, "n3", config)
    assert nslab.node_bgpvip_env(lab, "n3") == {"BGPVIP_CONFIG": str(path)}
