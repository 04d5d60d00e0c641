"""dlib's face-recognition ResNet in torch, read from dlib's own model file (no dlib needed).

Why: the identity benchmark scores enhanced faces with dlib's 128-D descriptor, and dlib's network
cannot be trained through. The same network in torch can: `IdentityLoss` (models/identity.py) uses
it to ask the super-resolution model for faces whose descriptor matches the high-resolution
face's. The weights are read from `dlib_face_recognition_resnet_model_v1.dat` (the
`face-recognition-models` package, installed with the `[recognition]` extra); nothing downloads.

The network (dlib's `dnn_face_recognition_ex`, a ResNet-34 with fewer filters; input 150 x 150 RGB,
pixels minus the mean colour over 256):

    conv 7x7/2 (32) -> affine -> relu -> max-pool 3x3/2
    3 x res(32), down(64) + 3 x res(64), down(128) + 2 x res(128), down(256) + 2 x res(256), down(256)
    global average -> fc 256 -> 128 (no bias)

res(n):  relu(x + affine(conv3x3(relu(affine(conv3x3(x))))))
down(n): relu(avgpool2x2/2(x) + affine(conv3x3(relu(affine(conv3x3/2(x)))))) — the two branches
         differ in channels and, at 8 -> 3/4 px, in size; dlib adds them with the missing
         entries taken as zero (tt::add), aligned at the top-left. dlib pads a stride-1 conv by
         half its kernel and a strided conv or pool not at all.

File format (dlib/serialize.h): integers as a control byte (low 4 bits: byte count, 0x80:
negative) and little-endian bytes; floats as two such integers (mantissa, exponent); strings as
a length and bytes; tensors as 4 integers (n, k, rows, cols) and raw float32; an alias tensor
(a view into a layer's parameters, e.g. an affine's gamma and beta) as its shape only. Each layer's
parameters follow its version string, layers in forward order.

Example:
    >>> net = DlibResNet.from_dat()  # doctest: +SKIP
    >>> net(chips).shape  # chips: (N, 3, 150, 150) RGB floats in 0..255  # doctest: +SKIP
    torch.Size([N, 128])
"""
from __future__ import annotations

import struct
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from pipeline.recognition import RECOGNITION_MODEL, DlibEmbedder, dlib_models_dir

INPUT_SIZE = DlibEmbedder.input_size  # the chip's side
# (channels, blocks, first block down-samples), input side to output side
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class DatFormatError(UserError, ValueError):
    """The file is not the dlib face-recognition network this module knows (or is cut short)."""


def default_model_path() -> Path:
    """dlib's face-recognition model file inside the installed face-recognition-models package."""
    return dlib_models_dir() / RECOGNITION_MODEL


class _Reader:
    """dlib's serialization primitives over a bytes object."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def int(self) -> int:
        control = self.data[self.pos]
        size = control & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent

    def tensor(self) -> torch.Tensor:
        version = self.int()
        if version != 2:
            raise DatFormatError(f"tensor version {version}, expected 2")
        shape = [self.int() for _ in range(4)]
        count = shape[0] * shape[1] * shape[2] * shape[3]
        values = struct.unpack_from(f"<{count}f", self.data, self.pos)
        self.pos += 4 * count
        return torch.tensor(values, dtype=torch.float32)

    def alias(self) -> list[int]:
        """An alias tensor: a shape that views part of a layer's parameters."""
        if (version := self.int()) != 1:
            raise DatFormatError(f"alias tensor version {version}, expected 1")
        return [self.int() for _ in range(4)]

    def find(self, name: str) -> None:
        """Move past the next serialized string `name` (layers are found by their version)."""
        needle = bytes([1, len(name)]) + name.encode()
        at = self.data.find(needle, self.pos)
        if at < 0:
            raise DatFormatError(f"no layer {name!r} after byte {self.pos}")
        self.pos = at + len(needle)


