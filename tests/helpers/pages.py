"""What the page tests share: a fresh process context for each AppTest run."""

from __future__ import annotations

from nsfw_core.context import install


def new_context() -> None:
    """Drop the process context: the next page run builds one from the environment as it is then."""
    old = install(None)
    if old is not None:
        old.close()
