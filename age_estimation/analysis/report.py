"""Build results/REPORT.md (+ PNG figures) from the files the suite runner stored.

Per suite: a table (per variant: MAE averaged over seeds with a bootstrap 95 % CI that resamples
test images, the seed-to-seed s.d., and the paired difference from the baseline variant with its
CI), a figure and findings that follow from the numbers: a difference is only called one when its
CI excludes zero. Then an error analysis over every run's per-image test predictions. Every
number comes from results/runs/*/*/{metrics.json, predictions_*.csv}; nothing is typed by hand.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from age_estimation.analysis.suites import REPO
from age_estimation.data.imbalance import SHOTS, age_shot_groups, ages_from_histogram
from age_estimation.metrics import (
    AGE_GROUPS,
    age_group,
    bootstrap_ci,
    bootstrap_diff_ci,
    calibration_curve,
    mae_by,
    mae_by_group,
    uncertainty_summary,
)

N_BOOT = 2000
ATTRIBUTES = ("gender", "race")
# UTKFace's attribute codes (its file names), shown next to the code in the error analysis.
ATTRIBUTE_NAMES = {"gender": {0: "male", 1: "female"},
                   "race": {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}}
# Evaluation extras named KIND_LEVEL (robustness: blur_3, blur_5) form one severity curve per
# kind, with the clean split as level 0.
SEVERITY_NAME = re.compile(r"(?P<kind>.+)_(?P<level>\d+)")
# Suites whose variants differ in how the predictive std is made (output heads; TTA, MC-Dropout
# and ensembles): the report's uncertainty section compares them.
UNCERTAINTY_SUITES = ("formulation", "ensembling")
# Free-text provenance of the runs (which machine, which data copy, which command), written by
# whoever ran them; the report quotes it under the header.
RUNS_NOTES = "README.md"


@dataclass
class SuiteResults:
    """One suite's stored description (suite.json) and its finished runs' metrics.json."""

    name: str
    info: dict[str, Any]
    folder: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    # Prediction CSVs already read, by path: the table, group and pairing steps each walk the
    # same runs, and a suite's CSVs hold up to tens of thousands of rows.
    _frames: dict[Path, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    def variants(self) -> list[str]:
        """Variants with at least one finished run, in the suite's order."""
        present = {r["variant"] for r in self.runs}
        return [v["name"] for v in self.info["variants"] if v["name"] in present]

    def predictions(self, run: dict[str, Any], evaluation: str) -> pd.DataFrame | None:
        """A run's per-image predictions on one evaluation (read once; callers must not
        modify the frame in place), None where the run has none."""
        path = self.folder / run["run"] / f"predictions_{evaluation}.csv"
        if path not in self._frames:
            try:
                self._frames[path] = pd.read_csv(path) if path.is_file() else None
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
                raise ValueError(f"{path}: not a readable predictions CSV ({err}); rerun the "
                                 f"run's evaluation or delete the file") from err
        return self._frames[path]


def load_results(results_dir: str | Path) -> list[SuiteResults]:
    """Every suite folder under results_dir that has a suite.json, with its finished runs."""
    suites = []
    for info_path in sorted(Path(results_dir).glob("*/suite.json")):
        info = json.loads(info_path.read_text())
        suite = SuiteResults(info["name"], info, info_path.parent)
        for metrics in sorted(info_path.parent.glob("*/metrics.json")):
            suite.runs.append(json.loads(metrics.read_text()))
        suites.append(suite)
    return suites


def absolute_errors(frame: pd.DataFrame) -> pd.Series:
    """|pred - age| of a predictions CSV, indexed by image id (for pairing runs)."""
    return (frame["pred"] - frame["age"]).abs().set_axis(frame["id"])


def seed_averaged_errors(suite: SuiteResults, variant: str, evaluation: str) -> pd.DataFrame:
    """Absolute errors of a variant's runs: one column per seed, rows = images (by id) that
    every seed predicted."""
    columns = {}
    for run in suite.runs:
        if run["variant"] != variant:
            continue
        frame = suite.predictions(run, evaluation)
        if frame is not None:
            columns[run["seed"]] = absolute_errors(frame)
    return pd.DataFrame(columns).dropna() if columns else pd.DataFrame()


@dataclass
class SeedPairing:
    """A variant's and the baseline's seed-averaged |errors| (by image id) over the runs that
    pair up: the variant's runs whose models (an ensemble's members) come from seeds the
    baseline has finished, and the baseline's runs from the seeds those cover. A partly run
    suite so never sets one seed's model against another's, while an ensemble of seeds 0-4 is
    still set against the single models of seeds 0-4."""

    variant: pd.Series
    baseline: pd.Series
    seeds: list[int]  # every seed whose model takes part, on either side
    partial: bool  # some finished run of either side was left out


def pair_seeds(suite: SuiteResults, variant_errors: pd.DataFrame, variant: str,
               baseline_errors: pd.DataFrame) -> SeedPairing | None:
    """Pair two variants' runs (``seed_averaged_errors`` frames; the second is the suite's
    baseline) by seed; None when no run of the variant pairs with one of the baseline."""
    baseline = suite.info["baseline"]
    members = {(r["variant"], r["seed"]): set(r.get("members") or [r["seed"]])
               for r in suite.runs}

    def covered(name: str, seeds: Iterable[int]) -> set[int]:
        return set().union(*(members[(name, seed)] for seed in seeds))

    base_cover = covered(baseline, baseline_errors.columns)
    mine = [s for s in variant_errors.columns if members[(variant, s)] <= base_cover]
    theirs = [s for s in baseline_errors.columns
              if members[(baseline, s)] <= covered(variant, mine)]
    if not mine or not theirs:
        return None
    return SeedPairing(variant_errors[mine].mean(axis=1), baseline_errors[theirs].mean(axis=1),
                       sorted(covered(variant, mine) | covered(baseline, theirs)),
                       len(mine) < variant_errors.shape[1]
                       or len(theirs) < baseline_errors.shape[1])


