"""The math of every formulation (configs built from defaults.py)."""

import math

import pytest
import torch

from age_estimation.models.heads import AGE_CENTER, AGE_SCALE, HEADS
from defaults import get_cfg_defaults


def make_head(name: str, **model_keys):
    cfg = get_cfg_defaults()
    cfg.MODEL.HEAD = name
    for key, value in model_keys.items():
        cfg.MODEL[key] = value
    return HEADS[name](8, cfg)


def test_registry_has_every_formulation():
    assert set(HEADS) == {"l1", "l2", "dex", "dldl", "residual_dex", "ordinal", "gaussian",
                          "laplace"}


def test_dex_expectation_of_one_hot_is_that_age():
    head = make_head("dex")
    logits = torch.full((3, 101), -1e4)
    for row, age in enumerate((0, 37, 100)):
        logits[row, age] = 0.0
    prediction = head.predict(logits)
    assert torch.allclose(prediction.mean, torch.tensor([0.0, 37.0, 100.0]))
    assert torch.allclose(prediction.std_aleatoric, torch.zeros(3), atol=1e-3)


def test_dex_std_is_the_spread_of_its_distribution():
    head = make_head("dex")
    logits = torch.full((1, 101), -1e4)
    logits[0, 20] = logits[0, 30] = 0.0  # two equally likely ages
    prediction = head.predict(logits)
    assert prediction.mean.item() == pytest.approx(25.0)
    assert prediction.std_aleatoric.item() == pytest.approx(5.0, abs=1e-3)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_soft_targets_sum_to_one_and_keep_the_age(smoothing):
    head = make_head("dex", LABEL_SMOOTHING=smoothing)
    ages = torch.tensor([0.0, 12.3, 50.0, 99.7, 100.0, 116.0])
    targets = head.soft_targets(ages)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6))
    assert (targets >= 0).all()
    expected = (1 - smoothing) * ages.clamp(0, 100) + smoothing * 50.0
    assert torch.allclose((targets * head.ages).sum(dim=1), expected, atol=1e-4)
    if smoothing:
        assert targets.min() == pytest.approx(smoothing / 101)


def test_dex_loss_is_cross_entropy_against_two_hot():
    head = make_head("dex")
    logits = torch.randn(2, 101)
    loss = head.loss(logits, {"age": torch.tensor([10.25, 40.0])})
    logp = torch.log_softmax(logits, dim=1)
    expected0 = -(0.75 * logp[0, 10] + 0.25 * logp[0, 11])
    assert loss[0].item() == pytest.approx(expected0.item(), rel=1e-5)
    assert loss[1].item() == pytest.approx(-logp[1, 40].item(), rel=1e-5)


def test_dldl_targets_are_a_discretised_gaussian_around_the_age():
    head = make_head("dldl", DLDL_SIGMA=3.0)
    targets = head.soft_targets(torch.tensor([40.0, 0.0, 130.0]))
    assert torch.allclose(targets.sum(dim=1), torch.ones(3))
    # centred at 40 with std 3: the ratio of neighbouring bins is the Gaussian's
    assert (targets[0] * head.ages).sum().item() == pytest.approx(40.0, abs=1e-4)
    spread = (targets[0] * (head.ages - 40).square()).sum().sqrt().item()
    assert spread == pytest.approx(3.0, abs=1e-3)
    assert (targets[0, 43] / targets[0, 40]).item() == pytest.approx(math.exp(-0.5), rel=1e-4)
    # ages beyond the classes are clamped to the last one, as for DEX
    assert targets[2].argmax().item() == 100 and targets[1].argmax().item() == 0


def test_dldl_loss_is_kl_plus_weighted_l1_of_the_expectation():
    head = make_head("dldl", DLDL_L1_WEIGHT=0.5)
    logits = torch.randn(2, 101)
    ages = torch.tensor([10.0, 63.5])
    target = head.soft_targets(ages)
    log_probs = torch.log_softmax(logits, dim=1)
    kl = (torch.special.xlogy(target, target) - target * log_probs).sum(dim=1)
    expectation = (log_probs.exp() * torch.arange(101.0)).sum(dim=1)
    expected = kl + 0.5 * (expectation - ages).abs()
    assert torch.allclose(head.loss(logits, {"age": ages}), expected, atol=1e-5)
    # the KL part vanishes where the softmax is the label distribution itself
    exact = head.loss(target.clamp_min(1e-30).log(), {"age": ages})
    assert torch.allclose(exact, 0.5 * ((target * head.ages).sum(dim=1) - ages).abs(),
                          atol=1e-4)


