"""benchmarks/soak.py (the verdict on an RSS series, the looped source) and common.memory."""
from __future__ import annotations

import importlib.util
import json
import platform
import sys
from pathlib import Path

import av
import pytest

from common import memory
from common.errors import UserError
from pipeline.demo import make_demo_clip
from pipeline.source import SourceConfig, open_source

ROOT = Path(__file__).resolve().parents[1]
needs_jemalloc = pytest.mark.skipif(memory.find_jemalloc() is None, reason="jemalloc not installed (Debian: apt "
                                    "install libjemalloc2; .ci/install-system-deps.sh installs it)")
_spec = importlib.util.spec_from_file_location("soak_benchmark", ROOT / "benchmarks/soak.py")
soak = importlib.util.module_from_spec(_spec)
sys.modules["soak_benchmark"] = soak
_spec.loader.exec_module(soak)


def series(start: float, per_min: float, minutes: int = 30) -> list[tuple[float, float]]:
    """Samples every 5 s: a climb to `start` in the first minute, then `per_min` MB per minute."""
    out = []
    for t in range(5, minutes * 60, 5):
        out.append((float(t), start * min(1.0, t / 60) + per_min * max(0.0, t - 60) / 60))
    return out


def test_flat_rss_after_warmup_passes_and_growth_fails():
    flat = soak.verdict(series(700, 0.5), warmup_s=300, tolerance=0.10)
    assert flat["passed"] and flat["slope_mb_per_min"] == pytest.approx(0.5, abs=1e-6)
    assert flat["rss_after_warmup_mb"] == pytest.approx(700 + 0.5 * 4, abs=1)
    growing = soak.verdict(series(700, 45), warmup_s=300, tolerance=0.10)  # the leak of issue 10
    assert not growing["passed"] and growing["fitted_growth_fraction"] > 1.0
    with pytest.raises(UserError, match="samples after the 300 s warm-up"):
        soak.verdict(series(700, 0, minutes=5), warmup_s=300, tolerance=0.10)


def test_loop_plays_the_clips_over_and_over(tmp_path):
    clip = make_demo_clip(tmp_path / "clip.mp4", n_frames=10)
    loop = soak.write_loop([clip], minutes=0.01, path=tmp_path / "loop.ffconcat")
    with av.open(str(clip)) as c:
        seconds = c.streams.video[0].frames / float(c.streams.video[0].average_rate)
    repeats = loop.read_text().count("file '")
    assert repeats * seconds >= 0.01 * soak.LOOP_SECONDS_PER_MINUTE
    with open_source(loop, SourceConfig(options={"safe": "0"})) as src:
        assert sum(1 for _ in src) == 10 * repeats


GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Fragments a heap the way a stream does (blocks freed while a later one stays in use, so the heap's top
# cannot shrink), then reports RSS before and after one trim by the thread `start_trimming` starts.
FRAGMENT = """
import ctypes, time
from common import memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1])
blocks = [libc.malloc(100_000) for _ in range(400)]  # under glibc's mmap threshold: from the heap
for b in blocks:
    ctypes.memset(b, 1, 100_000)
for b in blocks[:-1]:
    libc.free(b)
before = rss_kb()
trimmer = memory.start_trimming(interval_s=0.05)
deadline = time.monotonic() + 10
while trimmer.trims == 0 and time.monotonic() < deadline:
    time.sleep(0.01)
trimmer.stop()
print(before, rss_kb(), trimmer.trims)
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_trimming_gives_fragmented_heap_memory_back():
    import subprocess

    out = subprocess.run([sys.executable, "-c", FRAGMENT], cwd=ROOT, capture_output=True, text=True, check=True)
    before, after, trims = map(int, out.stdout.split())
    assert trims >= 1
    assert before - after > 20_000  # kB: most of the ~39 MB freed is returned


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_no_trimming_when_the_user_tuned_malloc(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert memory.start_trimming() is None


# What a script's __main__ does (run_stream.py): restart under jemalloc, then say which allocator serves it.
RESTART = """
import os, sys
sys.path.insert(0, os.getcwd())
from common import memory
memory.restart_under_jemalloc(sys.argv)
print(memory.allocator(), os.environ.get("MALLOC_CONF"), memory.start_trimming() is None)
"""


@needs_jemalloc
@pytest.mark.parametrize("choice", [None, "system"])
def test_a_run_restarts_under_jemalloc_unless_told_not_to(tmp_path, monkeypatch, choice):
    import subprocess

    script = tmp_path / "main.py"
    script.write_text(RESTART, encoding="utf-8")
    for name in ("LD_PRELOAD", "MALLOC_CONF", "_FACESR_REEXEC", *memory.USER_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    if choice:
        monkeypatch.setenv(memory.ALLOCATOR_ENV, choice)
    else:
        monkeypatch.delenv(memory.ALLOCATOR_ENV, raising=False)
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, check=True)
    if choice == "system":
        assert out.stdout.split() == ["system", "None", "False"]  # glibc, trimmed as before
    else:
        assert out.stdout.split() == ["jemalloc", memory.JEMALLOC_CONF, "True"]  # no trimmer beside jemalloc


@needs_jemalloc
def test_the_jemalloc_environment_preloads_once_and_keeps_the_users_settings():
    lib = memory.find_jemalloc()
    assert memory.jemalloc_env({}) == {"LD_PRELOAD": lib, "MALLOC_CONF": memory.JEMALLOC_CONF}
    # a process restarted under it (the Ray driver) hands it on without a second copy; other preloads stay
    assert memory.jemalloc_env({"LD_PRELOAD": f"{lib} libx.so"})["LD_PRELOAD"] == f"{lib} libx.so"
    assert memory.jemalloc_env({"LD_PRELOAD": "libx.so"})["LD_PRELOAD"] == f"{lib} libx.so"
    assert memory.jemalloc_env({"MALLOC_CONF": "narenas:2"})["MALLOC_CONF"] == "narenas:2"
    assert memory.jemalloc_env({memory.ALLOCATOR_ENV: "system"}) == {}
    assert memory.jemalloc_env({"MALLOC_TRIM_THRESHOLD_": "65536"}) == {}


def test_restarts_need_rtsp(tmp_path):
    assert soak.main(["--minutes", "1", "--warmup", "0", "--restart-every", "1", "--out", str(tmp_path)]) == 2


def test_rtsp_soak_reconnects_after_each_server_restart(tmp_path):
    from rtsp_server import gst_unavailable_reason

    if (why := gst_unavailable_reason()) is not None:
        pytest.skip(why)
    clip = make_demo_clip(tmp_path / "clip.mp4", n_frames=50)
    code = soak.main(["--rtsp", "--video", str(clip), "--minutes", "0.75", "--warmup", "0.25", "--interval", "2",
                      "--restart-every", "0.25", "--tolerance", "10", "--out", str(tmp_path / "soak")])
    result = json.loads((tmp_path / "soak" / "soak.json").read_text())
    assert code == 0 and result["source"] == "rtsp" and result["server_restarts"] == 2
    assert result["reconnects"] >= 1 and result["frames_processed"] > 0  # the camera came back (at least once)


def test_cameras_in_one_process_each_reconnect_when_their_server_restarts(tmp_path):
    from rtsp_server import gst_unavailable_reason

    if (why := gst_unavailable_reason()) is not None:
        pytest.skip(why)
    clip = make_demo_clip(tmp_path / "clip.mp4", n_frames=50)
    code = soak.main(["--rtsp", "--cameras", "2", "--video", str(clip), "--minutes", "0.9", "--warmup", "0.25",
                      "--interval", "2", "--restart-every", "0.25", "--tolerance", "10", "--out", str(tmp_path / "s")])
    result = json.loads((tmp_path / "s" / "soak.json").read_text())
    assert code == 0 and result["server_restarts"] == 3 and result["command"].count("--source") == 2
    cams = result["cameras"]
    assert sorted(cams) == ["cam1", "cam2"]
    assert [cams["cam1"]["server_restarts"], cams["cam2"]["server_restarts"]] == [2, 1]  # in turn: 1, 2, 1
    for cam in cams.values():  # each camera came back after its own server's restart, and kept running
        assert cam["reconnects"] >= 1 and cam["frames_processed"] > 0 and cam["state"] != "failed"
    assert result["reconnects"] == sum(c["reconnects"] for c in cams.values())


def test_cameras_must_be_positive(tmp_path):
    assert soak.main(["--minutes", "1", "--warmup", "0", "--cameras", "0", "--out", str(tmp_path)]) == 2
