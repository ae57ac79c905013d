"""Load, merge and validate configs: defaults.py + a YAML file + `KEY VALUE` overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from yacs.config import CfgNode

from defaults import get_cfg_defaults


class ConfigError(ValueError):
    """A config file or override names an unknown key, has a wrong type or a bad value."""


# Keys whose value must be one of a fixed set (registries are checked separately, see validate).
_CHOICES = {
    "DATA.LABEL": ("apparent", "real"),
    "DATA.ON_BAD_IMAGE": ("skip", "error"),
    "AUG.POLICY": ("none", "basic", "strong"),
    "MODEL.ORDINAL": ("coral", "corn"),
    "MODEL.VARIANCE": ("hetero", "homo"),
    "TRAIN.OPTIMIZER": ("adamw", "sgd"),
    "TRAIN.SCHEDULE": ("cosine", "step"),
    "LOSS.REWEIGHT": ("none", "inverse", "sqrt_inverse", "lds", "sqrt_lds"),
    "LOSS.LDS_KERNEL": ("gaussian", "triang", "laplace"),
    "MODEL.FDS.KERNEL": ("gaussian", "triang", "laplace"),
}


def _get(cfg: CfgNode, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(cfg: CfgNode) -> None:
    """Refuse values that are of the right type but meaningless, naming the key."""
    from age_estimation.data.datasets import DATASETS
    from age_estimation.models.heads import HEADS

    choices = dict(_CHOICES, **{"DATA.DATASET": tuple(DATASETS), "MODEL.HEAD": tuple(HEADS)})
    for key, allowed in choices.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key} = {_get(cfg, key)!r}: expected one of {', '.join(allowed)}")
    if not 0.0 < cfg.DATA.FRACTION <= 1.0:
        raise ConfigError(f"DATA.FRACTION = {cfg.DATA.FRACTION}: expected a value in (0, 1]")
    synthetic = cfg.DATA.SYNTHETIC
    if not 0.0 <= synthetic.RATIO <= 1.0:
        raise ConfigError(f"DATA.SYNTHETIC.RATIO = {synthetic.RATIO}: expected a value in [0, 1]")
    if synthetic.RATIO > 0 and not synthetic.ROOT:
        raise ConfigError(f"DATA.SYNTHETIC.RATIO = {synthetic.RATIO} needs DATA.SYNTHETIC.ROOT "
                          f"(a scripts/synthesize.py output folder or its labels.csv)")
    if synthetic.RATIO > 0 and cfg.SAMPLER.BALANCED:
        # The balanced sampler draws whole batches by real-age weights: no fixed synthetic share.
        raise ConfigError("SAMPLER.BALANCED cannot be combined with DATA.SYNTHETIC.RATIO > 0")
    if not 0.0 <= cfg.LOSS.DISTILL_WEIGHT <= 1.0:
        raise ConfigError(f"LOSS.DISTILL_WEIGHT = {cfg.LOSS.DISTILL_WEIGHT}: expected a value in "
                          f"[0, 1]")
    if not 0.0 <= cfg.TRAIN.EMA_DECAY < 1.0:
        raise ConfigError(f"TRAIN.EMA_DECAY = {cfg.TRAIN.EMA_DECAY}: expected a value in [0, 1)")
    if cfg.AUG.MIXUP_ALPHA < 0:
        raise ConfigError(f"AUG.MIXUP_ALPHA = {cfg.AUG.MIXUP_ALPHA}: expected >= 0 (0 = off)")
    if cfg.AUG.MIXUP_ALPHA > 0 and cfg.MODEL.FDS.ENABLED:
        raise ConfigError("AUG.MIXUP_ALPHA > 0 cannot be combined with MODEL.FDS.ENABLED: FDS "
                          "smooths features per age, and a mixed image has two")
    if cfg.DATA.NUM_WORKERS < -1:
        raise ConfigError(f"DATA.NUM_WORKERS = {cfg.DATA.NUM_WORKERS}: expected -1 (auto), 0 (load "
                          f"in the training process) or a number of worker processes")
    if cfg.MODEL.DLDL_SIGMA <= 0:
        raise ConfigError(f"MODEL.DLDL_SIGMA = {cfg.MODEL.DLDL_SIGMA}: expected a width > 0 years")
    if cfg.MODEL.DLDL_L1_WEIGHT < 0:
        raise ConfigError(f"MODEL.DLDL_L1_WEIGHT = {cfg.MODEL.DLDL_L1_WEIGHT}: expected >= 0")
    if cfg.TRAIN.MATMUL_CONV_MAX_AREA < -1:
        raise ConfigError(f"TRAIN.MATMUL_CONV_MAX_AREA = {cfg.TRAIN.MATMUL_CONV_MAX_AREA}: "
                          f"expected -1 (auto), 0 (off) or a largest output map in pixels")
    train = cfg.TRAIN
    if (train.PROGRESSIVE_SIZE or train.PROGRESSIVE_EPOCHS) and not (
            0 < train.PROGRESSIVE_SIZE < cfg.MODEL.IMG_SIZE
            and 0 < train.PROGRESSIVE_EPOCHS < train.EPOCHS):
        # The last epoch must train at MODEL.IMG_SIZE: validation and inference run there.
        raise ConfigError(f"TRAIN.PROGRESSIVE_SIZE = {train.PROGRESSIVE_SIZE}, "
                          f"TRAIN.PROGRESSIVE_EPOCHS = {train.PROGRESSIVE_EPOCHS}: expected a size "
                          f"below MODEL.IMG_SIZE ({cfg.MODEL.IMG_SIZE}) for 1 to TRAIN.EPOCHS - 1 "
                          f"({train.EPOCHS - 1}) epochs, or both 0 (off)")
    if not 0.0 <= cfg.MODEL.DROPOUT < 1.0:
        raise ConfigError(f"MODEL.DROPOUT = {cfg.MODEL.DROPOUT}: expected a value in [0, 1)")
    from age_estimation.data.perturbations import parse_perturb_range

    for spec in cfg.AUG.PERTURB:
        try:
            parse_perturb_range(spec)
        except ValueError as err:
            raise ConfigError(f"AUG.PERTURB: {err}") from None
    if cfg.LOSS.ATTRIBUTE_WEIGHTS and len(cfg.LOSS.ATTRIBUTE_WEIGHTS) != len(cfg.MODEL.ATTRIBUTES):
        raise ConfigError(f"LOSS.ATTRIBUTE_WEIGHTS has {len(cfg.LOSS.ATTRIBUTE_WEIGHTS)} values "
                          f"for MODEL.ATTRIBUTES {list(cfg.MODEL.ATTRIBUTES)}")
    for key in ("MODEL.IMG_SIZE", "TRAIN.EPOCHS", "TRAIN.BATCH_SIZE", "TEST.BATCH_SIZE"):
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key} = {_get(cfg, key)}: expected a positive value")


def _merge_file(cfg: CfgNode, path: Path, depth: int = 0) -> None:
    """Merge a YAML file into cfg; a top-level `_BASE_: other.yaml` (relative to the file) is
    merged first, so a config states only what differs from its base (as in detectron2)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if depth > 8:
        raise ConfigError(f"{path}: _BASE_ chain deeper than 8 files (a cycle?)")
    with open(path) as handle:
        loaded = CfgNode.load_cfg(handle)  # yaml.safe_load underneath
    base = loaded.pop("_BASE_", None)
    if base:
        _merge_file(cfg, path.parent / base, depth + 1)
    cfg.merge_from_other_cfg(loaded)


