"""The Kubernetes adapter: asyncio list/watch, Events and Leases over the API's HTTP, decoded by
msgspec into bgpvip's views at the boundary.

I/O side. By concern:
- `connection`: where the API is and how to authenticate (resolved by the official client's
  loaders in a short-lived child process, `resolve`), with token re-reading and refresh;
- `http`: the HTTP/1.1 client (h11 on asyncio streams) and its errors;
- `decode`: API JSON → `bgpvip.core` views;
- `watch`: list, then watch, with 410 and outage handling (`KubeWatcher`, `AllocationWatcher`);
- `events`: core/v1 Events (`EventRecorder`);
- `leases`: leader election (`LeaderElector`) and the controller's status writes;
- `backoff`: the one backoff, and which failures are transient.
"""

from bgpvip.adapters.kube.connection import Connection, Credentials, resolve_in_child
from bgpvip.adapters.kube.decode import (
    MalformedObject,
    alloc_service_view,
    endpoint_slice_view,
    node_view,
    service_view,
)
from bgpvip.adapters.kube.events import EventRecorder, ObjectRef
from bgpvip.adapters.kube.http import ApiError, CredentialsError, KubeClient, KubeError, Unreachable, describe
from bgpvip.adapters.kube.leases import LeaderElector, LeaseRecord, patch_service_status
from bgpvip.adapters.kube.watch import AllocationWatcher, KubeWatcher, WatchStats

__all__ = [
    "AllocationWatcher",
    "ApiError",
    "Connection",
    "Credentials",
    "CredentialsError",
    "EventRecorder",
    "KubeClient",
    "KubeError",
    "KubeWatcher",
    "LeaderElector",
    "LeaseRecord",
    "MalformedObject",
    "ObjectRef",
    "Unreachable",
    "WatchStats",
    "alloc_service_view",
    "describe",
    "endpoint_slice_view",
    "node_view",
    "patch_service_status",
    "resolve_in_child",
    "service_view",
]
