"""Reading the config file: YAML errors with a line number, ${VAR} expansion, referenced files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpvip import configfile, files
from bgpvip.configfile import expand_env, load_file, parse_yaml
from bgpvip.core.config import ConfigError, load
from tests.unit.test_config import FULL as FULL_DOC

MINIMAL = "bgp: {local_as: 65100, peers: [{address: 10.0.1.1, peer_as: 65000}]}\n"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("node_name: ${NODE}", {"NODE": "n1"}, "node_name: n1"),
        ("x: ${MISSING:-fallback}", {}, "x: fallback"),
        ("x: ${EMPTY:-fallback}", {"EMPTY": ""}, "x: fallback"),
        ("x: ${EMPTY}", {"EMPTY": ""}, "x: "),
        ("price: $$5 ${A}", {"A": "a"}, "price: $5 a"),
        ("literal: $${A}", {"A": "a"}, "literal: ${A}"),
        ("no vars: $HOME", {}, "no vars: $HOME"),
    ],
    ids=[
        "plain",
        "default",
        "empty-takes-default",
        "empty-kept-without-default",
        "dollar-dollar",
        "escaped",
        "bare-dollar",
    ],
)
def test_expand_env(text: str, env: dict[str, str], expected: str) -> None:
    assert expand_env(text, env) == expected


def test_unset_variable_without_default_names_it_and_the_line() -> None:
    with pytest.raises(ConfigError) as e:
        expand_env("a: 1\nnode_name: ${NODE_NAME}\n", {}, source="cfg.yaml")
    assert "cfg.yaml line 2: environment variable NODE_NAME is not set" in str(e.value)


def test_load_file_expands_before_validating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BV_TEST_NODE", "worker-3")
    f = tmp_path / "c.yaml"
    f.write_text(MINIMAL + "node_name: ${BV_TEST_NODE}\n")
    assert load_file(f).node_name == "worker-3"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bgp: [unclosed\n", "not valid YAML at line"),
        ("", "is empty"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
    ids=["yaml-syntax", "empty", "not-a-mapping"],
)
def test_bad_files(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_file(f)
    assert words in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml does not exist"):
        load_file(tmp_path / "nope.yaml")


def test_referenced_files_are_checked_with_their_field(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "bgp: {local_as: 65100, peers: [{address: 10.0.1.1, peer_as: 65000, password_file: /nonexistent/pw}]}\n"
        "vips: [{address: 198.51.100.1, checks: [{type: http, url: 'https://127.0.0.1/', ca_file: /nonexistent/ca}]}]\n"
    )
    with pytest.raises(ConfigError) as e:
        load_file(f)
    paths = [p for p, _ in e.value.problems]
    assert paths == ["bgp.peers[0].password_file", "vips[0].checks[0].ca_file"]
    assert load_file(f, check_files=False).bgp.peers[0].password_file == Path("/nonexistent/pw")


@pytest.mark.parametrize(
    ("password", "ok"),
    [("s3cret", True), ("", False), ('with"quote', False), ("x" * 81, False)],
    ids=["fine", "empty", "quote", "too-long"],
)
def test_password_files(tmp_path: Path, password: str, ok: bool) -> None:
    pw = tmp_path / "pw"
    pw.write_text(password + "\n")
    f = tmp_path / "c.yaml"
    f.write_text(
        f"bgp: {{local_as: 65100, peers: [{{address: 10.0.1.1, peer_as: 65000, password_file: {pw}}}]}}\n"
    )
    if ok:
        load_file(f)
    else:
        with pytest.raises(ConfigError, match="password_file"):
            load_file(f)


# --------------------------------------------------------------------------- hostile files

GOOD = MINIMAL + "vips: [{address: 198.51.100.1, interface: null}]\n"

# Files PyYAML or pydantic turned into exceptions other than ConfigError (a traceback in
# check-config, a crashed speaker on reload), or silently misread (duplicate keys).
HOSTILE: list[tuple[str, str, str]] = [
    # (id, file text, substring of the error)
    ("impossible-date", MINIMAL + "node_name: 2024-99-99\n", "line 2, column 12: cannot read '2024-99-99'"),
    ("huge-integer", MINIMAL + "priority: " + "1" * 5000 + "\n", "line 2, column 11: cannot read '1111"),
    ("deep-list", "x: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
    ("deep-mapping", "x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested more than 64 levels deep"),
    ("deep-block", "".join("  " * i + f"k{i}:\n" for i in range(200)), "nested more than 64 levels deep"),
    ("recursive-alias", MINIMAL + "vips: &v [*v]\n", "alias *v refers to itself"),
    (
        "duplicate-top-key",
        MINIMAL + "vips: []\nvips: [{address: 198.51.100.1}]\n",
        "line 3, column 1: duplicate key 'vips' (first at line 2)",
    ),
    (
        "duplicate-nested-key",
        "bgp: {local_as: 65100, local_as: 65101, peers: []}\n",
        "duplicate key 'local_as' (first at line 1)",
    ),
    ("duplicate-quoted-key", MINIMAL + "'priority': 1\npriority: 2\n", "duplicate key 'priority'"),
    (
        "merge-bomb",
        "a: &a {"
        + ", ".join(f"k{i}: {i}" for i in range(10))
        + "}\n"
        + "".join(
            f"{c}: &{c} {{<<: [{', '.join(['*' + p] * 10)}]}}\n"
            for p, c in zip("abcdef", "bcdefg", strict=True)
        ),
        "g: unknown field",
    ),
    ("not-utf8", MINIMAL + "node_name: caf\udce9\n", "line 2: not UTF-8 text"),
    (
        "nul-byte",
        MINIMAL + "node_name: a\x00b\n",
        "not valid YAML at line 2, column 13: character #x0000 (special characters are not allowed)",
    ),
    ("python-tag", MINIMAL + "x: !!python/object/apply:os.system [true]\n", "not valid YAML"),
    ("tab-indent", "bgp:\n\tlocal_as: 1\n", "not valid YAML"),
    ("binary-garbage", "bgp: !!binary 'not base64!'\n", "not valid YAML"),
]


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize(("text", "words"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_files_are_config_errors(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "c.yaml"
    _write(f, text)
    with pytest.raises(ConfigError) as e:
        load_file(f)
    assert words in str(e.value)
    assert len(str(e.value)) < 600


def test_merge_keys_still_work_and_may_be_overridden(tmp_path: Path) -> None:
    """Duplicate keys are refused, but `<<` merges keep YAML's meaning: explicit keys win."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "x-check: &check {type: tcp, port: 80, rise: 2}\n"
        "x-peer: &peer {peer_as: 65000, hold_time: 30}\n"
        "bgp:\n"
        "  local_as: 65100\n"
        "  peers:\n"
        "    - {<<: *peer, address: 10.0.1.1}\n"
        "    - {<<: *peer, address: 10.0.2.1, hold_time: 9}\n"
        "vips:\n"
        "  - address: 198.51.100.1\n"
        "    checks: [{<<: *check, port: 443}, *check]\n"
    )
    # x-... keys are unknown fields: the anchors are for the merges, so drop them after parsing
    data = parse_yaml(f.read_text())
    del data["x-check"], data["x-peer"]
    config = load(data)
    assert [p.hold_time for p in config.bgp.peers] == [30, 9]
    assert [(c.port, c.rise) for c in config.vips[0].checks] == [(443, 2), (80, 2)]


