"""Settings for the core unit tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # When a Hypothesis property fails, its pytest plugin imports libcst to print a patch, and
    # libcst triggers this deprecation; under `filterwarnings = error` that turns the falsifying
    # example into an INTERNALERROR, hiding it. Belongs in pyproject.toml's filterwarnings.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    )
