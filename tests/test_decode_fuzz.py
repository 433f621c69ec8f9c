"""Property tests of nsfw_core.images.decode on mutated real images and on structure-aware hostile files.

decode() must return a C-contiguous uint8 (H, W, 3) array or raise an NSFWError with
status 413, 415 or 422 (not caused by Pillow's own bomb check) -- never anything else.
Structure-aware cases (hostile TIFF tags, PNG IHDRs, JPEG frame headers and scan counts,
GIF and WebP frames) are run the service's way: plan() first, then an inline decode
within a CPU-time and peak-RSS bound, or an isolated decode within its deadline.
The seed corpus, the mutations, the generators and the checks live in
bench/fuzz_decode.py, which runs the same properties for as long as you like.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nsfw_core.base.errors import NSFWError
from nsfw_core.images import decode as decode_module
from tests.helpers.paths import ROOT


def _load_fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_decode", ROOT / "bench" / "fuzz_decode.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzzer()
CORPUS = fuzz.seed_corpus()
NAMES = list(CORPUS)
FUZZ_SETTINGS = settings(
    max_examples=400,
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

position = st.one_of(st.integers(0, 255), st.integers(0, 1 << 31))  # headers get half the attention
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(1, 255)),
    st.tuples(st.just("overwrite"), position, st.sampled_from(fuzz.INTERESTING)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), position, st.integers(1, 64)),
    st.tuples(st.just("splice"), position, st.sampled_from(NAMES), st.integers(0, 1 << 31), st.integers(1, 256)),
)
mutations = st.lists(mutation, min_size=1, max_size=4)


def test_seed_corpus_decodes() -> None:
    assert len(CORPUS) >= 30
    for name, data in CORPUS.items():
        assert fuzz.outcome(data) == ("ok", None), name


@pytest.mark.filterwarnings("ignore::UserWarning", "error::PIL.Image.DecompressionBombWarning")
@FUZZ_SETTINGS
@given(name=st.sampled_from(NAMES), edits=mutations, draft_size=st.sampled_from(fuzz.DRAFT_SIZES))
def test_mutated_images_decode_or_raise_typed_errors(name: str, edits: list[Any], draft_size: int | None) -> None:
    data = fuzz.mutated(name, edits, CORPUS)
    result, detail = fuzz.outcome(data, draft_size)
    if isinstance(detail, BaseException):
        raise detail
    assert result != "unexpected", detail


@pytest.mark.parametrize("fmt", ["gif", "webp"])
@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ_SETTINGS
@given(data=st.data())
def test_early_size_reader_agrees_with_pillow(fmt: str, data: st.DataObject) -> None:
    """GIF and WebP sizes are checked from the bytes before Pillow opens them; they must match."""
    name = data.draw(st.sampled_from([n for n in NAMES if n.startswith(f"{fmt}-")]))
    raw = fuzz.mutated(name, data.draw(mutations), CORPUS)
    try:
        size = decode_module._open(raw, fmt).size
    except Exception:
        return
    assert decode_module._EARLY_SIZE_READERS[fmt](raw) == size


JPEG_NAMES = [n for n in NAMES if decode_module.sniff(CORPUS[n]) == "jpeg"]


def _decoded_or_status(data: bytes, draft_size: int | None) -> np.ndarray | int:
    try:
        return decode_module.decode(data, draft_size=draft_size)
    except NSFWError as exc:
        return exc.status


@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ_SETTINGS
@given(name=st.sampled_from(JPEG_NAMES), edits=mutations, draft_size=st.sampled_from(fuzz.DRAFT_SIZES))
def test_fast_jpeg_path_agrees_with_pillow_on_damaged_files(name: str, edits: list[Any], draft_size: int | None) -> None:
    """simplejpeg's path must give Pillow's pixels, or Pillow's error, for any damaged JPEG."""
    data = fuzz.mutated(name, edits, CORPUS)
    fast = _decoded_or_status(data, draft_size)
    assert vars(decode_module)["_simplejpeg"] is not None
    with mock.patch.object(decode_module, "_simplejpeg", None):  # the Pillow path (hypothesis reruns the body)
        slow = _decoded_or_status(data, draft_size)
    if isinstance(fast, int) or isinstance(slow, int):
        assert fast == slow
    else:
        assert fast.shape == slow.shape and (fast == slow).all()


