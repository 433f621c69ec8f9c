"""The label vocabulary (``nsfw_core.base.labels``) and the modules that re-export it."""

from __future__ import annotations

import pytest

from nsfw_core.base import labels, settings, verdict
from nsfw_core.base.errors import BadRequest
from nsfw_core.base.labels import (
    ALIASES,
    BINARY_LABELS,
    CLASS_NAMES,
    DECISION_LABELS,
    DEFAULT_BINARY_MAP,
    LABELS,
    VERDICTS,
    InvalidLabel,
    LabelledItem,
    LabelSetError,
    check_binary_map,
    check_label,
    make_binary_map,
    normalise_label,
    to_binary,
)
from nsfw_core.calibration import labelsets
from nsfw_core.calibration import maths as calibration
from nsfw_core.state import review


def test_names_and_orders() -> None:
    assert CLASS_NAMES == ("drawings", "hentai", "neutral", "porn", "sexy")
    assert VERDICTS == ("adult", "unknown", "safe")
    assert (labels.ADULT, labels.UNKNOWN, labels.SAFE) == ("adult", "unknown", "safe")
    assert BINARY_LABELS == ("adult", "safe")
    assert LABELS == ("drawings", "hentai", "neutral", "porn", "sexy", "adult", "safe")
    assert DECISION_LABELS == ("adult", "safe", "drawings", "hentai", "neutral", "porn", "sexy")
    assert dict(ALIASES) == {"drawing": "drawings", "nsfw": "adult", "sfw": "safe"}
    assert dict(DEFAULT_BINARY_MAP) == {"porn": "adult", "sexy": "adult", "hentai": "adult",
                                        "neutral": "safe", "drawings": "safe"}


def test_every_module_uses_the_same_objects() -> None:
    assert settings.CLASS_NAMES is CLASS_NAMES
    assert (verdict.ADULT, verdict.UNKNOWN, verdict.SAFE, verdict.VERDICTS) == ("adult", "unknown", "safe", VERDICTS)
    assert verdict.VERDICTS is VERDICTS and calibration.VERDICTS is VERDICTS
    assert labelsets.LABELS is LABELS and labelsets.BINARY_LABELS is BINARY_LABELS
    assert labelsets.ALIASES is ALIASES and labelsets.DEFAULT_BINARY_MAP is DEFAULT_BINARY_MAP
    assert labelsets.LabelledItem is LabelledItem and labelsets.LabelSetError is LabelSetError
    assert labelsets.to_binary is to_binary and labelsets.normalise_label is normalise_label
    assert labelsets.make_binary_map is make_binary_map
    assert review.BINARY_LABELS is BINARY_LABELS and review.InvalidLabel is InvalidLabel
    assert review.check_label is check_label and review.normalise_label is normalise_label


def test_normalise_label() -> None:
    assert [normalise_label(x) for x in (" Drawing ", "NSFW", "sfw", "Porn", "cats", None, "")] == \
        ["drawings", "adult", "safe", "porn", "cats", "", ""]


def test_check_label() -> None:
    assert [check_label(x) for x in ("ADULT", " safe", "drawing", "sexy")] == ["adult", "safe", "drawings", "sexy"]
    with pytest.raises(InvalidLabel) as err:
        check_label("cats")
    assert str(err.value) == ("unknown label 'cats'; expected one of adult, safe, drawings, hentai, neutral, "
                              "porn, sexy")
    assert isinstance(err.value, BadRequest)
    assert (err.value.status, err.value.code) == (400, "invalid_label")


def test_to_binary() -> None:
    assert [to_binary(x) for x in ("porn", "Sexy", " hentai ", "neutral", "Drawing", "adult", "SAFE", "nsfw")] == \
        ["adult", "adult", "adult", "safe", "safe", "adult", "safe", "adult"]
    assert to_binary("sexy", make_binary_map(["porn"])) == "safe"
    assert to_binary("adult", make_binary_map(["porn"])) == "adult"  # binary labels ignore the map
    with pytest.raises(ValueError, match=r"^unknown label 'cats'$"):
        to_binary("Cats")


def test_binary_maps() -> None:
    assert make_binary_map(["Porn", "hentai"]) == {"drawings": "safe", "hentai": "adult", "neutral": "safe",
                                                   "porn": "adult", "sexy": "safe"}
    with pytest.raises(LabelSetError) as err:
        make_binary_map(["cats", "porn", "dogs"])
    assert str(err.value) == "not model classes: cats, dogs; expected some of drawings, hentai, neutral, porn, sexy"
    assert check_binary_map(None) is DEFAULT_BINARY_MAP
    with pytest.raises(LabelSetError) as err:
        check_binary_map({"porn": "adult", "sexy": "maybe"})
    assert str(err.value) == ("binary_map must map each of drawings, hentai, neutral, porn, sexy to adult or safe "
                              "(missing: drawings, hentai, neutral; invalid: sexy->maybe)")
    with pytest.raises(LabelSetError):
        to_binary("porn", {"porn": "adult"})


def test_labelled_item() -> None:
    item = LabelledItem("https://example.com/a.jpg", "porn", "adult")
    assert (item.source, item.label, item.binary) == ("https://example.com/a.jpg", "porn", "adult")
    assert item == LabelledItem("https://example.com/a.jpg", "porn", "adult")
