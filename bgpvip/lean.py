"""Import a few modules of a big package without running the package's `__init__`.

A helper for the adapters (outside them, so that they stay independent of each other). `import pyroute2` imports every netlink family it supports
(NDB, IPDB, nftables, WireGuard, nl80211, ...): 14 MB of resident memory and 70 ms, where the
address adapter needs `IPRoute` and three constants (about 9 MB). The speaker's memory budget
is 80 MB with 10,000 Services, so the difference matters.

How: while the wanted submodules are imported, a bare module object stands in for the package
(with the package's real `__path__`, so submodules are found as usual). It is removed again
afterwards, so a later plain `import pyroute2` anywhere in the process runs the real
`__init__`, which finds the submodules already loaded: nothing is imported twice and nothing
sees the stand-in. If the package is already imported, this is a plain import.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def submodules(package: str, *names: str) -> tuple[types.ModuleType, ...]:
    """Import `names` (full dotted names inside `package`) and return them, in order."""
    if package in sys.modules:
        return tuple(importlib.import_module(n) for n in names)
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{package} is not an installed package")
    stand_in = types.ModuleType(package, f"bgpvip stand-in for {package} (see bgpvip.lean)")
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__spec__ = spec
    stand_in.__package__ = package
    sys.modules[package] = stand_in
    try:
        return tuple(importlib.import_module(n) for n in names)
    finally:
        if sys.modules.get(package) is stand_in:
            del sys.modules[package]
