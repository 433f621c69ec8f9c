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
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from nsfw_core.base.verdict import Thresholds
from nsfw_core.scan.dataset import ScanDataset, latest_mask
from nsfw_core.scan.judge import Lookup, judge
from nsfw_core.scan.queueing import Queuer
from nsfw_core.scan.schema import VERDICT_COLUMNS

CHANGE_COLUMNS = ("source", "sha256", "old_verdict", "new_verdict", "old_verdict_source", "new_verdict_source",
                  "adult_score", "safe_score")
JUDGED_COLUMNS = tuple(c for c in VERDICT_COLUMNS if c not in ("judged_at", "review_id"))


class AdapterUnsupported(ValueError):
    """``--adapter``: adapters score stored embeddings, which no model gives yet (issue 26)."""


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
        if self.queued:
            lines.append(f"  queued for review: {self.queued}")
        return "\n".join(lines)

    def changes_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, CHANGE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.changes)
        return buf.getvalue()


def _label(value: Any) -> str:
    return "error" if value is None else str(value)


def reverdict(dataset: ScanDataset, thresholds: Thresholds, version: int | None, *, lookup: Lookup | None = None,
              queuer: Queuer | None = None, dry_run: bool = False, workers: int = 4) -> Report:
    """Judge every row again; rewrite the parts that changed (not with ``dry_run``); report the changes."""
    started = time.perf_counter()
    report = Report(dataset.uri, thresholds.to_dict(), version, lookup is not None, dry_run=dry_run)
    parts = dataset.parts()
    report.parts = len(parts)
    # which rows are the latest of their source, across parts (only they are reported and queued)
    sources = dataset.read(["source"], parts)
    latest = latest_mask(sources)
    bounds = np.cumsum([0] + dataset.row_counts(parts))
    matches = None
    if lookup is not None:  # every row at once: the known hashes searched among all the rows' (lookup_many)
        hashes = dataset.read(["sha256", "pdq"], parts)
        matches = lookup(hashes["sha256"].to_pylist(), hashes["pdq"].to_pylist())

    def one(i: int) -> tuple[pa.Table, pa.Table, bool]:
        old = dataset.read_part(parts[i])
        judged = judge(old, thresholds, version,
                       matches=None if matches is None else matches[int(bounds[i]):int(bounds[i + 1])])
        new = old
        for name, column in judged.items():
            new = new.set_column(new.schema.get_field_index(name), name, column.cast(new.schema.field(name).type))
        same = all(new[c].equals(old[c]) for c in JUDGED_COLUMNS)
        return old, new, same

    def changed_rows(i: int, old: pa.Table, new: pa.Table) -> None:
        mask = latest[int(bounds[i]):int(bounds[i + 1])]
        ov, nv = old["verdict"].to_pylist(), new["verdict"].to_pylist()
        osrc, nsrc = old["verdict_source"].to_pylist(), new["verdict_source"].to_pylist()
        src, sha = new["source"].to_pylist(), new["sha256"].to_pylist()
        adult, safe = new["adult_score"].to_pylist(), new["safe_score"].to_pylist()
        for r in np.flatnonzero(mask):
            report.rows += 1
            report.judged += nv[r] is not None
            key = (_label(ov[r]), _label(nv[r]))
            report.transitions[key] = report.transitions.get(key, 0) + 1
            if ov[r] != nv[r] or osrc[r] != nsrc[r]:
                report.changed += 1
                report.changes.append({"source": src[r], "sha256": sha[r], "old_verdict": ov[r], "new_verdict": nv[r],
                                       "old_verdict_source": osrc[r], "new_verdict_source": nsrc[r],
                                       "adult_score": adult[r], "safe_score": safe[r]})

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, (old, new, same) in enumerate(pool.map(one, range(len(parts)))):
            changed_rows(i, old, new)
            if queuer is not None and not dry_run:
                mask = latest[int(bounds[i]):int(bounds[i + 1])]
                candidates = new.filter(pa.array(mask))
                if candidates.num_rows:
                    ids = np.asarray(queuer.enqueue(candidates).to_pylist(), dtype=object)
                    full = np.asarray(new["review_id"].to_pylist(), dtype=object)
                    full[np.flatnonzero(mask)] = ids
                    review = pa.array(list(full), pa.int64())
                    if not review.equals(new["review_id"]):
                        new = new.set_column(new.schema.get_field_index("review_id"), "review_id", review)
                        same = False
            if not same and not dry_run:
                dataset.rewrite_part(parts[i], new)
                report.parts_rewritten += 1
    if queuer is not None:
        report.queued = queuer.queued
    report.transitions = dict(collections.OrderedDict(sorted(report.transitions.items())))
    report.seconds = time.perf_counter() - started
    return report
