"""TLS material of an HTTPS check: a client SSLContext built from its files, and rebuilt when
they change.

I/O side. `kubeadm reset` followed by a new `kubeadm init`, or a CA rotation, replaces the
cluster CA under a running bgpvip; a probe that kept the first CA would fail certificate
verification until a restart. `TlsMaterial.context()` compares the files' stat stamps (cheap:
one stat per file) on every call and rebuilds the context when one changed. A file that does
not exist yet (the CA before `kubeadm init`) is a clear error that ends by itself once the file
appears. `bgpvip check-config` builds the same context, so it reports the same problems.
"""

from __future__ import annotations

import errno
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bgpvip.files import PEM_LIMIT, FileProblem, read_bounded

FIELD_NAMES = {"ca_file": "CA file", "client_cert": "client certificate", "client_key": "client key"}
"""How each file is named in messages (the config field is given alongside in check-config)."""


class TlsSetupError(Exception):
    """The TLS material cannot be loaded. `field` is the config field of the file at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What a check's TLS context is made of."""

    ca_file: Path | None = None
    """None: the system trust store."""
    client_cert: Path | None = None
    client_key: Path | None = None
    insecure: bool = False

    def paths(self) -> tuple[tuple[str, Path], ...]:
        named = (
            ("ca_file", self.ca_file),
            ("client_cert", self.client_cert),
            ("client_key", self.client_key),
        )
        return tuple((field, path) for field, path in named if path is not None)


Stamp = tuple[int, ...] | None


def stamp(path: Path, stat: Callable[[Path], os.stat_result] = os.stat) -> Stamp:
    """What tells a changed file apart: device, inode, size, modification and change times
    (a rename, a rewrite or a chmod); an error number when it cannot be looked at."""
    try:
        st = stat(path)
    except OSError as e:
        return (-(e.errno or errno.EIO),)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    raise ValueError("the key is encrypted; bgpvip reads unencrypted keys only")


def _read(field: str, path: Path) -> bytes:
    try:
        data = read_bounded(path, PEM_LIMIT)
    except FileProblem as e:
        raise TlsSetupError(field, f"{FIELD_NAMES[field]} {e}") from None
    if not data.strip():
        raise TlsSetupError(field, f"{FIELD_NAMES[field]} {path} is empty")
    return data


def build_context(files: TlsFiles) -> ssl.SSLContext:
    """A client context as the probe uses it; TlsSetupError names the file at fault."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the name
    if files.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif files.ca_file is not None:
        data = _read("ca_file", files.ca_file)
        try:
            ctx.load_verify_locations(cadata=data.decode("latin-1"))
        except (ssl.SSLError, ValueError) as e:
            raise TlsSetupError("ca_file", f"CA file {files.ca_file}: {_reason(e)}") from None
    else:
        ctx.load_default_certs()
    if files.client_cert is not None and files.client_key is not None:
        # read first: refuses FIFOs and huge files before OpenSSL opens them by name
        _read("client_cert", files.client_cert)
        _read("client_key", files.client_key)
        try:
            ctx.load_cert_chain(str(files.client_cert), str(files.client_key), password=_no_passphrase)
        except (ssl.SSLError, ValueError, OSError) as e:
            raise TlsSetupError(
                "client_cert",
                f"client certificate {files.client_cert} with key {files.client_key}: {_reason(e)}",
            ) from None
    return ctx


def _reason(e: Exception) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason).lower().replace("_", " ")
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return text.split(" (_ssl.c")[0]


class TlsMaterial:
    """A check's SSLContext, rebuilt when one of its files changes (checked on every call)."""

    def __init__(self, files: TlsFiles, *, stat: Callable[[Path], os.stat_result] = os.stat) -> None:
        self.files = files
        self._stat = stat
        self._stamps: tuple[Stamp, ...] | None = None
        self._context: ssl.SSLContext | None = None
        self._error: TlsSetupError | None = None
        self.generation = 0
        """Goes up each time the material is loaded again: connections made before are stale."""

    def context(self) -> ssl.SSLContext:
        """The current context; raises TlsSetupError while the files cannot be loaded."""
        stamps = tuple(stamp(p, self._stat) for _, p in self.files.paths())
        if stamps != self._stamps:
            # Stamped before reading: a file written meanwhile gets a new stamp, so it is read
            # again on the next call rather than kept half-written.
            self._stamps = stamps
            self.generation += 1
            try:
                self._context, self._error = build_context(self.files), None
            except TlsSetupError as e:
                self._context, self._error = None, e
        if self._error is not None:
            raise self._error
        assert self._context is not None
        return self._context
