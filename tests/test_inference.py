"""Inference math and mechanics: the mixture rule, MC-Dropout, test-time views, --tta parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from age_estimation.engine.inference import (
    TTA_VIEWS,
    TTA_ZOOM,
    combine,
    parse_tta,
    predict_batch,
    predict_loader,
    tta_view,
)
from age_estimation.models.heads import Prediction
from age_estimation.models.model import AgeModel
from defaults import get_cfg_defaults


def tiny_model(head: str = "gaussian", dropout: float = 0.5) -> AgeModel:
    """resnet18 at random weights; a non-zero head so dropout changes its output."""
    cfg = get_cfg_defaults()
    cfg.MODEL.HEAD, cfg.MODEL.DROPOUT, cfg.MODEL.IMG_SIZE = head, dropout, 32
    torch.manual_seed(0)
    model = AgeModel(cfg)
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(1),
                         dtype=torch.uint8)


def pred(mean, aleatoric, epistemic=0.0) -> Prediction:
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return Prediction(t(mean), t(aleatoric), t(epistemic))


# ------------------------------------------------------------------ combine
def test_combine_two_members_by_hand():
    # means 10, 20 (variance of means 25); aleatoric stds 3, 4 (mean variance 12.5)
    out = combine([pred(10, 3), pred(20, 4)])
    assert out.mean.item() == pytest.approx(15.0)
    assert out.std_aleatoric.item() == pytest.approx(math.sqrt(12.5))
    assert out.std_epistemic.item() == pytest.approx(5.0)
    assert out.std.item() == pytest.approx(math.sqrt(37.5))


def test_nested_combination_equals_the_flat_mixture():
    members = [pred(m, a) for m, a in ((10, 1), (14, 2), (30, 3), (31, 5))]
    nested = combine([combine(members[:2]), combine(members[2:])])
    flat = combine(members)
    for field in ("mean", "std_aleatoric", "std_epistemic"):
        assert getattr(nested, field).item() == pytest.approx(getattr(flat, field).item())
    # by hand: means 10,14,30,31 -> mean 21.25, var 87.6875; aleatoric var mean (1+4+9+25)/4
    assert flat.std_epistemic.item() == pytest.approx(math.sqrt(87.6875))
    assert flat.std_aleatoric.item() == pytest.approx(math.sqrt(9.75))


def test_weighted_groups_equal_the_flat_mixture():
    # e.g. ensemble members at two input sizes: two at one size, one at the other
    members = [pred(m, a, e) for m, a, e in ((10, 1, 0.5), (14, 2, 1.0), (30, 3, 0.0))]
    grouped = combine([combine(members[:2]), members[2]], weights=[2, 1])
    flat = combine(members)
    for field in ("mean", "std_aleatoric", "std_epistemic"):
        assert getattr(grouped, field).item() == pytest.approx(getattr(flat, field).item())
    assert grouped.mean.item() == pytest.approx(18.0)
    # unweighted, the single member would count as much as the pair: a different mean
    assert combine([combine(members[:2]), members[2]]).mean.item() == pytest.approx(21.0)


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [0.0, 0.0]])
def test_combine_refuses_bad_weights(weights):
    with pytest.raises(ValueError, match="weight"):
        combine([pred(10, 1), pred(20, 1)], weights=weights)


def outputs(ids, means, probs=None):
    """predict_outputs-style arrays for images `ids` (std 1, no epistemic spread)."""
    n = len(ids)
    columns = {"index": np.arange(n), "id": np.array(ids, dtype=object),
               "mean": np.array(means, dtype=float), "median": np.array(means, dtype=float),
               "std": np.ones(n), "std_aleatoric": np.ones(n), "std_epistemic": np.zeros(n)}
    return columns if probs is None else {**columns, "probs": np.array(probs, dtype=float)}


def test_combine_outputs_weighs_groups_and_refuses_predictions_of_different_images():
    from age_estimation.engine.evaluation import combine_outputs

    first, other = outputs(["a", "b"], [10.0, 20.0]), outputs(["a", "b"], [14.0, 30.0])
    mixed = combine_outputs([first, other], [1, 3])
    assert mixed["mean"].tolist() == pytest.approx([13.0, 27.5])
    assert mixed["id"].tolist() == ["a", "b"]
    assert "probs" not in mixed and mixed["median"].tolist() == pytest.approx([13.0, 27.5])
    with pytest.raises(ValueError, match="different images"):
        combine_outputs([first, outputs(["b", "a"], [14.0, 30.0])], [1, 1])


def test_combine_outputs_mixes_the_age_distributions_of_groups():
    """Groups at two input sizes: the median is the mixture's, not a mean of medians."""
    from age_estimation.engine.evaluation import combine_outputs

    one_hot_10 = np.eye(50)[[10]]
    split_20_40 = 0.5 * (np.eye(50)[[20]] + np.eye(50)[[40]])
    a = outputs(["x"], [10.0], one_hot_10)
    b = outputs(["x"], [30.0], split_20_40)
    mixed = combine_outputs([a, b], [1, 1])
    # 0.5 at 10, 0.25 at 20, 0.25 at 40: median 10 (the medians' mean would be 15)
    assert mixed["median"].tolist() == [10.0]
    assert mixed["mean"].tolist() == pytest.approx([20.0])
    assert mixed["probs"].sum() == pytest.approx(1.0)
    # two of the first kind against one of the second: still 10, now 2/3 of the mass
    assert combine_outputs([a, b], [2, 1])["probs"][0, 10] == pytest.approx(2 / 3)


