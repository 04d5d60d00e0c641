"""ARASFSR: arbitrary-resolution, arbitrary-scale face SR with an implicit image function.

Tsai et al., "Arbitrary-Resolution and Arbitrary-Scale Face Super-Resolution with Implicit
Representation Networks" (arXiv 2511.16341), sec. 3. Equation numbers refer to the paper.

Coordinates are (y, x) in [-1, 1] with pixel centres at -1 + (2i + 1) / n, as in LIIF.
The LIIF baseline and the ablations (-L, -G, -S) are this same class with modules switched off.

Where the paper's parts are:
- eq. 1, 3, 4 (nearest code, scale ratio r, local ensemble): `ARASFSR.query_rgb`.
- eq. 2 (3x3 feature unfolding) is folded into `ImplicitDecoder.code_proj`: W_0 of eq. 7 on the unfolded code
  is a 3x3 convolution of the code grid, run once per LR position instead of per query.
- eq. 5 (p = [t, c]): `ARASFSR.encode`; sec. 3.3: `LocalFrequencyEstimator` (its layers are ours, see there).
- eq. 6, 8, 11: `positional_encoding`, `GlobalCoordinateModulation`; eq. 7, 9, 10, 12: `ImplicitDecoder`.
- sec. 3.5 (long skip): the paper gives no form; this is LTE's (Lee & Jin, CVPR 2022, the paper's [21]):
  the LR image bilinearly up-sampled (border padding) and added to the decoded value.
- eq. 13: `models.losses.charbonnier`.

Example:
    >>> import torch
    >>> from models import build_model
    >>> model = build_model({"encoder": {"name": "edsr", "n_resblocks": 2, "n_feats": 16},
    ...                      "decoder": {"hidden": 32}})
    >>> model.upscale(torch.rand(1, 3, 17, 23), (112, 112)).shape
    torch.Size([1, 3, 112, 112])
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .encoders import ENCODERS

log = logging.getLogger(__name__)

MIN_INPUT = 8  # smallest LR side the encoders and the 3x3 unfolding are meant for
GRID_CACHE_SIZE = 64  # output grids x LR sizes kept by `upscale` (~1-3 MB each at 112-160 px)
DEFAULT_MAX_QUERIES = 4096  # queries decoded at once in upscale(): bounds memory, and chunks that stay in
# the CPU caches decode faster (28 -> 112, batch 32: ~1.3x faster than 16384 on this 2-core CPU, both decoders)
# On CUDA a chunk is ~20 kernel launches of ~10 us of CPU each: 4096 queries over 128 faces is 32 pixels a face a
# chunk, and an H100 decoded 390 faces/s, launch-bound (28 -> 112, fp32; bf16 no faster). 2^17: 1,540 fp32 and
# 2,690 bf16 faces/s at batch 128, peak 1.4 / 0.8 GB (2^18: +7 %, 2.5 GB). BENCHMARKS.md, "CUDA".
CUDA_MAX_QUERIES = 2**17


def make_coord(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Pixel-centre coordinates of an h x w grid, (h*w) x 2, (y, x) in [-1, 1]."""
    ys = -1 + (2 * torch.arange(h, device=device, dtype=torch.float32) + 1) / h
    xs = -1 + (2 * torch.arange(w, device=device, dtype=torch.float32) + 1) / w
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """g_s = (x, sin(2^0 pi x), cos(2^0 pi x), ..., sin(2^(N-1) pi x), cos(2^(N-1) pi x))  # eq. 6"""
    freqs = math.pi * 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)
    angles = x[..., None] * freqs  # ... x 2 x N
    return torch.cat([x, torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-3)], dim=-1)


class NonFiniteOutput(ValueError):
    """The model's output holds NaN/Inf (e.g. an fp16 overflow under autocast) for some images.
    `finite`: one bool per image; `images`: the uint8 result, valid where `finite`."""

    def __init__(self, images: np.ndarray, finite: np.ndarray) -> None:
        super().__init__(f"model output is not finite (NaN/Inf) for {int((~finite).sum())} of {len(finite)} image(s)")
        self.images, self.finite = images, finite


