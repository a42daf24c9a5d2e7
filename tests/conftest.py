"""Options shared by the whole suite (pytest reads only the rootdir conftest at startup)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/adapters/golden/*.txt from the current output instead of comparing",
    )