def test_merges_of_merges_are_not_duplicates() -> None:
    """The safe loader flattens a merged mapping in place; that must not read as repeated keys."""
    text = "a: &a {x: 1, y: 2}\nb: &b {<<: *a, x: 3}\nc: {<<: *b, y: 4}\nd: {<<: [*b, *a], z: 5}\n"
    assert parse_yaml(text) == {
        "a": {"x": 1, "y": 2},
        "b": {"x": 3, "y": 2},
        "c": {"x": 3, "y": 4},
        "d": {"x": 3, "y": 2, "z": 5},
    }


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "huge", "socket"])
def test_special_and_huge_config_files_are_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    """A FIFO's open() waits for a writer and /dev/zero never ends: stat first, O_NONBLOCK."""
    f = tmp_path / "c.yaml"
    if kind == "fifo":
        os.mkfifo(f)
        words = "is a FIFO, not a regular file"
    elif kind == "dev-zero":
        f = Path("/dev/zero")
        words = "is a character device, not a regular file"
    elif kind == "directory":
        f.mkdir()
        words = "is a directory, not a regular file"
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(f))
        sock.close()
        words = "is a socket, not a regular file"
    else:
        f.write_text(GOOD + "#" * files.CONFIG_LIMIT)
        words = "more than the 1.0 MiB allowed"
    with pytest.raises(ConfigError) as e:
        load_file(f)
    assert words in str(e.value)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["fifo", "huge", "dev-zero"])
