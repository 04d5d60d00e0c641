"""Shared pytest fixtures."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# ---- RTSP test server (tests/rtsp_server.py) ------------------------------------------------
# tests/ has no __init__.py; make `import rtsp_server` work whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rtsp_server import RtspServer, gst_unavailable_reason, make_test_video  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared/data"
LONG_CLIP_FRAMES = 200


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The ONNX graphs the enhancer exports (enhance.runtime auto / onnxruntime) go to a folder of this
    session, CLI runs in subprocesses included, never to the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
        yield


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained ARASFSR checkpoint (seeded): the enhance stage's model path in seconds."""
    import torch

    from models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model({"encoder": {"name": "edsr", "n_resblocks": 1, "n_feats": 8}, "decoder": {"hidden": 16},
                         "local_frequency": {"latent": 4, "width": 8}})
    return save_checkpoint(model, tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture(scope="session")
def long_face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo face in every one of LONG_CLIP_FRAMES frames: a run that enhances it with ARASFSR on a
    CPU lasts a minute and more, long enough to act on it while it goes (signals, a second run)."""
    from pipeline.demo import make_demo_clip

    return make_demo_clip(tmp_path_factory.mktemp("clip") / "long.mp4", n_frames=LONG_CLIP_FRAMES)


@pytest.fixture(scope="session")
def rtsp_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x360 H.264 clip for the RTSP server: the development clip if present, else generated."""
    shared = SHARED_DATA / "video/stage_360p_two_faces.mp4"
    if shared.is_file():
        return shared
    return make_test_video(tmp_path_factory.mktemp("rtsp") / "clip.mp4", seconds=4.0)


@pytest.fixture
def rtsp_server(rtsp_video: Path) -> Iterator[Callable[..., RtspServer]]:
    """Factory: ``server = rtsp_server(video=None, port=None)`` starts a real GStreamer RTSP server
    (``server.url``, ``server.kill()``, ``server.start()``); every server is stopped by PID at teardown.
    Skips when /usr/bin/python3 lacks the GStreamer bindings (see .ci/install-system-deps.sh)."""
    reason = gst_unavailable_reason()
    if reason:
        pytest.skip(reason)
    servers: list[RtspServer] = []

    def start(video: Path | None = None, port: int | None = None) -> RtspServer:
        server = RtspServer(video or rtsp_video, port=port)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.kill()


# ---- Ray (pipeline.cluster, run_stream.py --cluster) ----------------------------------------
@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster with 2 CPUs for the module; yields its address, the RAY_ADDRESS with which
    `run_stream.py --cluster auto` joins it (tests/ray_cli.py). This process only looks at the cluster and
    kills actors in it; it runs none. Skips without Ray."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e .[cluster] (CI installs it)")
    from pipeline.cluster import NAMESPACE

    ray.init(num_cpus=2, namespace=NAMESPACE, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
