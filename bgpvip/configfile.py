"""Read a config file from disk into a validated Config (I/O side of `core.config.load`).

Also checks the files the config points at (passwords, CA bundles), so `check-config`
catches a missing file before ExaBGP starts, with the path of the field that names it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bgpvip.core.config import Config, ConfigError, HttpCheck, load

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, environ: Mapping[str, str] | None = None, source: str = "<config>") -> str:
    """Replace `${NAME}` and `${NAME:-default}` with environment variables, so one ConfigMap can
    carry per-node values (the DaemonSet passes the node name and host IP from the downward
    API). `$$` stands for a literal `$`. An unset variable without a default is an error."""
    env = os.environ if environ is None else environ
    problems: list[tuple[str, str]] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                line = text.count("\n", 0, m.start()) + 1
                problems.append(
                    (
                        "",
                        f"{source} line {line}: environment variable {name} is not set (use ${{{name}:-default}})",
                    )
                )
                return m.group(0)
            return default
        return value

    out = "$".join(_ENV_RE.sub(sub, part) for part in text.split("$$"))
    if problems:
        raise ConfigError(problems)
    return out


def file_stamp(path: Path | None) -> tuple[int, int, int] | None:
    """What tells a changed config file apart: inode, mtime, size. Follows symlinks, so a
    ConfigMap update (which swaps `..data` underneath) counts as a change."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def parse_yaml(text: str, source: str = "<config>") -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([("", f"{source}: not valid YAML{where}: {problem}")]) from None


def load_file(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([("", f"cannot read {p}: {e}")]) from None
    data = parse_yaml(expand_env(text, source=str(p)), str(p))
    if data is None:
        raise ConfigError([("", f"{p} is empty")])
    config = load(data)
    if check_files:
        check_referenced_files(config)
    return config


def _readable(path: Path) -> str | None:
    try:
        with path.open("rb"):
            return None
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"


def check_referenced_files(config: Config) -> None:
    problems: list[tuple[str, str]] = []
    for i, peer in enumerate(config.bgp.peers):
        if peer.password_file is not None:
            err = _readable(peer.password_file)
            if err is None:
                try:
                    read_password(peer.password_file)
                except ValueError as e:
                    err = str(e)
            if err:
                problems.append((f"bgp.peers[{i}].password_file", err))
    for i, vip in enumerate(config.vips):
        for j, check in enumerate(vip.checks):
            # A kube-apiserver check's CA appears only when `kubeadm init` writes it, possibly
            # after bgpvip starts: the probe reports it missing, the config stays valid.
            if not isinstance(check, HttpCheck):
                continue
            for field in ("ca_file", "client_cert", "client_key"):
                value = getattr(check, field)
                if value is not None and (err := _readable(value)):
                    problems.append((f"vips[{i}].checks[{j}].{field}", err))
    if problems:
        raise ConfigError(problems)


def read_password(path: Path) -> str:
    """First line of a password file, stripped. Refuses what ExaBGP's config could not quote."""
    text = path.read_text(encoding="utf-8").splitlines()
    password = text[0].strip() if text else ""
    if not password:
        raise ValueError(f"{path} is empty")
    if len(password) > 80:
        raise ValueError(f"{path}: TCP MD5 passwords are at most 80 characters")
    if any(ord(c) < 32 or ord(c) == 127 or c in "\"'\\;{}" for c in password):
        raise ValueError(
            f"{path}: password may not contain quotes, backslashes, ';', braces or control characters"
        )
    return password
