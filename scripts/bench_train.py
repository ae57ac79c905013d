"""Training throughput: train.py's own loop against a naive baseline loop, in one run.

    python scripts/bench_train.py [--steps 30] [--size 96] [--batch 64] [--backbone resnet18]
        [--opts KEY VALUE ...]
    python scripts/bench_train.py --backbones resnet18 resnet50 efficientnet_b0 \
        mobilenetv3_large_100 --size 96          # + per-backbone cost table
    python scripts/bench_train.py --conv-table   # + each convolution: oneDNN vs matrix products
    python scripts/bench_train.py --precision-table  # + --backbone's steps in fp32 and bf16

The per-backbone table also puts each training step's arithmetic rate (3x the forward pass's
multiply-adds per image, the usual estimate for forward + backward, times images/s) next to what
one large matrix multiply in the training precision reaches on the same cores: how far the step
is from this CPU's attainable compute, i.e. how much faster any loop could still make it.
The training precision is what TRAIN.AMP resolves to here (age_estimation/hardware.py): bf16
autocast on a CPU that computes bf16 natively (AVX-512-BF16 or AMX), fp32 on any other.

The baseline is written in the style of the original yu4u/age-estimation-pytorch code: a
Dataset that cv2.imread's and resizes each JPEG for every sample, float32 normalised
channels-first tensors, no cache, no autocast. Both loops use the same backbone, resolution,
batch size, head (DEX), augmentation (the config's AUG.POLICY, applied per sample to the uint8
face as train.py does; the original code augmented per sample too) and optimizer (AdamW:
PyTorch's default implementation in the naive loop, as the original code used it; the fused
one in train.py's, TRAIN.FUSED_OPTIMIZER), on the UTKFace train split. Each loads its data
its own way: the naive loop with `--naive-workers` DataLoader workers (default 2: it decodes
JPEGs, and with fewer it is slower), train.py's loop with DATA.NUM_WORKERS (default auto: in
process on the CPU; `--workers` overrides). Images/s counts the whole loop, data loading
included, after `--warmup` steps. `--opts` overrides the config of both loops (e.g.
`TRAIN.FUSED_OPTIMIZER False` to measure that setting, `AUG.POLICY none` for no augmentation).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from age_estimation.config import load_config  # noqa: E402
from age_estimation.data.build import loader_workers  # noqa: E402
from age_estimation.data.datasets import default_data_dir, read_dataset  # noqa: E402
from age_estimation.data.transforms import build_train_transform  # noqa: E402
from age_estimation.engine.trainer import Trainer, build_optimizer  # noqa: E402
from age_estimation.hardware import amp_enabled, cpu_has, precision_name  # noqa: E402
from age_estimation.models.matmul_conv import (  # noqa: E402
    amx_available,
    convertible,
    matmul_conv2d,
    resolve_max_area,
    use_matmul_convs,
)
from age_estimation.models.model import AgeModel  # noqa: E402


class NaiveJPEGDataset(Dataset):
    """Decode + resize + augment + normalise every sample from its JPEG, every epoch (the
    baseline)."""

    MEAN = np.array([0.485, 0.456, 0.406], np.float32)
    STD = np.array([0.229, 0.224, 0.225], np.float32)

    def __init__(self, paths: list[str], ages: list[float], size: int, transform=None) -> None:
        self.paths, self.ages, self.size, self.transform = paths, ages, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = cv2.imread(self.paths[index], cv2.IMREAD_COLOR)
        image = np.ascontiguousarray(cv2.resize(image, (self.size, self.size))[:, :, ::-1])
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        image = (image.astype(np.float32) / 255 - self.MEAN) / self.STD
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), np.float32(self.ages[index])


def bench_naive(cfg, steps: int, warmup: int, workers: int) -> float:
    records = read_dataset("utkface", str(default_data_dir() / "utkface"), "train")
    dataset = NaiveJPEGDataset([r.path for r in records], [r.age for r in records],
                               cfg.MODEL.IMG_SIZE, build_train_transform(cfg.AUG.POLICY))
    loader = DataLoader(dataset, batch_size=cfg.TRAIN.BATCH_SIZE, shuffle=True,
                        num_workers=workers, drop_last=True)
    torch.manual_seed(0)
    model = AgeModel(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.TRAIN.LR)
    seen, start = 0, None
    for step, (images, ages) in enumerate(loader):
        if step == warmup:
            seen, start = 0, time.perf_counter()
        if step == warmup + steps:
            break
        loss = model.head.loss(model(images), {"age": ages}).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(images)
    return seen / (time.perf_counter() - start)


def bench_toolkit(cfg, steps: int) -> float:
    """train.py's loop (Trainer.train_one_epoch) on the cached split: one `steps`-step epoch
    as warmup (oneDNN kernel selection), then a timed one (worker start-up included)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TRAIN.MAX_STEPS_PER_EPOCH = steps
    trainer = Trainer(cfg)
    trainer.train_one_epoch(0)
    return trainer.train_one_epoch(1)[1]


