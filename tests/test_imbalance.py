"""Loss re-weighting, LDS, FDS, the balanced sampler and the shot groups on toy numbers."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from age_estimation.data.imbalance import (
    BalancedSampler,
    FeatureSmoothing,
    age_shot_groups,
    mae_by_shot,
    sample_weights,
    shot_summary,
    smoothed_density,
    smoothing_kernel,
)

# Histogram of integer ages 0, 1, 2: 4, 2, 1 images (1.5 and 2.9 fall in bins 1 and 2).
TOY_AGES = np.array([0, 0, 0.2, 0.9, 1, 1.5, 2.9])


def test_inverse_weights_are_one_over_count_with_mean_one():
    weights = sample_weights(TOY_AGES, "inverse")
    # 1/4, 1/2, 1 per bin; their sum over samples is 3, scaled to the 7 samples' mean of 1.
    expected = np.array([1 / 4] * 4 + [1 / 2] * 2 + [1]) * 7 / 3
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert weights.mean() == pytest.approx(1.0)


def test_sqrt_inverse_weights():
    raw = np.array([1 / 2] * 4 + [1 / math.sqrt(2)] * 2 + [1])
    np.testing.assert_allclose(sample_weights(TOY_AGES, "sqrt_inverse"), raw * 7 / raw.sum(),
                               rtol=1e-6)


def test_none_weights_are_ones():
    np.testing.assert_array_equal(sample_weights(TOY_AGES, "none"), np.ones(7))


def test_kernels_by_hand():
    np.testing.assert_allclose(smoothing_kernel("triang", 3, 1.0), [0.5, 1, 0.5])
    np.testing.assert_allclose(smoothing_kernel("triang", 5, 1.0), [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    np.testing.assert_allclose(smoothing_kernel("gaussian", 5, 2.0),
                               np.exp(-np.array([4, 1, 0, 1, 4]) / 8))
    np.testing.assert_allclose(smoothing_kernel("laplace", 3, 2.0),
                               np.exp(-np.array([1, 0, 1]) / 2))
    with pytest.raises(ValueError, match="odd"):
        smoothing_kernel("gaussian", 4, 2.0)
    with pytest.raises(ValueError, match="kernel"):
        smoothing_kernel("box", 3, 2.0)


def test_lds_density_and_weights_by_hand():
    # counts [4, 2, 1] * triangle [0.5, 1, 0.5], zero beyond the ends:
    # bin 0: 4 + 0.5*2 = 5; bin 1: 0.5*4 + 2 + 0.5*1 = 4.5; bin 2: 0.5*2 + 1 = 2.
    np.testing.assert_allclose(smoothed_density(TOY_AGES, "triang", 3), [5, 4.5, 2])
    raw = np.array([1 / 5] * 4 + [1 / 4.5] * 2 + [1 / 2])
    np.testing.assert_allclose(sample_weights(TOY_AGES, "lds", "triang", 3), raw * 7 / raw.sum(),
                               rtol=1e-6)
    # sqrt_lds smooths the square-root counts [2, √2, 1].
    root = np.sqrt([4, 2, 1])
    density = [root[0] + 0.5 * root[1], 0.5 * root[0] + root[1] + 0.5 * root[2],
               0.5 * root[1] + root[2]]
    np.testing.assert_allclose(smoothed_density(TOY_AGES, "triang", 3, sqrt=True), density)


def test_lds_borrows_density_from_neighbouring_ages():
    # An age with a single image between two crowded ages: inverse frequency gives it a huge
    # weight, LDS a moderate one because its neighbours make it well covered.
    ages = np.array([10] * 50 + [11] + [12] * 50)
    inverse = sample_weights(ages, "inverse")
    lds = sample_weights(ages, "lds", "gaussian", 5, 2.0)
    assert inverse[50] / inverse[0] == pytest.approx(50.0)
    assert 0.9 < lds[50] / lds[0] < 1.5


def test_unknown_reweight_is_refused():
    with pytest.raises(ValueError, match=r"LOSS\.REWEIGHT"):
        sample_weights(TOY_AGES, "focal")


# ------------------------------------------------------------------------------------- FDS
def test_fds_first_update_stores_bin_mean_and_unbiased_var():
    fds = FeatureSmoothing(2, max_age=4, start_epoch=1, kernel="triang", ks=1).train()
    features = torch.tensor([[1.0, 10.0], [3.0, 14.0], [5.0, 0.0]])
    ages = torch.tensor([1.2, 1.9, 3.0])
    out = fds(features, ages)
    assert torch.equal(out, features)  # no statistics yet: identity
    fds.end_epoch(0)
    assert fds.tracked.tolist() == [False, True, False, True, False]
    torch.testing.assert_close(fds.running_mean[1], torch.tensor([2.0, 12.0]))
    torch.testing.assert_close(fds.running_var[1], torch.tensor([2.0, 8.0]))  # /(n - 1)
    torch.testing.assert_close(fds.running_mean[3], torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(fds.running_var[3], torch.tensor([0.0, 0.0]))  # single sample
    assert float(fds.epoch_count.sum()) == 0.0  # sums reset for the next epoch


def test_fds_ignores_non_finite_features():
    fds = FeatureSmoothing(1, max_age=2, kernel="triang", ks=1).train()
    fds(torch.tensor([[1.0], [float("nan")], [3.0]]), torch.tensor([1.0, 1.0, 1.0]))
    fds.end_epoch(0)
    assert fds.running_mean[1, 0].item() == pytest.approx(2.0)


def test_fds_momentum_keeps_that_share_of_the_history():
    fds = FeatureSmoothing(1, max_age=2, momentum=0.9, kernel="triang", ks=1).train()
    fds(torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 1.0]))
    fds.end_epoch(0)
    fds(torch.tensor([[11.0], [15.0]]), torch.tensor([1.0, 1.0]))
    fds.end_epoch(1)
    # mean: 0.9 * 2 + 0.1 * 13; var: 0.9 * 2 + 0.1 * 8
    assert fds.running_mean[1, 0].item() == pytest.approx(3.1)
    assert fds.running_var[1, 0].item() == pytest.approx(2.6)


def test_fds_smooths_statistics_across_neighbouring_ages():
    fds = FeatureSmoothing(1, max_age=4, kernel="triang", ks=3)  # kernel [.25, .5, .25]
    # One image per bin, feature 4 at age 2 and 0 elsewhere.
    fds.train()(torch.tensor([[0.0], [0.0], [4.0], [0.0], [0.0]]), torch.arange(5.0))
    fds.end_epoch(0)
    torch.testing.assert_close(fds.smoothed_mean[:, 0], torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0]))


def test_fds_recalibrates_in_training_only():
    fds = FeatureSmoothing(1, max_age=2, kernel="triang", ks=3)
    with torch.no_grad():
        fds.tracked.fill_(True)
        fds.running_mean[:, 0] = torch.tensor([0.0, 2.0, 0.0])
        fds.running_var[:, 0] = torch.tensor([1.0, 4.0, 1.0])
        fds.smoothed_mean[:, 0] = torch.tensor([0.0, 1.0, 0.0])
        fds.smoothed_var[:, 0] = torch.tensor([1.0, 1.0, 1.0])
    features = torch.tensor([[6.0]], requires_grad=True)
    out = fds.train()(features, torch.tensor([1.5]))
    # (6 - 2) * sqrt(1 / 4) + 1 = 3
    assert out.item() == pytest.approx(3.0)
    out.sum().backward()
    assert features.grad.item() == pytest.approx(0.5)  # gradients flow through the rescaling
    assert torch.equal(fds.eval()(features, torch.tensor([1.5])), features)


def test_fds_waits_for_its_start_epoch():
    fds = FeatureSmoothing(1, max_age=2, start_epoch=3, kernel="triang", ks=1).train()
    for epoch in range(2):
        fds(torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 1.0]))
        fds.end_epoch(epoch)
    assert not fds.tracked.any()  # epochs 0 and 1 are before the statistics used in epoch 3
    fds(torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 1.0]))
    fds.end_epoch(2)
    assert fds.tracked[1]


# --------------------------------------------------------------------------------- sampler
def test_balanced_sampler_flattens_the_age_histogram():
    ages = np.array([20] * 600 + [30] * 60 + [40] * 6)
    sampler = BalancedSampler(sample_weights(ages, "inverse"), seed=3)
    assert len(sampler) == len(ages)
    drawn = []
    for epoch in range(30):
        sampler.set_epoch(epoch)
        drawn.extend(sampler)
    shares = np.bincount(ages[drawn])[[20, 30, 40]] / len(drawn)
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.02)  # the raw data: 90 / 9 / 1 %


def test_balanced_sampler_is_a_function_of_seed_and_epoch():
    weights = sample_weights(np.arange(50) % 7, "inverse")
    a, b = BalancedSampler(weights, seed=1, epoch=4), BalancedSampler(weights, seed=1)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(a) != list(BalancedSampler(weights, seed=2, epoch=4))


# ------------------------------------------------------------------------------ shot groups
def test_shot_group_thresholds():
    train = [30] * 101 + [40] * 100 + [50] * 20 + [60] * 19
    groups = age_shot_groups(train, [30.7, 40, 50.2, 60, 70])
    assert list(groups) == ["many", "medium", "medium", "few", "few"]


def test_mae_by_shot():
    train = [30] * 101 + [50] * 20
    df = pd.DataFrame({"age": [30, 30.5, 50, 80], "pred": [31, 28.5, 54, 80]})
    table = mae_by_shot(df, train)
    assert table["shot"].tolist() == ["many", "medium", "few"]
    assert table["n"].tolist() == [2, 1, 1]
    np.testing.assert_allclose(table["mae"], [1.5, 4.0, 0.0])
    np.testing.assert_allclose(table["bias"], [-0.5, 4.0, 0.0])
    summary = shot_summary(df.iloc[:2], train)
    assert summary["n_many"] == 2 and summary["n_few"] == 0
    assert summary["mae_many"] == pytest.approx(1.5) and math.isnan(summary["mae_few"])
