"""pipeline.files: the one image-suffix list and the one atomic write (used by sinks, report, checkpoints)."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest

from pipeline import files
from pipeline.errors import SinkError
from pipeline.files import IMAGE_SUFFIXES, atomic_write_bytes, is_image_file


def test_image_suffixes_include_webp_in_any_case() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp"} <= set(IMAGE_SUFFIXES)
    assert is_image_file(Path("a/face.WEBP")) and is_image_file(Path("x.Jpg"))
    assert not is_image_file(Path("notes.txt")) and not is_image_file(Path("webp"))


class _HalfWriter:
    """A file whose write stores half the data, then fails like a full disk (or is interrupted)."""

    def __init__(self, real, exc: BaseException) -> None:
        self.real, self.exc = real, exc

    def write(self, data: bytes) -> int:
        self.real.write(data[: len(data) // 2])
        self.real.flush()
        raise self.exc

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failing_midway_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   exc: BaseException) -> None:
    path = tmp_path / "summary.json"
    atomic_write_bytes(path, b"old complete content")
    monkeypatch.setattr(files, "open", lambda p, mode: _HalfWriter(open(p, mode), exc), raising=False)
    with pytest.raises(SinkError if isinstance(exc, OSError) else KeyboardInterrupt) as e:
        atomic_write_bytes(path, b"new content that never fully arrives" * 100)
    assert path.read_bytes() == b"old complete content"
    assert list(tmp_path.iterdir()) == [path]  # the partial temporary file is gone
    if isinstance(exc, OSError):
        assert "No space left on device" in str(e.value) and str(path) in str(e.value)


def test_write_into_a_missing_folder_is_a_sink_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="cannot write"):
        atomic_write_bytes(tmp_path / "missing" / "a.txt", b"x")