def variant_table(suite: SuiteResults, evaluation: str = "test") -> pd.DataFrame:
    """Per variant: seeds, images, MAE (mean over seeds) with its image-bootstrap 95 % CI,
    seed s.d., MAE - baseline MAE with a paired image-bootstrap 95 % CI, GFLOPs and
    parameters (millions). The difference pairs seeds as well as images (``pair_seeds``;
    ``diff_seeds``: the seeds used, ``diff_partial``: some finished run left out)."""
    errors = {v: seed_averaged_errors(suite, v, evaluation) for v in suite.variants()}
    errors = {v: e for v, e in errors.items() if not e.empty}
    baseline = suite.info["baseline"]
    base = errors.get(baseline)
    gflops = {r["variant"]: r.get("cost", {}).get("gflops", math.nan) for r in suite.runs}
    params = {r["variant"]: r.get("cost", {}).get("params_m", math.nan) for r in suite.runs}
    rows = []
    for variant, frame in errors.items():
        per_image = frame.mean(axis=1)  # average over seeds, then resample images
        mae, low, high = bootstrap_ci(per_image.to_numpy(), n_boot=N_BOOT)
        row = {"variant": variant, "seeds": frame.shape[1], "images": len(frame), "mae": mae,
               "ci_low": low, "ci_high": high,
               "seed_sd": float(frame.mean().std(ddof=1)) if frame.shape[1] > 1 else math.nan,
               "diff": math.nan, "diff_low": math.nan, "diff_high": math.nan, "diff_seeds": [],
               "diff_partial": False,
               "gflops": gflops.get(variant, math.nan), "params_m": params.get(variant, math.nan)}
        pairing = (pair_seeds(suite, frame, variant, base)
                   if base is not None and variant != baseline else None)
        if pairing is not None:
            common = pairing.variant.index.intersection(pairing.baseline.index)
            row["diff"], row["diff_low"], row["diff_high"] = bootstrap_diff_ci(
                pairing.variant[common].to_numpy(), pairing.baseline[common].to_numpy(),
                n_boot=N_BOOT)
            row["diff_seeds"], row["diff_partial"] = pairing.seeds, pairing.partial
        rows.append(row)
    return pd.DataFrame(rows)


def group_table(suite: SuiteResults, evaluation: str = "test") -> pd.DataFrame:
    """MAE per variant (rows) and age group (columns, AGE_GROUPS order) of the seed-averaged
    per-image errors, then per many / medium / few-shot age when the runs' metrics have it; a
    last row `images` counts each column's images."""
    ages = {}
    for run in suite.runs:
        frame = suite.predictions(run, evaluation)
        if frame is not None:
            ages.update(zip(frame["id"], frame["age"]))
    rows = {}
    for variant in suite.variants():
        errors = seed_averaged_errors(suite, variant, evaluation)
        if errors.empty:
            continue
        groups = age_group(errors.index.map(ages).to_numpy(dtype=float))
        rows[variant] = errors.mean(axis=1).groupby(groups).mean()
    if not rows:
        return pd.DataFrame()
    order = [g[0] for g in AGE_GROUPS]
    table = pd.DataFrame(rows).T.reindex(columns=order)
    counts = pd.Series(age_group(np.fromiter(ages.values(), float))).value_counts()
    table.loc["images"] = counts.reindex(order).fillna(0)
    # Many / medium / few-shot ages (by training images per age), from each run's metrics:
    # the mean of per-seed MAEs equals the MAE of the seed-averaged absolute errors.
    shots = [(run["variant"], entry) for run in suite.runs
             for entry in run.get("evaluations", {}).get(evaluation, {}).get("by_shot") or []]
    if shots:
        frame = pd.DataFrame([{"variant": v, "shot": f"{e['shot']}-shot", "mae": e["mae"],
                               "n": e["n"]} for v, e in shots])
        shot_order = list(dict.fromkeys(frame["shot"]))
        maes = frame.pivot_table(index="variant", columns="shot", values="mae", aggfunc="mean")
        table = table.join(maes.reindex(columns=shot_order))
        # A shot's images depend on the training set (DATA.FRACTION changes them): a count
        # only where every run agrees.
        counts = frame.groupby("shot")["n"].agg(lambda n: n.iloc[0] if n.nunique() == 1
                                                 else math.nan)
        table.loc["images", shot_order] = counts.reindex(shot_order)
    return table


def image_shots(run: dict[str, Any], frame: pd.DataFrame) -> pd.Series | None:
    """Each predicted image's shot ('many', 'medium', 'few': training images of its integer age)
    by id, from the training-age counts the run recorded; None where it has none."""
    counts = run.get("train_age_counts")
    if not counts:
        return None
    return pd.Series(age_shot_groups(ages_from_histogram(counts),
                                     frame["age"].to_numpy(dtype=float)),
                     index=frame["id"].to_numpy())


def _image_groups(suite: SuiteResults, variant: str, evaluation: str) -> pd.DataFrame:
    """Per image (by id) of a variant: the seed-averaged |error|, its age group and its shot,
    the shot only when every run recorded its training-age counts and they agree (the same
    training set); empty without predictions."""
    errors = seed_averaged_errors(suite, variant, evaluation)
    if errors.empty:
        return pd.DataFrame()
    ages, shots = {}, []
    for run in suite.runs:
        frame = suite.predictions(run, evaluation) if run["variant"] == variant else None
        if frame is not None:
            ages.update(zip(frame["id"], frame["age"]))
            shots.append(image_shots(run, frame))
    out = pd.DataFrame({"error": errors.mean(axis=1)})
    out["group"] = age_group(out.index.map(ages).to_numpy(dtype=float))
    if all(s is not None for s in shots) and all(s.equals(shots[0]) for s in shots):
        out["shot"] = shots[0].reindex(out.index).map(lambda s: f"{s}-shot")
    return out


