"""A video on the Classify page: its scores over time with the segments shaded, and its deciding frames.

:func:`timeline_chart` draws the adult and safe scores of every sampled frame against its time (Altair),
over the timeline's segments shaded by verdict, with the thresholds as rules (an adapter's score and
thresholds when one judged it).  :func:`deciding_frames`
gives, for each segment, the frame that decided it (its highest adult score) as a thumbnail and a blurred
copy; the page shows the blurred one until the viewer reveals it.
"""

from __future__ import annotations

from typing import Any, Sequence, TypedDict

import altair as alt
import pandas as pd
from PIL import Image

from nsfw_core.base.errors import NSFWError
from nsfw_core.classify import Classification, FrameScore, Segment
from nsfw_core.context import Context
from nsfw_core.inference.model import Model
from nsfw_ui import charts, widgets

THUMB_SIZE = 160


class DecidingFrame(TypedDict):
    """A segment's deciding frame: when it is shown, its verdict, its thumbnail and a blurred copy."""

    index: int
    time_ms: int
    verdict: str
    image: Image.Image
    blurred: Image.Image


def frames_table(c: Classification) -> pd.DataFrame:
    """One row per sampled frame and score line: time (s), which score, its value; the scores its verdict used
    (an adapter's, its safe score one minus it, when one judged the video; else the summed classes)."""
    rows = []
    for f in c.frames or ():
        t = f.time_ms / 1000.0
        adult = c.frame_adult_score(f)
        safe = 1.0 - adult if f.adapter_score is not None else c.thresholds.safe_score(f.scores)
        rows.append({"time": t, "score": "adult", "value": adult, "frame": f.index})
        rows.append({"time": t, "score": "safe", "value": safe, "frame": f.index})
    return pd.DataFrame(rows, columns=["time", "score", "value", "frame"])


def segments_table(segments: Sequence[Segment]) -> pd.DataFrame:
    return pd.DataFrame([{"start": s.start_ms / 1000.0, "end": s.end_ms / 1000.0, "verdict": s.verdict}
                         for s in segments], columns=["start", "end", "verdict"])


def timeline_chart(c: Classification) -> Any:
    """The scores over time, the segments shaded by verdict, the thresholds ``c`` was judged with as dashed
    rules."""
    thresholds = c.thresholds
    shading = alt.Chart(segments_table(c.segments or ())).mark_rect(opacity=0.18).encode(
        x=alt.X("start:Q", title="time (s)"), x2="end:Q",
        color=alt.Color("verdict:N", scale=charts.VERDICT_SCALE,
                        legend=alt.Legend(title="segment")),
        tooltip=["verdict:N", alt.Tooltip("start:Q", format=".1f"), alt.Tooltip("end:Q", format=".1f")])
    lines = alt.Chart(frames_table(c)).mark_line(point=True).encode(
        x="time:Q", y=alt.Y("value:Q", title="score", scale=alt.Scale(domain=[0, 1])),
        strokeDash=alt.StrokeDash("score:N", legend=alt.Legend(title="score")),
        tooltip=["frame:Q", alt.Tooltip("time:Q", format=".2f"), "score:N", alt.Tooltip("value:Q", format=".4f")])
    rules = alt.Chart(pd.DataFrame([{"y": thresholds.adult, "rule": "adult threshold"},
                                    {"y": thresholds.safe, "rule": "safe threshold"}])).mark_rule(
        strokeDash=[4, 4], color="gray").encode(y="y:Q", tooltip=["rule:N", "y:Q"])
    return alt.layer(shading, lines, rules).properties(height=220)


def worst_frames(c: Classification) -> list[tuple[Segment, FrameScore]]:
    """Each segment with the frame that decided it (its highest adult score as the verdict used it, the earliest
    on a tie)."""
    out = []
    frames = sorted(c.frames or (), key=lambda f: f.time_ms)
    for s in c.segments or ():
        inside = [f for f in frames if s.start_ms <= f.time_ms < s.end_ms] or \
            [f for f in frames if f.time_ms == s.start_ms]
        if inside:
            out.append((s, max(inside, key=lambda f: (c.frame_adult_score(f), -f.time_ms))))
    return out


def deciding_frames(ctx: Context, model: Model, data: bytes, c: Classification) -> list[DecidingFrame]:
    """Thumbnails of each segment's deciding frame: the video decoded again in the isolated lane with
    thumbnails (the same bytes give the same sampled frames in this process)."""
    wanted = {f.index: s.verdict for s, f in worst_frames(c)}
    if not wanted:
        return []
    out: list[DecidingFrame] = []
    try:
        with ctx.decoder.video(model, data, thumbs=THUMB_SIZE) as decode:
            decode.start()
            got = decode.take()
    except NSFWError:  # decoded once already for the model; should not happen
        return []
    if got.thumbs is None:
        return []
    for ref, thumb in zip(got.refs, got.thumbs, strict=True):
        if ref.index in wanted:
            image = Image.fromarray(thumb)
            out.append({"index": ref.index, "time_ms": ref.time_ms, "verdict": wanted[ref.index], "image": image,
                        "blurred": widgets.blurred(image)})
    return out
