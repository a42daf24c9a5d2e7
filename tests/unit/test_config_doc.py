"""docs/configuration.md is generated from the config models and must not drift from them."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from bgpvip.core import config as cfg

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen-config-doc"
DOC = ROOT / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gen_config_doc", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gen_config_doc", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def test_doc_is_up_to_date(gen: ModuleType, doc: str) -> None:
    assert doc == gen.render(), "docs/configuration.md is stale: run scripts/gen-config-doc"


@pytest.mark.parametrize("which", ["committed", "generated"])
def test_example_yaml_in_the_doc_loads(gen: ModuleType, doc: str, which: str) -> None:
    text = doc if which == "committed" else gen.render()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    example = cfg.load(yaml.safe_load(blocks[0]))
    (vip,) = example.vips
    (check,) = vip.checks
    assert isinstance(check, cfg.KubeApiserverCheck)
    assert check.as_http().url == "https://127.0.0.1:6443/readyz"
    assert len(example.bgp.peers) == 2
    assert example.priority is not None


def test_error_example_in_the_doc_is_what_load_reports(doc: str) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.DOTALL)
    shown = re.search(r"```text\n(.*?)\n```", doc, flags=re.DOTALL)
    assert shown is not None
    with pytest.raises(cfg.ConfigError) as exc:
        cfg.load(yaml.safe_load(blocks[1]))
    assert str(exc.value) == shown.group(1)
    assert "bgpvip check-config FILE" in doc


def _reachable(model: type[BaseModel]) -> set[type[BaseModel]]:
    """Every model nested anywhere under `model`, through tuples, unions and Annotated."""
    seen: set[type[BaseModel]] = set()

    def walk(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp not in seen:
                seen.add(tp)
                for info in tp.model_fields.values():
                    walk(info.annotation)
            return
        for arg in typing.get_args(tp):
            walk(arg)

    walk(model)
    return seen


def test_every_setting_of_every_model_is_documented(gen: ModuleType, doc: str) -> None:
    documented = {model for _, _, model, _ in gen.sections()}
    for model in _reachable(cfg.Config):
        assert model in documented or model in gen.check_types(), f"{model.__name__} has no section"
        names = [n for _, _, m, ns in gen.sections() if m is model for n in ns]
        inherited = [n for _, _, m, ns in gen.sections() if issubclass(model, m) for n in ns]
        for name in model.model_fields:
            assert name in names or name in inherited, f"{model.__name__}.{name} is missing"
            assert f"| `{name}` |" in doc


def test_defaults_and_descriptions_come_from_the_models(doc: str) -> None:
    row = next(line for line in doc.splitlines() if line.startswith("| `hold_time` |"))
    info = cfg.PeerConfig.model_fields["hold_time"]
    assert "| `9` |" in row
    assert info.description is not None
    assert " ".join(info.description.split()) in row


def test_doc_states_the_file_limits_the_code_applies(doc: str) -> None:
    from bgpvip import files

    text = " ".join(doc.split())
    assert f"at most {files.CONFIG_LIMIT // files.MiB} MiB of UTF-8 YAML" in text
    assert (
        f"{files.PASSWORD_LIMIT // files.KiB} KiB for a password, {files.PEM_LIMIT // files.MiB} MiB for the others"
        in text
    )
    assert f"`kubeconfig` (at most {files.KUBECONFIG_LIMIT // files.MiB} MiB)" in text