def group_cis(suite: SuiteResults, evaluation: str = "test") -> pd.DataFrame:
    """Per variant and column of the group table (age groups; shots where the runs recorded
    their training-age counts): MAE of the seed-averaged errors with its image-bootstrap 95 %
    CI, and the paired difference from the baseline on the same images with its CI (a shot
    only when both variants put the images in the same shot; seeds paired as in
    ``variant_table``)."""
    baseline = suite.info["baseline"]
    per_variant = {v: _image_groups(suite, v, evaluation) for v in suite.variants()}
    per_variant = {v: f for v, f in per_variant.items() if not f.empty}
    base = per_variant.get(baseline)
    base_errors = seed_averaged_errors(suite, baseline, evaluation)
    rows = []
    for variant, frame in per_variant.items():
        pairing = (pair_seeds(suite, seed_averaged_errors(suite, variant, evaluation), variant,
                              base_errors) if base is not None and variant != baseline else None)
        for kind in ("group", "shot"):
            if kind not in frame:
                continue
            for column, cell in frame.groupby(kind)["error"]:
                mae, low, high = bootstrap_ci(cell.to_numpy(), n_boot=N_BOOT)
                row = {"variant": variant, "column": column, "n": len(cell), "mae": mae,
                       "ci_low": low, "ci_high": high, "diff": math.nan, "diff_low": math.nan,
                       "diff_high": math.nan}
                if pairing is not None and kind in base:
                    common = (cell.index.intersection(base.index[base[kind] == column])
                              .intersection(pairing.variant.index)
                              .intersection(pairing.baseline.index))
                    if len(common):
                        row["diff"], row["diff_low"], row["diff_high"] = bootstrap_diff_ci(
                            pairing.variant[common].to_numpy(),
                            pairing.baseline[common].to_numpy(), n_boot=N_BOOT)
                rows.append(row)
    order = {name: i for i, name in enumerate([g[0] for g in AGE_GROUPS]
                                              + [f"{s}-shot" for s in SHOTS])}
    return (pd.DataFrame(rows).sort_values("column", key=lambda c: c.map(order), kind="stable")
            .reset_index(drop=True) if rows else pd.DataFrame())


def _group_markdown(table: pd.DataFrame, cis: pd.DataFrame, baseline: str) -> list[str]:
    """The group table; a cell shows its 95 % CI where `cis` has one."""
    lines = ["MAE (95 % CI) by age group and, where known, by how many training images the age "
             "has (many > 100, medium 20-100, few < 20):", "",
             "| variant | " + " | ".join(table.columns) + " |",
             "|" + " --- |" * (len(table.columns) + 1)]
    cells_ci = ({} if cis.empty else
                {(r.variant, r.column): r for r in cis.itertuples()})
    for variant, row in table.iterrows():
        if variant == "images":
            cells = [f"{int(v)}" if math.isfinite(v) else "varies" for v in row]
        else:
            cells = []
            for column, value in row.items():
                ci = cells_ci.get((variant, column))
                cells.append(_ci(ci.mae, ci.ci_low, ci.ci_high) if ci is not None
                             else f"{value:.2f}" if math.isfinite(value) else "—")
        name = f"**{variant}**" if variant == baseline else variant
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def group_findings(cis: pd.DataFrame, baseline: str) -> list[str]:
    """One sentence per variant: the groups where it differs from the baseline (95 % CI
    excluding zero), lower first, then the groups with no measurable difference."""
    out = []
    if cis.empty:
        return out
    for variant, rows in cis[cis["diff"].notna()].groupby("variant", sort=False):
        parts = {"lower": [], "higher": []}
        for r in rows.itertuples():
            if r.diff_low > 0 or r.diff_high < 0:
                parts["higher" if r.diff > 0 else "lower"].append(
                    f"{r.column} by {abs(r.diff):.2f} (95 % CI {r.diff_low:+.2f} to "
                    f"{r.diff_high:+.2f})")
        said = [f"{word} on " + ", ".join(items) for word, items in parts.items() if items]
        same = [r.column for r in rows.itertuples() if r.diff_low <= 0 <= r.diff_high]
        if same:
            said.append("no measurable difference on " + ", ".join(same))
        out.append(f"By group, {variant} against {baseline}: " + "; ".join(said) + ".")
    return out


def _partial_seeds(row: Any) -> str:
    """' (seeds 1 and 2 only)' when a row's difference from the baseline leaves out runs that
    one of the two has finished (a partly run suite), else ''."""
    if not getattr(row, "diff_partial", False):  # tables made elsewhere lack the column
        return ""
    seeds = list(row.diff_seeds)
    names = ", ".join(str(s) for s in seeds[:-1]) + (" and " if len(seeds) > 1 else "")
    return f" (seed{'s' if len(seeds) > 1 else ''} {names}{seeds[-1]} only)"


def findings(table: pd.DataFrame, baseline: str, where: str = "", lowest: bool = True
             ) -> list[str]:
    """Sentences that follow from the table: each variant against the baseline (a difference
    only when its 95 % CI excludes zero), then (with `lowest`) the lowest MAE."""

    def sentence(text: str, capitalize: bool = True) -> str:
        if where:
            return f"On {where}, {text}"
        return text[0].upper() + text[1:] if capitalize else text  # variant names keep case

    out = []
    for row in table.itertuples():
        if row.variant == baseline or not math.isfinite(row.diff):
            continue
        # A difference under 0.005 years would print as 0.00: show it with a third decimal.
        d = 2 if abs(row.diff) >= 0.005 else 3
        ci = (f"95 % CI {row.diff_low:+.{d}f} to {row.diff_high:+.{d}f}"
              f"{_partial_seeds(row)}")
        if row.diff_low > 0 or row.diff_high < 0:
            direction = "higher" if row.diff > 0 else "lower"
            out.append(sentence(f"{row.variant} has a {direction} MAE than {baseline} by "
                                f"{abs(row.diff):.{d}f} years ({ci}).", capitalize=False))
        else:
            out.append(sentence(f"no measurable difference between {row.variant} and "
                                f"{baseline} (difference {row.diff:+.{d}f} years, {ci})."))
    if lowest and len(table) > 1:
        best = table.loc[table["mae"].idxmin()]
        out.append(sentence(f"the lowest MAE is {best['variant']} ({best['mae']:.2f}, 95 % CI "
                            f"{best['ci_low']:.2f}-{best['ci_high']:.2f})."))
    return out


