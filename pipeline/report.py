"""Static HTML report of a run: `out_dir/index.html` from tracks.jsonl (+ identities.jsonl,
summary.json when present). No JavaScript, no external files; images are linked relatively,
so the folder can be zipped or served as is.

Per track: identity (if recognition ran), time range, frame count, and for the best-quality face
the LR crop (shown enlarged with nearest-neighbour pixels), bicubic and SR side by side, then a
strip of SR frames across the track.

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

from pipeline.errors import PipelineError
from pipeline.recognition import load_events
from pipeline.sinks import IDENTITIES_FILE, REPORT_FILE, SUMMARY_FILE, TRACKS_FILE, atomic_write_bytes

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


def _read_records(path: Path) -> list[dict]:
    """tracks.jsonl records; malformed lines (e.g. a line torn by a crash) are skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                int(rec["track_id"]), int(rec["frame_index"])
                image = Path(rec["image"])
                if image.is_absolute() or ".." in image.parts:
                    raise ValueError("image path outside the run folder")
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d: malformed record skipped", path, n)
                continue
            records.append(rec)
    return records


def _quality(rec: dict) -> float:
    q = rec.get("quality")
    return float(q) if isinstance(q, (int, float)) and math.isfinite(q) else -math.inf


def _pick_strip(recs: list[dict], n: int) -> list[dict]:
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


def _track_html(out_dir: Path, track_id: int, recs: list[dict], ident: dict | None, strip: int) -> str:
    recs = sorted(recs, key=lambda r: int(r["frame_index"]))
    best = max(recs, key=_quality)  # first of the best on ties
    size = int(best.get("output_size") or 128)
    times = [r["pts_time"] for r in recs if isinstance(r.get("pts_time"), (int, float))]
    span = f"{min(times):.2f}s - {max(times):.2f}s" if times else "n/a"
    frames = f"frames {recs[0]['frame_index']}-{recs[-1]['frame_index']}"
    meta = [f"time {span}", f"faces {len(recs)}", frames,
            f"crop {min(r.get('crop_size', 0) for r in recs)}-{max(r.get('crop_size', 0) for r in recs)} px",
            f"output {size} px", f"method {best.get('method', '?')}"]
    who = ""
    if ident:
        name = str(ident.get("identity", "unknown"))
        cls = "ident unknown" if name == "unknown" else "ident"
        who = (f' &middot; <span class="{cls}">{_e(name)}</span> '
               f'<small>(score {_e(_fmt(ident.get("score")))}, votes {_e(ident.get("votes"))}'
               f'/{_e(ident.get("frames"))})</small>')
    q = _quality(best)
    q_text = f"{q:.3g}" if math.isfinite(q) else "n/a"
    best_figs = "".join([
        _figure(out_dir, best.get("lr_image"), f"LR {best.get('crop_size', '?')} px (nearest)", size, "lr"),
        _figure(out_dir, best.get("bicubic_image"), "bicubic", size),
        _figure(out_dir, best["image"], f"SR ({best.get('method', '?')})", size),
    ])
    thumb = max(48, size // 2)
    strip_html = "".join(
        f'<img src="{_src(r["image"])}" width="{thumb}" height="{thumb}" loading="lazy" '
        f'title="frame {_e(r["frame_index"])}" alt="frame {_e(r["frame_index"])}">'
        for r in _pick_strip(recs, strip) if (out_dir / r["image"]).is_file())
    return (f'<section class="track" id="track-{_e(track_id)}">'
            f"<h2>Track {_e(track_id)}{who}</h2>"
            f'<div class="meta">{_e(" | ".join(meta))}</div>'
            f"<div>{best_figs}</div>"
            f'<div class="meta">best face: frame {_e(best["frame_index"])}, quality {_e(q_text)}</div>'
            f'<div class="strip">{strip_html}</div></section>')


def write_report(out_dir: Path | str, *, strip: int = 8, title: str | None = None) -> Path:
    """Write `out_dir/index.html` atomically and return its path.

    `strip`: number of SR frames shown per track (0: none). Raises PipelineError if the folder has
    no tracks.jsonl, SinkError if index.html cannot be written.
    """
    out_dir = Path(out_dir)
    tracks_path = out_dir / TRACKS_FILE
    if not tracks_path.is_file():
        raise PipelineError(f"no {TRACKS_FILE} in {out_dir}: not a run output folder")
    by_track: dict[int, list[dict]] = {}
    for rec in _read_records(tracks_path):
        by_track.setdefault(int(rec["track_id"]), []).append(rec)
    idents = load_events(out_dir / IDENTITIES_FILE) if (out_dir / IDENTITIES_FILE).is_file() else {}
    summary: dict = {}
    if (out_dir / SUMMARY_FILE).is_file():
        try:
            summary = json.loads((out_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        except ValueError:
            log.warning("%s: unreadable, summary left out", out_dir / SUMMARY_FILE)
    title = title or f"Face tracks: {out_dir.resolve().name}"
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_summary_cell(v)}</td></tr>" for k, v in summary.items())
    n_faces = sum(len(r) for r in by_track.values())
    tracks_html = "".join(_track_html(out_dir, tid, by_track[tid], idents.get(tid), strip)
                          for tid in sorted(by_track)) or "<p>No faces in this run.</p>"
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1>"
            f"<p>{len(by_track)} tracks, {n_faces} faces"
            f"{f', {len(idents)} tracks with an identity decision' if idents else ''}.</p>"
            f'<table class="summary">{rows}</table>{tracks_html}</body></html>\n')
    path = out_dir / REPORT_FILE
    atomic_write_bytes(path, page.encode("utf-8"))
    log.info("report: %s (%d tracks)", path, len(by_track))
    return path
