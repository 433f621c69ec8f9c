"""URLs with a control character in the host, the port, the path or the query: each must be refused as
``400 invalid_url`` (a batch item's error), never a 500, and logged without raising.

``urllib.parse.urlsplit`` silently drops tab, CR and LF (WHATWG), so what it returns is not a part of
the URL it was given; NUL and the other C0/C1 characters it keeps.
"""

from __future__ import annotations

CONTROL_CHARACTERS = ("\t", "\n", "\r", "\x00", "\x01", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x85", "\u2028")

CONTROL_URLS = [url
                for c in CONTROL_CHARACTERS
                for url in (f"https://exa{c}mple.com/a.jpg",  # the host
                            f"https://example.com:80{c}/a.jpg",  # the port
                            f"https://example.com/a{c}b.jpg",  # the path
                            f"https://example.com/a.jpg?sig={c}x",  # the query
                            f"https://user{c}@example.com/a.jpg",  # the credentials
                            f"{c}https://example.com/a.jpg")]  # before the scheme
