"""Pipeline configuration: YAML presets (configs/*.yaml) + `--set section.key=value` overrides.

Every section maps to a stage's settings dataclass, so the valid keys are exactly its fields and the
defaults are its defaults (the only ones: configs/default.yaml documents them in comments, and a test
keeps those comments equal to the code). Loading goes through the project's one strict loader
(common.config.build): an unknown section or key, a value of the wrong type or out of range is a
ConfigError naming the dotted key.

Example:
    >>> cfg = load_config("configs/cctv.yaml", ["enhance.output_size=160", "detect.every=2"])  # doctest: +SKIP
    >>> cfg.enhance.output_size  # doctest: +SKIP
    160
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.config import build, read_yaml, setting
from pipeline.detect import DetectorConfig
from pipeline.enhance import EnhancerConfig
from pipeline.errors import ConfigError
from pipeline.fuse import FuseConfig
from pipeline.select import SelectConfig
from pipeline.source import SourceConfig
from trackers import TrackerConfig


@dataclass
class DetectSettings(DetectorConfig):
    min_face_size: int = setting(14, lo=1)  # smaller than MTCNN's stock 20: CCTV faces are small (P-Net's floor is 12)
    every: int = setting(1, lo=1)  # run the detector on every k-th frame; the tracker predicts in between
    batch: int = setting(4, lo=1)  # frames per detector call (files; live streams take what is queued)
    # between full detections (every > 1): look for the tracked faces only around where the tracker expects
    # them (MTCNNDetector.detect_around), instead of only predicting their boxes
    roi: bool = False
    # Detect only where the picture changed since the last frames (and around the live tracks' faces), with the
    # whole frame every motion_full_every-th detection and whenever searching the parts would cost more than
    # motion_max_area of a whole detection (pipeline.motion): a fixed camera's still scene is not searched again
    # and again. motion_threshold: gray levels a pixel must change by (at least 3x the camera's noise sigma)
    motion: bool = False
    motion_threshold: float = setting(12.0, gt=0.0, hi=255.0)
    motion_full_every: int = setting(25, lo=1)
    motion_max_area: float = setting(0.5, gt=0.0, hi=1.0)
    # Parts of the frame whose changes are not motion, [x0, y0, x1, y1] as shares of its width and height: a
    # burned-in clock, a screen, trees in the wind. Faces there are still found by the whole-frame detections
    # and, once tracked, around their tracks.
    motion_ignore: tuple[tuple[float, ...], ...] = setting((), lo=0.0, hi=1.0)
    threads: int = setting(0, lo=0, hi=256)  # torch CPU threads of the threads that detect, together (0: torch's default)
    # Many cameras: threads detecting at once, each on cameras of its own at a time (0: one per core, at most one
    # per camera). On a CPU, two threads of one torch thread each detect more frames per second than one thread
    # of two (MTCNN's small convolutions scale badly across cores, and each thread's tracking and alignment run
    # while the other detects). A camera's frames are always detected and tracked in order, by one thread at a time.
    workers: int = setting(0, lo=0, hi=64)

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(len(b) != 4 or not (b[0] < b[2] and b[1] < b[3]) for b in self.motion_ignore):
            raise ConfigError("must be a list of boxes [x0, y0, x1, y1] in shares of the frame (x0 < x1, y0 < y1), "
                              f"got {[list(b) for b in self.motion_ignore]}", key="motion_ignore")

    def detector(self) -> DetectorConfig:
        names = {f.name for f in dataclasses.fields(DetectorConfig)}
        return DetectorConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass
class AlignSettings:
    min_size: int = setting(8, lo=8)  # the SR model's smallest input
    max_size: int | None = setting(None, lo=8)


@dataclass
class OutputSettings:
    dir: str = "out/run"
    overwrite: bool = False
    save_comparison: bool = True
    report: bool = True


@dataclass
class RecognitionSettings:
    gallery: str | None = None
    threshold: float = setting(0.6, lo=0.0)
    min_votes: int = setting(1, lo=1)


@dataclass
class RuntimeSettings:
    progress: bool = True
    log_every: float = setting(10.0, gt=0.0)
    queue_size: int = setting(256, lo=1)
    max_frames: int | None = setting(None, lo=1)


@dataclass
class ClusterSettings:
    """Used with --cluster only (pipeline.cluster): what Ray reserves for each camera worker and
    enhancer replica, the enhancer's batching across cameras, and the fault tolerance."""

    camera_cpus: float = setting(1.0, gt=0.0)  # CPUs reserved per camera worker (decode, detect, track, align, select)
    enhance_replicas: int = setting(1, lo=1)  # enhancer replicas (Ray Serve), each with its own model
    enhance_cpus: float = setting(1.0, lo=0.0)  # CPUs reserved per enhancer replica
    enhance_gpus: float = setting(0.0, lo=0.0)  # GPUs per enhancer replica (a fraction shares a GPU)
    batch_wait_s: float = setting(0.01, lo=0.0)  # longest a face waits for others to fill an enhancer batch
    max_restarts: int = setting(3, lo=0)  # times Ray restarts a camera worker that died (then the camera fails)
    enhance_retries: int = setting(5, lo=0)  # resends of a failed enhancer request (0.5 s apart, doubling); then it fails