def _markdown(table: pd.DataFrame, baseline: str) -> list[str]:
    show_cost = table["gflops"].notna().any() and table["gflops"].nunique() > 1
    head = "| variant | seeds | images | MAE (95 % CI) | seed s.d. | Δ vs baseline (95 % CI) |"
    lines = [head + (" GFLOPs | params (M) |" if show_cost else ""),
             "|" + " --- |" * (6 + 2 * show_cost)]
    for r in table.itertuples():
        name = f"**{r.variant}** (baseline)" if r.variant == baseline else r.variant
        diff = _ci(r.diff, r.diff_low, r.diff_high, "+") + _partial_seeds(r)
        sd = f"{r.seed_sd:.2f}" if math.isfinite(r.seed_sd) else "—"
        line = (f"| {name} | {r.seeds} | {r.images} | {r.mae:.2f} ({r.ci_low:.2f}, "
                f"{r.ci_high:.2f}) | {sd} | {diff} |")
        lines.append(line + (f" {r.gflops:.3f} | {_num(r.params_m, 1)} |" if show_cost else ""))
    return lines


# --------------------------------------------------------------------------- figures
def _figure(width: float = 6.0, height: float = 3.5):
    """A matplotlib Figure on the Agg canvas (no pyplot: the global backend is left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _numeric_axis(suite: SuiteResults) -> dict[str, Any] | None:
    """The suite's single grid axis when it has numeric values and no explicit variants."""
    axes = suite.info.get("axes") or []
    labelled = {k for v in suite.info["variants"] for k in v["labels"]}
    if len(axes) == 1 and labelled == {axes[0]["label"]} and all(
            isinstance(x, (int, float)) for x in axes[0]["values"]):
        return axes[0]
    return None


