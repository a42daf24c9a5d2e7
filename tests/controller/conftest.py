"""Fixtures for the controller's tests: the fake Kubernetes API (misuse of it fails the test),
bgpvip's client pointed at it, counting its requests in flight, fake time that moves on only
when the controller has none (tests/controller/faketime.py), and controllers on that time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bgpvip.adapters.kube import Credentials
from bgpvip.controller import Controller, ControllerOptions
from bgpvip.core.config import Config
from tests.adapters.conftest import api
from tests.controller.faketime import CountingClient, FakeTime
from tests.controller.helpers import CONFIG, NS, Running
from tests.kubeapi import FakeKubeAPI

__all__ = ["api", "ft", "kube", "start"]


@pytest.fixture
async def kube(api: FakeKubeAPI) -> AsyncIterator[CountingClient]:
    c = CountingClient(Credentials.static(api.connection()))
    yield c
    await c.aclose()


@pytest.fixture
def ft(kube: CountingClient) -> FakeTime:
    return FakeTime(busy=lambda: kube.in_flight > 0)


@pytest.fixture
async def start(kube: CountingClient, ft: FakeTime) -> AsyncIterator[Callable[..., Running]]:
    """`start(identity, config=, path=, **options)`: a controller on the fake clock, stopped (and
    checked not to have died) at the end of the test."""
    running: list[Running] = []

    def start_(
        identity: str = "ctl-a", config: Config = CONFIG, path: Path | None = None, **kw: Any
    ) -> Running:
        options = ControllerOptions(identity=identity, namespace=NS, port=0, **kw)
        r = Running(Controller(config, kube, options, config_path=path, clock=ft.clock))
        running.append(r)
        return r

    yield start_
    for r in running:
        await r.stop()
        r.task.result()  # a controller that died with an exception fails the test
