"""Running a benchmark script end to end from a smoke test (tests/lab/test_benchmark_*.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nslab

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(
    script: str, tag: str, args: list[str], tmp_path: Path, *, other_section: str, timeout: float
) -> tuple[str, dict[str, Any], str]:
    """Run benchmarks/`script` with `args`, its results and a docs file in `tmp_path`, in a lab
    of its own (prefix `bvt<pid><tag>-`: the lab tests' reaper removes it if we die). The docs
    file starts with an intro and `other_section`, which the run must keep. Returns (stdout,
    the JSON report, the docs file's text), after checking that the run succeeded and left no
    namespace behind."""
    prefix = f"bvt{os.getpid() % 10000}{tag}-"
    docs = tmp_path / "performance.md"
    docs.write_text(f"# Performance\n\nIntro.\n\n{other_section}\n\nSomeone else's section.\n")
    argv = [sys.executable, str(REPO / "benchmarks" / script), *args, "--prefix", prefix]
    argv += ["--results-dir", str(tmp_path), "--write-docs", "--docs", str(docs)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        nslab.Lab(nslab.DEFAULT_TOPOLOGY, prefix).down()  # a no-op unless the run died half-way
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
    leftovers = [n for n in nslab._netns_list() if n.startswith(prefix)]
    assert not leftovers, f"namespaces left behind: {leftovers}"
    (result_file,) = tmp_path.glob(f"{script.removesuffix('.py')}-*.json")
    text = docs.read_text()
    assert text.startswith("# Performance\n\nIntro.")
    assert f"{other_section}\n\nSomeone else's section." in text
    return proc.stdout, json.loads(result_file.read_text()), text
