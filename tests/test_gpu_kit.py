"""The GPU lease kit (benchmarks/gpu_session.sh, configs/train/paper_gpu.yaml): it can only run on a GPU, so
what can be checked here is checked here, lest it rot between the sessions that are lent one."""
from __future__ import annotations

import subprocess
from pathlib import Path

from models.train_config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/gpu_session.sh"


def test_paper_gpu_is_the_defaults_recipe_at_full_size():
    gpu, cpu = (load_train_config(ROOT / f"configs/train/{n}.yaml") for n in ("paper_gpu", "paper_cpu"))
    assert gpu.model_config()["name"] == "arasfsr_edsr" and cpu.model_config()["name"] == "arasfsr_edsr_cpu"
    assert (gpu.data.lr, gpu.data.hr, gpu.data.degradation) == (cpu.data.lr, cpu.data.hr, cpu.data.degradation)
    assert (gpu.val.lr, gpu.val.hr, gpu.val.degrade) == (cpu.val.lr, cpu.val.hr, cpu.val.degrade)
    assert gpu.data.root == ".gpu/data"  # what `make gpu-pack` writes
    assert 0 < gpu.train.max_minutes < 10  # one call of the device tool: 10 minutes, start included


def test_the_session_script_parses_and_refuses_an_unknown_stage():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    res = subprocess.run(["bash", str(SCRIPT), "tarin"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == "usage: benchmarks/gpu_session.sh check|pipeline|train ... (got 'tarin')"


def test_paper_id_gpu_fine_tunes_the_full_model_with_the_packed_recognizer():
    cfg = load_train_config(ROOT / "configs/train/paper_id_gpu.yaml")
    full = load_train_config(ROOT / "configs/train/paper_gpu.yaml")
    assert cfg.model == full.model and cfg.train.init == "models/weights/arasfsr_paper_full.safetensors"
    assert cfg.identity.weight > 0 and cfg.identity.grid == 150 and cfg.identity.faces <= cfg.data.batch_size
    assert cfg.identity.recognizer.startswith(cfg.data.root)  # carried with the data (make gpu-pack)
    assert 0 < cfg.train.max_minutes < 10
