"""Fault tests: credentials in a source URL are never shown or written, whatever the URL's shape."""
from __future__ import annotations

import json

import pytest

from common.cli import EXIT_USER_ERROR
from common.redact import mask_secrets
from fault_checks import assert_one_error_line

SHAPES = [  # (URL as the user gives it, as it may be shown)
    ("rtsp://admin:hunter2@10.0.0.7:554/live", "rtsp://admin:***@10.0.0.7:554/live"),
    ("rtsp://:hunter2@10.0.0.7/live", "rtsp://:***@10.0.0.7/live"),
    ("rtsps://admin:hunter2@cam.local/Streaming/Channels/101", "rtsps://admin:***@cam.local/Streaming/Channels/101"),
    ("http://admin:hunter2@cam.local:8080/video.mjpg", "http://admin:***@cam.local:8080/video.mjpg"),
    ("https://ghp_hunter2@example.com/clip.mp4", "https://***@example.com/clip.mp4"),
    ("RTSP://Admin:Hunter2@CAM/x", "RTSP://Admin:***@CAM/x"),
    # a raw '@' and ':' in the password: the last '@' before the path ends the user part
    ("rtsp://admin:hun@ter:2@10.0.0.7/live", "rtsp://admin:***@10.0.0.7/live"),
    ("rtsp://ad%40min:hun%3Ater2@10.0.0.7/live", "rtsp://ad%40min:***@10.0.0.7/live"),
    ("rtsp://admin:hunter2@[2001:db8::7]:8554/live", "rtsp://admin:***@[2001:db8::7]:8554/live"),
    ("rtsp://[fe80::1%25eth0]:554/live?channel=1", "rtsp://[fe80::1%25eth0]:554/live?channel=1"),
    ("rtsp://10.0.0.7/live?token=hunter2", "rtsp://10.0.0.7/live?token=***"),
    ("rtsp://10.0.0.7/live?channel=1&password=hunter2&subtype=0", "rtsp://10.0.0.7/live?channel=1&password=***&subtype=0"),
    ("rtsp://10.0.0.7/live?PASS=hunter2;pwd=hunter2", "rtsp://10.0.0.7/live?PASS=***;pwd=***"),
    ("https://h.example/v.m3u8?Key=hunter2&sig=hunter2&Signature=hunter2", "https://h.example/v.m3u8?Key=***&sig=***&Signature=***"),
    ("https://h.example/v?access_token=hunter2&api_key=hunter2&secret=hunter2&auth=hunter2",
     "https://h.example/v?access_token=***&api_key=***&secret=***&auth=***"),
    ("https://s3.example/v.mp4?X-Amz-Credential=AK%2F20240101&X-Amz-Signature=ab/cd==&X-Amz-Expires=60",
     "https://s3.example/v.mp4?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60"),
    ("https://h.example/v?to%6Ben=hunter2", "https://h.example/v?to%6Ben=***"),
    ("https://h.example/v#access_token=hunter2&state=1", "https://h.example/v#access_token=***&state=1"),
    # cameras that take the login in the path (XMEye style)
    ("rtsp://10.0.0.7:554/user=admin&password=hunter2&channel=1&stream=0.sdp?",
     "rtsp://10.0.0.7:554/user=admin&password=***&channel=1&stream=0.sdp?"),
    ("  rtsp://admin:hunter2@10.0.0.7/live?token=hunter2  ", "  rtsp://admin:***@10.0.0.7/live?token=***  "),
    ("error: rtsp://u:hunter2@h/x: cannot connect", "error: rtsp://u:***@h/x: cannot connect"),
    # nothing to hide: unchanged
    ("rtsp://10.0.0.7:554/Streaming/Channels/101?transportmode=unicast&profile=Profile_1",
     "rtsp://10.0.0.7:554/Streaming/Channels/101?transportmode=unicast&profile=Profile_1"),
    ("http://cam.local/video?keyframe=1&token=", "http://cam.local/video?keyframe=1&token="),
    ("/data/videos/lobby cam:2 user@site.mp4", "/data/videos/lobby cam:2 user@site.mp4"),
    ("webcam:0", "webcam:0"),
    ("clip.mp4", "clip.mp4"),
]


@pytest.mark.parametrize("url,shown", SHAPES, ids=[s[0].strip()[:60] for s in SHAPES])
def test_mask_secrets_over_url_shapes(url, shown):
    assert mask_secrets(url) == shown
    assert mask_secrets(shown) == shown  # masking what is already masked changes nothing
    assert "hunter2" not in mask_secrets(url)


SECRETS = ("pw1secret", "tok2secret", "pw3secret")


def _assert_nothing_leaks(res, out_dir):
    for secret in SECRETS:
        assert secret not in res.stdout and secret not in res.stderr, (res.stdout, res.stderr)
        for path in out_dir.rglob("*") if out_dir.exists() else ():
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("url", [
    " rtsp://user:pw1secret@127.0.0.1:1/x?token=tok2secret&Password=pw3secret ",
    "rtsp://:pw1secret@127.0.0.1:1/x?access_token=tok2secret#pwd=pw3secret",
    "http://user:pw1secret@127.0.0.1:1/x.mp4?api_key=tok2secret&sig=pw3secret",
])
def test_an_unreachable_url_never_writes_its_secrets(run_process, tmp_path, url):
    out = tmp_path / "out"
    res = run_process("--source", url, "--out", out, "--set", "enhance.method=bicubic",
                      "--set", "source.reconnect_attempts=1", "--set", "source.open_timeout=2",
                      "--set", "source.backoff_initial=0.1", timeout=90)
    assert res.returncode == EXIT_USER_ERROR
    line = assert_one_error_line(res.stderr, "127.0.0.1:1", "***")
    assert "user" in line or "://:***@" in line  # the URL is still recognisable
    _assert_nothing_leaks(res, out)
    if url.strip().startswith("rtsp"):  # a camera fails after the run began: its summary names it, masked
        summary = json.loads((out / "summary.json").read_text())
        assert "127.0.0.1:1" in summary["source"] and "***" in summary["source"] and "***" in summary["error"]
