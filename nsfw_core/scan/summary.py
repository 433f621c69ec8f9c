"""What a scan did: counts, errors, time and images per second, for the terminal and as JSON."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import pyarrow as pa

from nsfw_core.scan.schema import FAILED, SCORED, SKIPPED


@dataclasses.dataclass
class Summary:
    dataset: str = ""
    model: str = ""
    model_version: str = ""
    decode: str = "default"
    thresholds_version: int | None = None
    listed: int = 0  # images the sources named
    done_before: int = 0  # images the dataset held for this model version when the scan started
    scored: int = 0  # images the model scored in this run
    model_rows: int = 0  # inputs through the model (an animation's frames count one each)
    skipped: int = 0  # read and hashed, already in the dataset: not scored again
    errors: int = 0
    lost: int = 0  # listed but never answered (a failed block, an interrupted run): scanned again next time
    error_codes: dict[str, int] = dataclasses.field(default_factory=dict)
    verdicts: dict[str, int] = dataclasses.field(default_factory=dict)  # of the rows written by this run
    verdict_sources: dict[str, int] = dataclasses.field(default_factory=dict)
    queued: int = 0
    queue_failed: int = 0
    rows_written: int = 0
    parts_written: int = 0
    actors: int = 0  # distinct actors that answered
    model_loads: int = 0  # models loaded by those actors (one each: loaded once per actor)
    seconds: float = 0.0  # from listing to the last part written (Ray's start-up included)
    scan_seconds: float = 0.0  # from the first answer to the last (the steady state)
    interrupted: bool = False
    _workers: dict[str, int] = dataclasses.field(default_factory=dict, repr=False)
    _first_rows: int = 0  # rows of the first answer (the steady state is what comes after it)

    @property
    def processed(self) -> int:
        return self.scored + self.skipped + self.errors

    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def add_worker_rows(self, rows: pa.Table) -> None:
        if not self.processed:
            self._first_rows = rows.num_rows
        status = collections.Counter(rows["status"].to_pylist())
        self.scored += status.get(SCORED, 0)
        self.skipped += status.get(SKIPPED, 0)
        self.errors += status.get(FAILED, 0)
        self.model_rows += int(sum(v or 0 for v in rows["model_rows"].to_pylist()))
        for code in rows["error_code"].to_pylist():
            if code is not None:
                self.error_codes[code] = self.error_codes.get(code, 0) + 1
        for worker, loads in zip(rows["worker"].to_pylist(), rows["model_loads"].to_pylist(), strict=True):
            self._workers[worker] = max(self._workers.get(worker, 0), int(loads or 0))
        self.actors = len(self._workers)
        self.model_loads = sum(self._workers.values())

    def add_written(self, table: pa.Table) -> None:
        for name, column in (("verdicts", "verdict"), ("verdict_sources", "verdict_source")):
            counts: dict[str, int] = getattr(self, name)
            for value in table[column].to_pylist():
                if value is not None:
                    counts[value] = counts.get(value, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        out["images_per_second"] = round(self.images_per_second(), 2)
        # the steady state: images answered after the first answer, over the time from the first to the last
        out["steady_per_second"] = (round((self.processed - self._first_rows) / self.scan_seconds, 2)
                                    if self.scan_seconds > 0 else 0.0)
        out["seconds"] = round(self.seconds, 2)
        out["scan_seconds"] = round(self.scan_seconds, 2)
        return out

    def to_text(self) -> str:
        lines = [
            f"{'interrupted' if self.interrupted else 'scanned'} {self.processed} of {self.listed} images into "
            f"{self.dataset} in {self.seconds:.1f} s ({self.images_per_second():.1f} images/s)",
            f"  model {self.model} {self.model_version} ({self.decode} decode); thresholds "
            f"{'version ' + str(self.thresholds_version) if self.thresholds_version is not None else 'defaults'}",
            f"  scored {self.scored} ({self.model_rows} model inputs), already done {self.skipped}, "
            f"errors {self.errors}" + (f", not answered {self.lost} (scanned again next time)" if self.lost else ""),
        ]
        if self.error_codes:
            lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in sorted(self.error_codes.items())))
        if self.verdicts:
            lines.append("  verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(self.verdicts.items()))
                         + " (by " + ", ".join(f"{k} {v}" for k, v in sorted(self.verdict_sources.items())) + ")")
        if self.queued or self.queue_failed:
            lines.append(f"  queued for review: {self.queued}" + (f" (failed {self.queue_failed})"
                                                                  if self.queue_failed else ""))
        lines.append(f"  {self.rows_written} rows in {self.parts_written} new part files; {self.actors} actors, "
                     f"{self.model_loads} model loads")
        return "\n".join(lines)
