"""PSNR / SSIM (models/metrics.py) against known values and skimage, and the evaluate.py CLI."""
import json
import math

import cv2
import numpy as np
import pytest
import torch
from skimage.data import astronaut
from skimage.metrics import structural_similarity

import evaluate
from models import build_model, save_checkpoint
from models.data import write_prepared
from models.metrics import psnr, rgb_to_y, ssim, y_metrics


def test_y_is_bt601_studio_swing():
    black, white = np.zeros((1, 1, 3), np.uint8), np.full((1, 1, 3), 255, np.uint8)
    assert rgb_to_y(black)[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(white)[0, 0] == pytest.approx(235.0)
    assert rgb_to_y(white.astype(np.float64) / 255)[0, 0] == pytest.approx(235.0)  # float input in [0, 1]
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert rgb_to_y(red)[0, 0] == pytest.approx(16 + 65.481)


def test_identical_images_give_inf_psnr_and_ssim_one():
    img = astronaut()
    p, s = y_metrics(img, img.copy())
    assert p == math.inf and s == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("offset", [1.0, 2.5, 10.0])
def test_constant_offset_on_y_gives_the_closed_form_psnr(offset):
    y = rgb_to_y(astronaut())
    assert psnr(y, y + offset) == pytest.approx(20 * math.log10(255 / offset), abs=1e-9)


def test_grey_offset_in_rgb_moves_y_by_219_over_255():
    a = np.full((32, 32, 3), 100, np.uint8)
    b = a + 3  # Y moves by 3 * (65.481 + 128.553 + 24.966) / 255 = 3 * 219 / 255
    assert y_metrics(a, b)[0] == pytest.approx(20 * math.log10(255 / (3 * 219 / 255)), abs=1e-9)


@pytest.mark.parametrize("shape,noise", [((64, 64), 5.0), ((48, 81), 25.0), ((128, 96), 60.0)])
def test_ssim_matches_skimage(shape, noise):
    rng = np.random.default_rng(int(noise))
    a = rng.uniform(0, 255, shape)
    a = cv2.GaussianBlur(a, (0, 0), 2) * 0.5 + a * 0.5  # some structure, not only noise
    b = np.clip(a + rng.normal(0, noise, shape), 0, 255)
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-3)


def test_masks_restrict_the_metrics():
    a = np.zeros((40, 40))
    b = a.copy()
    b[:, 30:] = 50  # differ only on the right
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True
    assert psnr(a, b, mask=mask) == math.inf and ssim(a, b, mask=mask) == pytest.approx(1.0)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (0.25 * 50**2)))  # a quarter of the pixels


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    base = cv2.resize(astronaut()[30:250, 140:360], (64, 64), interpolation=cv2.INTER_AREA)
    write_prepared(root, [np.roll(base, 3 * i, axis=1) for i in range(4)], ["val"] * 3 + ["train"])
    return root


def test_evaluate_cli_writes_table_and_json(tmp_path, prepared, capsys):
    torch.manual_seed(0)
    model = build_model({"name": "tiny", "encoder": {"n_resblocks": 1, "n_feats": 8}, "decoder": {"hidden": 16}})
    weights = save_checkpoint(model, tmp_path / "tiny.safetensors", step=3, note="unit test")
    code = evaluate.main(["--weights", "bicubic", f"Tiny={weights}", "--data", str(prepared), "--lr", "16",
                          "--hr", "32,64,128", "--json", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| Method | x2 16-32 | x4 16-64 | x8 16-128 |" in out and "| Tiny |" in out and "| Bicubic |" in out
    assert "UP-SAMPLED" in out  # 128 > the 64 px ground truth: the table must say so
    report = json.loads((tmp_path / "t.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["Bicubic", "Tiny"]
    assert report["settings"]["faces"] == 3 and report["rows"][1]["step"] == 3
    cell = report["rows"][0]["results"]["x4 16-64"]
    assert cell["n"] == 3 and 15 < cell["psnr"] < 50 and 0 < cell["ssim"] < 1
    assert (tmp_path / "t.md").read_text().startswith("### ")


def test_evaluate_table2_pairs_and_nn_jpeg(prepared, capsys):
    assert evaluate.main(["--weights", "bicubic", "--data", str(prepared), "--lr", "12,16", "--hr", "48,64",
                          "--degrade", "nn-jpeg", "--region", "full"]) == 0
    assert "| x4 12-48 | x4 16-64 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--weights", "missing.safetensors"], "no such file"),
    (["--weights", "bicubic", "--lr", "16,32,8"], "one LR size or one per HR size"),
    (["--weights", "bicubic", "--data", "/nonexistent/prepared"], "does not exist"),
])
def test_evaluate_errors_are_one_line(argv, message, prepared, capsys):
    args = argv + ([] if "--data" in argv else ["--data", str(prepared)]) + ["--hr", "32,64"]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_bicubic_row_is_the_products_bicubic():
    from pipeline.enhance import Enhancer, EnhancerConfig
    from pipeline.records import AlignedFace, Detection

    lr = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), np.uint8)
    det = Detection(np.array([0.0, 0, 8, 8]), 0.9, np.zeros((5, 2)))
    faces = [AlignedFace(1, i, img, np.eye(2, 3), 16, 0.5, det) for i, img in enumerate(lr)]
    product = [f.sr for f in Enhancer(EnhancerConfig(method="bicubic", output_size=64))(faces)]
    np.testing.assert_array_equal(evaluate.Method("bicubic", "cpu").upscale(lr, 64), np.stack(product))
