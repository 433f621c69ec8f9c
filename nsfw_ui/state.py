"""The pages' one way to the process context: settings, models, thresholds, queue, caches.

Every page gets what it uses from :func:`context`, the process's one
:class:`nsfw_core.context.Context` (the one the API's lifespan installed when the
server runs, else the one created on first use).  No page builds settings, a
``ThresholdHistory``, a ``ReviewQueue``, a ``ScoreCache`` or a model of its own, so
a threshold saved on the calibration page is the one the API judges with, and
the review page and the API share one queue and one database pool.

:func:`context` is not wrapped in ``st.cache_resource``: ``current()`` already
keeps one context per process, and a second cache here would keep handing out a
context that the server (or a test) has since replaced.
"""

from __future__ import annotations

import streamlit as st

from nsfw_core.context import Context, current
from nsfw_core.inference.model import Model

MODEL_SPINNER = "Loading model…"


def context() -> Context:
    """The process's context (:func:`nsfw_core.context.current`)."""
    return current()


def model(name: str | None = None) -> Model:
    """The context's model ``name`` (default NSFW_MODEL), with a spinner while it loads.

    Models are loaded once per process by the core; the spinner only shows when
    the load takes a moment (Streamlit delays it), i.e. the first time.
    """
    with st.spinner(MODEL_SPINNER):
        return context().models.get(name)
