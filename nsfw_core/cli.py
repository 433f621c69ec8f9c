"""Command line: ``nsfw-classify PATH|URL|DIR ... [--manifest FILE] [--model NAME] [--format json|table]``.

(``python -m nsfw_core`` is the same; ``--server URL`` classifies on a running service instead.)

json prints one JSON object per line (JSON Lines), one line per input:
``{"source": ..., "scores": {...}, "verdict": ...}`` or ``{"source": ..., "error": {"code", "message"}}``.
Folders are walked for image files.  Exit status: 0 when every input was
classified, 1 when any failed, 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence, TextIO

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.base.settings import MODEL_NAMES, SettingsError, load_settings
from nsfw_core.calibration.labelsets import load_manifest
from nsfw_core.classify import Outcome
from nsfw_core.context import Context
from nsfw_core.inference.pipeline import iter_sources

PROGRESS_MIN_ITEMS = 8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsfw-classify",
        description="Classify images (files, folders or URLs) into drawings, hentai, neutral, porn, sexy.",
    )
    parser.add_argument("inputs", nargs="*", metavar="PATH|URL|DIR")
    parser.add_argument("--manifest", action="append", default=[], metavar="FILE",
                        help="a labelled-set manifest (.csv or .json: path or URL, label), e.g. the review "
                             "queue's export; its rows are classified and their label is kept in the output")
    parser.add_argument("--model", choices=MODEL_NAMES, help="model to use (default: NSFW_MODEL, MobileNetV2Mid)")
    parser.add_argument("--format", choices=("json", "table"), default="json")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--server", metavar="URL",
                        help="classify on a running service (API v1, nsfw_core.client) instead of here: files are "
                             "sent as base64, URLs fetched by the server; retries 429/503 after Retry-After")
    parser.add_argument("--api-key", metavar="KEY", default=os.environ.get("NSFW_SERVER_API_KEY"),
                        help="the service's API key with --server (default: $NSFW_SERVER_API_KEY)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests at once with --server (default 4)")
    return parser


def _progress(total: int, stream: TextIO) -> Any:
    if total < PROGRESS_MIN_ITEMS or not stream.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=stream)


def _table(results: Sequence[Outcome]) -> str:
    width = max([len("source")] + [len(r.source) for r in results])
    head = f"{'source':<{width}}  " + "  ".join(f"{c:>8}" for c in CLASS_NAMES) + "  verdict"
    lines = [head, "-" * len(head)]
    for r in results:
        if r.classification is not None:
            cells = "  ".join(f"{r.classification.scores[c]:>8.4f}" for c in CLASS_NAMES)
            lines.append(f"{r.source:<{width}}  {cells}  {r.classification.verdict}")
        else:
            assert r.error is not None
            lines.append(f"{r.source:<{width}}  error {r.error.code}: {r.error.message}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=stderr)
        return 2
    if args.server:
        return _remote(args, stdout, stderr)
    note = logging.StreamHandler(stderr)  # "unpacked ..." or "compiling ... for LiteRT" on a model's first use
    note.setFormatter(logging.Formatter("%(message)s"))
    compiler_log = logging.getLogger("nsfw_core.inference.litert")
    compiler_log.addHandler(note)
    compiler_log.setLevel(logging.INFO)
    try:
        ctx = Context(load_settings())
    except SettingsError as exc:
        compiler_log.removeHandler(note)
        print(f"error: {exc}", file=stderr)
        return 2
    try:
        try:
            ctx.models.get(args.model)
        except NSFWError as exc:
            print(f"error: {exc}", file=stderr)
            return 2
        finally:
            compiler_log.removeHandler(note)
        return _run(ctx, args, stdout, stderr)
    finally:
        ctx.close()


def _remote(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """``--server URL``: the same lines, classified by a running service through :mod:`nsfw_core.client`."""
    from nsfw_core.client import Client
    from nsfw_core.client import classify_sources as classify_remote

    if args.manifest:
        print("error: --manifest is not supported with --server", file=stderr)
        return 2
    if not args.inputs:
        print("error: give at least one PATH, URL or DIR", file=stderr)
        return 2
    sources = iter_sources(args.inputs)
    if not sources:
        print("error: no image files found", file=stderr)
        return 1
    bar = _progress(len(sources), stderr)
    try:
        with Client(args.server, args.api_key) as client:
            rows = classify_remote(client, sources, model=args.model, workers=args.concurrency,
                                   progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    for row in rows:
        if args.format == "json":
            print(json.dumps(row), file=stdout)
        elif "error" in row:
            print(f"{row['source']}  error {row['error']['code']}: {row['error']['message']}", file=stdout)
        else:
            cells = "  ".join(f"{row['scores'][c]:>8.4f}" for c in CLASS_NAMES)
            print(f"{row['source']}  {cells}  {row['verdict']}", file=stdout)
    failed = sum("error" in r for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} inputs failed", file=stderr)
    return 1 if failed else 0


def _run(ctx: Context, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    labels: dict[str, str] = {}
    try:
        for manifest in args.manifest:
            for item in load_manifest(manifest):
                labels.setdefault(item.source, item.label)
    except NSFWError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    sources = iter_sources(args.inputs) + list(labels)
    if not args.inputs and not args.manifest:
        print("error: give at least one PATH, URL, DIR or --manifest", file=stderr)
        return 2
    if not sources:
        print("error: no image files found", file=stderr)
        return 1
    bar = _progress(len(sources), stderr)
    try:
        results = ctx.classifier.sources(sources, model_name=args.model, batch_size=args.batch_size,
                                   progress=bar.update if bar is not None else None, long_videos=True)
    finally:
        if bar is not None:
            bar.close()
    if args.format == "json":
        for r in results:
            row = r.to_dict()
            if r.source in labels:  # the label goes before the verdict, as it always has
                verdict = row.pop("verdict", None)
                row["label"] = labels[r.source]
                if verdict is not None:
                    row["verdict"] = verdict
            print(json.dumps(row), file=stdout)
    else:
        print(_table(results), file=stdout)
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"{failed} of {len(results)} inputs failed", file=stderr)
    return 1 if failed else 0
