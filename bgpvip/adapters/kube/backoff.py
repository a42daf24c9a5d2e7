"""The one backoff of the Kubernetes adapter, and how long to wait after each kind of failure.

I/O side (used by the watcher, the leader elector, the Event recorder and the credentials).
A small helper rather than tenacity: every user here is a long-running asyncio loop that must
decide per failure whether the sequence grows (a refused request) or not (a server that is
simply not there yet, or an apiserver whose authorizer is still starting), must start over after
a success, and must sleep on an injected clock in tests; tenacity's retry-a-call model fits none
of the three without wrapping it in as much code as this.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from bgpvip.adapters.kube.http import ApiError, CredentialsError, Unreachable

UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
"""Answers of a proxy or apiserver that is restarting: as good as unreachable."""


class Backoff:
    """Exponential delays with jitter: `initial`, doubling up to `maximum`; `reset()` after a
    success starts the sequence over (kopf's throttler, client-go's backoff manager)."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._rand = rand
        self.failures = 0

    def next(self) -> float:
        """The next delay of the sequence (and one step further along it)."""
        delay = min(self.maximum, self.initial * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return delay * (1 + self.jitter * self._rand())

    def short(self, delay: float) -> float:
        """A retry after `delay` that does not move the sequence on."""
        return min(delay, self.maximum) * (1 + self.jitter * self._rand())

    def reset(self) -> None:
        self.failures = 0


def transient(exc: BaseException, *, answering_for: float | None, authz_grace: float) -> bool:
    """Whether a failure says "not there yet" rather than "refused": the server cannot be reached
    or is restarting (retried at a short, fixed interval so a returning API is used within about
    a second), or it answers 403 within `authz_grace` seconds of starting to answer again (a
    kube-apiserver refuses ServiceAccount requests for about a second after it starts, while its
    authorizer is not ready). Neither moves the backoff sequence on."""
    if isinstance(exc, Unreachable):
        return True
    if isinstance(exc, CredentialsError):
        return False
    if isinstance(exc, ApiError):
        if exc.status in UNAVAILABLE_STATUSES:
            return True
        if exc.status == 403 and answering_for is not None and answering_for < authz_grace:
            return True
    return False
