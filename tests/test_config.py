"""Tests for robustreid.config: defaults, YAML inheritance, overrides, errors, saving."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import yaml
from pydantic import Field

from robustreid.config import (
    Config,
    ConfigError,
    ConfigSection,
    DataConfig,
    EvalConfig,
    ModelConfig,
    check_config,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# Defaults and shipped files
# ------------------------------------------------------------------------------------------


def test_defaults():
    cfg = Config()
    assert cfg.data == DataConfig()
    assert (cfg.data.dataset, cfg.data.root) == ("synthperson", "data")
    assert (cfg.data.height, cfg.data.width) == (256, 128)
    assert cfg.data.num_workers == 4
    assert cfg.data.test_batch_size == 128
    assert cfg.data.check_images == "header"
    assert cfg.data.options == {}
    assert cfg.model == ModelConfig(
        arch="resnet50", pretrained="imagenet", last_stride=1, pooling="gem", gem_p=3.0, neck="bn"
    )
    assert cfg.eval == EvalConfig(
        rerank=False, k1=20, k2=6, lambda_value=0.3, max_rank=50, flip=False
    )
    assert (cfg.output_dir, cfg.seed, cfg.device) == ("runs/default", 1, "auto")


def test_load_without_file_gives_defaults():
    assert load_config() == Config()
    assert load_config(None, []) == Config()


def test_defaults_are_not_shared():
    a, b = load_config(), load_config()
    a.data.options["x"] = 1
    a.model.arch = "resnet18"
    assert b.data.options == {} and b.model.arch == "resnet50"
    assert Config().data.options == {}


def test_config_dir_found():
    names = {p.stem for p in CONFIG_FILES}
    assert {"base", "synthperson", "market1501", "msmt17", "personx"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert load_config(str(path)) == cfg


def test_base_yaml_equals_defaults_and_lists_every_key():
    assert load_config(CONFIG_DIR / "base.yaml") == Config()
    raw = yaml.safe_load((CONFIG_DIR / "base.yaml").read_text())
    expected = config_to_dict(Config())
    assert raw.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert raw[key].keys() == value.keys(), key


def test_synthperson_config():
    cfg = load_config(CONFIG_DIR / "synthperson.yaml")
    assert cfg.data.dataset == "synthperson" and cfg.data.root == "data"
    assert (cfg.data.height, cfg.data.width, cfg.data.num_workers) == (128, 64, 2)
    assert cfg.model.arch == "mobilenet_v2"
    assert cfg.model.pretrained == "imagenet"
    assert cfg.output_dir == "runs/synthperson"
    # inherited from base.yaml
    assert cfg.eval == EvalConfig() and cfg.model.pooling == "gem"


@pytest.mark.parametrize("name", ["market1501", "msmt17", "personx"])
def test_real_dataset_configs(name):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    assert cfg.data.dataset == name and cfg.data.root == "data"
    assert (cfg.data.height, cfg.data.width) == (256, 128)
    assert (cfg.model.arch, cfg.model.pretrained) == ("resnet50", "imagenet")
    assert cfg.output_dir == f"runs/{name}"


# ------------------------------------------------------------------------------------------
# Inheritance
# ------------------------------------------------------------------------------------------


def test_base_deep_merge(tmp_path):
    write(
        tmp_path / "base.yaml",
        "data:\n  height: 64\n  width: 32\n  options: {a: 1, b: 2}\n"
        "model:\n  arch: resnet18\nseed: 5\n",
    )
    child = write(
        tmp_path / "child.yaml",
        "_base_: base.yaml\ndata:\n  height: 96\n  options: {b: 3, c: 4}\nseed: 7\n",
    )
    cfg = load_config(child)
    assert cfg.data.height == 96  # the file wins
    assert cfg.data.width == 32  # kept from the base: nested dicts merge key by key
    assert cfg.data.options == {"a": 1, "b": 3, "c": 4}
    assert cfg.model.arch == "resnet18"
    assert cfg.model.pooling == "gem"  # neither file: dataclass default
    assert cfg.seed == 7


def test_list_of_bases_later_wins(tmp_path):
    write(tmp_path / "one.yaml", "data: {height: 10, width: 11}\nseed: 1\n")
    write(tmp_path / "two.yaml", "data: {height: 20}\nseed: 2\n")
    child = write(tmp_path / "child.yaml", "_base_: [one.yaml, two.yaml]\nseed: 3\n")
    cfg = load_config(child)
    assert (cfg.data.height, cfg.data.width, cfg.seed) == (20, 11, 3)


def test_chain_of_two_bases_relative_to_including_file(tmp_path):
    write(tmp_path / "common" / "root.yaml", "data: {height: 1, width: 2, num_workers: 3}\n")
    write(tmp_path / "mid.yaml", "_base_: common/root.yaml\ndata: {width: 20}\n")
    leaf = write(tmp_path / "exp" / "leaf.yaml", "_base_: ../mid.yaml\ndata: {num_workers: 30}\n")
    cfg = load_config(leaf)
    assert (cfg.data.height, cfg.data.width, cfg.data.num_workers) == (1, 20, 30)


def test_diamond_is_not_a_cycle(tmp_path):
    write(tmp_path / "root.yaml", "seed: 1\n")
    write(tmp_path / "a.yaml", "_base_: root.yaml\ndata: {height: 5}\n")
    write(tmp_path / "b.yaml", "_base_: root.yaml\ndata: {width: 6}\n")
    top = write(tmp_path / "top.yaml", "_base_: [a.yaml, b.yaml]\n")
    cfg = load_config(top)
    assert (cfg.seed, cfg.data.height, cfg.data.width) == (1, 5, 6)


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\nseed: 1\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"_base_: cycle in base files: .*a\.yaml -> .*b\.yaml"):
        load_config(tmp_path / "a.yaml")


def test_self_include_is_a_cycle(tmp_path):
    write(tmp_path / "a.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_scalar_replaces_and_mapping_replaces_scalar(tmp_path):
    write(tmp_path / "base.yaml", "data: {options: 3}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ndata: {options: {k: v}}\n")
    assert load_config(child).data.options == {"k": "v"}


# ------------------------------------------------------------------------------------------
# Overrides
# ------------------------------------------------------------------------------------------


def test_overrides_with_type_conversion():
    cfg = load_config(
        CONFIG_DIR / "synthperson.yaml",
        [
            "data.height=96",
            "model.gem_p=4",
            "eval.lambda_value=0",
            "eval.rerank=true",
            "model.pretrained=none",
            "data.root=/tmp/my data",
            "data.options.keep_val_apart=true",
            "data.options.split={id: 3}",
            "seed=0",
        ],
    )
    assert cfg.data.height == 96
    assert cfg.model.gem_p == 4.0 and isinstance(cfg.model.gem_p, float)
    assert cfg.eval.lambda_value == 0.0 and isinstance(cfg.eval.lambda_value, float)
    assert cfg.eval.rerank is True
    assert cfg.model.pretrained == "none"
    assert cfg.data.root == "/tmp/my data"
    assert cfg.data.options == {"keep_val_apart": True, "split": {"id": 3}}
    assert cfg.seed == 0
    assert cfg.data.width == 64  # untouched file value


def test_override_wins_over_file_and_later_override_wins(tmp_path):
    path = write(tmp_path / "c.yaml", "data: {height: 10}\n")
    assert load_config(path, ["data.height=20", "data.height=30"]).data.height == 30


def test_override_mapping_value_merges(tmp_path):
    path = write(tmp_path / "c.yaml", "eval: {k1: 7, k2: 3}\n")
    cfg = load_config(path, ["eval={k2: 4, flip: true}"])
    assert (cfg.eval.k1, cfg.eval.k2, cfg.eval.flip) == (7, 4, True)


def test_override_float_exponent_forms():
    cfg = load_config(None, ["model.gem_p=1e1", "eval.lambda_value=5e-2"])
    assert cfg.model.gem_p == 10.0
    assert cfg.eval.lambda_value == pytest.approx(0.05)


def test_override_quoted_string_stays_string():
    cfg = load_config(None, ["data.options.tag='123'", 'data.dataset="true"'])
    assert cfg.data.options == {"tag": "123"}
    assert cfg.data.dataset == "true"


def test_device_choices():
    for device in ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"]:
        assert load_config(None, [f"device={device}"]).device == device


def test_float_exponent_in_file(tmp_path):
    path = write(
        tmp_path / "c.yaml", "model: {gem_p: 2e0}\ndata: {options: {lr: 3.5e-4, w: 1e-3}}\n"
    )
    cfg = load_config(path)
    assert cfg.model.gem_p == 2.0
    assert cfg.data.options == {"lr": 3.5e-4, "w": 1e-3}


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def test_unknown_key_suggests_closest(tmp_path):
    path = write(tmp_path / "x.yaml", "data:\n  hieght: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith("data.hieght: unknown key")
    assert f"(from {path})" in message
    assert "did you mean 'data.height'?" in message
    assert info.value.key == "data.hieght" and info.value.source == str(path)


def test_unknown_key_in_wrong_section_suggests_right_section():
    with pytest.raises(ConfigError, match=r"data\.arch: unknown key .*did you mean 'model\.arch'"):
        load_config(None, ["data.arch=resnet18"])


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match=r"^modle: unknown key \(from command line\).*'model'"):
        load_config(None, ["modle.arch=resnet18"])


def test_unknown_key_without_suggestion_lists_known_keys():
    with pytest.raises(ConfigError, match=r"eval\.zzzz: unknown key.*known keys: rerank, k1"):
        load_config(None, ["eval.zzzz=1"])


def test_error_names_the_base_file_the_value_came_from(tmp_path):
    base = write(tmp_path / "base.yaml", "model:\n  pooling: mean\n  arch: resnet50\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nmodel:\n  arch: resnet18\n")
    with pytest.raises(ConfigError, match=re.escape(f"(from {base})")) as info:
        load_config(child)
    assert str(info.value).startswith("model.pooling: expected one of 'gem', 'avg', 'max'")
    assert "got str 'mean'" in str(info.value)


def test_wrong_type_message(tmp_path):
    path = write(tmp_path / "x.yaml", "data:\n  height: abc\n")
    expected = f"data.height: expected int, got str 'abc' (from {path})"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("data.height=true", r"data\.height: expected int, got bool True"),
        ("data.height=2.5", r"data\.height: expected int, got float 2\.5"),
        ("data.height=null", r"data\.height: expected int, got null"),
        ("model.gem_p=yes_please", r"model\.gem_p: expected float, got str 'yes_please'"),
        ("model.gem_p=false", r"model\.gem_p: expected float, got bool False"),
        ("eval.rerank=1", r"eval\.rerank: expected bool \(true or false\), got int 1"),
        ("eval.rerank=maybe", r"eval\.rerank: expected bool .*got str 'maybe'"),
        ("model.arch=50", r"model\.arch: expected str, got int 50"),
        ("output_dir=1.5", r"output_dir: expected str, got float 1\.5"),
        ("data.options=[1, 2]", r"data\.options: expected dict\[str, Any\], got list"),
        ("data.options={1: a}", r"data\.options\.1: expected str keys, got key int 1"),
    ],
)
def test_wrong_types_from_command_line(override, pattern):
    with pytest.raises(ConfigError, match=pattern + r".*\(from command line\)"):
        load_config(None, [override])


def test_literal_choice_error_with_suggestion():
    with pytest.raises(
        ConfigError,
        match=r"model\.pooling: expected one of 'gem', 'avg', 'max', got str 'gme' "
        r"\(from command line\); did you mean 'gem'\?",
    ):
        load_config(None, ["model.pooling=gme"])
    with pytest.raises(ConfigError, match=r"model\.neck: expected one of 'bn', 'none'"):
        load_config(None, ["model.neck=null"])


def test_device_pattern_error():
    with pytest.raises(ConfigError, match=r"device: expected one of auto, cpu, .*got str 'gpu'"):
        load_config(None, ["device=gpu"])
    with pytest.raises(ConfigError, match="cuda:x"):
        load_config(None, ["device=cuda:x"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("data.height=0", r"data\.height: expected a value >= 1, got int 0"),
        ("data.num_workers=-1", r"data\.num_workers: expected a value >= 0"),
        ("model.gem_p=0", r"model\.gem_p: expected a value > 0, got float 0\.0"),
        ("eval.lambda_value=1.5", r"eval\.lambda_value: expected a value <= 1"),
        ("model.last_stride=3", r"model\.last_stride: expected a value <= 2"),
        ("cluster.eps=1", r"cluster\.eps: expected a value < 1, got float 1\.0 .*one cluster"),
        ("cluster.eps=1.5", r"cluster\.eps: expected a value < 1"),
        ("cluster.eps=0", r"cluster\.eps: expected a value > 0"),
        ("train.num_instances=0", r"train\.num_instances: expected a value >= 1"),
        ("data.width=0", r"data\.width: expected a value >= 1"),
    ],
)
def test_out_of_range_values(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("overrides", "pattern", "key"),
    [
        (["train.batch_size=7", "train.num_instances=4"],
         r"^train\.batch_size=7 must be a multiple of train\.num_instances=4 \(P x K batches"
         r".*\(train\.batch_size from command line, train\.num_instances from command line\)"
         r"; e\.g\. train\.batch_size=4 or 8$", "train.batch_size"),
        (["train.batch_size=8", "train.num_instances=16"],
         r"train\.batch_size=8 must be a multiple of train\.num_instances=16 .*"
         r"e\.g\. train\.batch_size=16$", "train.batch_size"),
        (["cluster.k1=5", "cluster.k2=8"],
         r"^cluster\.k2=8 must be <= cluster\.k1=5 ", "cluster.k2"),
        (["cluster.k1=4"], r"^cluster\.k2=6 must be <= cluster\.k1=4 ", "cluster.k2"),
        (["eval.k1=3", "eval.k2=4"], r"^eval\.k2=4 must be <= eval\.k1=3 ", "eval.k2"),
        (["data.eval_root=/somewhere"],
         r"^data\.eval_root is set but data\.eval_dataset is empty", "data.eval_root"),
        (["data.eval_options={eval_only: true}"],
         r"^data\.eval_options is set but data\.eval_dataset is empty", "data.eval_options"),
    ],
)
def test_rules_between_fields(overrides, pattern, key):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(None, overrides)
    assert info.value.key == key
    # the same rule through a plain dict and through check_config on a built Config
    tree: dict[str, Any] = {}
    for override in overrides:
        dotted, text = override.split("=", 1)
        section, name = dotted.split(".")
        tree.setdefault(section, {})[name] = yaml.safe_load(text)
    with pytest.raises(ConfigError, match=pattern.split(" ", 1)[0].lstrip("^")):
        config_from_dict(tree)
    cfg = Config()
    for section, values in tree.items():
        setattr(cfg, section, getattr(cfg, section).model_copy(update=values))
    with pytest.raises(ConfigError, match=pattern.split(" ", 1)[0].lstrip("^")):
        check_config(cfg)


def test_rule_error_names_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", "train: {batch_size: 30, num_instances: 4}\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size from .*c\.yaml") as info:
        load_config(path)
    assert info.value.source == str(path)
    # a later override that fixes the combination is checked after all overrides
    assert load_config(path, ["train.batch_size=32"]).train.batch_size == 32


def test_valid_combinations_pass():
    cfg = load_config(None, ["train.batch_size=8", "train.num_instances=4", "cluster.k1=6",
                             "cluster.k2=6", "eval.k1=2", "eval.k2=1", "cluster.eps=0.99"])
    check_config(cfg)
    assert cfg.train.batch_size == 8 and cfg.cluster.eps == 0.99


def test_section_given_a_scalar(tmp_path):
    path = write(tmp_path / "x.yaml", "eval: fast\n")
    with pytest.raises(
        ConfigError, match=r"eval: expected a mapping \(section EvalConfig\), got str 'fast'"
    ) as info:
        load_config(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match=r"model: expected a mapping .*got null"):
        load_config(write(tmp_path / "y.yaml", "model:\n"))


def test_override_below_a_scalar_is_an_error():
    with pytest.raises(
        ConfigError,
        match=r"data\.height\.x: cannot set \(from command line\): 'data\.height' is int 256 "
        r"\(from .*base\.yaml\), not a section",
    ):
        load_config(CONFIG_DIR / "base.yaml", ["data.height.x=1"])


@pytest.mark.parametrize("bad", ["data.height", "", "data.height:5"])
def test_override_without_equals(bad):
    with pytest.raises(ConfigError, match=r"expected the form key\.sub=value") as info:
        load_config(None, [bad])
    assert repr(bad) in str(info.value) and "command line" in str(info.value)


@pytest.mark.parametrize("bad", ["=5", "data..height=5", ".seed=1"])
def test_override_malformed_key(bad):
    with pytest.raises(ConfigError, match="malformed key"):
        load_config(None, [bad])


def test_override_unparsable_value():
    with pytest.raises(ConfigError, match=r"data\.options\.x: cannot parse value '\[1,' as YAML"):
        load_config(None, ["data.options.x=[1,"])


def test_missing_base_file(tmp_path):
    child = write(tmp_path / "child.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"_base_: missing base file '.*nowhere\.yaml'") as info:
        load_config(child)
    assert f"(from {child})" in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: '.*absent\.yaml'"):
        load_config(tmp_path / "absent.yaml")


def test_unreadable_yaml(tmp_path):
    path = write(tmp_path / "broken.yaml", "data:\n  height: [1, 2\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in '.*broken\.yaml'.*line \d+"):
        load_config(path)


def test_unreadable_yaml_in_base(tmp_path):
    write(tmp_path / "base.yaml", "data: {height: 1\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in '.*base\.yaml'"):
        load_config(child)


def test_config_path_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path / "dup.yaml", "seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"invalid YAML .*duplicate key 'seed'"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match=r"must contain a mapping at the top level, got list"):
        load_config(path)


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()


@pytest.mark.parametrize("value", ["3", "[base.yaml, 4]", "{a: b}", "''"])
def test_bad_base_value(tmp_path, value):
    path = write(tmp_path / "x.yaml", f"_base_: {value}\n")
    with pytest.raises(ConfigError, match=r"_base_: expected a path or a list of paths"):
        load_config(path)


def test_nested_base_key_is_unknown(tmp_path):
    path = write(tmp_path / "x.yaml", "data:\n  _base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"data\._base_: unknown key"):
        load_config(path)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ------------------------------------------------------------------------------------------
# Generic mechanism (new sections are just ConfigSection fields)
# ------------------------------------------------------------------------------------------


class _Inner(ConfigSection):
    milestones: list[int] = Field(default_factory=lambda: [10, 20])
    size: Annotated[tuple[int, int], Field(strict=False)] = (256, 128)
    scales: Annotated[tuple[float, ...], Field(strict=False)] = (1.0,)
    momentum: float | None = None
    mode: Literal["a", "b"] = "a"
    extra: dict[str, Any] = Field(default_factory=dict)


class _Outer(ConfigSection):
    train: _Inner = Field(default_factory=_Inner)
    name: str = "x"
    required_later: int = 0


def test_generic_containers_and_optional():
    obj = config_from_dict(
        {
            "train": {
                "milestones": [1, 2, 3],
                "size": [64, 32],
                "scales": [1, 0.5],
                "momentum": None,
                "mode": "b",
            }
        },
        cls=_Outer,
    )
    assert obj.train.milestones == [1, 2, 3]
    assert obj.train.size == (64, 32)
    assert obj.train.scales == (1.0, 0.5) and all(isinstance(s, float) for s in obj.train.scales)
    assert obj.train.momentum is None
    assert config_from_dict({"train": {"momentum": 1}}, cls=_Outer).train.momentum == 1.0
    assert config_from_dict({}, cls=_Outer) == _Outer()


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"train": {"milestones": [1, "x"]}}, r"train\.milestones\[1\]: expected int, got str 'x'"),
        ({"train": {"milestones": 5}}, r"train\.milestones: expected list\[int\], got int 5"),
        ({"train": {"size": [1, 2, 3]}}, r"train\.size: expected tuple\[int, int\] \(2 items\)"),
        ({"train": {"scales": [1, True]}}, r"train\.scales\[1\]: expected float, got bool"),
        ({"train": {"momentum": "hi"}}, r"train\.momentum: expected float, got str 'hi'"),
        ({"train": {"mode": "c"}}, r"train\.mode: expected one of 'a', 'b'"),
        ({"train": 3}, r"train: expected a mapping \(section _Inner\)"),
    ],
)
def test_generic_errors(data, pattern):
    with pytest.raises(ConfigError, match=pattern + r".*\(from test\)"):
        config_from_dict(data, source="test", cls=_Outer)


def test_generic_round_trip(tmp_path):
    obj = _Outer(train=_Inner(size=(3, 4), scales=(0.5, 1.0), momentum=0.9), name="n")
    plain = config_to_dict(obj)
    assert plain["train"]["size"] == [3, 4]  # tuples become lists for YAML
    assert config_from_dict(plain, cls=_Outer) == obj


# ------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------


def test_config_to_dict():
    plain = config_to_dict(Config())
    assert plain["data"]["height"] == 256
    assert plain["model"]["pooling"] == "gem"
    assert list(plain) == list(Config.model_fields)
    assert config_from_dict(plain) == Config()
    with pytest.raises(TypeError):
        config_to_dict({"data": {}})


def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        CONFIG_DIR / "synthperson.yaml",
        [
            "eval.rerank=true",
            "eval.lambda_value=1e-5",
            "device=cuda:1",
            "data.options={keep_val_apart: true, tag: '1e3', flag: 'true', nothing: null}",
            "model.pretrained=none",
            "data.root='data: with colon'",
        ],
    )
    out = save_config(cfg, tmp_path / "resolved.yaml")
    assert out == tmp_path / "resolved.yaml"
    loaded = load_config(out)
    assert loaded == cfg
    assert loaded.data.options["tag"] == "1e3"
    assert loaded.data.options["flag"] == "true"
    assert loaded.model.pretrained == "none"
    # the saved file is fully resolved: no base reference, every section written out
    raw = yaml.safe_load(out.read_text())
    assert "_base_" not in raw and raw.keys() == config_to_dict(Config()).keys()


def test_save_round_trip_of_every_shipped_config(tmp_path):
    for path in CONFIG_FILES:
        cfg = load_config(path)
        assert load_config(save_config(cfg, tmp_path / path.name)) == cfg


def test_atomic_save_leaves_no_temp_files_and_overwrites(tmp_path):
    target = tmp_path / "sub" / "config.yaml"
    save_config(Config(), target)  # creates parent folders
    save_config(load_config(None, ["seed=9"]), target)
    assert os.listdir(target.parent) == ["config.yaml"]
    assert load_config(target).seed == 9


def test_failed_save_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "config.yaml"
    save_config(Config(), target)
    before = target.read_text()
    bad = Config()
    bad.data.options["obj"] = object()  # not representable as YAML
    with pytest.raises(yaml.YAMLError):
        save_config(bad, target)
    assert target.read_text() == before
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_interrupted_save_removes_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    save_config(Config(), target)
    before = target.read_text()

    def failing_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        save_config(load_config(None, ["seed=3"]), target)
    monkeypatch.undo()
    assert target.read_text() == before
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_trainer_checks_a_config_built_in_code():
    from robustreid.build import build_trainer

    cfg = Config()
    cfg.train = cfg.train.model_copy(update={"batch_size": 7, "num_instances": 4})
    # refused before the model, the data or the device are touched
    with pytest.raises(ConfigError, match=r"train\.batch_size=7 must be a multiple"):
        build_trainer(cfg, model=None, data=None, device=None)  # type: ignore[arg-type]
