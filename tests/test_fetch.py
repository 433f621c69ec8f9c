"""nsfw_core.images.fetch against real servers on 127.0.0.1 (no network beyond loopback)."""

from __future__ import annotations

import concurrent.futures
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import nsfw_core.images.fetch
from nsfw_core.base.errors import (
    ForbiddenAddress,
    InvalidURL,
    NotAnImage,
    TooLarge,
    TooManyRedirects,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from nsfw_core.base.settings import load_settings
from nsfw_core.images.fetch import DEFAULT_USER_AGENT, FetchResult, fetch, system_resolver
from tests.helpers.servers import (
    LocalServer,
    chunked,
    endless,
    gzip_bomb,
    hang,
    html,
    image,
    long_body,
    raw,
    redirect,
    redirect_without_location,
    serve,
    short_body,
    slow,
    status,
    tiny_png,
    until_eof,
)

PUBLIC_IP = "93.184.216.34"  # never connected to: tests that resolve to it intercept the connect


def settings_for(*allowed: str, **overrides: Any) -> Any:
    return load_settings(environ={}, allow_private_hosts=allowed, **overrides).fetch_policy


def allowing(server: LocalServer, **overrides: Any) -> Any:
    return settings_for(server.netloc, **overrides)


def resolver_for(table: dict[str, list[str]], calls: list[tuple[str, int]] | None = None) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append((host, port))
        return table[host]

    return resolve


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Intercept every outgoing connection: record the target and refuse it."""
    attempts: list[tuple[Any, ...]] = []

    def refuse(address: tuple[Any, ...], *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append(address)
        raise ConnectionRefusedError("intercepted by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


# --------------------------------------------------------------------------- happy path


def test_fetches_an_image_from_an_allowed_host(local_server: LocalServer) -> None:
    png = tiny_png(3, 2)
    url = local_server.route("/cat.png", image(png))

    result = fetch(url, allowing(local_server))

    assert isinstance(result, FetchResult)
    assert (result.url, result.final_url, result.redirects) == (url, url, ())
    assert (result.status, result.content, result.content_type) == (200, png, "image/png")
    assert 0 <= result.elapsed < 2
    [request] = local_server.requests
    assert (request.method, request.path) == ("GET", "/cat.png")
    assert request.headers["host"] == local_server.netloc
    assert request.headers["user-agent"] == DEFAULT_USER_AGENT
    assert DEFAULT_USER_AGENT.startswith("nsfw-service/")
    assert request.headers["accept"] == "image/*"
    assert request.headers["accept-encoding"] == "identity"


def test_returns_any_2xx_body_as_is(local_server: LocalServer) -> None:
    """The fetcher does not sniff: an HTML page comes back for the decoder to reject."""
    url = local_server.route("/page", html("<p>hi</p>"))
    result = fetch(url, allowing(local_server))
    assert (result.content, result.content_type) == (b"<p>hi</p>", "text/html; charset=utf-8")


def test_query_kept_and_non_ascii_path_percent_encoded(local_server: LocalServer) -> None:
    local_server.route("/caf%C3%A9.png", image())
    result = fetch(local_server.url("/café.png?size=2&x=%20#frag"), allowing(local_server))
    assert result.status == 200
    assert local_server.paths() == ["/caf%C3%A9.png?size=2&x=%20"]


def test_body_without_content_length_is_read_to_the_end(local_server: LocalServer) -> None:
    body = b"z" * 200_000
    assert fetch(local_server.route("/eof", until_eof(body)), allowing(local_server)).content == body
    assert fetch(local_server.route("/chunked", chunked(body, 7000)), allowing(local_server)).content == body


def test_concurrent_fetches(local_server: LocalServer) -> None:
    bodies = {f"/img{i}": bytes([i]) * (1000 + i) for i in range(16)}
    for path, body in bodies.items():
        local_server.route(path, image(body))
    settings = allowing(local_server)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda path: fetch(local_server.url(path), settings), bodies))
    assert [r.content for r in results] == list(bodies.values())


def test_the_url_is_split_scheme_and_host_normalised(no_connect: list[Any]) -> None:
    calls: list[tuple[str, int]] = []
    with pytest.raises(UpstreamUnreachable):  # the test refuses the connection
        fetch("HTTPS://Example.COM:8443/a/b?c=d#e", settings_for(),
              resolver=resolver_for({"example.com": [PUBLIC_IP]}, calls))
    assert calls == [("example.com", 8443)]  # scheme https (capitals accepted), host lower-cased, the port read
    assert [address[:2] for address in no_connect] == [(PUBLIC_IP, 8443)]
    with pytest.raises(InvalidURL):
        fetch("ftp://example.com/", settings_for())


def test_the_request_target_is_the_path_and_query_without_the_fragment(local_server: LocalServer) -> None:
    local_server.route("/a/b", image())
    fetch(local_server.url("/a/b?c=d#e").replace("http://", "HTTP://"), allowing(local_server))
    assert local_server.paths() == ["/a/b?c=d"]


@pytest.mark.parametrize("url", [None, "", 42])
def test_missing_url_is_invalid(url: Any) -> None:
    with pytest.raises(InvalidURL) as info:
        fetch(url, settings_for())
    assert (info.value.status, info.value.code) == (400, "invalid_url")


def test_url_length_limit_follows_the_setting(local_server: LocalServer) -> None:
    url = local_server.route("/" + "a" * 40, image())
    with pytest.raises(InvalidURL):
        fetch(url, allowing(local_server, max_url_length=len(url) - 1))
    assert fetch(url, allowing(local_server, max_url_length=len(url))).status == 200


# --------------------------------------------------------------------------- allow list


@pytest.mark.parametrize(
    ("entries", "allowed"),
    [
        (["127.0.0.1:{port}"], True),
        (["127.0.0.1"], True),  # a host without port allows every port
        (["*"], True),
        (["bad:[entry", "127.0.0.1:{port}"], True),  # malformed entries are ignored
        (["127.0.0.1:{other}"], False),  # wrong port
        (["127.0.0.2"], False),
        (["localhost:{port}"], False),  # names are not addresses
        ([], False),
        (["bad:[entry"], False),
    ],
)
def test_allow_list_entries(local_server: LocalServer, entries: list[str], allowed: bool) -> None:
    url = local_server.route("/ok.png", image())
    other = local_server.port + 1 if local_server.port < 65535 else local_server.port - 1
    settings = settings_for(*(e.format(port=local_server.port, other=other) for e in entries))
    if allowed:
        assert fetch(url, settings).status == 200
        assert local_server.paths() == ["/ok.png"]
    else:
        with pytest.raises(ForbiddenAddress) as info:
            fetch(url, settings)
        assert (info.value.status, info.value.code) == (403, "forbidden_address")
        assert local_server.connections == 0


def test_allow_list_compares_normalised_hosts(local_server: LocalServer) -> None:
    local_server.route("/ok.png", image())
    calls: list[tuple[str, int]] = []
    resolver = resolver_for({"images.test": ["127.0.0.1"]}, calls)
    settings = settings_for(f"Images.TEST.:{local_server.port}", f"127.0.0.1:{local_server.port}")

    assert fetch(f"http://IMAGES.test.:{local_server.port}/ok.png", settings, resolver=resolver).status == 200
    assert fetch(f"http://127.1:{local_server.port}/ok.png", settings).status == 200  # literal spellings too
    assert calls == [("images.test", local_server.port)]
    assert [r.headers["host"] for r in local_server.requests] == [f"images.test:{local_server.port}", local_server.netloc]


def test_localhost_can_be_allowed(local_server: LocalServer) -> None:
    url = local_server.route("/ok.png", image()).replace("127.0.0.1", "localhost")
    resolver = resolver_for({"localhost": ["127.0.0.1"]})
    assert fetch(url, settings_for(f"localhost:{local_server.port}"), resolver=resolver).status == 200
    with pytest.raises(ForbiddenAddress, match="loopback name"):
        fetch(url, settings_for(), resolver=resolver)


def test_allow_list_ipv6_entries(local_server_factory: Callable[..., LocalServer]) -> None:
    try:
        server = local_server_factory("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    url = server.route("/ok.png", image())
    assert url == f"http://[::1]:{server.port}/ok.png"
    assert fetch(url, settings_for(f"[::1]:{server.port}")).status == 200
    assert fetch(url, settings_for("::1")).status == 200
    assert server.requests[0].headers["host"] == f"[::1]:{server.port}"
    with pytest.raises(ForbiddenAddress):
        fetch(url, settings_for(f"[::1]:{server.port + 1}", f"127.0.0.1:{server.port}"))
    assert server.connections == 2


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_follows_redirects(local_server: LocalServer, code: int) -> None:
    local_server.route("/final.png", image(b"final"))
    local_server.route("/absolute", redirect(local_server.url("/final.png"), code))
    start = local_server.route("/relative", redirect("absolute", code))

    result = fetch(start, allowing(local_server))

    assert result.content == b"final"
    assert result.url == start
    assert result.redirects == (local_server.url("/absolute"), local_server.url("/final.png"))
    assert result.final_url == local_server.url("/final.png")
    assert local_server.paths() == ["/relative", "/absolute", "/final.png"]


def test_redirect_to_another_allowed_server(local_server_factory: Callable[..., LocalServer]) -> None:
    first, second = local_server_factory(), local_server_factory()
    second.route("/img.png", image(b"two"))
    start = first.route("/go", redirect(second.url("/img.png")))
    assert fetch(start, settings_for(first.netloc, second.netloc)).content == b"two"


def test_redirect_to_a_private_host_not_on_the_allow_list(local_server_factory: Callable[..., LocalServer]) -> None:
    allowed, private = local_server_factory(), local_server_factory()
    private.route("/secret", image(b"secret"))
    start = allowed.route("/go", redirect(private.url("/secret")))

    with pytest.raises(ForbiddenAddress):
        fetch(start, allowing(allowed))

    assert allowed.paths() == ["/go"]
    assert (private.connections, private.requests) == (0, [])


def test_redirect_limit(local_server: LocalServer) -> None:
    local_server.route("/final.png", image())
    settings = allowing(local_server, max_redirects=3)
    ok = local_server.redirect_chain(3, "/final.png", prefix="/ok")
    assert len(fetch(ok, settings).redirects) == 3

    too_long = local_server.redirect_chain(4, "/final.png", prefix="/long")
    with pytest.raises(TooManyRedirects) as info:
        fetch(too_long, settings)
    assert (info.value.status, info.value.code) == (400, "too_many_redirects")
    assert local_server.paths()[4:] == ["/long/0", "/long/1", "/long/2", "/long/3"]  # final.png never asked for


def test_no_redirects_allowed(local_server: LocalServer) -> None:
    local_server.route("/final.png", image())
    with pytest.raises(TooManyRedirects):
        fetch(local_server.route("/go", redirect("/final.png")), allowing(local_server, max_redirects=0))


def test_redirect_loop(local_server: LocalServer) -> None:
    with pytest.raises(TooManyRedirects, match="loop"):
        fetch(local_server.redirect_loop(2), allowing(local_server, max_redirects=20))
    assert local_server.paths() == ["/loop/0", "/loop/1"]


def test_redirect_without_location(local_server: LocalServer) -> None:
    with pytest.raises(UpstreamError) as info:
        fetch(local_server.route("/r", redirect_without_location(302)), allowing(local_server))
    assert type(info.value) is UpstreamError
    assert info.value.details == {"upstream_status": 302}


def test_redirect_to_a_bad_scheme(local_server: LocalServer) -> None:
    with pytest.raises(InvalidURL):
        fetch(local_server.route("/r", redirect("file:///etc/passwd")), allowing(local_server))


# --------------------------------------------------------------------------- size, timeouts, broken upstreams


def test_content_length_over_the_cap_is_refused_before_reading(local_server: LocalServer) -> None:
    headers = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\nxx"
    url = local_server.route("/huge", raw(headers, hold=30))
    started = time.monotonic()
    with pytest.raises(TooLarge) as info:
        fetch(url, allowing(local_server, max_bytes=1000, fetch_timeout=10))
    assert time.monotonic() - started < 1
    assert (info.value.status, info.value.code) == (413, "too_large")


@pytest.mark.parametrize("responder", [until_eof(b"x" * 5000), chunked(b"x" * 5000, 100), endless()], ids=["eof", "chunked", "endless"])
def test_streamed_body_over_the_cap(local_server: LocalServer, responder: Any) -> None:
    with pytest.raises(TooLarge):
        fetch(local_server.route("/big", responder), allowing(local_server, max_bytes=1000))


def test_body_of_exactly_the_cap(local_server: LocalServer) -> None:
    for path, responder in [("/cl", image(b"x" * 1000)), ("/eof", until_eof(b"x" * 1000)), ("/ch", chunked(b"x" * 1000, 64))]:
        assert len(fetch(local_server.route(path, responder), allowing(local_server, max_bytes=1000)).content) == 1000


@pytest.mark.parametrize("with_length", [True, False])
def test_slowloris_body_is_cut_at_the_deadline(local_server: LocalServer, with_length: bool) -> None:
    url = local_server.route("/slow", slow(b"x" * 100, delay=0.2, content_length=with_length))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        fetch(url, allowing(local_server, fetch_timeout=1.5))
    assert 1.4 < time.monotonic() - started < 2.5
    assert (info.value.status, info.value.code) == (504, "upstream_timeout")


def test_slowloris_headers_are_cut_at_the_deadline(local_server: LocalServer) -> None:
    def trickle(handler: Any) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            if handler.stopping(0.1):
                return

    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        fetch(local_server.route("/trickle", trickle), allowing(local_server, fetch_timeout=1))
    assert time.monotonic() - started < 2


def test_silent_server_times_out(local_server: LocalServer) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        fetch(local_server.route("/hang", hang()), allowing(local_server, fetch_timeout=0.5))
    assert time.monotonic() - started < 1.5


def test_deadline_covers_every_hop(local_server: LocalServer) -> None:
    def slow_redirect(handler: Any) -> None:  # /slow-redirect?n -> /slow-redirect?n+1 after 0.4 s
        handler.stopping(0.4)
        hop = int(handler.path.partition("?")[2] or 0)
        redirect(f"/slow-redirect?{hop + 1}")(handler)

    with pytest.raises(UpstreamTimeout):
        fetch(local_server.route("/slow-redirect", slow_redirect), allowing(local_server, fetch_timeout=1, max_redirects=20))
    assert len(local_server.requests) <= 3


def test_short_body(local_server: LocalServer) -> None:
    with pytest.raises(UpstreamError, match="3 of the 100 bytes") as info:
        fetch(local_server.route("/short", short_body(100, b"abc")), allowing(local_server))
    assert type(info.value) is UpstreamError


def test_truncated_chunked_body(local_server: LocalServer) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    with pytest.raises(UpstreamError) as info:
        fetch(local_server.route("/cut", raw(head + b"64\r\nabc")), allowing(local_server))
    assert type(info.value) is UpstreamError


def test_body_longer_than_content_length_is_truncated(local_server: LocalServer) -> None:
    assert fetch(local_server.route("/long", long_body(3, b"abcdef")), allowing(local_server)).content == b"abc"


@pytest.mark.parametrize("code", [400, 403, 404, 410, 500, 503, 304, 300])
def test_upstream_error_status(local_server: LocalServer, code: int) -> None:
    with pytest.raises(UpstreamError) as info:
        fetch(local_server.route("/err", status(code)), allowing(local_server))
    error = info.value
    assert (type(error), error.status, error.code) == (UpstreamError, 502, "upstream_error")
    assert error.details == {"upstream_status": code}
    assert error.to_dict()["upstream_status"] == code


def test_encoded_body_is_refused(local_server: LocalServer) -> None:
    started = time.monotonic()
    with pytest.raises(NotAnImage) as info:
        fetch(local_server.route("/bomb", gzip_bomb()), allowing(local_server))
    assert (info.value.status, info.value.code) == (415, "not_an_image")
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    "response",
    [b"garbage\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"", b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n"],
    ids=["no-status-line", "bad-status", "empty", "too-many-headers"],
)
def test_malformed_responses(local_server: LocalServer, response: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        fetch(local_server.route("/bad", raw(response)), allowing(local_server))
    assert type(info.value) is UpstreamError


def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the fetch
    with pytest.raises(UpstreamUnreachable) as info:
        fetch(f"http://127.0.0.1:{port}/", settings_for("127.0.0.1"))
    assert (info.value.status, info.value.code) == (502, "upstream_unreachable")


# --------------------------------------------------------------------------- resolution and pinning


def test_name_resolving_to_private_is_refused_without_connecting(no_connect: list[Any]) -> None:
    resolver = resolver_for({"images.example.com": ["10.0.0.5"]})
    with pytest.raises(ForbiddenAddress):
        fetch("http://images.example.com/cat.png", settings_for(), resolver=resolver)
    assert no_connect == []


def test_name_resolving_to_loopback_never_reaches_the_server(local_server: LocalServer) -> None:
    local_server.route("/cat.png", image())
    resolver = resolver_for({"cdn.example.com": ["127.0.0.1"]})
    with pytest.raises(ForbiddenAddress):
        fetch(f"http://cdn.example.com:{local_server.port}/cat.png", settings_for(), resolver=resolver)
    assert (local_server.connections, local_server.requests) == (0, [])


def test_every_resolved_address_is_checked(no_connect: list[Any]) -> None:
    resolver = resolver_for({"mixed.example.com": [PUBLIC_IP, "2606:4700::1111", "127.0.0.1"]})
    with pytest.raises(ForbiddenAddress):
        fetch("http://mixed.example.com/", settings_for(), resolver=resolver)
    assert no_connect == []


def test_connects_to_the_checked_address_not_a_second_lookup(no_connect: list[Any]) -> None:
    """DNS rebinding: a second lookup would say 127.0.0.1, but there is no second lookup."""
    answers = iter([[PUBLIC_IP], ["127.0.0.1"], ["127.0.0.1"]])
    calls: list[tuple[str, int]] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return next(answers)

    with pytest.raises(UpstreamUnreachable):
        fetch("http://rebind.example.com/img.png", settings_for(), resolver=rebinding)
    assert calls == [("rebind.example.com", 80)]
    assert no_connect == [(PUBLIC_IP, 80)]


def test_allowed_name_is_pinned_to_its_resolved_address(local_server: LocalServer) -> None:
    local_server.route("/cat.png", image())
    calls: list[tuple[str, int]] = []
    resolver = resolver_for({"images.test": ["127.0.0.1"]}, calls)
    result = fetch(f"http://images.test:{local_server.port}/cat.png", settings_for("images.test"), resolver=resolver)
    assert result.status == 200
    assert calls == [("images.test", local_server.port)]
    assert local_server.requests[0].headers["host"] == f"images.test:{local_server.port}"


def test_tries_the_next_address_when_one_refuses(local_server: LocalServer) -> None:
    local_server.route("/cat.png", image())
    resolver = resolver_for({"multi.test": ["127.0.0.2", "127.0.0.1"]})  # the server listens on 127.0.0.1 only
    result = fetch(f"http://multi.test:{local_server.port}/cat.png", settings_for("multi.test"), resolver=resolver)
    assert result.status == 200


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), UpstreamUnreachable),
        (OSError("resolver broke"), UpstreamUnreachable),
        ([], UpstreamUnreachable),
        (["not-an-ip"], UpstreamUnreachable),
        (TimeoutError("slow dns"), UpstreamTimeout),
    ],
    ids=["gaierror", "oserror", "empty", "garbage", "timeout"],
)
def test_resolver_failures(answer: Any, error: type[Exception]) -> None:
    def resolver(host: str, port: int) -> list[str]:
        if isinstance(answer, BaseException):
            raise answer
        addresses: list[str] = answer
        return addresses

    with pytest.raises(error) as info:
        fetch("http://images.example.com/", settings_for(), resolver=resolver)
    assert type(info.value) is error


def test_slow_resolver_is_cut_at_the_deadline() -> None:
    def slow_resolver(host: str, port: int) -> list[str]:
        time.sleep(3)
        return [PUBLIC_IP]

    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        fetch("http://slow-dns.example.com/", settings_for(fetch_timeout=0.3), resolver=slow_resolver)
    assert time.monotonic() - started < 1


def test_system_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "gone.example.com":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::1", port, 0, 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert system_resolver("intranet.example.com", 80) == ["10.1.2.3", "fd00::1"]
    with pytest.raises(UpstreamUnreachable, match="could not be resolved") as info:
        fetch("http://gone.example.com/", settings_for())
    assert info.value.code == "upstream_unreachable"
    with pytest.raises(ForbiddenAddress):
        fetch("http://intranet.example.com/", settings_for())


# --------------------------------------------------------------------------- TLS


def test_tls_error_is_unreachable(local_server: LocalServer) -> None:
    """https:// to a plain-HTTP server: the handshake fails."""
    local_server.route("/cat.png", image())
    with pytest.raises(UpstreamUnreachable):
        fetch(f"https://127.0.0.1:{local_server.port}/cat.png", allowing(local_server))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for images.test (needs the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[LocalServer, list[str | None]]]:
    """An HTTPS server for images.test, and the SNI names its clients sent."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    sni: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: sni.append(name)
    with serve(tls=context) as server:
        server.route("/cat.png", image(b"tls cat"))
        yield server, sni


def test_tls_pins_the_address_and_verifies_the_name(
    tls_server: tuple[LocalServer, list[str | None]], certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, sni = tls_server
    resolver = resolver_for({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    settings = settings_for("images.test", "other.test")

    with pytest.raises(UpstreamUnreachable, match="certificate"):  # self-signed: not trusted by default
        fetch(f"https://images.test:{server.port}/cat.png", settings, resolver=resolver)

    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    monkeypatch.setattr(nsfw_core.images.fetch, "_tls_context", lambda: trusting)
    result = fetch(f"https://images.test:{server.port}/cat.png", settings, resolver=resolver)
    assert result.content == b"tls cat"
    assert server.requests[-1].headers["host"] == f"images.test:{server.port}"

    with pytest.raises(UpstreamUnreachable, match="certificate"):  # trusted, but for another name
        fetch(f"https://other.test:{server.port}/cat.png", settings, resolver=resolver)
    assert sni == ["images.test", "images.test", "other.test"]
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- keep-alive pool


def test_consecutive_fetches_reuse_one_keep_alive_connection(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(keep_alive=True)
    url = server.route("/cat.png", image(b"cat"))
    results = [fetch(url, allowing(server)) for _ in range(3)]
    assert [r.content for r in results] == [b"cat"] * 3
    assert (server.connections, len(server.requests)) == (1, 3)
    assert "connection" not in server.requests[0].headers
    assert nsfw_core.images.fetch.POOL.idle() == 1


def test_keep_alive_off_opens_one_connection_per_fetch(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(keep_alive=True)
    url = server.route("/cat.png", image(b"cat"))
    for _ in range(2):
        assert fetch(url, allowing(server, fetch_keepalive=False)).content == b"cat"
    assert server.connections == 2 and nsfw_core.images.fetch.POOL.idle() == 0
    assert server.requests[0].headers["connection"] == "close"


def test_a_server_that_closes_each_connection_gets_a_fresh_one_each_time(local_server: LocalServer) -> None:
    url = local_server.route("/cat.png", image(b"cat"))  # answers with "Connection: close"
    for _ in range(2):
        assert fetch(url, allowing(local_server)).content == b"cat"
    assert local_server.connections == 2 and nsfw_core.images.fetch.POOL.idle() == 0


def test_a_pooled_connection_the_server_dropped_is_replaced_once(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(keep_alive=True)

    def answer_then_hang_up(handler: Any) -> None:  # a keep-alive answer, then the server closes anyway
        image(b"cat")(handler)
        handler.close_connection = True

    url = server.route("/cat.png", answer_then_hang_up)
    assert fetch(url, allowing(server)).content == b"cat"
    time.sleep(0.1)  # the server has closed its end by now
    assert fetch(url, allowing(server)).content == b"cat"
    assert (server.connections, len(server.requests)) == (2, 2)


def test_only_complete_2xx_answers_leave_their_connection_open(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(keep_alive=True)
    missing = server.url("/missing.png")  # 404
    big = server.route("/big.png", image(b"x" * 5000))
    hop = server.route("/hop", redirect("/big.png"))
    with pytest.raises(UpstreamError):
        fetch(missing, allowing(server))
    with pytest.raises(TooLarge):
        fetch(big, allowing(server, max_bytes=1000))
    assert fetch(hop, allowing(server)).content == b"x" * 5000  # the redirect's connection is not kept...
    assert (server.connections, nsfw_core.images.fetch.POOL.idle()) == (4, 1)  # ...the final answer's is
    assert fetch(big, allowing(server)).status == 200
    assert server.connections == 4


def test_a_pooled_connection_is_reused_only_for_an_address_the_fresh_answer_still_checks(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(keep_alive=True)
    server.route("/cat.png", image(b"cat"))
    url = f"http://images.test:{server.port}/cat.png"
    settings = settings_for("images.test")
    assert fetch(url, settings, resolver=resolver_for({"images.test": ["127.0.0.1"]})).content == b"cat"
    assert nsfw_core.images.fetch.POOL.idle() == 1
    # The name now points elsewhere (a rebinding): the pooled socket to 127.0.0.1 must not carry the request.
    with pytest.raises(UpstreamUnreachable):
        fetch(url, settings, resolver=resolver_for({"images.test": ["127.0.0.2"]}))
    assert len(server.requests) == 1 and nsfw_core.images.fetch.POOL.idle() == 0


class _Idle:
    def __init__(self, peer: str) -> None:
        import ipaddress

        self.peer = ipaddress.ip_address(peer)
        self.idle_since = 0.0
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_pool_limits_close_the_oldest_and_the_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    from nsfw_core.images.fetch import ConnectionPool, PoolLimits

    pool = ConnectionPool(PoolLimits(max_idle=3, max_idle_per_origin=2, idle_seconds=5.0))
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # the module the pool reads the clock from
    a = ("http", "a.test", 80)
    conns = [_Idle("10.0.0.1") for _ in range(3)]
    for c in conns:
        pool.put(a, c)  # type: ignore[arg-type]
        now[0] += 1
    assert [c.closed for c in conns] == [True, False, False]  # two per origin
    others = [_Idle("10.0.0.2") for _ in range(2)]
    for c in others:
        pool.put(("http", "b.test", 80), c)  # type: ignore[arg-type]
        now[0] += 1
    assert conns[1].closed and pool.idle() == 3  # three in all: the oldest went
    addresses = [ipaddress.ip_address("10.0.0.1")]
    taken: object = pool.take(a, addresses)
    assert taken is conns[2]
    assert pool.take(a, addresses) is None
    now[0] += 10
    assert pool.take(("http", "b.test", 80), [ipaddress.ip_address("10.0.0.2")]) is None  # expired
    assert all(c.closed for c in others) and pool.idle() == 0
