"""Experiment suites as data: load and validate configs/suites/*.yaml, expand them into runs.

A suite file::

    question: Which formulation gives the lowest MAE?   # shown in the report
    budget: 64 px, 6 epochs, full train split; ~4 h     # the protocol's cost, in words
    base: configs/utkface_resnet18_dex.yaml             # repo-relative or absolute
    protocol: {MODEL.IMG_SIZE: 64, TRAIN.EPOCHS: 6}     # overrides shared by every run
    grid: {AUG.POLICY: [none, basic, strong]}           # cartesian product of alternatives
    variants:                                           # and/or explicit named variants
      dex_ls: {set: {MODEL.LABEL_SMOOTHING: 0.1}}       #   set: training overrides
      tta: {test_args: [--tta, flip]}                   #   test_args: test.py options
      ens3: {ensemble: 3}                               #   ensemble of 3 seeds' models
    variant_axis: head          # label of the variants in run names (default: variant)
    baseline: head=dex          # the variant others are compared with (default: the first)
    seeds: [0, 1, 2]            # TRAIN.SEED values
    evaluation:
      split: test
      extra:                    # more test.py evaluations of every run
        - {name: fgnet, args: [--data, "fgnet:{data}/fgnet", --split, all],
           needs: "{data}/fgnet"}                       # skipped when that path is absent

Runs are (variants x grid) x seeds, named ``head=dex__seed=0``. A run's training is identified by
its merged config, so runs of any suite with the same config share one checkpoint folder.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode

from age_estimation.config import ConfigError, load_config
from defaults import get_cfg_defaults

REPO = Path(__file__).resolve().parents[2]

_TOP_KEYS = {"name", "question", "budget", "base", "protocol", "grid", "variants", "variant_axis",
             "baseline", "seeds", "evaluation"}
_VARIANT_KEYS = {"set", "cfg", "test_args", "ensemble"}
_EXTRA_KEYS = {"name", "args", "needs"}
# test.py options the runner sets itself for every evaluation.
_RESERVED_ARGS = {"--resume", "--out", "--ensemble"}
# Keys that change where or how fast a run goes, not what it learns: left out of its identity.
# (The fused optimizer makes the same update as the default one, to rounding: a speed setting.)
_ENVIRONMENT_KEYS = ("OUTPUT_DIR", "DATA.CACHE_DIR", "DATA.NUM_WORKERS", "TRAIN.THREADS",
                     "TEST.BATCH_SIZE", "TRAIN.FUSED_OPTIMIZER")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


class SuiteError(ValueError):
    """A suite file is malformed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Training:
    """One train.py invocation: a config file plus KEY VALUE overrides (TRAIN.SEED included)."""

    cfg_file: str
    overrides: tuple[str, ...]

    @property
    def seed(self) -> int:
        """TRAIN.SEED, always the last override (so it wins over any in the protocol)."""
        return int(self.overrides[-1])

    def config(self) -> CfgNode:
        """The merged, validated config (OUTPUT_DIR aside, what train.py will use)."""
        return load_config(self.cfg_file, list(self.overrides))

    def key(self) -> str:
        """Stable identity of what is trained: a hash of the merged config without the keys
        that only affect where and how fast it runs."""
        cfg = self.config().clone()
        cfg.defrost()
        for dotted in _ENVIRONMENT_KEYS:
            node = cfg
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node[part]
            node.pop(leaf)
        digest = hashlib.sha1(cfg.dump(sort_keys=True).encode()).hexdigest()[:12]
        return f"{cfg.MODEL.BACKBONE}_{cfg.MODEL.HEAD}-{digest}"  # readable, config-only


@dataclass(frozen=True)
class Extra:
    """An extra evaluation: test.py options, skipped when the `needs` path is absent."""

    name: str
    args: tuple[str, ...]
    needs: str = ""


@dataclass(frozen=True)
class Variant:
    """One cell of the suite: its name, labels (axis -> value) and what it changes."""

    name: str
    labels: dict[str, str]
    cfg_file: str
    overrides: tuple[str, ...]
    test_args: tuple[str, ...] = ()
    ensemble: int = 0


@dataclass(frozen=True)
class Run:
    """A variant at one seed: its trainings (its own first, then ensemble members) and tests."""

    suite: str
    name: str
    variant: str
    seed: int
    trainings: tuple[Training, ...]
    test_args: tuple[str, ...]