def test_residual_dex_target_uses_the_unrounded_age():
    head = make_head("residual_dex")
    bins, residuals = head.residual_target(torch.tensor([23.3, 23.7, 40.0]))
    assert bins.tolist() == [23, 24, 40]
    assert torch.allclose(residuals, torch.tensor([0.3, -0.3, 0.0]), atol=1e-5)


def test_residual_dex_prediction_adds_the_residual_of_the_bin():
    head = make_head("residual_dex")
    outputs = torch.full((1, 202), -1e4)
    outputs[0, 30] = 0.0  # all probability on age 30
    outputs[0, 101:] = 0.0
    outputs[0, 101 + 30] = math.atanh(0.4)  # residual +0.4 on that bin
    assert head.predict(outputs).mean.item() == pytest.approx(30.4, abs=1e-4)
    # The loss's residual term is zero exactly when the residual matches age - bin.
    exact = head.loss(outputs, {"age": torch.tensor([30.4])})
    off = head.loss(outputs, {"age": torch.tensor([29.8])})
    assert exact.item() == pytest.approx(0.0, abs=1e-4)
    assert off.item() > 0.5


@pytest.mark.parametrize("method", ["coral", "corn"])
def test_ordinal_probabilities_are_monotone_and_decode(method):
    head = make_head("ordinal", ORDINAL=method)
    outputs = head(torch.randn(16, 8))
    above = head.exceedance(outputs)
    assert above.shape == (16, 100)
    assert (above[:, 1:] <= above[:, :-1] + 1e-7).all()
    prediction = head.predict(outputs)
    assert torch.allclose(prediction.mean, above.sum(dim=1), atol=1e-4)


def test_coral_decodes_a_confident_rank():
    head = make_head("ordinal", ORDINAL="coral")
    logits = torch.where(torch.arange(100) < 42, 20.0, -20.0)[None]  # P(age > k) = 1 iff k < 42
    assert head.predict(logits).mean.item() == pytest.approx(42.0, abs=1e-3)
    loss_right = head.loss(logits, {"age": torch.tensor([42.0])})
    loss_wrong = head.loss(logits, {"age": torch.tensor([60.0])})
    assert loss_right.item() < 1e-3 < loss_wrong.item()


def test_corn_conditional_decoding_and_task_subsets():
    head = make_head("ordinal", ORDINAL="corn")
    # P(age > k | age > k-1): certain up to k = 29, then 0.5 at k = 30, then 0.
    logits = torch.full((1, 100), -30.0)
    logits[0, :30] = 30.0
    logits[0, 30] = 0.0
    assert head.predict(logits).mean.item() == pytest.approx(30.5, abs=1e-3)
    # An image aged 5 trains only tasks k = 0..5 (those with age > k - 1).
    zero_logits = torch.zeros(1, 100)
    loss = head.loss(zero_logits, {"age": torch.tensor([5.0])})
    assert loss.item() == pytest.approx(6 * math.log(2), rel=1e-5)


@pytest.mark.parametrize("method", ["coral", "corn"])
def test_ordinal_loss_of_a_fractional_age_interpolates_the_whole_ages(method):
    # A teacher's age 30.25 is age 30 with weight 0.75 and age 31 with weight 0.25; before,
    # CORN rounded it to 30 and lost the fraction a distilled student is taught.
    head = make_head("ordinal", ORDINAL=method)
    outputs = torch.randn(1, 100).repeat(3, 1)
    loss = head.loss(outputs, {"age": torch.tensor([30.0, 31.0, 30.25])})
    assert loss[2].item() == pytest.approx(0.75 * loss[0].item() + 0.25 * loss[1].item(), rel=1e-5)
    assert loss[0].item() != pytest.approx(loss[1].item(), rel=1e-3)


@pytest.mark.parametrize("variance", ["hetero", "homo"])
def test_gaussian_nll_equals_the_closed_form(variance):
    head = make_head("gaussian", VARIANCE=variance)
    outputs = torch.tensor([[30.0, math.log(4.0)], [50.0, math.log(2.0)]])
    ages = torch.tensor([34.0, 49.0])
    loss = head.loss(outputs, {"age": ages})
    for i, (mu, sigma, y) in enumerate([(30, 4, 34), (50, 2, 49)]):
        closed = 0.5 * math.log(2 * math.pi * sigma**2) + (y - mu) ** 2 / (2 * sigma**2)
        assert loss[i].item() == pytest.approx(closed, rel=1e-5)
    assert head.predict(outputs).std_aleatoric.tolist() == pytest.approx([4.0, 2.0])


