"""The LoadBalancer IP allocation controller (`bgpvip controller`), a program of its own.

By concern:
- `options`: its settings (`ControllerOptions`), one per command-line flag;
- `loop`: the one loop (`AllocationLoop`): leadership terms, the Service watch, allocation by
  the core, status writes, Events;
- `metrics`: what /metrics serves;
- `daemon`: the composition root (`Controller`: the loop, the leader elector, the Event
  recorder and the HTTP endpoint, started and stopped together) and the process entry point.

It uses the core, the Kubernetes adapter, the config file reader and `bgpvip.status`'s small
read-only HTTP server (`HttpServer`, `json_body`, `metrics_body`, `text`); nothing of the
speaker's.
"""

from bgpvip.controller.daemon import Controller, controller_main, default_identity, default_namespace
from bgpvip.controller.options import ControllerOptions

__all__ = ["Controller", "ControllerOptions", "controller_main", "default_identity", "default_namespace"]
