"""File helpers shared by the pipeline, the training script and the benchmarks.

IMAGE_SUFFIXES: the image files every folder reader accepts (frames, galleries, training photos).
atomic_write_bytes: how every output file (run records, report, checkpoints) reaches the disk.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from pipeline.errors import SinkError

# All of them decode with cv2.imread (the OpenCV wheels include libwebp).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def is_image_file(path: Path) -> bool:
    """True for a path whose suffix (any case) is in IMAGE_SUFFIXES."""
    return path.suffix.lower() in IMAGE_SUFFIXES


_TEMPORARY = re.compile(r"^\..+\.[0-9]+\.[0-9]+\.tmp$")


def temporary_path(path: Path) -> Path:
    """Where `atomic_write_bytes` writes `path` before the rename: hidden, unique per process and thread."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def is_temporary(path: Path) -> bool:
    """True for a name `temporary_path` gives (one a killed process may have left behind)."""
    return bool(_TEMPORARY.match(path.name))


def atomic_write_bytes(path: Path | str, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` via a temporary file in the same folder and `os.replace`.

    Either the old file (or none) or the complete new one is there afterwards, never a part, and
    no temporary file is left behind, also when interrupted. OSError (full disk, permissions) ->
    SinkError naming `path`. `fsync` makes the data durable before the rename (summary files).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write_bytes(p, b"hi"); p.read_bytes()
        b'hi'
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise SinkError(f"cannot write {path}: {e.strerror or e}") from None
        raise
