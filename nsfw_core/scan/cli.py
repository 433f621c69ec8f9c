"""The ``nsfw-scan`` command: scan sources into a dataset, or re-judge a dataset.

``nsfw-scan SOURCE... --out DATASET`` (folders, files, URLs, s3:// or gs:// URIs; ``--manifest``,
``--urls``) scores each image once per model version on Ray Data and writes the Parquet dataset;
``nsfw-scan reverdict DATASET`` judges its stored scores again.  docs/scan.md is the manual.

Exit status: 0 when the scan (or reverdict) finished, whatever the images' verdicts and error rows;
1 when some images got no answer (a failed block: the next run scans them) or could not be queued;
2 for a usage or configuration error; 130 when interrupted (Ctrl-C: the rows answered so far are written).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from nsfw_core import __version__
from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import UNKNOWN
from nsfw_core.base.settings import MODEL_NAMES, Settings, SettingsError, load_settings
from nsfw_core.base.verdict import Thresholds
from nsfw_core.inference.modelfiles import read_verified, version
from nsfw_core.scan.dataset import DatasetError, ScanDataset, new_run_id
from nsfw_core.scan.schema import DEFAULT_DECODE, FAST_DECODE
from nsfw_core.scan.sources import Reader, SourceError, list_sources, listing_tables
from nsfw_core.scan.summary import Summary
from nsfw_core.scan.worker import WorkerConfig

log = logging.getLogger(__name__)

NO_RAY = ("nsfw-scan needs Ray, which the service's install leaves out: pip install -r requirements-scan.txt "
          "(or pip install '.[scan]')")


def _size(raw: str) -> int:
    """``512M``, ``2G``, ``1000000``: bytes."""
    raw = raw.strip().upper().rstrip("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(raw[-1:], 1)
    number = raw[:-1] if scale > 1 else raw
    value = int(float(number) * scale)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive size")
    return value


def _share(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def scan_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nsfw-scan",
        description="Score a catalogue of stored images on Ray Data into a Parquet dataset, resumably; "
                    "'nsfw-scan reverdict DATASET' re-judges a dataset without the model.",
        epilog="Settings (NSFW_MAX_BYTES, NSFW_MAX_PIXELS, NSFW_DECODE_*, NSFW_DATABASE_URL, ...) are the service's. "
               "Manual: docs/scan.md.")
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="a folder, an image file, an http(s) URL, or an object-store URI (s3://bucket/prefix, gs://...)")
    p.add_argument("--out", required=True, metavar="DATASET",
                   help="the dataset folder (created if missing or empty), local or s3://bucket/prefix")
    p.add_argument("--manifest", action="append", default=[], metavar="FILE",
                   help="a .csv or .json manifest (path or URL, label) as nsfw-classify reads them; labels are kept")
    p.add_argument("--urls", action="append", default=[], metavar="FILE",
                   help="a file of URLs, one a line (# comments); fetched by the service's SSRF-safe fetcher")
    p.add_argument("--model", choices=MODEL_NAMES, help="model (default: NSFW_MODEL)")
    p.add_argument("--embeddings", action="store_true",
                   help="also store each still image's embedding (the features the model's head reads, from the "
                        "same forward pass): what reverdict --adapter applies an adapter to")
    p.add_argument("--queue", action="store_true",
                   help="put the images judged unknown (NSFW_REVIEW_VERDICTS) into the review queue of "
                        "NSFW_DATABASE_URL, at most once per image")
    p.add_argument("--audit-share", type=_share, default=0.0, metavar="P",
                   help="with --queue, also queue this share of the model's adult and safe verdicts (0.01: 1 %%)")
    p.add_argument("--no-known", action="store_true",
                   help="the model's verdict for every image (ignore remembered decisions and hash lists)")
    p.add_argument("--fast-decode", action="store_true",
                   help="opt-in throughput mode: large JPEGs decoded at the scale nearest the model's input; "
                        "slightly different scores (BENCHMARKS.md measures how often the verdict agrees), "
                        "kept apart from the default's rows")
    p.add_argument("--retry-errors", action="store_true",
                   help="scan again images whose stored row is an error of the image itself (not_an_image, ...)")
    ray_group = p.add_argument_group("Ray")
    ray_group.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                           help="a Ray cluster to run on (default: $RAY_ADDRESS; none: an embedded Ray here)")
    ray_group.add_argument("--actors", type=_positive,
                           help="model actors (default: the cluster's CPUs / --threads-per-actor)")
    ray_group.add_argument("--threads-per-actor", type=_positive, default=1,
                           help="threads of one forward pass; each actor reserves as many CPUs (default 1)")
    ray_group.add_argument("--batch-size", type=_positive, default=32, help="images per batch an actor scores (32)")
    ray_group.add_argument("--memory-per-actor", type=_size, metavar="BYTES",
                           help="memory Ray reserves for each actor when placing it (e.g. 1G)")
    ray_group.add_argument("--num-cpus", type=_positive, help="embedded Ray only: CPUs it may use (default: all)")
    ray_group.add_argument("--object-store-memory", type=_size, metavar="BYTES",
                           help="embedded Ray only: its object store (default 256M)")
    ray_group.add_argument("--max-failed-blocks", type=int, default=10,
                           help="blocks that may fail (their images are scanned next run) before the scan stops (10)")
    out = p.add_argument_group("output")
    out.add_argument("--flush-rows", type=_positive, default=5000, help="rows per part file at most (5000)")
    out.add_argument("--flush-seconds", type=float, default=30.0,
                     help="write what is answered at least this often (30): what a killed driver can lose")
    out.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    out.add_argument("--verbose", action="store_true", help="Ray's and the workers' logs too")
    return p


def reverdict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nsfw-scan reverdict",
        description="Judge a scan dataset's stored scores again (no image read, no model run) and report what "
                    "changed; the dataset's verdict columns are rewritten.")
    p.add_argument("dataset", metavar="DATASET")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--thresholds-version", type=int, metavar="N",
                       help="a saved thresholds version (default: the version in force)")
    which.add_argument("--adult", type=float, help="an adult threshold of your own (with --safe)")
    p.add_argument("--safe", type=float, help="a safe threshold of your own (with --adult)")
    p.add_argument("--adapter", metavar="NAME[@VERSION]",
                   help="judge the rows that kept an embedding (nsfw-scan --embeddings) with this adapter of the "
                        "database (nsfw-classify adapter list; default: its newest version), one that passed its "
                        "held-out proof, under its thresholds (or --adult/--safe on its score)")
    p.add_argument("--no-known", action="store_true", help="ignore remembered decisions and hash lists")
    p.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    p.add_argument("--changes", metavar="FILE", help="write every changed row here (CSV)")
    p.add_argument("--queue", action="store_true", help="queue the images now judged unknown that were not queued")
    p.add_argument("--audit-share", type=_share, default=0.0, metavar="P")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return p


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reverdict"]:
        return _reverdict(reverdict_parser().parse_args(argv[1:]), stdout, stderr)
    return _scan(scan_parser().parse_args(argv), stdout, stderr)


# ---------------------------------------------------------------- shared set-up


class _Services:
    """The database-backed parts a run uses (thresholds, known images, the queue), closed together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._closers: list[Any] = []

    def thresholds(self, version: int | None = None) -> tuple[Thresholds, int | None, str | None]:
        """The thresholds in force (or saved ``version``), their version, and a warning if any."""
        from nsfw_core.state.thresholds import ThresholdHistory

        history = ThresholdHistory.from_settings(self.settings)
        self._closers.append(history)
        if version is None:
            active = history.current()
            return active.thresholds, active.version, active.warning
        for saved in history.history(limit=1_000_000):
            if saved.version == version:
                return saved.thresholds, saved.version, None
        raise ValueError(f"there is no thresholds version {version}")

    def lookup(self) -> tuple[Any, str | None]:
        """Known images' lookup (None when there are none), and a warning when the database is unreachable."""
        from nsfw_core.state.db import open_pool
        from nsfw_core.state.known import KnownImages

        config = self.settings.review_config
        pool = open_pool(config.database_url or None, config.data_dir)
        known = KnownImages(pool, distance=self.settings.match_distance)
        self._closers += [known, pool]
        known.refresh()
        return (known.lookup_many if len(known) else None), known.warning

    def adapter(self, text: str) -> Any:
        """The adapter ``NAME[@VERSION]`` of the database (its newest version when none is given); ValueError when
        the name is malformed, and NSFWError (not found, the database down) or ValueError when it never passed
        the held-out proof that publishing asks."""
        from nsfw_core.state.adapters import Adapters
        from nsfw_core.state.db import open_pool

        name, _, version = text.partition("@")
        if not name or (version and not version.isdigit()):
            raise ValueError(f"--adapter {text!r}: expected NAME or NAME@VERSION")
        config = self.settings.review_config
        pool = open_pool(config.database_url or None, config.data_dir)
        store = Adapters(pool)
        self._closers += [store, pool]
        found = store.get(name, int(version) if version else None)
        if not found.publishable:
            raise ValueError(f"adapter {found.name} v{found.version} did not pass its held-out proof (publishing "
                             f"is refused), so it is not applied either")
        return found

    def queuer(self, audit_share: float) -> Any:
        from nsfw_core.scan.queueing import Queuer
        from nsfw_core.state.review import ReviewQueue

        config = self.settings.review_config
        queue = ReviewQueue.from_config(config)
        self._closers.append(queue)
        reader = Reader(self.settings.fetch_policy)
        self._closers.append(reader)
        from nsfw_core.state.adapters import Adapters
        from nsfw_core.state.db import open_pool

        pool = open_pool(config.database_url or None, config.data_dir)
        store = Adapters(pool)  # a row's embedding (--embeddings) goes with its item
        self._closers += [store, pool]
        return Queuer(queue, config.verdicts or (UNKNOWN,), audit_share, reread=reader.read,
                      keep_embedding=store.save_item_embedding)

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer.close()
            except Exception:  # closing is best effort
                log.debug("closing %r failed", closer, exc_info=True)


