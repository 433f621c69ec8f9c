"""The process context: created once, shared, released."""

from __future__ import annotations

import asyncio

import pytest

from nsfw_core import context as context_module
from nsfw_core.base.errors import NotReady
from nsfw_core.base.settings import load_settings
from nsfw_core.context import Context, current, install


@pytest.fixture
def settings(tmp_path):
    return load_settings(environ={"NSFW_DATA_DIR": str(tmp_path), "NSFW_WORKERS": "3", "NSFW_MAX_IN_FLIGHT": "5"})


@pytest.fixture
def no_current(monkeypatch):
    """Each test starts without a process context and leaves none behind."""
    monkeypatch.setattr(context_module, "_current", None)
    yield
    leftover = install(None)
    if leftover is not None:
        leftover.close()


def test_current_creates_one_context_on_first_use_and_keeps_it(no_current, settings):
    first = current(settings)
    assert current() is first
    assert current(load_settings(environ={})) is first  # later settings do not build a second one
    assert first.settings is settings


def test_install_replaces_the_context_and_returns_the_previous_one(no_current, settings):
    a, b = Context(settings), Context(settings)
    try:
        assert install(a) is None
        assert current() is a
        assert install(b) is a
        assert current() is b
    finally:
        a.close()


def test_the_context_passes_narrow_settings_to_its_parts(settings):
    ctx = Context(settings)
    try:
        assert ctx.serving.workers == 3
        assert ctx.admission.limit == 5
        assert ctx.executor._max_workers == 3
        assert ctx.decoder.limits == settings.decode_limits
        assert ctx.fetch_policy == settings.fetch_policy
        review = ctx.classifier.review
        assert review.queues("unknown") and not review.queues("adult") and not review.queues("safe")
    finally:
        ctx.close()


def test_one_review_queue_per_context(settings):
    ctx = Context(settings)
    try:
        assert ctx.review_queue is ctx.review_queue
    finally:
        ctx.close()


def test_one_database_pool_per_context_shared_by_queue_and_thresholds(settings):
    ctx = Context(settings)
    try:
        assert ctx.review_queue._pool is ctx.database
        assert ctx.thresholds._pool is ctx.database
        ctx.review_queue.close()  # a queue does not close the pool it was given
        assert ctx.thresholds.current().source == "defaults"
        assert ctx.thresholds.history() == []
    finally:
        ctx.close()
    with pytest.raises(Exception, match="closed"):
        with ctx.database.connection():
            pass


def test_not_ready_until_started(settings):
    ctx = Context(settings)
    try:
        assert not ctx.ready
        with pytest.raises(NotReady, match="the model is loading"):
            asyncio.run(ctx.classifier.data(b"not even an image"))
    finally:
        ctx.close()
