"""Fixtures for the adapter tests: golden files (`--update-golden` rewrites them) and the fake
Kubernetes API with a client pointed at it (misuse of the API fails the test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from bgpvip.adapters.kube import Credentials, KubeClient
from tests.kubeapi import FakeKubeAPI

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """`golden(name, text)`: compare `text` with golden/<name>, or rewrite it with --update-golden."""
    update = bool(request.config.getoption("--update-golden"))

    def check(name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"golden file {path} is missing; run pytest with --update-golden to create it")
        assert text == path.read_text(), (
            f"output differs from {path}; if intended, rerun with --update-golden"
        )

    return check


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    server = FakeKubeAPI().start()
    try:
        yield server
    finally:
        server.stop()
    assert server.misuse == [], "the client used the API in a way no apiserver serves"


@pytest.fixture
def api_client(api: FakeKubeAPI) -> Iterator[client.ApiClient]:
    """The official client, for tests of the fake itself."""
    c = client.ApiClient(api.configuration())
    yield c
    c.close()


@pytest.fixture
async def kube(api: FakeKubeAPI) -> AsyncIterator[KubeClient]:
    """bgpvip's own client, pointed at the fake."""
    c = KubeClient(Credentials.static(api.connection()))
    yield c
    await c.aclose()
