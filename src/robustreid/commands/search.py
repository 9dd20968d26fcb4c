"""``robustreid search``: rank a gallery for query images with a trained checkpoint.

    robustreid search --checkpoint runs/synthperson/best.pth --query q1.jpg queries/ \\
        --gallery data/synthperson/bounding_box_test --topk 10 --out runs/search

The gallery is a folder of images (embedded with the checkpoint) or an embeddings ``.npz``
(arrays ``features`` and ``paths``, optionally ``pids``, ``camids``, ``meta``). Prints a table
and writes ``results.json``, ``ranked_list.png`` and ``index.html`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from robustreid.errors import UserError

DEFAULT_OUT = "runs/search"
#: gallery paths the missing-images warning names (the others are counted)
MISSING_LISTED = 3

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``search`` on the ``argparse`` sub-parsers; returns its parser."""
    parser = subparsers.add_parser(
        "search", help="rank a gallery for query images (top-k table, picture, HTML page)",
        description="Embed the query images with a checkpoint, search the gallery (a folder of "
        "images, embedded with the same checkpoint, or an embeddings .npz) and write "
        "results.json, ranked_list.png and index.html. Distances are Euclidean distances "
        "between L2-normalised embeddings, sqrt(2 - 2 cos), smaller is closer (with --rerank: "
        "the re-ranked distance, in [0, 1]).",
    )
    parser.add_argument("--checkpoint", required=True, help="trained checkpoint (best.pth)")
    parser.add_argument("--query", required=True, nargs="+", metavar="Q",
                        help="query images, folders of images (searched recursively), glob "
                        "patterns in quotes or list files (.txt, one path per line)")
    parser.add_argument("--gallery", required=True, metavar="G",
                        help="folder of gallery images, or an embeddings .npz with 'paths'")
    parser.add_argument("--topk", type=int, default=10,
                        help="results per query (default 10; clamped to the gallery size)")
    parser.add_argument("--rerank", action="store_true",
                        help="k-reciprocal re-ranking of each query's top max(100, 3k)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ...")
    parser.add_argument("--flip", action="store_true",
                        help="average each image's features with its mirror image's")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--max-rows", type=int, default=20,
                        help="queries in the printed table and the picture (default 20; "
                        "results.json and index.html hold all)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the search; returns 0 (errors are raised as UserError)."""
    import numpy as np

    from robustreid.inference.collect import collect_images
    from robustreid.inference.extractor import load
    from robustreid.inference.search import build_records, load_gallery, parse_ids, search
    from robustreid.io import atomic_write_text, ensure_writable_dir
    from robustreid.viz.ranked_list import draw_ranked_list, write_html

    for name, value in (("--topk", args.topk), ("--max-rows", args.max_rows),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{name}: expected a positive integer, got {value}")
    gallery = Path(args.gallery)
    if not gallery.exists():
        raise UserError(f"--gallery {gallery}: no such folder or file (expected a "
                                "folder of images or an embeddings .npz)")
    if gallery.is_file() and gallery.suffix.lower() != ".npz":
        raise UserError(f"--gallery {gallery}: expected a folder of images or an embeddings "
                         f".npz, got a {gallery.suffix or 'suffix-less'} file")
    embeddings = load_gallery(gallery) if gallery.is_file() else None
    if not Path(args.checkpoint).is_file():
        raise UserError(f"--checkpoint {args.checkpoint}: no such file")
    query_paths = collect_images(args.query)
    out = ensure_writable_dir(args.out, "--out")  # before the embedding work, not after
    extractor = load(args.checkpoint, device=args.device, flip=args.flip,
                     batch_size=args.batch_size)
    progress = sys.stderr.isatty()
    query_features = extractor(query_paths, progress=progress)
    notes = []
    if embeddings is not None:
        if embeddings.dim != query_features.shape[1]:
            raise UserError(
                f"--gallery {gallery}: its embeddings have dimension D={embeddings.dim} but "
                f"the checkpoint {args.checkpoint} produces D={query_features.shape[1]}; embed "
                "the gallery with the same checkpoint"
            )
        stored_flip = embeddings.meta.get("flip")
        if isinstance(stored_flip, bool) and stored_flip != args.flip:
            notes.append(f"the gallery was embedded with flip={stored_flip}, the queries "
                         f"with flip={args.flip}")
        gallery_paths = list(embeddings.paths)
        gallery_features = embeddings.features
        gallery_pids, gallery_camids = embeddings.pids, embeddings.camids
    else:
        gallery_paths = [str(p) for p in collect_images(gallery)]
        gallery_features = extractor(gallery_paths, progress=progress).numpy()
        gallery_pids, gallery_camids = parse_ids(gallery_paths)
    result = search(query_features, gallery_features, k=args.topk, rerank=args.rerank)
    notes = result.notes + notes
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    query_strs = [str(p) for p in query_paths]
    records = build_records(result, query_strs, gallery_paths,
                            gallery_pids=gallery_pids, gallery_camids=gallery_camids)
    print(format_table(records, args.max_rows))
    missing = missing_gallery_images(records)
    if missing:
        warning = format_missing(missing, records, gallery)
        logger.warning("%s", warning)
        print(f"warning: {warning}")
        notes.append(warning)

    distance = ("Euclidean distance between L2-normalised embeddings, sqrt(2 - 2 cos)"
                if result.metric == "euclidean" else
                "k-reciprocal re-ranked distance in [0, 1] ('euclidean' holds sqrt(2 - 2 cos))")
    document = {
        "checkpoint": str(args.checkpoint), "gallery": str(gallery),
        "num_queries": len(records), "num_gallery": len(gallery_paths),
        "k": result.k, "requested_k": result.requested_k, "metric": result.metric,
        "distance": distance, "num_candidates": result.num_candidates,
        "backend": result.backend, "flip": bool(args.flip), "notes": notes, "queries": records,
    }
    json_path = atomic_write_text(out / "results.json", json.dumps(document, indent=2) + "\n")
    matches = [[item["match"] for item in rec["results"]] for rec in records]
    png_path = draw_ranked_list(query_strs, gallery_paths, result.indices, matches,
                                out / "ranked_list.png", max_queries=args.max_rows,
                                distances=np.asarray(result.distances))
    page_notes = [f"checkpoint: {args.checkpoint}",
                  f"gallery: {gallery} ({len(gallery_paths)} items); distance: {distance}",
                  *notes]
    html_path = write_html(records, out / "index.html", notes=page_notes)
    for label, path in (("results", json_path), ("ranked list", png_path),
                        ("page", html_path)):
        print(f"{label}: {path}")
    return 0


def missing_gallery_images(records: list[dict[str, Any]]) -> list[str]:
    """The gallery paths among the results that are no longer files, in order of first
    appearance (each once)."""
    seen: set[str] = set()
    missing = []
    for rec in records:
        for item in rec["results"]:
            path = item["path"]
            if path not in seen:
                seen.add(path)
                if not os.path.isfile(path):
                    missing.append(path)
    return missing


def format_missing(missing: list[str], records: list[dict[str, Any]], gallery: Path) -> str:
    """One line: how many gallery images in the results are missing, the first few."""
    total = len({item["path"] for rec in records for item in rec["results"]})
    listed = ", ".join(missing[:MISSING_LISTED])
    more = f" and {len(missing) - MISSING_LISTED} more" if len(missing) > MISSING_LISTED else ""
    return (f"{len(missing)} of the {total} gallery images in the results are missing (moved "
            f"or deleted since {gallery} was made?): {listed}{more}; the picture shows them as "
            "'missing' tiles")


def format_table(records: list[dict[str, Any]], max_queries: int) -> str:
    """Text table of the first ``max_queries`` records: query file, rank, distance, gallery
    file, match (``yes``, ``no``, ``?`` for unknown ids)."""
    marks = {True: "yes", False: "no", None: "?"}
    rows = [("query", "rank", "distance", "gallery file", "match")]
    for rec in records[:max_queries]:
        query_name = Path(rec["query"]["path"]).name
        for item in rec["results"]:
            rows.append((query_name, str(item["rank"]), f"{item['distance']:.4f}",
                         Path(item["path"]).name, marks[item["match"]]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {1, 2}
    lines = ["  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                       for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(records) > max_queries:
        lines.append(f"... {len(records) - max_queries} more queries in results.json")
    return "\n".join(lines)
