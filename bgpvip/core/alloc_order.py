"""The order of the controller's status writes: no address is ever shown by two Services that do
not both keep it.

Pure side of the line. `allocate` says what every Service's `status.loadBalancer.ingress` is to
hold; the API can only be told one Service at a time, and each write is guarded by that Service's
own resourceVersion, nothing else. Written in any order, a move would show an address twice: B
shows what it takes from A while A's release is not yet written, and the speakers would announce
it for both. `WriteOrder` hands the writes out in rounds so that it never happens:

- dependency order: a write that adds an address waits until every other Service that shows it
  has been written without it (releases first). A Service that keeps the address too (a shared
  one, or a Service whose status is left alone) does not hold anyone up: sharing is the
  allocator's decision;
- cycles: when every write waits for another (A takes B's address while B takes A's), the
  addresses the waiting writes need are released alone first; the additions follow in the
  next round. Addresses nobody waits for stay where they are until their Service's own write;
- deferral: what a Service is to show counts whether or not its write is due. A Service whose
  write failed and waits for its retry still releases, in intent, what it gives up: nobody is
  given those addresses before that release is written. Writes that still wait when nothing
  else can be done are `waiting`: the caller tries them again later.

The caller sends every write of a round at once, reports each outcome, and asks for the next
round until there is none. A Service whose write failed is not asked for again in the same run.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from bgpvip.core.services import Key

Ips = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusWrite:
    key: Key
    ips: Ips
    """What the Service's status is to show once written."""
    partial: bool = False
    """Only the releases of a write that waits for another's (a cycle broken); the rest follows."""


class WriteOrder:
    """The status writes of one allocation run, in rounds. See the module docstring."""

    def __init__(self, shown: Mapping[Key, Ips], intended: Mapping[Key, Ips], due: Collection[Key]) -> None:
        """`shown`: every Service's status as last seen (a missing key shows nothing).
        `intended`: what each Service is to show, for those whose status the decision sets
        (a missing key is left as it is), whether its write is due or not. `due`: the Services
        whose write may be sent now (not waiting for a retry)."""
        self._shown = {k: tuple(v) for k, v in shown.items()}
        self._intended = dict(intended)
        self._due = {k for k in due if k in intended and tuple(intended[k]) != self._shown.get(k, ())}
        self._holders: dict[str, set[Key]] = {}
        for k, ips in self._shown.items():
            for ip in ips:
                self._holders.setdefault(ip, set()).add(k)
        self._waiting: tuple[Key, ...] = ()
        self._sent: dict[Key, StatusWrite] = {}

    @property
    def waiting(self) -> tuple[Key, ...]:
        """Due writes that wait for a release nobody can write now, as of the last `next()`."""
        return self._waiting

    def shown(self, key: Key) -> Ips:
        return self._shown.get(key, ())

    def _keeps(self, key: Key, ip: str) -> bool:
        return ip in self._intended.get(key, self._shown.get(key, ()))

    def _needs(self, key: Key) -> set[Key]:
        """The Services whose release this Service's write waits for."""
        have = self._shown.get(key, ())
        return {
            other
            for ip in self._intended[key]
            if ip not in have
            for other in self._holders.get(ip, ())
            if other != key and not self._keeps(other, ip)
        }

    def next(self) -> tuple[StatusWrite, ...]:
        """The writes to send now, all at once, in key order; () when this run is done."""
        if self._sent:
            raise RuntimeError("report every write of the previous round first")
        candidates = sorted(self._due)
        blocked = {k for k in candidates if self._needs(k)}
        ready = [StatusWrite(k, tuple(self._intended[k])) for k in candidates if k not in blocked]
        if not ready:
            ready = self._releases(blocked)
        self._waiting = tuple(k for k in candidates if k in blocked)
        self._sent = {w.key: w for w in ready}
        return tuple(ready)

    def _releases(self, blocked: set[Key]) -> list[StatusWrite]:
        """Every due write waits: the releases those writes need, alone (a cycle broken)."""
        needed: dict[Key, set[str]] = {}
        for k in blocked:
            have = self._shown.get(k, ())
            for ip in self._intended[k]:
                if ip in have:
                    continue
                for other in self._holders.get(ip, ()):
                    if other in blocked and other != k and not self._keeps(other, ip):
                        needed.setdefault(other, set()).add(ip)
        return [
            StatusWrite(k, tuple(ip for ip in self._shown.get(k, ()) if ip not in needed[k]), partial=True)
            for k in sorted(needed)
        ]

    def written(self, key: Key, ips: Ips) -> None:
        """The write for `key` succeeded and the status shows `ips` now."""
        sent = self._sent.pop(key)
        for ip in self._shown.get(key, ()):
            self._holders.get(ip, set()).discard(key)
        self._shown[key] = tuple(ips)
        for ip in ips:
            self._holders.setdefault(ip, set()).add(key)
        # after its releases alone, a Service's own write is still to come
        if not (sent.partial and tuple(ips) == sent.ips):
            self._due.discard(key)

    def failed(self, key: Key) -> None:
        """The write for `key` was not made (an error, a conflict, the Lease lost): its status is
        as it was, and it is not asked for again in this run."""
        self._sent.pop(key)
        self._due.discard(key)
