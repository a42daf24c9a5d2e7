"""Leader election over a coordination.k8s.io/v1 Lease, and the controller's status writes.

I/O side: a task on the running loop; its clock and sleep are injected (tests run on fake time).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from bgpvip.adapters.kube.backoff import Backoff, transient
from bgpvip.adapters.kube.decode import ALLOC_SERVICES
from bgpvip.adapters.kube.http import ApiError, KubeClient, KubeError, describe
from bgpvip.core.alloc import AllocService

log = logging.getLogger(__name__)

_MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def _micro_time(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime(_MICRO_TIME)


async def patch_service_status(
    client: KubeClient,
    namespace: str,
    name: str,
    ips: Sequence[str],
    *,
    resource_version: str = "",
    time_limit: float = 10.0,
) -> AllocService:
    """Set `status.loadBalancer.ingress` to `ips` (empty: remove it) through the status
    subresource, as a JSON merge patch. With `resource_version`, the write fails with 409 if the
    Service changed since that version: the caller decided on what it saw then, so it must see
    the change (its watch delivers it) and decide again. Returns the Service as written."""
    body: dict[str, Any] = {"status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips] or None}}}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    data = await client.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/services/{name}/status",
        body=msgspec.json.encode(body),
        content_type="application/merge-patch+json",
        time_limit=time_limit,
    )
    view = ALLOC_SERVICES.view(data)
    assert isinstance(view, AllocService)
    return view


class _LeaseSpec(
    msgspec.Struct,
    rename={
        "holder": "holderIdentity",
        "duration": "leaseDurationSeconds",
        "acquire_time": "acquireTime",
        "renew_time": "renewTime",
        "transitions": "leaseTransitions",
    },
):
    holder: str | None = None
    duration: int | None = None
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int | None = None


class _LeaseMeta(msgspec.Struct, rename={"resource_version": "resourceVersion"}):
    resource_version: str = ""


class _Lease(msgspec.Struct):
    metadata: _LeaseMeta | None = None
    spec: _LeaseSpec | None = None


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The leader-election fields of a coordination.k8s.io/v1 Lease."""

    holder: str = ""
    """`spec.holderIdentity`; empty when nobody holds it (released)."""
    duration: int = 0
    """`spec.leaseDurationSeconds` the holder promised to renew within."""
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0
    """`spec.leaseTransitions`: how many times the holder changed."""

    @classmethod
    def decode(cls, data: bytes) -> tuple[LeaseRecord, str]:
        """A Lease (JSON) → its record and resourceVersion."""
        lease = msgspec.json.decode(data, type=_Lease)
        s = lease.spec or _LeaseSpec()
        record = cls(
            holder=s.holder or "",
            duration=s.duration or 0,
            acquire_time=s.acquire_time or "",
            renew_time=s.renew_time or "",
            transitions=s.transitions or 0,
        )
        return record, (lease.metadata.resource_version if lease.metadata else "")

    def spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder or None,
            "leaseDurationSeconds": self.duration,
            "acquireTime": self.acquire_time or None,
            "renewTime": self.renew_time or None,
            "leaseTransitions": self.transitions,
        }


@dataclass
class LeaderStats:
    acquired: int = 0
    """Times this elector became the leader."""
    renewed: int = 0
    lost: int = 0
    """Times it stopped being the leader without being asked to (renew deadline passed)."""
    conflicts: int = 0
    """409 answers: someone else wrote the Lease first; re-read on the next attempt."""
    failures: int = 0
    """Requests that failed (API unreachable, 5xx, ...)."""


