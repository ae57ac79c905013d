"""Deployment artefacts: a compact bundled checkpoint (+ its model card) and ONNX / TorchScript
exports whose graph takes raw uint8 RGB faces and returns (mean age, aleatoric std) in years."""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from age_estimation.config import config_from_string
from age_estimation.engine.checkpoint import load_checkpoint, load_model, save_checkpoint

# Names of the exported graph's input and outputs (the ONNX demo path relies on them).
INPUT_NAME, OUTPUT_NAMES = "images", ("age", "std_aleatoric")
# ONNX metadata key holding the model's config YAML, so an export stays traceable to its run.
CONFIG_METADATA_KEY = "age_estimation.config"


class PredictModule(nn.Module):
    """Model + head.predict: uint8 [B, 3, S, S] -> (mean [B], std_aleatoric [B]) in years."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        prediction = self.model.predict(images)
        return prediction.mean, prediction.std_aleatoric


def _example_input(size: int) -> Tensor:
    # Batch of 2 so the tracer cannot specialise anything on a batch of one.
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=generator)


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Export a checkpoint to ONNX with a dynamic batch axis and the config in the metadata."""
    import onnx

    model, cfg = load_model(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    # The TorchScript-based exporter: the dynamo one needs onnxscript, which is not a dependency.
    torch.onnx.export(PredictModule(model), (_example_input(cfg.MODEL.IMG_SIZE),), str(out),
                      dynamo=False, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                      dynamic_axes=axes, opset_version=opset)
    graph = onnx.load(str(out))
    entry = graph.metadata_props.add()
    entry.key, entry.value = CONFIG_METADATA_KEY, cfg.dump()
    onnx.save(graph, str(out))
    return out


def export_torchscript(checkpoint: str | Path, out: str | Path) -> Path:
    """Trace a checkpoint to a TorchScript file (same inputs and outputs as the ONNX graph)."""
    model, cfg = load_model(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    traced = torch.jit.trace(PredictModule(model), (_example_input(cfg.MODEL.IMG_SIZE),))
    traced.save(str(out), _extra_files={"config.yaml": cfg.dump()})
    return out


# ------------------------------------------------------------------------------ bundling


def _run_wall_seconds(run_dir: Path, epochs: int | None = None) -> float | None:
    """Training wall time of the first `epochs` epochs (all when None), from the run's
    metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if epochs is None or int(r["epoch"]) <= epochs]
    return sum(float(r["epoch_seconds"]) for r in rows) if rows else None


def _whole_run(meta: dict[str, Any]) -> str:
    """The whole run's time when the checkpoint is an earlier epoch (a best.pth of a fixed
    schedule only comes out of the whole run)."""
    run, wall = meta.get("run_wall_seconds"), meta.get("train_wall_seconds")
    return f"; the whole run took {run / 3600:.2f} h ({run:.0f} s)" if run and run > wall else ""


def _check_same_model(summary: dict[str, Any], checkpoints: Sequence[Path],
                      test_json: str | Path) -> None:
    """Refuse a test.py summary of another model (or of another ensemble, or of one member):
    its numbers would end up on this card."""
    evaluated = summary.get("inference", {}).get("checkpoints")
    if evaluated is None:  # a summary without provenance: nothing to check
        return
    # The mixture does not depend on the members' order, only on which (and how many) they are
    # and, with --ensemble-weights, on each one's weight (checked by ensemble_card_fields).
    if sorted(p for p, _ in _member_weights(summary)) != sorted(c.resolve() for c in checkpoints):
        raise ValueError(f"{test_json} evaluated {', '.join(map(str, evaluated))}, not "
                         f"{', '.join(map(str, checkpoints))}: bundle what was tested")


def _member_weights(summary: dict[str, Any]) -> list[tuple[Path, float]]:
    """(resolved checkpoint, weight) of each model a test.py summary evaluated, in its order;
    weight 1 for each when they were mixed equally (no --ensemble-weights)."""
    inference = summary.get("inference", {})
    evaluated = [Path(p) / "last.pth" if Path(p).is_dir() else Path(p)
                 for p in inference.get("checkpoints") or []]
    weights = inference.get("weights") or [1.0] * len(evaluated)
    return [(p.resolve(), float(w)) for p, w in zip(evaluated, weights)]


def _mixture_shares(weights: list[tuple[Path, float]]) -> list[tuple[Path, float]]:
    """_member_weights normalised to sum 1, sorted: equal for two summaries of one mixture."""
    total = sum(w for _, w in weights) or 1.0
    return sorted((p, round(w / total, 9)) for p, w in weights)


def _evaluation_meta(test_json: str | Path, checkpoints: Sequence[Path]) -> dict[str, Any]:
    """What the card reports from one test.py summary of `checkpoints` (refused if it is of
    another model): size, MAE with its bootstrap CI, CS@5, MAE by age group, provenance."""
    summary = json.loads(Path(test_json).read_text())
    _check_same_model(summary, checkpoints, test_json)
    return {
        "file": str(test_json),
        **{k: summary.get(k) for k in ("n", "mae", "mae_ci", "cs5", "by_group")},
        **{k: summary.get("inference", {}).get(k) for k in ("split", "data", "tta")},
        # summaries from before test.py --point reported the mean
        "point": summary.get("inference", {}).get("point", "mean"),
    }


def bundle_checkpoint(checkpoint: str | Path, out: str | Path, test_json: str | Path | None = None,
                      command: str = "", cross_dataset_json: str | Path | None = None
                      ) -> dict[str, Any]:
    """Write an inference-only checkpoint: fp16 float weights, the config text and metadata
    (plain data, so `load_model` reads it with weights_only=True). Returns the metadata.

    test_json / cross_dataset_json: test.py summaries of this checkpoint on the in-domain test
    split and on another dataset (e.g. FG-NET), copied into the metadata for the card."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / "last.pth"
    run_dir = checkpoint.parent
    epoch = int(state["epoch"]) if "epoch" in state else None
    meta: dict[str, Any] = {
        "source": str(checkpoint.resolve()),
        "epoch": epoch,
        "best_valid_mae": float(state["best_mae"]) if "best_mae" in state else None,
        "train_wall_seconds": _run_wall_seconds(run_dir, epoch) if epoch else None,
        # a best.pth picked from a fixed schedule costs the whole run to reproduce
        "run_wall_seconds": _run_wall_seconds(run_dir),
        "command": command,
        "bundled": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": str(torch.__version__),  # a TorchVersion object would not load safely
    }
    if test_json:
        meta["test"] = _evaluation_meta(test_json, [checkpoint])
    if cross_dataset_json:
        meta["cross_dataset"] = _evaluation_meta(cross_dataset_json, [checkpoint])
    # fp16 halves the file (a ResNet-18 fits in 25 MB); load_model casts back to float32.
    weights = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint({"model": weights, "config": state["config"], "meta": meta}, out)
    Path(out).chmod(0o644)  # save_checkpoint's temporary file is private (0600); this is shared
    load_model(out)  # fail here, not in the demo, if the bundle cannot be loaded safely
    return meta


# ------------------------------------------------------------------------------ model card

# A field of the card is the text between `<!-- name -->` and `<!-- /name -->`: filling it in
# keeps the markers, so the card can be re-filled whenever the bundled model changes.
_FIELD = re.compile(r"(<!-- (\w+) -->)(.*?)(<!-- /\2 -->)", re.DOTALL)


def _fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not given"
    return f"{value:.{digits}f}{unit}"


def _split_counts(cfg_text: str) -> str:
    """'train N · valid N · test N' from the dataset's splits.csv, where it can be found."""
    import pandas as pd

    from age_estimation.data.datasets import default_data_dir

    cfg = config_from_string(cfg_text)
    root = Path(cfg.DATA.ROOT) if cfg.DATA.ROOT else default_data_dir() / cfg.DATA.DATASET
    path = root / "splits.csv"
    if not path.is_file():
        return f"the dataset's fixed split ({path} not found here to count it)"
    counts = pd.read_csv(path)["split"].value_counts()
    return " · ".join(f"{name} {counts.get(name, 0):,}" for name in ("train", "valid", "test"))


def _evaluation_line(evaluation: dict[str, Any]) -> str:
    ci = evaluation.get("mae_ci")
    interval = f" (95 % bootstrap CI {_fmt(ci[0])}–{_fmt(ci[1])})" if ci else ""
    return (f"MAE {_fmt(evaluation.get('mae'))} years{interval}, CS@5 "
            f"{_fmt(evaluation.get('cs5'), 3)} on {evaluation.get('n')} images (split "
            f"`{evaluation.get('split')}`, data `{evaluation.get('data')}`, TTA "
            f"{evaluation.get('tta')}, point estimate: the {evaluation.get('point')}; from "
            f"`{evaluation['file']}`)")


def _age_group_table(evaluation: dict[str, Any]) -> str:
    groups = evaluation.get("by_group") or []
    if not groups:
        return "not given (the test summary has no `by_group`)"
    rows = "".join(f"| {g['group']} | {g['n']} | {_fmt(g.get('mae'))} | "
                   f"{_fmt(g.get('bias'))} |\n" for g in groups)
    return ("\n\n| age group | images | MAE | bias (pred − age) |\n| --- | ---: | ---: | ---: |\n"
            f"{rows}\n")


def model_card_fields(bundle: str | Path) -> dict[str, str]:
    """The card's field values, all read from a bundled checkpoint (nothing typed by hand)."""
    bundle = Path(bundle)
    state = load_checkpoint(bundle)
    meta, cfg_text = state.get("meta", {}), state["config"]
    cfg = config_from_string(cfg_text)
    test = meta.get("test") or {}
    wall = meta.get("train_wall_seconds")
    params = sum(v.numel() for v in state["model"].values() if v.is_floating_point())
    cross = meta.get("cross_dataset")
    source = Path(meta.get("source", "RUN/checkpoint.pth"))
    command = meta.get("command") or f"python train.py --cfg {source.parent}/config.yaml"
    return {
        "file": f"`{bundle.name}`, {bundle.stat().st_size / 2**20:.1f} MiB, sha256 "
                f"`{hashlib.sha256(bundle.read_bytes()).hexdigest()[:16]}…`, bundled "
                f"{meta.get('bundled', '?')} with torch {meta.get('torch', '?')}",
        "architecture": f"{cfg.MODEL.BACKBONE} + `{cfg.MODEL.HEAD}` head, {params / 1e6:.1f} M "
                        f"parameters stored in fp16, input uint8 RGB "
                        f"{cfg.MODEL.IMG_SIZE}x{cfg.MODEL.IMG_SIZE} UTKFace-aligned crops",
        "data": f"`{cfg.DATA.DATASET}`",
        "split": _split_counts(cfg_text),
        "source": f"`{source}`, epoch {meta.get('epoch')}, best valid MAE "
                  f"{_fmt(meta.get('best_valid_mae'))} years",
        "command": f"`{command}`",
        "wall_time": (f"{wall / 3600:.2f} h ({wall:.0f} s, sum of epoch_seconds in "
                      f"metrics.csv up to the checkpoint's epoch){_whole_run(meta)}" if wall
                      else "unknown (no metrics.csv next to the source)"),
        "test": _evaluation_line(test) if test else "not evaluated (pass --test_json to "
                                                    "bundle_model.py)",
        "by_age_group": _age_group_table(test) if test else "not evaluated",
        "cross_dataset": _evaluation_line(cross) if cross else "not evaluated (pass "
                                                               "--cross_dataset_json)",
        "config": f"\n```yaml\n{cfg_text.strip()}\n```\n",
    }


def ensemble_card_fields(bundles: Sequence[str | Path], test_json: str | Path | None = None,
                         cross_dataset_json: str | Path | None = None) -> dict[str, str]:
    """The card fields of an ensemble of bundled models (scripts/bundle_model.py --ensemble):
    a table of its members (from each bundle) and the ensemble's own test.py summaries, which
    must have evaluated exactly these bundles."""
    bundles = [Path(b) for b in bundles]
    rows = []
    for bundle in bundles:
        fields = model_card_fields(bundle)
        rows.append(f"| `{bundle.name}` | {fields['architecture']} | {fields['source']} | "
                    f"{fields['command']} | {fields['wall_time'].split(' (')[0]} |")
    total = sum(b.stat().st_size for b in bundles) / 2**20
    test = _evaluation_meta(test_json, bundles) if test_json else {}
    cross = _evaluation_meta(cross_dataset_json, bundles) if cross_dataset_json else {}
    test_weights, cross_weights = (
        _member_weights(json.loads(Path(f).read_text())) if f else []
        for f in (test_json, cross_dataset_json))
    if test_weights and cross_weights and (_mixture_shares(test_weights)
                                           != _mixture_shares(cross_weights)):
        raise ValueError(f"{test_json} and {cross_dataset_json} weighted the members "
                         f"differently (--ensemble-weights): one ensemble per card")
    first, others = bundles[0], " ".join(map(str, bundles[1:]))
    weights = dict(test_weights)
    member_weights = [weights.get(b.resolve(), 1.0) for b in bundles]
    options = ""
    if len(set(member_weights)) > 1:
        options += " --ensemble-weights " + " ".join(f"{w:g}" for w in member_weights)
    views = test.get("tta") or ["identity"]
    options += f" --tta {','.join(views)}" if list(views) != ["identity"] else ""
    options += " --point median" if test.get("point") == "median" else ""
    return {
        "members": ("\n\n| file | architecture | source | command | training time to that epoch |\n"
                    "| --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"),
        "files": f"{len(bundles)} files, {total:.1f} MiB in all",
        "usage": f"`python demo.py --resume {first} --ensemble {others}{options}` (the test "
                 f"split's inference; the same options work for test.py)",
        "test": _evaluation_line(test) if test else "not evaluated (pass --test_json)",
        "by_age_group": _age_group_table(test) if test else "not evaluated",
        "cross_dataset": _evaluation_line(cross) if cross else "not evaluated (pass "
                                                               "--cross_dataset_json)",
    }


def fill_model_card(template: str, fields: dict[str, str]) -> str:
    """Replace each `<!-- name -->…<!-- /name -->` field of `template` present in `fields`."""
    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in fields:
            return match.group(0)
        return f"{match.group(1)}{fields[name]}{match.group(4)}"

    return _FIELD.sub(replace, template)
