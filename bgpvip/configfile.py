"""Read a config file from disk into a validated Config (I/O side of `core.config.load`).

Also checks the files the config points at (passwords, CA bundles), so `check-config`
catches a missing file before ExaBGP starts, with the path of the field that names it.

`load_file` raises ConfigError and nothing else, whatever the file holds: a running speaker
keeps its last good config on a ConfigError, while any other exception would crash it, and
ExaBGP gives up on a helper that crashes five times in about a minute.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode

from bgpvip.core.config import Config, ConfigError, HttpCheck, load
from bgpvip.core.text import clip, quote
from bgpvip.files import CONFIG_LIMIT, PASSWORD_LIMIT, PEM_LIMIT, FileProblem, check_file, read_bounded

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
                name = clip(name)
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


MAX_DEPTH = 64
"""Deepest nesting of lists and mappings accepted; bgpvip's own schema needs six levels.
Deeper documents (thousands of `[`) would exhaust Python's recursion limit."""
_MERGE = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where the safe loader is silent or crashes.

    - A key repeated in one mapping is an error (the safe loader keeps the last one, so a
      second `vips:` silently dropped the first list).
    - Merge keys (`<<`) mean what YAML's merge key type defines: the mapping's own keys win
      over merged ones, and an earlier merged mapping over a later one. Each merged mapping
      holds every key once, so merges of merges cannot grow exponentially.
    - Nesting deeper than MAX_DEPTH and recursive aliases are errors, not a RecursionError.
    - A scalar Python refuses (the date `2024-99-99`, an integer over Python's digit limit)
      is an error with its line, not a ValueError.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open_anchors: set[str] = set()

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._open_anchors:
            raise ComposerError(None, None, f"alias *{clip(str(event.anchor))} refers to itself", mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._depth -= 1
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        anchor = getattr(event, "anchor", None) if not isinstance(event, yaml.AliasEvent) else None
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node: MappingNode = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], Node] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == _MERGE:
                continue
            first = seen.get((key.tag, key.value))
            seen.setdefault((key.tag, key.value), key)
            if first is not None:
                raise ComposerError(
                    f"while reading the mapping that starts at line {node.start_mark.line + 1}",
                    None,
                    f"duplicate key {quote(key.value)} (first at line {first.start_mark.line + 1})",
                    key.start_mark,
                )
        return node

    def flatten_mapping(self, node: MappingNode) -> None:
        merged: list[tuple[Node, Node]] = []
        own: list[tuple[Node, Node]] = []
        for key, value in node.value:
            if key.tag != _MERGE:
                if key.tag == "tag:yaml.org,2002:value":
                    key.tag = "tag:yaml.org,2002:str"
                own.append((key, value))
                continue
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for source in sources:
                if not isinstance(source, MappingNode):
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"expected a mapping or a list of mappings to merge, but found {source.id}",
                        source.start_mark,
                    )
                self.flatten_mapping(source)
                merged.extend(source.value)
        taken = {_key_id(k) for k, _ in own}
        kept = []
        for key, value in merged:
            if (ident := _key_id(key)) not in taken:
                taken.add(ident)
                kept.append((key, value))
        node.value = kept + own

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            what = f" {quote(node.value)}" if isinstance(node, ScalarNode) else ""
            raise ConstructorError(
                None, None, f"cannot read{what}: {clip(str(e), 120)}", node.start_mark
            ) from None


def _key_id(key: Node) -> tuple[str, Any]:
    return (key.tag, key.value) if isinstance(key, ScalarNode) else ("", id(key))


def parse_yaml(text: str, source: str = "<config>") -> Any:
    loader: StrictLoader | None = None
    try:
        loader = StrictLoader(text)  # the reader refuses control characters right here
        return loader.get_single_data()
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        char = e.character if isinstance(e.character, int) else ord(e.character[:1] or "\0")
        raise ConfigError(
            [
                (
                    "",
                    f"{source}: not valid YAML at line {line}, column {column}: character #x{char:04x} ({e.reason})",
                )
            ]
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([("", f"{source}: not valid YAML{where}: {problem}")]) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_file(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Read, expand, parse and validate a config file. Raises ConfigError and nothing else."""
    p = Path(path)
    try:
        return _load_file(p, check_files=check_files)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError([("", f"{p}: nested too deeply to read")]) from None
    except Exception as e:
        # Whatever a library raises on input nobody foresaw: a rejected config, never a crash.
        raise ConfigError([("", f"{p}: cannot be loaded: {type(e).__name__}: {clip(str(e), 200)}")]) from None


def _load_file(p: Path, *, check_files: bool) -> Config:
    try:
        raw = read_bounded(p, CONFIG_LIMIT)
    except FileProblem as e:
        raise ConfigError([("", f"config file {e}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError([("", f"{p} line {line}: not UTF-8 text ({e.reason})")]) from None
    data = parse_yaml(expand_env(text, source=str(p)), str(p))
    if data is None:
        raise ConfigError([("", f"{p} is empty")])
    config = load(data)
    if check_files:
        check_referenced_files(config)
    return config


def check_referenced_files(config: Config) -> None:
    """The files the config names exist and are usable, checked without blocking on a FIFO or
    reading a huge file (each has a size limit). Raises ConfigError."""
    if problems := referenced_file_problems(config):
        raise ConfigError(problems)


def referenced_file_problems(config: Config) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for i, peer in enumerate(config.bgp.peers):
        if peer.password_file is not None:
            try:
                read_password(peer.password_file)
            except ValueError as e:
                problems.append((f"bgp.peers[{i}].password_file", str(e)))
    for i, vip in enumerate(config.vips):
        for j, check in enumerate(vip.checks):
            # A kube-apiserver check's CA appears only when `kubeadm init` writes it, possibly
            # after bgpvip starts: the probe reports it missing, the config stays valid.
            if not isinstance(check, HttpCheck):
                continue
            for field in ("ca_file", "client_cert", "client_key"):
                value = getattr(check, field)
                if value is not None and (err := check_file(value, PEM_LIMIT)):
                    problems.append((f"vips[{i}].checks[{j}].{field}", err))
    return problems


def read_password(path: Path) -> str:
    """First line of a password file, stripped. Refuses what ExaBGP's config could not quote.
    Raises ValueError (FileProblem for a missing, unreadable, special or huge file)."""
    try:
        text = read_bounded(path, PASSWORD_LIMIT).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
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
