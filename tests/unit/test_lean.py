"""bgpvip.lean: the netlink adapter loads only the parts of pyroute2 it uses; the speaker loads no
kubernetes client at all.

Each check runs in a fresh interpreter, because what matters is what an import brings into a
process that has nothing loaded yet (the test process has both packages loaded in full).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from bgpvip.lean import submodules


def run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_speaker_never_imports_the_kubernetes_client() -> None:
    """The kube adapter reads the API itself (msgspec, h11); the official client's loaders run
    only in the short-lived resolver child (bgpvip.adapters.kube.resolve)."""
    run(
        """
        import sys
        import bgpvip.speaker, bgpvip.daemon, bgpvip.controller
        import bgpvip.adapters.kube
        assert not [m for m in sys.modules if m.split(".")[0] in ("kubernetes", "urllib3")]
        """
    )


def test_the_netlink_adapter_loads_iproute_on_first_use_without_the_other_netlink_families() -> None:
    run(
        """
        import sys
        import bgpvip.adapters.netlink as netlink
        assert not [m for m in sys.modules if m.startswith("pyroute2")]  # nothing until it is needed
        assert netlink.IPRoute.__module__ == "pyroute2.iproute.linux"
        assert netlink.NetlinkError.__module__ == "pyroute2.netlink.exceptions"
        assert isinstance(netlink.IFA_F_NODAD, int) and isinstance(netlink.IFF_UP, int)
        assert "pyroute2" not in sys.modules
        assert "pyroute2.iproute.linux" in sys.modules
        assert not [m for m in sys.modules if m.startswith(("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.nftables"))]
        """
    )


def test_a_package_that_is_not_installed_is_an_import_error() -> None:
    with pytest.raises(ImportError, match="not an installed package"):
        submodules("bgpvip_no_such_package", "bgpvip_no_such_package.x")
    assert "bgpvip_no_such_package" not in sys.modules
    with pytest.raises(ImportError, match="not an installed package"):
        submodules("tabnanny", "tabnanny.x")  # a module, not a package
    assert "tabnanny" not in sys.modules


def test_the_speaker_process_imports_no_cli() -> None:
    """`bgpvip run` starts `python -m bgpvip.speaker`: the daemon and its entry must not bring
    the CLI framework (click) or the CLI's status client back in."""
    run(
        """
        import sys
        import bgpvip.speaker, bgpvip.daemon
        assert "click" not in sys.modules and "bgpvip.cli" not in sys.modules, sorted(sys.modules)
        """
    )