def test_replay_prints_the_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz.main(["--seed", "7", "--iteration", "3"]) == 0
    assert "seed 7 iteration 3" in capsys.readouterr().out


def test_short_run_reports_every_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz.main(["--iterations", "200", "--seed", "11", "--mode", "mutate"]) == 0
    out = capsys.readouterr().out
    for name in fuzz.OUTCOMES:
        assert f"  {name}" in out
    assert re.search(r"^  unexpected +0$", out, re.MULTILINE)


def test_mutations_are_deterministic() -> None:
    first = [fuzz.mutated(*fuzz.case(3, i, CORPUS)[:2], CORPUS) for i in range(20)]
    again = [fuzz.mutated(*fuzz.case(3, i, CORPUS)[:2], CORPUS) for i in range(20)]
    assert first == again
    assert len(set(first)) > 15


# --- structure-aware cases ---------------------------------------------------------------------


def test_structure_cases_are_deterministic_and_cover_every_family() -> None:
    first = [fuzz.structure_case(5, i) for i in range(60)]
    again = [fuzz.structure_case(5, i) for i in range(60)]
    assert [c[2] for c in first] == [c[2] for c in again]
    assert {c[0] for c in first} == set(fuzz.FAMILIES)
    for family, _desc, data, _draft in first:
        assert decode_module.sniff(data) == family


def test_both_mode_alternates_kinds() -> None:
    kinds = [fuzz.build_case("both", 1, i, CORPUS)[0] for i in range(4)]
    assert kinds == ["mutate", "structure", "mutate", "structure"]
    assert fuzz.build_case("both", 1, 3, CORPUS)[3] == fuzz.structure_case(1, 3)[2]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_structure_run_in_process_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    """200 structure-aware cases through plan / inline / isolated decode: every bound holds."""
    assert fuzz.main(["--mode", "structure", "--iterations", "200", "--seed", "3", "--in-process"]) == 0, \
        capsys.readouterr().out
    out = capsys.readouterr().out
    assert re.search(r"^  unexpected +0$", out, re.MULTILINE)
    assert re.search(r"by path: .*inline=\d+.*sandbox=\d+", out)


def test_replay_prints_a_structure_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz.main(["--mode", "structure", "--seed", "3", "--iteration", "1"]) == 0
    out = capsys.readouterr().out
    assert "seed 3 iteration 1 (structure)" in out and "figures:" in out


def test_the_bounds_catch_a_decode_that_breaks_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory and CPU checks are live: shrink the bounds and an ordinary decode breaks them."""
    data = fuzz.hostile.png_any(1024, 1024, colour_type=6)
    checker = fuzz.Checker()
    try:
        assert checker.check(data, None)[0] == "ok"
        monkeypatch.setattr(fuzz, "MEM_SLACK", 0)
        monkeypatch.setattr(fuzz, "MEM_PER_COST_PIXEL", 1)
        result, detail, fig = checker.check(data, None)
        assert fig["path"] == "inline" and result == "unexpected" and "peak RSS" in str(detail)
        monkeypatch.setattr(fuzz, "MEM_SLACK", 1 << 40)
        monkeypatch.setattr(fuzz, "INLINE_CPU_S", 0.0)
        result, detail, _ = checker.check(data, None)
        assert result == "unexpected" and "CPU" in str(detail)
    finally:
        checker.close()


def test_isolated_decodes_go_through_the_sandbox() -> None:
    """A TIFF with a large declared strip is not inline: the sandbox decodes it, or its deadline fires."""
    data = fuzz.hostile.tiff(4096, 4096, tile=None, data=bytes(4096 * 4096))
    result, detail, fig = fuzz.bounded_outcome(data)
    assert fig["path"] == "sandbox" and result in ("ok", "timeout"), detail


@pytest.mark.parametrize("height", [1_000_000, 4_000_000, 12_000_000])
def test_tall_narrow_png_stays_within_the_memory_bound(height: int) -> None:
    """Found by bench/fuzz_decode.py --mode structure (seed 1000, iterations 960 and 1882): a 1-pixel-wide
    PNG cost 40-48 bytes of peak RSS per pixel inline. Rows now count as at least 8 pixels."""
    data = fuzz.hostile.png_any(1, height, colour_type=6)
    result, detail, fig = fuzz.bounded_outcome(data)
    assert result != "unexpected", f"{detail} {fig}"
    assert result == ("413" if height * 8 > 50_000_000 else "ok"), (result, detail, fig)