def suite_figures(suite: SuiteResults, table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """MAE per variant with CI bars (a curve over a numeric axis, e.g. the data fraction), and
    MAE against GFLOPs when the variants differ in cost."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    yerr = np.vstack([table["mae"] - table["ci_low"], table["ci_high"] - table["mae"]])
    axis = _numeric_axis(suite)
    fig, ax = _figure(height=3.5 if axis is not None else max(2.5, 1.2 + 0.35 * len(table)))
    if axis is not None:
        labels = {v["name"]: v["labels"][axis["label"]] for v in suite.info["variants"]}
        x = np.array([float(labels[v]) for v in table["variant"]])
        order = np.argsort(x)
        ax.errorbar(x[order], table["mae"].to_numpy()[order], yerr=yerr[:, order], marker="o",
                    capsize=4)
        if x.max() / max(x.min(), 1e-12) >= 8:
            ax.set_xscale("log")
        ax.set_xticks(x[order], [f"{v:g}" for v in x[order]])
        ax.set_xlabel(axis["key"])
        ax.set_title(f"{suite.name}: test MAE vs {axis['key']} (95 % CI)")
    else:
        y = np.arange(len(table))
        colors = ["C1" if v == suite.info["baseline"] else "C0" for v in table["variant"]]
        ax.errorbar(table["mae"], y, xerr=yerr, fmt="none", ecolor="gray", capsize=3)
        ax.scatter(table["mae"], y, c=colors, zorder=3)
        ax.set_yticks(y, table["variant"])
        ax.invert_yaxis()
        ax.set_title(f"{suite.name}: test MAE per variant (95 % CI; orange = baseline)")
    ax.set_xlabel("MAE (years)") if axis is None else ax.set_ylabel("MAE (years)")
    fig.tight_layout()
    paths.append(out_dir / f"{suite.name}_mae.png")
    fig.savefig(paths[-1])
    if table["gflops"].notna().all() and table["gflops"].nunique() > 1:
        fig, ax = _figure()
        ax.errorbar(table["gflops"], table["mae"], yerr=yerr, fmt="o", capsize=4)
        for r in table.itertuples():
            ax.annotate(r.variant, (r.gflops, r.mae), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
        ax.set_xlabel("GFLOPs per image (fvcore: one multiply-add = 1)")
        ax.set_ylabel("MAE (years)")
        ax.set_title(f"{suite.name}: accuracy vs cost")
        fig.tight_layout()
        paths.append(out_dir / f"{suite.name}_cost.png")
        fig.savefig(paths[-1])
    return paths


# --------------------------------------------------------------------------- error analysis
def pooled_predictions(suites: Iterable[SuiteResults], evaluation: str = "test") -> pd.DataFrame:
    """Every run's per-image predictions of one evaluation, with suite and run columns."""
    frames = []
    for suite in suites:
        for run in suite.runs:
            frame = suite.predictions(run, evaluation)
            if frame is not None:
                frames.append(frame.assign(suite=suite.name, run=run["run"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def error_vs_age(frame: pd.DataFrame, width: int = 5) -> pd.DataFrame:
    """MAE and bias per `width`-year age bin: columns age (bin start), n, mae, bias."""
    err = frame["pred"] - frame["age"]
    bins = (np.floor(frame["age"] / width) * width).astype(int)
    g = pd.DataFrame({"age": bins, "abs": err.abs(), "err": err}).groupby("age")
    return pd.DataFrame({"n": g.size(), "mae": g["abs"].mean(),
                         "bias": g["err"].mean()}).reset_index()


def error_analysis(suites: list[SuiteResults], fig_dir: Path, rel: str) -> list[str]:
    """Markdown of MAE by age group / gender / race over all runs, and an error-vs-age figure."""
    frame = pooled_predictions(suites)
    if frame.empty:
        return []
    n_runs = frame.groupby(["suite", "run"]).ngroups
    lines = ["## Error analysis (all runs, test predictions)", "",
             f"Pooled over {n_runs} runs x their test images ({frame['id'].nunique()} distinct "
             f"images); MAE and bias (mean of prediction − age) in years.", ""]
    groups = mae_by_group(frame)
    lines += ["| age group | images | MAE | bias |", "| --- | --- | --- | --- |"]
    unique = frame.drop_duplicates("id")
    counts = mae_by_group(unique).set_index("group")["n"]  # distinct images per group
    for r in groups.itertuples():
        lines.append(f"| {r.group} | {counts[r.group]} | {r.mae:.2f} | {r.bias:+.2f} |")
    for column in ATTRIBUTES:
        if column not in frame.columns or frame[column].isna().all():
            continue
        table = mae_by(frame, column)
        per_image = unique[column].value_counts(dropna=False)
        lines += ["", f"| {column} | images | MAE | bias |", "| --- | --- | --- | --- |"]
        names = ATTRIBUTE_NAMES.get(column, {})
        for r in table.itertuples(index=False):
            value = r[0]
            label = f"{value} ({names[value]})" if value in names else f"{value}"
            lines.append(f"| {label} | {per_image.get(value, 0)} | {r.mae:.2f} | {r.bias:+.2f} |")
    curve = error_vs_age(frame)
    fig, ax = _figure()
    ax.plot(curve["age"] + 2.5, curve["mae"], marker="o", label="MAE")
    ax.plot(curve["age"] + 2.5, curve["bias"], marker=".", label="bias (pred − age)")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("true age (5-year bins)")
    ax.set_ylabel("years")
    ax.set_title("Error vs age, all runs (test)")
    ax.legend()
    fig.tight_layout()
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_dir / "error_vs_age.png")
    worst = groups.loc[groups["mae"].idxmax()]
    lines += ["", f"![error vs age]({rel}/error_vs_age.png)", "",
              f"The age group with the largest MAE is {worst['group']} ({worst['mae']:.2f}, bias "
              f"{worst['bias']:+.2f}).", ""]
    return lines


# --------------------------------------------------------------------------- severity curves
def severity_families(extras: Iterable[str]) -> dict[str, list[tuple[int, str]]]:
    """Extras named KIND_LEVEL grouped by kind: {kind: [(level, extra name), ...]} by level."""
    families: dict[str, list[tuple[int, str]]] = {}
    for name in extras:
        match = SEVERITY_NAME.fullmatch(name)
        if match:
            families.setdefault(match["kind"], []).append((int(match["level"]), name))
    return {kind: sorted(levels) for kind, levels in families.items()}


def severity_table(suite: SuiteResults) -> pd.DataFrame:
    """One row per perturbation kind, level (0 = the clean split) and variant: MAE (95 % CI),
    the rise over the variant's own clean MAE and the difference from the baseline variant
    (both paired over the same images, with 95 % CIs)."""
    split, baseline = suite.info["split"], suite.info["baseline"]
    clean = {v: seed_averaged_errors(suite, v, split).mean(axis=1) for v in suite.variants()}
    clean_table = variant_table(suite, split)  # the level-0 rows of every kind: computed once
    rows = []
    for kind, levels in severity_families(suite.info.get("extras", [])).items():
        for level, evaluation in [(0, split), *levels]:
            table = clean_table if level == 0 else variant_table(suite, evaluation)
            for r in table.itertuples():
                row = {"kind": kind, "level": level, **r._asdict(), "rise": math.nan,
                       "rise_low": math.nan, "rise_high": math.nan}
                row.pop("Index")
                if level:
                    errors = seed_averaged_errors(suite, r.variant, evaluation).mean(axis=1)
                    common = errors.index.intersection(clean[r.variant].index)
                    row["rise"], row["rise_low"], row["rise_high"] = bootstrap_diff_ci(
                        errors[common].to_numpy(), clean[r.variant][common].to_numpy(),
                        n_boot=N_BOOT)
                rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame.loc[frame["variant"] == baseline, ["diff", "diff_low", "diff_high"]] = math.nan
    return frame


def _ci(value: float, low: float, high: float, sign: str = "", decimals: int = 2) -> str:
    f = f"{sign}.{decimals}f"
    return "—" if not math.isfinite(value) else f"{value:{f}} ({low:{f}}, {high:{f}})"


def _num(value: float, decimals: int = 3) -> str:
    return f"{value:.{decimals}f}" if math.isfinite(value) else "—"


def severity_markdown(table: pd.DataFrame, variants: list[str], baseline: str) -> list[str]:
    """The severity table: per kind and level, each variant's MAE and rise over clean, and each
    other variant's difference from the baseline."""
    others = [v for v in variants if v != baseline]
    head = ["perturbation", "severity"]
    for v in variants:
        head += [f"{v} MAE (95 % CI)", f"{v} rise vs clean"]
    head += [f"Δ {v} − {baseline}" for v in others]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (kind, level), group in table.groupby(["kind", "level"], sort=False):
        by = group.set_index("variant")
        cells = [kind, str(level) if level else "0 (clean)"]
        for v in variants:
            r = by.loc[v] if v in by.index else None
            cells += ["—", "—"] if r is None else [
                _ci(r["mae"], r["ci_low"], r["ci_high"]),
                _ci(r["rise"], r["rise_low"], r["rise_high"], "+")]
        for v in others:
            r = by.loc[v] if v in by.index else None
            cells.append("—" if r is None else _ci(r["diff"], r["diff_low"], r["diff_high"], "+"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def severity_findings(table: pd.DataFrame, baseline: str) -> list[str]:
    """At each kind's highest level: how much the baseline's MAE rises, and how each other
    variant compares with the baseline (a difference only when its CI excludes zero)."""
    out = []
    for kind, group in table.groupby("kind", sort=False):
        top = group[group["level"] == group["level"].max()]
        base = top[top["variant"] == baseline]
        where = f"{kind} at severity {int(top['level'].iloc[0])}"
        if not base.empty and math.isfinite(base["rise"].iloc[0]):
            b = base.iloc[0]
            verdict = ("rises by" if b["rise_low"] > 0 else "falls by" if b["rise_high"] < 0
                       else "does not measurably change:")
            out.append(f"On {where}, {baseline}'s MAE {verdict} {abs(b['rise']):.2f} years "
                       f"(95 % CI {b['rise_low']:+.2f} to {b['rise_high']:+.2f}) over clean "
                       f"images, to {b['mae']:.2f}.")
        out += findings(top.reset_index(drop=True), baseline, where, lowest=False)
    return out


def severity_figure(suite: SuiteResults, table: pd.DataFrame, out_dir: Path) -> Path:
    """Small multiples: MAE (95 % CI) against severity, one panel per kind, a line per
    variant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = list(dict.fromkeys(table["kind"]))
    cols = min(3, len(kinds))
    rows = math.ceil(len(kinds) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, kind in zip(axes.flat, kinds):
        for i, variant in enumerate(dict.fromkeys(table["variant"])):
            t = table[(table["kind"] == kind) & (table["variant"] == variant)].sort_values("level")
            yerr = np.vstack([t["mae"] - t["ci_low"], t["ci_high"] - t["mae"]])
            ax.errorbar(t["level"], t["mae"], yerr=yerr, marker="o", capsize=3, color=f"C{i}",
                        label=variant)
        ax.set_title(kind, fontsize=9)
        ax.set_xticks(sorted(table.loc[table["kind"] == kind, "level"].unique()))
    for ax in axes.flat[len(kinds):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("MAE (years)")
    for ax in axes[-1]:
        ax.set_xlabel("severity (0 = clean)")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{suite.name}: test MAE vs severity (95 % CI)")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{suite.name}_severity.png"
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- uncertainty
def per_image_nll(frame: pd.DataFrame) -> pd.Series:
    """Gaussian NLL (nats) of each label under N(pred, std²), by image id; NaN without a std."""
    std = pd.to_numeric(frame["std"], errors="coerce").where(lambda v: v > 0)
    nll = 0.5 * np.log(2 * np.pi * std**2) + (frame["age"] - frame["pred"]) ** 2 / (2 * std**2)
    return nll.set_axis(frame["id"])


def uncertainty_table(suite: SuiteResults, evaluation: str = "test") -> pd.DataFrame:
    """Per variant with a predicted std: NLL of the seed-averaged per-image NLLs with its image
    bootstrap CI and the paired difference from the baseline, then the means over seeds of
    90 % coverage, calibration error, AUSE, Spearman(|error|, std) and the NLL-optimal σ scale."""
    rows, nlls = [], {}
    for variant in suite.variants():
        frames = [f for r in suite.runs if r["variant"] == variant
                  and (f := suite.predictions(r, evaluation)) is not None
                  and np.isfinite(pd.to_numeric(f["std"], errors="coerce")).any()]
        if not frames:
            continue
        nlls[variant] = pd.DataFrame({i: per_image_nll(f) for i, f in enumerate(frames)}
                                     ).dropna().mean(axis=1)
        nll, low, high = bootstrap_ci(nlls[variant].to_numpy(), n_boot=N_BOOT)
        summaries = pd.DataFrame([uncertainty_summary(f) for f in frames])
        rows.append({"variant": variant, "seeds": len(frames), "images": len(nlls[variant]),
                     "mae": float(np.mean([(f["pred"] - f["age"]).abs().mean() for f in frames])),
                     "nll": nll, "nll_low": low, "nll_high": high,
                     **summaries[["coverage_90", "calibration_error", "ause", "spearman",
                                  "sigma_scale"]].mean().to_dict()})
    table = pd.DataFrame(rows)
    baseline = suite.info["baseline"]
    table["diff"] = table["diff_low"] = table["diff_high"] = math.nan
    if baseline in nlls:
        for i, variant in table["variant"].items():
            if variant != baseline:
                common = nlls[variant].index.intersection(nlls[baseline].index)
                table.loc[i, ["diff", "diff_low", "diff_high"]] = bootstrap_diff_ci(
                    nlls[variant][common].to_numpy(), nlls[baseline][common].to_numpy(),
                    n_boot=N_BOOT)
    return table


def uncertainty_figure(suite: SuiteResults, variants: Iterable[str], out_dir: Path,
                       evaluation: str = "test") -> Path:
    """Reliability curves (observed vs expected central-interval coverage), a line per variant
    over all its seeds' predictions."""
    fig, ax = _figure(5.0, 4.0)
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=0.8)
    for variant in variants:
        frames = [f for r in suite.runs if r["variant"] == variant
                  and (f := suite.predictions(r, evaluation)) is not None]
        pooled = pd.concat(frames)
        ax.plot(*calibration_curve(pooled["pred"], pooled["std"], pooled["age"]), label=variant)
    ax.set_xlabel("expected coverage of the central interval")
    ax.set_ylabel("observed coverage")
    ax.set_title(f"{suite.name}: reliability ({evaluation}; below the diagonal = overconfident)",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{suite.name}_reliability.png"
    fig.savefig(path)
    return path


def uncertainty_section(suites: list[SuiteResults], fig_dir: Path, rel: str,
                        names: Iterable[str] = UNCERTAINTY_SUITES) -> list[str]:
    """Markdown comparing the predictive std of the named suites' variants on the test split:
    NLL (CI, paired difference from the baseline), coverage, calibration, error ranking."""
    lines = []
    for suite in (s for s in suites if s.name in names):
        table = uncertainty_table(suite, suite.info["split"])
        if table.empty:
            continue
        baseline = suite.info["baseline"]
        lines += [f"### {suite.name}", "",
                  "| variant | seeds | MAE | NLL (95 % CI) | Δ NLL vs baseline (95 % CI) | "
                  "90 % coverage | calibration error | AUSE | Spearman | σ scale |",
                  "|" + " --- |" * 10]
        for r in table.itertuples():
            name = f"**{r.variant}** (baseline)" if r.variant == baseline else r.variant
            lines.append(f"| {name} | {r.seeds} | {r.mae:.2f} | "
                         f"{_ci(r.nll, r.nll_low, r.nll_high)} | "
                         f"{_ci(r.diff, r.diff_low, r.diff_high, '+', 3)} | "
                         f"{_num(r.coverage_90)} | {_num(r.calibration_error)} | "
                         f"{_num(r.ause)} | {_num(r.spearman)} | {_num(r.sigma_scale, 2)} |")
        lines.append("")
        for r in table.itertuples():
            if r.variant == baseline or not math.isfinite(r.diff):
                continue
            ci = f"95 % CI {r.diff_low:+.3f} to {r.diff_high:+.3f}"
            if r.diff_low > 0 or r.diff_high < 0:
                word = "higher (worse)" if r.diff > 0 else "lower (better)"
                lines.append(f"- {r.variant} has a {word} NLL than {baseline} by "
                             f"{abs(r.diff):.3f} nats ({ci}).")
            else:
                lines.append(f"- No measurable NLL difference between {r.variant} and "
                             f"{baseline} ({ci}).")
        for column, what in (("calibration_error", "the lowest calibration error"),
                             ("ause", "the lowest AUSE (best error ranking)")):
            best = table.loc[table[column].idxmin()]
            lines.append(f"- {best['variant']} has {what}: {best[column]:.3f} (mean over "
                         f"seeds; no CI).")
        without = [v for v in suite.variants() if v not in set(table["variant"])]
        if without:
            lines.append(f"- Left out, no predicted std: {', '.join(without)}.")
        path = uncertainty_figure(suite, table["variant"], fig_dir, suite.info["split"])
        lines += ["", f"![{path.stem}]({rel}/{path.name})", ""]
    if not lines:
        return []
    return ["## Uncertainty (test predictions)", "",
            "How good is each variant's predicted std as a Gaussian N(pred, std²) over the "
            "label? NLL in nats (lower is better; per-image NLL averaged over seeds, image "
            "bootstrap CI); 90 % coverage = share of labels inside the central 90 % interval "
            "(0.9 if calibrated); calibration error = mean |observed − expected| coverage over "
            "levels 0.01-0.99; AUSE = area between the sparsification curves of the std and of "
            "the error (0 = the std ranks images exactly by error); Spearman = rank correlation "
            "of std and |error|; σ scale = the multiplier of the std that minimises the NLL (1 if "
            "calibrated; above 1 = overconfident, below 1 = underconfident); a constant std "
            "(homoscedastic heads) ranks nothing, so its Spearman is undefined (—).", "", *lines]


# --------------------------------------------------------------------------- the report
def _protocol(suite: SuiteResults) -> list[str]:
    info, runs = suite.info, suite.runs
    def machine(run: dict[str, Any]) -> str:
        h = run["hardware"]
        return (f"{h['cpu']}, {h['cores']} cores, torch {h['torch']}"
                + (f", {h['gpu']}" if h.get("gpu") else ""))

    hardware = {machine(r) for r in runs}
    by_variant: dict[str, set[str]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], set()).add(machine(r))
    # Each model once: runs that share a checkpoint (same config, ensembles) reuse its training.
    train_h = sum({r["checkpoint"]: r["wall_time"]["train_s"] for r in runs}.values()) / 3600
    eval_h = sum(r["wall_time"]["eval_s"] for r in runs) / 3600
    protocol = ", ".join(f"{k} {v}" for k, v in info["protocol"].items()) or "no overrides"
    data = sorted({r["evaluations"][info["split"]]["inference"]["data"] for r in runs})
    return [f"*Question.* {info['question']}", "",
            f"*Protocol.* `{info['file']}`: base `{info['base']}` with {protocol}; seeds "
            f"{', '.join(map(str, info['seeds']))}; evaluated on the {info['split']} split of "
            f"{', '.join(f'`{d}`' for d in data)}. Budget: {info['budget']}", "",
            f"*Done.* {len(runs)} of {len(info['runs'])} runs; training {train_h:.2f} h (epoch "
            f"times summed over the suite's distinct models, including any trained for another "
            f"suite), evaluation {eval_h:.2f} h; hardware: "
            f"{'; '.join(sorted(hardware))}.", "", *_mixed_hardware(by_variant)]


def _mixed_hardware(by_variant: dict[str, set[str]]) -> list[str]:
    """A caution when the compared variants ran on different machines (GPU and CPU arithmetic
    differ, so a small difference may be partly the machine's)."""
    if len({frozenset(m) for m in by_variant.values()}) <= 1:
        return []
    parts = [f"{v} on {' + '.join(sorted(m))}" for v, m in by_variant.items()]
    return [f"*Caution: the variants ran on different machines* ({'; '.join(parts)}): read "
            "small differences with care.", ""]


def _attribute_accuracy(suite: SuiteResults, evaluation: str) -> list[str]:
    """Mean top-1 accuracy of the attribute heads per variant (multi-task runs), if any."""
    rows: dict[tuple[str, str], list[float]] = {}
    for run in suite.runs:
        scores = run["evaluations"].get(evaluation, {}).get("attribute_accuracy", {})
        for name, score in scores.items():
            rows.setdefault((run["variant"], name), []).append(score["accuracy"])
    return [f"- {variant}: {name} accuracy {np.mean(values):.3f} (mean of {len(values)} "
            f"seeds)." for (variant, name), values in rows.items()] + ([""] if rows else [])


def suite_section(suite: SuiteResults, fig_dir: Path, rel: str) -> list[str]:
    """Markdown of one suite: protocol, a table + findings per evaluation, figures."""
    if not suite.runs:
        return []
    lines = [f"## {suite.name}", "", *_protocol(suite)]
    extras = suite.info.get("extras", [])
    severity = {name for levels in severity_families(extras).values() for _, name in levels}
    evaluations = [suite.info["split"], *(e for e in extras if e not in severity)]
    for evaluation in evaluations:
        table = variant_table(suite, evaluation)
        if table.empty:
            continue
        lines += [f"**{evaluation}**", "", *_markdown(table, suite.info["baseline"]), ""]
        if len(table) == 1:
            lines += ["- Only one variant has finished runs: nothing to compare yet.", ""]
        lines += _attribute_accuracy(suite, evaluation)
        where = "" if evaluation == suite.info["split"] else evaluation
        lines += [f"- {s}" for s in findings(table, suite.info["baseline"], where)] + [""]
        if evaluation == suite.info["split"]:
            groups = group_table(suite, evaluation)
            if len(groups) > 2:  # at least two variants to compare
                cis = group_cis(suite, evaluation)
                lines += [*_group_markdown(groups, cis, suite.info["baseline"]), ""]
                lines += [f"- {s}" for s in group_findings(cis, suite.info["baseline"])] + [""]
            for path in suite_figures(suite, table, fig_dir):
                lines += [f"![{path.stem}]({rel}/{path.name})", ""]
    table = severity_table(suite) if severity else pd.DataFrame()
    if not table.empty:
        baseline = suite.info["baseline"]
        lines += ["**MAE vs severity** (the perturbed test split; rise = MAE − the same "
                  "variant's clean MAE, paired over images)", "",
                  *severity_markdown(table, suite.variants(), baseline), ""]
        lines += [f"- {s}" for s in severity_findings(table, baseline)] + [""]
        path = severity_figure(suite, table, fig_dir)
        lines += [f"![{path.stem}]({rel}/{path.name})", ""]
    return lines


def _repo_path(path: str) -> Path:
    """A suite file's config path (absolute, or relative to the repository as stored)."""
    return (REPO / path).resolve()


def _changes(variant: dict[str, Any], protocol: dict[str, Any], base: str = "") -> str:
    """A variant's config file when it is not the suite's `base`, its overrides beyond the
    suite's protocol, and its test.py options."""
    pairs = list(zip(variant["overrides"][::2], variant["overrides"][1::2]))
    own_file = (variant.get("cfg")
                and _repo_path(variant["cfg"]) != _repo_path(base or variant["cfg"]))
    shown = [f"--cfg {Path(variant['cfg']).name}"] if own_file else []
    shown += [f"{k} {v}" for k, v in pairs if str(protocol.get(k)) != v or k not in protocol]
    if variant.get("test_args"):
        shown.append(" ".join(variant["test_args"]))
    return ", ".join(f"`{c}`" for c in shown) or "(the protocol)"


def _paired_valid_diff(suite: SuiteResults, run: dict[str, Any],
                       baselines: dict[int, dict[str, Any]]) -> str:
    """'MAE - baseline MAE (paired 95 % CI)' on the valid images both runs predicted, against
    the baseline variant's run of the same seed; '' for the baseline itself or when absent."""
    base = baselines.get(run["seed"])
    if base is None or base["run"] == run["run"]:
        return ""
    errors = []
    for which in (run, base):
        frame = suite.predictions(which, "valid")
        if frame is None:
            return ""
        errors.append(absolute_errors(frame))
    common = errors[0].index.intersection(errors[1].index)
    diff, low, high = bootstrap_diff_ci(errors[0][common].to_numpy(),
                                        errors[1][common].to_numpy(), n_boot=N_BOOT)
    return f"{diff:+.3f} ({low:+.3f}, {high:+.3f})"


def recipe_log(suite: SuiteResults) -> str:
    """Markdown log of a recipe search (a suite evaluated on the valid split): every trial with
    what it changes, training minutes, valid MAE (95 % CI), its paired difference from the
    baseline trial of the same seed (95 % CI), CS@5 and hardware, best first; trials without a
    finished run are listed too."""
    protocol = {k: str(v) for k, v in (suite.info.get("protocol") or {}).items()}
    variants = {v["name"]: v for v in suite.info["variants"]}
    base = suite.info.get("base", "")
    baselines = {r["seed"]: r for r in suite.runs if r["variant"] == suite.info["baseline"]}
    finished = []
    for run in suite.runs:
        valid = run.get("evaluations", {}).get("valid")
        if valid is None:
            continue
        low, high = valid.get("mae_ci") or (math.nan, math.nan)
        hardware = run.get("hardware", {})
        machine = hardware.get("gpu") or f"{hardware.get('cores', '?')}-core CPU"
        minutes = run.get("wall_time", {}).get("members_train_s", math.nan) / 60
        finished.append((valid["mae"], f"| {run['run']} | "
                         f"{_changes(variants[run['variant']], protocol, base)} | {minutes:.1f} | "
                         f"{valid['mae']:.3f} ({low:.2f}, {high:.2f}) | "
                         f"{_paired_valid_diff(suite, run, baselines)} | "
                         f"{valid.get('cs5', math.nan):.3f} | {machine} |"))
    done = {r["variant"] for r in suite.runs}
    missing = [f"| {name} | {_changes(variant, protocol, base)} | no result (not run yet, or "
               f"failed: see runs/logs/{suite.name}/ where it ran) | | | | |"
               for name, variant in variants.items() if name not in done]
    lines = [f"# Recipe search: {suite.name}", "",
             "Generated by `scripts/recipes_log.py` from `results/runs/"
             f"{suite.name}/` (do not edit by hand). UTKFace **valid** split only (1,500 images); "
             "the test split is kept for the released model. Seed "
             f"{', '.join(map(str, suite.info.get('seeds', [])))}; minutes of training as "
             "measured by the runner.", "",
             f"*Question.* {suite.info.get('question', '')}", "",
             f"*Protocol.* `{json.dumps(suite.info.get('protocol') or {})}` on "
             f"`{Path(suite.info.get('base', '')).name}`; baseline {suite.info['baseline']}.", "",
             f"*Δ* is the trial's valid MAE minus that of {suite.info['baseline']} at the same "
             "seed, on the same images, with a paired bootstrap 95 % CI: a trial is only better "
             "when the whole interval is below zero.", "",
             "| trial | changes | train min | valid MAE (95 % CI) | Δ vs baseline (95 % CI) | "
             "CS@5 | machine |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [row for _, row in sorted(finished, key=lambda item: item[0])] + missing
    return "\n".join(lines) + "\n"


def write_report(results_dir: str | Path, out: str | Path) -> Path:
    """Write the Markdown report and its figures (in <out's folder>/figures/); returns out."""
    out = Path(out)
    fig_dir = out.parent / "figures"
    suites = [s for s in load_results(results_dir) if s.runs]
    lines = ["# Results", "",
             "Generated by `scripts/make_report.py` from the files under "
             f"`{Path(results_dir).name}/` (do not edit by hand). MAE in years; CIs are 95 % "
             f"percentile bootstraps ({N_BOOT} resamples of the test images, errors averaged "
             "over seeds first; differences are paired on the same images). They do not include "
             "seed-to-seed variation, shown separately as the s.d. of the per-seed MAEs. A "
             "difference is only called one when its CI excludes zero.", ""]
    notes = Path(results_dir) / RUNS_NOTES
    if notes.is_file():
        lines += ["## How these runs were made", "", notes.read_text().strip(), ""]
    if not suites:
        lines.append("No finished suite runs yet.")
    for suite in suites:
        lines += suite_section(suite, fig_dir, "figures")
    lines += uncertainty_section(suites, fig_dir, "figures")
    lines += error_analysis(suites, fig_dir, "figures")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out