def test_special_referenced_files_are_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        target = tmp_path / "fifo"
        os.mkfifo(target)
    elif kind == "huge":
        target = tmp_path / "huge"
        target.write_bytes(b"x" * (files.PEM_LIMIT + 1))
    else:
        target = Path("/dev/zero")
    f = tmp_path / "c.yaml"
    f.write_text(
        f"bgp: {{local_as: 65100, peers: [{{address: 10.0.1.1, peer_as: 65000, password_file: {target}}}]}}\n"
        f"vips: [{{address: 198.51.100.1, checks: [{{type: http, url: 'https://127.0.0.1/', ca_file: {target}}}]}}]\n"
    )
    with pytest.raises(ConfigError) as e:
        load_file(f)
    assert [p for p, _ in e.value.problems] == ["bgp.peers[0].password_file", "vips[0].checks[0].ca_file"]
    assert all(str(target) in m for _, m in e.value.problems)


def test_read_bounded_reads_what_fits(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert files.read_bounded(f, 3) == b"abc"
    with pytest.raises(files.FileProblem, match="more than the 2 bytes allowed"):
        files.read_bounded(f, 2)
    assert files.check_file(f, 3) is None
    assert files.check_file(tmp_path / "nope", 3) == f"{tmp_path / 'nope'} does not exist"


def test_unreadable_file_says_why(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    f = tmp_path / "c.yaml"
    f.write_text(GOOD)
    f.chmod(0)
    with pytest.raises(ConfigError, match="cannot be read: Permission denied"):
        load_file(f)


def test_a_library_error_nobody_foresaw_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence: whatever escapes the parsers is a rejected config."""
    f = tmp_path / "c.yaml"
    f.write_text(GOOD)

    def boom(data: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(configfile, "load", boom)
    with pytest.raises(ConfigError, match="cannot be loaded: KeyError: 'surprise'"):
        load_file(f)

    def deep(data: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(configfile, "load", deep)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_file(f)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400) | st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_property_any_bytes_load_or_raise_config_error(tmp_path: Path, data: bytes) -> None:
    f = tmp_path / "fuzz.yaml"
    f.write_bytes(data)
    try:
        load_file(f, check_files=False)
    except ConfigError as e:
        assert e.problems
        assert all(len(p) + len(m) < 700 for p, m in e.problems)


YAML_NOISE = [*"[]{}:,-?&*!|>'\"%@`#\n\t ", "<<: ", "*a", "&a ", "!!int ", "2024-99-99", "9" * 5000, "yes"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, 10_000), st.integers(0, 8), st.sampled_from(YAML_NOISE) | st.text(max_size=4)
        ),
        min_size=1,
        max_size=6,
    )
)
def test_property_mutated_config_loads_or_raises_config_error(
    tmp_path: Path, edits: list[tuple[int, int, str]]
) -> None:
    """A real config with a few characters cut and noise spliced in, as an editor slip would."""
    text = FULL_TEXT
    for at, cut, noise in edits:
        at %= len(text) + 1
        text = text[:at] + noise + text[at + cut :]
    f = tmp_path / "fuzz.yaml"
    _write(f, text)
    try:
        load_file(f, check_files=False)
    except ConfigError as e:
        assert e.problems


FULL_TEXT = yaml.safe_dump(FULL_DOC, sort_keys=False) + "x: &a {k: 1}\n"
