"""The cameras file: many cameras in one process (`run_stream.py --cameras FILE --out DIR`).

    config: configs/cctv.yaml        # optional: the preset every camera starts from (default: the built-in defaults)
    cameras:
      - id: lobby                    # [A-Za-z0-9_-]+, unique; names the output subfolder DIR/lobby
        source: rtsp://user:pass@10.0.0.5/stream1
        detect: {min_face_size: 16}  # any preset section, overriding the preset for this camera only
      - id: door
        source: {uri: recordings/door.mp4, queue_size: 16}   # the long form: + this camera's source settings

A camera's settings are the preset, then the command line's `--set` overrides (for every camera),
then its own sections, key by key: the most specific setting wins. The settings of what the cameras share (one detector
and one enhancer thread, one model per weights file, the run folder: `SHARED`) can only come from the
preset or `--set`: a camera that sets one is refused rather than silently ignored. Everything is
checked by the pipeline's strict loader before anything runs; a mistake is one ConfigError naming the
file, the camera and the key.

Example:
    >>> cams = load_cameras("configs/cameras.example.yaml")  # doctest: +SKIP
    >>> [(c.id, c.config.detect.min_face_size) for c in cams]  # doctest: +SKIP
    [('lobby', 16), ('door', 14)]
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from common.config import read_yaml
from pipeline.config import PipelineConfig, load_config
from pipeline.errors import ConfigError

CAMERA_ID = re.compile(r"[A-Za-z0-9_-]+")
FILE_KEYS = ("config", "cameras")
#: Settings every camera of a run shares: a camera section may not set them (see the module docstring).
SHARED: dict[str, tuple[str, ...] | None] = {
    "detect": ("threads", "workers", "batch", "device"),
    "enhance": ("threads", "device", "batch_size", "max_queries", "amp", "runtime"),
    "output": ("dir", "overwrite"),
    "runtime": None,  # the whole section
    "cluster": None,
}


@dataclass(frozen=True)
class Camera:
    """One camera of a run: its id (the output subfolder's name), its source and its settings."""

    id: str
    source: str
    config: PipelineConfig


def load_cameras(path: str | Path, overrides: Sequence[str] = ()) -> list[Camera]:
    """The cameras of a cameras file, each with its settings resolved; ConfigError on any mistake."""
    path = Path(path)
    data = read_yaml(path, "cameras file")
    where = f"cameras file {path}"
    unknown = [str(k) for k in data if k not in FILE_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(FILE_KEYS)}")
    preset = data.get("config")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"{where}: config must be the path of a preset, got {preset!r}")
    entries = data.get("cameras")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: cameras must be a non-empty list of cameras (id, source, settings)")
    preset_path = _preset_path(preset, path) if preset else None
    cameras: list[Camera] = []
    for i, entry in enumerate(entries):
        cameras.append(_camera(entry, f"{where}: cameras[{i}]", preset_path, overrides))
    _check_unique(cameras, where)
    return cameras


def cameras_from_sources(sources: Sequence[str], preset: str | Path | None,
                         overrides: Sequence[str] = ()) -> list[Camera]:
    """`--source A --source B ...`: cameras cam1, cam2, ... with the same settings."""
    config = load_config(preset, list(overrides))
    return [Camera(f"cam{i}", str(source), config) for i, source in enumerate(sources, 1)]


def _camera(entry: Any, where: str, preset: Path | None, overrides: Sequence[str]) -> Camera:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with id, source and settings, got {entry!r}")
    cam_id, source = entry.get("id"), entry.get("source")
    if not isinstance(cam_id, str) or not CAMERA_ID.fullmatch(cam_id):
        raise ConfigError(f"{where}: id must be letters, digits, '_' or '-' (it names the camera's output "
                          f"folder), got {cam_id!r}")
    where = f"{where} ({cam_id})"
    sections = {k: v for k, v in entry.items() if k not in ("id", "source")}
    if isinstance(source, dict):  # the long form: {uri: ..., <source settings for this camera>}
        source = dict(source)
        sections["source"] = source
        source = source.pop("uri", None)
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{where}: source must be a video file, rtsp://..., webcam:N or an image folder, "
                          "or {uri: <one of those>, <source settings>}")
    for section, entries in sections.items():
        shared = SHARED.get(section, ())
        keys = list(entries) if isinstance(entries, dict) else []
        clash = keys if shared is None else [k for k in keys if k in shared]
        if section in SHARED and (clash or shared is None):
            key = f"{section}.{clash[0]}" if clash else section
            raise ConfigError(f"{where}: {key} is shared by all cameras of a run; set it in the preset or "
                              "with --set")
    try:
        config = load_config(preset, list(overrides), sections)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Camera(cam_id, source, config)


def _check_unique(cameras: list[Camera], where: str) -> None:
    seen: set[str] = set()
    for cam in cameras:
        if cam.id in seen:
            raise ConfigError(f"{where}: camera id {cam.id!r} is used twice; ids name the output folders")
        seen.add(cam.id)


def _preset_path(preset: str, cameras_file: Path) -> Path:
    """A preset path as written (relative to the working directory), else relative to the cameras file."""
    given = Path(preset)
    if given.is_absolute() or given.exists():
        return given
    beside = cameras_file.parent / given
    return beside if beside.exists() else given  # the loader then names the missing file
