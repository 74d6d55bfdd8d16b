"""Config: YAML mirrors the dataclasses, overrides apply, bad input fails at start-up by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from affinage.config import SFTConfig, config_class_for, config_keys, dump_yaml, load_config, parse_override
from affinage.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE = ["data.train=[train.jsonl]"]


def test_overrides_set_nested_fields_with_types():
    cfg = load_config(SFTConfig, None, [*BASE, "train.lr=3e-4", "train.batch_size=8", "adapter.method=dora",
                                        "run.report_to=[tensorboard]", "train.max_steps=null"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.batch_size == 8
    assert cfg.adapter.method == "dora"
    assert cfg.run.report_to == ["tensorboard"]
    assert cfg.train.max_steps is None


def test_yaml_file_then_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: my-model\ntrain:\n  lr: 1.0e-3\ndata:\n  train: a.jsonl\n")
    cfg = load_config(SFTConfig, path, ["train.lr=5e-5"])
    assert cfg.model.name == "my-model"
    assert cfg.train.lr == pytest.approx(5e-5)  # the override wins over the file
    assert cfg.data.train == ["a.jsonl"]  # a single value becomes a list of one


def test_dumped_config_loads_back_identically(tmp_path):
    cfg = load_config(SFTConfig, None, [*BASE, "train.lr=1e-5", "data.packing=off"])
    path = tmp_path / "saved.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(SFTConfig, path) == cfg


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr'. Did you mean 'train.lr'?"),
        ("modell.name=x", "unknown config key 'modell'"),
        ("train.lr=fast", "'train.lr' must be a number"),
        ("train.batch_size=2.5", "'train.batch_size' must be an integer"),
        ("adapter.method=qlora", "'adapter.method' must be one of 'full', 'lora', 'dora', 'prompt_tuning', 'freeze'"),
        ("data.train_on_prompt=maybe", "'data.train_on_prompt' must be true or false"),
        ("train.batch_size=0", "'train.batch_size' must be at least 1"),
        ("train", "must look like key.subkey=value"),
    ],
)
def test_bad_input_names_the_key_and_choices(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(SFTConfig, None, [*BASE, override])
    assert expected in str(info.value)


def test_impossible_combinations_fail_in_validate():
    with pytest.raises(ConfigError, match="adapter.trainable"):
        load_config(SFTConfig, None, [*BASE, "adapter.method=freeze"])
    with pytest.raises(ConfigError, match="data.packing"):
        load_config(SFTConfig, None, [*BASE, "adapter.method=prompt_tuning", "data.packing=on"])
    with pytest.raises(ConfigError, match="data.train"):
        load_config(SFTConfig, None, [])


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(SFTConfig, bad)


def test_yaml_on_off_maps_to_literal_strings():
    assert parse_override("data.packing=off") == ("data.packing", False)
    cfg = load_config(SFTConfig, None, [*BASE, "data.packing=off"])
    assert cfg.data.packing == "off"


def test_every_key_is_documented_in_default_dump():
    dumped = yaml.safe_load(dump_yaml(SFTConfig()))
    for key in config_keys(SFTConfig):
        node = dumped
        for part in key.split("."):
            node = node[part]


# YAML files under examples/ that are data for a stage rather than a stage config, with their loader.
DATA_YAML_LOADERS = {
    "constitution_principles.yaml": "affinage.safety.constitution:load_principles",
    "safety_taxonomy.yaml": "affinage.safety.taxonomy:Taxonomy.load",
}


def _load_data_yaml(path: Path):
    import importlib

    module, _, attr = DATA_YAML_LOADERS[path.name].partition(":")
    target = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    return target(path)


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_config_loads(path):
    if path.name in DATA_YAML_LOADERS:
        assert _load_data_yaml(path)  # loads through its own loader and is not empty
        return
    cls = config_class_for(path)
    cfg = load_config(cls, path)
    for train_file in getattr(getattr(cfg, "data", None), "train", []):
        assert (EXAMPLES.parent / train_file).exists(), f"{path} names a missing file {train_file}"


def test_stage_key_guards_against_the_wrong_verb(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stage: sft\ndata:\n  train: a.jsonl\n")
    assert config_class_for(path) is SFTConfig
    with pytest.raises(ConfigError, match="'stage' must be one of 'sft'"):
        load_config(SFTConfig, None, [*BASE, "stage=dpo"])


def test_every_sft_field_is_documented():
    import dataclasses

    from affinage.config import field_docs

    for cls in (SFTConfig, *(type(getattr(SFTConfig(), f.name)) for f in dataclasses.fields(SFTConfig))):
        if not dataclasses.is_dataclass(cls):
            continue
        docs = field_docs(cls)
        # sections are documented by their own class docstring
        missing = [
            f.name for f in dataclasses.fields(cls)
            if f.name not in docs and not dataclasses.is_dataclass(getattr(cls(), f.name))
        ]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
