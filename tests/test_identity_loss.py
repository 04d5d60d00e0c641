"""dlib's face descriptor in torch, the chip geometry and the identity loss used in training."""
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from skimage.data import astronaut

import train
from models.data import FaceSet, PairConfig, PairSampler, write_prepared
from models.dlib_resnet import DatFormatError, DlibResNet, default_model_path
from models.identity import (CHIPS_FILE, RECOGNIZER_FILE, IdentityLoss, chip_queries, chip_transforms, flip_chip,
                             gt_chip, pack_for_identity)
from pipeline.recognition import DlibEmbedder, dlib_available

needs_dlib = pytest.mark.skipif(not dlib_available(),
                                reason="dlib not installed (pip install -e .[recognition])")


def aligned_face(size: int = 128, shift: int = 0) -> np.ndarray:
    """The astronaut's face roughly in the canonical frame, RGB."""
    img = astronaut()
    return np.ascontiguousarray(cv2.resize(img[30 + shift:230 + shift, 150:350], (size, size),
                                           interpolation=cv2.INTER_AREA))


@pytest.fixture(scope="module")
def net() -> DlibResNet:
    if not dlib_available():
        pytest.skip("dlib not installed (pip install -e .[recognition])")
    return DlibResNet.from_dat()


@needs_dlib
def test_the_torch_network_gives_dlibs_descriptors(net):
    import dlib

    rec = dlib.face_recognition_model_v1(str(default_model_path()))
    emb = DlibEmbedder(realign="canonical")
    chips = [emb.chip(np.ascontiguousarray(aligned_face(160, s)[:, :, ::-1])) for s in (0, 6, 12)]
    chips.append(np.ascontiguousarray(chips[0][:, ::-1]))  # a mirrored face is another input
    want = np.array([np.array(rec.compute_face_descriptor(c)) for c in chips])
    with torch.no_grad():
        got = net(torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.linalg.norm(got[0] - got[3]) > 1e-3  # the inputs differ, so must the outputs


@needs_dlib
def test_a_cut_or_foreign_model_file_is_one_clear_error(tmp_path):
    data = default_model_path().read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatFormatError, match="cut short"):
        DlibResNet.from_dat(cut)
    other = tmp_path / "other.dat"
    other.write_bytes(b"\x01\x05hello" + bytes(1000))
    with pytest.raises(DatFormatError, match=r"other\.dat: no layer 'input_rgb_image_sized'"):
        DlibResNet.from_dat(other)
    with pytest.raises(DatFormatError, match="cannot read"):
        DlibResNet.from_dat(tmp_path / "missing.dat")


@needs_dlib
def test_the_measured_chip_transform_cuts_dlibs_chip():
    emb = DlibEmbedder(realign="canonical")
    for size in (128, 200):  # below and above the 160 px the landmark model is given
        face = aligned_face(size)
        want = emb.chip(np.ascontiguousarray(face[:, :, ::-1]))
        got = gt_chip(face, emb.chip_transform(np.ascontiguousarray(face[:, :, ::-1])))
        diff = np.abs(got.astype(int) - want.astype(int))[10:-10, 10:-10]
        assert diff.mean() < 2.0, size  # a 0.3 px shift alone gives 3 (measured)


def similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_chip_queries_sample_the_face_where_the_chip_lies():
    face = aligned_face(64).astype(np.float32) / 255.0
    chip_to_face = similarity(0.3, 0.1, 12.0, 8.0)  # 150 chip px cover ~45 face px
    want = gt_chip((face * 255).astype(np.uint8), chip_to_face).astype(np.float32) / 255.0
    # the LR image is the face itself (face px = LR px): sampling it at the queries is the chip
    coord, ratio = chip_queries(chip_to_face, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 64, 150)
    grid = torch.from_numpy(coord[:, ::-1].copy()).view(1, 150, 150, 2)  # grid_sample wants (x, y)
    img = torch.from_numpy(face).permute(2, 0, 1)[None]
    got = F.grid_sample(img, grid, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - want)[2:-2, 2:-2].max() < 0.01
    assert ratio == pytest.approx([0.3, 0.3])  # one chip px is 0.3 LR px
    coarse, coarse_ratio = chip_queries(chip_to_face, np.array([[0.5, 0, -0.25], [0, 0.5, -0.25]]), 32, 75)
    assert coarse.shape == (75 * 75, 2) and coarse_ratio == pytest.approx([0.3, 0.3])  # 2 chip px x 0.5


def test_the_flipped_transform_cuts_the_mirrored_chip():
    face = aligned_face(64)
    chip_to_face = similarity(0.3, 0.1, 12.0, 8.0)
    mirrored = gt_chip(np.ascontiguousarray(face[:, ::-1]), flip_chip(chip_to_face, 64))
    assert np.abs(mirrored[:, ::-1].astype(int) - gt_chip(face, chip_to_face).astype(int)).max() <= 1


