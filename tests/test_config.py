"""Config loading: merge order, errors naming the key, round trip through checkpoints."""

import subprocess
import sys
from pathlib import Path

import pytest

from age_estimation.config import ConfigError, config_from_string, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_file_then_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "MODEL:\n  HEAD: l1\n  IMG_SIZE: 96\n"),
                      ["MODEL.IMG_SIZE", "64", "TRAIN.LR", "0.01"])
    assert (cfg.MODEL.HEAD, cfg.MODEL.IMG_SIZE, cfg.TRAIN.LR) == ("l1", 64, 0.01)
    assert cfg.is_frozen()


def test_unknown_key_in_file_names_the_key_and_file(tmp_path):
    path = write(tmp_path, "MODEL:\n  HEDA: l1\n")
    with pytest.raises(ConfigError, match=r"MODEL\.HEDA.*cfg\.yaml"):
        load_config(path)


def test_unknown_override_key_names_it():
    with pytest.raises(ConfigError, match=r"TRAIN\.EPOCHZ"):
        load_config(None, ["TRAIN.EPOCHZ", "3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"TRAIN\.EPOCHS"):
        load_config(None, ["TRAIN.EPOCHS", "many"])


@pytest.mark.parametrize("key,value,match", [
    ("MODEL.HEAD", "softmax", r"MODEL\.HEAD = 'softmax'.*dex"),
    ("DATA.DATASET", "imdb", r"DATA\.DATASET = 'imdb'.*utkface"),
    ("DATA.FRACTION", "1.5", r"DATA\.FRACTION"),
    ("AUG.POLICY", "extreme", r"AUG\.POLICY"),
    ("MODEL.DROPOUT", "1.0", r"MODEL\.DROPOUT"),
    ("TRAIN.EMA_DECAY", "1.0", r"TRAIN\.EMA_DECAY = 1\.0"),
    ("AUG.MIXUP_ALPHA", "-0.2", r"AUG\.MIXUP_ALPHA = -0\.2"),
    ("DATA.NUM_WORKERS", "-2", r"DATA\.NUM_WORKERS = -2: expected -1 \(auto\)"),
])
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [key, value])


def test_mixup_refuses_feature_smoothing():
    with pytest.raises(ConfigError, match=r"AUG\.MIXUP_ALPHA.*MODEL\.FDS\.ENABLED"):
        load_config(None, ["AUG.MIXUP_ALPHA", "0.2", "MODEL.FDS.ENABLED", "True"])


def test_odd_override_list_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="KEY VALUE"):
        load_config(None, ["TRAIN.LR"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_dump_round_trip_and_no_object_tags():
    cfg = load_config(None, ["MODEL.HEAD", "laplace", "TRAIN.STEPS", "[3, 4]"])
    again = config_from_string(cfg.dump())
    assert again == cfg
    with pytest.raises(ConfigError):  # yaml.safe_load refuses python object tags
        config_from_string("MODEL: !!python/object/apply:os.system ['echo pwned']\n")


@pytest.mark.parametrize("cfg_file", sorted((REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(cfg_file):
    cfg = load_config(str(cfg_file))
    assert cfg.OUTPUT_DIR.startswith("output/")


def test_train_cli_reports_config_errors_without_traceback():
    result = subprocess.run([sys.executable, "train.py", "--cfg",
                             "configs/utkface_resnet18_dex.yaml", "MODEL.NOPE", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "MODEL.NOPE" in result.stderr and "Traceback" not in result.stderr


def test_base_file_is_merged_first(tmp_path):
    (tmp_path / "base.yaml").write_text("MODEL:\n  HEAD: l1\n  IMG_SIZE: 80\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nMODEL:\n  IMG_SIZE: 64\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.MODEL.HEAD, cfg.MODEL.IMG_SIZE) == ("l1", 64)
    (tmp_path / "loop.yaml").write_text("_BASE_: loop.yaml\n")
    with pytest.raises(ConfigError, match="deeper"):
        load_config(str(tmp_path / "loop.yaml"))


def test_shipped_formulation_configs_select_their_head():
    heads = {load_config(str(p)).MODEL.HEAD for p in (REPO / "configs").glob("utkface_*.yaml")}
    assert heads == {"l1", "l2", "dex", "dldl", "residual_dex", "ordinal", "gaussian", "laplace"}


def test_auto_loader_workers_load_in_process_on_the_cpu(monkeypatch):
    from age_estimation.data.build import loader_workers

    cfg = load_config(None, [])
    assert cfg.DATA.NUM_WORKERS == -1  # the default is auto
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert loader_workers(cfg) == 0  # CPU training: no workers competing with the step
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_workers(cfg) == 8
    assert loader_workers(load_config(None, ["DATA.NUM_WORKERS", "3"])) == 3  # explicit wins