def _progress(total: int, stream: TextIO) -> Any:
    if not stream.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=stream, smoothing=0.05)


# ---------------------------------------------------------------- nsfw-scan SOURCE... --out DATASET


def _scan(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    started = time.perf_counter()
    if not args.sources and not args.manifest and not args.urls:
        print("error: give at least one SOURCE, --manifest or --urls", file=stderr)
        return 2
    if args.audit_share and not args.queue:
        print("error: --audit-share needs --queue", file=stderr)
        return 2
    try:
        settings = load_settings()
        name = args.model or settings.model_config.name
        model_version = version(*read_verified(Path(settings.model_config.model_dir), name))
        listing = list(list_sources(args.sources, manifests=args.manifest, url_lists=args.urls))
        dataset = ScanDataset(args.out)
        dataset.create_or_open(f"nsfw-scan {__version__}")
    except (SettingsError, SourceError, DatasetError, NSFWError) as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    if not listing:
        print("error: no images found in the sources", file=stderr)
        return 1
    # Ray starts a cluster by itself when its API is used unconnected (a generator's clean-up after
    # ray.shutdown(), say): never here, where that would hang the command at exit.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    try:
        from nsfw_core.scan import engine
    except ImportError as exc:
        print(f"error: {NO_RAY} ({exc})", file=stderr)
        return 2
    services = _Services(settings)
    summary = Summary(dataset=args.out, model=name, model_version=model_version, listed=len(listing))
    warnings: list[str] = []
    bar = None
    code = 0
    try:
        with dataset.locked():
            decode = FAST_DECODE if args.fast_decode else DEFAULT_DECODE
            done = dataset.done(name, model_version, decode=decode, retry_errors=args.retry_errors)
            summary.done_before = len(done)
            summary.decode = decode
            thresholds, thresholds_version, warning = services.thresholds()
            summary.thresholds_version = thresholds_version
            warnings += [warning] if warning else []
            lookup = None
            if not args.no_known:
                lookup, warning = services.lookup()
                warnings += [warning] if warning else []
            queuer = services.queuer(args.audit_share) if args.queue else None
            try:
                joined = engine.connect(args.address, num_cpus=args.num_cpus,
                                        object_store_memory=args.object_store_memory, verbose=args.verbose)
            except (ValueError, ConnectionError, RuntimeError) as exc:
                print(f"error: cannot start or join Ray: {exc}", file=stderr)
                return 2
            actors = args.actors or max(1, engine.cluster_cpus() // args.threads_per_actor)
            if not args.json:
                print(f"nsfw-scan: {len(listing)} images, {summary.done_before} already in {args.out}; "
                      f"{actors} actors on Ray ({joined})", file=stderr)
            config = WorkerConfig(model_name=name, model_version=model_version, model=settings.model_config,
                                  decode=settings.decode_limits, fetch=settings.fetch_policy,
                                  threads=args.threads_per_actor, embeddings=args.embeddings,
                                  review_hashes=args.queue, decode_mode=decode)
            per_block = min(args.batch_size * 8, max(args.batch_size, -(-len(listing) // (actors * 4))))
            from nsfw_core.scan.driver import Driver

            bar = _progress(len(listing), stderr)
            driver = Driver(dataset, model=name, model_version=model_version, run_id=new_run_id(),
                            thresholds=thresholds, thresholds_version=thresholds_version, lookup=lookup,
                            queuer=queuer, summary=summary, flush_rows=args.flush_rows,
                            flush_seconds=args.flush_seconds, progress=bar.update if bar is not None else None,
                            decode=decode)
            stream = engine.answers(list(listing_tables(listing, per_block)), config, done.keys, actors=actors,
                                    batch_size=args.batch_size, cpus_per_actor=args.threads_per_actor,
                                    memory_per_actor=args.memory_per_actor, max_failed_blocks=args.max_failed_blocks)
            try:
                driver.consume(stream)
            except KeyboardInterrupt:
                summary.interrupted = True
                code = 130
            finally:
                stream.close()  # Ray Data's clean-up, while Ray is still up
    except DatasetError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
        services.close()
        engine.shutdown()
    summary.seconds = time.perf_counter() - started
    summary.lost = max(0, summary.listed - summary.processed) if not summary.interrupted else 0
    if summary.lost or summary.queue_failed:
        code = code or 1
    if args.json:
        print(json.dumps({**summary.to_dict(), "warnings": warnings}), file=stdout)
    else:
        print(summary.to_text(), file=stdout)
        for warning in warnings:
            print(f"warning: {warning}", file=stderr)
    return code


# ---------------------------------------------------------------- nsfw-scan reverdict DATASET


def _reverdict(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from nsfw_core.scan.reverdict import reverdict

    if (args.adult is None) != (args.safe is None):
        print("error: --adult and --safe go together", file=stderr)
        return 2
    if args.audit_share and not args.queue:
        print("error: --audit-share needs --queue", file=stderr)
        return 2
    try:
        settings = load_settings()
        dataset = ScanDataset(args.dataset)
        dataset.check()
    except (SettingsError, DatasetError) as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    services = _Services(settings)
    try:
        adapter = services.adapter(args.adapter) if args.adapter else None
        adapter_thresholds = None
        if args.adult is not None:
            defaults = Thresholds.from_config(settings.threshold_config)
            given = Thresholds(adult=args.adult, safe=args.safe, adult_classes=defaults.adult_classes,
                               safe_classes=defaults.safe_classes)
            if adapter is not None:  # they apply to the adapter's score; rows without an embedding: those in force
                adapter_thresholds = given
                thresholds, thresholds_version, warning = services.thresholds(None)
            else:
                thresholds, thresholds_version, warning = given, None, None
        else:
            thresholds, thresholds_version, warning = services.thresholds(args.thresholds_version)
        if warning:
            print(f"warning: {warning}", file=stderr)
        lookup = None
        if not args.no_known:
            lookup, warning = services.lookup()
            if warning:
                print(f"warning: {warning}", file=stderr)
        queuer = services.queuer(args.audit_share) if args.queue else None
        with dataset.locked():
            report = reverdict(dataset, thresholds, thresholds_version, lookup=lookup, queuer=queuer,
                               dry_run=args.dry_run, adapter=adapter, adapter_thresholds=adapter_thresholds)
    except (ValueError, NSFWError) as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    finally:
        services.close()
    if args.changes:
        Path(args.changes).write_text(report.changes_csv())
    print(json.dumps(report.to_dict()) if args.json else report.to_text(), file=stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
