"""ONNX Runtime as `ARASFSR.upscale`'s CPU runtime: the same decoding, 2-4x the faces/s of torch on a CPU
(BENCHMARKS.md, "CPU runtimes").

`upscale` keeps its structure (size groups, the grid caches, the query chunks); two graphs replace its two
costly parts, both exported with dynamic shapes so that one export serves every crop size, output size and
batch:
- the encoder graph: LR images B x 3 x h x w -> what `ARASFSR.encode` returns (W_0 on the codes, or the
  ARASFSR-LM latents, and the normalised image for the long skip);
- the render graph: one query chunk (`ARASFSR._render`): the gather of the four ensemble codes from the flat LR
  table, the per-pixel MLP and the blend, fed the grid tensors torch already caches per (LR size, output size).

Exporting takes about 10 s per model (the torch.export-based exporter), so the graphs are cached on disk
(`cache_dir`, default $XDG_CACHE_HOME/facesr/onnx or ~/.cache/facesr/onnx) under a key made of the weights,
the model config, this code and the torch / onnx / onnxscript versions. Every graph, new or cached, is checked
against torch on a small probe at load; a cache file that does not load or does not match is exported again.
ONNX Runtime runs in fp32 on the CPU: there is no autocast (`upscale`'s `amp` is ignored, as on the CPU).

Example:
    >>> from models import load_model
    >>> from models.onnx_runtime import OnnxRuntime
    >>> model = load_model("models/weights/arasfsr_lm.safetensors", "cpu")  # doctest: +SKIP
    >>> model.runtime = OnnxRuntime(model, threads=2)  # doctest: +SKIP
    >>> model.upscale(torch.rand(4, 3, 28, 28), (112, 112)).shape  # doctest: +SKIP
    torch.Size([4, 3, 112, 112])
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.errors import SinkError
from pipeline.files import atomic_write_bytes

from . import arasfsr, encoders
from .arasfsr import ARASFSR, MIN_INPUT, LatentGrid, make_coord

log = logging.getLogger(__name__)

PACKAGES = ("onnxruntime", "onnx", "onnxscript")  # what the export and the sessions need
INSTALL = "pip install onnxruntime onnx onnxscript (or make install)"
OPSET = 18
PROBE_ATOL = 1e-4  # a graph whose probe differs from torch by more is stale or corrupt: exported again


def available() -> bool:
    """Whether the packages the ONNX runtime needs import."""
    try:
        for name in PACKAGES:
            __import__(name)
    except ImportError:
        return False
    return True


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facesr" / "onnx"


class _Encoder(nn.Module):
    """`ARASFSR.encode` as a graph: lr -> (projected codes, normalised lr)."""

    def __init__(self, model: ARASFSR) -> None:
        super().__init__()
        self.model = model

    def forward(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.model.encode(lr)
        return grid.projected, grid.lr


class _Render(nn.Module):
    """`ARASFSR._render` as a graph. The long skip's samples `up` and the coordinate modulation `g` (stacked:
    layers x q x width) are inputs only for a model that has them."""

    def __init__(self, model: ARASFSR) -> None:
        super().__init__()
        self.model = model

    def forward(self, table, index, query, weights, *optional):
        optional = list(optional)
        up = optional.pop(0) if self.model.skip else None
        g = list(optional.pop(0).unbind(0)) if self.model.coord_mod is not None else None
        return self.model._render(table, index, query, weights, up, g)


class OnnxRuntime:
    """The encoder and render graphs of one model, in ONNX Runtime sessions on the CPU. Attach it as
    `model.runtime`; it holds no reference to the model, and is stale once the model's weights change
    (`ARASFSR.load_state_dict` and `train()` detach it).

    Args:
        model: an ARASFSR on the CPU (its weights are exported as they are now).
        threads: intra-op threads of each session (0: torch's current thread count).
        cache_dir: where exported graphs are kept (default `default_cache_dir()`).
    """

    exports = 0  # graphs exported by this process (the cache's hits export none): for tests and logs

    def __init__(self, model: ARASFSR, threads: int = 0, cache_dir: str | Path | None = None) -> None:
        import onnxruntime as ort  # imported here: an optional dependency (`available()`)

        if model.device.type != "cpu":
            raise ValueError(f"the ONNX runtime runs on the CPU; the model is on {model.device}")
        self._ort = ort
        self.threads = threads or torch.get_num_threads()
        self.skip, self.modulated = model.skip, model.coord_mod is not None
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = cache_key(model)
        with arasfsr.evaluating(model):
            probes = _probes(model)
            self.encoder = self._session(model, folder / f"{key}.encoder.onnx", _export_encoder, probes["encoder"])
            self.renderer = self._session(model, folder / f"{key}.render.onnx", _export_render, probes["render"])

    # -- the two calls `ARASFSR._decode_grid` makes --------------------------------------------------
    def encode(self, lr: torch.Tensor) -> LatentGrid:
        projected, normalised = self.encoder.run(None, {"lr": lr.contiguous().numpy()})
        return LatentGrid(torch.from_numpy(projected), torch.from_numpy(normalised))

    def render(self, table: torch.Tensor, index: torch.Tensor, query: torch.Tensor, weights: torch.Tensor,
               up: torch.Tensor | None, g: list[torch.Tensor] | None) -> torch.Tensor:
        feed = {"table": table, "index": index, "query": query, "weights": weights}
        if self.skip:
            feed["up"] = up
        if self.modulated:
            feed["g"] = torch.stack(g)
        return torch.from_numpy(self.renderer.run(None, {k: v.contiguous().numpy() for k, v in feed.items()})[0])

    # -- sessions and the cache ---------------------------------------------------------------------
    def _session(self, model: ARASFSR, path: Path, export, probe: tuple[dict, list[np.ndarray]]):
        """A session for the graph at `path`, exported (and written there) when missing, unreadable or not
        matching torch on `probe` (its feed and torch's outputs)."""
        if path.is_file():
            try:
                session = self._load(path.read_bytes())
                if _matches(session, probe):
                    log.debug("ONNX graph %s from the cache", path.name)
                    return session
                log.warning("ONNX cache %s does not match the model: exporting it again", path)
            except (OSError, ValueError, *self._ort_errors()) as exc:  # ValueError: inputs it does not have
                log.warning("ONNX cache %s is unreadable (%s): exporting it again", path, str(exc).splitlines()[0][:200])
        t0 = time.perf_counter()
        data = export(model)
        OnnxRuntime.exports += 1
        log.info("exported %s in %.1f s", path.name, time.perf_counter() - t0)
        session = self._load(data)
        if not _matches(session, probe):
            raise RuntimeError(f"the exported ONNX graph {path.name} does not match torch (a bug in the export)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except (OSError, SinkError) as exc:  # no cache is slower, never wrong
            log.warning("ONNX cache not written (%s): the graph will be exported again next time", exc)
        return session

    def _load(self, data: bytes):
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Idle session threads must not spin: detection runs beside the enhancer on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not the user's input
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def _ort_errors(self) -> tuple[type[BaseException], ...]:
        """What ONNX Runtime raises for a file that is not a valid graph: its own exception classes, which
        share no public base but Exception."""
        state = self._ort.capi.onnxruntime_pybind11_state
        return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


def cache_key(model: ARASFSR) -> str:
    """What the exported graphs depend on: the weights, the config, the code that is exported (this module,
    models/arasfsr.py, models/encoders.py) and the exporter's versions."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps(model.config, sort_keys=True).encode())
    for module in (arasfsr, encoders):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    for name in ("torch", "onnx", "onnxscript"):
        digest.update(f"{name}={importlib.metadata.version(name)}".encode())
    return digest.hexdigest()[:32]


def _probes(model: ARASFSR) -> dict[str, tuple[dict, list[np.ndarray]]]:
    """A small feed for each graph and torch's outputs for it (two images, so a batch axis is exercised)."""
    generator = torch.Generator().manual_seed(0)
    lr = torch.rand(2, 3, MIN_INPUT + 1, MIN_INPUT, generator=generator)
    enc_args = (lr,)
    render_args = _render_example(model, lr, 12)
    return {"encoder": _probe(_Encoder(model), enc_args, ["lr"]),
            "render": _probe(_Render(model), render_args, _render_names(model))}


def _probe(graph: nn.Module, args: tuple, names: list[str]) -> tuple[dict, list[np.ndarray]]:
    out = graph(*args)
    outs = out if isinstance(out, tuple) else (out,)
    return {n: a.numpy() for n, a in zip(names, args)}, [o.numpy() for o in outs]


def _matches(session, probe: tuple[dict, list[np.ndarray]]) -> bool:
    feed, expected = probe
    got = session.run(None, feed)
    return len(got) == len(expected) and all(
        g.shape == e.shape and float(np.abs(g - e).max()) <= PROBE_ATOL for g, e in zip(got, expected))


def _render_names(model: ARASFSR) -> list[str]:
    return ["table", "index", "query", "weights"] + (["up"] if model.skip else []) + (
        ["g"] if model.coord_mod is not None else [])


def _render_example(model: ARASFSR, lr: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """The render graph's inputs for `lr` decoded on a size x size grid, one chunk of all queries, built as
    `ARASFSR._decode_grid` builds them (its cache is not used: the export must not leave entries in it)."""
    n, _, h, w = lr.shape
    grid = model.encode(lr)
    coord = make_coord(size, size)
    index, query, weights = model._ensemble_queries(coord, h, w, size, size)
    table = grid.projected.flatten(2).transpose(1, 2).reshape(-1, grid.projected.shape[1])
    args = [table, index[None] + h * w * torch.arange(n)[:, None, None], query[None].expand(n, -1, -1, -1).contiguous(),
            weights[None].expand(n, -1, -1).contiguous()]
    if model.skip:
        args.append(model._skip(grid.lr, coord.expand(n, -1, -1)))
    if model.coord_mod is not None:
        args.append(torch.stack(model.coord_mod(coord)))
    return tuple(args)


def _export_encoder(model: ARASFSR) -> bytes:
    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("h", min=MIN_INPUT), torch.export.Dim(
        "w", min=MIN_INPUT)
    lr = torch.rand(2, 3, MIN_INPUT + 3, MIN_INPUT + 5)  # sizes apart from each other and from 1: kept dynamic
    return _export(_Encoder(model), (lr,), ["lr"], ["projected", "normalised"],
                   ({0: batch, 2: height, 3: width},))


def _export_render(model: ARASFSR) -> bytes:
    rows, images, queries = torch.export.Dim("rows"), torch.export.Dim("images"), torch.export.Dim("queries")
    lr = torch.rand(5, 3, MIN_INPUT + 1, MIN_INPUT + 2)
    args = _render_example(model, lr, 14)  # 196 queries: a size no other axis has
    names = _render_names(model)
    axes = {"table": {0: rows}, "index": {0: images, 2: queries}, "query": {0: images, 2: queries},
            "weights": {0: images, 2: queries}, "up": {0: images, 1: queries}, "g": {1: queries}}
    shapes = [axes[name] for name in names]
    if len(shapes) > 4:  # torch.export sees `*optional` as one argument, a tuple
        shapes = [*shapes[:4], tuple(shapes[4:])]
    return _export(_Render(model), args, names, ["rgb"], tuple(shapes))


def _export(graph: nn.Module, args: tuple, inputs: list[str], outputs: list[str], dynamic: tuple) -> bytes:
    """`graph` as ONNX bytes, with the torch.export-based exporter (the TorchScript one is deprecated)."""
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(graph, args, input_names=inputs, output_names=outputs, dynamic_shapes=dynamic,
                                    dynamo=True, opset_version=OPSET, verbose=False)
    return program.model_proto.SerializeToString()


@contextmanager
def _quiet_exporter():
    """The exporter's progress lines and warnings (torchvision ops it skips, axis names it merges) say nothing
    to a user of the enhancer: kept out of the log while exporting."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