class LeaderElector:
    """Leader election over a coordination.k8s.io/v1 Lease, with client-go's semantics.

    Every `retry_period` (jittered) a candidate reads the Lease. It takes the Lease when nobody
    holds it, or when the record has not changed for the holder's `leaseDurationSeconds` as
    measured on this process's own clock from when it last saw a change (never from the record's
    `renewTime`, so clock skew between nodes does not matter). The leader renews every
    `renew_interval`; when it has not renewed for `renew_deadline` it steps down, before any
    other candidate may take over (`renew_deadline` < `lease_duration`). Every write carries the
    Lease's resourceVersion: of two writers one gets 409 and re-reads.

    A candidate that cannot reach the API, or that is refused with 403 just after the API came
    back (an apiserver's authorizer is not ready for about a second after it starts), tries
    again every `retry_period`; other failures back off, up to `lease_duration`.

    `is_leader` is what writers check before each write; `on_change(leading)` is called on every
    change. `start()` runs it as a task; `await stop()` ends it and releases the Lease (empty
    holder) so a successor takes over at its next attempt instead of after `lease_duration`.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_interval: float = 5.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        request_timeout: float | None = None,
        authz_grace: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        if not 0 < renew_interval < renew_deadline < lease_duration:
            raise ValueError("need 0 < renew_interval < renew_deadline < lease_duration")
        if not 0 < retry_period < renew_deadline:
            raise ValueError("need 0 < retry_period < renew_deadline")
        self._client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_interval = renew_interval
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.authz_grace = authz_grace
        self.request_timeout = (
            request_timeout if request_timeout is not None else min(renew_deadline / 2, 5.0)
        )
        """Per request: a renewal that hangs gives up in time for one more try before the deadline."""
        self._on_change = on_change
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._rand = rand
        self._backoff = Backoff(retry_period, lease_duration, rand=rand)
        self.stats = LeaderStats()
        self._leading = False
        self._renewed_at = -math.inf
        self._observed: LeaseRecord | None = None
        self._observed_at = -math.inf
        self._release_on_stop = True
        self._task: asyncio.Task[None] | None = None

    @property
    def _path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    @property
    def is_leader(self) -> bool:
        """True while this process holds the Lease and renewed it within `renew_deadline`."""
        return self._leading and self._clock() < self._renewed_at + self.renew_deadline

    @property
    def holder(self) -> str:
        """The holder identity last seen in the Lease ("" if none or not read yet)."""
        observed = self._observed
        return observed.holder if observed is not None else ""

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="leader-election")

    async def stop(self, *, release: bool = True) -> None:
        """Stop campaigning. With `release`, a leader empties the Lease's holder first; without it,
        the Lease simply stops being renewed (as when the process dies)."""
        self._release_on_stop = release
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ----------------------------------------------------------------- the loop

    async def run(self) -> None:
        try:
            while True:
                await self._sleep(await self._round())
        finally:
            await self._finish()

    async def _round(self) -> float:
        """One attempt to acquire or renew; returns the pause before the next."""
        started = self._clock()
        try:
            ok = await self._try_acquire_or_renew(started)
        except (KubeError, msgspec.DecodeError, msgspec.ValidationError) as e:
            self.stats.failures += 1
            log.warning(
                "leader election: %s lease %s/%s failed: %s",
                "renewing" if self._leading else "reading",
                self.namespace,
                self.name,
                describe(e),
            )
            if self._leading and self._clock() >= self._renewed_at + self.renew_deadline:
                self._step_down(f"not renewed for {self.renew_deadline:g}s")
            if self._leading or transient(
                e, answering_for=self._client.answering_for(), authz_grace=self.authz_grace
            ):
                return self._backoff.short(self.retry_period)
            return self._backoff.next()
        self._backoff.reset()
        if ok:
            self._renewed_at = started
            if self._leading:
                self.stats.renewed += 1
            else:
                self._leading = True
                self.stats.acquired += 1
                log.info(
                    "leader election: %s is now the leader (lease %s/%s)",
                    self.identity,
                    self.namespace,
                    self.name,
                )
                self._notify(True)
            return self.renew_interval
        if self._leading and self._clock() >= self._renewed_at + self.renew_deadline:
            self._step_down(f"not renewed for {self.renew_deadline:g}s")
        # client-go's JitterUntil(retryPeriod, 1.2): candidates do not poll in lockstep
        return self.retry_period * (1 + 0.2 * self._rand())

    def _step_down(self, why: str) -> None:
        self._leading = False
        self.stats.lost += 1
        log.warning(
            "leader election: %s is no longer the leader of lease %s/%s: %s",
            self.identity,
            self.namespace,
            self.name,
            why,
        )
        self._notify(False)

    async def _finish(self) -> None:
        leading, self._leading = self._leading, False
        if not leading:
            return
        if self._release_on_stop:
            try:
                await self._release()
                log.info("leader election: %s released lease %s/%s", self.identity, self.namespace, self.name)
            except (KubeError, msgspec.DecodeError, msgspec.ValidationError) as e:
                log.warning(
                    "leader election: releasing lease %s/%s failed: %s",
                    self.namespace,
                    self.name,
                    describe(e),
                )
        self._notify(False)

    def _notify(self, leading: bool) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(leading)
        except Exception:
            log.exception("leader election: on_change(%s) failed", leading)

    # ----------------------------------------------------------------- requests

    async def _get(self) -> tuple[LeaseRecord, str] | None:
        try:
            data = await self._client.request(
                "GET", f"{self._path}/{self.name}", time_limit=self.request_timeout
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return LeaseRecord.decode(data)

    async def _write(self, method: str, record: LeaseRecord, resource_version: str = "") -> bool:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": record.spec(),
        }
        path = self._path if method == "POST" else f"{self._path}/{self.name}"
        try:
            await self._client.request(
                method, path, body=msgspec.json.encode(body), time_limit=self.request_timeout
            )
        except ApiError as e:
            if e.status == 409:
                self.stats.conflicts += 1
                log.debug(
                    "leader election: lease %s/%s changed under us (409); re-reading",
                    self.namespace,
                    self.name,
                )
                return False
            raise
        self._observe(record)
        return True

    def _observe(self, record: LeaseRecord) -> None:
        if record != self._observed:
            self._observed = record
            self._observed_at = self._clock()

    async def _try_acquire_or_renew(self, now: float) -> bool:
        stamp = _micro_time(self._wall())
        duration = max(1, math.ceil(self.lease_duration))
        got = await self._get()
        if got is None:
            return await self._write("POST", LeaseRecord(self.identity, duration, stamp, stamp, 0))
        record, rv = got
        self._observe(record)
        if record.holder and record.holder != self.identity:
            if self._leading:
                self._step_down(f"the lease is held by {record.holder}")
            held_for = record.duration or duration
            if now < self._observed_at + held_for:
                return False
            log.info(
                "leader election: lease %s/%s of %s not renewed for %ss; taking over",
                self.namespace,
                self.name,
                record.holder,
                held_for,
            )
        if record.holder == self.identity:
            mine = dataclasses.replace(record, duration=duration, renew_time=stamp)
        else:
            mine = LeaseRecord(self.identity, duration, stamp, stamp, record.transitions + 1)
        return await self._write("PUT", mine, rv)

    async def _release(self) -> None:
        got = await self._get()
        if got is None or got[0].holder != self.identity:
            return
        record, rv = got
        stamp = _micro_time(self._wall())
        await self._write(
            "PUT",
            dataclasses.replace(record, holder="", duration=1, acquire_time=stamp, renew_time=stamp),
            rv,
        )
