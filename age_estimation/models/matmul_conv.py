"""Convolutions on small feature maps as one matrix product (im2col) in CPU bf16 training.

Why: oneDNN's convolution kernels run well on large maps but not on the small, wide maps of a
backbone's last stage at face-sized inputs (ResNet-18's layer4 is 3x3 at 96 px, 4x4 at 112 px):
there, on an AMX CPU, forward + backward of one 512-channel 3x3 convolution took about 3x the
time of the same arithmetic as the three matrix products below (`python scripts/bench_train.py
--conv-table`, results/bench/train.md). A large bf16 matrix product reaches the AMX units' rate,
so unfolding the small input once (9 shifted copies of a few hundred pixels) and multiplying is
faster, forward and backward; on large maps oneDNN is much faster, hence `max_area`.

Only training uses it (inference keeps oneDNN: no weight gradient to save there), only where
the compute dtype is bf16 on the CPU, and only for layers whose output map has at most
`max_area` pixels; everything else falls through to `nn.Conv2d`. The modules keep the
parameters and state-dict keys of the convolutions they replace, so checkpoints are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from age_estimation.hardware import cpu_has

# Output maps of at most this many pixels use the matrix product when TRAIN.MATMUL_CONV_MAX_AREA
# is -1 (auto) on an AMX CPU: the 3x3 and 4x4 maps, where it was measured 2.4-3.1x faster, not
# ResNet-18's 6x6 layer3 maps at 96 px, where the two were even for the 3x3 convolutions
# (scripts/bench_train.py --conv-table, results/bench/train.md).
AUTO_MAX_AREA = 16


def _windows(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def unfold_nhwc(x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """[N, H, W, C] -> [N * Ho * Wo, kernel * kernel * C], columns ordered (row, col, channel):
    one copy per kernel offset, each a strided slice of the zero-padded input."""
    n, h, w, c = x.shape
    ho, wo = _windows(h, kernel, stride, padding), _windows(w, kernel, stride, padding)
    padded = F.pad(x, (0, 0, padding, padding, padding, padding))
    cols = x.new_empty(n, ho, wo, kernel, kernel, c)
    for i in range(kernel):
        for j in range(kernel):
            cols[:, :, :, i, j] = padded[:, i:i + stride * (ho - 1) + 1:stride,
                                         j:j + stride * (wo - 1) + 1:stride]
    return cols.view(n * ho * wo, kernel * kernel * c)


def fold_nhwc(cols: Tensor, shape: torch.Size, kernel: int, stride: int, padding: int) -> Tensor:
    """The adjoint of `unfold_nhwc`: sums each column entry back onto the input pixel it came
    from, [N * Ho * Wo, kernel * kernel * C] -> [N, H, W, C]."""
    n, h, w, c = shape
    ho, wo = _windows(h, kernel, stride, padding), _windows(w, kernel, stride, padding)
    cols = cols.view(n, ho, wo, kernel, kernel, c)
    padded = cols.new_zeros(n, h + 2 * padding, w + 2 * padding, c)
    for i in range(kernel):
        for j in range(kernel):
            padded[:, i:i + stride * (ho - 1) + 1:stride,
                   j:j + stride * (wo - 1) + 1:stride] += cols[:, :, :, i, j]
    return padded[:, padding:padding + h, padding:padding + w]


class _MatmulConv2dFunction(torch.autograd.Function):
    """conv2d (square kernel, equal strides and paddings, no dilation or groups, no bias) as
    out = unfold(x) @ W^T; grad_W = grad_out^T @ unfold(x); grad_x = fold(grad_out @ W)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
        out_channels, in_channels, kernel, _ = weight.shape
        # A channels_last NCHW tensor is a contiguous NHWC one: this permute copies nothing.
        pixels = x.permute(0, 2, 3, 1).contiguous()
        cols = unfold_nhwc(pixels, kernel, stride, padding)
        weight_2d = weight.permute(0, 2, 3, 1).reshape(out_channels, -1)
        n, h, w, _ = pixels.shape
        ho, wo = _windows(h, kernel, stride, padding), _windows(w, kernel, stride, padding)
        ctx.save_for_backward(cols, weight_2d)
        ctx.geometry = (pixels.shape, kernel, stride, padding, in_channels)
        # [N, Ho, Wo, O] seen as NCHW: a channels_last output, as oneDNN's would be.
        return (cols @ weight_2d.t()).view(n, ho, wo, out_channels).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        cols, weight_2d = ctx.saved_tensors
        shape, kernel, stride, padding, in_channels = ctx.geometry
        grad_2d = grad_out.permute(0, 2, 3, 1).reshape(-1, weight_2d.shape[0])
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = fold_nhwc(grad_2d @ weight_2d, shape, kernel, stride,
                               padding).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_2d.t() @ cols).view(
                -1, kernel, kernel, in_channels).permute(0, 3, 1, 2)
        return grad_x, grad_weight, None, None


