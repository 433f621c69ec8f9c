"""The hostile-URL cases (SSRF): shared by tests/test_fetch_hostile.py (the fetcher) and
tests/test_reliability.py (the same cases through /predict on a real server).

URL templates use ``{victim}`` and ``{entry}`` for the ports of the two local servers.
"""

from __future__ import annotations

import dataclasses

from nsfw_core.base.errors import ForbiddenAddress, InputError, InvalidURL, TooManyRedirects

EXPECTED = {
    InvalidURL: (400, "invalid_url"),
    ForbiddenAddress: (403, "forbidden_address"),
    TooManyRedirects: (400, "too_many_redirects"),
}

# The only names these tests resolve; anything else fails the test instead of reaching real DNS.
DNS = {
    "internal.example": ["127.0.0.1"],
    "intranet.example": ["10.0.0.5"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": ["93.184.216.34", "127.0.0.1"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "ula.example": ["fd12:3456::1"],
    "cgnat.example": ["100.64.1.1"],
}


def resolver(host: str, port: int) -> list[str]:
    assert host in DNS, f"unexpected lookup of {host}"
    return DNS[host]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    url: str
    error: type[InputError]
    via: str = "direct"  # direct: fetched as is, no allow list; redirect: entry redirects to url; entry: url on entry


def direct(name: str, url: str, error: type[InputError] = ForbiddenAddress) -> Case:
    return Case(name, url, error)


def redirected(name: str, url: str, error: type[InputError] = ForbiddenAddress) -> Case:
    return Case(name, url, error, via="redirect")


V = "{victim}"
CASES = [
    # loopback in every spelling, aimed at the victim's port
    direct("loopback", f"http://127.0.0.1:{V}/"),
    direct("loopback-short", f"http://127.1:{V}/"),
    direct("loopback-3-parts", f"http://127.0.1:{V}/"),
    direct("unspecified", f"http://0.0.0.0:{V}/"),
    direct("unspecified-short", f"http://0:{V}/"),
    direct("decimal", f"http://2130706433:{V}/"),
    direct("hex", f"http://0x7f000001:{V}/"),
    direct("hex-upper", f"http://0X7F000001:{V}/"),
    direct("octal", f"http://017700000001:{V}/"),
    direct("octal-dotted", f"http://0177.0.0.1:{V}/"),
    direct("hex-dotted", f"http://0x7f.0.0.1:{V}/"),
    direct("zero-padded", f"http://127.000.000.001:{V}/"),
    direct("trailing-dot-ip", f"http://127.0.0.1.:{V}/"),
    direct("fullwidth-digits", f"http://１２７.０.０.１:{V}/"),
    direct("ideographic-dots", f"http://127。0。0。1:{V}/"),
    direct("upper-scheme", f"HTTP://127.0.0.1:{V}/"),
    direct("https-loopback", f"https://127.0.0.1:{V}/"),
    direct("v6-loopback", f"http://[::1]:{V}/"),
    direct("v6-unspecified", f"http://[::]:{V}/"),
    direct("v4-mapped", f"http://[::ffff:127.0.0.1]:{V}/"),
    direct("v4-mapped-long", f"http://[0:0:0:0:0:ffff:7f00:1]:{V}/"),
    direct("v4-mapped-hex", f"http://[::ffff:7f00:1]:{V}/"),
    direct("v4-compatible", f"http://[::127.0.0.1]:{V}/"),
    direct("nat64", f"http://[64:ff9b::7f00:1]:{V}/"),
    direct("6to4", f"http://[2002:7f00:1::1]:{V}/"),
    direct("localhost", f"http://localhost:{V}/"),
    direct("localhost-dot", f"http://localhost.:{V}/"),
    direct("localhost-upper", f"http://LOCALHOST:{V}/"),
    direct("localhost-sub", f"http://api.localhost:{V}/"),
    # private, link-local, metadata, multicast, reserved
    direct("10/8", "http://10.0.0.1/"),
    direct("10/8-top", "http://10.255.255.255/"),
    direct("172.16/12", "http://172.16.0.1/"),
    direct("172.31", "http://172.31.255.254/"),
    direct("192.168/16", "http://192.168.1.1/"),
    direct("cgnat", "http://100.64.0.1/"),
    direct("metadata", "http://169.254.169.254/"),
    direct("metadata-path", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
    direct("metadata-hex", "http://0xa9fea9fe/"),
    direct("metadata-mapped", "http://[::ffff:169.254.169.254]/"),
    direct("v6-link-local", "http://[fe80::1]/"),
    direct("v6-unique-local", "http://[fc00::1]/"),
    direct("v6-unique-local-fd", "http://[fd00::1]/"),
    direct("v6-site-local", "http://[fec0::1]/"),
    direct("multicast", "http://224.0.0.1/"),
    direct("v6-multicast", "http://[ff02::1]/"),
    direct("broadcast", "http://255.255.255.255/"),
    direct("class-e", "http://240.0.0.1/"),
    direct("test-net", "http://192.0.2.1/"),
    direct("benchmark", "http://198.18.0.1/"),
    direct("v6-documentation", "http://[2001:db8::1]/"),
    # names that resolve to non-public addresses
    direct("name-to-loopback", f"http://internal.example:{V}/"),
    direct("name-to-private", "http://intranet.example/"),
    direct("name-to-metadata", "http://metadata.example/latest/meta-data/"),
    direct("name-to-mixed", f"http://mixed.example:{V}/"),
    direct("name-to-mapped", f"http://mapped.example:{V}/"),
    direct("name-to-ula", "http://ula.example/"),
    direct("name-to-cgnat", "http://cgnat.example/"),
    # an allowed server redirecting somewhere it must not
    redirected("redirect-loopback", f"http://127.0.0.1:{V}/"),
    redirected("redirect-localhost", f"http://localhost:{V}/"),
    redirected("redirect-decimal", f"http://2130706433:{V}/"),
    redirected("redirect-mapped", f"http://[::ffff:127.0.0.1]:{V}/"),
    redirected("redirect-scheme-relative", f"//127.0.0.1:{V}/"),
    redirected("redirect-metadata", "http://169.254.169.254/latest/meta-data/"),
    redirected("redirect-private", "http://192.168.0.1/admin"),
    redirected("redirect-name-to-loopback", f"http://internal.example:{V}/"),
    redirected("redirect-file", "file:///etc/passwd", InvalidURL),
    redirected("redirect-gopher", f"gopher://127.0.0.1:{V}/_GET%20/", InvalidURL),
    redirected("redirect-credentials", f"http://user:pass@127.0.0.1:{V}/", InvalidURL),
    redirected("redirect-malformed", "http://[::1", InvalidURL),
    # redirect chains on the allowed server
    Case("chain-over-limit", "http://127.0.0.1:{entry}/chain/0", TooManyRedirects, via="entry"),
    Case("loop", "http://127.0.0.1:{entry}/loop/0", TooManyRedirects, via="entry"),
    Case("self-loop", "http://127.0.0.1:{entry}/self", TooManyRedirects, via="entry"),
    # schemes
    direct("file", "file:///etc/passwd", InvalidURL),
    direct("ftp", f"ftp://127.0.0.1:{V}/", InvalidURL),
    direct("gopher", f"gopher://127.0.0.1:{V}/_GET%20/", InvalidURL),
    direct("dict", f"dict://127.0.0.1:{V}/info", InvalidURL),
    direct("data", "data:image/png;base64,iVBORw0KGgo=", InvalidURL),
    direct("javascript", "javascript:alert(1)", InvalidURL),
    direct("scheme-less", f"127.0.0.1:{V}/", InvalidURL),
    direct("single-slash", f"http:/127.0.0.1:{V}/", InvalidURL),
    direct("backslashes", "http:\\\\127.0.0.1\\", InvalidURL),
    # credentials
    direct("credentials", f"http://user:pass@127.0.0.1:{V}/", InvalidURL),
    direct("user-only", "http://user@example.com/", InvalidURL),
    direct("at-trick", f"http://example.com@127.0.0.1:{V}/", InvalidURL),
    # length
    direct("too-long", "http://example.com/" + "a" * 2100, InvalidURL),
    # malformed
    direct("empty", "", InvalidURL),
    direct("no-host", "http://", InvalidURL),
    direct("no-host-path", "http:///x", InvalidURL),
    direct("unclosed-bracket", "http://[::1", InvalidURL),
    direct("space-in-scheme", "ht tp://x", InvalidURL),
    direct("no-scheme", "://x", InvalidURL),
    direct("space-in-host", "http://exa mple.com", InvalidURL),
    direct("encoded-space-in-host", "http://exa%20mple.com/", InvalidURL),
    direct("nbsp-in-host", "http://\u00a0example.com/", InvalidURL),
    direct("tab", "http://example.com\t/", InvalidURL),
    direct("crlf-injection", "http://example.com/\r\nX-Injected: 1", InvalidURL),
    direct("nul", "http://example.com/\x00", InvalidURL),
    direct("empty-label", "http://a..b/", InvalidURL),
    direct("bad-numeric-host", "http://1.2.3.999/", InvalidURL),
    direct("five-part-ip", "http://1.2.3.4.5/", InvalidURL),
    direct("bad-octal", "http://08.0.0.1/", InvalidURL),
    direct("port-too-big", "http://example.com:99999/", InvalidURL),
    direct("port-zero", "http://example.com:0/", InvalidURL),
    direct("port-not-numeric", "http://example.com:abc/", InvalidURL),
    direct("port-signed", "http://example.com:+80/", InvalidURL),
    direct("v6-zone", f"http://[::1%25lo]:{V}/", InvalidURL),
    direct("v6-bad", "http://[::g]/", InvalidURL),
    direct("v6-future", "http://[v1.x]/", InvalidURL),
    direct("v6-unbracketed", "http://::1/", InvalidURL),
    direct("junk-after-bracket", f"http://[::1]x:{V}/", InvalidURL),
    direct("empty-punycode", "http://xn--/", InvalidURL),
    direct("bad-punycode", "http://xn--zz.com/", InvalidURL),
]
