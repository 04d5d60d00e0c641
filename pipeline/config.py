"""Pipeline configuration: YAML presets (configs/*.yaml) + `--set section.key=value` overrides.

Every section maps to a stage's settings dataclass, so the valid keys are exactly its fields; an
unknown section or key is a ConfigError that lists the valid ones. Keys a preset leaves out take
the dataclass defaults, which configs/default.yaml spells out (a test keeps the two equal).

Example:
    >>> cfg = load_config("configs/default.yaml", ["enhance.output_size=160", "detect.every=2"])  # doctest: +SKIP
    >>> cfg.enhance.output_size  # doctest: +SKIP
    160
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.detect import DetectorConfig
from pipeline.enhance import EnhancerConfig
from pipeline.errors import ConfigError
from pipeline.select import SelectConfig
from pipeline.source import SourceConfig
from trackers import TrackerConfig


@dataclass
class DetectSettings(DetectorConfig):
    min_face_size: int = 14  # smaller than MTCNN's stock 20: CCTV faces are small (P-Net's floor is 12)
    every: int = 1  # run the detector on every k-th frame; the tracker predicts in between
    batch: int = 4  # frames per detector call (files; live streams take what is queued)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.every < 1 or self.batch < 1:
            raise ConfigError("detect.every and detect.batch must be >= 1")

    def detector(self) -> DetectorConfig:
        names = {f.name for f in dataclasses.fields(DetectorConfig)}
        return DetectorConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass
class AlignSettings:
    min_size: int = 8
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.min_size < 8:
            raise ConfigError("align.min_size must be >= 8 (the SR model's smallest input)")


@dataclass
class OutputSettings:
    dir: str = "out/run"
    overwrite: bool = False
    save_comparison: bool = True
    report: bool = True


@dataclass
class RecognitionSettings:
    gallery: str | None = None
    threshold: float = 0.6
    min_votes: int = 1


@dataclass
class RuntimeSettings:
    progress: bool = True
    log_every: float = 10.0
    queue_size: int = 256
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.log_every <= 0 or (self.max_frames is not None and self.max_frames < 1):
            raise ConfigError("runtime.queue_size and runtime.max_frames must be >= 1, runtime.log_every > 0")


SECTIONS: dict[str, type] = {
    "source": SourceConfig, "detect": DetectSettings, "track": TrackerConfig, "align": AlignSettings,
    "select": SelectConfig, "enhance": EnhancerConfig, "recognition": RecognitionSettings,
    "output": OutputSettings, "runtime": RuntimeSettings,
}
DERIVED = {("track", "stride")}  # set from detect.every, never by hand


@dataclass
class PipelineConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    detect: DetectSettings = field(default_factory=DetectSettings)
    track: TrackerConfig = field(default_factory=TrackerConfig)
    align: AlignSettings = field(default_factory=AlignSettings)
    select: SelectConfig = field(default_factory=SelectConfig)
    enhance: EnhancerConfig = field(default_factory=EnhancerConfig)
    recognition: RecognitionSettings = field(default_factory=RecognitionSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: {k: v for k, v in dataclasses.asdict(getattr(self, name)).items() if (name, k) not in DERIVED}
                for name in SECTIONS}


def valid_keys(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section]) if (section, f.name) not in DERIVED]


def _check(section: str, key: str | None = None) -> None:
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


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read a preset (None: the built-in defaults) and apply `section.key=value` overrides."""
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must be a mapping of sections")
        for section, entries in data.items():
            _check(section)
            if not isinstance(entries, dict):
                raise ConfigError(f"config section {section} in {path} must be a mapping")
            for key, value in entries.items():
                _check(section, key)
                values[section][key] = value
    for text in overrides:
        section, key, value = parse_override(text)
        values[section][key] = value
    values["track"]["stride"] = values["detect"].get("every", DetectSettings.every)
    built = {}
    for section, cls in SECTIONS.items():
        try:
            built[section] = cls(**values[section])
        except TypeError as exc:
            raise ConfigError(f"config section {section}: {exc}") from None
    return PipelineConfig(**built)
