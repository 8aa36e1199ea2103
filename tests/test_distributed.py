"""Data-parallel training: two gloo processes on 127.0.0.1 match one process at the same global batch."""

from __future__ import annotations

import json

import pytest
import torch

from deqir.errors import ConfigError, InvalidValueError
from deqir.train.checkpoint import load_checkpoint, load_weights
from deqir.train.distributed import DistInfo, resolve_device, shard, spawn
from deqir.train.trainer import train_from_config

STEPS = 8


def _config(tmp_path):
    return {
        "experiment": {"name": "ddp", "seed": 5, "output_dir": str(tmp_path)},
        "data": {"image_size": 16, "patch_size": 12, "num_train": 8, "num_val": 5, "batch_size": 4},
        "physics": {"noise_sigma_range": [0.05, 0.2]},  # per-sample noise levels, drawn per shard
        "model": {"options": {"depth": 3, "width": 8, "batch_norm": False}},
        "train": {
            "steps": STEPS,
            "lr": 3e-3,
            "val_every": 4,
            "checkpoint_every": 4,
            "log_every": 2,
            "grad_clip": 1.0,
            "progress": False,
        },
    }


def test_two_processes_match_one(tmp_path):
    """Tolerance: 1e-5 relative (in norm) on every weight tensor after 8 Adam steps; measured 0 to 3e-8.

    The two runs differ only in the order of floating-point sums (per-shard means averaged by
    DistributedDataParallel's all-reduce instead of one mean over the global batch).
    """
    cfg = _config(tmp_path)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train_from_config(cfg, device="cpu", run_dir=tmp_path / "single")
    finally:
        torch.set_num_threads(previous)
    spawn(train_from_config, 2, cfg, device="cpu", run_dir=str(tmp_path / "double"))
    double = tmp_path / "double"
    info = json.loads((double / "run.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "finished"
    w1 = load_weights(single / "weights" / "final.safetensors")
    w2 = load_weights(double / "weights" / "final.safetensors")
    initial = load_checkpoint(double / "checkpoint.pt")
    assert initial["step"] == STEPS and len(initial["rng"]) == 2  # one RNG state per process
    for k in w1:
        rel = float((w1[k] - w2[k]).norm() / w1[k].norm().clamp_min(1e-12))
        assert rel < 1e-5, (k, rel)
    m1 = json.loads((single / "metrics.json").read_text())
    m2 = json.loads((double / "metrics.json").read_text())
    assert m2["final_val_psnr"] == pytest.approx(m1["final_val_psnr"], abs=1e-3)
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-4)


def test_shards_are_disjoint_and_cover_the_batch():
    parts = [list(shard(8, DistInfo(rank=r, world_size=4))) for r in range(4)]
    assert sorted(sum(parts, [])) == list(range(8)) and all(len(p) == 2 for p in parts)
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        shard(6, DistInfo(rank=0, world_size=4))


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InvalidValueError, match="unknown device"):
        resolve_device("gpu")
    with pytest.raises(InvalidValueError, match="not supported"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidValueError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
