"""Quoting input in messages without echoing all of it.

Pure. Error messages, log lines and `/status` quote what a user or a peer gave us (a
community, a header name, a path); that input has no size limit, so every message that quotes
it goes through `quote()` or `clip()`, which keep the start and say how long the rest was.
"""

from __future__ import annotations

QUOTED = 60
"""Characters of a quoted value kept in a message: enough to recognise it."""


def clip(text: str, limit: int = QUOTED) -> str:
    """`text` itself when short, else its first `limit` characters and its full length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def quote(value: object, limit: int = QUOTED) -> str:
    """`repr(value)` for a message, clipped like `clip()`. Never raises: an integer too long
    for `repr` (Python's digit limit) is described by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return f"an integer of {value.bit_length():,} bits"
    try:
        text = repr(value)
    except Exception as e:  # a hostile object's __repr__; values from YAML never get here
        text = f"<unprintable {type(value).__name__}: {type(e).__name__}>"
    return clip(text, limit)
