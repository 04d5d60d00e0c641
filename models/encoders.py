"""Encoders E_phi: the LR image -> a grid of latent codes (sec. 3.2).

Both are the classic SR backbones without their up-samplers, as in LIIF:
EDSR-baseline (residual blocks) and RDN (residual dense blocks).
"""
from __future__ import annotations

import torch
from torch import nn


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResBlock(nn.Module):
    """conv-ReLU-conv with a residual connection (EDSR's block, no batch norm).

    Args:
        n_feats: channels in and out.
        res_scale: factor on the residual branch before the addition.
    """

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(conv3x3(n_feats, n_feats), nn.ReLU(inplace=True), conv3x3(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """EDSR-baseline without up-sampler: head conv, `n_resblocks` residual blocks, body conv, global skip.

    Args:
        n_resblocks: number of residual blocks.
        n_feats: channels of every layer, and of the output codes (`out_dim`).
        res_scale: residual scaling inside each block.
    """

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.head = conv3x3(3, n_feats)
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)], conv3x3(n_feats, n_feats))
        self.out_dim = n_feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return x + self.body(x)


class DenseLayer(nn.Module):
    """3x3 conv + ReLU whose output is concatenated to its input (RDN's dense connection).

    Args:
        cin: input channels.
        growth: channels added.
    """

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.conv = conv3x3(cin, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.relu(self.conv(x))], dim=1)


class RDB(nn.Module):
    """Residual dense block: `n_convs` densely connected convs, 1x1 local fusion, local residual.

    Args:
        g0: channels in and out.
        growth: channels each dense layer adds.
        n_convs: dense layers in the block.
    """

    def __init__(self, g0: int, growth: int, n_convs: int):
        super().__init__()
        self.convs = nn.Sequential(*[DenseLayer(g0 + i * growth, growth) for i in range(n_convs)])
        self.fuse = nn.Conv2d(g0 + n_convs * growth, g0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fuse(self.convs(x))


class RDN(nn.Module):
    """RDN without up-sampler: shallow features, `n_blocks` RDBs, global feature fusion, global residual.

    Args:
        n_blocks: residual dense blocks.
        n_convs: dense layers per block.
        growth: channels each dense layer adds.
        g0: channels between blocks, and of the output codes (`out_dim`).
    """

    def __init__(self, n_blocks: int = 16, n_convs: int = 8, growth: int = 64, g0: int = 64):
        super().__init__()
        self.sfe1 = conv3x3(3, g0)
        self.sfe2 = conv3x3(g0, g0)
        self.blocks = nn.ModuleList([RDB(g0, growth, n_convs) for _ in range(n_blocks)])
        self.gff = nn.Sequential(nn.Conv2d(n_blocks * g0, g0, 1), conv3x3(g0, g0))
        self.out_dim = g0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.sfe1(x)
        x = self.sfe2(f1)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return f1 + self.gff(torch.cat(outs, dim=1))


ENCODERS = {"edsr": EDSR, "rdn": RDN}
