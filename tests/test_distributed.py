"""torchrun with 2 CPU processes (gloo, DDP) trains as well as one process, and only rank 0
writes files."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import write_csv_dataset

from age_estimation.data.build import EpochBatchSampler

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory) -> Path:
    return write_csv_dataset(tmp_path_factory.mktemp("csvdata"), {"train": 64, "valid": 16})


def test_sampler_shards_each_global_batch_and_resumes_mid_epoch():
    def batches(start=0, rank=0, world_size=1, epoch=3):
        return list(EpochBatchSampler(50, 8, seed=7, epoch=epoch, steps=6, start=start,
                                      rank=rank, world_size=world_size))

    single = batches()
    assert len(single) == 6 and all(len(b) == 8 for b in single)
    assert len({i for b in single for i in b}) == 48  # a permutation, the last 2 dropped
    assert batches(start=4) == single[4:]  # resuming at step 4 skips, nothing else changes
    for world_size in (2, 4):  # the shards of a step make up the single-process batch
        shards = [batches(rank=r, world_size=world_size) for r in range(world_size)]
        assert [[i for s in shards for i in s[k]] for k in range(6)] == single
        assert batches(start=2, rank=1, world_size=world_size) == shards[1][2:]
    assert batches(epoch=4) != single  # a new order every epoch


@pytest.mark.slow
def test_two_process_gloo_training_matches_one_process(csv_dataset, tmp_path):
    def args(out: Path) -> list[str]:
        # Global batch 8 either way (4 per process under torchrun): the same steps and LR.
        return ["train.py", "--cfg", "configs/utkface_resnet18_dex.yaml", "OUTPUT_DIR", str(out),
                "DATA.DATASET", "csv", "DATA.ROOT", str(csv_dataset),
                "DATA.CACHE_DIR", str(out / "cache"), "DATA.NUM_WORKERS", "0",
                "MODEL.BACKBONE", "test_resnet", "MODEL.IMG_SIZE", "32", "MODEL.HEAD", "l1",
                "TRAIN.EPOCHS", "10", "TRAIN.BATCH_SIZE", "8", "TRAIN.LR", "0.01",
                "TRAIN.THREADS", "1"]

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    one = subprocess.Popen([sys.executable, *args(single)], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", *args(ddp)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    one_out, one_err = one.communicate(timeout=600)
    assert one.returncode == 0, one_err[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]

    # Quality: both learn (far below predicting the train mean) and end up close.
    labels = pd.read_csv(csv_dataset)
    train_mean = labels.loc[labels["split"] == "train", "age"].mean()
    valid = labels.loc[labels["split"] == "valid", "age"]
    baseline = (valid - train_mean).abs().mean()
    best = {name: pd.read_csv(out / "metrics.csv")["valid_mae"].min()
            for name, out in (("single", single), ("ddp", ddp))}
    print(f"best valid MAE: 1 process {best['single']:.2f}, 2 processes {best['ddp']:.2f}, "
          f"mean baseline {baseline:.2f}")
    assert best["single"] < 0.4 * baseline and best["ddp"] < 0.4 * baseline
    assert abs(best["ddp"] - best["single"]) < 0.15 * baseline

    # Only rank 0 wrote: one of everything, each epoch logged once, one line printed.
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    assert len(list((ddp / "tb").iterdir())) == 1
    assert sorted(p.suffix for p in (ddp / "cache").iterdir()) == [".json", ".json", ".u8", ".u8"]
    log = (ddp / "train.log").read_text()
    assert log.count("epoch 1/10 ") == 1 and "on cpu x 2" in log
    assert pd.read_csv(ddp / "metrics.csv")["epoch"].tolist() == list(range(1, 11))
    assert two.stdout.count("best valid MAE") == 1 and one_out.count("best valid MAE") == 1
