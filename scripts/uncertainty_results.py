"""How good is the predictive uncertainty? DEX vs Gaussian vs Laplace heads, each evaluated
plain, with TTA, with MC-Dropout, as an ensemble of seeds, and all combined; raw and σ-scaled.

python scripts/uncertainty_results.py [--fraction 0.1 --epochs 5 --size 64] [--runs DIR]
    [--results results/uncertainty]

Trains every (head, seed) with train.py and evaluates with test.py (subprocesses; a finished
training or evaluation is skipped, an interrupted training resumes), then writes
<results>/results.csv, <results>/comparisons.csv and <results>/README.md, with 95 % bootstrap
CIs over test images. Every number in the README is computed here.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from age_estimation.engine.checkpoint import load_checkpoint  # noqa: E402
from age_estimation.metrics import (  # noqa: E402
    ause,
    calibration_curve,
    calibration_error,
    gaussian_nll,
    interval_coverage,
    spearman_error_std,
)

CONFIGS = {
    "dex": "configs/utkface_resnet18_dex.yaml",
    "gaussian": "configs/utkface_resnet18_gaussian_hetero.yaml",
    "laplace": "configs/utkface_resnet18_laplace_hetero.yaml",
}
# Uncertainty metrics and whether lower is better (None: neither, e.g. coverage).
METRICS: dict[str, bool | None] = {
    "mae": True, "nll": True, "calibration_error": True, "ause": True, "spearman": False,
    "coverage_50": None, "coverage_90": None, "coverage_95": None,
    "width_50": True, "width_90": True, "width_95": True,
}
# Paired differences reported per calibration; σ-scaling changes neither the predictions nor
# the ranking of the stds, so MAE and AUSE are only compared once (raw).
DIFF_METRICS = {"raw": ("mae", "nll", "calibration_error", "ause"),
                "sigma-scaled": ("nll", "calibration_error")}


@dataclass(frozen=True)
class Method:
    """One way of predicting: test.py options, and whether it uses all seeds at once."""

    name: str
    options: tuple[str, ...]
    ensemble: bool


def methods(tta: str, mc: int) -> list[Method]:
    """Every inference variant, plain first (the reference of the comparisons)."""
    return [
        Method("plain", (), False),
        Method(f"tta({tta})", ("--tta", tta), False),
        Method(f"mc-dropout({mc})", ("--mc-dropout", str(mc)), False),
        Method("ensemble", (), True),
        Method("ensemble+tta+mc", ("--tta", tta, "--mc-dropout", str(mc)), True),
    ]


def run(args: list[str], log: Path) -> None:
    """A repo CLI in a subprocess, its output appended to `log` (shown on failure)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        result = subprocess.run([sys.executable, *args], cwd=REPO, stdout=handle,
                                stderr=subprocess.STDOUT)
    if result.returncode:
        sys.exit(f"failed ({result.returncode}): {' '.join(args)}\n"
                 f"{log.read_text()[-3000:]}")


def check_budget(opts: argparse.Namespace) -> None:
    """Refuse to mix budgets in one --runs folder: resuming a run under another epoch count,
    size or fraction (or reusing evaluations made with other options) would be silently wrong."""
    budget = {k: getattr(opts, k) for k in ("fraction", "epochs", "size", "dropout", "tta", "mc")}
    path = opts.runs / "budget.json"
    if path.is_file() and (saved := json.loads(path.read_text())) != budget:
        sys.exit(f"{opts.runs} holds runs made with {saved}, not {budget}: pass another --runs")
    opts.runs.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(budget))


def completed_epochs(run_dir: Path) -> int:
    """Epochs in the run's last checkpoint (0 when there is none)."""
    last = run_dir / "last.pth"
    return int(load_checkpoint(last)["epoch"]) if last.is_file() else 0