class LocalFrequencyEstimator(nn.Module):
    """Sec. 3.3: an encoder predicts P(z | I_LR) as a Gaussian per LR position, a decoder turns z into
    a frequency token t. Training samples z (reparameterisation); inference uses z = mean, so it is
    deterministic.

    The paper names only "an encoder-decoder": the layers (three 3x3 convs, two 1x1 convs) are ours.
    The loss is Charbonnier alone (eq. 13, no KL term), so nothing holds the variance to a prior and it
    is free to collapse: on the shipped weights the median sigma is 0.10 / 0.14 against a median |mu| of
    0.38 / 0.41, and sampling at inference moves PSNR by at most 0.001 dB (models/weights/README.md,
    benchmarks/frequency_sampling.py); hence z = mean at inference.

    Args:
        latent: channels of z (the Gaussian has `latent` means and `latent` log-variances).
        token: channels of the frequency token t concatenated to the encoder's codes (eq. 5).
        width: channels of the hidden layers.
    """

    def __init__(self, latent: int = 64, token: int = 8, width: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * latent, 3, padding=1),
        )
        self.decoder = nn.Sequential(nn.Conv2d(latent, width, 1), nn.ReLU(inplace=True), nn.Conv2d(width, token, 1))
        self.token_dim = token

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.encoder(lr).chunk(2, dim=1)
        z = mean
        if self.training:
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return self.decoder(z)


class GlobalCoordinateModulation(nn.Module):
    """Sec. 3.4: the global coordinate x_s, positionally encoded, gives one periodic modulation per
    hidden layer: g_i = sin(W'_i g_s + b'_i)  # eq. 8, 11

    Args:
        hidden: width of the decoder's hidden layers (the size of each g_i).
        n_layers: number of modulations, one per modulated hidden layer.
        n_freqs: N of eq. 6 (10 in the paper, giving 2 + 4N = 42 input features).
    """

    def __init__(self, hidden: int, n_layers: int, n_freqs: int = 10):
        super().__init__()
        self.n_freqs = n_freqs
        in_dim = 2 + 4 * n_freqs  # 42 for N = 10
        self.layers = nn.ModuleList([nn.Linear(in_dim, hidden) for _ in range(n_layers)])

    def forward(self, coord: torch.Tensor) -> list[torch.Tensor]:
        g_s = positional_encoding(coord, self.n_freqs)
        return [torch.sin(layer(g_s)) for layer in self.layers]


