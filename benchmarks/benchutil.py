"""Helpers both benchmarks use: percentiles, stopping a process we started, the versions a
report names, and rewriting a report's generated block in docs/performance.md."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    k = (len(s) - 1) * p
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM one process we started (by its PID), SIGKILL after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def first_line(cmd: list[str]) -> str:
    """The first line a command prints (stdout, then stderr), for version strings."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    text = (p.stdout + p.stderr).strip()
    return text.splitlines()[0] if text else "?"


def versions(repo: Path, frr_bin: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """What a report names: kernel, FRR, ExaBGP, `extra` (the benchmark's own tools), Python,
    bgpvip with its commit (and whether the tree had uncommitted changes), CPU and OS."""
    import bgpvip

    rev = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    commit = rev.stdout.strip() if rev.returncode == 0 else "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "kernel": platform.release(),
        "frr": first_line([str(frr_bin / "zebra"), "--version"]),
        "exabgp": importlib.metadata.version("exabgp"),
        **extra,
        "python": platform.python_version(),
        "bgpvip": f"{bgpvip.__version__} (git {commit}{', uncommitted changes' if dirty else ''})",
        "cpu": f"{os.cpu_count()} x {cpu_model}",
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
    }


def write_docs_block(path: Path, block: str, *, section: str, begin: str, end: str, intro: str) -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in place of the generated
    block of `section` in `path`. A missing block goes at the end of the section, a missing
    section at the end of the file, a missing file starts from `intro`; the rest is kept."""
    text = path.read_text() if path.exists() else intro
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    elif section in text:
        head, rest = text.split(section, 1)
        nxt = rest.find("\n## ")
        body, tail = (rest, "") if nxt < 0 else (rest[: nxt + 1], rest[nxt + 1 :])
        text = head + section + body.rstrip("\n") + "\n\n" + block + "\n\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
