"""SSRF-safe HTTP(S) image fetcher (standard library only).

Threat model: the URL comes from an untrusted caller and the service runs
inside a network that holds things the caller must not reach (cloud metadata
at 169.254.169.254, admin ports on localhost, private subnets).  So:

* only ``http``/``https`` URLs without credentials are accepted, and every
  numeric host spelling a C resolver understands (``127.1``, ``2130706433``,
  ``0x7f000001``, ``0177.0.0.1``, ``[::ffff:127.0.0.1]``...) is parsed as the
  address it stands for;
* every address a host resolves to must be globally routable, and the socket
  is opened to the very address that was checked (the name is used only for
  ``Host``, SNI and certificate checks), which defeats DNS rebinding;
* redirects are followed by hand and each hop is checked like the first;
* one deadline covers the whole fetch (DNS, every hop, the body) and is
  enforced on every ``recv``, so a server trickling bytes cannot hold a worker;
* the body is capped at ``policy.max_bytes`` while streaming (a video's at ``policy.max_video_bytes``,
  the cap chosen from the first bytes: :func:`nsfw_core.images.sniff.sniff_video`);
* a connection is kept alive for the next fetch (:data:`POOL`) only after a
  2xx answer whose body was read to its end, and it is reused only for the
  same scheme, host name and port *and* when the fresh DNS answer, checked
  like any other, still contains the address it is connected to.

Hosts in ``policy.allow_private_hosts`` (``host``, ``host:port``,
``[v6]:port`` or ``*``) skip the address check; they are for development and
tests.  Responses with a ``Content-Encoding`` other than ``identity`` are
refused as :class:`NotAnImage` without reading the body (we ask for identity
and never decompress, so compression bombs cannot hurt).

Only the errors of :mod:`nsfw_core.base.errors` leave :func:`fetch`.
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any, Callable, Sequence

from nsfw_core.base.errors import (
    ForbiddenAddress,
    InvalidURL,
    NotAnImage,
    NSFWError,
    TooLarge,
    TooManyRedirects,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from nsfw_core.base.settings import FetchPolicy
from nsfw_core.images.sniff import sniff_video

DEFAULT_USER_AGENT = "nsfw-service/1.0"
REQUEST_HEADERS = {
    "User-Agent": DEFAULT_USER_AGENT,
    "Accept": "image/*",
    "Accept-Encoding": "identity",
}
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_SIZE = 64 * 1024
MAX_HOSTNAME_LENGTH = 253
# Well-known NAT64 prefix (RFC 6052): the last 32 bits are the IPv4 address.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f]|\s")
_AUTHORITY = re.compile(r"(?:\[(?P<v6>[^\[\]]*)\]|(?P<name>[^\[\]:]+))(?::(?P<port>[0-9]{0,5}))?")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
# Characters left as they are in the request target; anything else (non-ASCII,
# quotes, braces...) is percent-encoded.
_SAFE_TARGET_CHARS = "!$%&'()*+,/:;=?@[]~"


def is_url(source: str) -> bool:
    """Whether ``source`` is meant as a URL (it has a scheme), not a local path.

    The one test of "is this a URL" in the project: a source that is one goes to :func:`fetch`,
    which refuses every scheme but http and https; nothing that looks like a URL is read as a path.
    """
    return "://" in source[:16] or source.lower().startswith(("http:", "https:"))


@dataclasses.dataclass(frozen=True)
class FetchResult:
    url: str  # the URL asked for
    final_url: str  # after redirects
    content: bytes
    status: int
    content_type: str | None  # as the server said (informational only; callers sniff bytes)
    redirects: tuple[str, ...]  # every URL redirected to, in order (the last is final_url)
    elapsed: float  # seconds


def fetch(url: str, policy: FetchPolicy, *, resolver: Resolver | None = None,
          pool: ConnectionPool | None = None) -> FetchResult:
    """Fetch ``url`` under the rules of the module docstring and the limits of ``policy``.

    ``resolver(host, port)`` returns the IP address strings of ``host``
    (default: :func:`system_resolver`); IP literals are never passed to it.
    ``pool`` keeps connections alive between fetches (default :data:`POOL`; the process
    context passes its own).
    """
    started = time.monotonic()
    deadline = _Deadline(policy.timeout)
    try:
        final_url, redirects, reply = _follow(url, policy, resolver or system_resolver, deadline,
                                              POOL if pool is None else pool)
    except (OSError, http.client.HTTPException, ValueError) as exc:  # UnicodeError is a ValueError
        raise _as_upstream_error(exc) from exc
    return FetchResult(
        url=url,
        final_url=final_url,
        content=reply.content,
        status=reply.status,
        content_type=reply.content_type,
        redirects=redirects,
        elapsed=time.monotonic() - started,
    )


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system resolver (``socket.getaddrinfo``)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UpstreamUnreachable(f"the host {host} could not be resolved") from exc
    return [str(info[4][0]) for info in infos]


# --------------------------------------------------------------------------- URLs


@dataclasses.dataclass(frozen=True)
class _Target:
    parts: urllib.parse.SplitResult
    host: str  # lower-case ASCII name, or the canonical form of an IP literal
    literal: IPAddress | None  # set when the host is an IP address in any spelling
    port: int

    @property
    def request_path(self) -> str:
        path = self.parts.path or "/"
        if self.parts.query:
            path += "?" + self.parts.query
        return urllib.parse.quote(path, safe=_SAFE_TARGET_CHARS)


def check_url(url: str, policy: FetchPolicy) -> None:
    """:class:`InvalidURL` unless ``url`` is one :func:`fetch` would try (syntax only: no DNS, no address check);
    for URLs taken now and fetched later (a video job's)."""
    _parse(url, policy)


def _parse(url: str, policy: FetchPolicy) -> _Target:
    if not isinstance(url, str) or not url:
        raise InvalidURL("no URL given")
    if len(url) > policy.max_url_length:
        raise InvalidURL(f"the URL is longer than {policy.max_url_length} characters")
    if _BAD_URL_CHARS.search(url):
        raise InvalidURL("the URL contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise InvalidURL("the URL is malformed") from exc
    if parts.scheme not in DEFAULT_PORTS:
        raise InvalidURL("only http and https URLs can be fetched")
    if not parts.netloc:
        raise InvalidURL("the URL has no host")
    if "@" in parts.netloc:
        raise InvalidURL("URLs with credentials (user:password@) are not accepted")
    host, literal, port = _parse_authority(parts.netloc)
    return _Target(parts, host, literal, port or DEFAULT_PORTS[parts.scheme])


def _parse_authority(authority: str) -> tuple[str, IPAddress | None, int | None]:
    """``host[:port]`` or ``[v6][:port]`` -> (normalised host, address if a literal, port or None)."""
    match = _AUTHORITY.fullmatch(authority)
    if match is None:
        raise InvalidURL("the URL's host or port is malformed")
    literal: IPAddress | None
    if match["v6"] is not None:
        literal = _ipv6_literal(match["v6"])
        host = str(literal)
    else:
        host, literal = _normalise_name(match["name"])
    return host, literal, _port(match["port"])


def _port(text: str | None) -> int | None:
    if not text:
        return None
    port = int(text)
    if not 1 <= port <= 65535:
        raise InvalidURL("the URL's port is out of range")
    return port


def _ipv6_literal(text: str) -> ipaddress.IPv6Address:
    if "%" in text:  # zone ids mean nothing to a remote caller
        raise InvalidURL("IPv6 zone identifiers are not accepted")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError as exc:
        raise InvalidURL("the URL's IPv6 address is malformed") from exc


def _normalise_name(raw: str) -> tuple[str, ipaddress.IPv4Address | None]:
    """Lower-case, IDNA-encode and strip one trailing dot; parse numeric IPv4 spellings."""
    host = raw
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidURL("the URL's host is not a valid international domain name") from exc
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    labels = host.split(".")
    if len(host) > MAX_HOSTNAME_LENGTH or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidURL("the URL's host name is malformed")
    for label in labels:
        if label.startswith("xn--"):  # an ASCII-spelled international label must decode
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError as exc:
                raise InvalidURL("the URL's host is not a valid international domain name") from exc
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return host, None
    address = _inet_aton(labels)
    return str(address), address


def _inet_aton(labels: list[str]) -> ipaddress.IPv4Address:
    """Parse ``a``, ``a.b``, ``a.b.c`` or ``a.b.c.d`` (decimal, 0x-hex or 0-octal parts) like inet_aton(3).

    A host whose last label is numeric is an IPv4 address or nothing (as in the
    WHATWG URL standard), so a failure here is an invalid URL.
    """
    try:
        numbers = [_inet_number(label) for label in labels]
    except ValueError as exc:
        raise InvalidURL("the URL's numeric host is not a valid IPv4 address") from exc
    *head, last = numbers
    if len(numbers) > 4 or any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise InvalidURL("the URL's numeric host is not a valid IPv4 address")
    value = last
    for index, number in enumerate(head):
        value |= number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _inet_number(label: str) -> int:
    if label.startswith("0x"):
        return int(label[2:], 16)
    if len(label) > 1 and label.startswith("0"):
        return int(label[1:], 8)
    return int(label, 10)


# --------------------------------------------------------------------------- addresses


@dataclasses.dataclass(frozen=True)
class _AllowList:
    """Parsed ``policy.allow_private_hosts``; entries that do not parse are ignored (fail closed)."""

    everything: bool
    entries: frozenset[tuple[str, int | None]]

    @classmethod
    def parse(cls, raw: Sequence[str]) -> _AllowList:
        entries = {entry for entry in map(_allow_entry, raw) if entry is not None}
        return cls("*" in raw, frozenset(entries))

    def allows(self, host: str, port: int) -> bool:
        return self.everything or (host, port) in self.entries or (host, None) in self.entries


def _allow_entry(raw: str) -> tuple[str, int | None] | None:
    entry = raw.strip()
    try:
        if entry.count(":") > 1 and not entry.startswith("["):  # a bare IPv6 address
            return str(_ipv6_literal(entry)), None
        host, _, port = _parse_authority(entry)
    except (InvalidURL, ValueError):
        return None
    return host, port


def _checked_addresses(
    target: _Target, resolver: Resolver, allow: _AllowList, deadline: _Deadline
) -> list[IPAddress]:
    """The addresses to connect to; ForbiddenAddress if any is not public (unless allow-listed)."""
    allowed = allow.allows(target.host, target.port)
    if target.literal is not None:
        addresses: list[IPAddress] = [target.literal]
    elif _is_localhost_name(target.host) and not allowed:
        raise ForbiddenAddress(f"refusing to fetch from {target.host}: it is a loopback name (RFC 6761)")
    else:
        addresses = _resolve(resolver, target.host, target.port, deadline)
    if not allowed:
        verb = "is" if target.literal is not None else "resolves to"
        for address in addresses:
            reason = _forbidden_reason(address)
            if reason is not None:
                raise ForbiddenAddress(f"refusing to fetch from {target.host}: it {verb} {reason}")
    return addresses


def _is_localhost_name(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")  # RFC 6761


def _forbidden_reason(address: IPAddress) -> str | None:
    """What ``address`` is ("a loopback address"...) when it must not be connected to; None when public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or _nat64_embedded(address)
        if embedded is not None:  # the connection really goes to this IPv4 address
            return _forbidden_reason(embedded)
        for tunnelled in (address.sixtofour, *(address.teredo or ())):
            if tunnelled is not None and _forbidden_reason(tunnelled) is not None:
                return "an IPv6 tunnel (6to4/Teredo) to a non-public address"
        if address.is_site_local:
            return "a site-local address"
    # ipaddress.is_global has gaps (multicast, ::/8, fec0::/10 count as global), hence the explicit checks.
    checks = (
        ("a loopback address", address.is_loopback),
        ("an unspecified address", address.is_unspecified),
        ("a link-local address", address.is_link_local),
        ("a multicast address", address.is_multicast),
        ("a private address", address.is_private),
        ("a reserved address", address.is_reserved),
        ("a non-public address", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


def _nat64_embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _resolve(resolver: Resolver, host: str, port: int, deadline: _Deadline) -> list[IPAddress]:
    try:
        answer = _call_before_deadline(functools.partial(resolver, host, port), deadline)
    except TimeoutError as exc:
        raise UpstreamTimeout(f"resolving the host {host} took too long") from exc
    except (OSError, ValueError) as exc:
        raise UpstreamUnreachable(f"the host {host} could not be resolved") from exc
    addresses: list[IPAddress] = []
    for text in answer:
        try:
            address = ipaddress.ip_address(text)
        except ValueError as exc:
            raise UpstreamUnreachable(f"the host {host} resolved to an invalid address") from exc
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UpstreamUnreachable(f"the host {host} could not be resolved")
    return addresses


def _call_before_deadline(call: Callable[[], Sequence[str]], deadline: _Deadline) -> Sequence[str]:
    """Run ``call`` (a resolver: getaddrinfo has no timeout) in a helper thread, waiting at most until the deadline."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="nsfw-fetch-resolve", daemon=True)
    worker.start()
    worker.join(deadline.remaining())
    if worker.is_alive():
        raise TimeoutError("name resolution timed out")
    if "error" in outcome:
        raise outcome["error"]
    addresses: Sequence[str] = outcome["value"]
    return addresses


# --------------------------------------------------------------------------- HTTP


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; raises UpstreamTimeout once the deadline has passed."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise UpstreamTimeout(f"fetching the URL took longer than {self._seconds:g} s")
        return left


class _DeadlineReader(io.RawIOBase):
    """Socket reader giving each ``recv`` only the time left before the deadline.

    ``readline``/``read(n)`` loop over many ``recv`` calls, so a plain socket
    timeout would let a server sending one byte per second go on forever.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(self._deadline.remaining())
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP connection to addresses checked beforehand; the host name only goes into ``Host``."""

    def __init__(
        self, host: str, port: int, addresses: list[IPAddress], connect_timeout: float, deadline: _Deadline
    ) -> None:
        super().__init__(host, port)
        self._addresses = addresses
        self._connect_timeout = connect_timeout
        self.peer: IPAddress | None = None  # the address connected to
        self.idle_since = 0.0  # time.monotonic() when it went back to the pool
        self.arm(deadline)

    def arm(self, deadline: _Deadline) -> None:
        """Bind the connection (and the responses it reads) to one fetch's deadline."""
        self._deadline = deadline
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline)  # type: ignore[assignment]
        if self.sock is not None:
            self.sock.settimeout(deadline.remaining())

    def connect(self) -> None:
        sock = self._open()
        try:
            self.peer = ipaddress.ip_address(sock.getpeername()[0].split("%", 1)[0])
            sock = self._secure(sock)
            sock.settimeout(self._deadline.remaining())
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def _open(self) -> socket.socket:
        """A TCP connection to the first checked address that accepts one."""
        errors: list[OSError] = []
        for address in self._addresses:
            timeout = min(self._connect_timeout, self._deadline.remaining())
            try:
                sock = socket.create_connection((str(address), self.port), timeout)
            except OSError as exc:
                errors.append(exc)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # requests go out whole, not Nagle-delayed
            return sock
        raise errors[-1]

    def _secure(self, sock: socket.socket) -> socket.socket:
        return sock


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """TLS over the pinned socket; SNI and certificate verification use the host name."""

    default_port = 443

    def _secure(self, sock: socket.socket) -> socket.socket:
        return _tls_context().wrap_socket(sock, server_hostname=self.host)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's default verifying context, built once (loading the CA store is slow); thread-safe."""
    return ssl.create_default_context()


@dataclasses.dataclass(frozen=True)
class _Reply:
    status: int
    content_type: str | None
    location: str | None  # set on redirects
    content: bytes


def _follow(url: str, policy: FetchPolicy, resolver: Resolver, deadline: _Deadline,
            pool: ConnectionPool) -> tuple[str, tuple[str, ...], _Reply]:
    allow = _AllowList.parse(policy.allow_private_hosts)
    redirects: list[str] = []
    current = url
    while True:
        target = _parse(current, policy)
        addresses = _checked_addresses(target, resolver, allow, deadline)
        reply = _exchange(target, addresses, policy, deadline, pool)
        if reply.location is None:
            return current, tuple(redirects), reply
        current = _redirect_url(current, reply.location, [url, *redirects], policy.max_redirects)
        redirects.append(current)


def _redirect_url(base: str, location: str, visited: list[str], max_redirects: int) -> str:
    try:
        url = urllib.parse.urljoin(base, location)
    except ValueError as exc:
        raise InvalidURL("the image host redirected to a malformed URL") from exc
    if url in visited:
        raise TooManyRedirects("the image host redirects in a loop")
    if len(visited) > max_redirects:  # visited holds the first URL and every redirect so far
        raise TooManyRedirects(f"the image host redirects more than {max_redirects} times")
    return url


@dataclasses.dataclass(frozen=True)
class PoolLimits:
    """How many idle keep-alive connections :data:`POOL` holds, and for how long."""

    max_idle: int = 32  # in all
    max_idle_per_origin: int = 4  # per (scheme, host, port)
    idle_seconds: float = 5.0  # servers close idle connections too; older ones are dropped, not tried


DEFAULT_POOL_LIMITS = PoolLimits()


class ConnectionPool:
    """Idle keep-alive connections by origin; thread-safe. Connections leave it while in use."""

    def __init__(self, limits: PoolLimits = DEFAULT_POOL_LIMITS) -> None:
        self.limits = limits
        self._idle: dict[tuple[str, str, int], list[_PinnedHTTPConnection]] = {}
        self._lock = threading.Lock()

    def take(self, origin: tuple[str, str, int], addresses: Sequence[IPAddress]) -> _PinnedHTTPConnection | None:
        """The most recently used idle connection to ``origin`` whose peer is among ``addresses``."""
        now, found, stale = time.monotonic(), None, []
        with self._lock:
            idle = self._idle.get(origin, [])
            while idle and found is None:
                conn = idle.pop()
                if now - conn.idle_since > self.limits.idle_seconds or conn.peer not in addresses:
                    stale.append(conn)
                else:
                    found = conn
        for conn in stale:
            conn.close()
        return found

    def put(self, origin: tuple[str, str, int], conn: _PinnedHTTPConnection) -> None:
        conn.idle_since = time.monotonic()
        dropped: list[_PinnedHTTPConnection] = []
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            idle.append(conn)
            if len(idle) > self.limits.max_idle_per_origin:
                dropped.append(idle.pop(0))
            while sum(len(v) for v in self._idle.values()) > self.limits.max_idle:
                oldest = min((v for v in self._idle.values() if v), key=lambda v: v[0].idle_since)
                dropped.append(oldest.pop(0))
            self._idle = {k: v for k, v in self._idle.items() if v}
        for conn in dropped:
            conn.close()

    def idle(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def clear(self) -> None:
        with self._lock:
            conns = [c for v in self._idle.values() for c in v]
            self._idle = {}
        for conn in conns:
            conn.close()


POOL = ConnectionPool()

# A pooled connection the server has closed meanwhile fails like this before any answer arrives.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _exchange(target: _Target, addresses: list[IPAddress], policy: FetchPolicy, deadline: _Deadline,
              pool: ConnectionPool) -> _Reply:
    """One GET to ``target``, over a pooled keep-alive connection when one fits, else a fresh one."""
    origin = (target.parts.scheme, target.host, target.port)
    reused = pool.take(origin, addresses) if policy.keepalive else None
    if reused is not None:
        try:
            return _exchange_on(reused, origin, target, policy, deadline, pool)
        except _STALE:
            pass  # closed by the server while idle: once more on a fresh connection
    connection_class = _PinnedHTTPSConnection if target.parts.scheme == "https" else _PinnedHTTPConnection
    fresh = connection_class(target.host, target.port, addresses, policy.connect_timeout, deadline)
    return _exchange_on(fresh, origin, target, policy, deadline, pool)


def _exchange_on(connection: _PinnedHTTPConnection, origin: tuple[str, str, int], target: _Target,
                 policy: FetchPolicy, deadline: _Deadline, pool: ConnectionPool) -> _Reply:
    keep = False
    try:
        connection.arm(deadline)
        headers = REQUEST_HEADERS if policy.keepalive else {**REQUEST_HEADERS, "Connection": "close"}
        connection.request("GET", target.request_path, headers=headers)
        response = connection.getresponse()
        try:
            reply = _read_reply(response, policy.max_bytes, policy.max_video_bytes)
            # reusable only when the body was read to its end and the server keeps the connection open
            keep = (policy.keepalive and reply.location is None and response.isclosed()
                    and not response.will_close)
        finally:
            response.close()
        return reply
    finally:
        if keep:
            pool.put(origin, connection)
        else:
            connection.close()


def _read_reply(response: http.client.HTTPResponse, max_bytes: int, max_video_bytes: int = 0) -> _Reply:
    status = response.status
    content_type = response.getheader("Content-Type")
    if status in REDIRECT_STATUSES:
        location = response.getheader("Location")
        if not location:
            raise UpstreamError(f"the image host answered {status} without a Location header", upstream_status=status)
        return _Reply(status, content_type, location.strip(), b"")
    if not 200 <= status < 300:
        raise UpstreamError(f"the image host answered with status {status}", upstream_status=status)
    encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise NotAnImage(f"the image host sent a {encoding}-encoded body; only unencoded images are accepted")
    return _Reply(status, content_type, None, _read_body(response, max_bytes, max_video_bytes))


VIDEO_HEAD = 64  # bytes read before the cap is chosen: enough for sniff_video


def _read_body(response: http.client.HTTPResponse, max_bytes: int, max_video_bytes: int = 0) -> bytes:
    """The body, capped at ``max_bytes`` (a video at ``max_video_bytes``: the first bytes say which)."""
    declared = response.length  # Content-Length as http.client honours it; None when chunked or absent
    cap, what = max(max_bytes, max_video_bytes), "image"
    decided = max_video_bytes <= 0
    if declared is not None and declared > cap:
        raise TooLarge(f"the image is larger than {cap} bytes (Content-Length {declared})")
    chunks: list[bytes] = []
    total = 0
    while chunk := response.read(min(CHUNK_SIZE, cap + 1 - total)):
        total += len(chunk)
        chunks.append(chunk)
        if not decided and total >= VIDEO_HEAD:
            decided = True
            if sniff_video(b"".join(chunks)[:VIDEO_HEAD]) is not None:
                cap, what = max_video_bytes, "video"
            else:
                cap = max_bytes
            if declared is not None and declared > cap:
                raise TooLarge(f"the {what} is larger than {cap} bytes (Content-Length {declared})")
        if total > cap:
            raise TooLarge(f"the {what} is larger than {cap} bytes")
    if not decided:  # fewer than VIDEO_HEAD bytes came
        video = sniff_video(b"".join(chunks)) is not None
        if total > (max_video_bytes if video else max_bytes):
            raise TooLarge(f"the {'video' if video else 'image'} is larger than "
                           f"{max_video_bytes if video else max_bytes} bytes")
    if declared is not None and total < declared:
        raise UpstreamError(f"the image host sent {total} of the {declared} bytes it announced")
    return b"".join(chunks)


def _as_upstream_error(exc: Exception) -> NSFWError:
    """The typed error for a socket, TLS or HTTP-parsing failure."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("the image host did not answer in time")
    if isinstance(exc, http.client.IncompleteRead):
        return UpstreamError("the image host closed the connection before sending the whole body")
    if isinstance(exc, http.client.RemoteDisconnected):
        return UpstreamError("the image host closed the connection without answering")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UpstreamUnreachable(f"the image host's TLS certificate is not valid: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return UpstreamUnreachable("the TLS handshake with the image host failed")
    if isinstance(exc, OSError):
        return UpstreamUnreachable("the connection to the image host failed")
    return UpstreamError("the image host sent a malformed response")