def train_all(opts: argparse.Namespace) -> None:
    """Train every (head, seed), skipping finished runs and resuming interrupted ones."""
    for head in opts.heads:
        for seed in opts.seeds:
            run_dir = opts.runs / f"{head}_s{seed}"
            done = completed_epochs(run_dir)
            if done >= opts.epochs:
                continue
            print(f"train {run_dir.name}: epoch {done} -> {opts.epochs}", flush=True)
            overrides = ["OUTPUT_DIR", str(run_dir), "DATA.FRACTION", str(opts.fraction),
                         "MODEL.IMG_SIZE", str(opts.size), "MODEL.DROPOUT", str(opts.dropout),
                         "TRAIN.EPOCHS", str(opts.epochs), "TRAIN.SEED", str(seed)]
            if opts.data_root:
                overrides += ["DATA.ROOT", str(opts.data_root)]
            start = ["--resume", str(run_dir)] if done else ["--cfg", CONFIGS[head]]
            run(["train.py", *start, *overrides], opts.runs / "logs" / f"{run_dir.name}.log")


def evaluate_all(opts: argparse.Namespace) -> dict[tuple[str, str], list[Path]]:
    """test.py for every (head, method): one predictions CSV per seed, or one for an ensemble."""
    outputs: dict[tuple[str, str], list[Path]] = {}
    for head in opts.heads:
        ckpts = [str(opts.runs / f"{head}_s{seed}" / "best.pth") for seed in opts.seeds]
        for method in methods(opts.tta, opts.mc):
            tag = method.name.replace("(", "_").replace(")", "").replace("+", "_")
            groups = [ckpts] if method.ensemble else [[c] for c in ckpts]
            paths = []
            for members in groups:
                suffix = "ens" if method.ensemble else Path(members[0]).parent.name.split("_")[-1]
                out = opts.runs / "eval" / head / f"{tag}_{suffix}.csv"
                if not out.with_suffix(".json").is_file():  # the JSON is written last
                    print(f"evaluate {head} {method.name} {suffix}", flush=True)
                    ensemble = ["--ensemble", *members[1:]] if len(members) > 1 else []
                    run(["test.py", "--resume", members[0], *ensemble, *method.options,
                         "--sigma-scale-from", "valid", "--out", str(out)],
                        opts.runs / "logs" / f"eval_{head}.log")
                paths.append(out)
            outputs[(head, method.name)] = paths
    return outputs


# ------------------------------------------------------------------------------- statistics
def metric_values(pred: np.ndarray, std: np.ndarray, age: np.ndarray) -> dict[str, float]:
    """Every METRICS entry for one set of predictions."""
    out = {"mae": float(np.mean(np.abs(pred - age))), "nll": gaussian_nll(pred, std, age),
           "calibration_error": calibration_error(pred, std, age),
           "ause": ause(pred, std, age)[0], "spearman": spearman_error_std(pred, std, age)}
    for level in (50, 90, 95):
        out[f"coverage_{level}"], out[f"width_{level}"] = interval_coverage(
            pred, std, age, level / 100)
    return out


def bootstrap(frames: list[pd.DataFrame], std_column: str, draws: np.ndarray) -> pd.DataFrame:
    """Metrics (averaged over `frames`, e.g. seeds) on all images (row 0) then on each row of
    image indices `draws` (rows 1..): every method uses the same draws, so differences pair."""
    arrays = [(f["pred"].to_numpy(), f[std_column].to_numpy(), f["age"].to_numpy())
              for f in frames]
    rows = []
    for idx in [np.arange(draws.shape[1]), *draws]:
        per_frame = [metric_values(p[idx], s[idx], a[idx]) for p, s, a in arrays]
        rows.append({k: float(np.mean([m[k] for m in per_frame])) for k in METRICS})
    return pd.DataFrame(rows)


def interval(values: pd.Series) -> tuple[float, float, float]:
    """(estimate on all images, 2.5 %, 97.5 % bootstrap percentiles)."""
    low, high = np.nanquantile(values.iloc[1:], [0.025, 0.975])
    return float(values.iloc[0]), float(low), float(high)