SECTIONS: dict[str, type] = {
    "source": SourceConfig, "detect": DetectSettings, "track": TrackerConfig, "align": AlignSettings,
    "fuse": FuseConfig, "select": SelectConfig, "enhance": EnhancerConfig, "recognition": RecognitionSettings,
    "output": OutputSettings, "runtime": RuntimeSettings, "cluster": ClusterSettings,
}
DERIVED = {("track", "stride")}  # set from detect.every, never by hand


@dataclass
class PipelineConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    detect: DetectSettings = field(default_factory=DetectSettings)
    track: TrackerConfig = field(default_factory=TrackerConfig)
    align: AlignSettings = field(default_factory=AlignSettings)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    enhance: EnhancerConfig = field(default_factory=EnhancerConfig)
    recognition: RecognitionSettings = field(default_factory=RecognitionSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: {k: v for k, v in dataclasses.asdict(getattr(self, name)).items() if (name, k) not in DERIVED}
                for name in SECTIONS}


def valid_keys(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section]) if (section, f.name) not in DERIVED]


def _check(section: str, key: str | None = None) -> None:
    """Refuse an unknown section, and the keys derived from others; common.config.build checks the rest."""
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r}; valid sections: {', '.join(SECTIONS)}")
    if key is not None and key not in valid_keys(section):
        raise ConfigError(f"unknown config key {section}.{key}; valid keys in {section}: "
                          f"{', '.join(valid_keys(section))}")


def parse_override(text: str) -> tuple[str, str, Any]:
    """'section.key=value' -> (section, key, YAML-parsed value)."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    _check(section, key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: take it as a string (e.g. a path with a colon)
    return section, key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                sections: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a preset (None: the built-in defaults), apply the `section.key=value` overrides, then
    `sections` key by key (a camera's own settings, see pipeline.cameras: the most specific wins)."""
    command_line: dict[str, dict[str, Any]] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        command_line.setdefault(section, {})[key] = value
    values: dict[str, Any] = {}
    for layer in (read_yaml(path, "config file") if path is not None else {}), command_line, (sections or {}):
        for section, entries in layer.items():
            _check(section)
            for key in entries if isinstance(entries, dict) else ():
                _check(section, key)
            if isinstance(entries, dict) and isinstance(values.get(section), dict):
                values[section] = {**values[section], **entries}
            else:
                values[section] = dict(entries) if isinstance(entries, dict) else entries
    detect, track = values.get("detect"), values.setdefault("track", {})
    if isinstance(track, dict):  # else build names the section that is not a mapping
        track["stride"] = detect.get("every", DetectSettings.every) if isinstance(detect, dict) else DetectSettings.every
    return build(PipelineConfig, values, "config")
