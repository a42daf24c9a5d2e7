"""Reading the files a configuration names, without hanging and without exhausting memory.

I/O side. The config file, password files, CA bundles, client certificates and kubeconfigs
are all read through `read_bounded()`: only regular files, at most a given size, opened so
that a FIFO put in a file's place cannot block the reader (a FIFO's open() waits for a writer,
and `/dev/zero` never ends). Limits are generous for what each file really holds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

CONFIG_LIMIT = 1 * MiB
"""bgpvip's config file: a large one with many pools and VIPs is tens of KiB."""
PASSWORD_LIMIT = 4 * KiB
"""A TCP MD5 password file (the password is at most 80 characters)."""
PEM_LIMIT = 1 * MiB
"""A CA bundle, client certificate or key: the system's whole bundle is a few hundred KiB."""
KUBECONFIG_LIMIT = 4 * MiB
"""A kubeconfig: many contexts with embedded certificates stay well under this."""


class FileProblem(ValueError):
    """A file that cannot be used. The message starts with the file's path and says what is
    wrong with it, so that a prefix can name its role: "CA file /etc/ca.crt does not exist"."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _size(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= KiB:
        return f"{n / KiB:.1f} KiB"
    return f"{n} bytes"


def regular_file_problem(st: os.stat_result, path: Path, limit: int | None) -> str | None:
    """Why a file with this stat cannot be read as a regular file of at most `limit` bytes
    (any size when None), or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is {_kind(st.st_mode)}, not a regular file"
    if limit is not None and st.st_size > limit:
        return f"{path} is {_size(st.st_size)}, more than the {_size(limit)} allowed"
    return None


def check_file(path: Path, limit: int) -> str | None:
    """Why `path` cannot be read by `read_bounded(path, limit)` (without reading it), or None."""
    try:
        fd = _open(path)
    except FileProblem as e:
        return str(e)
    try:
        return regular_file_problem(os.fstat(fd), path, limit)
    finally:
        os.close(fd)


def _os_problem(path: Path, e: OSError) -> FileProblem:
    if isinstance(e, FileNotFoundError):
        return FileProblem(f"{path} does not exist")
    return FileProblem(f"{path} cannot be read: {e.strerror or e}")


def _open(path: Path) -> int:
    try:
        st = os.stat(path)
    except OSError as e:
        raise _os_problem(path, e) from None
    if (problem := regular_file_problem(st, path, None)) is not None:
        raise FileProblem(problem)
    try:
        # O_NONBLOCK: the file may have been swapped for a FIFO since the stat
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise _os_problem(path, e) from None


def read_bounded(path: Path, limit: int) -> bytes:
    """The contents of the regular file `path`, at most `limit` bytes; FileProblem otherwise."""
    fd = _open(path)
    try:
        if (problem := regular_file_problem(os.fstat(fd), path, limit)) is not None:
            raise FileProblem(problem)
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            try:
                chunk = os.read(fd, min(limit + 1 - total, 256 * KiB))
            except OSError as e:
                raise _os_problem(path, e) from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise FileProblem(f"{path} grew past the {_size(limit)} allowed while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)