def load_frames(paths: list[Path]) -> list[pd.DataFrame]:
    frames = [pd.read_csv(p) for p in paths]
    for frame in frames[1:]:
        if not frame["id"].equals(frames[0]["id"]):
            raise ValueError(f"predictions are not on the same images in the same order: {paths}")
    return frames


def summarize_results(opts: argparse.Namespace, outputs: dict[tuple[str, str], list[Path]]
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """results (one row per head x method x calibration, metrics with CIs) and comparisons
    (paired differences of each method to plain, and of each head to DEX, with CIs)."""
    frames = {key: load_frames(paths) for key, paths in outputs.items()}
    n = len(next(iter(frames.values()))[0])
    draws = np.random.default_rng(0).integers(0, n, size=(opts.n_boot, n))
    boots: dict[tuple[str, str, str], pd.DataFrame] = {}
    rows = []
    for (head, method), group in frames.items():
        summaries = [json.loads(p.with_suffix(".json").read_text())
                     for p in outputs[(head, method)]]
        for calibration, column in (("raw", "std"), ("sigma-scaled", "std_scaled")):
            boot = bootstrap(group, column, draws)
            boots[(head, method, calibration)] = boot
            row = {"head": head, "method": method, "calibration": calibration, "n": n,
                   "n_valid": summaries[0]["sigma_scale"]["n_fit"], "members": len(group),
                   "sigma_scale": float(np.mean([s["sigma_scale"]["value"] for s in summaries]))
                   if calibration == "sigma-scaled" else 1.0,
                   "mae_seed_sd": float(np.std([s["mae"] for s in summaries], ddof=1))
                   if len(summaries) > 1 else math.nan,
                   "eval_seconds": float(sum(s["inference"]["seconds"] for s in summaries))}
            for metric in METRICS:
                row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = interval(boot[metric])
            rows.append(row)
    results = pd.DataFrame(rows)
    comparisons = []
    plain = methods(opts.tta, opts.mc)[0].name
    for (head, method, calibration), boot in boots.items():
        references = [(f"{head} {plain}", boots[(head, plain, calibration)])] \
            if method != plain else []
        if head != "dex" and ("dex", method, calibration) in boots:
            references.append((f"dex {method}", boots[("dex", method, calibration)]))
        if calibration != "raw":
            references.append((f"{head} {method} raw", boots[(head, method, "raw")]))
        for reference, ref in references:
            for metric in DIFF_METRICS[calibration]:
                diff, low, high = interval(boot[metric] - ref[metric])
                comparisons.append({"calibration": calibration, "a": f"{head} {method}",
                                    "b": reference, "metric": metric, "diff": diff,
                                    "low": low, "high": high})
    return results, pd.DataFrame(comparisons)


# ------------------------------------------------------------------------------- report
def fmt_ci(row: pd.Series, metric: str, digits: int = 2) -> str:
    value, low, high = row[metric], row[f"{metric}_low"], row[f"{metric}_high"]
    if not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown_table(results: pd.DataFrame, calibration: str) -> list[str]:
    digits = {"calibration_error": 3, "ause": 3, "spearman": 3, "coverage_50": 3,
              "coverage_90": 3, "coverage_95": 3}
    shown = ("mae", "nll", "calibration_error", "ause", "spearman", "coverage_50",
             "coverage_90", "coverage_95", "width_90")
    header = ["head", "method", "σ scale", *shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in results[results["calibration"] == calibration].iterrows():
        cells = [row["head"], row["method"], f"{row['sigma_scale']:.3f}"]
        cells += [fmt_ci(row, m, digits.get(m, 2)) for m in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def sentence(row: pd.Series) -> str:
    """What a paired difference says, claiming a change only when its CI excludes zero."""
    better_when_lower = METRICS[row["metric"]]
    ci = f"{row['diff']:+.3g} [{row['low']:+.3g}, {row['high']:+.3g}]"
    if row["low"] <= 0 <= row["high"]:
        verdict = "no significant difference"
    elif (row["diff"] < 0) == better_when_lower:
        verdict = "better"
    else:
        verdict = "worse"
    return f"{row['a']} vs {row['b']}, {row['metric']}: {verdict} ({ci})"


def findings(comparisons: pd.DataFrame) -> list[str]:
    """Bullets generated from the paired CIs: one per (comparison, calibration) pair."""
    lines = []
    for (calibration, a, b), group in comparisons.groupby(["calibration", "a", "b"], sort=False):
        parts = [sentence(r).split(", ", 1)[1] for _, r in group.iterrows()]
        lines.append(f"- ({calibration}) **{a}** vs {b}: " + "; ".join(parts))
    return lines


def count_verdicts(comparisons: pd.DataFrame, metric: str) -> str:
    rows = comparisons[comparisons["metric"] == metric]
    verdicts = [sentence(r).rsplit(": ", 1)[1].split(" (")[0] for _, r in rows.iterrows()]
    return ", ".join(f"{verdicts.count(v)} {v}" for v in
                     ("better", "worse", "no significant difference"))


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"CPU only: {cpu}, {len(names) or '?'} cores, {torch.get_num_threads()} torch threads"


def train_seconds(opts: argparse.Namespace) -> float:
    total = 0.0
    for head in opts.heads:
        for seed in opts.seeds:
            metrics = pd.read_csv(opts.runs / f"{head}_s{seed}" / "metrics.csv")
            total += float(metrics["epoch_seconds"].sum())
    return total


def reliability_figures(outputs: dict[tuple[str, str], list[Path]], folder: Path) -> list[str]:
    """One reliability diagram per head (every method, raw and σ-scaled, first member's CSV
    for single-model methods); returns the markdown image lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = []
    for head in dict.fromkeys(h for h, _ in outputs):
        fig = Figure(figsize=(9, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        for col, (title, column) in enumerate((("raw", "std"), ("σ-scaled", "std_scaled"))):
            ax = fig.add_subplot(1, 2, col + 1)
            ax.plot([0, 1], [0, 1], "--", color="gray", label="ideal")
            for (h, method), paths in outputs.items():
                if h == head:
                    frame = pd.read_csv(paths[0])
                    expected, observed = calibration_curve(frame["pred"], frame[column],
                                                           frame["age"])
                    ax.plot(expected, observed, label=method)
            ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", title=f"{head}: {title}",
                   xlabel="expected coverage", ylabel="observed coverage")
            ax.legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        name = f"reliability_{head}.png"
        fig.savefig(folder / name, format="png")
        lines.append(f"![reliability {head}]({name})")
    return lines


def write_report(opts: argparse.Namespace, outputs: dict[tuple[str, str], list[Path]],
                 results: pd.DataFrame, comparisons: pd.DataFrame, command: str) -> None:
    import torch

    opts.results.mkdir(parents=True, exist_ok=True)
    results.to_csv(opts.results / "results.csv", index=False)
    comparisons.to_csv(opts.results / "comparisons.csv", index=False)
    n = int(results["n"].iloc[0])
    vs_plain = comparisons[comparisons["b"].str.endswith(" plain")]
    raw_vs_plain = vs_plain[vs_plain["calibration"] == "raw"]
    scaled_vs_plain = vs_plain[vs_plain["calibration"] == "sigma-scaled"]
    runs = len(opts.heads) * len(opts.seeds)
    lines = [
        "# Uncertainty at inference: how good is it?",
        "",
        f"Generated by `{command}` — every number below is computed by the script.",
        "",
        "## Protocol",
        "",
        f"- Data: UTKFace (aligned crops), the fixed split of `splits.csv`; training on "
        f"{opts.fraction:g} of the train split (stratified by age, per seed), σ-scale fitted on "
        f"the {int(results['n_valid'].iloc[0])} valid images, all numbers on the {n} test "
        f"images.",
        f"- Model: ResNet-18 from random weights (no pretrained weights offline), "
        f"{opts.size} px, MODEL.DROPOUT {opts.dropout}, {opts.epochs} epochs (AdamW, cosine), "
        f"best-valid-MAE checkpoint; heads {', '.join(opts.heads)} (configs "
        f"{', '.join(f'`{CONFIGS[h]}`' for h in opts.heads)}); seeds "
        f"{', '.join(map(str, opts.seeds))}.",
        f"- Inference: plain; TTA `{opts.tta}`; MC-Dropout {opts.mc} head samples; ensemble "
        f"of the {len(opts.seeds)} seeds; ensemble + TTA + MC-Dropout. All combined by one "
        f"mixture rule (total var = mean of member vars + var of member means). Single-model "
        f"rows average the metric over the {len(opts.seeds)} seeds (`mae_seed_sd` in "
        f"results.csv is the spread of MAE across seeds).",
        "- Uncertainty metrics treat each prediction as N(pred, std²): Gaussian NLL (nats), "
        "mean absolute calibration error of central intervals, AUSE (MAE sparsification, "
        "normalised), Spearman(std, |error|), coverage of 50/90/95 % intervals, 90 % width "
        "(years). σ-scaled: std × the NLL-optimal scale fitted on valid.",
        f"- CIs: 95 % percentile bootstrap over test images ({opts.n_boot} resamples, the same "
        f"resamples for every row, so differences are paired); they do not include the "
        f"seed-to-seed variation of training.",
        f"- Hardware: {hardware()}, torch {torch.__version__}; wall time "
        f"{train_seconds(opts) / 60:.1f} min training ({runs} runs) + "
        f"{results.loc[results['calibration'] == 'raw', 'eval_seconds'].sum() / 60:.1f} min "
        f"evaluation.",
        "",
        "## Raw uncertainty",
        "",
        *markdown_table(results, "raw"),
        "",
        "## After σ-scaling (fitted on valid)",
        "",
        *markdown_table(results, "sigma-scaled"),
        "",
        "## Reliability diagrams (test; seed 0 for single-model methods)",
        "",
        *reliability_figures(outputs, opts.results),
        "",
        "## What helps and what doesn't",
        "",
        "Paired bootstrap differences (a − b, 95 % CI); a change is claimed only when its CI "
        "excludes zero. Lower is better for every metric listed.",
        "",
        f"- Every method vs plain inference of the same head — MAE: "
        f"{count_verdicts(raw_vs_plain, 'mae')}; AUSE: {count_verdicts(raw_vs_plain, 'ause')}; "
        f"raw NLL: {count_verdicts(raw_vs_plain, 'nll')}; raw calibration error: "
        f"{count_verdicts(raw_vs_plain, 'calibration_error')}; σ-scaled NLL: "
        f"{count_verdicts(scaled_vs_plain, 'nll')}; σ-scaled calibration error: "
        f"{count_verdicts(scaled_vs_plain, 'calibration_error')}.",
        *findings(comparisons),
        "",
    ]
    (opts.results / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=REPO / "output" / "uncertainty",
                        help="training runs and evaluation CSVs (resumable)")
    parser.add_argument("--results", type=Path, default=REPO / "results" / "uncertainty")
    parser.add_argument("--data-root", default="", help="UTKFace folder (default: shared data)")
    parser.add_argument("--heads", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the train split")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="MODEL.IMG_SIZE")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--tta", default="flip", help="test.py --tta value")
    parser.add_argument("--mc", type=int, default=20, help="MC-Dropout samples")
    parser.add_argument("--n-boot", type=int, default=1000)
    opts = parser.parse_args(argv)
    if len(opts.seeds) < 2:
        parser.error("an ensemble needs at least 2 seeds")
    command = "python scripts/uncertainty_results.py " + " ".join(argv or sys.argv[1:])
    start = time.perf_counter()
    check_budget(opts)
    train_all(opts)
    outputs = evaluate_all(opts)
    results, comparisons = summarize_results(opts, outputs)
    write_report(opts, outputs, results, comparisons, command.strip())
    print(f"wrote {opts.results} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