@dataclass
class Suite:
    """A validated suite file."""

    name: str
    path: Path
    question: str
    budget: str
    base: str
    protocol: dict[str, Any]
    seeds: list[int]
    variants: list[Variant]
    baseline: str
    split: str = "test"
    extras: list[Extra] = field(default_factory=list)
    axes: list[dict[str, Any]] = field(default_factory=list)

    def runs(self) -> list[Run]:
        """Every (variant, seed) in order: variants in file order, seeds within a variant.
        An ensemble of k seeds starting at seed i uses seeds i, i+1, ... (cyclically); when
        k is all the seeds there is one such ensemble."""
        out = []
        for variant in self.variants:
            starts = range(1 if variant.ensemble == len(self.seeds) else len(self.seeds))
            for i in starts:
                members = ([self.seeds[(i + j) % len(self.seeds)] for j in range(variant.ensemble)]
                           if variant.ensemble else [self.seeds[i]])
                trainings = tuple(Training(variant.cfg_file,
                                           (*variant.overrides, "TRAIN.SEED", str(seed)))
                                  for seed in members)
                out.append(Run(self.name, f"{variant.name}__seed={self.seeds[i]}", variant.name,
                               self.seeds[i], trainings, variant.test_args))
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description stored next to the results (the report reads it)."""
        return {
            "name": self.name, "file": display_path(self.path), "question": self.question,
            "budget": self.budget, "base": self.base, "protocol": self.protocol,
            "seeds": self.seeds, "baseline": self.baseline, "split": self.split,
            "extras": [e.name for e in self.extras], "axes": self.axes,
            "runs": [r.name for r in self.runs()],
            "variants": [{"name": v.name, "labels": v.labels, "cfg": v.cfg_file,
                          "overrides": list(v.overrides), "test_args": list(v.test_args),
                          "ensemble": v.ensemble} for v in self.variants],
        }


def display_path(path: Path) -> str:
    """A path relative to the repository when inside it (stored files stay machine-neutral)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _resolve_cfg(value: str, suite_path: Path) -> str:
    """A config path as written (repo-relative or absolute); must exist."""
    path = Path(value)
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        raise SuiteError(f"{suite_path}: config file not found: {value}")
    return str(path)


