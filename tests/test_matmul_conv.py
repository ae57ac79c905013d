"""Convolutions as matrix products (TRAIN.MATMUL_CONV_MAX_AREA): the same numbers as F.conv2d,
forward and backward, routed only where they apply, and invisible to checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import CONFIG
from torch import nn

from age_estimation.config import ConfigError, load_config
from age_estimation.models import matmul_conv
from age_estimation.models.matmul_conv import (
    MatmulConv2d,
    matmul_conv2d,
    resolve_max_area,
    use_matmul_convs,
)
from age_estimation.models.model import AgeModel

GEOMETRIES = [  # (in, out, kernel, stride, padding, height, width)
    (8, 16, 3, 1, 1, 4, 4),
    (8, 16, 3, 2, 1, 7, 5),
    (8, 16, 1, 2, 0, 6, 6),
    (3, 8, 7, 2, 3, 11, 9),
    (4, 6, 3, 1, 0, 5, 6),
]


def _grads(conv, x, weight, grad):
    x = x.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    out = conv(x, weight)
    out.backward(grad)
    return out.detach(), x.grad, weight.grad


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_matches_conv2d_forward_and_both_gradients_in_float32(geometry, channels_last):
    c_in, c_out, kernel, stride, padding, h, w = geometry
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, c_in, h, w, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, kernel, kernel, generator=gen)
    reference = F.conv2d(x, weight, None, stride, padding)
    grad = torch.randn(reference.shape, generator=gen)
    expected = _grads(lambda a, b: F.conv2d(a, b, None, stride, padding), x, weight, grad)
    got = _grads(lambda a, b: matmul_conv2d(a, b, stride, padding), x, weight, grad)
    for name, g, e in zip(("output", "input grad", "weight grad"), got, expected):
        assert g.shape == e.shape, name
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4, msg=name)
    # the output is channels_last, as oneDNN's would be for a channels_last input
    assert got[0].is_contiguous(memory_format=torch.channels_last)


def test_autocast_computes_in_bfloat16_close_to_oneDNN():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 64, 4, 4, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 64, 3, 3, generator=gen) * 0.05
    grad = torch.randn(16, 64, 4, 4, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _grads(lambda a, b: F.conv2d(a, b, None, 1, 1), x, weight, grad)
        got = _grads(lambda a, b: matmul_conv2d(a, b, 1, 1), x, weight, grad)
    assert got[0].dtype == torch.bfloat16
    # gradients reach the float32 leaves in float32, as through F.conv2d's autocast cast
    assert got[1].dtype == got[2].dtype == torch.float32
    for name, g, e in zip(("output", "input grad", "weight grad"), got, expected):
        relative = ((g.float() - e.float()).norm() / e.float().norm()).item()
        assert relative < 1e-2, (name, relative)  # a few bf16 roundings, not a wrong result


def _spy(monkeypatch) -> list:
    calls = []
    real = matmul_conv.matmul_conv2d

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(matmul_conv, "matmul_conv2d", spy)
    return calls


def test_routes_only_small_bf16_maps_with_gradients(monkeypatch):
    calls = _spy(monkeypatch)
    conv = MatmulConv2d(4, 4, 3, 1, 1, bias=True)
    conv.max_area = 16
    small, large = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 5, 4)  # 16 and 20 output pixels
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routed = conv(small)
        conv(large)
        with torch.no_grad():  # inference keeps oneDNN
            conv(small)
    conv(small)  # float32: oneDNN
    assert calls == [small.shape]
    # the bias is added on the matrix-product path too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = F.conv2d(small, conv.weight, conv.bias, 1, 1)
    torch.testing.assert_close(routed.float(), reference.float(), rtol=2e-2, atol=2e-2)


def test_swap_keeps_parameters_state_dict_and_random_state():
    cfg = load_config(str(CONFIG), ["MODEL.IMG_SIZE", "64"])
    torch.manual_seed(0)
    model = AgeModel(cfg)
    before_keys = list(model.state_dict())
    params = {name: p for name, p in model.named_parameters()}
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        expected = model.eval()(x)
    rng = torch.get_rng_state()
    swapped = use_matmul_convs(model, 16)
    assert torch.equal(torch.get_rng_state(), rng)
    # ResNet-18: the stem, 16 block convolutions and 3 downsampling shortcuts
    assert swapped == 20
    assert sum(isinstance(m, MatmulConv2d) for m in model.modules()) == 20
    assert not any(type(m) is nn.Conv2d for m in model.modules())
    assert list(model.state_dict()) == before_keys
    assert all(p is params[name] for name, p in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    assert use_matmul_convs(AgeModel(cfg), 0) == 0


def test_grouped_and_dilated_convolutions_are_left_alone():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4),
                          nn.Conv2d(4, 4, 3, padding=2, dilation=2),
                          nn.Conv2d(4, 4, (1, 3), padding=(0, 1)),
                          nn.Conv2d(4, 4, 3, padding=1))
    assert use_matmul_convs(model, 16) == 1
    assert [type(m).__name__ for m in model] == ["Conv2d"] * 3 + ["MatmulConv2d"]


def test_model_gradients_match_oneDNN_under_autocast():
    cfg = load_config(str(CONFIG), ["MODEL.IMG_SIZE", "64", "MODEL.DROPOUT", "0.0"])
    torch.manual_seed(0)
    reference = AgeModel(cfg).train()
    for module in reference.modules():  # timm zero-inits each block's last BN: no gradient
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    x = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    ages = {"age": torch.linspace(5, 80, 8)}

    def gradients(max_area: int, amp: bool) -> dict[str, torch.Tensor]:
        model = AgeModel(cfg).train()
        model.load_state_dict(reference.state_dict())
        assert use_matmul_convs(model, max_area) == (20 if max_area else 0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model.head.loss(model(x), ages).mean().backward()
        return {n: p.grad.flatten() for n, p in model.named_parameters()}

    exact, onednn, routed = gradients(0, False), gradients(0, True), gradients(16, True)
    # layer4 (2x2 maps at 64 px) and layer3 (4x4) run as matrix products here, the stem not
    for name in ("backbone.layer4.1.conv2.weight", "backbone.layer4.0.downsample.0.weight",
                 "backbone.layer3.0.conv1.weight", "backbone.conv1.weight"):
        assert exact[name].norm() > 0, name
        assert F.cosine_similarity(onednn[name], routed[name], dim=0) > 0.99, name
        # as close to the float32 gradient as oneDNN's bf16 one is
        to_exact = [F.cosine_similarity(exact[name], g[name], dim=0) for g in (onednn, routed)]
        assert to_exact[1] > to_exact[0] - 0.01, (name, to_exact)


def test_auto_setting_follows_amx_and_never_runs_on_a_gpu(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(matmul_conv, "amx_available", lambda: True)
    assert resolve_max_area(-1, cpu) == matmul_conv.AUTO_MAX_AREA
    assert resolve_max_area(-1, gpu) == resolve_max_area(36, gpu) == 0
    assert resolve_max_area(36, cpu) == 36 and resolve_max_area(0, cpu) == 0
    monkeypatch.setattr(matmul_conv, "amx_available", lambda: False)
    assert resolve_max_area(-1, cpu) == 0 and resolve_max_area(9, cpu) == 9


def test_config_refuses_a_meaningless_area():
    with pytest.raises(ConfigError, match=r"TRAIN\.MATMUL_CONV_MAX_AREA = -2"):
        load_config(str(CONFIG), ["TRAIN.MATMUL_CONV_MAX_AREA", "-2"])


@pytest.mark.parametrize("setting", [16, 0])
def test_trainer_routes_by_the_setting_and_writes_plain_checkpoints(setting, tmp_path):
    from helpers import write_csv_dataset

    from age_estimation.engine.checkpoint import load_checkpoint
    from age_estimation.engine.trainer import Trainer

    labels = write_csv_dataset(tmp_path, {"train": 8, "valid": 4})
    cfg = load_config(str(CONFIG), [
        "OUTPUT_DIR", str(tmp_path / "run"), "DATA.DATASET", "csv", "DATA.ROOT", str(labels),
        "DATA.CACHE_DIR", str(tmp_path / "cache"), "MODEL.IMG_SIZE", "32", "TRAIN.EPOCHS", "1",
        "TRAIN.BATCH_SIZE", "4", "TRAIN.MATMUL_CONV_MAX_AREA", str(setting)])
    trainer = Trainer(cfg)
    trainer.fit()
    routed = sum(isinstance(m, MatmulConv2d) for m in trainer.model.modules())
    assert routed == (20 if setting else 0)
    plain = AgeModel(cfg)
    plain.load_state_dict(load_checkpoint(tmp_path / "run" / "last.pth")["model"])  # strict


def test_unbatched_and_too_small_inputs_get_nn_conv2d_behaviour(monkeypatch):
    calls = _spy(monkeypatch)
    conv = MatmulConv2d(4, 4, 3, 1, 0)
    conv.max_area = 16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unbatched = conv(torch.randn(4, 4, 4))  # [C, H, W], which nn.Conv2d accepts
        assert unbatched.shape == (4, 2, 2)
        # a 1x1 map under a 3x3 kernel without padding: PyTorch's own error, not a bad shape
        with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
            conv(torch.randn(2, 4, 1, 1))
    assert calls == []
