"""Import a few modules of a big package without running the package's `__init__`.

A helper for the netlink adapter (outside it, so that the adapters stay independent of each
other). The speaker's memory budget is 80 MB with 10,000 Services, and `import pyroute2` imports
every netlink family it supports (NDB, IPDB, nftables, WireGuard, nl80211, ...): 14 MB of
resident memory and 70 ms, where the address adapter needs `IPRoute` and three constants (about
9 MB). (The Kubernetes adapter needs no such thing: it does not import the official client.)

How: while the wanted submodules are imported, a bare module object stands in for each listed
package (with the package's real `__path__`, so submodules are found as usual). The stand-ins
are removed again afterwards, so a later plain `import pyroute2` anywhere in the process runs
the real `__init__`, which finds the submodules already loaded: nothing is imported twice and
nothing sees a stand-in except the modules imported through it. A stand-in can `export` names
that its package's `__init__` would have bound;
any other name read from a stand-in raises an AttributeError that says why, so a use of
something that was left out fails loudly instead of silently. If the top package is already
imported, this is a plain import. One difference remains after a later real import: the
package does not get the submodules loaded through the stand-in as attributes; `from
package.submodule import ...` works as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Mapping, Sequence

Exports = Mapping[str, Mapping[str, str]]
"""stand-in package -> {name: module it comes from}."""


def submodules(
    packages: str | Sequence[str], *names: str, exports: Exports | None = None
) -> tuple[types.ModuleType, ...]:
    """Import `names` (full dotted names inside the first of `packages`) and return them, in order.

    `packages`: the top package, or the top package followed by the subpackages whose
    `__init__` must not run either (each also gets a stand-in). `exports`: names a stand-in
    provides, each imported from the module given, on first use.
    """
    listed = [packages] if isinstance(packages, str) else list(packages)
    top = listed[0]
    if top in sys.modules:
        return tuple(importlib.import_module(n) for n in names)
    stand_ins: dict[str, types.ModuleType] = {}
    try:
        for name in listed:
            # in order, each in sys.modules before the next: a subpackage's spec is found
            # through its parent, which must then be the stand-in and not the real package
            module = stand_ins[name] = _stand_in(name, (exports or {}).get(name, {}))
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent in stand_ins:
                setattr(stand_ins[parent], child, module)
        return tuple(importlib.import_module(n) for n in names)
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def _stand_in(package: str, exports: Mapping[str, str]) -> types.ModuleType:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{package} is not an installed package")
    module = types.ModuleType(package, f"bgpvip stand-in for {package} (see bgpvip.lean)")
    module.__path__ = list(spec.submodule_search_locations)
    module.__spec__ = spec
    module.__package__ = package

    def __getattr__(name: str) -> object:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(module, name, value)
            return value
        raise AttributeError(
            f"{package}.{name} is not loaded: bgpvip imports {package} without its __init__ "
            f"to save memory (bgpvip/lean.py); import it explicitly if it is needed"
        )

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module
