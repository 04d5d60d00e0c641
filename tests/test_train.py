"""Training data, training configs, the training loop (loss falls, resume is exact) and CLI errors."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from skimage.data import astronaut

import train
from common.errors import ConfigError, UserError
from models import load_model
from models.data import (Degradation, FaceSet, FrameDegradation, PairConfig, PairSampler, PairStream, hr_target,
                         make_lr, photo_mask, resize, split_for, write_prepared)
from models.train_config import load_train_config, repo_path

TINY_MODEL = {"name": "tiny", "encoder": {"name": "edsr", "n_resblocks": 2, "n_feats": 16},
              "decoder": {"hidden": 32, "layers": 3}, "local_frequency": {"latent": 8, "width": 16}}


def face_like(seed: int, size: int = 48) -> np.ndarray:
    """A smooth, face-sized crop of skimage's astronaut (RGB uint8), shifted per seed."""
    img = astronaut()[30:250, 140:360]
    y, x = (seed * 7) % 40, (seed * 13) % 40
    return cv2.resize(np.ascontiguousarray(img[y:y + 180, x:x + 180]), (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    write_prepared(root, [face_like(i) for i in range(12)], ["train"] * 10 + ["val"] * 2)
    return root


def write_config(tmp: Path, data: Path, steps: int, **train_overrides) -> Path:
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(TINY_MODEL))
    cfg = {"model": str(tmp / "tiny.yaml"),
           "data": {"root": str(data), "lr": [12, 16], "hr": [24, 32], "queries": 256, "batch_size": 4},
           "train": {"steps": steps, "lr": 1e-3, "decay_at": 1.0, "log_every": 1, "save_every": 5, "threads": 1,
                     **train_overrides},
           "val": {"every": 5, "images": 2, "lr": 12, "hr": 32}}
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


# --- data ------------------------------------------------------------------------------------


def test_pairs_are_deterministic_and_queries_match_the_hr_target(prepared):
    faces = FaceSet.load(prepared, "train")
    cfg = PairConfig(lr=(12, 16), hr=(24, 32), queries=64, batch_size=3, flip=False)
    sampler = PairSampler(faces, cfg, seed=3)
    a, b = sampler.batch(7), sampler.batch(7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["coord"], sampler.batch(8)["coord"])
    lr_size, hr_size = a["lr"].shape[-1], round(a["lr"].shape[-1] / a["ratio"][0, 0, 0].item())
    assert 12 <= lr_size <= 16 and 24 <= hr_size <= 32 and a["coord"].abs().max() < 1
    # every query is a pixel centre of the HR grid: (y, x) = -1 + (2 i + 1) / H
    idx = (a["coord"] + 1) * hr_size / 2 - 0.5
    assert torch.allclose(idx, idx.round(), atol=1e-4)


@pytest.mark.parametrize("workers", [2, 3])
def test_pair_stream_gives_the_same_batches_in_step_order_with_several_workers(prepared, workers):
    sampler = PairSampler(FaceSet.load(prepared, "train"), PairConfig(lr=(12, 16), hr=(24, 32), queries=16,
                                                                      batch_size=2), seed=5)
    one = list(torch.utils.data.DataLoader(PairStream(sampler, 3, 10), batch_size=None, num_workers=0))
    many = list(torch.utils.data.DataLoader(PairStream(sampler, 3, 10), batch_size=None, num_workers=workers))
    assert len(many) == len(one) == 7
    assert all(torch.equal(a[k], b[k]) for a, b in zip(one, many) for k in a)


def test_queries_stay_inside_the_photo_mask():
    img = np.full((64, 64, 3), 200, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    img[~mask] = 0
    faces = FaceSet(images=img[None], masks=mask[None], names=["a"])
    batch = PairSampler(faces, PairConfig(lr=(16, 16), hr=(64, 64), queries=500, batch_size=1, flip=False)).batch(0)
    assert batch["rgb"].min() > 0.7  # never a pixel of the (black) border


def test_degradations_keep_shape_and_eval_lr_is_deterministic():
    gt = face_like(0, 128)
    rng = np.random.default_rng(0)
    mixed = Degradation(kernels={"bicubic": 1, "area": 1, "nearest": 1}, blur=0.5, noise=0.5, jpeg=0.5)
    for _ in range(10):
        lr = mixed(gt, 16, rng)
        assert lr.shape == (16, 16, 3) and lr.dtype == np.uint8
    assert np.array_equal(make_lr(gt, 16, "nn-jpeg"), make_lr(gt, 16, "nn-jpeg"))
    with pytest.raises(ValueError, match="kernels"):
        Degradation(kernels={"lanczos": 1.0})


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def test_frame_degradation_crop_and_hr_target_show_the_same_window():
    # The LR crop comes from a rolled, shifted frame through the aligner; the HR target must be that
    # very window: the LR crop up-sampled matches it best unshifted, and clearly better than shifted.
    gt = face_like(0, 128)
    mask = np.ones(gt.shape[:2], bool)
    deg = FrameDegradation(aligned=0.0, clean=1.0, landmark_jitter=(0.0, 0.0))
    for seed in range(3):
        lr, to_lr = deg.sample(gt, 24, np.random.default_rng(seed))
        assert lr.shape == (24, 24, 3) and lr.dtype == np.uint8 and to_lr.shape == (2, 3)
        hr, hr_mask = hr_target(gt, mask, 96, 24, to_lr)
        up = cv2.resize(lr, (96, 96), interpolation=cv2.INTER_CUBIC)[8:-8, 8:-8]
        scores = {(dy, dx): _psnr(np.roll(up, (dy, dx), (0, 1)), hr[8:-8, 8:-8])
                  for dy in (-2, 0, 2) for dx in (-2, 0, 2)}
        assert max(scores, key=scores.get) == (0, 0)
        assert scores[(0, 0)] > max(v for k, v in scores.items() if k != (0, 0)) + 1.0
        assert hr_mask[8:-8, 8:-8].all()  # the face window lies inside the photo


def test_frame_degradation_compresses_unless_clean_and_is_seeded():
    gt = face_like(1, 128)
    clean = FrameDegradation(aligned=0.0, clean=1.0, landmark_jitter=(0.0, 0.0))
    h264 = FrameDegradation(aligned=0.0, clean=0.0, noise=0.0, h264=1.0, h264_crf=(40, 40), landmark_jitter=(0.0, 0.0))
    jpeg = FrameDegradation(aligned=0.0, clean=0.0, noise=0.0, h264=0.0, jpeg_quality=(20, 20), landmark_jitter=(0.0, 0.0))
    ref, _ = clean.sample(gt, 32, np.random.default_rng(5))
    for deg in (h264, jpeg):
        a, to_a = deg.sample(gt, 32, np.random.default_rng(5))
        b, _ = deg.sample(gt, 32, np.random.default_rng(5))
        assert np.array_equal(a, b)  # same seed, same sample
        assert np.allclose(to_a, clean.sample(gt, 32, np.random.default_rng(5))[1])  # same geometry
        assert 20.0 < _psnr(a, ref) < 45.0  # compressed: visibly, not unrecognisably, different


def test_frame_degradation_aligned_share_is_the_paper_protocol():
    gt = face_like(2, 128)
    lr, to_lr = FrameDegradation(aligned=1.0).sample(gt, 20, np.random.default_rng(0))
    assert to_lr is None and np.array_equal(lr, resize(gt, 20, "bicubic"))
    hr, _ = hr_target(gt, np.ones(gt.shape[:2], bool), 112, 20, to_lr)
    assert np.array_equal(hr, resize(gt, 112, "bicubic"))


def test_frame_pairs_through_the_sampler_and_config(tmp_path, prepared):
    cfg = yaml.safe_load(write_config(tmp_path, prepared, 2).read_text())
    cfg["data"].update({"gray": 1.0, "frame": {"enabled": True, "aligned": 0.5, "clean": 1.0}})
    (tmp_path / "frame.yaml").write_text(yaml.safe_dump(cfg))
    pairs = load_train_config(tmp_path / "frame.yaml").data.pairs()
    assert isinstance(pairs.degradation, FrameDegradation) and pairs.gray == 1.0
    batch = PairSampler(FaceSet.load(prepared, "train"), pairs, seed=0).batch(0)
    assert batch["lr"].shape[1:] in {torch.Size([3, n, n]) for n in range(12, 17)}
    lr = batch["lr"]
    assert torch.allclose(lr[:, 0], lr[:, 1], atol=1 / 255) and torch.allclose(lr[:, 1], lr[:, 2], atol=1 / 255)
    rgb = batch["rgb"]
    assert torch.allclose(rgb[..., 0], rgb[..., 2], atol=1 / 255)  # gray targets too


def test_training_can_start_from_given_weights(tmp_path, prepared):
    first = tmp_path / "first"
    assert train.main(["--config", str(write_config(tmp_path, prepared, 5)), "--out", str(first)]) == 0
    config = write_config(tmp_path, prepared, 1, init=str(first / "last.safetensors"), lr=1e-9)
    assert train.main(["--config", str(config), "--out", str(tmp_path / "second")]) == 0
    a, b = load_model(first / "last.safetensors"), load_model(tmp_path / "second" / "last.safetensors")
    assert all(torch.allclose(a.state_dict()[k], v, atol=1e-5) for k, v in b.state_dict().items())
    other = dict(TINY_MODEL, decoder={"hidden": 16, "layers": 3})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(UserError, match="train.init"):
        train.train(load_train_config(config), tmp_path / "third")


def test_bicubic_resize_is_antialiased_like_pil():
    from PIL import Image

    gt = face_like(1, 128)
    ours = resize(gt, 20, "bicubic").astype(int)
    pil = np.asarray(Image.fromarray(gt).resize((20, 20), Image.BICUBIC)).astype(int)
    assert np.abs(ours - pil).max() <= 2


def test_split_is_a_stable_hash_of_the_name():
    names = [f"{i}_0_0_2017.jpg.chip.jpg" for i in range(2000)]
    splits = [split_for(n) for n in names]
    assert splits == [split_for(n) for n in names]
    assert 0.03 < splits.count("val") / len(names) < 0.07


def test_photo_mask_marks_the_warped_photo():
    m = np.array([[0.5, 0, 16], [0, 0.5, 16]])  # a 64 px photo shrunk to 32 px in the middle of 64
    mask = photo_mask(m, (64, 64), 64)
    assert mask[20:44, 20:44].all() and not mask[:14].any() and not mask[:, 50:].any()


# --- training --------------------------------------------------------------------------------


def test_training_reduces_the_loss_and_writes_checkpoints(tmp_path, prepared):
    cfg = load_train_config(write_config(tmp_path, prepared, steps=40))
    summary = train.train(cfg, tmp_path / "run")
    loss = losses(tmp_path / "run")
    assert len(loss) == 40 and np.mean(loss[-5:]) < 0.8 * np.mean(loss[:5])
    model = load_model(tmp_path / "run/last.safetensors", device="cpu")
    assert model.metadata["step"] == 40 and model.metadata["config"] == "run"
    assert {"wall_time_s", "device", "data"} <= set(model.metadata)
    assert (tmp_path / "run/best.safetensors").is_file() and summary["best_val_psnr"] > 0


def test_resume_continues_from_the_saved_step_exactly(tmp_path, prepared):
    cfg = load_train_config(write_config(tmp_path, prepared, steps=10))
    train.train(cfg, tmp_path / "whole")
    cfg.train.steps = 5
    train.train(cfg, tmp_path / "split")
    cfg.train.steps = 10
    summary = train.train(cfg, tmp_path / "split", resume=True)
    assert summary["trained_steps"] == 5
    whole, split = (load_model(tmp_path / f"{r}/last.safetensors", device="cpu") for r in ("whole", "split"))
    assert split.metadata["step"] == 10
    for (name, a), b in zip(whole.state_dict().items(), split.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_max_minutes_stops_early_with_a_resumable_checkpoint(tmp_path, prepared):
    cfg = load_train_config(write_config(tmp_path, prepared, steps=50, max_minutes=1e-9))
    summary = train.train(cfg, tmp_path / "run")
    assert summary["trained_steps"] == 1
    assert load_model(tmp_path / "run/last.safetensors", device="cpu").metadata["step"] == 1


def test_cli_errors_are_one_line(tmp_path, prepared, capsys):
    config = write_config(tmp_path, prepared, steps=2)
    cases = [
        (["--config", str(config), "--data", str(tmp_path / "missing")], "does not exist"),
        (["--config", str(tmp_path / "nope.yaml")], "not found"),
        (["--config", str(config), "--out", str(tmp_path / "empty"), "--resume"], "--resume: no last"),
    ]
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text(yaml.safe_dump({"model": "x.yaml", "data": {"hrr": [1, 2]}}))
    cases.append((["--config", str(bad_key)], "unknown train config key.*data.hrr"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "last.safetensors").write_bytes(b"\x00" * 64)
    (corrupt / "last.optim.safetensors").write_bytes(b"\x00" * 64)
    cases.append((["--config", str(config), "--out", str(corrupt), "--resume"], "not a safetensors|truncated"))
    for argv, message in cases:
        assert train.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert __import__("re").search(message, err[0]), err[0]


def test_all_shipped_train_configs_load():
    root = Path(train.__file__).parent / "configs/train"
    names = {p.stem for p in root.glob("*.yaml")}
    assert {"paper_x1-2", "cctv", "cctv_cpu", "liif_cpu", "paper_x1-2_no_L", "paper_x1-2_no_G", "paper_x1-2_no_S",
            "paper_x1-2_liif"} <= names
    for path in root.glob("*.yaml"):
        cfg = load_train_config(path)
        cfg.data.pairs()
        cfg.model_config()
        assert cfg.name == path.stem and repo_path(cfg.model).is_file()
    # baselines and ablations are trained identically to the model they are compared with
    for variant, full in (("liif_cpu", "cctv_cpu"), ("paper_cpu_liif", "paper_cpu"), ("paper_cpu_no_L", "paper_cpu")):
        a, b = (load_train_config(root / f"{n}.yaml") for n in (variant, full))
        assert a.data == b.data and a.train == b.train and a.val == b.val, variant
        assert a.model_config() != b.model_config(), variant
        assert a.model_config()["encoder"] == b.model_config()["encoder"], variant
    assert not load_train_config(root / "paper_cpu_liif.yaml").model_config()["skip"]


def test_base_configs_merge_sections_and_replace_values():
    root = Path(train.__file__).parent / "configs/train"
    cpu, full = load_train_config(root / "cctv_cpu.yaml"), load_train_config(root / "cctv.yaml")
    assert cpu.data.hr == (112, 128) and cpu.data.lr == full.data.lr == (12, 64)  # data merged key by key
    assert cpu.data.degradation == full.data.degradation and cpu.data.degradation.kernels["nearest"] == 0.3
    assert cpu.val.degrade == "nn-jpeg" and cpu.val.images == 48 and cpu.base == "cctv.yaml"
    frame = load_train_config(root / "cctv_frame_cpu.yaml")
    assert isinstance(frame.data.pairs().degradation, FrameDegradation) and frame.data.frame.aligned == 0.25


@pytest.mark.parametrize("text,message", [
    ("data: {hrr: [1, 2]}", "unknown train config key data.hrr; valid keys in data: "),
    ("train: {steps: many}", "train.steps must be an integer >= 1, got 'many'"),
    ("train: {steps: 0}", "train.steps must be an integer >= 1, got 0"),
    ("val: {degrade: lanczos}", "val.degrade must be one of bicubic, nn-jpeg, got 'lanczos'"),
    ("data: {lr: [4, 64]}", "data.lr must be a range [lo, hi] with 8 <= lo <= hi, got [4, 64]"),
    ("data: {degradation: {blur: 2.0}}", "data.degradation.blur must be a probability in [0, 1], got 2.0"),
    ("data: {frame: {roll: fast}}", "data.frame.roll must be a number, got 'fast'"),
    ("model_overrides: {decoder: {hidden: 0}}", "decoder.hidden must be an integer >= 1, got 0"),
])
def test_bad_train_config_names_the_dotted_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: {Path(train.__file__).parent / 'configs/model/arasfsr_edsr_cpu.yaml'}\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(path).model_config()
    assert message in str(err.value) and str(err.value).count("\n") == 0


def test_validation_scores_like_evaluate_py(tmp_path, prepared):
    # Training's validation and evaluate.py share one protocol: on the same weights and faces they
    # must report the same PSNR / SSIM.
    import evaluate

    cfg = load_train_config(write_config(tmp_path, prepared, steps=3))
    cfg.val.every, cfg.val.degrade = 3, "nn-jpeg"
    train.train(cfg, tmp_path / "run")
    best = load_model(tmp_path / "run/best.safetensors", device="cpu")
    val = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines() if "val_psnr" in line]
    assert best.metadata["step"] == 3 and len(val) == 1
    assert evaluate.main(["--weights", f"run={tmp_path / 'run/best.safetensors'}", "--data", str(prepared),
                          "--split", "val", "--limit", "2", "--lr", "12", "--hr", "32", "--degrade", "nn-jpeg",
                          "--json", str(tmp_path / "eval.json")]) == 0
    cell = json.loads((tmp_path / "eval.json").read_text())["rows"][0]["results"]["x2.67 12-32"]
    assert cell["n"] == 2
    assert cell["psnr"] == pytest.approx(best.metadata["val_psnr"], abs=1e-9)
    assert cell["ssim"] == pytest.approx(val[0]["val_ssim"], abs=1e-4)
