"""``nsfw-scan reverdict DATASET``: judge the stored scores again, without the model, and say what changed.

The verdict columns of every row are computed again (:mod:`nsfw_core.scan.judge`) under the thresholds
given (the version in force, a saved version, or values from the command line) and, unless turned off,
the known images (remembered review decisions and hash lists, by sha256 and the stored PDQ hash); each
part file whose rows changed is rewritten whole under its own name (atomically), the scores and
everything else the scan saw kept as they were.  Reverdict never reads an image nor runs the model: a
threshold change over a million rows is a few seconds of Parquet and numpy (BENCHMARKS.md).

What changed is counted over the dataset's latest row per source (the rows a reader sees), per old and
new verdict, and listed (``--changes FILE``).  Running it twice with the same thresholds changes nothing
the second time.

``--adapter NAME[@VERSION]`` (issue 26) judges the rows that kept an embedding (``nsfw-scan --embeddings``)
with that adapter, from the stored embeddings and scores, as the service would with it in force
(:mod:`nsfw_core.scan.judge`); a dataset that kept no embedding of the adapter's model version is refused
(:class:`NoEmbeddings`) before anything is read again or written.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nsfw_core.base import spreadsheet
from nsfw_core.base.verdict import Thresholds
from nsfw_core.scan.dataset import ScanDataset, latest_mask
from nsfw_core.scan.judge import Lookup, judge
from nsfw_core.scan.queueing import Queuer
from nsfw_core.scan.schema import VERDICT_COLUMNS
from nsfw_core.state.adapters import AdapterVersion

CHANGE_COLUMNS = ("source", "sha256", "old_verdict", "new_verdict", "old_verdict_source", "new_verdict_source",
                  "adult_score", "safe_score")
JUDGED_COLUMNS = tuple(c for c in VERDICT_COLUMNS if c not in ("judged_at", "review_id"))


class NoEmbeddings(ValueError):
    """``--adapter`` on a dataset without the embeddings the adapter reads: nothing to apply it to."""


def has_embeddings(dataset: ScanDataset, parts: list[str], model: str, model_version: str) -> bool:
    """Whether a row of these parts kept an embedding and was scanned by ``model`` at ``model_version``
    (reading one part at a time, and stopping at the first)."""
    for part in parts:
        table = dataset.read(["model", "model_version", "embedding"], [part])
        kept = pc.and_(pc.is_valid(table["embedding"]), pc.and_(pc.equal(table["model"], model),
                                                                  pc.equal(table["model_version"], model_version)))
        if table.num_rows and pc.any(kept).as_py():
            return True
    return False


@dataclasses.dataclass
class Report:
    dataset: str
    thresholds: dict[str, Any]
    thresholds_version: int | None
    known: bool
    rows: int = 0  # latest rows (one per source)
    judged: int = 0  # of them, with scores (the rest are errors)
    changed: int = 0
    transitions: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # (old, new) -> rows
    changes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    parts: int = 0
    parts_rewritten: int = 0
    queued: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    adapter: dict[str, Any] | None = None  # the adapter applied ({"name", "version"}), with --adapter
    by_adapter: int = 0  # latest rows the adapter judged (they kept an embedding of its model version)

    def to_dict(self, with_changes: bool = False) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("transitions",
                                                                                                 "changes")}
        out["transitions"] = [{"old": o, "new": n, "rows": c} for (o, n), c in sorted(self.transitions.items())]
        out["seconds"] = round(self.seconds, 3)
        if with_changes:
            out["changes"] = self.changes
        return out

    def to_text(self, limit: int = 20) -> str:
        version = f"version {self.thresholds_version}" if self.thresholds_version is not None else "not a saved version"
        lines = [f"{'would re-judge' if self.dry_run else 're-judged'} {self.judged} of {self.rows} images in "
                 f"{self.dataset} in {self.seconds:.2f} s: adult {self.thresholds['adult']}, safe "
                 f"{self.thresholds['safe']} ({version}){', known images applied' if self.known else ''}",
                 f"  {self.changed} changed verdict" + ("" if self.dry_run else
                                                        f"; {self.parts_rewritten} of {self.parts} parts rewritten")]
        if self.transitions:
            pairs = sorted(self.transitions.items())
            lines.append("  old -> new: " + ", ".join(f"{o} -> {n} {c}" for (o, n), c in pairs))
        for change in self.changes[:limit]:
            lines.append(f"  {change['source']}: {change['old_verdict']} -> {change['new_verdict']}")
        if len(self.changes) > limit:
            lines.append(f"  ... and {len(self.changes) - limit} more (--changes FILE lists them all)")
        if self.adapter is not None:
            lines.append(f"  adapter {self.adapter['name']} v{self.adapter['version']} (adult "
                         f"{self.adapter['thresholds']['adult']}, safe {self.adapter['thresholds']['safe']} on its "
                         f"score) judged {self.by_adapter} of the {self.judged}; the others kept no embedding of "
                         "its model version: the base model's rule")
        if self.queued:
            lines.append(f"  queued for review: {self.queued}")
        return "\n".join(lines)

    def changes_csv(self) -> str:
        """``--changes FILE``: one row per changed image.  Written through :mod:`nsfw_core.base.spreadsheet`, as
        every CSV the app writes: a source is whatever the scan read (a file name, a URL, a manifest's line), and
        one like ``=HYPERLINK(...)`` must not run as a formula in the spreadsheet that opens the list."""
        buf = io.StringIO()
        writer = spreadsheet.writer(buf, lineterminator="\n")
        writer.writerow(CHANGE_COLUMNS)
        writer.writerows([change.get(column, "") for column in CHANGE_COLUMNS] for change in self.changes)
        return buf.getvalue()


@dataclasses.dataclass
class _Part:
    """What judging one part gave: its counts and changed rows (latest rows only), and whether it was rewritten."""

    rows: int = 0
    judged: int = 0
    by_adapter: int = 0
    transitions: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    changes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rewritten: bool = False


def _differs(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.Array:
    """Row by row, null-aware: True where ``a`` and ``b`` differ."""
    return pc.fill_null(pc.not_equal(pc.fill_null(a, ""), pc.fill_null(b, "")), True)


def reverdict(dataset: ScanDataset, thresholds: Thresholds, version: int | None, *, lookup: Lookup | None = None,
              queuer: Queuer | None = None, dry_run: bool = False, workers: int = 4,
              adapter: AdapterVersion | None = None, adapter_thresholds: Thresholds | None = None) -> Report:
    """Judge every row again; rewrite the parts that changed (not with ``dry_run``); report the changes.

    ``adapter``: judges the rows that kept an embedding of its model version, under ``adapter_thresholds``
    (default: its own); :class:`NoEmbeddings` when no row did (nothing is changed)."""
    started = time.perf_counter()
    if adapter is not None:
        adapter_thresholds = adapter_thresholds or adapter.thresholds(thresholds)
    report = Report(dataset.uri, thresholds.to_dict(), version, lookup is not None, dry_run=dry_run,
                    adapter=None if adapter is None or adapter_thresholds is None else {
                        **adapter.ref, "thresholds": {"adult": adapter_thresholds.adult,
                                                      "safe": adapter_thresholds.safe}})
    parts = dataset.parts()
    report.parts = len(parts)
    if adapter is not None and not has_embeddings(dataset, parts, adapter.model, adapter.model_version):
        raise NoEmbeddings(f"{dataset.uri} keeps no embeddings of {adapter.model} {adapter.model_version}, which "
                           f"adapter {adapter.name} v{adapter.version} reads: scan with --embeddings first; "
                           "nothing was changed")
    # which rows are the latest of their source, across parts (only they are reported and queued)
    latest = latest_mask(dataset.read(["source"], parts))
    bounds = np.cumsum([0] + dataset.row_counts(parts))
    matches = None
    if lookup is not None:  # every row at once: the known hashes searched among all the rows' (lookup_many)
        hashes = dataset.read(["sha256", "pdq"], parts)
        matches = lookup(hashes["sha256"].to_pylist(), hashes["pdq"].to_pylist())
    queue_lock = threading.Lock()

    def one(i: int) -> _Part:
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        old = dataset.read_part(parts[i])
        judged = judge(old, thresholds, version, matches=None if matches is None else matches[lo:hi],
                       adapter=adapter, adapter_thresholds=adapter_thresholds)
        new = old
        for name, column in judged.items():
            new = new.set_column(new.schema.get_field_index(name), name, column.cast(new.schema.field(name).type))
        same = all(new[c].equals(old[c]) for c in JUDGED_COLUMNS)
        mask = pa.array(latest[lo:hi])
        out = _Part()
        pairs = pa.table({"old": pc.fill_null(old["verdict"], "error"),
                          "new": pc.fill_null(new["verdict"], "error")}).filter(mask)
        out.rows = pairs.num_rows
        if adapter is not None:  # latest rows whose thresholds name the adapter
            named = pc.fill_null(pc.match_substring(judged["thresholds"], '"adapter"'), False)
            out.by_adapter = int(pc.sum(pc.and_(mask, named)).as_py() or 0)
        out.judged = pairs.num_rows - pc.sum(pc.equal(pairs["new"], "error")).as_py() if pairs.num_rows else 0
        for row in pairs.group_by(["old", "new"]).aggregate([([], "count_all")]).to_pylist():
            out.transitions[(row["old"], row["new"])] = row["count_all"]
        changed = pc.and_(mask, pc.or_(_differs(old["verdict"], new["verdict"]),
                                       _differs(old["verdict_source"], new["verdict_source"])))
        if pc.any(changed).as_py():
            picked = new.filter(changed)
            before = old.filter(changed)
            out.changes = [{"source": s, "sha256": h, "old_verdict": ov, "new_verdict": nv, "old_verdict_source": osrc,
                            "new_verdict_source": nsrc, "adult_score": a, "safe_score": sf}
                           for s, h, ov, nv, osrc, nsrc, a, sf in zip(
                               picked["source"].to_pylist(), picked["sha256"].to_pylist(),
                               before["verdict"].to_pylist(), picked["verdict"].to_pylist(),
                               before["verdict_source"].to_pylist(), picked["verdict_source"].to_pylist(),
                               picked["adult_score"].to_pylist(), picked["safe_score"].to_pylist(), strict=True)]
        if queuer is not None and not dry_run and pc.any(mask).as_py():
            rows = np.flatnonzero(latest[lo:hi])
            with queue_lock:  # one enqueue at a time: the queuer counts
                ids = queuer.enqueue(new.take(pa.array(rows))).to_pylist()
            full = new["review_id"].to_pylist()
            for r, review_id in zip(rows.tolist(), ids, strict=True):
                full[r] = review_id
            review = pa.array(full, pa.string())
            if not review.equals(new["review_id"].combine_chunks()):
                new = new.set_column(new.schema.get_field_index("review_id"), "review_id", review)
                same = False
        if not dry_run and (not same or dataset.outdated(parts[i])):  # an older format's part: in this one
            dataset.rewrite_part(parts[i], new)  # in this worker thread: parts are written in parallel
            out.rewritten = True
        return out

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for part in pool.map(one, range(len(parts))):
            report.rows += part.rows
            report.judged += part.judged
            report.by_adapter += part.by_adapter
            for pair, count in part.transitions.items():
                report.transitions[pair] = report.transitions.get(pair, 0) + count
            report.changes.extend(part.changes)
            report.parts_rewritten += part.rewritten
    report.changed = len(report.changes)
    if queuer is not None:
        report.queued = queuer.queued
    report.transitions = dict(sorted(report.transitions.items()))
    report.seconds = time.perf_counter() - started
    return report
