"""AdaBN: only BatchNorm statistics move, to the target data's; clear error without BN."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from age_estimation.engine.adabn import adapt_batchnorm, adaptation_split, batchnorm_layers
from age_estimation.models.model import AgeModel
from defaults import get_cfg_defaults


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)).eval()


def target_batches(n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 10, 10, generator=generator) * 3 + 5 for _ in range(n)]


def test_running_stats_become_the_targets_batch_statistics():
    model = toy_model()
    batches = target_batches()
    # What the BN layer sees: the conv output of each batch; per-batch channel mean / var.
    with torch.no_grad():
        conv_out = [model[0](b) for b in batches]
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in conv_out])
    variances = torch.stack([x.var(dim=(0, 2, 3)) for x in conv_out])  # unbiased, as BN
    bn = model[1]
    before = (bn.running_mean - means.mean(0)).abs().max().item()
    assert adapt_batchnorm(model, batches) == 24
    # Cumulative average: every batch counts equally, whatever came first.
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    assert (bn.running_mean - means.mean(0)).abs().max().item() < 1e-4 < before
    assert int(bn.num_batches_tracked) == 3
    assert bn.momentum == 0.1 and not model.training and not bn.training


def test_only_batchnorm_buffers_change_and_dropout_stays_off():
    model = toy_model()
    params = {k: v.clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    seen = []
    model[3].register_forward_hook(lambda m, i, o: seen.append(m.training))
    adapt_batchnorm(model, [{"image": b} for b in target_batches()], max_batches=2)
    assert seen == [False, False]  # dropout in eval mode; max_batches honoured
    for name, value in model.named_parameters():
        assert torch.equal(value, params[name]), name
    for name, value in model.named_buffers():
        assert not torch.equal(value, buffers[name]), name  # running_mean/var, num_batches


def test_age_model_adapts_on_uint8_batches():
    cfg = get_cfg_defaults()
    cfg.MODEL.BACKBONE, cfg.MODEL.HEAD = "resnet18", "l1"
    model = AgeModel(cfg).eval()
    params = [p.clone() for p in model.parameters()]
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert adapt_batchnorm(model, [{"image": images, "age": torch.zeros(4)}]) == 4
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert len(batchnorm_layers(model)) == 20 and not model.training


def test_model_without_batchnorm_is_a_clear_error():
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match=r"convnext_atto.*has none"):
        adapt_batchnorm(model, target_batches(1))


def test_no_batches_is_an_error():
    with pytest.raises(ValueError, match="no target images"):
        adapt_batchnorm(toy_model(), [])


def test_adaptation_split_is_seeded_disjoint_and_complete():
    adapt, evaluate = adaptation_split(10, 0.3, seed=4)
    assert len(adapt) == 3 and len(evaluate) == 7
    assert sorted(np.concatenate([adapt, evaluate]).tolist()) == list(range(10))
    again, _ = adaptation_split(10, 0.3, seed=4)
    assert np.array_equal(adapt, again)
    assert any(not np.array_equal(adapt, adaptation_split(10, 0.3, seed=s)[0]) for s in range(5))
    assert len(adaptation_split(10, 0.01)[0]) == 1 and len(adaptation_split(10, 0.99)[1]) == 1
    with pytest.raises(ValueError, match="fraction"):
        adaptation_split(10, 1.0)
