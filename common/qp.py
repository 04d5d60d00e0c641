"""How hard the camera's H.264 encoder quantised each block of a frame: its QP, from the decoder.

Why: a super-resolution model sharpens what it is given; on heavily quantised blocks it sharpens the
codec's artefacts too, and a recognizer then does worse than on bicubic (models/weights/README.md,
"Strength by compression"). The encoder wrote the quantiser of every 16 x 16 macroblock into the stream, and
FFmpeg's H.264 decoder hands it back exactly and at no cost when asked (`export_qp`, the
AV_FRAME_DATA_VIDEO_ENC_PARAMS side data): no estimate from pixels needed.

Only H.264 is read (0-51; lower is finer; P and B frames shifted to the intra scale): other codecs'
scales differ (VP9's q index is 0-255, MPEG-2's 1-31), and a frame without the side data (JPEG,
images, other codecs) has no map.

Example:
    >>> grid = QPMap(np.array([[30, 30], [36, 40]], np.int16), block=16)
    >>> grid.at((0, 0, 31, 31)), grid.at((0, 16, 15, 31)), grid.at((40, 40, 50, 50))
    (33.0, 36.0, None)
    >>> grid.rotated(1, width=30, height=32).at((0, 0, 1, 1))  # turned left: the top right block comes first
    30.0
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from common import memory

#: Decoder options that make FFmpeg attach the QP side data to every decoded frame.
_DECODER_OPTIONS = {"export_side_data": "venc_params"}
_H264 = 1  # AVVideoEncParamsType AV_VIDEO_ENC_PARAMS_H264
# AVVideoEncParams (libavutil/video_enc_params.h): unsigned nb_blocks; size_t blocks_offset, block_size;
# enum type; int32 qp; int32 delta_qp[4][2]. Each AVVideoBlockParams: int src_x, src_y, w, h; int32 delta_qp.
_HEADER = struct.Struct("<I4xQQiI")
_BLOCK_INTS = 5
#: QP steps an encoder adds on inter frames for the same quality (x264's default ip/pb ratios 1.4 and 1.3 are
#: 6 log2(1.4) = 2.9 and 2.9 + 2.3 QP): subtracted, so that every map is on the intra scale the identity
#: benchmark's H.264 cells are measured on (their faces are intra frames at QP = CRF).
INTER_OFFSET = {"P": 3, "B": 5}
# AVPictureType (libavutil/avutil.h) as PyAV's frame.pict_type gives it; spelled here so that importing this
# module (pipeline.records does) needs no PyAV: training runs without it.
_PICTURE_TYPES = {1: "I", 2: "P", 3: "B"}


def export_qp(codec_context) -> None:
    """Make a PyAV decoder attach the QP map to every frame it decodes; call before its first packet.

    Slice threads only: with frame threads FFmpeg's H.264 decoder fills the side data racily (the same
    file's frame read QP 0 in about half of the decodes, once 10 where the encoder wrote 15). A file then
    decodes on one thread unless the encoder cut slices: 6.0 ms a 1080p frame instead of 3.7 here, next
    to some 600 ms of detection (BENCHMARKS.md, "Decoding with the QP map"). Live sources decoded with
    slice threads before (frame threads add a frame of latency per thread).

    Example:
        >>> import av
        >>> decoder = av.CodecContext.create("h264", "r")
        >>> export_qp(decoder)
        >>> decoder.thread_type.name, decoder.options["export_side_data"]
        ('SLICE', 'venc_params')
    """
    codec_context.thread_type = "SLICE"
    codec_context.options = dict(_DECODER_OPTIONS)


@dataclass(frozen=True)
class QPMap:
    """The QP of each block of a frame: `grid[row, col]` covers frame pixels [row * block, (row + 1) *
    block) x [col * block, (col + 1) * block)."""

    grid: np.ndarray  # rows x cols, int16
    block: int
    origin: tuple[int, int] = (0, 0)  # (x, y) of the frame's top-left pixel on the grid (a turned map's)

    def at(self, box) -> float | None:
        """The median QP of the blocks that box (x0, y0, x1, y1 in frame pixels) touches; None when it
        lies outside the map."""
        x0, y0, x1, y1 = (float(v) + o for v, o in zip(box, self.origin * 2))
        rows, cols = self.grid.shape
        r0, c0 = max(0, int(y0 // self.block)), max(0, int(x0 // self.block))
        r1, c1 = min(rows, int(y1 // self.block) + 1), min(cols, int(x1 // self.block) + 1)
        if r0 >= r1 or c0 >= c1:
            return None
        return float(np.median(self.grid[r0:r1, c0:c1]))

    def rotated(self, turns: int, width: int, height: int) -> QPMap:
        """The map of the `width` x `height` frame turned `turns` quarter turns counter-clockwise (as
        np.rot90). The grid covers the frame padded to whole blocks at its right and bottom; turned, the
        padding comes first on the axes it flips, hence `origin`."""
        rows, cols = self.grid.shape
        pad_x, pad_y = cols * self.block - width, rows * self.block - height
        origin = {0: (0, 0), 1: (0, pad_x), 2: (pad_x, pad_y), 3: (pad_y, 0)}[turns % 4]
        return QPMap(np.ascontiguousarray(np.rot90(self.grid, turns)), self.block, origin)


def _inter_offset(pict_type) -> int:
    return INTER_OFFSET.get(_PICTURE_TYPES.get(int(pict_type), ""), 0)


def qp_map(frame) -> QPMap | None:
    """The QP map of a decoded PyAV VideoFrame (decoded after `export_qp`), on the intra scale
    (INTER_OFFSET); None when the frame carries none (not H.264, or the option was not set) or its
    blocks are not one uniform grid."""
    data = next((bytes(sd) for sd in frame.side_data if sd.type.name == "VIDEO_ENC_PARAMS"), None)
    # PyAV (18.1 and before) caches a frame's side data in an object that points back at the frame: the
    # frame's pixels now outlive their last reference until a full collection (common.memory.owe_cycles)
    memory.owe_cycles(frame.width * frame.height * 3 // 2)  # 4:2:0 pixels, what an H.264 frame holds
    if data is None or len(data) < _HEADER.size:
        return None
    count, offset, size, kind, base = _HEADER.unpack_from(data)
    if kind != _H264 or count == 0 or size != 4 * _BLOCK_INTS or offset + count * size > len(data):
        return None
    blocks = np.frombuffer(data, np.int32, count * _BLOCK_INTS, offset).reshape(count, _BLOCK_INTS)
    x, y, w, h, delta = blocks.T
    side = int(w[0])
    if side <= 0 or not ((w == side) & (h == side) & (x % side == 0) & (y % side == 0)).all():
        return None
    grid = np.zeros((int(y.max()) // side + 1, int(x.max()) // side + 1), np.int16)
    # the finest inter blocks (QP < the offset) would land below the scale's 0: they are as fine as it gets
    grid[y // side, x // side] = np.maximum(base + delta - _inter_offset(frame.pict_type), 0)
    return QPMap(grid, side)
