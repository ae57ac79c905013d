"""Tests of age_estimation.metrics against numbers worked out by hand on tiny arrays."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from age_estimation import metrics

PRED = np.array([10.0, 20.0, 30.0, 40.0])
AGE = np.array([12.0, 20.0, 24.0, 41.0])  # |err| = 2, 0, 6, 1


# --------------------------------------------------------------------------- point metrics
def test_mae_and_cs():
    assert metrics.mae(PRED, AGE) == pytest.approx(9 / 4)
    assert metrics.cs_at(PRED, AGE, k=5) == pytest.approx(3 / 4)
    assert metrics.cs_at(PRED, AGE, k=2) == pytest.approx(3 / 4)  # |err| == k counts
    assert metrics.cs_at(PRED, AGE, k=1) == pytest.approx(2 / 4)
    assert metrics.cs_at(PRED, AGE, k=0.5) == pytest.approx(1 / 4)
    assert math.isnan(metrics.mae([], []))


def test_epsilon_error():
    # rows: 1-exp(-4/8), 1-exp(0), 1-exp(-36/18), 1-exp(-1/2)
    expected = (2 * (1 - math.exp(-0.5)) + (1 - math.exp(-2.0))) / 4
    assert metrics.epsilon_error(PRED, AGE, [2.0, 1.0, 3.0, 1.0]) == pytest.approx(expected)
    assert metrics.epsilon_error(PRED, AGE, [2.0, 1.0, 3.0, 1.0]) == pytest.approx(
        0.4129007, abs=1e-6
    )
    # NaN / zero label std rows are skipped
    only_two = (1 - math.exp(-0.5)) / 2
    assert metrics.epsilon_error(PRED, AGE, [2.0, 1.0, np.nan, 0.0]) == pytest.approx(only_two)
    assert math.isnan(metrics.epsilon_error(PRED, AGE, [np.nan] * 4))


# --------------------------------------------------------------------------- breakdowns
def test_age_group_edges():
    ages = [0.5, 12.0, 12.9, 13.0, 19.99, 20.0, 39.5, 40.0, 59.9, 60.0, 95.0, np.nan]
    expected = [
        "0-12",
        "0-12",
        "0-12",
        "13-19",
        "13-19",
        "20-39",
        "20-39",
        "40-59",
        "40-59",
        "60+",
        "60+",
        None,
    ]
    assert list(metrics.age_group(ages)) == expected
    assert [g[0] for g in metrics.AGE_GROUPS] == ["0-12", "13-19", "20-39", "40-59", "60+"]


def test_mae_by_group_and_attribute():
    df = pd.DataFrame(
        {
            "age": [5.0, 12.9, 13.0, 60.0],
            "pred": [6.0, 10.9, 13.0, 50.0],
            "gender": ["F", "M", "F", "M"],
        }
    )
    t = metrics.mae_by_group(df)
    assert list(t["group"]) == ["0-12", "13-19", "20-39", "40-59", "60+"]
    assert list(t["n"]) == [2, 1, 0, 0, 1]
    assert t["mae"].iloc[0] == pytest.approx(1.5)
    assert t["bias"].iloc[0] == pytest.approx(-0.5)
    assert t["mae"].iloc[1] == pytest.approx(0.0)
    assert math.isnan(t["mae"].iloc[2])
    assert t["mae"].iloc[4] == pytest.approx(10.0)

    g = metrics.mae_by(df, "gender")
    assert list(g.columns) == ["gender", "n", "mae", "bias"]
    assert list(g["gender"]) == ["F", "M"]
    assert list(g["n"]) == [2, 2]
    assert list(g["mae"]) == pytest.approx([0.5, 6.0])
    assert list(g["bias"]) == pytest.approx([0.5, -6.0])


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_mean_and_shrinks():
    rng = np.random.default_rng(1)
    big = rng.normal(3.0, 1.0, size=5000)
    small = rng.normal(3.0, 1.0, size=500)
    est, lo, hi = metrics.bootstrap_ci(big, n_boot=1000, seed=0)
    assert est == pytest.approx(big.mean())
    assert lo < 3.0 < hi
    assert lo < est < hi
    _, lo_s, hi_s = metrics.bootstrap_ci(small, n_boot=1000, seed=0)
    assert lo_s < 3.0 < hi_s
    assert (hi - lo) < 0.5 * (hi_s - lo_s)  # width ~ 1/sqrt(n): ratio ~ 0.32
    # 95 % normal-theory width is 2 * 1.96 / sqrt(5000) ~ 0.0554
    assert hi - lo == pytest.approx(2 * 1.96 / math.sqrt(5000), rel=0.15)


def test_bootstrap_constant_and_fallback():
    assert metrics.bootstrap_ci(np.full(50, 7.0)) == (7.0, 7.0, 7.0)
    x = np.random.default_rng(2).exponential(size=300)
    # a statistic without axis= falls back to row-by-row and draws the same resamples
    vec = metrics.bootstrap_ci(x, np.median, n_boot=200, seed=3)
    slow = metrics.bootstrap_ci(x, lambda v: float(np.median(v)), n_boot=200, seed=3)
    assert vec == pytest.approx(slow)
    assert metrics.bootstrap_ci([np.nan, np.nan]) != metrics.bootstrap_ci([1.0])
    assert all(math.isnan(v) for v in metrics.bootstrap_ci([np.nan, np.nan]))


def test_bootstrap_diff_ci_paired():
    rng = np.random.default_rng(4)
    b = rng.exponential(5.0, size=2000)  # per-image errors vary a lot ...
    a = b + 0.1 + rng.normal(0, 0.05, size=b.size)  # ... but A is always ~0.1 worse
    est, lo, hi = metrics.bootstrap_diff_ci(a, b)
    assert est == pytest.approx(a.mean() - b.mean())
    assert 0 < lo < 0.1 < hi < 0.2  # pairing removes the between-image spread
    assert metrics.bootstrap_diff_ci(b + 1.0, b) == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="paired"):
        metrics.bootstrap_diff_ci([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- uncertainty
def test_gaussian_nll_closed_form():
    pred, std, age = [0.0, 1.0, 5.0, 5.0], [1.0, 2.0, np.nan, 0.0], [1.0, 1.0, 3.0, 3.0]
    row0 = 0.5 * math.log(2 * math.pi) + 0.5
    row1 = 0.5 * math.log(2 * math.pi * 4.0)
    assert metrics.gaussian_nll(pred, std, age) == pytest.approx((row0 + row1) / 2)
    assert metrics.gaussian_nll(pred, std, age) == pytest.approx(1.5155121, abs=1e-6)
    assert math.isnan(metrics.gaussian_nll([1.0], [np.nan], [1.0]))


def test_interval_coverage_by_hand():
    pred, std, age = np.zeros(4), np.ones(4), [0.5, -1.0, 2.0, 0.7]
    cov, width = metrics.interval_coverage(pred, std, age, 0.5)  # z = 0.6745
    assert cov == pytest.approx(0.25)
    assert width == pytest.approx(2 * 0.6744898, abs=1e-6)
    cov, width = metrics.interval_coverage(pred, std, age, 0.9)  # z = 1.6449
    assert cov == pytest.approx(0.75)
    assert width == pytest.approx(2 * 1.6448536, abs=1e-6)


def _gaussian_sample(n=20000, scale=1.0, seed=0):
    """Predictions whose true spread is ``scale`` times the stated std."""
    rng = np.random.default_rng(seed)
    pred = rng.uniform(1, 90, size=n)
    std = rng.uniform(1.0, 8.0, size=n)
    age = pred + scale * std * rng.standard_normal(n)
    return pred, std, age


def test_calibrated_sample_coverage_and_error():
    pred, std, age = _gaussian_sample()
    for level in (0.5, 0.9, 0.95):
        cov, width = metrics.interval_coverage(pred, std, age, level)
        assert cov == pytest.approx(level, abs=0.01)
        assert width > 0
    assert metrics.calibration_error(pred, std, age) < 0.01


def test_overconfident_sample_has_large_error():
    pred, std, age = _gaussian_sample(scale=2.0)  # stated std half the real one
    cov90, _ = metrics.interval_coverage(pred, std, age, 0.9)
    assert cov90 == pytest.approx(0.5886, abs=0.015)  # P(|Z| <= 1.645 / 2)
    assert metrics.calibration_error(pred, std, age) > 0.15


def test_calibration_curve_levels():
    expected, observed = metrics.calibration_curve([0.0, 0.0], [1.0, 1.0], [0.1, 3.0], n_levels=3)
    assert list(expected) == pytest.approx([0.25, 0.5, 0.75])
    # |z| = 0.1 is inside every interval, |z| = 3 inside none of these
    assert list(observed) == pytest.approx([0.5, 0.5, 0.5])
    assert metrics.calibration_error(
        [0.0, 0.0], [1.0, 1.0], [0.1, 3.0], n_levels=3
    ) == pytest.approx((0.25 + 0.0 + 0.25) / 3)


def test_ause_by_hand_and_extremes():
    # errors 1..4, std ranks them backwards (the worst possible ordering)
    pred, age, std = np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 3.0, 2.0, 1.0])
    value, curves = metrics.ause(pred, std, age, n_steps=4)
    assert list(curves["fraction"]) == pytest.approx([0, 0.25, 0.5, 0.75])
    assert list(curves["model"]) == pytest.approx([1.0, 1.2, 1.4, 1.6])
    assert list(curves["oracle"]) == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert value == pytest.approx(0.45)

    rng = np.random.default_rng(5)
    pred = rng.uniform(0, 80, 3000)
    age = pred + rng.normal(0, 5, 3000)
    perfect, _ = metrics.ause(pred, 0.3 * np.abs(pred - age), age)
    assert perfect == pytest.approx(0.0, abs=1e-12)
    random_std = rng.uniform(1, 10, 3000)
    noisy, curves = metrics.ause(pred, random_std, age)
    assert noisy > 0.2
    assert curves["model"][0] == pytest.approx(1.0)
    assert math.isnan(metrics.ause(pred, np.full(3000, np.nan), age)[0])


def test_spearman():
    pred, age = np.zeros(5), np.array([1.0, -2.0, 3.0, 4.0, -5.0])
    err = np.abs(age)
    assert metrics.spearman_error_std(pred, err**2 + 1, age) == pytest.approx(1.0)
    assert metrics.spearman_error_std(pred, 10 - err, age) == pytest.approx(-1.0)
    assert math.isnan(metrics.spearman_error_std(pred, np.ones(5), age))


def test_fit_sigma_scale():
    assert metrics.fit_sigma_scale([0.0, 0.0], [1.0, 2.0], [3.0, 2.0]) == pytest.approx(
        math.sqrt(5)
    )
    pred, std, age = _gaussian_sample(scale=2.0, seed=6)
    s = metrics.fit_sigma_scale(pred, std, age)
    assert s == pytest.approx(2.0, abs=0.05)
    nll = metrics.gaussian_nll(pred, s * std, age)
    assert nll < metrics.gaussian_nll(pred, std, age)
    assert nll <= metrics.gaussian_nll(pred, 1.05 * s * std, age)
    assert nll <= metrics.gaussian_nll(pred, 0.95 * s * std, age)
    assert metrics.calibration_error(pred, s * std, age) < 0.01


def test_against_uncertainty_toolbox():
    uct = pytest.importorskip("uncertainty_toolbox")
    for scale in (1.0, 2.0, 0.7):
        pred, std, age = _gaussian_sample(n=3000, scale=scale, seed=7)
        levels = np.linspace(0, 1, 100)  # uct's grid for num_bins=100
        exp_, obs = metrics.calibration_curve(pred, std, age, levels=levels)
        ref = uct.mean_absolute_calibration_error(pred, std, age, num_bins=100, vectorized=True)
        assert np.mean(np.abs(exp_ - obs)) == pytest.approx(ref, abs=1e-12)
        # our default drops the trivial 0 and 1 levels of uct's 101-point grid
        ref101 = uct.mean_absolute_calibration_error(pred, std, age, num_bins=101)
        assert metrics.calibration_error(pred, std, age) == pytest.approx(
            ref101 * 101 / 99, abs=1e-9
        )
        ref_nll = uct.metrics_scoring_rule.nll_gaussian(pred, std, age)
        assert metrics.gaussian_nll(pred, std, age) == pytest.approx(ref_nll, rel=1e-10)


# --------------------------------------------------------------------------- summaries
def _frame(with_std=True):
    rng = np.random.default_rng(8)
    n = 400
    age = rng.uniform(1, 90, n)
    std = rng.uniform(2, 6, n)
    pred = age + std * rng.standard_normal(n)
    df = pd.DataFrame(
        {
            "id": [f"img{i}" for i in range(n)],
            "path": [f"/data/img{i}.jpg" for i in range(n)],
            "age": age,
            "age_std": np.where(np.arange(n) % 2 == 0, 3.0, np.nan),
            "pred": pred,
            "std": std if with_std else np.nan,
            "std_aleatoric": std if with_std else np.nan,
            "std_epistemic": 0.0,
            "gender": np.where(np.arange(n) % 3 == 0, "F", "M"),
            "subject": [f"s{i}" for i in range(n)],  # too many values for auto-detection
        }
    )
    return df


def test_summarize_and_format():
    df = _frame()
    s = metrics.summarize(df, n_boot=200)
    assert s["n"] == 400
    assert s["mae"] == pytest.approx(np.mean(np.abs(df["pred"] - df["age"])))
    assert s["mae_ci"][0] < s["mae"] < s["mae_ci"][1]
    assert s["n_epsilon"] == 200
    assert np.isfinite(s["epsilon"])
    assert [r["group"] for r in s["by_group"]] == [g[0] for g in metrics.AGE_GROUPS]
    assert list(s["by_attribute"]) == ["gender"]
    assert s["uncertainty"]["n_uncertainty"] == 400
    assert s["uncertainty"]["coverage_90"] == pytest.approx(0.9, abs=0.06)
    assert math.isnan(s["uncertainty"]["spearman_epistemic"])  # constant 0 epistemic
    text = metrics.format_summary(s)
    first = text.splitlines()[0]
    assert re.fullmatch(r"MAE \d+\.\d{3}", first)
    assert first == f"MAE {s['mae']:.3f}"
    for needle in (
        "CS@5",
        "ε-error",
        "By age group",
        "60+",
        "By gender",
        "NLL",
        "AUSE",
        "coverage@90",
        "calibration error",
    ):
        assert needle in text
    explicit = metrics.summarize(df, attribute_columns=["subject"], n_boot=0)
    assert "mae_ci" not in explicit
    assert len(explicit["by_attribute"]["subject"]) == 400


def test_summary_without_std_does_not_crash():
    df = _frame(with_std=False)
    u = metrics.uncertainty_summary(df)
    assert u["n_uncertainty"] == 0
    for key in (
        "nll",
        "coverage_50",
        "width_95",
        "calibration_error",
        "ause",
        "spearman",
        "sigma_scale",
        "mean_std",
    ):
        assert math.isnan(u[key]), key
    bare = df[["age", "pred"]]  # no std / age_std columns at all
    s = metrics.summarize(bare, n_boot=50)
    assert math.isnan(s["uncertainty"]["nll"])
    assert math.isnan(s["epsilon"])
    text = metrics.format_summary(s)
    assert text.splitlines()[0] == f"MAE {s['mae']:.3f}"
    assert "NLL" not in text
    assert "ε-error" not in text


def test_reliability_diagram_png(tmp_path):
    df = _frame()
    out = metrics.reliability_diagram(df, tmp_path / "sub" / "rel.png")
    data = out.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    empty = metrics.reliability_diagram(_frame(with_std=False), tmp_path / "none.png")
    assert empty.read_bytes()[:4] == b"\x89PNG"


def test_cluster_bootstrap_resamples_people_not_images():
    # 12 people x 40 photos whose errors are mostly the person's: the photos are not 480
    # independent draws, so the image bootstrap is too narrow and the cluster one is not
    rng = np.random.default_rng(5)
    person = rng.exponential(5.0, size=12)
    groups = np.repeat([f"s{i:02d}" for i in range(12)], 40)
    errors = np.repeat(person, 40) + rng.normal(0, 0.1, size=480)
    est, lo, hi = metrics.bootstrap_ci(errors, groups=groups, n_boot=2000)
    _, img_lo, img_hi = metrics.bootstrap_ci(errors, n_boot=2000)
    _, person_lo, person_hi = metrics.bootstrap_ci(errors.reshape(12, 40).mean(1), n_boot=2000)
    assert est == pytest.approx(errors.mean())
    assert hi - lo > 3 * (img_hi - img_lo)
    # with groups of equal size it is the bootstrap of the 12 people's mean errors
    assert hi - lo == pytest.approx(person_hi - person_lo, rel=0.15)
    # paired: B is a constant 0.2 better on every photo, whatever the person
    diff = metrics.bootstrap_diff_ci(errors, errors - 0.2, groups=groups)
    assert diff == pytest.approx((0.2, 0.2, 0.2))
    # unequal groups: each replicate is a mean over the photos drawn, not over people
    assert metrics.bootstrap_ci([1.0, 1.0, 1.0, 4.0], groups=["a", "a", "a", "b"])[0] == 1.75


def test_cluster_bootstrap_checks_its_inputs():
    with pytest.raises(ValueError, match="mean only"):
        metrics.bootstrap_ci([1.0, 2.0], np.median, groups=["a", "b"])
    with pytest.raises(ValueError, match="at least 2 groups, got 1"):
        metrics.bootstrap_ci([1.0, 2.0, 3.0], groups=["a", "a", "a"])
    with pytest.raises(ValueError, match="groups has 1 rows, the values 2"):
        metrics.bootstrap_diff_ci([1.0, 2.0], [1.0, 2.0], groups=["a"])
    # a non-finite row is dropped with its group label
    est, lo, hi = metrics.bootstrap_ci([1.0, np.nan, 3.0, 1.0, 3.0],
                                       groups=["a", "b", "a", "c", "c"])
    assert (est, lo, hi) == (2.0, 2.0, 2.0)
