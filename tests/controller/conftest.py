"""Fixtures for the controller's tests: the fake Kubernetes API (misuse of it fails the test) and
bgpvip's client pointed at it, the same as the adapter tests use."""

from __future__ import annotations

from tests.adapters.conftest import api, kube

__all__ = ["api", "kube"]