def test_laplace_nll_equals_the_closed_form_and_std_is_sqrt2_b():
    head = make_head("laplace")
    outputs = torch.tensor([[30.0, math.log(3.0)]])
    loss = head.loss(outputs, {"age": torch.tensor([36.0])})
    assert loss.item() == pytest.approx(math.log(2 * 3.0) + 6.0 / 3.0, rel=1e-5)
    assert head.predict(outputs).std_aleatoric.item() == pytest.approx(math.sqrt(2) * 3.0)


def test_homo_vs_hetero_parameter_counts():
    count = lambda head: sum(p.numel() for p in head.parameters())  # noqa: E731
    for name in ("gaussian", "laplace"):
        hetero, homo = make_head(name, VARIANCE="hetero"), make_head(name, VARIANCE="homo")
        assert count(hetero) == 2 * (8 + 1)  # mean and log-scale from the features
        assert count(homo) == (8 + 1) + 1  # mean from the features + one log-scale parameter
        features = torch.randn(5, 8)
        homo_std = homo.predict(homo(features)).std_aleatoric
        assert torch.allclose(homo_std, homo_std[0].expand(5))  # one scale for every image


def test_regression_heads_start_at_the_centre_and_have_no_aleatoric_std():
    for name in ("l1", "l2"):
        head = make_head(name)
        prediction = head.predict(head(torch.randn(4, 8)))
        assert torch.allclose(prediction.mean, torch.full((4,), AGE_CENTER))
        assert torch.isnan(prediction.std_aleatoric).all()
    l1, l2 = make_head("l1"), make_head("l2")
    outputs = torch.tensor([AGE_CENTER + AGE_SCALE * 0.0, 40.0])
    ages = {"age": torch.tensor([30.0, 43.0])}
    assert l1.loss(outputs, ages).tolist() == pytest.approx([5.0, 3.0])
    assert l2.loss(outputs, ages).tolist() == pytest.approx([25.0, 9.0])


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_learns_a_toy_problem(name):
    """A linear feature -> age map: a few hundred Adam steps must cut the MAE well below the
    spread of the ages (catches sign errors and dead gradients)."""
    torch.manual_seed(0)
    head = make_head(name)
    ages = torch.rand(256) * 80
    features = torch.stack([ages / 40 - 1] + [torch.randn(256) * 0.1 for _ in range(7)], dim=1)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        head.loss(head(features), {"age": ages}).mean().backward()
        optimizer.step()
    with torch.no_grad():
        mae = (head.predict(head(features)).mean - ages).abs().mean().item()
    assert mae < 6.0, f"{name}: MAE {mae:.2f} after training on a linear toy problem"


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_large_100", "efficientnet_b0"])
def test_model_head_matches_the_backbone_output_width(backbone):
    """MobileNetV3's pooled output (1280) is wider than its `num_features` (960)."""
    from age_estimation.models.model import AgeModel

    cfg = get_cfg_defaults()
    cfg.MODEL.BACKBONE = backbone
    model = AgeModel(cfg).eval()
    with torch.no_grad():
        prediction = model.predict(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert prediction.mean.shape == (2,) and torch.isfinite(prediction.mean).all()


def test_total_std_treats_a_missing_aleatoric_part_per_image():
    from age_estimation.models.heads import Prediction

    nan = float("nan")
    prediction = Prediction(torch.zeros(3), torch.tensor([nan, nan, 3.0]),
                            torch.tensor([0.0, 4.0, 4.0]))
    std = prediction.std
    assert torch.isnan(std[0])  # no spread of any kind: unknown, not 0
    assert std[1].item() == pytest.approx(4.0) and std[2].item() == pytest.approx(5.0)


@pytest.mark.parametrize("key, value", [("DLDL_SIGMA", "0.0"), ("DLDL_L1_WEIGHT", "-1.0")])
def test_config_refuses_a_meaningless_dldl_setting(key, value):
    from age_estimation.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=rf"MODEL\.{key} = {value}"):
        load_config(None, [f"MODEL.{key}", value])