def test_the_sampler_renders_chips_for_the_first_faces_only(tmp_path):
    faces = FaceSet(images=np.stack([aligned_face(64, s) for s in (0, 5, 10)]), masks=np.ones((3, 64, 64), bool),
                    names=["a", "b", "c"])
    chips = np.stack([similarity(0.3, 0.0, 10.0, 10.0)] * 3)
    cfg = PairConfig(lr=(16, 16), hr=(64, 64), queries=32, batch_size=3)
    batch = PairSampler(faces, cfg, seed=0, chips=chips, identity_faces=2, identity_grid=50).batch(0)
    assert batch["id_coord"].shape == (2, 2500, 2) and batch["id_hr"].shape == (2, 3, 150, 150)
    assert batch["id_ratio"][0, 0].tolist() == pytest.approx([0.3 * 3 * 16 / 64] * 2)  # 3 chip px a query
    assert batch["id_coord"].abs().max() < 1.0  # the chip lies inside the face
    plain = PairSampler(faces, cfg, seed=0).batch(0)
    assert "id_coord" not in plain and torch.equal(plain["lr"], batch["lr"])  # same pairs either way


@needs_dlib
def test_the_identity_loss_pulls_a_face_toward_its_descriptor(net):
    emb = DlibEmbedder(realign="canonical")
    face = aligned_face(128)
    hr = torch.from_numpy(gt_chip(face, emb.chip_transform(np.ascontiguousarray(face[:, :, ::-1]))))
    hr = hr.permute(2, 0, 1)[None].float() / 255.0
    blurred = F.avg_pool2d(hr, 10)  # a 15 px face
    loss = IdentityLoss(net)
    start = loss(blurred, hr).item()
    x = blurred.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01)
    for _ in range(10):
        opt.zero_grad()
        value = loss(x, hr)
        value.backward()
        opt.step()
    assert start > 0.05
    assert loss(x.detach(), hr).item() < 0.5 * start
    assert all(p.grad is None for p in net.parameters())  # the recognizer stays frozen


@needs_dlib
def test_training_with_the_identity_loss_logs_it_and_caches_the_chips(tmp_path):
    root = tmp_path / "prepared"
    write_prepared(root, [aligned_face(64, s) for s in range(0, 24, 2)], ["train"] * 10 + ["val"] * 2)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "encoder": {"name": "edsr", "n_resblocks": 2, "n_feats": 16},
         "decoder": {"hidden": 32, "layers": 3}, "local_frequency": {"latent": 8, "width": 16}}))
    cfg = {"model": str(tmp_path / "tiny.yaml"),
           "data": {"root": str(root), "lr": [12, 16], "hr": [24, 32], "queries": 64, "batch_size": 3},
           "identity": {"weight": 0.1, "faces": 2, "grid": 32},
           "train": {"steps": 3, "lr": 1e-3, "log_every": 1, "save_every": 3, "threads": 1},
           "val": {"every": 3, "images": 2, "lr": 12, "hr": 32}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert train.main(["--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    ids = [r["identity"] for r in records if "identity" in r]
    assert len(ids) == 3 and all(0.0 < v < 10.0 for v in ids)
    cached = np.load(root / CHIPS_FILE)
    assert cached.shape == (10, 2, 3)
    faces = FaceSet.load(root, "train")
    np.save(root / CHIPS_FILE, np.zeros_like(cached))  # a marker: the cache is read when it is this set's
    assert not chip_transforms(faces.images, root, faces.names).any()
    assert np.allclose(chip_transforms(faces.images, root, faces.names[::-1]), cached)  # another set: measured
    np.save(root / CHIPS_FILE, np.zeros_like(cached))
    assert chip_transforms(faces.images[:, ::-1].copy(), root, faces.names[::-1]).any()  # same names, other pixels
    # what a GPU lease carries: the folder with its geometry and the network, trained from without dlib's file
    pack_for_identity(root)
    assert np.allclose(np.load(root / CHIPS_FILE), cached)
    cfg["identity"]["recognizer"] = str(root / RECOGNIZER_FILE)
    cfg["train"]["steps"] = 1
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert train.main(["--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run2")]) == 0


def test_identity_faces_beyond_the_batch_are_a_config_error(tmp_path):
    from common.errors import ConfigError
    from models.train_config import load_train_config

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(
        {"model": "configs/model/arasfsr_edsr_cpu.yaml", "data": {"batch_size": 2},
         "identity": {"weight": 0.1, "faces": 3}}))
    with pytest.raises(ConfigError, match=r"identity.faces \(3\) is more than data.batch_size \(2\)"):
        load_train_config(tmp_path / "run.yaml")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(
        {"model": "configs/model/arasfsr_edsr_cpu.yaml", "identity": {"grid": 200}}))
    with pytest.raises(ConfigError, match="grid"):
        load_train_config(tmp_path / "run.yaml")


@needs_dlib
def test_the_half_size_copy_gives_the_same_descriptors(net, tmp_path):
    net.save(tmp_path / "r.safetensors")
    half = DlibResNet.load(tmp_path / "r.safetensors")
    chips = torch.from_numpy(np.stack([cv2.resize(aligned_face(128, s), (150, 150)) for s in (0, 9)]))
    chips = chips.permute(0, 3, 1, 2).float()
    with torch.no_grad():
        assert (half(chips) - net(chips)).abs().max() < 1e-3
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DatFormatError, match=r"bad\.safetensors: not the dlib network's weights"):
        DlibResNet.load(tmp_path / "bad.safetensors")
