"""Static HTML report of a run: `out_dir/index.html` from the run folder as `pipeline.run_folder.load_run`
reads it (tracks.jsonl, + identities.jsonl, summary.json when present). No JavaScript, no external
files; images are linked relatively, so the folder can be zipped or served as is.

Per track: identity (if recognition ran), time range, frame count (and the faces the tracker saw,
once the track ended), and for the best-quality face
the LR crop (shown enlarged with nearest-neighbour pixels), bicubic and SR side by side, then a
strip of SR frames across the track.

A multi-camera run (`pipeline.cameras`) has one such report per camera folder, and
`write_cameras_report` writes DIR/index.html: the totals and a row per camera linking its report.

Example:
    >>> write_report("out/demo")  # doctest: +SKIP
    PosixPath('out/demo/index.html')
"""
from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.files import atomic_write_bytes
from pipeline.run_folder import REPORT_FILE, REPORT_GENERATOR, FaceRecord, IdentityRecord, TrackEndRecord, load_run

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
table.summary td{padding:2px 10px 2px 0;vertical-align:top}
.track{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:14px 0}
.track h2{font-size:1.1em;margin:0 0 6px}
.meta{color:#555;font-size:.9em;margin-bottom:8px}
.ident{font-weight:bold;color:#0a5}
.ident.unknown{color:#a50}
figure{display:inline-block;margin:0 10px 6px 0;text-align:center}
figcaption{font-size:.8em;color:#555}
img{background:#eee;display:block}
img.lr{image-rendering:pixelated}
.strip img{display:inline-block;margin-right:3px}
"""


def _e(x: Any) -> str:
    """HTML-escape any value (attributes included)."""
    return html.escape(str(x), quote=True)


def _src(path: str) -> str:
    """A relative path as a safe src attribute value."""
    return _e(quote(path))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _summary_cell(v: Any) -> str:
    """A summary value; nested structures (e.g. the run's config) folded into <details>."""
    if isinstance(v, dict) and any(isinstance(x, (dict, list)) for x in v.values()):
        return f"<details><summary>show</summary><pre>{_e(json.dumps(v, indent=2))}</pre></details>"
    return _e(_fmt(v))


def _quality(rec: FaceRecord) -> float:
    return -math.inf if rec.quality is None else rec.quality


def _pick_strip(recs: list[FaceRecord], n: int) -> list[FaceRecord]:
    """Up to n records spread evenly over the track (first and last included)."""
    if len(recs) <= n:
        return recs
    if n <= 1:
        return recs[:n]
    return [recs[round(i * (len(recs) - 1) / (n - 1))] for i in range(n)]


def _figure(out_dir: Path, path: str | None, caption: str, size: int, cls: str = "") -> str:
    if not path or not (out_dir / path).is_file():
        return f'<figure><div style="width:{size}px;height:{size}px" class="missing"></div>' \
               f"<figcaption>{_e(caption)}: n/a</figcaption></figure>"
    return (f'<figure><img src="{_src(path)}" width="{size}" height="{size}" class="{cls}" '
            f'alt="{_e(caption)}" loading="lazy"><figcaption>{_e(caption)}</figcaption></figure>')


def _track_html(out_dir: Path, track_id: int, recs: list[FaceRecord], ident: IdentityRecord | None,
                end: TrackEndRecord | None, strip: int) -> str:
    best = max(recs, key=_quality)  # first of the best on ties (recs are in frame order)
    size = best.output_size
    times = [r.pts_time for r in recs if r.pts_time is not None]
    span = f"{min(times):.2f}s - {max(times):.2f}s" if times else "n/a"
    frames = f"frames {recs[0].frame_index}-{recs[-1].frame_index}"
    meta = [f"time {span}", f"faces {len(recs)}", frames,
            f"crop {min(r.crop_size for r in recs)}-{max(r.crop_size for r in recs)} px",
            f"output {size} px", f"method {best.method}"]
    if end is not None:
        meta.append(f"tracked frames {end.first_frame}-{end.last_frame}, {end.faces_seen} detections ({end.reason})")
    who = ""
    if ident:
        cls = "ident unknown" if ident.identity == "unknown" else "ident"
        who = (f' &middot; <span class="{cls}">{_e(ident.identity)}</span> '
               f'<small>(score {_e(_fmt(ident.score))}, votes {_e(ident.votes)}'
               f'/{_e(ident.frames)})</small>')
    q = _quality(best)
    q_text = f"{q:.3g}" if math.isfinite(q) else "n/a"
    best_figs = "".join([
        _figure(out_dir, best.lr_image, f"LR {best.crop_size} px (nearest)", size, "lr"),
        _figure(out_dir, best.bicubic_image, "bicubic", size),
        _figure(out_dir, best.image, f"SR ({best.method})", size),
    ])
    thumb = max(48, size // 2)
    strip_html = "".join(
        f'<img src="{_src(r.image)}" width="{thumb}" height="{thumb}" loading="lazy" '
        f'title="frame {_e(r.frame_index)}" alt="frame {_e(r.frame_index)}">'
        for r in _pick_strip(recs, strip) if (out_dir / r.image).is_file())
    return (f'<section class="track" id="track-{_e(track_id)}">'
            f"<h2>Track {_e(track_id)}{who}</h2>"
            f'<div class="meta">{_e(" | ".join(meta))}</div>'
            f"<div>{best_figs}</div>"
            f'<div class="meta">best face: frame {_e(best.frame_index)}, quality {_e(q_text)}</div>'
            f'<div class="strip">{strip_html}</div></section>')


def _page(title: str, body: str) -> bytes:
    # The generator tag tells a later run with --overwrite that this index.html is ours to replace.
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="{REPORT_GENERATOR}">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1>{body}</body></html>\n").encode("utf-8")


def write_report(out_dir: Path | str, *, strip: int = 8, title: str | None = None) -> Path:
    """Write `out_dir/index.html` atomically and return its path.

    `strip`: number of SR frames shown per track (0: none). Raises PipelineError if the folder has
    no tracks.jsonl, SinkError if index.html cannot be written.
    """
    out_dir = Path(out_dir)
    run = load_run(out_dir)
    by_track, idents, summary = run.tracks(), run.identities, run.summary
    title = title or f"Face tracks: {out_dir.resolve().name}"
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_summary_cell(v)}</td></tr>" for k, v in summary.items())
    n_faces = sum(len(r) for r in by_track.values())
    tracks_html = "".join(_track_html(out_dir, tid, recs, idents.get(tid), run.track_ends.get(tid), strip)
                          for tid, recs in by_track.items()) or "<p>No faces in this run.</p>"
    page = _page(title, f"<p>{len(by_track)} tracks, {n_faces} faces"
                        f"{f', {len(idents)} tracks with an identity decision' if idents else ''}.</p>"
                        f'<table class="summary">{rows}</table>{tracks_html}')
    path = out_dir / REPORT_FILE
    atomic_write_bytes(path, page)
    log.info("report: %s (%d tracks)", path, len(by_track))
    return path


def write_cameras_report(out_dir: Path | str, summary: dict[str, Any]) -> Path:
    """Write a multi-camera run's `out_dir/index.html` from its summary: the totals, then one row per
    camera linking the camera's own report (`<id>/index.html`); a failed camera's row says why."""
    out_dir = Path(out_dir)
    cols = ("state", "source", "frames_processed", "frames_dropped", "reconnects", "faces_detected",
            "faces_written", "tracks", "fps", "noise_sigma", "error")
    head = "".join(f"<th>{_e(c.replace('_', ' '))}</th>" for c in cols)
    rows = "".join(
        f'<tr><td><a href="{_src(f"{cam}/{REPORT_FILE}")}">{_e(cam)}</a></td>'
        + "".join(f"<td>{_e('' if info.get(c) is None else _fmt(info.get(c)))}</td>" for c in cols) + "</tr>"
        for cam, info in summary["cameras"].items())
    totals = {k: v for k, v in summary.items() if k != "cameras"}
    failed = f"; failed: {_e(', '.join(summary['failed']))}" if summary["failed"] else ""
    body = (f"<p>{len(summary['cameras'])} cameras, {summary['faces_written']} faces in {summary['tracks']} tracks"
            f"{failed}.</p>"
            f'<table class="summary"><tr><th>camera</th>{head}</tr>{rows}</table><h2>Totals</h2>'
            '<table class="summary">'
            + "".join(f"<tr><td>{_e(k)}</td><td>{_summary_cell(v)}</td></tr>" for k, v in totals.items())
            + "</table>")
    path = out_dir / REPORT_FILE
    atomic_write_bytes(path, _page(f"Cameras: {out_dir.resolve().name}", body))
    log.info("report: %s (%d cameras)", path, len(summary["cameras"]))
    return path