def backbone_cost(cfg, backbone: str, batch: int, amp: bool) -> dict:
    """Parameters, FLOPs (fvcore, one image), train and inference images/s on synthetic data,
    with bf16 autocast when `amp`, else in fp32."""
    from fvcore.nn import FlopCountAnalysis

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE = backbone
    model = AgeModel(cfg)
    use_matmul_convs(model, resolve_max_area(cfg.TRAIN.MATMUL_CONV_MAX_AREA, torch.device("cpu")))
    model = model.to(memory_format=torch.channels_last)
    size = cfg.MODEL.IMG_SIZE
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    ages = {"age": torch.rand(batch) * 80}
    flops = FlopCountAnalysis(model.eval(), x[:1].float() / 255)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    optimizer = build_optimizer(cfg, model, torch.device("cpu"))  # as train.py's

    def train_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model.head.loss(model(x), ages).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def infer_step():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(x)

    model.train()
    train_ips = _rate(train_step, batch)
    model.eval()
    # fvcore counts one "flop" per multiply-add.
    gmacs = flops.total() / 1e9
    return {"backbone": backbone, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "GFLOPs": gmacs, "train_img_s": train_ips, "train_gmac_s": 3 * gmacs * train_ips,
            "infer_img_s": _rate(infer_step, batch)}


