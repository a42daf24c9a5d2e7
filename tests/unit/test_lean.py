"""bgpvip.lean: the adapters load only the parts of pyroute2 and the kubernetes client they use.

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


def test_the_kube_adapter_loads_no_models_no_api_classes_and_no_package_init() -> None:
    out = run(
        """
        import sys
        import bgpvip.adapters.kube as kube
        loaded = sorted(m for m in sys.modules if m.startswith("kubernetes"))
        assert "kubernetes" not in sys.modules, loaded
        assert "kubernetes.client" not in sys.modules, loaded
        assert not [m for m in loaded if m.startswith(("kubernetes.client.models", "kubernetes.client.api."))], loaded
        assert "kubernetes.client.api_client" in loaded
        # the kubeconfig loader (requests, oauthlib) is only imported when a kubeconfig is used
        assert "requests_oauthlib" not in sys.modules and "kubernetes.config.kube_config" not in sys.modules
        print(kube.ApiClient.__module__, kube.ApiException.__module__)
        """
    )
    assert out.split() == ["kubernetes.client.api_client", "kubernetes.client.exceptions"]


def test_a_later_real_import_shares_the_classes_and_a_left_out_model_fails_loudly() -> None:
    run(
        """
        import bgpvip.adapters.kube as kube
        from kubernetes.client import api_client
        try:
            api_client.kubernetes.client.models.V1Service
        except AttributeError as e:
            assert "bgpvip/lean.py" in str(e), e
        else:
            raise AssertionError("a model was reachable through the stand-in")
        import kubernetes
        from kubernetes.client.exceptions import ApiException
        assert kubernetes.client.ApiClient is kube.ApiClient
        assert kubernetes.client.Configuration is kube.Configuration
        assert ApiException is kube.ApiException
        assert kubernetes.client.V1Service.__name__ == "V1Service"  # the real package is whole
        """
    )


def test_in_cluster_config_loads_only_the_in_cluster_loader() -> None:
    run(
        """
        import os, sys
        from bgpvip.adapters.kube import make_api_client
        from bgpvip.core.config import KubernetesConfig
        for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            os.environ.pop(var, None)
        try:
            make_api_client(KubernetesConfig(enabled=True))
        except Exception as e:
            assert type(e).__name__ == "ConfigException", repr(e)
        else:
            raise AssertionError("in-cluster config loaded outside a cluster")
        assert "kubernetes.config.incluster_config" in sys.modules
        assert "kubernetes.config.kube_config" not in sys.modules and "requests_oauthlib" not in sys.modules
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
