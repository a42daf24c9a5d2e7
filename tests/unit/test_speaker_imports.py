"""What a speaker process loads. Checked in a fresh interpreter, because what matters is what
an import brings into a process that has nothing loaded yet (the test process has it all)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def loaded_by(*modules: str) -> set[str]:
    code = textwrap.dedent(
        f"""
        import json, sys
        before = set(sys.modules)
        for name in {list(modules)!r}:
            __import__(name)
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


def test_a_speaker_without_service_ips_does_not_load_the_kubernetes_side() -> None:
    """The Kubernetes adapter (and msgspec and h11 with it) is loaded when the speaker starts
    watching the API, never on a host that only announces VIPs."""
    loaded = loaded_by("bgpvip.speaker", "bgpvip.daemon")
    assert "bgpvip.daemon" in loaded
    kube_side = sorted(m for m in loaded if m.startswith("bgpvip.adapters.kube") or m in ("msgspec", "h11"))
    assert kube_side == []