def fused_layer(layer: nn.Linear, s: torch.Tensor, g: torch.Tensor | None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
    """relu(W [m_i, s_i] + b (+ shift)) with m_i = s_i * g_i (eq. 9-12), or relu(W s_i + b (+ shift)) when
    `g` is None. W is applied as its two halves [W_m | W_s] so the concatenation [m_i, s_i] is never
    materialised: per output pixel this layer is memory-bound, and the copy cost as much as the product."""
    width = s.shape[-1]
    rows = s.reshape(-1, width)
    if g is None:
        out = torch.addmm(layer.bias, rows, layer.weight.t())
    else:
        out = torch.addmm(layer.bias, rows, layer.weight[:, width:].t())  # W_s s_i + b
        # + W_m m_i. In place, so autocast does not cast for it: under bf16/fp16 `out` is already in the low
        # precision, and m_i and the fp32 weight half are brought to it here
        out = out.addmm_((s * g).reshape(-1, width).to(out.dtype), layer.weight[:, :width].t().to(out.dtype))
    out = out.view(*s.shape[:-1], -1)
    if shift is not None:
        out = out.add_(shift.to(out.dtype))
    return out.relu_()


class ImplicitDecoder(nn.Module):
    """f_theta: the MLP of eq. 7-12, modulated when `modulated` (else LIIF's plain MLP).

    W_0 of eq. 7 acts on [p_hat, x_s - x_c, r]. Its part on the 3x3-unfolded code p_hat (eq. 2) is
    exactly a 3x3 convolution of the code grid, so it is computed once per LR position (`project`)
    instead of once per query and ensemble member; the rest acts on the query.

    Args:
        code_dim: channels of the code grid p = [t, c] before unfolding.
        hidden: width of every hidden layer.
        n_layers: hidden layers (s_0 .. s_{n_layers - 1}); the output layer comes on top.
        modulated: fuse the global coordinate modulation as [m_i, s_i] (eq. 9-12); False is LIIF's MLP.
        scale_conditioning: feed the scale ratio r to the first layer (eq. 3).
    """

    def __init__(self, code_dim: int, hidden: int, n_layers: int, modulated: bool, scale_conditioning: bool):
        super().__init__()
        self.code_proj = nn.Conv2d(code_dim, hidden, 3, padding=1, bias=False)  # eq. 2's unfolding lives here
        self.query_proj = nn.Linear(4 if scale_conditioning else 2, hidden)  # [x_s - x_c, r] and b_0
        width = 2 * hidden if modulated else hidden
        self.hidden = nn.ModuleList([nn.Linear(width, hidden) for _ in range(n_layers - 1)])
        self.out = nn.Linear(hidden, 3)
        self.modulated = modulated

    def project(self, code: torch.Tensor) -> torch.Tensor:
        return self.code_proj(code)

    def forward(self, projected: torch.Tensor, query: torch.Tensor, g: list[torch.Tensor] | None) -> torch.Tensor:
        s = torch.relu(projected + self.query_proj(query))  # s_0, eq. 7
        for i, layer in enumerate(self.hidden):
            s = fused_layer(layer, s, g[i] if self.modulated else None)  # s_{i+1}, eq. 9, 10, 12
        return self.out(s)


class LatentModulatedDecoder(nn.Module):
    """ARASFSR-LM: f_theta split as in LMF (He et al., CVPR 2024) into a latent MLP that runs once per LR
    position and a render MLP that runs per output pixel.

    The latent MLP (width `hidden`: W_0's code part as in `ImplicitDecoder`, then two 1x1 layers) turns the
    unfolded code p_hat into a latent code for the render MLP's first layer and one shift per render
    hidden layer. The render MLP (width `render`) keeps the paper's per-query structure: s_0 from
    [x_s - x_c, r] (eq. 3, 7), hidden layers fused with the global coordinate modulation (eq. 9-12), plus
    the latent shift of its LR position. Per output pixel and ensemble member it costs about
    `layers * 2 * render^2` multiply-adds instead of `layers * 2 * hidden^2`.

    Args:
        code_dim, hidden, n_layers, modulated, scale_conditioning: as `ImplicitDecoder` (n_layers is
            both MLPs' depth: the render MLP has n_layers - 1 shifted hidden layers).
        render: width of the render MLP (and of the global coordinate modulation).
    """

    def __init__(self, code_dim: int, hidden: int, n_layers: int, render: int, modulated: bool,
                 scale_conditioning: bool):
        super().__init__()
        self.code_proj = nn.Conv2d(code_dim, hidden, 3, padding=1, bias=False)  # eq. 2's unfolding, as before
        self.latent_mlp = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, n_layers * render, 1),  # [latent code, shift_1 .. shift_{n_layers - 1}]
        )
        self.query_proj = nn.Linear(4 if scale_conditioning else 2, render)
        width = 2 * render if modulated else render
        self.hidden = nn.ModuleList([nn.Linear(width, render) for _ in range(n_layers - 1)])
        self.out = nn.Linear(render, 3)
        self.modulated = modulated
        self.render = render

    def project(self, code: torch.Tensor) -> torch.Tensor:
        return self.latent_mlp(self.code_proj(code))

    def forward(self, projected: torch.Tensor, query: torch.Tensor, g: list[torch.Tensor] | None) -> torch.Tensor:
        latent, *shifts = projected.split(self.render, dim=-1)
        s = torch.relu(latent + self.query_proj(query))  # s_0, eq. 7 with the code part from the latent MLP
        for i, layer in enumerate(self.hidden):
            # s_{i+1}, eq. 9, 10, 12, shifted by the LR position's latent
            s = fused_layer(layer, s, g[i] if self.modulated else None, shifts[i])
        return self.out(s)


