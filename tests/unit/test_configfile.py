"""Reading the config file: YAML errors with a line number, ${VAR} expansion, referenced files."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgpvip.configfile import expand_env, load_file
from bgpvip.core.config import ConfigError

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
    with pytest.raises(ConfigError, match="cannot read"):
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