def merge_config(cfg: CfgNode, cfg_file: str | None, opts: list[str] | None,
                 validator: Callable[[CfgNode], None]) -> CfgNode:
    """Merge a YAML file then `KEY VALUE` overrides into `cfg` (a defaults tree of any kind),
    validate and freeze it; every error becomes a ConfigError naming the key."""
    cfg.defrost()
    try:
        if cfg_file:
            _merge_file(cfg, Path(cfg_file))
        if opts:
            if len(opts) % 2:
                raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd list: {opts}")
            cfg.merge_from_list(list(opts))
    except ConfigError:
        raise
    except (KeyError, ValueError, AssertionError) as err:
        # yacs names the key in its message ("Non-existent config key: X", "Type mismatch ...").
        where = f" (in {cfg_file})" if cfg_file else ""
        message = err.args[0] if err.args else str(err)
        raise ConfigError(f"{message}{where}") from err
    validator(cfg)
    cfg.freeze()
    return cfg


def load_config(cfg_file: str | None = None, opts: list[str] | None = None,
                base: CfgNode | None = None) -> CfgNode:
    """Defaults (or `base`, e.g. a resumed run's config), then the YAML file, then `KEY VALUE`
    overrides; validated and frozen."""
    cfg = base.clone() if base is not None else get_cfg_defaults()
    return merge_config(cfg, cfg_file, opts, validate)


def config_from_string(text: str, defaults: CfgNode | None = None) -> CfgNode:
    """Rebuild a config saved as YAML text (e.g. inside a checkpoint) over `defaults` (the main
    tree unless given, e.g. the GAN's); safe_load, no object tags.

    Keys added to the defaults after the checkpoint was written keep their default values.
    """
    cfg = defaults.clone() if defaults is not None else get_cfg_defaults()
    cfg.defrost()
    try:
        saved = CfgNode.load_cfg(text)  # yacs parses with yaml.safe_load
        cfg.merge_from_other_cfg(saved)
    except yaml.YAMLError as err:  # e.g. a !!python/object tag, which safe_load never builds
        raise ConfigError(f"the saved config is not plain YAML and was refused: "
                          f"{str(err).splitlines()[0]}") from err
    except (KeyError, ValueError, AssertionError) as err:
        raise ConfigError(f"the saved config does not fit this version's keys: {err}") from err
    cfg.freeze()
    return cfg