def conv_table(cfg, batch: int, dtype: torch.dtype) -> list[dict]:
    """Each distinct convolution of the config's backbone at MODEL.IMG_SIZE that
    TRAIN.MATMUL_CONV_MAX_AREA could route: milliseconds of one forward + backward in `dtype`
    through oneDNN (F.conv2d) and through the matrix products (matmul_conv2d), channels_last."""
    model = AgeModel(cfg).eval()
    size = cfg.MODEL.IMG_SIZE
    seen: dict[tuple, torch.nn.Conv2d] = {}

    def record(conv, inputs, output):
        key = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
               *inputs[0].shape[-2:], *output.shape[-2:])
        seen.setdefault(key, conv)

    hooks = [m.register_forward_hook(record) for m in model.modules() if convertible(m)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    for hook in hooks:
        hook.remove()
    rows = []
    for (c_in, c_out, kernel, stride, h, w, ho, wo), conv in seen.items():
        x = torch.randn(batch, c_in, h, w, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        weight = conv.weight.detach().to(dtype).requires_grad_(True)
        grad = torch.randn(batch, c_out, ho, wo, dtype=dtype)
        grad = grad.contiguous(memory_format=torch.channels_last)
        geometry = (x, weight, stride, conv.padding[0], grad)
        rows.append({"conv": f"{c_in}->{c_out} k{kernel} s{stride}", "input": f"{h}x{w}",
                     "output": f"{ho}x{wo}",
                     "onednn_ms": 1e3 / _rate(partial(_conv_pass, _onednn_conv, *geometry), 1),
                     "matmul_ms": 1e3 / _rate(partial(_conv_pass, matmul_conv2d, *geometry), 1)})
    return rows


def _onednn_conv(x, weight, stride: int, padding: int):
    return F.conv2d(x, weight, None, stride, padding)


def _conv_pass(conv, x, weight, stride: int, padding: int, grad) -> None:
    """One forward + backward (input and weight gradients) of `conv`."""
    conv(x, weight, stride, padding).backward(grad)


def matmul_gmac_s(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Multiply-adds per second (G) of one n x n @ n x n matrix product in `dtype`: the
    attainable compute of these cores, against which a training step's rate is read."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return _rate(lambda: a @ b, 1, repeats=repeats) * n**3 / 1e9


def _rate(step, batch: int, warmup: int = 2, repeats: int = 5) -> float:
    """Items per second of `step`, which handles `batch` items per call, after `warmup` calls."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default=str(REPO / "configs/utkface_resnet18_dex.yaml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each loop, alternating; their medians are compared")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=-1,
                        help="train.py loop's DATA.NUM_WORKERS (default -1: auto)")
    parser.add_argument("--naive-workers", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--backbones", nargs="*", default=[])
    parser.add_argument("--conv-table", action="store_true",
                        help="also time each convolution of --backbone through oneDNN and "
                             "through the matrix products (TRAIN.MATMUL_CONV_MAX_AREA)")
    parser.add_argument("--precision-table", action="store_true",
                        help="also time --backbone's training and inference steps in fp32 and "
                             "with bf16 autocast, whatever TRAIN.AMP picks on this CPU")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides (e.g. TRAIN.FUSED_OPTIMIZER False for "
                             "train.py's loop, AUG.POLICY none for both)")
    args = parser.parse_args()
    cfg = load_config(args.cfg, [
        "MODEL.IMG_SIZE", str(args.size), "TRAIN.BATCH_SIZE", str(args.batch),
        "MODEL.BACKBONE", args.backbone, "DATA.NUM_WORKERS", str(args.workers),
        "OUTPUT_DIR", "/tmp/age_estimation_bench_train", "MODEL.DROPOUT", "0.0", *args.opts])
    print(f"command: {' '.join(sys.argv)}")
    amp = amp_enabled(cfg.TRAIN.AMP, "cpu")
    dtype = torch.bfloat16 if amp else torch.float32
    precision = precision_name(cfg.TRAIN.AMP, "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"({'with' if amx_available() else 'no'} AMX, "
          f"{'with' if cpu_has('avx512_bf16') else 'no'} AVX-512-BF16), {args.backbone} at "
          f"{args.size} px, batch {args.batch}, {args.steps} timed steps, augmentation "
          f"{cfg.AUG.POLICY} in both loops")
    # The two loops alternate, --repeats times each; the medians are compared (single runs on a
    # shared 2-core machine vary by 5-10 %).
    naive_runs, our_runs = [], []
    for _ in range(args.repeats):
        naive_runs.append(bench_naive(cfg, args.steps, args.warmup, args.naive_workers))
        our_runs.append(bench_toolkit(cfg, args.steps))
    naive, ours = float(np.median(naive_runs)), float(np.median(our_runs))
    print("runs, images/s: naive " + ", ".join(f"{v:.1f}" for v in naive_runs)
          + "; train.py " + ", ".join(f"{v:.1f}" for v in our_runs))
    print(f"median, naive loop (per-sample JPEG decode, fp32, NCHW, {args.naive_workers} workers): "
          f"{naive:8.1f} images/s")
    fused = f"fused {cfg.TRAIN.OPTIMIZER}, " if cfg.TRAIN.FUSED_OPTIMIZER else ""
    print(f"median, train.py loop (cache, {precision}, NHWC, {fused}{loader_workers(cfg)} "
          f"workers): "
          f"{ours:8.1f} images/s")
    print(f"speed-up: {ours / naive:.2f}x")
    max_area = resolve_max_area(cfg.TRAIN.MATMUL_CONV_MAX_AREA, torch.device("cpu"))
    print(f"TRAIN.MATMUL_CONV_MAX_AREA {cfg.TRAIN.MATMUL_CONV_MAX_AREA}: convolutions with "
          f"output maps of at most {max_area} pixels train as matrix products in train.py's "
          f"loop and the per-backbone table (0: none); the naive loop never")
    if args.conv_table:
        print(f"\n| {args.backbone} convolution | input | output | oneDNN fwd + bwd (ms) | "
              f"matrix products fwd + bwd (ms) | ratio |\n| --- | --- | --- | ---: | ---: | ---: |")
        for r in conv_table(cfg, args.batch, dtype):
            print(f"| {r['conv']} | {r['input']} | {r['output']} | {r['onednn_ms']:.2f} | "
                  f"{r['matmul_ms']:.2f} | {r['onednn_ms'] / r['matmul_ms']:.2f}x |")
    matmul = {name: matmul_gmac_s(t) for name, t in (("bf16", torch.bfloat16),
                                                      ("fp32", torch.float32))
              if args.backbones or args.precision_table}
    reference = "bf16" if amp else "fp32"
    if args.backbones:
        rows = [backbone_cost(cfg, name, args.batch, amp) for name in args.backbones]
        print(f"\n{precision}:\n| backbone | params (M) | GFLOPs @ {args.size} px | train img/s | "
              f"train step GMAC/s (% of {reference} matmul) | inference img/s |\n"
              f"| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['backbone']} | {r['params_M']:.1f} | {r['GFLOPs']:.2f} | "
                  f"{r['train_img_s']:.0f} | {r['train_gmac_s']:.0f} "
                  f"({100 * r['train_gmac_s'] / matmul[reference]:.0f} %) | "
                  f"{r['infer_img_s']:.0f} |")
    if args.precision_table:
        print(f"\n| {args.backbone} at {args.size} px, batch {args.batch} | train img/s | "
              f"inference img/s |\n| --- | ---: | ---: |")
        for name, with_amp in (("fp32", False), ("bf16 autocast", True)):
            r = backbone_cost(cfg, args.backbone, args.batch, with_amp)
            print(f"| {name} | {r['train_img_s']:.1f} | {r['infer_img_s']:.1f} |")
        print(f"TRAIN.AMP {cfg.TRAIN.AMP} on this CPU: {precision}")
    if args.backbones or args.precision_table:
        print(f"\nGFLOPs: fvcore's count, one per multiply-add, of one image's forward pass. "
              f"A 2048 x 2048 matrix product on these {torch.get_num_threads()} threads: "
              f"{matmul['bf16']:.0f} GMAC/s in bf16, {matmul['fp32']:.0f} in fp32.")

if __name__ == "__main__":
    main()
