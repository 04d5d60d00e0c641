"""Select stage: which aligned faces of a track are worth super-resolving and writing.

A face is skipped when it is smaller than `min_face_size` (px, the detector box's longer side) or
scored below `min_score`. Of the rest, per track:
  * `every_k` > 0: every k-th face is emitted as it comes (1 = all of them);
  * `best_n` > 0: the N faces with the highest quality (sharpness x size x frontalness) are
    emitted by `end_tracks` when the tracker ends the track (at the latest when the input ends),
    unless already emitted by `every_k`.
`skipped` counts the faces never emitted, by reason: "too_small", "below_score", "not_selected".

Example:
    >>> sel = Selector(SelectConfig(every_k=0, best_n=3))
    >>> sel(faces)           # doctest: +SKIP   (nothing yet: best-N waits for the track's end)
    []
    >>> sel.end_tracks([7])  # doctest: +SKIP   (the three best faces of track 7)
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from common.config import setting, validate
from pipeline.errors import ConfigError
from pipeline.records import AlignedFace


@dataclass
class SelectConfig:
    min_face_size: int = setting(0, lo=0)
    min_score: float = setting(0.0, lo=0.0, hi=1.0)
    every_k: int = setting(1, lo=0)
    best_n: int = setting(0, lo=0)

    def __post_init__(self) -> None:
        validate(self)
        if self.every_k == 0 and self.best_n == 0:
            raise ConfigError("select: every_k and best_n are both 0, so no face would ever be emitted")


class Selector:
    """Pipeline stage: AlignedFace list -> the faces to enhance now; `end_tracks` -> best-N faces."""

    def __init__(self, config: SelectConfig | None = None) -> None:
        self.config = config or SelectConfig()
        self._seen: dict[int, int] = defaultdict(int)
        self._best: dict[int, list[tuple[float, int, AlignedFace]]] = defaultdict(list)
        self.skipped: Counter[str] = Counter()

    def __call__(self, faces: Sequence[AlignedFace]) -> list[AlignedFace]:
        cfg, out = self.config, []
        for face in faces:
            if face.detection.size < cfg.min_face_size:
                self.skipped["too_small"] += 1
                continue
            if face.detection.score < cfg.min_score:
                self.skipped["below_score"] += 1
                continue
            n = self._seen[face.track_id]
            self._seen[face.track_id] = n + 1
            if cfg.every_k and n % cfg.every_k == 0:
                out.append(face)
            elif cfg.best_n:
                heap = self._best[face.track_id]  # min-heap of the N best so far; frame index breaks ties
                item = (face.quality, face.frame_index, face)
                if len(heap) < cfg.best_n:
                    heapq.heappush(heap, item)
                else:
                    if item[:2] > heap[0][:2]:
                        heapq.heapreplace(heap, item)
                    self.skipped["not_selected"] += 1  # this face or the one it displaced
            else:
                self.skipped["not_selected"] += 1
        return out

    def end_tracks(self, track_ids: Iterable[int]) -> list[AlignedFace]:
        """The best-N faces of tracks that have ended, in frame order; their state is released.
        Every track the selector has seen must end here once (the tracker's `TrackEnd`s)."""
        out = []
        for tid in track_ids:
            out.extend(sorted((f for _, _, f in self._best.pop(tid, [])), key=lambda f: f.frame_index))
            self._seen.pop(tid, None)
        return out

