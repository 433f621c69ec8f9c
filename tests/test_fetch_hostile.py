"""Hostile URLs: each must be refused with a 4xx before the victim server is contacted.

``victim`` is a local server nobody allowed (standing in for an internal
service); ``entry`` is an allow-listed local server used by the redirect cases.
URL templates use ``{victim}`` and ``{entry}`` for their ports.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Iterator

import pytest

from nsfw_core.base.errors import ForbiddenAddress, InputError
from nsfw_core.base.settings import load_settings
from nsfw_core.images.fetch import fetch
from tests.helpers.servers import LocalServer, image, redirect, serve
from tests.helpers.ssrf_cases import CASES, EXPECTED, Case, resolver


@pytest.fixture
def victim() -> Iterator[LocalServer]:
    with serve() as server:
        server.route("/", image(b"secret"))
        yield server


@pytest.fixture
def entry() -> Iterator[LocalServer]:
    with serve() as server:
        server.route("/final.png", image())
        yield server


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every address the fetcher opens a connection to."""
    targets: list[tuple[Any, ...]] = []
    real = socket.create_connection

    def record(address: tuple[Any, ...], *args: Any, **kwargs: Any) -> socket.socket:
        targets.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", record)
    return targets


def setup(case: Case, victim: LocalServer, entry: LocalServer) -> tuple[str, Any]:
    """The URL to fetch and the settings for ``case``."""
    url = case.url.format(victim=victim.port, entry=entry.port)
    if case.via == "direct":
        return url, load_settings(environ={}).fetch_policy
    settings = load_settings(environ={}, allow_private_hosts=(entry.netloc,), max_redirects=3).fetch_policy
    entry.redirect_chain(settings.max_redirects + 1, "/final.png", prefix="/chain")
    entry.redirect_loop(3)
    entry.route("/self", redirect("/self"))
    if case.via == "redirect":
        url = entry.route("/go", redirect(url))
    return url, settings


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 35
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_url_is_refused(case: Case, victim: LocalServer, entry: LocalServer, connects: list[Any]) -> None:
    url, settings = setup(case, victim, entry)
    started = time.monotonic()

    with pytest.raises(InputError) as info:
        fetch(url, settings, resolver=resolver)

    error = info.value
    assert type(error) is case.error
    assert (error.status, error.code) == EXPECTED[case.error]
    assert time.monotonic() - started < 1
    assert (victim.connections, victim.requests) == (0, [])
    assert all(target == ("127.0.0.1", entry.port) for target in connects)
    if case.via == "direct":
        assert connects == [] and entry.connections == 0
    else:
        assert entry.requests, "the allowed server should have been asked"


def test_hostile_cases_never_consult_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a resolver hook, refused literals and loopback names never reach getaddrinfo."""

    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("getaddrinfo called")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for url in ("http://127.1/", "http://[::ffff:10.0.0.1]/", "http://localhost/", "http://a.localhost./"):
        with pytest.raises(ForbiddenAddress):
            fetch(url, load_settings(environ={}).fetch_policy)
