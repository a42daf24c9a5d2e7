"""Fixtures for the lab tests: the lab/ topology built in network namespaces (lab/nslab.py).

Every test under tests/lab is marked ``netns`` and ``lab`` and skipped (with the reason)
when this is not root or FRR is not installed. The module-scoped ``lab`` fixture builds one
lab per test module with its own short name prefix and always tears it down; when a test
that used it fails, the router's logs, its BGP state and every node's ExaBGP log are
attached to the failure report ("lab logs" section).

Environment:
  BGPVIP_LAB_TOPOLOGY   topology file to build instead of lab/bgpvip.clab.yml
                        (e.g. a copy with a broken router config, to see a test fail)
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[2]
LAB_DIR = REPO_DIR / "lab"
HELPERS_DIR = Path(__file__).resolve().parent / "helpers"
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))

import nslab  # noqa: E402

_lab_numbers = itertools.count()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, veth pairs, FRR)"
    for daemon in ("zebra", "bgpd"):
        if not (nslab.FRR_BIN / daemon).exists():
            return f"FRR is not installed ({nslab.FRR_BIN / daemon} is missing)"
    for tool in ("ip", "vtysh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        nslab.exabgp_command()
    except nslab.LabError as exc:
        return str(exc)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    reason = _skip_reason()
    for item in items:
        if here not in Path(item.path).resolve().parents:
            continue
        item.add_marker(pytest.mark.netns)
        item.add_marker(pytest.mark.lab)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    lab = getattr(item, "funcargs", {}).get("lab")
    if report.when == "call" and report.failed and isinstance(lab, nslab.Lab):
        try:
            report.sections.append(("lab logs", lab.logs()))
        except Exception as exc:  # a broken lab must not hide the test's own failure
            report.sections.append(("lab logs", f"could not collect lab logs: {exc!r}"))
    return report


def new_prefix() -> str:
    """A short lab prefix unused on this machine (``bvt<pid%10000><n>-``)."""
    while True:
        prefix = f"bvt{os.getpid() % 10000}{next(_lab_numbers)}-"
        if not (nslab.STATE_ROOT / prefix.rstrip("-")).exists():
            return prefix


def _topology() -> Path:
    return Path(os.environ.get("BGPVIP_LAB_TOPOLOGY", nslab.DEFAULT_TOPOLOGY))


@pytest.fixture(scope="session", autouse=True)
def _reap_stale_labs() -> None:
    """Remove labs left by earlier test processes that died without tearing down."""
    if _skip_reason() is None:
        nslab.Lab.reap_stale("bvt")


@pytest.fixture(scope="module")
def lab() -> Iterator[nslab.Lab]:
    """The lab topology, up; torn down after the module whatever happens."""
    instance = nslab.Lab(_topology(), new_prefix())
    try:
        instance.up()
        yield instance
    finally:
        instance.down()


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., nslab.Lab]]:
    """Make extra labs with fresh prefixes; every one made is torn down after the test."""
    made: list[nslab.Lab] = []

    def make(topology: str | os.PathLike[str] | None = None, prefix: str | None = None) -> nslab.Lab:
        instance = nslab.Lab(topology or _topology(), prefix or new_prefix())
        made.append(instance)
        return instance

    try:
        yield make
    finally:
        errors = []
        for instance in made:
            try:
                instance.down()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def helpers_dir() -> Path:
    return HELPERS_DIR
