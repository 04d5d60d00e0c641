"""Fault tests: config values of the wrong type or out of range, and config files that cannot be
read. Each is one `error:` line naming the key (or the file) and exit code 2, never a traceback."""
from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from common.cli import EXIT_USER_ERROR
from fault_checks import assert_one_error_line
from pipeline.config import DERIVED, SECTIONS, load_config, valid_keys

KEYS = [(s, k) for s in SECTIONS for k in valid_keys(s)]
RANGE_KINDS = ("lo", "hi", "gt", "lt", "choices")


def _field(section: str, key: str) -> tuple[dataclasses.Field, typing.Any]:
    cls = SECTIONS[section]
    return {f.name: f for f in dataclasses.fields(cls)}[key], typing.get_type_hints(cls)[key]


def _base(hint: typing.Any) -> typing.Any:
    """int for `int | None`, dict for `dict[str, str]`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType):
        hint = args[0]
    return typing.get_origin(hint) or hint


def _wrong_type(hint: typing.Any) -> str:
    """A --set value (YAML) that is not of the key's type."""
    return "[1, 2]" if _base(hint) is str else "abc"


def test_the_walk_covers_every_key_of_the_defaults():
    defaults = load_config(None).to_dict()
    assert sorted((s, k) for s in defaults for k in defaults[s]) == sorted(KEYS)
    assert len(KEYS) >= 40


@pytest.mark.parametrize("section,key", KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_every_key_refuses_a_wrong_type_in_one_line(run_cli, tmp_path, section, key):
    value = _wrong_type(_field(section, key)[1])
    code, out, err = run_cli("--source", tmp_path / "never-opened.mp4", "--out", tmp_path / "out",
                             "--set", f"{section}.{key}={value}")
    assert code == EXIT_USER_ERROR
    assert_one_error_line(err, f"{section}.{key} must be")
    assert not (tmp_path / "out").exists()


NUMERIC = [(s, k) for s, k in KEYS if _base(_field(s, k)[1]) in (int, float, tuple)]


@pytest.mark.parametrize("section,key", NUMERIC, ids=[f"{s}.{k}" for s, k in NUMERIC])
def test_every_number_has_a_range_and_refuses_values_outside_it(run_cli, tmp_path, section, key):
    # A new numeric key without `setting(lo=/hi=/gt=/lt=)` fails here: zero, negative or huge values
    # of a count or a duration would otherwise reach the code that uses them.
    field, hint = _field(section, key)
    meta = field.metadata
    assert any(k in meta for k in RANGE_KINDS), f"{section}.{key} declares no range: use setting(lo=...)"
    bound = meta.get("lo", meta.get("gt"))
    bad = bound - 1 if "lo" in meta else bound if bound is not None else meta.get("hi", meta.get("lt")) + 1
    if _base(hint) is tuple:
        bad = [bad] * max(1, len(field.default))
        if typing.get_origin((typing.get_args(hint) or (None,))[0]) is tuple:  # a list of lists (boxes)
            bad = [bad]
    code, out, err = run_cli("--source", tmp_path / "never-opened.mp4", "--out", tmp_path / "out",
                             "--set", f"{section}.{key}={json.dumps(bad)}")
    assert code == EXIT_USER_ERROR
    assert_one_error_line(err, f"{section}.{key} must be", f"got {bad!r}" if _base(hint) is not tuple else "got")


@pytest.mark.parametrize("setting,message", [
    ("source.queue_size=0", "source.queue_size must be an integer >= 1, got 0"),
    ("source.queue_size=abc", "source.queue_size must be an integer >= 1, got 'abc'"),
    ("source.open_timeout=abc", "source.open_timeout must be a number > 0, got 'abc'"),
    ("source.open_timeout=0", "source.open_timeout must be a number > 0, got 0"),
    ("source.options=x", "source.options must be a mapping, got 'x'"),
    ("source.options={framerate: 30}", "source.options.framerate must be a string, got 30"),
    ("source.rtsp_transport=tpc", "source.rtsp_transport must be one of tcp, udp"),
    ("align.max_size=abc", "align.max_size must be an integer >= 8 or null, got 'abc'"),
    ("source.fps_hint=abc", "source.fps_hint must be a number > 0 or null, got 'abc'"),
    ("source.reconnect_attempts=abc", "source.reconnect_attempts must be an integer >= 0 or null, got 'abc'"),
    ("detect.every=abc", "detect.every must be an integer >= 1, got 'abc'"),
    ("select.min_score=1.5", "select.min_score must be in [0, 1], got 1.5"),
    ("enhance.amp=fp8", "enhance.amp must be one of bf16, fp16 or null, got 'fp8'"),
])
def test_reported_bad_values(run_cli, tmp_path, setting, message):
    # A folder source for fps_hint, as reported; else a missing file: a value let through then fails
    # fast on the source (a never-reachable camera would retry for ever).
    (tmp_path / "frames").mkdir()
    source = tmp_path / "frames" if "fps_hint" in setting else tmp_path / "missing.mp4"
    code, out, err = run_cli("--source", source, "--out", tmp_path / "out", "--set", setting)
    assert code == EXIT_USER_ERROR
    assert_one_error_line(err, message)


def test_a_bad_value_in_a_real_process_is_one_line(run_process, tmp_path):
    res = run_process("--source", tmp_path / "x.mp4", "--out", tmp_path / "out", "--set", "source.queue_size=0")
    assert res.returncode == EXIT_USER_ERROR
    assert res.stderr.strip() == "error: source.queue_size must be an integer >= 1, got 0"


def test_settings_made_in_code_are_checked_like_loaded_ones():
    from pipeline.source import SourceConfig

    with pytest.raises(ValueError, match="queue_size must be an integer >= 1, got 0"):
        SourceConfig(queue_size=0)
    assert SourceConfig(backoff_max=3).backoff_max == 3.0 and isinstance(SourceConfig(backoff_max=3).backoff_max, float)


def test_a_config_file_that_is_not_utf8_is_named(run_cli, tmp_path):
    preset = tmp_path / "latin1.yaml"
    preset.write_bytes("# caméra du hall\nenhance: {method: bicubic}\n".encode("latin-1"))
    code, out, err = run_cli("--source", tmp_path / "x.mp4", "--config", preset, "--out", tmp_path / "out")
    assert code == EXIT_USER_ERROR
    assert_one_error_line(err, str(preset), "not UTF-8")
