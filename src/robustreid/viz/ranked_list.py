"""Ranked lists of a gallery search as a PNG grid and as a static HTML page.

Colour code (PNG frames and HTML borders alike): the query is framed blue; each result green
when it shows the query's person id, red when it shows another id, grey when either id is
unknown.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from robustreid.data.base import to_rgb
from robustreid.io import atomic_write, atomic_write_text

__all__ = [
    "MATCH_COLOUR",
    "MISMATCH_COLOUR",
    "QUERY_COLOUR",
    "UNKNOWN_COLOUR",
    "draw_ranked_list",
    "frame_colour",
    "frame_width",
    "image_url",
    "write_html",
]

QUERY_COLOUR = (30, 90, 230)
MATCH_COLOUR = (0, 170, 0)
MISMATCH_COLOUR = (220, 30, 30)
UNKNOWN_COLOUR = (150, 150, 150)
_BACKGROUND = (255, 255, 255)
_PLACEHOLDER = (225, 225, 225)


def frame_colour(match: bool | None) -> tuple[int, int, int]:
    """RGB frame colour of a result: green (``True``), red (``False``), grey (``None``)."""
    if match is None:
        return UNKNOWN_COLOUR
    return MATCH_COLOUR if match else MISMATCH_COLOUR


def frame_width(cell: tuple[int, int]) -> int:
    """Frame thickness in pixels for a ``(height, width)`` cell: ``max(2, min(cell) // 16)``
    (4 pixels for the default 128 x 64 cell)."""
    return max(2, min(cell) // 16)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _load_thumbnail(path: str | Path, size: tuple[int, int]) -> Image.Image | None:
    """The image at ``path`` letterboxed to ``size`` = (width, height), or ``None`` when it
    cannot be read (missing or corrupt file)."""
    try:
        with Image.open(path) as img:
            return ImageOps.pad(to_rgb(img), size, color=_BACKGROUND)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _draw_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, origin: tuple[int, int],
               cell: tuple[int, int], path: str | Path, colour: tuple[int, int, int],
               label: str, caption: str | None, font: Any) -> None:
    """Frame, image, label (top left, on the frame colour) and caption (bottom) of one cell."""
    x0, y0 = origin
    height, width = cell
    border = frame_width(cell)
    draw.rectangle([x0, y0, x0 + width - 1, y0 + height - 1], fill=colour)
    inner = (width - 2 * border, height - 2 * border)
    thumb = _load_thumbnail(path, inner)
    if thumb is None:  # a gallery file that moved since it was embedded
        ix0, iy0 = x0 + border, y0 + border
        draw.rectangle([ix0, iy0, ix0 + inner[0] - 1, iy0 + inner[1] - 1], fill=_PLACEHOLDER)
        draw.line([ix0, iy0, ix0 + inner[0] - 1, iy0 + inner[1] - 1], fill=UNKNOWN_COLOUR)
        draw.line([ix0, iy0 + inner[1] - 1, ix0 + inner[0] - 1, iy0], fill=UNKNOWN_COLOUR)
        draw.text((ix0 + 2, iy0 + inner[1] // 2 - 5), "missing", fill=(0, 0, 0), font=font)
    else:
        canvas.paste(thumb, (x0 + border, y0 + border))
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    box = (x0 + border, y0 + border, x0 + border + right - left + 3, y0 + border + bottom + 2)
    draw.rectangle(box, fill=colour)
    draw.text((box[0] + 2 - left, box[1] + 1), label, fill=(255, 255, 255), font=font)
    if caption:
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        y_text = y0 + height - border - bottom - 2
        draw.rectangle([x0 + border, y_text - 1, x0 + border + right - left + 3,
                        y0 + height - border - 1], fill=_BACKGROUND)
        draw.text((x0 + border + 2 - left, y_text), caption, fill=(0, 0, 0), font=font)


def draw_ranked_list(query_paths: Sequence[str | Path], gallery_paths: Sequence[str | Path],
                     indices: np.ndarray | Sequence[Sequence[int]],
                     matches: np.ndarray | Sequence[Sequence[bool | None]],
                     out_png: str | Path, cell: tuple[int, int] = (128, 64),
                     max_queries: int = 20,
                     distances: np.ndarray | Sequence[Sequence[float]] | None = None) -> Path:
    """Draw one row per query: the query (blue frame, label ``Q``) then its top-k results,
    each framed green (same person id), red (another id) or grey (unknown), labelled with its
    rank (1 = nearest) and, when ``distances`` are given, captioned with its distance.

    Args:
        query_paths: ``Q`` query image paths.
        gallery_paths: ``G`` gallery image paths (unreadable ones are drawn as a grey
            "missing" placeholder).
        indices: ``(Q, k)`` gallery indices, best first.
        matches: ``(Q, k)`` ``True``/``False``/``None`` per result.
        out_png: the PNG to write (atomically; parent folders created).
        cell: ``(height, width)`` of one cell in pixels, frame included (images are
            letterboxed into it, aspect ratio kept); at least 16 x 16.
        max_queries: draw the first ``min(Q, max_queries)`` queries only.
        distances: optional ``(Q, k)`` distances shown under each result (3 decimals).

    Returns:
        The path written. The picture is ``rows * cell[0]`` pixels high and ``(1 + k) *
        cell[1]`` wide, ``rows = min(Q, max_queries)``, with no gaps: cell ``(r, c)`` (column 0
        the query) starts at pixel ``x = c * cell[1]``, ``y = r * cell[0]``, and its outer
        :func:`frame_width` pixels are the frame.
    """
    height, width = (int(v) for v in cell)
    if height < 16 or width < 16:
        raise ValueError(f"cell: expected (height, width) of at least 16 x 16 pixels, got {cell}")
    if max_queries < 1:
        raise ValueError(f"max_queries: expected a positive integer, got {max_queries}")
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 2 or idx.shape[0] != len(query_paths):
        raise ValueError(f"indices: expected shape (Q={len(query_paths)}, k), got {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= len(gallery_paths)):
        raise ValueError(f"indices: gallery indices must lie in [0, {len(gallery_paths)})")
    match_rows = [list(row) for row in matches]
    if len(match_rows) != idx.shape[0] or any(len(row) != idx.shape[1] for row in match_rows):
        raise ValueError(f"matches: expected {idx.shape[0]} rows of {idx.shape[1]} values "
                         "(True, False or None)")
    dist = None if distances is None else np.asarray(distances, dtype=np.float64)
    if dist is not None and dist.shape != idx.shape:
        raise ValueError(f"distances: expected shape {idx.shape}, got {dist.shape}")
    rows = min(idx.shape[0], max_queries)
    if rows == 0:
        raise ValueError("no queries to draw")
    canvas = Image.new("RGB", ((1 + idx.shape[1]) * width, rows * height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r in range(rows):
        y = r * height
        _draw_cell(canvas, draw, (0, y), (height, width), query_paths[r], QUERY_COLOUR, "Q",
                   None, font)
        for c, g in enumerate(idx[r]):
            caption = None if dist is None else f"{dist[r, c]:.3f}"
            _draw_cell(canvas, draw, ((c + 1) * width, y), (height, width), gallery_paths[g],
                       frame_colour(match_rows[r][c]), str(c + 1), caption, font)
    return atomic_write(out_png, lambda handle: canvas.save(handle, format="PNG"))


def image_url(path: str | Path, html_dir: str | Path) -> str:
    """URL of the image ``path`` for a page in ``html_dir``: the path **relative to the page's
    folder** (relative ``path`` values are taken from the current working directory), or an
    absolute ``file://`` URL where no relative path exists (another drive on Windows)."""
    target = Path(path).resolve()
    try:
        rel = os.path.relpath(target, Path(html_dir).resolve())
    except ValueError:
        return target.as_uri()
    return quote(Path(rel).as_posix())


def write_html(records: Sequence[dict[str, Any]], out_html: str | Path,
               title: str = "robustreid search", notes: Sequence[str] = (),
               max_queries: int | None = None) -> Path:
    """Write a static page of ranked lists (one row per query, same colours as the PNG), with
    ranks, distances, file names and ids.

    Images are referenced by their path **relative to the page's folder** (see
    :func:`image_url`), so the page works while the page and the images keep their relative
    positions (e.g. both copied together), and from any web server rooted above both.

    Args:
        records: the output of :func:`robustreid.inference.search.build_records`.
        out_html: the page to write (atomically; parent folders created).
        title: the page title.
        notes: lines shown under the title (e.g. the checkpoint, the re-ranking used).
        max_queries: show only the first ``max_queries`` queries (``None``: all).

    Returns:
        The path written.
    """
    out_html = Path(out_html)
    page_dir = out_html.parent if out_html.parent != Path("") else Path(".")
    shown = list(records if max_queries is None else records[:max_queries])
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>", "<style>",
        "body{font-family:sans-serif;margin:1em;background:#fafafa}",
        ".row{display:flex;flex-wrap:nowrap;align-items:flex-start;gap:6px;margin:0 0 14px;"
        "overflow-x:auto}",
        "figure{margin:0;width:104px;text-align:center;font-size:11px}",
        "figure img{width:88px;height:176px;object-fit:contain;border:4px solid;"
        "background:#fff}",
        "figcaption{word-break:break-all}", ".sep{width:12px}",
        "</style>", "</head>", "<body>", f"<h1>{esc(title)}</h1>",
    ]
    for note in notes:
        parts.append(f"<p>{esc(str(note))}</p>")
    top1 = [rec["results"][0]["match"] for rec in records
            if rec["results"] and rec["results"][0]["match"] is not None]
    summary = f"{len(records)} queries"
    if len(shown) < len(records):
        summary += f" ({len(shown)} shown)"
    if top1:
        summary += (f"; rank-1 correct for {sum(top1)} of the {len(top1)} queries with known "
                    "ids")
    parts.append(f"<p>{esc(summary)}</p>")
    parts.append(
        f'<p>Frames: <b style="color:{_hex(QUERY_COLOUR)}">query</b>, '
        f'<b style="color:{_hex(MATCH_COLOUR)}">same id</b>, '
        f'<b style="color:{_hex(MISMATCH_COLOUR)}">different id</b>, '
        f'<b style="color:{_hex(UNKNOWN_COLOUR)}">unknown id</b>.</p>'
    )
    for rec in shown:
        query = rec["query"]
        parts.append('<div class="row">')
        parts.append(_figure(query["path"], page_dir, QUERY_COLOUR, "query",
                             _ids_text(query)))
        parts.append('<div class="sep"></div>')
        for item in rec["results"]:
            head = f"#{item['rank']} d={item['distance']:.3f}"
            parts.append(_figure(item["path"], page_dir, frame_colour(item["match"]), head,
                                 _ids_text(item)))
        parts.append("</div>")
    parts += ["</body>", "</html>", ""]
    return atomic_write_text(out_html, "\n".join(parts))


def _ids_text(item: dict[str, Any]) -> str:
    pid = "?" if item.get("pid") is None else item["pid"]
    cam = "?" if item.get("camid") is None else item["camid"]
    return f"pid {pid} cam {cam}"


def _figure(path: str, page_dir: Path, colour: tuple[int, int, int], head: str,
            ids: str) -> str:
    esc = html.escape
    name = Path(path).name
    return (f'<figure><img src="{esc(image_url(path, page_dir))}" alt="{esc(name)}" '
            f'title="{esc(str(path))}" style="border-color:{_hex(colour)}">'
            f"<figcaption><b>{esc(head)}</b><br>{esc(name)}<br>{esc(ids)}</figcaption>"
            "</figure>")
