"""The controller's settings (`bgpvip controller`'s flags), with the reason for each default, and
the clock it runs on.

Values only; no I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_NAMESPACE = "bgpvip-system"
DEFAULT_PORT = 9475


@dataclass(frozen=True, kw_only=True)
class ControllerOptions:
    identity: str
    """This replica's name in the Lease: the pod name, so `kubectl get lease` shows who leads."""
    namespace: str = DEFAULT_NAMESPACE
    """Namespace of the Lease: the controller's own, where its Role allows Lease writes."""
    lease_name: str = "bgpvip-controller"
    lease_duration: float = 15.0
    """Seconds a follower waits, after the Lease last changed, before taking over. Default 15
    (client-go's): a dead leader's Services wait at most this long for new addresses, while
    existing addresses are unaffected, since they live in the statuses."""
    renew_interval: float = 5.0
    """Seconds between renewals: three chances per lease duration."""
    renew_deadline: float = 10.0
    """A leader that could not renew for this long stops writing, 5 s before a follower may start."""
    retry_period: float = 2.0
    """Seconds between a follower's Lease reads, and between a leader's retries of a failed renew."""
    resync_interval: float = 60.0
    """Seconds between full re-allocations without any event. Everything is level-triggered; this
    only catches what a lost event would otherwise leave undone."""
    write_workers: int = 4
    """Status writes in flight at once: enough to write many fresh Services quickly without being
    a burden on the apiserver."""
    write_timeout: float = 10.0
    retry_initial: float = 0.5
    """First backoff after a failed status write; doubles per failure up to `retry_max`, and
    starts over after a success."""
    retry_max: float = 30.0
    config_poll: float = 5.0
    """Seconds between checks of the config file: a ConfigMap update takes effect without a restart."""
    listen: str = "127.0.0.1"
    """Address of /healthz, /metrics and /status. Default loopback: the endpoint is unauthenticated."""
    port: int = DEFAULT_PORT
    """0 picks a free port (tests)."""
    watcher: Mapping[str, Any] = field(default_factory=dict)
    """Extra `AllocationWatcher` settings (backoffs in tests)."""


@dataclass(frozen=True, slots=True)
class Clock:
    """Time as the controller reads it. The loop's timers, the leader elector, the watcher's
    backoffs and the Event recorder all take it from here, so that tests run the whole
    controller on fake time. Request timeouts are not on it: they guard against a hung
    connection, whatever the clock says."""

    now: Callable[[], float] = time.monotonic
    """Seconds, monotonic: timers, lease expiry, rate limits."""
    wall: Callable[[], float] = time.time
    """Seconds since the epoch: the timestamps written to Leases and Events."""
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep


REAL_TIME = Clock()