def format_value(value: Any) -> str:
    """A YAML value as a train.py command-line value (yacs literal-evals it back)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in value) + "]"
    return str(value)


def _pairs(mapping: Any, suite_path: Path, where: str) -> tuple[str, ...]:
    """A {KEY: value} mapping as flat KEY VALUE strings; every key must exist in defaults.py."""
    if mapping is None:
        return ()
    if not isinstance(mapping, Mapping):
        raise SuiteError(f"{suite_path}: {where} must be a mapping of KEY: value")
    defaults = get_cfg_defaults()
    flat: list[str] = []
    for key, value in mapping.items():
        node = defaults
        for part in str(key).split("."):
            if not isinstance(node, CfgNode) or part not in node:
                raise SuiteError(f"{suite_path}: unknown config key {key!r} in {where} "
                                 f"(not in defaults.py)")
            node = node[part]
        flat += [str(key), format_value(value)]
    return tuple(flat)


def _check_name(name: str, suite_path: Path) -> str:
    if not _NAME.match(name):
        raise SuiteError(f"{suite_path}: run name part {name!r} may only contain letters, digits "
                         f"and _ . + -")
    return name


def _grid_axes(grid: Any, path: Path) -> list[dict[str, Any]]:
    if grid is None:
        return []
    if not isinstance(grid, Mapping):
        raise SuiteError(f"{path}: grid must be a mapping of KEY: [alternatives]")
    leaves = [str(key).split(".")[-1].lower() for key in grid]
    axes = []
    for (key, values), leaf in zip(grid.items(), leaves):
        if not isinstance(values, list) or not values:
            raise SuiteError(f"{path}: grid {key} must be a non-empty list of alternatives")
        _pairs({key: values[0]}, path, "grid")
        # Short labels (AUG.POLICY -> policy) unless two keys share their last part.
        label = leaf if leaves.count(leaf) == 1 else str(key).lower()
        axes.append({"key": str(key), "label": label, "values": values})
    return axes


def _variant_specs(spec: Any, path: Path) -> list[tuple[str, dict[str, Any]]]:
    if spec is None:
        return []
    if not isinstance(spec, Mapping):
        raise SuiteError(f"{path}: variants must be a mapping of name: {{set, cfg, test_args, "
                         f"ensemble}}")
    out = []
    for name, body in spec.items():
        body = body or {}
        unknown = set(body) - _VARIANT_KEYS
        if unknown:
            raise SuiteError(f"{path}: variant {name}: unknown field(s) {sorted(unknown)}; "
                             f"expected {sorted(_VARIANT_KEYS)}")
        out.append((_check_name(str(name), path), body))
    return out


def _test_args(args: Any, path: Path, where: str) -> tuple[str, ...]:
    args = [str(a) for a in (args or [])]
    reserved = _RESERVED_ARGS.intersection(args)
    if reserved:
        raise SuiteError(f"{path}: {where}: {sorted(reserved)} are set by the runner")
    return tuple(args)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file: every key exists in defaults.py and every run's merged
    config passes `load_config`; errors name the file (and the key)."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise SuiteError(f"{path}: unknown field(s) {sorted(unknown)}; "
                         f"expected {sorted(_TOP_KEYS)}")
    for required in ("question", "budget", "base", "seeds"):
        if not raw.get(required):
            raise SuiteError(f"{path}: missing {required!r}")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise SuiteError(f"{path}: seeds must be a list of distinct integers")
    base = _resolve_cfg(str(raw["base"]), path)
    protocol = _pairs(raw.get("protocol"), path, "protocol")
    axes = _grid_axes(raw.get("grid"), path)
    specs = _variant_specs(raw.get("variants"), path)
    axis = _check_name(str(raw.get("variant_axis", "variant")), path)

    variants = []
    for (vname, body), combo in itertools.product(specs or [(None, {})],
                                                  itertools.product(*[a["values"] for a in axes])):
        labels = {axis: vname} if vname is not None else {}
        overrides = list(protocol) + list(_pairs(body.get("set"), path, f"variant {vname}"))
        for ax, value in zip(axes, combo):
            labels[ax["label"]] = _check_name(format_value(value), path)
            overrides += _pairs({ax["key"]: value}, path, "grid")
        ensemble = int(body.get("ensemble", 0))
        if ensemble and not 2 <= ensemble <= len(seeds):
            raise SuiteError(f"{path}: variant {vname}: ensemble {ensemble} needs 2..{len(seeds)} "
                             f"(the number of seeds)")
        name = "__".join(f"{k}={v}" for k, v in labels.items()) or "base"
        cfg_file = _resolve_cfg(str(body["cfg"]), path) if body.get("cfg") else base
        variants.append(Variant(name, labels, cfg_file, tuple(overrides),
                                _test_args(body.get("test_args"), path, f"variant {vname}"),
                                ensemble))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SuiteError(f"{path}: two variants share a name: {names}")
    baseline = str(raw.get("baseline", names[0]))
    if baseline not in names:
        raise SuiteError(f"{path}: baseline {baseline!r} is not a variant; variants: {names}")

    evaluation = raw.get("evaluation") or {}
    split = str(evaluation.get("split", "test"))
    if split not in ("valid", "test"):
        raise SuiteError(f"{path}: evaluation.split must be valid or test, got {split!r}")
    extras = []
    for item in evaluation.get("extra") or []:
        if set(item) - _EXTRA_KEYS or "name" not in item:
            raise SuiteError(f"{path}: evaluation.extra items have fields {sorted(_EXTRA_KEYS)} "
                             f"(name required), got {sorted(item)}")
        extras.append(Extra(_check_name(str(item["name"]), path),
                            _test_args(item.get("args"), path, f"extra {item['name']}"),
                            str(item.get("needs", ""))))

    suite = Suite(str(raw.get("name", path.stem)), path, str(raw["question"]).strip(),
                  str(raw["budget"]).strip(), display_path(Path(base)),
                  dict(zip(protocol[::2], protocol[1::2])), seeds, variants, baseline, split,
                  extras, axes)
    _check_name(suite.name, path)
    for run in suite.runs():  # types and allowed values, as train.py will see them
        try:
            run.trainings[0].config()
        except ConfigError as err:
            raise SuiteError(f"{path}: run {run.name}: {err}") from err
    return suite


def expand_data_path(text: str, data_dir: Path) -> str:
    """`{data}` in an extra evaluation's arguments -> the datasets folder."""
    return text.replace("{data}", str(data_dir))


def select(runs: Sequence[Run], pattern: str | None) -> list[Run]:
    """Runs whose name matches a glob pattern or contains it as a substring."""
    from fnmatch import fnmatchcase

    if not pattern:
        return list(runs)
    return [r for r in runs if fnmatchcase(r.name, pattern) or pattern in r.name]
