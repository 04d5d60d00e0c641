"""The optimised decoding of `ARASFSR.upscale` against the reference path (`reference_upscale`, the per-image
decoding of training): equal within 1e-5 in fp32, for both decoders, same-size batches and mixed sizes,
through the grid cache and after it is invalidated; and ARASFSR-LM's split decoder."""
import pytest
import torch

from models import build_model
from models.arasfsr import LatentModulatedDecoder, reference_upscale

TINY = {"encoder": {"name": "edsr", "n_resblocks": 2, "n_feats": 16}, "decoder": {"hidden": 32, "layers": 4},
        "local_frequency": {"latent": 8, "width": 16}}
DECODERS = {"full": {}, "latent_modulated": {"render": 8}}


def tiny(decoder: str, **changes) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {**TINY, "decoder": {**TINY["decoder"], **DECODERS[decoder]}, **changes}
    return build_model(cfg).eval()


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("lr_size,out_size", [((28, 28), (64, 64)), ((17, 23), (61, 47)), ((9, 40), (50, 70))])
def test_fast_equals_reference(decoder, lr_size, out_size):
    model = tiny(decoder)
    lr = torch.rand(3, 3, *lr_size)
    reference = reference_upscale(model, lr, out_size)
    assert (model.upscale(lr, out_size) - reference).abs().max() < 1e-5
    assert (model.upscale(lr, out_size) - reference).abs().max() < 1e-5  # second call: from the grid cache
    assert (model.upscale(lr, out_size, max_queries=997) - reference).abs().max() < 1e-5  # chunked otherwise


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_mixed_sizes_in_one_pass_equal_each_alone(decoder):
    model = tiny(decoder)
    images = [torch.rand(3, 20, 20), torch.rand(3, 28, 24), torch.rand(3, 20, 20), torch.rand(3, 70, 66),
              torch.rand(3, 9, 31)]
    together = model.upscale(images, (64, 64))
    assert together.shape == (5, 3, 64, 64)
    for image, out in zip(images, together):
        alone = reference_upscale(model, image[None], (64, 64))[0] if min(image.shape[1:]) < 64 else \
            torch.nn.functional.interpolate(image[None], size=(64, 64), mode="area")[0]  # larger: area, no model
        assert (out - alone).abs().max() < 1e-5


@pytest.mark.parametrize("variant", [{"scale_conditioning": False}, {"skip": False},
                                     {"global_coordinate": {"enabled": False}}])
def test_fast_equals_reference_without_modules(variant):
    model = tiny("full", **variant)
    lr = torch.rand(2, 3, 19, 14)
    assert (model.upscale(lr, (50, 40)) - reference_upscale(model, lr, (50, 40))).abs().max() < 1e-5


def test_grid_cache_follows_the_weights():
    model = tiny("latent_modulated")
    lr = torch.rand(1, 3, 20, 20)
    before = model.upscale(lr, (64, 64))
    assert model._grid_cache, "the coordinate modulation and ensemble geometry are cached"
    model.train()  # weights may change from here: the cache must not outlive them
    with torch.no_grad():
        model.coord_mod.layers[0].weight.add_(0.5)
    after = model.upscale(lr, (64, 64))
    assert not torch.allclose(before, after)
    assert (after - reference_upscale(model, lr, (64, 64))).abs().max() < 1e-5
    model.load_state_dict(tiny("latent_modulated").state_dict())  # back to the first weights
    model.eval()
    assert (model.upscale(lr, (64, 64)) - before).abs().max() < 1e-5


def test_grid_cache_is_bounded():
    model = tiny("full")
    for side in range(8, 8 + 70):
        model.upscale(torch.rand(1, 3, side, 9), (side + 4, 12))
    assert len(model._grid_cache) <= 64


def test_latent_modulated_decoder_runs_its_mlp_in_lr_space():
    model = tiny("latent_modulated")
    assert isinstance(model.decoder, LatentModulatedDecoder)
    grid = model.encode(torch.rand(2, 3, 12, 10))
    # the latent MLP's output per LR position: a latent code and a shift for each render hidden layer
    assert grid.projected.shape == (2, 4 * 8, 12, 10)
    render_params = sum(p.numel() for name, p in model.decoder.named_parameters()
                        if not name.startswith(("code_proj", "latent_mlp")))
    full_params = sum(p.numel() for name, p in tiny("full").decoder.named_parameters() if name != "code_proj.weight")
    assert render_params * 5 < full_params  # per-pixel work shrinks with the render width (8 vs 32)


def test_latent_modulated_model_trains():
    model = tiny("latent_modulated").train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    lr, coord = torch.rand(2, 3, 12, 12), torch.rand(2, 64, 2) * 2 - 1
    target = torch.rand(2, 64, 3)
    losses = []
    for _ in range(15):
        loss = (model(lr, coord, torch.full((2, 64, 2), 0.25)) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        if not losses:  # every part of the split decoder learns, the latent MLP included
            silent = [n for n, p in model.decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not silent
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]
