"""The Calibrate page's sidebar: the thresholds on the sliders, the classes summed, the model, labels → truth.

The controls exist whatever the set (so their values survive switching sources) and are read back as
one :class:`Controls`; a new option of the page (a weighting, say) is a field here, a widget in
:func:`sidebar`, and whatever uses it reads it from the ``Controls`` it is handed.
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import ADULT, CLASS_NAMES, DEFAULT_BINARY_MAP, make_binary_map
from nsfw_core.base.settings import MODEL_NAMES
from nsfw_core.base.verdict import Thresholds

STEP = 0.0001  # slider step (suggestions are snapped to it when that keeps the same decisions)

S = st.session_state


@dataclasses.dataclass(frozen=True)
class Controls:
    """The sidebar's values (they exist whatever the set, so they survive switching sources)."""

    t_adult: float
    t_safe: float
    model_name: str
    adult_classes: list[str]
    safe_classes: list[str]
    adult_labels: list[str]

    def rule(self) -> Thresholds:
        """The thresholds on the sliders, as the API would apply them."""
        return Thresholds(adult=self.t_adult, safe=self.t_safe, adult_classes=tuple(self.adult_classes),
                          safe_classes=tuple(self.safe_classes))


def sidebar(active: Thresholds, default_model: str) -> Controls:
    """Controls that exist whatever the set (so their values survive switching sources)."""
    S.setdefault("cal_t_adult", float(active.adult))
    S.setdefault("cal_t_safe", float(active.safe))
    S.setdefault("cal_adult_classes", list(active.adult_classes))
    S.setdefault("cal_safe_classes", list(active.safe_classes))
    S.setdefault("cal_adult_labels", [c for c, b in DEFAULT_BINARY_MAP.items() if b == ADULT])
    S.setdefault("cal_model", default_model)
    with st.sidebar:
        st.header("Thresholds")
        st.slider("T_adult: adult score at or above → adult", 0.0, 1.0, step=STEP, format="%.4f", key="cal_t_adult")
        st.slider("T_safe: else safe score at or above → safe", 0.0, 1.0, step=STEP, format="%.4f", key="cal_t_safe")
        st.multiselect("Adult classes (summed into the adult score)", CLASS_NAMES, key="cal_adult_classes")
        st.multiselect("Safe classes (summed into the safe score)", CLASS_NAMES, key="cal_safe_classes")
        st.selectbox("Model", MODEL_NAMES, key="cal_model")
        with st.expander("Labels → truth"):
            st.multiselect("Five-class labels that count as adult (the others are safe)", CLASS_NAMES,
                           key="cal_adult_labels",
                           help="Default: porn, sexy, hentai → adult; neutral, drawings → safe. "
                                "Labels adult/safe in a set are used as they are.")
    return Controls(t_adult=float(S["cal_t_adult"]), t_safe=float(S["cal_t_safe"]), model_name=S["cal_model"],
                    adult_classes=list(S["cal_adult_classes"]), safe_classes=list(S["cal_safe_classes"]),
                    adult_labels=list(S["cal_adult_labels"]))


def binary_map(controls: Controls) -> dict[str, str] | None:
    """The label -> truth map of the sidebar; None (after an error) when the choices cannot make one."""
    if not controls.adult_classes or not controls.safe_classes:
        st.error("Choose at least one adult class and one safe class in the sidebar.")
        return None
    try:
        return make_binary_map(controls.adult_labels)
    except NSFWError as exc:
        st.error(exc.message)
        return None