def read_layers(data: bytes) -> dict[str, list]:
    """The parameters of every conv, affine and fc layer and the input's mean colour, in order."""
    r = _Reader(data)
    r.find("input_rgb_image_sized")
    mean = [r.float() for _ in range(3)]
    convs, affines = [], []
    for _ in range(29):
        r.find("con_4")
        params = r.tensor()
        filters, rows, cols = r.int(), r.int(), r.int()
        stride = (r.int(), r.int())
        r.int(), r.int()  # padding, implied by the stride
        channels = (params.numel() - filters) // (filters * rows * cols)
        if channels * filters * rows * cols + filters != params.numel():
            raise DatFormatError(f"conv parameters of {params.numel()} values do not fit {filters} filters {rows}x{cols}")
        weight = params[:-filters].view(filters, channels, rows, cols)
        convs.append((weight, params[-filters:], stride[0]))
        r.find("affine_")
        params = r.tensor()  # gamma then beta, one per channel
        r.alias(), r.alias()
        if params.numel() != 2 * filters:
            raise DatFormatError(f"affine of {params.numel()} values after a conv of {filters} filters")
        affines.append((params[:filters], params[filters:]))
    r.find("fc_2")
    outputs, inputs = r.int(), r.int()
    fc = r.tensor()
    if fc.numel() != outputs * inputs:
        raise DatFormatError(f"fc of {fc.numel()} values is not {inputs} x {outputs}")
    return {"mean": mean, "convs": convs, "affines": affines, "fc": fc.view(inputs, outputs).t().contiguous()}


class _ConvAffine(nn.Module):
    """conv -> per-channel scale and shift (dlib's `affine`, a frozen batch norm)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0)
        self.gamma = nn.Parameter(torch.ones(cout))
        self.beta = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.gamma[:, None, None] + self.beta[:, None, None]


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b, each taken as zero where the other is larger (dlib's tt::add), top-left aligned."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    pad = lambda t: F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))  # noqa: E731
    return pad(a) + pad(b)


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.a = _ConvAffine(cin, cout, 3, 2 if down else 1)
        self.b = _ConvAffine(cout, cout, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(F.relu(self.a(x)))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_zero_padded(y, skip))


class DlibResNet(nn.Module):
    """dlib's face descriptor network; input (N, 3, 150, 150) RGB in 0..255, output (N, 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1))
        self.stem = _ConvAffine(3, 32, 7, 2)
        blocks, cin = [], 32
        for cout, count, down in LEVELS:
            for i in range(count):
                blocks.append(_Residual(cin, cout, down and i == 0))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = (rgb - self.mean) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def _conv_affines(self) -> list[_ConvAffine]:
        return [self.stem] + [m for blk in self.blocks for m in (blk.a, blk.b)]

    @classmethod
    def load(cls, path: Path | str | None = None) -> "DlibResNet":
        """From dlib's model file (.dat; default: the installed one) or from `save`'s .safetensors."""
        if path is None or Path(path).suffix != ".safetensors":
            return cls.from_dat(path)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        net = cls()
        try:
            state = load_file(str(path))
            net.load_state_dict({k: v.float() for k, v in state.items()})
        except (OSError, SafetensorError, RuntimeError) as exc:
            raise DatFormatError(f"{path}: not the dlib network's weights ({str(exc).splitlines()[0]})") from None
        return net.eval()

    def save(self, path: Path | str, dtype: torch.dtype = torch.float16) -> None:
        """The weights as safetensors (half the size in fp16: what a GPU lease carries; descriptors
        change by < 1e-3)."""
        from safetensors.torch import save_file

        save_file({k: v.to(dtype).contiguous() for k, v in self.state_dict().items()}, str(path))

    @classmethod
    def from_dat(cls, path: Path | str | None = None) -> "DlibResNet":
        """Build the network with the weights of dlib's model file (default: the installed one)."""
        path = Path(path) if path is not None else default_model_path()
        try:
            layers = read_layers(path.read_bytes())
        except (IndexError, struct.error):  # a read past the end
            raise DatFormatError(f"{path}: cut short, not a whole dlib face-recognition model") from None
        except DatFormatError as exc:
            raise DatFormatError(f"{path}: {exc}") from None
        except OSError as exc:
            raise DatFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
        net = cls()
        net.mean.copy_(torch.tensor(layers["mean"]).view(1, 3, 1, 1))
        # dlib serializes the innermost layer first, so the file's order is the forward order
        targets = net._conv_affines()
        if len(targets) != len(layers["convs"]):
            raise DatFormatError(f"{len(layers['convs'])} conv layers in {path}, expected {len(targets)}")
        with torch.no_grad():
            for module, (weight, bias, stride), (gamma, beta) in zip(targets, layers["convs"], layers["affines"]):
                if weight.shape != module.conv.weight.shape or stride != module.conv.stride[0]:
                    raise DatFormatError(f"conv {tuple(weight.shape)}/{stride} in {path}, expected "
                                         f"{tuple(module.conv.weight.shape)}/{module.conv.stride[0]}")
                module.conv.weight.copy_(weight)
                module.conv.bias.copy_(bias)
                module.gamma.copy_(gamma)
                module.beta.copy_(beta)
            net.fc.weight.copy_(layers["fc"])
        return net.eval()
