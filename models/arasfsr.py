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

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .encoders import ENCODERS

MIN_INPUT = 8  # smallest LR side the encoders and the 3x3 unfolding are meant for
DEFAULT_MAX_QUERIES = 16384  # queries decoded at once in upscale(); bounds memory (~4 x 512 floats each)


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
            x = torch.cat([s * g[i], s], dim=-1) if self.modulated else s  # [m_{i}, s_{i}], eq. 9, 12
            s = torch.relu(layer(x))  # s_{i+1}, eq. 10
        return self.out(s)


@dataclass
class LatentGrid:
    """What the decoder needs from one LR batch: W_0 applied to the unfolded codes, and the LR image."""

    projected: torch.Tensor  # B x hidden x h x w
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
        self.coord_mod = (
            GlobalCoordinateModulation(dec["hidden"], dec["layers"] - 1, gc["n_freqs"]) if gc["enabled"] else None
        )
        self.decoder = ImplicitDecoder(
            code_dim, dec["hidden"], dec["layers"], gc["enabled"], config["scale_conditioning"]
        )
        self.scale_conditioning = config["scale_conditioning"]
        self.skip = config["skip"]
        self.max_queries = DEFAULT_MAX_QUERIES

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
        scale ratio r = [1/r_y, 1/r_x] = [h/H, w/W] of the target grid relative to the LR grid (eq. 3)."""
        b, hidden, h, w = grid.projected.shape
        size = torch.tensor([h, w], device=coord.device, dtype=coord.dtype)
        # Local ensemble (eq. 4): the four latent codes around x_s, one per diagonal shift by half an LR pixel.
        shifts = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], device=coord.device, dtype=coord.dtype) / size
        shifted = (coord[:, None] + shifts[None, :, None] + 1e-6).clamp(-1 + 1e-6, 1 - 1e-6)  # B x 4 x Q x 2
        idx = ((shifted + 1) / 2 * size).floor().long()
        idx = torch.minimum(idx.clamp_min(0), torch.tensor([h - 1, w - 1], device=idx.device))
        centre = -1 + (2 * idx + 1) / size  # x_c of each chosen code
        rel = (coord[:, None] - centre) * size  # x_s - x_c, in LR pixels

        table = grid.projected.flatten(2).transpose(1, 2)  # B x hw x hidden
        flat = (idx[..., 0] * w + idx[..., 1]).reshape(b, -1, 1).expand(-1, -1, hidden)
        projected = torch.gather(table, 1, flat).reshape(b, 4, -1, hidden)
        query = torch.cat([rel, ratio[:, None].expand_as(rel)], dim=-1) if self.scale_conditioning else rel
        g = None
        if self.coord_mod is not None:
            g = [gi[:, None] for gi in self.coord_mod(coord)]  # shared by the four ensemble members
        preds = self.decoder(projected, query, g)  # B x 4 x Q x 3

        # Bilinear weights: each code is weighted by the area of the rectangle opposite to it.
        area = (rel[..., 0] * rel[..., 1]).abs() + 1e-9
        weights = area.flip(1) / area.sum(dim=1, keepdim=True)
        pred = (weights[..., None] * preds).sum(dim=1)
        if self.skip:  # sec. 3.5: long skip in LTE's form, bilinear up-sampling of the LR input, border padding
            up = F.grid_sample(grid.lr, coord.flip(-1)[:, None], mode="bilinear", padding_mode="border",
                               align_corners=False)
            pred = pred + up[:, :, 0].transpose(1, 2)
        return pred * 0.5 + 0.5

    def forward(self, lr: torch.Tensor, coord: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """Training entry point: decode sampled query coordinates (like LIIF's query_rgb(coord, cell))."""
        return self.query_rgb(self.encode(lr), coord, ratio)

    # -- inference ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def upscale(self, lr: torch.Tensor, size: tuple[int, int], max_queries: int | None = None,
                amp: str | None = None) -> torch.Tensor:
        """Super-resolve `lr` (B x 3 x h x w float in [0, 1], h, w >= 8) to `size` = (H, W).

        Returns B x 3 x H x W clamped to [0, 1], on the input's device. Runs in eval mode under
        inference mode (the module's training flag is restored afterwards), so the output is
        deterministic. Queries are decoded in chunks of at most `max_queries` (default
        `self.max_queries`) so memory stays bounded; the result equals unchunked decoding.
        Where H <= h and W <= w there is nothing to super-resolve: the image is down-sampled with
        antialiased area resampling instead of the implicit function.
        `amp` = "bf16" or "fp16" enables autocast on CUDA (ignored on the CPU).
        """
        height, width = _check_size(size)
        _check_input(lr)
        out_device = lr.device
        if height <= lr.shape[-2] and width <= lr.shape[-1]:
            return F.interpolate(lr.float(), size=(height, width), mode="area").clamp(0, 1)
        max_queries = int(max_queries or self.max_queries)
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {max_queries}")
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), self._autocast(amp):
                lr = lr.to(self.device, torch.float32)
                b, _, h, w = lr.shape
                grid = self.encode(lr)
                coord = make_coord(height, width, lr.device)
                ratio = torch.tensor([h / height, w / width], device=lr.device)
                step = max(1, max_queries // b)
                out = []
                for start in range(0, coord.shape[0], step):
                    c = coord[start:start + step].expand(b, -1, -1)
                    out.append(self.query_rgb(grid, c, ratio.expand_as(c)).float())
                rgb = torch.cat(out, dim=1).clamp(0, 1)
        finally:
            self.train(was_training)
        # clone() outside inference mode: callers get an ordinary tensor they may modify in place
        return rgb.transpose(1, 2).reshape(b, 3, height, width).to(out_device).clone()

    def upscale_uint8(self, images: np.ndarray, size: tuple[int, int], amp: str | None = None) -> np.ndarray:
        """`upscale` for 8-bit images: N x h x w x 3 uint8 (RGB, the order the model was trained on)
        -> N x H x W x 3 uint8 on the CPU, rounded to the nearest level.
        Raises NonFiniteOutput if the output holds NaN/Inf: a black image must never pass for a result."""
        lr = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
        sr = self.upscale(lr.to(self.device), size, amp=amp)
        finite = torch.isfinite(sr).flatten(1).all(1).cpu().numpy()
        out = sr.nan_to_num_(0.0).mul_(255).round_().byte().permute(0, 2, 3, 1).cpu().numpy()
        if not finite.all():
            raise NonFiniteOutput(out, finite)
        return out

    def _autocast(self, amp: str | None):
        if amp is None or self.device.type != "cuda":
            return nullcontext()
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


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be a pair (H, W) of positive integers, got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width
