"""Evaluation metrics for age estimation: point accuracy, fairness breakdowns, bootstrap CIs
and the quality of predictive uncertainty.

Everything works on plain numpy arrays or on the per-image predictions DataFrame
(columns ``id, path, age, age_std, pred, std, std_aleatoric, std_epistemic`` plus string
attribute columns such as ``gender``). Uncertainty metrics treat each prediction as the
Gaussian N(pred, std²) and only use rows whose std is finite and > 0; with no such row they
return NaN instead of raising.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

# (label, low, high): a label's age belongs to a group when low <= floor(age) <= high.
AGE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("0-12", 0, 12),
    ("13-19", 13, 19),
    ("20-39", 20, 39),
    ("40-59", 40, 59),
    ("60+", 60, math.inf),
)

COVERAGE_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95)

# Columns of the predictions frame that are never attributes.
KNOWN_COLUMNS = frozenset(
    {"id", "path", "age", "age_std", "pred", "std", "std_aleatoric", "std_epistemic"}
)


# --------------------------------------------------------------------------- helpers
def _arr(x: ArrayLike) -> np.ndarray:
    return np.asarray(x, dtype=float).reshape(-1)


def _mean(x: np.ndarray) -> float:
    """Mean that returns NaN (silently) for an empty array."""
    return float(np.mean(x)) if x.size else math.nan


def _valid_gaussian(
    pred: ArrayLike, std: ArrayLike, age: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred, std, age) restricted to rows with finite pred/age and finite std > 0."""
    p, s, a = _arr(pred), _arr(std), _arr(age)
    if not (p.shape == s.shape == a.shape):
        raise ValueError(f"shape mismatch: pred {p.shape}, std {s.shape}, age {a.shape}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(p) & np.isfinite(a) & np.isfinite(s) & (s > 0)
    return p[ok], s[ok], a[ok]


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float array, all-NaN when the column is absent."""
    if name in df.columns:
        return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
    return np.full(len(df), math.nan)


# --------------------------------------------------------------------------- point metrics
def mae(pred: ArrayLike, age: ArrayLike) -> float:
    """Mean absolute error in years (NaN for empty input)."""
    return _mean(np.abs(_arr(pred) - _arr(age)))


def cs_at(pred: ArrayLike, age: ArrayLike, k: float = 5) -> float:
    """Cumulative score: fraction of images with |pred - age| <= k years."""
    return _mean((np.abs(_arr(pred) - _arr(age)) <= k).astype(float))


def epsilon_error(pred: ArrayLike, mean: ArrayLike, std: ArrayLike) -> float:
    """ChaLearn LAP ε-error: mean of 1 - exp(-(pred - mean)² / (2 std²)).

    ``mean``/``std`` are the apparent-age label mean and spread; only rows with finite std > 0
    count (NaN when there is none).
    """
    p, s, m = _valid_gaussian(pred, std, mean)
    return _mean(1.0 - np.exp(-((p - m) ** 2) / (2.0 * s**2)))


# --------------------------------------------------------------------------- breakdowns
def age_group(ages: ArrayLike) -> np.ndarray:
    """Label of AGE_GROUPS for each age (grouped by floor(age)); None for NaN ages.

    Ages below the first group's lower edge fall into the first group.
    """
    a = _arr(ages)
    lows = np.array([g[1] for g in AGE_GROUPS], dtype=float)
    labels = np.array([g[0] for g in AGE_GROUPS], dtype=object)
    fl = np.floor(np.where(np.isfinite(a), a, 0.0))
    idx = np.clip(np.searchsorted(lows, fl, side="right") - 1, 0, len(lows) - 1)
    out = labels[idx]
    out[~np.isfinite(a)] = None
    return out


def _error_table(key: pd.Series, err: np.ndarray, order: Sequence[Any] | None) -> pd.DataFrame:
    """n, mae and bias (mean signed error) of ``err`` per value of ``key``."""
    frame = pd.DataFrame({"key": key.to_numpy(), "abs": np.abs(err), "err": err})
    g = frame.groupby("key", dropna=False, sort=order is None)
    table = pd.DataFrame({"n": g.size(), "mae": g["abs"].mean(), "bias": g["err"].mean()})
    if order is not None:
        table = table.reindex(list(order))
        table["n"] = table["n"].fillna(0)
    table["n"] = table["n"].astype(int)
    return table.rename_axis("key").reset_index()


def mae_by_group(df: pd.DataFrame) -> pd.DataFrame:
    """Per age group (all AGE_GROUPS, in order): columns ``group, n, mae, bias``.

    ``bias`` is mean(pred - age); empty groups have n = 0 and NaN errors.
    """
    err = _col(df, "pred") - _col(df, "age")
    groups = pd.Series(age_group(_col(df, "age")), index=df.index)
    table = _error_table(groups, err, order=[g[0] for g in AGE_GROUPS])
    return table.rename(columns={"key": "group"})


def mae_by(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per value of an attribute column (sorted; NaN kept as its own row): ``column, n, mae,
    bias``."""
    err = _col(df, "pred") - _col(df, "age")
    table = _error_table(df[column], err, order=None)
    return table.rename(columns={"key": column})


# --------------------------------------------------------------------------- bootstrap
def _boot_stats(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., Any],
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Bootstrap distribution of statistic(samples[0]) - statistic(samples[1]) - ...: each
    replicate draws one set of row indices shared by all arrays (paired resampling)."""
    n = samples[0].size
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // max(n, 1))  # bound memory: chunk x n indices at a time
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        vals = []
        for x in samples:
            draws = x[idx]
            try:
                v = np.asarray(statistic(draws, axis=1), dtype=float)
            except TypeError:  # statistic without an axis argument
                v = np.apply_along_axis(statistic, 1, draws).astype(float)
            vals.append(v)
        out[start:stop] = vals[0] - sum(vals[1:]) if len(vals) > 1 else vals[0]
    return out


def _cluster_boot_means(
    samples: Sequence[np.ndarray], groups: np.ndarray, n_boot: int, seed: int
) -> np.ndarray:
    """Bootstrap distribution of mean(samples[0]) - mean(samples[1]) - ... when rows come in
    correlated groups (the images of one person): each replicate draws whole groups with
    replacement, shared by all arrays, and takes the mean over the images they hold."""
    codes, labels = pd.factorize(groups)
    n_groups = len(labels)
    if n_groups < 2:
        raise ValueError(f"a cluster bootstrap needs at least 2 groups, got {n_groups}: one "
                         f"group says nothing about how the mean varies between groups")
    sizes = np.bincount(codes, minlength=n_groups)
    sums = np.stack([np.bincount(codes, weights=x, minlength=n_groups) for x in samples], 1)
    signs = np.r_[1.0, -np.ones(len(samples) - 1)]  # mean(a) - mean(b) - ...
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n_groups)  # bound memory: chunk x n_groups counts at a time
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        # how often each group is drawn when n_groups groups are drawn with replacement
        draws = rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups),
                                size=min(chunk, n_boot - start))
        out[start:start + len(draws)] = (draws @ sums / (draws @ sizes)[:, None]) @ signs
    return out


def _resampled(
    samples: list[np.ndarray],
    groups: ArrayLike | None,
    statistic: Callable[..., Any],
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Bootstrap replicates of the rows of ``samples`` (already free of non-finite rows), or of
    their ``groups`` when given (then only for the mean)."""
    if groups is None:
        return _boot_stats(samples, statistic, n_boot, seed)
    if statistic is not np.mean:
        raise ValueError("a cluster bootstrap (groups=) is implemented for the mean only")
    return _cluster_boot_means(samples, np.asarray(groups), n_boot, seed)


def _finite_rows(
    arrays: list[np.ndarray], groups: ArrayLike | None
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The rows where every array is finite, of the arrays and of ``groups`` (one per row)."""
    ok = np.logical_and.reduce([np.isfinite(x) for x in arrays])
    if groups is None:
        return [x[ok] for x in arrays], None
    g = np.asarray(groups).reshape(-1)
    if g.shape != ok.shape:
        raise ValueError(f"groups has {g.size} rows, the values {ok.size}")
    return [x[ok] for x in arrays], g[ok]


def bootstrap_ci(
    values: ArrayLike,
    statistic: Callable[..., Any] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: ArrayLike | None = None,
) -> tuple[float, float, float]:
    """Percentile bootstrap CI of ``statistic`` over the rows of a 1-D array.

    Returns (estimate on the full sample, low, high) at level 1 - alpha. Non-finite values are
    dropped; NaNs are returned for an empty sample. ``statistic`` should accept ``axis=`` (as
    numpy reductions do) to be vectorized; otherwise it is applied row by row. For the MAE, pass
    the per-image absolute errors. ``groups`` (one label per row, e.g. FG-NET's subject)
    resamples whole groups instead of rows, for rows that are not independent (mean only).
    """
    (v,), g = _finite_rows([_arr(values)], groups)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    est = float(statistic(v))
    boots = _resampled([v], g, statistic, n_boot, seed)
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return est, float(low), float(high)


def bootstrap_diff_ci(
    a: ArrayLike,
    b: ArrayLike,
    statistic: Callable[..., Any] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: ArrayLike | None = None,
) -> tuple[float, float, float]:
    """Paired percentile bootstrap CI of statistic(a) - statistic(b).

    ``a`` and ``b`` are per-image values of two methods on the same images (e.g. absolute
    errors), resampled with the same indices. Rows where either is non-finite are dropped.
    The difference is significant at level alpha when the interval excludes 0. ``groups``
    resamples whole groups of rows, as in :func:`bootstrap_ci`.
    """
    x, y = _arr(a), _arr(b)
    if x.shape != y.shape:
        raise ValueError(f"paired arrays differ in length: {x.shape} vs {y.shape}")
    (x, y), g = _finite_rows([x, y], groups)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    est = float(statistic(x)) - float(statistic(y))
    boots = _resampled([x, y], g, statistic, n_boot, seed)
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return est, float(low), float(high)


# --------------------------------------------------------------------------- uncertainty
def gaussian_nll(pred: ArrayLike, std: ArrayLike, age: ArrayLike) -> float:
    """Mean Gaussian negative log-likelihood (nats) of the labels under N(pred, std²)."""
    p, s, a = _valid_gaussian(pred, std, age)
    return _mean(0.5 * np.log(2 * np.pi * s**2) + (a - p) ** 2 / (2 * s**2))


def interval_coverage(
    pred: ArrayLike, std: ArrayLike, age: ArrayLike, level: float = 0.9
) -> tuple[float, float]:
    """(observed coverage, mean width in years) of the central ``level`` Gaussian intervals."""
    p, s, a = _valid_gaussian(pred, std, age)
    if p.size == 0:
        return math.nan, math.nan
    z = stats.norm.ppf(0.5 + level / 2)
    return _mean((np.abs(a - p) <= z * s).astype(float)), _mean(2 * z * s)


def calibration_curve(
    pred: ArrayLike,
    std: ArrayLike,
    age: ArrayLike,
    n_levels: int = 99,
    levels: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(expected, observed) coverage of central Gaussian intervals.

    Default levels are the ``n_levels`` interior points of an even grid on [0, 1]
    (0.01, ..., 0.99 for 99). Observed is NaN everywhere when no row has a finite std.
    """
    expected = np.linspace(0, 1, n_levels + 2)[1:-1] if levels is None else _arr(levels)
    p, s, a = _valid_gaussian(pred, std, age)
    if p.size == 0:
        return expected, np.full(expected.shape, math.nan)
    absz = np.sort(np.abs(a - p) / s)
    bounds = stats.norm.ppf(0.5 + expected / 2)
    observed = np.searchsorted(absz, bounds, side="right") / absz.size
    return expected, observed


def calibration_error(pred: ArrayLike, std: ArrayLike, age: ArrayLike, n_levels: int = 99) -> float:
    """Mean absolute calibration error: mean |expected - observed| coverage of central
    intervals over ``n_levels`` levels (uncertainty-toolbox's MACE, without the trivial 0 and 1
    levels)."""
    expected, observed = calibration_curve(pred, std, age, n_levels=n_levels)
    if np.isnan(observed).all():
        return math.nan
    return float(np.mean(np.abs(expected - observed)))


def _remaining_mae(err: np.ndarray, key: np.ndarray, n_removed: np.ndarray) -> np.ndarray:
    """MAE of ``err`` after removing the ``n_removed`` rows with the largest ``key``."""
    order = np.argsort(key, kind="stable")  # ascending: most certain first
    csum = np.cumsum(err[order])
    keep = err.size - n_removed
    return csum[keep - 1] / keep


def ause(
    pred: ArrayLike, std: ArrayLike, age: ArrayLike, n_steps: int = 100
) -> tuple[float, dict[str, np.ndarray]]:
    """Area under the sparsification error curve for the MAE (Ilg et al., 2018).

    For removed fractions 0, 1/n_steps, ..., (n_steps - 1)/n_steps, the MAE of the remaining
    images when removing the most uncertain ones (``model``) and when removing the largest
    errors (``oracle``), both divided by the MAE of all images; the sparsification error is
    their difference and AUSE its trapezoidal area over the fraction axis. Lower is better;
    0 means std ranks images exactly like their errors. Ties in std keep the input order.

    Returns (ause, curves) where curves has ``fraction, model, oracle, sparsification_error``
    (empty arrays and NaN when no row has a finite std).
    """
    p, s, a = _valid_gaussian(pred, std, age)
    if p.size == 0:
        empty = np.empty(0)
        keys = ("fraction", "model", "oracle", "sparsification_error")
        return math.nan, dict.fromkeys(keys, empty)
    err = np.abs(a - p)
    fraction = np.arange(n_steps) / n_steps
    n_removed = np.minimum(np.round(fraction * err.size).astype(int), err.size - 1)
    model = _remaining_mae(err, s, n_removed)
    oracle = _remaining_mae(err, err, n_removed)
    full = err.mean()
    if full > 0:
        model, oracle = model / full, oracle / full
    spars = model - oracle
    value = float(np.trapezoid(spars, fraction))
    curves = {"fraction": fraction, "model": model, "oracle": oracle, "sparsification_error": spars}
    return value, curves


def spearman_error_std(pred: ArrayLike, std: ArrayLike, age: ArrayLike) -> float:
    """Spearman rank correlation between std and |error| (NaN if undefined)."""
    p, s, a = _valid_gaussian(pred, std, age)
    err = np.abs(a - p)
    if p.size < 2 or np.ptp(s) == 0 or np.ptp(err) == 0:
        return math.nan
    return float(stats.spearmanr(s, err).statistic)


def fit_sigma_scale(pred: ArrayLike, std: ArrayLike, age: ArrayLike) -> float:
    """Scalar s minimising the Gaussian NLL of N(pred, (s·std)²): s = sqrt(mean(err²/std²)).

    Fit on the validation set, then multiply test stds by s (post-hoc recalibration).
    """
    p, s, a = _valid_gaussian(pred, std, age)
    return math.sqrt(_mean(((a - p) / s) ** 2)) if p.size else math.nan


def uncertainty_summary(
    df: pd.DataFrame, std_column: str = "std", n_levels: int = 99
) -> dict[str, float]:
    """All uncertainty metrics of ``df[std_column]`` against ``df.age`` (NaN when unusable).

    Keys: ``n_uncertainty`` (rows with finite std > 0), ``mean_std``, ``mean_std_aleatoric``,
    ``mean_std_epistemic``, ``nll``, ``coverage_50/90/95``, ``width_50/90/95``,
    ``calibration_error``, ``ause``, ``spearman``, ``spearman_aleatoric``,
    ``spearman_epistemic`` and ``sigma_scale`` (the NLL-optimal std multiplier on this set).
    """
    pred, std, age = _col(df, "pred"), _col(df, std_column), _col(df, "age")
    _, s_ok, _ = _valid_gaussian(pred, std, age)
    out: dict[str, float] = {"n_uncertainty": int(s_ok.size), "mean_std": _mean(s_ok)}
    for part in ("aleatoric", "epistemic"):
        comp = _col(df, f"std_{part}")
        out[f"mean_std_{part}"] = _mean(comp[np.isfinite(comp)])
    out["nll"] = gaussian_nll(pred, std, age)
    for level in COVERAGE_LEVELS:
        cov, width = interval_coverage(pred, std, age, level)
        out[f"coverage_{round(level * 100)}"] = cov
        out[f"width_{round(level * 100)}"] = width
    out["calibration_error"] = calibration_error(pred, std, age, n_levels=n_levels)
    out["ause"] = ause(pred, std, age)[0]
    out["spearman"] = spearman_error_std(pred, std, age)
    for part in ("aleatoric", "epistemic"):
        out[f"spearman_{part}"] = spearman_error_std(pred, _col(df, f"std_{part}"), age)
    out["sigma_scale"] = fit_sigma_scale(pred, std, age)
    return out


def reliability_diagram(
    df: pd.DataFrame,
    path: str | Path,
    std_column: str = "std",
    n_levels: int = 99,
    title: str | None = None,
) -> Path:
    """Write a PNG of observed vs expected central-interval coverage; returns the path.

    Uses matplotlib's Agg canvas directly (no pyplot, global backend untouched). With no finite
    std, the figure only says so.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pred, std, age = _col(df, "pred"), _col(df, std_column), _col(df, "age")
    expected, observed = calibration_curve(pred, std, age, n_levels=n_levels)
    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="ideal")
    if np.isnan(observed).all():
        ax.text(0.5, 0.5, "no finite std", ha="center", va="center")
    else:
        mace = float(np.mean(np.abs(expected - observed)))
        ax.fill_between(expected, expected, observed, alpha=0.2, color="C0")
        ax.plot(expected, observed, color="C0", label=f"model (MACE {mace:.3f})")
        ax.legend(loc="upper left")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("expected coverage (central interval)")
    ax.set_ylabel("observed coverage")
    ax.set_title(title or "Reliability diagram")
    ax.set_aspect("equal")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


# --------------------------------------------------------------------------- summaries
def _attribute_columns(df: pd.DataFrame, max_levels: int = 20) -> list[str]:
    """Non-numeric columns outside KNOWN_COLUMNS and pred_* with 1..max_levels distinct
    values."""
    cols = []
    for c in df.columns:
        # pred_<attribute>: an attribute head's output, not a subgroup of the data.
        if c in KNOWN_COLUMNS or c.startswith("pred_") or pd.api.types.is_numeric_dtype(df[c]):
            continue
        if 1 <= df[c].nunique(dropna=True) <= max_levels:
            cols.append(c)
    return cols


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-friendly dicts (Python scalars, NaN kept as float nan)."""
    rows = []
    for rec in table.to_dict(orient="records"):
        rows.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in rec.items()})
    return rows


def summarize(
    df: pd.DataFrame,
    attribute_columns: Iterable[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of a predictions frame as a JSON-friendly dict.

    Keys: ``n``, ``mae``, ``mae_ci`` ([low, high] 95 % bootstrap, omitted when n_boot = 0),
    ``rmse``, ``bias``, ``cs5``, ``epsilon`` and ``n_epsilon`` (rows with a known age_std;
    NaN/0 otherwise), ``by_group`` (list of {group, n, mae, bias}), ``by_attribute``
    ({column: list of {column, n, mae, bias}}) and ``uncertainty`` (uncertainty_summary, NaNs
    when no std). ``attribute_columns=None`` picks the non-numeric columns with <= 20 values.
    """
    pred, age = _col(df, "pred"), _col(df, "age")
    err = pred - age
    out: dict[str, Any] = {
        "n": len(df),
        "mae": mae(pred, age),
        "rmse": math.sqrt(_mean(err**2)) if err.size else math.nan,
        "bias": _mean(err),
        "cs5": cs_at(pred, age, 5),
    }
    if n_boot > 0:
        _, low, high = bootstrap_ci(np.abs(err), np.mean, n_boot=n_boot, seed=seed)
        out["mae_ci"] = [low, high]
    age_std = _col(df, "age_std")
    out["n_epsilon"] = int(np.sum(np.isfinite(age_std) & (np.nan_to_num(age_std) > 0)))
    out["epsilon"] = epsilon_error(pred, age, age_std)
    out["by_group"] = _records(mae_by_group(df))
    cols = _attribute_columns(df) if attribute_columns is None else list(attribute_columns)
    out["by_attribute"] = {c: _records(mae_by(df, c)) for c in cols if c in df.columns}
    out["uncertainty"] = uncertainty_summary(df)
    return out


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def _table(rows: list[dict[str, Any]], key: str) -> list[str]:
    lines = [f"  {key:<14} {'n':>7} {'MAE':>8} {'bias':>8}"]
    for r in rows:
        label = "NaN" if r[key] is None or r[key] != r[key] else str(r[key])
        lines.append(f"  {label:<14} {r['n']:>7d} {_fmt(r['mae']):>8} {_fmt(r['bias']):>8}")
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """Multi-line report of ``summarize``; the first line is exactly ``MAE <x.xxx>``."""
    lines = [f"MAE {summary['mae']:.3f}"]
    if "mae_ci" in summary:
        low, high = summary["mae_ci"]
        lines.append(f"MAE 95% CI [{_fmt(low)}, {_fmt(high)}]")
    lines.append(f"CS@5 {_fmt(summary.get('cs5'))}")
    if summary.get("n_epsilon", 0):
        lines.append(f"ε-error {_fmt(summary['epsilon'], 4)} (n={summary['n_epsilon']})")
    lines.append(
        f"n {summary.get('n')}  RMSE {_fmt(summary.get('rmse'))}  bias {_fmt(summary.get('bias'))}"
    )
    if summary.get("by_group"):
        lines += ["", "By age group:", *_table(summary["by_group"], "group")]
    if summary.get("by_shot"):
        lines += ["", "By shot (training images of the age):", *_table(summary["by_shot"], "shot")]
    for col, rows in summary.get("by_attribute", {}).items():
        lines += ["", f"By {col}:", *_table(rows, col)]
    if summary.get("attribute_accuracy"):
        lines.append("")
        lines += [f"Attribute accuracy {name} {_fmt(result['accuracy'])} (n={result['n']})"
                  for name, result in summary["attribute_accuracy"].items()]
    unc = summary.get("uncertainty") or {}
    if unc.get("n_uncertainty", 0):
        lines += ["", f"Uncertainty (n={unc['n_uncertainty']}):"]
        lines.append(
            f"  mean std {_fmt(unc['mean_std'])} (aleatoric {_fmt(unc['mean_std_aleatoric'])},"
            f" epistemic {_fmt(unc['mean_std_epistemic'])})"
        )
        lines.append(f"  NLL {_fmt(unc['nll'])}")
        for level in COVERAGE_LEVELS:
            pct = round(level * 100)
            lines.append(
                f"  coverage@{pct} {_fmt(unc[f'coverage_{pct}'])}"
                f" (width {_fmt(unc[f'width_{pct}'], 2)} y)"
            )
        lines.append(f"  calibration error {_fmt(unc['calibration_error'], 4)}")
        lines.append(f"  AUSE {_fmt(unc['ause'], 4)}")
        lines.append(
            f"  Spearman(std, |err|) {_fmt(unc['spearman'])}"
            f" (aleatoric {_fmt(unc['spearman_aleatoric'])},"
            f" epistemic {_fmt(unc['spearman_epistemic'])})"
        )
        lines.append(f"  NLL-optimal sigma scale {_fmt(unc['sigma_scale'])}")
    return "\n".join(lines)
