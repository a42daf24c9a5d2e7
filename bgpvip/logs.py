"""Logging to stderr only: stdout belongs to ExaBGP's API. One line per event, stable keys.

Lines look like `2026-11-21T23:59:01.123Z INFO event=announce vip=198.51.100.10 reason=healthy`
so they grep well and parse with any logfmt reader.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

_configured = False


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ms = int(record.msecs)
        base = f"{ts}.{ms:03d}Z {record.levelname} {record.getMessage()}"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def setup(level: str = "INFO") -> None:
    global _configured
    root = logging.getLogger("bgpvip")
    if not _configured:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter())
        root.addHandler(handler)
        root.propagate = False
        _configured = True
    root.setLevel(level)


def _fmt(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def kv(event: str, **fields: Any) -> str:
    """`event=NAME key=value ...` with values quoted when needed."""
    parts = [f"event={_fmt(event)}"]
    parts.extend(f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None)
    return " ".join(parts)


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"bgpvip.{name}")