def matmul_conv2d(x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """F.conv2d(x, weight, None, stride, padding) computed as matrix products (see module doc);
    under CPU autocast both operands are cast to its dtype first, as F.conv2d's would be."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
    return _MatmulConv2dFunction.apply(x, weight, stride, padding)


class MatmulConv2d(nn.Conv2d):
    """An nn.Conv2d that trains through `matmul_conv2d` when its output map has at most
    `max_area` pixels, the input is on the CPU, gradients are on and the compute dtype is bf16;
    otherwise it is the plain nn.Conv2d."""

    max_area: int = 0

    def _takes_matmul(self, x: Tensor) -> bool:
        # Unbatched [C, H, W] inputs and maps smaller than the kernel go to nn.Conv2d, which
        # handles the one and names the problem of the other.
        if x.device.type != "cpu" or not torch.is_grad_enabled() or x.dim() != 4:
            return False
        bf16 = x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu") and
                                             torch.get_autocast_dtype("cpu") == torch.bfloat16)
        kernel, stride, padding = self.kernel_size[0], self.stride[0], self.padding[0]
        rows = _windows(x.shape[-2], kernel, stride, padding)
        cols = _windows(x.shape[-1], kernel, stride, padding)
        return bf16 and rows > 0 and cols > 0 and rows * cols <= self.max_area

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not self._takes_matmul(input):
            return super()._conv_forward(input, weight, bias)
        out = matmul_conv2d(input, weight, self.stride[0], self.padding[0])
        return out if bias is None else out + bias.to(out.dtype).view(1, -1, 1, 1)


def convertible(conv: nn.Module) -> bool:
    """Plain nn.Conv2d (not a subclass with its own padding logic) of the supported geometry."""
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and conv.kernel_size[0] == conv.kernel_size[1] and conv.stride[0] == conv.stride[1]
            and conv.padding[0] == conv.padding[1])


def use_matmul_convs(model: nn.Module, max_area: int) -> int:
    """Swap every convertible nn.Conv2d in `model` for a MatmulConv2d holding the very same
    parameters (optimizers and state-dict keys are unaffected; no random numbers are drawn).
    Returns how many were swapped; max_area <= 0 swaps none."""
    if max_area <= 0:
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, conv in list(parent.named_children()):
            if not convertible(conv):
                continue
            # Built on the meta device: no weights initialised, no RNG state consumed.
            matmul = MatmulConv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                  conv.stride, conv.padding, bias=conv.bias is not None,
                                  device="meta")
            matmul.weight, matmul.bias = conv.weight, conv.bias
            matmul.max_area = max_area
            matmul.train(conv.training)
            setattr(parent, name, matmul)
            swapped += 1
    return swapped


def amx_available() -> bool:
    """Whether this CPU has AMX tiles (where the matrix products were measured faster)."""
    return cpu_has("amx_tile")


def resolve_max_area(setting: int, device: torch.device) -> int:
    """TRAIN.MATMUL_CONV_MAX_AREA for this run: -1 (auto) is AUTO_MAX_AREA on an AMX CPU and 0
    elsewhere; a GPU always gets 0 (cuDNN)."""
    if device.type != "cpu":
        return 0
    if setting < 0:
        return AUTO_MAX_AREA if amx_available() else 0
    return setting
