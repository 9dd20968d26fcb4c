"""Property-based tests of the configuration reader: any YAML file, mapping or ``key=value``
override gives a :class:`Config` or a :class:`ConfigError`, never another exception; a saved
configuration loads back equal.

Profiles (number of examples, reproducibility) are set in ``tests/conftest.py``.
"""

from __future__ import annotations

import datetime
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic.fields import FieldInfo

from robustreid.config import (
    Config,
    ConfigError,
    ConfigSection,
    config_from_dict,
    load_config,
    save_config,
)


def _fields(cls: type[ConfigSection], prefix: str = "") -> list[tuple[str, Any, dict[str, Any]]]:
    """(dotted key, annotation, constraints) of every leaf option of a config section; the
    constraints are the field's ``ge`` / ``gt`` / ``le`` / ``lt`` / ``pattern``."""
    out = []
    for name, fld in cls.model_fields.items():
        tp = fld.annotation
        if isinstance(tp, type) and issubclass(tp, ConfigSection):
            out.extend(_fields(tp, f"{prefix}{name}."))
        else:
            out.append((prefix + name, tp, _constraints(fld)))
    return out


def _constraints(fld: FieldInfo) -> dict[str, Any]:
    out = {}
    for item in fld.metadata:
        for name in ("ge", "gt", "le", "lt", "pattern"):
            if getattr(item, name, None) is not None:
                out[name] = getattr(item, name)
    return out


