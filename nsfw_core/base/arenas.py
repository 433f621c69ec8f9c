"""Importing this module caps glibc's malloc arenas (:func:`nsfw_core.base.memory.limit_malloc_arenas`).

``app.py`` imports it first, before Streamlit, uvicorn or the worker pools can start a
thread: a side effect on import is the one way to run before the imports that follow.
"""

from nsfw_core.base.memory import limit_malloc_arenas

APPLIED = limit_malloc_arenas()
