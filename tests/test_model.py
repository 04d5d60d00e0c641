"""The ARASFSR model library: shapes, determinism, chunking, gradients, ablations, checkpoints, errors."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from skimage.data import astronaut

from common.errors import ConfigError
from models import (CheckpointError, build_model, charbonnier, load_model, load_model_config, load_optimizer_state,
                    positional_encoding, save_checkpoint, save_optimizer_state)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"encoder": {"name": "edsr", "n_resblocks": 2, "n_feats": 16}, "decoder": {"hidden": 32, "layers": 4},
        "local_frequency": {"latent": 8, "width": 16}}


def tiny(**overrides):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in overrides.items():
        merge = isinstance(value, dict) and key != "encoder"  # a new encoder replaces the old one's keys
        cfg[key] = {**cfg.get(key, {}), **value} if merge else value
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.fixture(scope="module")
def edsr():
    torch.manual_seed(0)
    return build_model(yaml.safe_load((ROOT / "configs/model/arasfsr_edsr.yaml").read_text()))


@pytest.mark.parametrize("lr_size,out_size", [((17, 23), (112, 112)), ((64, 64), (96, 96)),
                                              ((20, 20), (160, 160)), ((13, 9), (7, 5))])
def test_shapes_at_non_integer_and_non_square_scales(edsr, lr_size, out_size):
    out = edsr.upscale(torch.rand(2, 3, *lr_size), out_size)
    assert out.shape == (2, 3, *out_size)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("side", [8, 9, 16, 31, 64, 128])
def test_any_input_size_from_8_to_128(side):
    model = tiny()
    out = model.upscale(torch.rand(1, 3, side, side + 3), (112, 112))
    assert out.shape == (1, 3, 112, 112)
    assert torch.isfinite(out).all()


def test_all_model_configs_build():
    counts = {}
    for path in sorted((ROOT / "configs/model").glob("*.yaml")):
        model = build_model(yaml.safe_load(path.read_text()))
        counts[path.stem] = sum(p.numel() for p in model.parameters())
    assert {"arasfsr_edsr", "arasfsr_rdn", "liif_edsr", "arasfsr_edsr_no_L", "arasfsr_edsr_no_G",
            "arasfsr_edsr_no_S"} <= set(counts)
    assert counts["arasfsr_rdn"] > counts["arasfsr_edsr"] > counts["liif_edsr"]
    # LIIF with EDSR-baseline has ~1.57M parameters (EDSR 1.22M + MLP); ours must agree.
    assert 1.5e6 < counts["liif_edsr"] < 1.6e6


def test_chunked_decoding_equals_unchunked(edsr):
    lr = torch.rand(3, 3, 19, 14)
    whole = edsr.upscale(lr, (61, 47), max_queries=10**9)
    chunked = edsr.upscale(lr, (61, 47), max_queries=997)
    assert torch.allclose(whole, chunked, atol=1e-5)


def test_eval_is_deterministic_even_from_training_mode():
    model = tiny()
    lr = torch.rand(1, 3, 16, 16)
    model.train()
    a, b = model.upscale(lr, (40, 40)), model.upscale(lr, (40, 40))
    assert torch.equal(a, b)
    assert model.training, "upscale must restore the training flag"


def test_training_samples_the_frequency_latent():
    model = tiny().train()
    lr, coord = torch.rand(1, 3, 12, 12), torch.rand(1, 50, 2) * 2 - 1
    ratio = torch.full((1, 50, 2), 0.5)
    assert not torch.equal(model(lr, coord, ratio), model(lr, coord, ratio))


@pytest.mark.parametrize("overrides", [{}, {"local_frequency": {"enabled": False}},
                                       {"global_coordinate": {"enabled": False}}, {"skip": False},
                                       {"encoder": {"name": "rdn", "n_blocks": 2, "n_convs": 2, "growth": 8,
                                                    "g0": 16}}])
def test_every_parameter_receives_a_gradient(overrides):
    model = tiny(**overrides).train()
    lr, hr = torch.rand(2, 3, 12, 10), torch.rand(2, 64, 3)
    coord, ratio = torch.rand(2, 64, 2) * 2 - 1, torch.full((2, 64, 2), 0.5)
    charbonnier(model(lr, coord, ratio), hr).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("flag,module", [("local_frequency", "frequency."), ("global_coordinate", "coord_mod.")])
def test_ablation_flag_removes_exactly_its_module(flag, module):
    full = dict(tiny().named_parameters())
    ablated = dict(tiny(**{flag: {"enabled": False}}).named_parameters())
    assert set(ablated) <= set(full)
    assert set(full) - set(ablated) == {n for n in full if n.startswith(module)}
    assert any(n.startswith(module) for n in full)


def test_skip_ablation_keeps_parameters_but_drops_the_skip_path():
    with_skip, without = tiny(), tiny(skip=False)
    assert {n: p.shape for n, p in with_skip.named_parameters()} == {n: p.shape for n, p in without.named_parameters()}
    without.load_state_dict(with_skip.state_dict())
    lr = torch.rand(1, 3, 10, 10)
    assert not torch.allclose(with_skip.upscale(lr, (30, 30)), without.upscale(lr, (30, 30)))


def test_zero_decoder_gives_bilinear_skip_and_ensemble_weights_sum_to_one():
    model = tiny()
    with torch.no_grad():
        model.decoder.out.weight.zero_()
        model.decoder.out.bias.fill_(0.2)  # every ensemble member predicts 0.2 (in [-1, 1] units)
    lr = torch.rand(1, 3, 12, 9)
    out = model.upscale(lr, (37, 29))
    bilinear = F.interpolate(lr, size=(37, 29), mode="bilinear", align_corners=False)
    assert torch.allclose(out, (bilinear + 0.1).clamp(0, 1), atol=1e-5)


def test_downscaling_uses_area_resampling(edsr):
    lr = torch.rand(1, 3, 64, 48)
    assert torch.allclose(edsr.upscale(lr, (32, 20)), F.interpolate(lr, size=(32, 20), mode="area"))


def test_positional_encoding_has_42_dims_for_n_10():
    g = positional_encoding(torch.zeros(5, 2), 10)
    assert g.shape == (5, 42)
    assert torch.allclose(g[:, 2:][:, 1::2], torch.ones(5, 20))  # cos(0) = 1, interleaved after each sin


def test_charbonnier_matches_eq_13():
    pred, target = torch.zeros(4), torch.tensor([0.0, 0.3, -0.4, 1.0])
    expected = torch.sqrt(target**2 + 1e-6).mean()
    assert torch.isclose(charbonnier(pred, target), expected)


def test_save_then_load_gives_identical_output(tmp_path):
    model = tiny()
    path = save_checkpoint(model, tmp_path / "m.safetensors", step=12, note="unit test")
    loaded = load_model(path, device="cpu")
    lr = torch.rand(2, 3, 15, 21)
    assert torch.equal(model.upscale(lr, (50, 60)), loaded.upscale(lr, (50, 60)))
    assert loaded.metadata == {"step": 12, "note": "unit test"}
    assert not loaded.training


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import os

    from pipeline.errors import SinkError

    path = save_checkpoint(tiny(), tmp_path / "last.safetensors", step=1)
    before = path.read_bytes()

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(SinkError, match="No space left"):
        save_checkpoint(tiny(), path, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before and load_model(path, device="cpu").metadata == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_upscale_uint8_is_upscale_rounded_to_8_bits():
    model = tiny()
    images = torch.randint(0, 256, (2, 12, 10, 3), dtype=torch.uint8).numpy()
    out = model.upscale_uint8(images, (30, 25))
    expected = model.upscale(torch.from_numpy(images).permute(0, 3, 1, 2) / 255, (30, 25))
    assert out.dtype == np.uint8 and out.shape == (2, 30, 25, 3)
    assert np.array_equal(out, (expected * 255).round().byte().permute(0, 2, 3, 1).numpy())


def test_device_resolver(monkeypatch):
    from models import resolve_device
    from pipeline.errors import ConfigError

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="enhance.device 'cuda' requested but CUDA is not available"):
        resolve_device("cuda", "enhance.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    for bad in ("tpu:0", "gpu", None):
        with pytest.raises(ConfigError, match=r"detect.device must be 'auto', 'cpu' or 'cuda\[:N\]'"):
            resolve_device(bad, "detect.device")


def test_pickled_file_is_refused(tmp_path):
    torch_file, pickle_file = tmp_path / "a.pth", tmp_path / "b.pkl"
    torch.save(tiny().state_dict(), torch_file)
    pickle_file.write_bytes(pickle.dumps({"a": 1}))
    for path in (torch_file, pickle_file):
        with pytest.raises(CheckpointError, match="refusing to unpickle"):
            load_model(path)


def test_header_length_starting_with_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    model = tiny()
    for pad in range(256):  # some metadata length puts 0x80 in the first byte of the header length
        path = save_checkpoint(model, tmp_path / "m.safetensors", note="x" * pad)
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    lr = torch.rand(1, 3, 8, 8)
    assert torch.equal(load_model(path).upscale(lr, (16, 16)), model.upscale(lr, (16, 16)))


def test_truncated_file_is_refused(tmp_path):
    path = save_checkpoint(tiny(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.safetensors")


def test_config_tensor_mismatch_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    import json

    path = save_checkpoint(tiny(), tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    cfg = tiny().config
    cfg["decoder"]["hidden"] = 48  # config now disagrees with the stored tensors
    save_file(tensors, str(tmp_path / "bad.safetensors"),
              metadata={"format": "arasfsr-checkpoint", "config": json.dumps(cfg), "metadata": "{}"})
    with pytest.raises(CheckpointError, match="do not match its config"):
        load_model(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("lr,size,match", [
    (torch.rand(3, 16, 16), (32, 32), "4 dimensions"),
    (torch.rand(1, 1, 16, 16), (32, 32), "3 \\(RGB\\) channels"),
    (torch.full((1, 3, 16, 16), float("nan")), (32, 32), "NaN"),
    (torch.rand(1, 3, 16, 16), (0, 32), "positive"),
    (torch.rand(1, 3, 7, 16), (32, 32), "at least 8x8"),
    (torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8), (32, 32), "float"),
])
def test_bad_input_raises_helpful_value_error(lr, size, match):
    with pytest.raises(ValueError, match=match):
        tiny().upscale(lr, size)


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown model config key decoder.hiden; valid keys in decoder: hidden, layers"):
        build_model({"decoder": {"hiden": 3}})


@pytest.mark.parametrize("cfg,message", [
    ({"decoder": {"hidden": "wide"}}, "decoder.hidden must be an integer >= 1, got 'wide'"),
    ({"decoder": {"layers": 0}}, "decoder.layers must be an integer >= 1, got 0"),
    ({"local_frequency": {"enabled": "yes"}}, "local_frequency.enabled must be true or false, got 'yes'"),
    ({"encoder": {"name": "vgg"}}, "encoder.name must be one of edsr, rdn, got 'vgg'"),
    ({"encoder": {"name": "rdn", "n_resblocks": 4}}, "unknown model config key encoder.n_resblocks"),
    ({"skip": None}, "skip must be true or false, got None"),
])
def test_bad_model_config_names_the_dotted_key(cfg, message):
    with pytest.raises(ConfigError) as err:
        build_model(cfg)
    assert message in str(err.value)


def test_model_config_file_with_overrides(tmp_path):
    cfg = load_model_config(ROOT / "configs/model/arasfsr_edsr_cpu.yaml", {"skip": False, "decoder": {"layers": 3}})
    assert cfg["skip"] is False and cfg["decoder"] == {"hidden": 128, "layers": 3, "render": 0}  # merged, not replaced
    assert cfg["encoder"] == {"name": "edsr", "n_resblocks": 8, "n_feats": 32, "res_scale": 1.0}
    (tmp_path / "bad.yaml").write_text("decoder: [1, 2]")
    with pytest.raises(ConfigError, match="decoder must be a mapping"):
        load_model_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_model_config(tmp_path / "missing.yaml")


def test_optimizer_state_round_trips(tmp_path):
    model = tiny().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        charbonnier(model(torch.rand(1, 3, 10, 10), torch.rand(1, 20, 2) * 2 - 1, torch.full((1, 20, 2), 0.5)),
                    torch.rand(1, 20, 3)).backward()
        opt.step()
    torch.manual_seed(7)
    path = save_optimizer_state(opt, model, tmp_path / "last.optim.safetensors", step=2, best_psnr=None)
    expected_draw = torch.rand(3)
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    assert load_optimizer_state(fresh, model, path) == {"step": 2, "best_psnr": None}
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved
    for p in model.parameters():
        a, b = opt.state[p], fresh.state[p]
        assert set(a) == set(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated|not a safetensors"):
        load_optimizer_state(fresh, model, tmp_path / "cut.safetensors")


def test_overriding_the_encoder_kind_replaces_its_section(tmp_path):
    cfg = load_model_config(ROOT / "configs/model/arasfsr_edsr.yaml", {"encoder": {"name": "rdn", "n_blocks": 2}})
    assert cfg["encoder"] == {"name": "rdn", "n_blocks": 2, "n_convs": 8, "growth": 64, "g0": 64}


def test_ensemble_weights_are_the_opposite_areas_and_continuous_at_the_border_clamp():
    from models.arasfsr import local_ensemble, make_coord

    coord = torch.rand(2000, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    _, rel, weights = local_ensemble(coord, 16, 20)
    area = (rel[..., 0] * rel[..., 1]).abs()
    assert torch.allclose(weights, area.flip(-2) / area.sum(dim=-2, keepdim=True), atol=1e-6)  # eq. 4
    assert torch.allclose(weights.sum(0), torch.ones(2000), atol=1e-6)

    # 16 -> 112 is x7: the last output column lies exactly on the last LR centre, where the border clamp makes
    # both codes of each x pair the same one. A float ulp's shift (another device's rounding) must not move the
    # weight each LR code gets; LIIF's |rel_y rel_x| + 1e-9 moved it by up to 0.5 there.
    def per_code(c):
        index, _, w = local_ensemble(c, 16, 16)
        return torch.zeros(c.shape[0], 256).scatter_add_(1, index.T, w.T)

    grid = make_coord(112, 112)
    for ulp in (1e-7, -1e-7):
        assert (per_code(grid) - per_code(grid + ulp)).abs().max() < 1e-4


def test_upscale_at_an_odd_integer_scale_does_not_jump_on_the_last_row_and_column(monkeypatch):
    """What made CUDA's output differ from the CPU's by 0.15 at 16 -> 112 (first run of tests/test_cuda.py)."""
    import models.arasfsr as arasfsr

    model = load_model(ROOT / "models/weights/arasfsr_paper.safetensors")
    lr = torch.from_numpy(np.ascontiguousarray(astronaut()[30:230:12, 130:330:12][:16, :16])).permute(2, 0, 1)
    lr = lr.float().div(255)[None]
    want = model.upscale(lr, (112, 112))
    make_coord = arasfsr.make_coord
    monkeypatch.setattr(arasfsr, "make_coord", lambda h, w, device=None: make_coord(h, w, device) + 1e-7)
    model._grid_cache.clear()
    assert (model.upscale(lr, (112, 112)) - want).abs().max() < 1e-4


def test_fused_layer_runs_under_autocast():
    """`upscale(amp="bf16")` on CUDA failed here (in-place addmm_ is not autocast): CPU autocast takes the same
    route through addmm, so it is checked on every machine."""
    from models.arasfsr import fused_layer

    layer = torch.nn.Linear(16, 8)
    s, g, shift = torch.rand(2, 5, 8), torch.rand(5, 8), torch.rand(2, 5, 8)
    want = fused_layer(layer, s, g, shift)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused_layer(layer, s, g, shift)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.05


def test_max_queries_defaults_to_the_devices_and_can_be_set():
    model = build_model(TINY)
    assert model.max_queries == 4096  # the CPU's: cache-sized chunks (CUDA's, 2^17: tests/test_cuda.py)
    model.max_queries = 100
    assert model.max_queries == 100
    model.max_queries = None
    assert model.max_queries == 4096
