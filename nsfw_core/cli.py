"""Command line: ``nsfw-classify PATH|URL|DIR ... [--manifest FILE] [--model NAME] [--format json|table]``.

(``python -m nsfw_core`` is the same; ``--server URL`` classifies on a running service instead.)

``nsfw-classify adapter train|publish|list|show|rollback|export ...`` and ``nsfw-classify examples
add|list|remove ...`` manage adapters and example sets (issue 26) in the database the server reads
(``NSFW_DATA_DIR`` / ``NSFW_DATABASE_URL``); see the section at the end of this module.  (To classify a
file named ``adapter`` or ``examples``, write ``./adapter``.)

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
import time
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in POLICY_COMMANDS:
        return policy_main(argv, stdout, stderr)
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


# ---------------------------------------------------------------- adapters and example sets (issue 26)

POLICY_COMMANDS = ("adapter", "examples")


def policy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsfw-classify", description="Adapters and example sets: teach the "
                                     "service your policy (written to the database the server reads).")
    kinds = parser.add_subparsers(dest="kind", required=True)
    adapter = kinds.add_parser("adapter", help="train, publish, list and roll back adapters")
    acts = adapter.add_subparsers(dest="action", required=True)
    train = acts.add_parser("train", help="train an adapter and print its report (JSON)")
    train.add_argument("manifests", nargs="*", metavar="MANIFEST",
                       help="labelled sets: a manifest (.csv/.json: path or URL, label) or a folder (one sub-folder "
                            "per label, or holding a manifest); adult = what to block, safe = what to allow")
    train.add_argument("--name", required=True, help="the adapter's name (a new version of it is stored)")
    train.add_argument("--reviewed", action="store_true",
                       help="also learn from the review queue's decided items (those whose embedding was kept)")
    train.add_argument("--model", choices=MODEL_NAMES, help="the model whose embeddings it reads (default NSFW_MODEL)")
    train.add_argument("--adult-labels", default="porn,sexy,hentai", metavar="LABELS",
                       help="five-class labels that count as adult (default porn,sexy,hentai); adult/safe labels "
                            "are used as they are")
    train.add_argument("--target-recall", type=float, default=0.9, help="recall at which precision is reported")
    train.add_argument("--target-adult-precision", type=float, default=0.99)
    train.add_argument("--target-safe-precision", type=float, default=0.99)
    train.add_argument("--folds", type=int, default=5, help="held-out folds (default 5)")
    train.add_argument("--by", help="who trains it (recorded; default cli:<user>)")
    train.add_argument("--note", default="")
    train.add_argument("--batch-size", type=int, default=16)
    publish = acts.add_parser("publish", help="put an adapter in force (refused when its report did not pass)")
    publish.add_argument("name")
    publish.add_argument("--version", type=int, help="default: its newest version")
    publish.add_argument("--by")
    lister = acts.add_parser("list", help="the adapters in force, the versions trained and the publications (JSON)")
    lister.add_argument("--name")
    show = acts.add_parser("show", help="one version with its report (JSON)")
    show.add_argument("name", metavar="NAME[@VERSION]")
    export = acts.add_parser("export", help="one version's head and thresholds (JSON, numbers only)")
    export.add_argument("name", metavar="NAME[@VERSION]")
    rollback = acts.add_parser("rollback", help="put the previously published adapter (or the base model) back")
    rollback.add_argument("--model", choices=MODEL_NAMES, help="default NSFW_MODEL")
    target = rollback.add_mutually_exclusive_group()
    target.add_argument("--to", metavar="NAME@VERSION", help="an adapter published for this model before")
    target.add_argument("--base", action="store_true", help="no adapter: the base model judges")
    rollback.add_argument("--by")

    examples = kinds.add_parser("examples", help="example sets: images like these are blocked (or allowed) now")
    acts = examples.add_subparsers(dest="action", required=True)
    add = acts.add_parser("add", help="add (or replace) an example set; prints its threshold and false-match rate")
    add.add_argument("name")
    side = add.add_mutually_exclusive_group(required=True)
    side.add_argument("--block", action="store_true", help="images like these get the verdict adult")
    side.add_argument("--allow", action="store_true", help="images like these get the verdict safe")
    add.add_argument("images", nargs="+", metavar="IMAGE|DIR")
    add.add_argument("--background", action="append", default=[], metavar="IMAGE|DIR|MANIFEST",
                     help="images that are not what the set is for, to choose the threshold against (default: the "
                          "demo set, data/demo)")
    add.add_argument("--false-match", type=float, default=0.01,
                     help="the share of the background that may match (default 0.01)")
    add.add_argument("--model", choices=MODEL_NAMES)
    add.add_argument("--by")
    acts.add_parser("list", help="the example sets in force (JSON)")
    remove = acts.add_parser("remove", help="take an example set out of force")
    remove.add_argument("name")
    remove.add_argument("--by")
    return parser


def _who(by: str | None) -> str:
    if by:
        return by
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment
        return "cli"


def _name_version(text: str) -> tuple[str, int | None]:
    name, _, version = text.partition("@")
    if version and not version.isdigit():
        raise ValueError(f"{text!r}: expected NAME or NAME@VERSION")
    return name, int(version) if version else None


def _json(doc: Any, stdout: TextIO) -> None:
    print(json.dumps(doc, indent=1, sort_keys=True, default=str), file=stdout)


def policy_main(argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    """``nsfw-classify adapter ...`` / ``nsfw-classify examples ...``: 0 done, 1 refused or failed, 2 usage."""
    args = policy_parser().parse_args(argv)
    try:
        ctx = Context(load_settings())
    except SettingsError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    try:
        if args.kind == "adapter":
            return _adapter(ctx, args, stdout, stderr)
        return _examples(ctx, args, stdout, stderr)
    except NSFWError as exc:
        print(f"error: {exc.message}", file=stderr)
        if exc.details:
            _json({"error": exc.to_dict()}, stdout)
        return 1 if exc.status in (404, 409, 503) else 2
    except ValueError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    finally:
        ctx.close()


def _embed(ctx: Context, model: Any, items: Sequence[Any], batch_size: int, stderr: TextIO) -> list[Any]:
    bar = _progress(len(items), stderr)
    last = [0]

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - last[0])
            last[0] = done

    try:
        return ctx.score_cache.embed_items(model, items, ctx.decoder, ctx.load_bytes, progress, batch_size=batch_size)
    finally:
        if bar is not None:
            bar.close()


def _adapter(ctx: Context, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from nsfw_core.base.labels import make_binary_map
    from nsfw_core.calibration import adapters as training
    from nsfw_core.calibration.labelsets import load_path

    store = ctx.adapters
    if args.action == "train":
        if not args.manifests and not args.reviewed:
            print("error: give a MANIFEST (or folder), --reviewed, or both", file=stderr)
            return 2
        if not training.sklearn_available():
            print(f"error: {training.INSTALL_HINT}", file=stderr)
            return 2
        targets = training.Targets(args.target_recall, args.target_adult_precision, args.target_safe_precision)
        binary_map = make_binary_map([a for a in args.adult_labels.split(",") if a.strip()])
        model = ctx.models.get(args.model)
        examples: list[training.Example] = []
        failed: list[dict[str, Any]] = []
        embed_started = time.perf_counter()
        for manifest in args.manifests:
            items = load_path(manifest, binary_map=binary_map)
            got, lost = training.examples_from_set(_embed(ctx, model, items, args.batch_size, stderr))
            examples += got
            failed += lost
        missing = 0
        if args.reviewed:
            reviewed = ctx.review_queue.reviewed_items(binary_map)
            got, missing = training.examples_from_reviewed(
                reviewed, store.item_embeddings(model.name, model.version))
            examples += got
        embed_s = time.perf_counter() - embed_started
        trained = training.train(examples, model=model.name, model_version=model.version,
                                 base=ctx.thresholds.current().thresholds, targets=targets, folds=args.folds,
                                 distance=ctx.settings.match_distance)
        report = dict(trained.report)
        report["failed"] = failed[:50]
        report["failed_count"] = len(failed)
        report["reviewed_without_embedding"] = missing
        report["timings"] = {**report["timings"], "embedding_s": round(embed_s, 3)}
        saved = store.save(name=args.name, model=model.name, model_version=model.version, head=trained.head,
                           t_adult=trained.t_adult, t_safe=trained.t_safe, report=report,
                           dataset_sha256=trained.dataset_sha256, examples=len(examples),
                           publishable=trained.publishable, by=_who(args.by), note=args.note)
        print(f"adapter {saved.name} v{saved.version}: {training.summary(report)}", file=stderr)
        _json(saved.summary(), stdout)
        return 0
    if args.action == "publish":
        saved = store.publish(args.name, args.version, by=_who(args.by))
        print(f"adapter {saved.name} v{saved.version} is in force for {saved.model}", file=stderr)
        _json({"published": {k: v for k, v in saved.summary().items() if k != "report"}}, stdout)
        return 0
    if args.action == "list":
        in_force = {m: a.ref for m, a in store.in_force().items()}
        versions = [{k: v for k, v in a.summary().items() if k != "report"} for a in store.versions(args.name)]
        _json({"in_force": in_force, "versions": versions,
               "publications": [p.to_dict() for p in store.publications()]}, stdout)
        return 0
    if args.action in ("show", "export"):
        name, version = _name_version(args.name)
        found = store.get(name, version)
        if args.action == "show":
            _json(found.summary(), stdout)
        else:
            _json({"format": "nsfw-adapter/1", **found.ref, "model": found.model, "model_version": found.model_version,
                   "thresholds": {"adult": found.t_adult, "safe": found.t_safe},
                   "head": json.loads(found.head.to_json())}, stdout)
        return 0
    # rollback
    model_name = args.model or ctx.settings.model
    to = None
    if args.to:
        name, version = _name_version(args.to)
        if version is None:
            print("error: --to takes NAME@VERSION", file=stderr)
            return 2
        to = (name, version)
    now = store.rollback(model_name, by=_who(args.by), to=to, base=args.base)
    print(f"{model_name}: " + (f"adapter {now.name} v{now.version} in force" if now else "the base model judges"),
          file=stderr)
    _json({"model": model_name, "in_force": None if now is None else now.ref}, stdout)
    return 0


def _examples(ctx: Context, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from nsfw_core.base.labels import LabelledItem
    from nsfw_core.calibration import adapters as training
    from nsfw_core.calibration.labelsets import DEMO_MANIFEST, load_path

    store = ctx.examples
    if args.action == "list":
        _json({"example_sets": [s.summary() for s in store.live()]}, stdout)
        return 0
    if args.action == "remove":
        store.remove(args.name, by=_who(args.by))
        print(f"example set {args.name} removed", file=stderr)
        return 0
    model = ctx.models.get(args.model)
    verdict = training.verdict_of("block" if args.block else "allow")

    def items(paths: Sequence[str]) -> list[LabelledItem]:
        out: list[LabelledItem] = []
        for path in paths:
            if path.lower().endswith((".csv", ".json")):
                out += load_path(path)
            else:
                out += [LabelledItem(s, verdict, verdict) for s in iter_sources([path])]
        return out

    def vectors(found: Sequence[LabelledItem]) -> Any:
        results = _embed(ctx, model, found, 16, stderr)
        bad = [(it.source, err) for it, emb, err in results if emb is None]
        for source, err in bad[:10]:
            print(f"skipped {source}: {err.message if err else 'not embedded'}", file=stderr)
        import numpy as np

        rows = [emb.embedding for _, emb, _ in results if emb is not None]
        return np.stack(rows) if rows else np.zeros((0, model.embedding_size), np.float32)

    example_vectors = vectors(items(args.images))
    background = vectors(items(args.background or [str(DEMO_MANIFEST)]))
    built, report = training.build_example_set(args.name, verdict, example_vectors, background,
                                               false_match=args.false_match)
    stored = store.add(built, model=model.name, model_version=model.version, report=report, by=_who(args.by))
    fm = report["false_match"]
    print(f"example set {stored.name}: {'block' if verdict == 'adult' else 'allow'} images within similarity "
          f"{built.threshold:.3f} of its {report['examples']} examples; expected false-match rate "
          f"{fm['matched']} of {fm['of']} background images (95 % interval {100 * fm['interval_95'][0]:.1f} % to "
          f"{100 * fm['interval_95'][1]:.1f} %)", file=stderr)
    _json(stored.summary(), stdout)
    return 0