def test_combine_of_heads_without_aleatoric_std():
    out = combine([pred(10, math.nan), pred(16, math.nan)])
    assert math.isnan(out.std_aleatoric.item())
    assert out.std_epistemic.item() == pytest.approx(3.0)
    assert out.std.item() == pytest.approx(3.0)  # the missing aleatoric part counts as 0
    single = combine([pred(10, math.nan)])
    assert math.isnan(single.std.item())  # one L1 model has no spread at all


def test_combine_refuses_no_members():
    with pytest.raises(ValueError):
        combine([])


# ------------------------------------------------------------------ the median
def distribution(probs) -> Prediction:
    probs = torch.tensor([probs], dtype=torch.float32)
    ages = torch.arange(probs.shape[1], dtype=torch.float32)
    mean = (probs * ages).sum(dim=1)
    return Prediction(mean, torch.zeros(1), torch.zeros(1), probs)


def test_median_of_a_distribution_over_ages_by_hand():
    out = distribution([0.1, 0.3, 0.2, 0.4])  # cumulative 0.1, 0.4, 0.6, 1.0
    assert out.median.item() == 2.0
    assert out.mean.item() == pytest.approx(1.9)
    assert distribution([0.5, 0.0, 0.5]).median.item() == 0.0  # reaches 1/2 at age 0
    assert pred(33.3, 2.0).median.item() == pytest.approx(33.3)  # no distribution: the mean


def test_the_median_minimises_the_expected_absolute_error():
    generator = torch.Generator().manual_seed(0)
    ages = torch.arange(30, dtype=torch.float32)
    for _ in range(50):
        # skewed distributions, where mean and median part
        probs = torch.rand(30, generator=generator) ** 4
        probs /= probs.sum()
        out = distribution(probs.tolist())
        # expected |age - a| for a = each whole age, the median and the mean
        candidates = torch.cat([ages, out.median, out.mean])
        expected_error = (probs[None, :] * (ages[None, :] - candidates[:, None]).abs()).sum(1)
        at_median, at_mean = expected_error[-2], expected_error[-1]
        assert at_median.item() == pytest.approx(expected_error[:-2].min().item(), abs=1e-6)
        assert at_median <= at_mean + 1e-6


def test_combine_mixes_distributions_and_pads_a_shorter_age_range():
    young = distribution([0.0, 0.0, 1.0])  # a member with MODEL.MAX_AGE 2
    old = distribution([0.0, 0.0, 0.0, 0.2, 0.8])
    mixed = combine([young, old, old])
    assert mixed.probs.shape == (1, 5)
    assert mixed.probs[0].tolist() == pytest.approx([0, 0, 1 / 3, 0.4 / 3, 1.6 / 3])
    assert mixed.median.item() == 4.0
    # the mixture mean is the mean of the mixed distribution
    assert mixed.mean.item() == pytest.approx((mixed.probs[0] * torch.arange(5.0)).sum().item())
    # a member without a distribution (e.g. a gaussian head): no exact median, the mean
    no_probs = combine([young, pred(10.0, 1.0)])
    assert no_probs.probs is None and no_probs.median.item() == pytest.approx(6.0)


@pytest.mark.parametrize("head", ["dex", "dldl", "ordinal"])
def test_heads_over_ages_keep_their_distribution(head):
    out = predict_batch(tiny_model(head), images())
    assert out.probs.shape == (3, 101)  # ages 0..MODEL.MAX_AGE (100)
    assert torch.allclose(out.probs.sum(dim=1), torch.ones(3), atol=1e-5)
    ages = torch.arange(out.probs.shape[1], dtype=torch.float32)
    assert torch.allclose((out.probs * ages).sum(dim=1), out.mean, atol=1e-3)
    assert torch.equal(out.median, out.median.round())


@pytest.mark.parametrize("head", ["residual_dex", "gaussian", "l1"])
def test_other_heads_report_the_mean_as_median(head):
    out = predict_batch(tiny_model(head), images())
    assert out.probs is None
    assert torch.equal(out.median, out.mean)


# ------------------------------------------------------------------ MC-Dropout
def test_mc_dropout_runs_the_backbone_once_per_view_and_varies():
    model = tiny_model()
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    head_calls = []
    model.head.register_forward_hook(lambda *_: head_calls.append(1))
    out = predict_batch(model, images(), views=("identity", "flip"), mc_samples=7)
    assert len(calls) == 2 and len(head_calls) == 14
    assert (out.std_epistemic > 0).all()
    assert torch.isfinite(out.std_aleatoric).all() and (out.std_aleatoric > 0).all()
    assert not model.training and not model.dropout.training  # modes restored