def local_ensemble(coord: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The local ensemble of eq. 4 for query coordinates `coord` (... x Q x 2) on an h x w LR grid: the four
    codes around each query, one per diagonal shift by half an LR pixel. Returns their flat LR indices
    (... x 4 x Q), x_s - x_c in LR pixels (... x 4 x Q x 2), and the bilinear weights (... x 4 x Q: each code
    weighted by the area of the rectangle opposite to it)."""
    size = torch.tensor([h, w], device=coord.device, dtype=coord.dtype)
    shifts = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], device=coord.device, dtype=coord.dtype) / size
    query = coord.unsqueeze(-3)  # ... x 1 x Q x 2
    shifted = (query + shifts[:, None] + 1e-6).clamp(-1 + 1e-6, 1 - 1e-6)  # ... x 4 x Q x 2
    idx = ((shifted + 1) / 2 * size).floor().long()
    idx = torch.minimum(idx.clamp_min(0), torch.tensor([h - 1, w - 1], device=idx.device))
    centre = -1 + (2 * idx + 1) / size  # x_c of each chosen code
    rel = (query - centre) * size  # x_s - x_c, in LR pixels
    # The area of the opposite rectangle, as the product of one weight per axis: on each axis a code is weighted
    # by its partner's distance over the pair's span. Where the border clamp gives both members of a pair the
    # same code exactly under the query (the last LR centre at odd integer scales: 16 -> 112 is x7) the span is
    # 0, and the pair shares the axis evenly; LIIF's form, |rel_y rel_x| + 1e-9, then weighs all four codes
    # alike, the other axis' blend lost, and a query a float ulp away (another device's rounding) gets the
    # proper weights: a jump of up to ~0.15 along the last row and column.
    far = rel.abs()
    partner = far[..., [2, 3, 0, 1], :, 0], far[..., [1, 0, 3, 2], :, 1]  # codes: (-y,-x) (-y,+x) (+y,-x) (+y,+x)
    weights = torch.ones_like(far[..., 0])
    for axis, other in enumerate(partner):
        span = far[..., axis] + other
        weights = weights * torch.where(span > 0, other / span.clamp_min(1e-12), 0.5)
    return idx[..., 0] * w + idx[..., 1], rel, weights


class _SizeGroup(NamedTuple):
    """The images of one crop size in `ARASFSR.upscale`, with their rows of the flat LR table."""

    members: list[int]  # positions in the call's image list
    index: torch.Tensor  # N_g x 4 x Q: table row of each image's four ensemble codes per query
    query: torch.Tensor  # 4 x Q x (2 or 4), shared by the group
    weights: torch.Tensor  # 4 x Q, shared by the group
    up: torch.Tensor | None  # N_g x Q x 3: the long skip's samples


@dataclass
class LatentGrid:
    """What the decoder needs from one LR batch: W_0 applied to the unfolded codes, and the LR image."""

    projected: torch.Tensor  # B x C x h x w: W_0 on the codes (C = hidden), or the LM latents (C = layers * render)
    lr: torch.Tensor  # B x 3 x h x w, normalised to [-1, 1]


class ARASFSR(nn.Module):
    """Implicit face SR (eq. 1-13). Build with `models.build_model(cfg)`; see configs/model/*.yaml.

    Args:
        config: the resolved model config (`models.config.resolve_config`): "encoder" (name and its
            arguments), "local_frequency" (enabled, latent, token, width), "global_coordinate" (enabled,
            n_freqs), "decoder" (hidden, layers), "scale_conditioning" and "skip" (bools).
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        enc = dict(config["encoder"])
        self.encoder = ENCODERS[enc.pop("name")](**enc)
        lf, gc, dec = config["local_frequency"], config["global_coordinate"], config["decoder"]
        self.frequency = (
            LocalFrequencyEstimator(lf["latent"], lf["token"], lf["width"]) if lf["enabled"] else None
        )
        code_dim = self.encoder.out_dim + (lf["token"] if lf["enabled"] else 0)
        width = dec.get("render", 0) or dec["hidden"]  # of the per-query MLP, which the modulation feeds
        self.coord_mod = (
            GlobalCoordinateModulation(width, dec["layers"] - 1, gc["n_freqs"]) if gc["enabled"] else None
        )
        if dec.get("render", 0):
            self.decoder = LatentModulatedDecoder(
                code_dim, dec["hidden"], dec["layers"], dec["render"], gc["enabled"], config["scale_conditioning"]
            )
        else:
            self.decoder = ImplicitDecoder(
                code_dim, dec["hidden"], dec["layers"], gc["enabled"], config["scale_conditioning"]
            )
        self.scale_conditioning = config["scale_conditioning"]
        self.skip = config["skip"]
        self.max_queries = None  # the device's default
        self._grid_cache: OrderedDict[tuple, object] = OrderedDict()
        # Where `upscale` runs its encoder and per-chunk render: None is torch, else an object with this
        # model's `encode` and `_render` (models.onnx_runtime.OnnxRuntime). Dropped when the weights may change.
        self.runtime = None

    # -- training interface -------------------------------------------------------------------
    def encode(self, lr: torch.Tensor) -> LatentGrid:
        """E_phi(I_LR), with the frequency token t concatenated to the codes: p = [t, c]  # eq. 5"""
        x = (lr - 0.5) / 0.5
        code = self.encoder(x)
        if self.frequency is not None:
            code = torch.cat([self.frequency(x), code], dim=1)
        return LatentGrid(self.decoder.project(code), x)

    def query_rgb(self, grid: LatentGrid, coord: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (unclamped) at `coord` (B x Q x 2, (y, x) in [-1, 1]); `ratio` (B x Q x 2) is the
        scale ratio r = [1/r_y, 1/r_x] = [h/H, w/W] of the target grid relative to the LR grid (eq. 3).
        Training uses this (every image its own query coordinates); `upscale` decodes a shared grid faster."""
        b, channels, h, w = grid.projected.shape
        index, rel, weights = local_ensemble(coord, h, w)  # B x 4 x Q
        table = grid.projected.flatten(2).transpose(1, 2)  # B x hw x C
        flat = index.reshape(b, -1, 1).expand(-1, -1, channels)
        projected = torch.gather(table, 1, flat).reshape(b, 4, -1, channels)
        query = torch.cat([rel, ratio[:, None].expand_as(rel)], dim=-1) if self.scale_conditioning else rel
        g = None
        if self.coord_mod is not None:
            g = [gi[:, None] for gi in self.coord_mod(coord)]  # shared by the four ensemble members
        up = self._skip(grid.lr, coord) if self.skip else None
        return self._blend(self.decoder(projected, query, g), weights, up)

    @staticmethod
    def _blend(preds: torch.Tensor, weights: torch.Tensor, up: torch.Tensor | None) -> torch.Tensor:
        """The ensemble's weighted sum (eq. 4), plus the long skip (sec. 3.5), back to [0, 1]."""
        pred = (weights[..., None] * preds).sum(dim=-3)
        if up is not None:
            pred = pred + up
        return pred * 0.5 + 0.5

    @staticmethod
    def _skip(lr: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        """Sec. 3.5, LTE's form: `lr` (B x 3 x h x w) bilinearly sampled at `coord` (B x Q x 2), border padding."""
        up = F.grid_sample(lr, coord.flip(-1)[:, None], mode="bilinear", padding_mode="border", align_corners=False)
        return up[:, :, 0].transpose(1, 2)

    def forward(self, lr: torch.Tensor, coord: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """Training entry point: decode sampled query coordinates (like LIIF's query_rgb(coord, cell))."""
        return self.query_rgb(self.encode(lr), coord, ratio)

    # -- inference ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def max_queries(self) -> int:
        """Queries `upscale` decodes at once: the value set, or (None) the device's default."""
        return self._max_queries or (CUDA_MAX_QUERIES if self.device.type == "cuda" else DEFAULT_MAX_QUERIES)

    @max_queries.setter
    def max_queries(self, value: int | None) -> None:
        self._max_queries = value

    def upscale(self, lr: torch.Tensor | Sequence[torch.Tensor], size: tuple[int, int],
                max_queries: int | None = None, amp: str | None = None) -> torch.Tensor:
        """Super-resolve `lr` to `size` = (H, W): a batch B x 3 x h x w, or a list of B images 3 x h_i x w_i
        whose sizes may differ (float in [0, 1], sides >= 8).

        Returns B x 3 x H x W clamped to [0, 1], on the input's device. Runs in eval mode under
        inference mode (the module's training flag is restored afterwards), so the output is
        deterministic. All images are decoded in one pass over the shared output grid: each size group is
        encoded once, and what depends only on the grids (coordinates, the coordinate modulation, the
        ensemble's indices and weights) comes from a cache. Queries are decoded in chunks of at most
        `max_queries` (default `self.max_queries`: 4096 on a CPU, 2^17 on CUDA) so memory stays bounded; the
        result equals unchunked decoding, and `reference_upscale` (the per-image path of training) within float
        rounding.
        An image with H <= h and W <= w has nothing to super-resolve: it is down-sampled with antialiased
        area resampling instead of the implicit function.
        `amp` = "bf16" or "fp16" enables autocast on CUDA (ignored on the CPU, so with `runtime`, which is CPU-only);
        without it CUDA computes in true fp32 (no TF32 convolutions), equal to the CPU within 1e-4.
        With `runtime` set, the encoder and the per-chunk render run there (same results within float rounding).
        """
        height, width = _check_size(size)
        images = _as_images(lr)
        max_queries = int(max_queries or self.max_queries)
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        out_device = images[0].device
        out: list[torch.Tensor | None] = [None] * len(images)
        todo = []
        for i, image in enumerate(images):
            if height <= image.shape[-2] and width <= image.shape[-1]:
                out[i] = F.interpolate(image.float(), size=(height, width), mode="area").clamp(0, 1)
            else:
                todo.append(i)
        if todo:
            with evaluating(self), self._precision(amp):
                rgb = self._decode_grid([images[i] for i in todo], height, width, max_queries, amp)
            for i, image_rgb in zip(todo, rgb):
                out[i] = image_rgb.transpose(0, 1).reshape(1, 3, height, width)
        # clone() outside inference mode: callers get an ordinary tensor they may modify in place
        return torch.cat([o.to(out_device) for o in out]).clone()

    def _decode_grid(self, images: list[torch.Tensor], height: int, width: int, max_queries: int,
                     amp: str | None) -> torch.Tensor:
        """`images` (each 1 x 3 x h x w) decoded on the shared H x W grid: N x HW x 3, in the order given."""
        groups: dict[tuple[int, int], list[int]] = {}
        for k, image in enumerate(images):
            groups.setdefault(tuple(image.shape[-2:]), []).append(k)
        encode, render = (self.encode, self._render) if self.runtime is None else (self.runtime.encode,
                                                                                   self.runtime.render)
        coord = self._cached(("coord", height, width, amp), lambda: make_coord(height, width, self.device))
        g = None
        if self.coord_mod is not None:  # sec. 3.4: depends only on the output grid
            g = self._cached(("modulation", height, width, amp), lambda: self.coord_mod(coord))
        tables, size_groups, offset = [], [], 0
        for (h, w), members in groups.items():
            grid = encode(torch.cat([images[k] for k in members]).to(self.device, torch.float32))
            index, query, weights = self._cached(("ensemble", h, w, height, width, amp),
                                                 lambda: self._ensemble_queries(coord, h, w, height, width))
            base = offset + h * w * torch.arange(len(members), device=self.device)  # each image's first row
            up = self._skip(grid.lr, coord.expand(len(members), -1, -1)) if self.skip else None
            tables.append(grid.projected.flatten(2).transpose(1, 2).reshape(-1, grid.projected.shape[1]))
            size_groups.append(_SizeGroup(members, index[None] + base[:, None, None], query, weights, up))
            offset += len(members) * h * w
        table = torch.cat(tables)  # every LR position of every image: sum(hw) x C
        step = max(1, max_queries // len(images))
        chunks = []
        for start in range(0, coord.shape[0], step):
            q = slice(start, start + step)
            chunks.append(render(
                table,
                torch.cat([group.index[:, :, q] for group in size_groups]),  # N x 4 x q
                torch.cat([group.query[None, :, q].expand(len(group.members), -1, -1, -1) for group in size_groups]),
                torch.cat([group.weights[None, :, q].expand(len(group.members), -1, -1) for group in size_groups]),
                torch.cat([group.up[:, q] for group in size_groups]) if self.skip else None,
                [gi[q] for gi in g] if g is not None else None,
            ).float())
        rgb = torch.cat(chunks, dim=1).clamp(0, 1)  # N x HW x 3 in group order
        order = [k for group in size_groups for k in group.members]
        return rgb[torch.argsort(torch.tensor(order, device=rgb.device))]

    def _render(self, table: torch.Tensor, index: torch.Tensor, query: torch.Tensor, weights: torch.Tensor,
                up: torch.Tensor | None, g: list[torch.Tensor] | None) -> torch.Tensor:
        """One chunk of a shared grid: each query's four ensemble codes taken from the flat LR table
        (`index`: N x 4 x q rows of `table`), decoded (eq. 7-12) and blended (eq. 4, sec. 3.5): N x q x 3."""
        projected = table.index_select(0, index.flatten()).reshape(*index.shape, table.shape[1])
        return self._blend(self.decoder(projected, query, g), weights, up)

    def _ensemble_queries(self, coord: torch.Tensor, h: int, w: int, height: int, width: int):
        """The local ensemble (eq. 4) of the H x W grid on an h x w LR grid, and each member's query
        [x_s - x_c, r] (eq. 3): flat indices 4 x Q, queries 4 x Q x (2 or 4), weights 4 x Q."""
        index, rel, weights = local_ensemble(coord, h, w)
        if self.scale_conditioning:
            ratio = torch.tensor([h / height, w / width], device=coord.device, dtype=coord.dtype)
            rel = torch.cat([rel, ratio.expand_as(rel)], dim=-1)
        return index, rel, weights

    def _cached(self, key: tuple, make: Callable[[], object]):
        """What depends only on the grids, kept for the next call (a bounded LRU). Cleared, and `runtime`
        dropped, when the weights may change: `train(True)` and `load_state_dict`."""
        key = key + (str(self.device),)
        if key in self._grid_cache:
            self._grid_cache.move_to_end(key)
            return self._grid_cache[key]
        value = self._grid_cache[key] = make()
        while len(self._grid_cache) > GRID_CACHE_SIZE:
            self._grid_cache.popitem(last=False)
        return value

    def train(self, mode: bool = True) -> "ARASFSR":
        if mode:
            self._weights_may_change()
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._weights_may_change()
        return super().load_state_dict(*args, **kwargs)

    def _weights_may_change(self) -> None:
        self._grid_cache.clear()
        if self.runtime is not None:  # its graphs hold the old weights
            log.info("model runtime %s detached: the weights may change", type(self.runtime).__name__)
            self.runtime = None

    def upscale_uint8(self, images: np.ndarray | Sequence[np.ndarray], size: tuple[int, int],
                      amp: str | None = None) -> np.ndarray:
        """`upscale` for 8-bit images: N x h x w x 3 uint8, or a list of h_i x w_i x 3 uint8 whose sizes may
        differ (RGB, the order the model was trained on) -> N x H x W x 3 uint8 on the CPU, rounded to the
        nearest level. Raises NonFiniteOutput if the output holds NaN/Inf: a black image must never pass
        for a result."""
        lr = [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255).to(self.device)
              for image in images]  # an N x h x w x 3 array is iterated image by image too
        sr = self.upscale(lr, size, amp=amp)
        finite = torch.isfinite(sr).flatten(1).all(1).cpu().numpy()
        out = sr.nan_to_num_(0.0).mul_(255).round_().byte().permute(0, 2, 3, 1).cpu().numpy()
        if not finite.all():
            raise NonFiniteOutput(out, finite)
        return out

    def _precision(self, amp: str | None):
        """The arithmetic on CUDA: autocast to `amp`, else true fp32. cuDNN convolves fp32 in TF32 by default
        (10 bits of mantissa): the encoder's features would then differ from the CPU's by ~1e-3, and `amp` is the
        way to ask for speed over exactness."""
        if self.device.type != "cuda":
            return nullcontext()
        if amp is None:
            cudnn = torch.backends.cudnn
            return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                               allow_tf32=False)
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        if amp not in dtypes:
            raise ValueError(f"amp must be one of {sorted(dtypes)} or None, got {amp!r}")
        return torch.autocast("cuda", dtype=dtypes[amp])


def _check_input(lr: torch.Tensor) -> None:
    if not isinstance(lr, torch.Tensor):
        raise ValueError(f"lr must be a torch.Tensor of shape B x 3 x h x w, got {type(lr).__name__}")
    if lr.dim() != 4:
        raise ValueError(f"lr must have 4 dimensions (B x 3 x h x w), got shape {tuple(lr.shape)}")
    if lr.shape[1] != 3:
        raise ValueError(f"lr must have 3 (RGB) channels in dim 1, got shape {tuple(lr.shape)}")
    if not lr.is_floating_point():
        raise ValueError(f"lr must be a float tensor in [0, 1], got dtype {lr.dtype}")
    if lr.shape[0] < 1 or min(lr.shape[-2:]) < MIN_INPUT:
        raise ValueError(f"lr must be at least {MIN_INPUT}x{MIN_INPUT} pixels with batch >= 1, "
                         f"got shape {tuple(lr.shape)}")
    if not torch.isfinite(lr).all():
        raise ValueError("lr contains NaN or infinite values")


@contextmanager
def evaluating(model: nn.Module):
    """Eval mode under inference mode, the module's training flag restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _as_images(lr) -> list[torch.Tensor]:
    """`upscale`'s input as a list of checked 1 x 3 x h x w tensors."""
    if isinstance(lr, torch.Tensor):
        _check_input(lr)
        return list(lr.split(1))
    if isinstance(lr, (list, tuple)) and lr:
        images = [image[None] if isinstance(image, torch.Tensor) and image.dim() == 3 else image for image in lr]
        for image in images:
            _check_input(image)
        return images
    raise ValueError(f"lr must be a B x 3 x h x w tensor or a non-empty list of 3 x h x w tensors, got {lr!r:.80}")


def reference_upscale(model: ARASFSR, lr: torch.Tensor, size: tuple[int, int], max_queries: int = DEFAULT_MAX_QUERIES
                      ) -> torch.Tensor:
    """The straightforward decoding `ARASFSR.upscale` optimises: every image its own copy of the grid's
    coordinates through `query_rgb`, the path training uses. Kept as the reference that the fast path is
    tested against (tests/test_model.py) and timed against (benchmarks/sr_speed.py)."""
    height, width = _check_size(size)
    _check_input(lr)
    with evaluating(model):
        lr = lr.to(model.device, torch.float32)
        b, _, h, w = lr.shape
        grid = model.encode(lr)
        coord = make_coord(height, width, lr.device)
        ratio = torch.tensor([h / height, w / width], device=lr.device)
        step = max(1, max_queries // b)
        out = []
        for start in range(0, coord.shape[0], step):
            c = coord[start:start + step].expand(b, -1, -1)
            out.append(model.query_rgb(grid, c, ratio.expand_as(c)))
        rgb = torch.cat(out, dim=1).clamp(0, 1)
    return rgb.transpose(1, 2).reshape(b, 3, height, width).clone()


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be a pair (H, W) of positive integers, got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width
