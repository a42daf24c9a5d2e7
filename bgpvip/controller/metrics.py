"""What the controller's /metrics serves, and the counters its /status shows.

I/O side only in that it fills a prometheus_client registry; it decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bgpvip.core.alloc import Allocations, Outcome

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class ControllerStats:
    reconciles: int = 0
    writes: int = 0
    """Status writes the API accepted."""
    conflicts: int = 0
    failures: int = 0
    last_allocation_seconds: float = 0.0


class ControllerMetrics:
    """What `/metrics` serves. Pool figures are only known to the leader: a follower clears them."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.leader = Gauge(
            "bgpvip_controller_is_leader", "1 while this replica holds the lease and allocates", registry=r
        )
        self.pool_size = Gauge(
            "bgpvip_pool_addresses", "Addresses in the pool", ["pool", "family"], registry=r
        )
        self.pool_used = Gauge(
            "bgpvip_pool_addresses_used",
            "Addresses of the pool assigned to at least one Service",
            ["pool", "family"],
            registry=r,
        )
        self.pool_allocations = Gauge(
            "bgpvip_pool_allocations",
            "Services holding an address of the pool",
            ["pool", "family"],
            registry=r,
        )
        self.refused = Gauge(
            "bgpvip_allocation_refusals",
            "Services currently refused an address, by reason",
            ["reason"],
            registry=r,
        )
        self.services = Gauge(
            "bgpvip_controller_services", "Services of bgpvip's class, by outcome", ["outcome"], registry=r
        )
        self.writes = Counter("bgpvip_status_writes", "Status writes by result", ["result"], registry=r)
        self.allocation_seconds = Histogram(
            "bgpvip_allocation_duration_seconds",
            "Time to allocate for all Services",
            buckets=_BUCKETS,
            registry=r,
        )
        self.config_reloads = Counter(
            "bgpvip_config_reloads", "Config reloads by result", ["result"], registry=r
        )

    def observe(self, result: Allocations, seconds: float) -> None:
        self.allocation_seconds.observe(seconds)
        for u in result.usage:
            labels = (u.pool, f"ipv{u.family}")
            self.pool_size.labels(*labels).set(u.size)
            self.pool_used.labels(*labels).set(u.used)
            self.pool_allocations.labels(*labels).set(u.services)
        reasons: dict[str, int] = {}
        outcomes = {o.value: 0 for o in (Outcome.ASSIGNED, Outcome.REFUSED)}
        for a in result.by_service.values():
            if a.outcome is Outcome.REFUSED:
                reasons[a.reason.value] = reasons.get(a.reason.value, 0) + 1
            if a.outcome is not Outcome.NOT_OURS:
                outcomes[a.outcome.value] += 1
        self.refused.clear()
        for reason, n in reasons.items():
            self.refused.labels(reason).set(n)
        for outcome, n in outcomes.items():
            self.services.labels(outcome).set(n)

    def follower(self) -> None:
        self.leader.set(0)
        for g in (self.pool_size, self.pool_used, self.pool_allocations, self.refused, self.services):
            g.clear()