def test_without_mc_dropout_a_single_view_is_deterministic():
    model = tiny_model()
    out = predict_batch(model, images())
    assert (out.std_epistemic == 0).all()
    assert torch.equal(out.mean, predict_batch(model, images()).mean)


def test_mc_dropout_needs_dropout():
    with pytest.raises(ValueError, match="DROPOUT"):
        predict_batch(tiny_model(dropout=0.0), images(), mc_samples=5)


def test_predict_loader_ensemble_combines_members_and_keeps_order():
    a, b = tiny_model("dex"), tiny_model("dex")
    torch.nn.init.normal_(b.head.fc.bias, std=2.0)  # a different member
    x = images(5)
    batches = [{"image": x[:3], "index": torch.arange(3)},
               {"image": x[3:], "index": torch.arange(3, 5)}]
    out = predict_loader([a, b], batches, views=("identity", "flip"))
    assert out["index"].tolist() == [0, 1, 2, 3, 4]
    expected = combine([predict_batch(m, x, ("identity", "flip")) for m in (a, b)])
    assert torch.allclose(torch.from_numpy(out["mean"]), expected.mean, atol=1e-4)
    assert torch.allclose(torch.from_numpy(out["probs"]), expected.probs, atol=1e-5)
    assert np.array_equal(out["median"], expected.median.numpy())
    assert torch.allclose(torch.from_numpy(out["std_epistemic"]), expected.std_epistemic,
                          atol=1e-4)
    assert (out["std_epistemic"] > 0).all()


# ------------------------------------------------------------------ test-time views
def test_flip_views_are_horizontal_flips():
    x = images()
    assert torch.equal(tta_view(x, "identity"), x)
    assert torch.equal(tta_view(x, "flip"), torch.flip(x, dims=[-1]))
    assert torch.equal(tta_view(x, "zoom_in_flip"), tta_view(torch.flip(x, dims=[-1]), "zoom_in"))


def ramp(size: int = 40) -> torch.Tensor:
    """A float image whose value is its column index: bilinear resizing keeps it linear."""
    return torch.arange(size, dtype=torch.float32).expand(1, 3, size, size).clone()


def test_zoom_in_is_a_centre_crop_resized():
    size = 40
    out = tta_view(ramp(size), "zoom_in")
    crop = round(size / TTA_ZOOM)
    start = (size - crop) // 2
    # Output pixel j samples the crop at (j + 0.5) * crop / size - 0.5 (half-pixel centres).
    cols = torch.arange(size, dtype=torch.float32)
    expected = start + (cols + 0.5) * crop / size - 0.5
    assert out.shape == (1, 3, size, size)
    assert torch.allclose(out[0, 0, 5, 2:-2], expected[2:-2], atol=1e-4)
    assert torch.allclose(out[0, :, :, 7], out[0, 0, 0, 7].expand(3, size))  # rows unchanged


def test_zoom_out_shrinks_the_face_inside_a_replicated_border():
    size = 40
    flat = torch.full((1, 3, size, size), 77, dtype=torch.uint8)
    assert torch.equal(tta_view(flat, "zoom_out"), flat)  # replicate padding adds no edge
    out = tta_view(ramp(size), "zoom_out")[0, 0, 0]
    # The ramp gets steeper by the zoom factor (interior) and stays centred.
    slope = (out[25] - out[15]) / 10
    assert slope.item() == pytest.approx(TTA_ZOOM, rel=0.02)
    assert out[size // 2 - 1 : size // 2 + 1].mean().item() == pytest.approx((size - 1) / 2)


def test_views_keep_uint8_dtype_and_shape():
    x = images(2)
    for view in TTA_VIEWS:
        out = tta_view(x, view)
        assert out.dtype == torch.uint8 and out.shape == x.shape, view
    with pytest.raises(ValueError):
        tta_view(x, "rotate")


def test_zoom_matches_interpolate_of_the_crop_for_uint8():
    x = images(1, 33)
    crop = round(33 / TTA_ZOOM)
    start = (33 - crop) // 2
    patch = x[..., start:start + crop, start:start + crop].float()
    expected = F.interpolate(patch, size=(33, 33), mode="bilinear", align_corners=False)
    assert torch.equal(tta_view(x, "zoom_in"), expected.round().clamp(0, 255).to(torch.uint8))


@pytest.mark.parametrize(("spec", "views"), [
    (None, ("identity",)), (0, ("identity",)), ("1", ("identity",)),
    (2, ("identity", "flip")), ("6", TTA_VIEWS), ("flip", ("identity", "flip")),
    ("all", TTA_VIEWS), ("zoom", ("identity", "zoom_in", "zoom_out")),
    ("identity, zoom_in_flip", ("identity", "zoom_in_flip")),
])
def test_parse_tta(spec, views):
    assert parse_tta(spec) == views


@pytest.mark.parametrize("spec", ["7", "-1", "rotate", "identity,rotate", "flip,flip"])
def test_parse_tta_refuses(spec):
    with pytest.raises(ValueError):
        parse_tta(spec)