def _put(tree: dict[Any, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in a nested tree (a section in the way that is not a mapping: skip)."""
    *sections, name = key.split(".")
    node = tree
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            return
    node[name] = value


LEAVES = _fields(Config)
KNOWN_KEYS = [key for key, _, _ in LEAVES]
SECTIONS = sorted({key.split(".")[0] for key in KNOWN_KEYS if "." in key})
NAMES = sorted({part for key in KNOWN_KEYS for part in key.split(".")})

# YAML value texts that reach unusual corners of PyYAML: tags, timestamps, aliases, special
# floats, over-long integers, deep nesting.
YAML_TOKENS = [
    "1", "-0", "0x1F", "0o17", "0b101", "1_000", "1e-3", "5e4", "1.5e3", ".inf", "-.inf",
    ".nan", "null", "~", "true", "no", "on", "yes", "2001-12-14", "2001-13-45",
    "2001-12-14t21:59:43.10-05:00", "2001-02-30 25:61:00", "12:30:00", "!!binary aGVsbG8=",
    "!!binary x", "!!int abc", "!!float abc", "!!bool maybe", "!!timestamp 2001-13-01",
    "!!str 1", "!!null x", "!!python/object:os.system x", "!!set {a, b}", "!!omap [a, b]",
    "!!pairs [[a, b]]", "!mytag x", "&a [*a]", "&a {x: *a}", "*undefined", "'quoted'",
    '"esc \\x00 \\ud800"', "[1, [2, [3]]]", "{a: 1}", "{? [1]: 2}", "{a: 1, a: 2}",
    "|\n  block", ">-\n  folded", "9" * 5000, "-" + "9" * 5000, "0x" + "f" * 5000,
    "-0x" + "f" * 5000, "[" * 2000, "{a: " * 500, "- a\n- b", "<<: {a: 1}", "%YAML 1.1\n---\na",
    "--- a\n--- b", "\t", "\x00", "\ufeffa: 1", "? a\n: b",
]

yaml_values = st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=30))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(), st.text(max_size=12), st.dates(), st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=6) | st.integers(), inner,
                      max_size=3),
    max_leaves=8,
)


@st.composite
def config_trees(draw: st.DrawFn) -> dict[Any, Any]:
    """A nested mapping shaped like a config: known and unknown sections and keys, values of
    every type (right or wrong for the key)."""
    tree: dict[Any, Any] = {}
    for _ in range(draw(st.integers(0, 4))):
        key, tp, fld = draw(st.sampled_from(LEAVES))
        _put(tree, key, draw(st.one_of(values, valid_value(tp, fld))))
    if draw(st.booleans()):
        tree[draw(st.sampled_from(NAMES) | st.text(max_size=6))] = draw(values)
    return tree


def valid_value(tp: Any, meta: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of annotation ``tp`` inside the bounds ``meta`` (see :func:`_constraints`)."""
    if tp is bool:
        return st.booleans()
    if tp is int:
        low = meta.get("ge", meta["gt"] + 1 if "gt" in meta else -(2**31))
        high = meta.get("le", meta["lt"] - 1 if "lt" in meta else 2**31)
        return st.integers(low, high)
    if tp is float:
        low = meta.get("ge", meta.get("gt", -1e6))
        high = meta.get("le", meta.get("lt", 1e6))
        return st.floats(min_value=low, max_value=high, exclude_min="gt" in meta,
                         exclude_max="lt" in meta, allow_nan=False, allow_infinity=False)
    if typing.get_origin(tp) is Literal:
        return st.sampled_from(typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        # e.g. cluster.eps: a radius or "auto"; cluster.intra_camera_k1: a count or None
        options = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                options.append(st.none())
            elif typing.get_origin(arg) is typing.Annotated:
                base, *extras = typing.get_args(arg)
                limits = {k: v for fld in extras if isinstance(fld, FieldInfo)
                          for k, v in _constraints(fld).items()}
                options.append(valid_value(base, limits))
            else:  # the field's bounds (Field(None, ge=0)) are those of its value
                options.append(valid_value(arg, meta if arg in (int, float) else {}))
        return st.one_of(options)
    if tp is str:
        if "pattern" in meta:
            return st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
        return st.text(max_size=20)
    if typing.get_origin(tp) is dict:
        json_like = st.recursive(
            st.none() | st.booleans() | st.integers(-(2**62), 2**62)
            | st.floats(allow_nan=False) | st.text(max_size=10),
            lambda inner: st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
        return st.dictionaries(st.text(max_size=10), json_like, max_size=3)
    raise AssertionError(f"no strategy for {tp!r}")


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A nested mapping that is a valid configuration (rules between fields respected)."""
    tree: dict[str, Any] = {}
    for key, tp, fld in LEAVES:
        _put(tree, key, draw(valid_value(tp, fld)))
    train = tree["train"]
    train["batch_size"] = train["num_instances"] * draw(
        st.integers(2 if train["num_instances"] == 1 else 1, 64))
    for section in ("cluster", "eval"):
        # (cluster.k1: auto tries k1 from 10 up: k2 at most 10)
        top = 10 if tree[section]["k1"] == "auto" else tree[section]["k1"]
        tree[section]["k2"] = draw(st.integers(1, top))
    if not tree["data"]["eval_dataset"]:
        tree["data"]["eval_root"], tree["data"]["eval_options"] = "", {}
    if train["optimizer"] != "sgd" or not train["sgd_momentum"]:
        train["nesterov"] = False
    if tree["cluster"]["method"] == "infomap" and tree["cluster"]["eps"] == "auto":
        tree["cluster"]["eps"] = 0.5  # InfoMap has no radius to choose
    cl = tree["cluster"]
    if cl["k1"] == "auto" and cl["method"] != "dbscan":
        cl["k1"] = 30  # k1 auto compares DBSCAN partitions
    if cl["intra_camera_k1"] is not None:  # camera-aware lists: DBSCAN, exact, < k1
        if (cl["method"] != "dbscan" or cl["knn"] not in ("auto", "exact")
                or cl["k1"] == "auto"):
            cl["intra_camera_k1"] = None
        else:
            cl["intra_camera_k1"] = min(cl["intra_camera_k1"], cl["k1"] - 1)
    if train["scheduler"] == "cosine":
        train["min_lr"] = min(train["min_lr"], train["lr"])
    return tree


def check_outcome(call: typing.Callable[[], Config]) -> Config | None:
    """The config ``call`` returns, or None when it raises a ConfigError with a message."""
    try:
        cfg = call()
    except ConfigError as err:
        assert str(err).strip()
        return None
    assert isinstance(cfg, Config)
    return cfg


def write_and_load(text: str | bytes, overrides: tuple[str, ...] = ()) -> Config | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return check_outcome(lambda: load_config(path, overrides))


@given(st.one_of(
    st.text(max_size=200),
    st.binary(max_size=100),
    st.lists(st.tuples(st.sampled_from(KNOWN_KEYS + NAMES) | st.text(max_size=8), yaml_values),
             max_size=4).map(lambda items: "".join(f"{k}: {v}\n" for k, v in items)),
    st.tuples(st.sampled_from(SECTIONS), st.sampled_from(NAMES), yaml_values).map(
        lambda t: f"{t[0]}:\n  {t[1]}: {t[2]}\n"),
    st.sampled_from(YAML_TOKENS),
    yaml_values.map(lambda v: f"_base_: {v}\n"),
))
def test_any_yaml_file_gives_a_config_or_a_config_error(text: str | bytes) -> None:
    write_and_load(text)


@given(config_trees())
def test_any_mapping_gives_a_config_or_a_config_error(tree: dict[Any, Any]) -> None:
    check_outcome(lambda: config_from_dict(tree))
    # the same mapping as a YAML file (values PyYAML cannot write are not a file's content)
    write_and_load(yaml.safe_dump(tree, allow_unicode=True))


@given(st.lists(st.one_of(
    st.text(max_size=40),
    st.tuples(st.sampled_from(KNOWN_KEYS) | st.text(max_size=12), yaml_values).map("=".join),
    st.tuples(st.sampled_from(SECTIONS), st.text(max_size=8), yaml_values).map(
        lambda t: f"{t[0]}.{t[1]}={t[2]}"),
), max_size=3))
def test_any_override_gives_a_config_or_a_config_error(overrides: list[str]) -> None:
    check_outcome(lambda: load_config(None, overrides))
    write_and_load("train:\n  epochs: 3\n", tuple(overrides))


@given(valid_configs())
def test_saved_config_loads_back_equal(tree: dict[str, Any]) -> None:
    cfg = config_from_dict(tree)
    with tempfile.TemporaryDirectory() as folder:
        path = save_config(cfg, Path(folder) / "resolved.yaml")
        assert load_config(path) == cfg


def test_strings_with_line_separators_round_trip(tmp_path: Path) -> None:
    """PyYAML's single-quoted style read "\x85" (NEL) back as a space."""
    for text in ["\x85", "a\x85b", "\x85\n", "\u2028", "\u2029 x", " \x85 ", "\ufeffa"]:
        cfg = Config(output_dir=text)
        cfg.data.options = {text: [text]}
        assert load_config(save_config(cfg, tmp_path / "cfg.yaml")) == cfg, repr(text)


def test_yaml_corner_cases_are_config_errors(tmp_path: Path) -> None:
    """Inputs that made PyYAML raise ValueError, KeyError, IndexError, AttributeError or
    RecursionError, or passed the checks though no later step could use them."""
    cases = {
        "data.root=2001-13-45": "month must be in 1..12",
        "data.height=" + "1" * 5000: "cannot parse value",
        "seed=!!int abc": "'abc' is not a valid int",
        "seed=!!int ''": "'' is not a valid int",
        "eval.rerank=!!bool": "is not a valid bool",
        "data.root=!!timestamp x": "'x' is not a valid timestamp",
        "data.root=!!float 1:a": "'1:a' is not a valid float",
        "data.root=" + "[" * 2000: "nested too deeply",
        "data.options=&a {x: *a}": "refers to itself",
        "seed=0x" + "f" * 5000: "expected an integer between",
        "train.lr=.inf": "expected a finite float",
        "model.gem_p=.nan": "expected a finite float",
    }
    for override, message in cases.items():
        try:
            load_config(None, [override])
        except ConfigError as err:
            assert message in str(err), (override[:40], str(err))
            assert len(str(err)) < 500 and "\n" not in str(err)
        else:
            raise AssertionError(f"{override[:40]!r} was accepted")
    path = tmp_path / "self.yaml"
    path.write_text("data:\n  options: &a\n    x: *a\n", encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as err:
        assert "self.yaml" in str(err) and "refers to itself" in str(err)
    else:
        raise AssertionError("a self-referencing mapping was accepted")
    assert datetime.date(2001, 12, 14) == load_config(
        None, ["data.options={d: 2001-12-14}"]).data.options["d"]
