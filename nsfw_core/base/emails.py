"""The e-mail address an OpenID Connect provider asserts, taken only in the exact form it asserted.

An ID token's ``email`` gives a role (:mod:`nsfw_core.access`) only when

- ``email_verified`` is the JSON boolean ``true``: not absent (some providers omit it while letting users
  edit their address, the "nOAuth" case), not the string ``"true"`` or ``"false"``, not ``1``;
- the address is plain ASCII from ``!`` to ``~``: no whitespace of any script (a no-break space, an
  ideographic space), no control character, no newline, nothing that Unicode case mapping could turn
  into an ASCII letter (KELVIN SIGN ``\\u212a`` lowercases to ``k``);
- it has exactly one ``@`` with something on both sides (``x@evil.org@example.com`` is refused, not
  split at its last ``@``).

It is then lowercased the ASCII way (``A``-``Z`` only) and compared with the allow-lists as it is: no
trimming, no Unicode normalisation.  Anything else gives no role, with a :attr:`AssertedEmail.problem`
that the Sign in page shows and the server logs.  The allow-list entries themselves are held to the same
form when the settings are read (:func:`entry_problem`).
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, Mapping

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
MAX_SHOWN = 120  # characters of a refused address shown to the user and in the log


def ascii_lower(text: str) -> str:
    """``text`` with ``A``-``Z`` lowercased and nothing else changed (``str.lower`` maps other scripts too)."""
    return text.translate(_ASCII_LOWER)


def shown(value: Any) -> str:
    """A claim's value as it may be shown or logged: escaped to printable ASCII (``ascii``, a string in
    quotes), truncated."""
    text = ascii(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def shown_text(value: Any) -> str:
    """As :func:`shown`, without the quotes around a string: a name to display that cannot carry a
    newline, a control character or a look-alike letter."""
    text = ascii(value)[1:-1] if isinstance(value, str) else ascii(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a plain address (ASCII, no whitespace or control characters, one ``@``
    between a local part and a domain); None when it is."""
    if not address:
        return "it is empty"
    if not address.isascii():
        return "it contains characters other than ASCII"
    if any(c <= " " or c == "\x7f" for c in address):
        return "it contains spaces or control characters"
    ats = address.count("@")
    if ats != 1:
        return f"it has {ats} @ signs, not one"
    local, _, domain = address.partition("@")
    if not local or not domain:
        return "it has nothing before or after its @"
    return None


def entry_problem(entry: str) -> str | None:
    """Why an allow-list entry (``alice@example.com`` or ``@example.com``) cannot match an address."""
    problem = address_problem("x" + entry if entry.startswith("@") else entry)
    if problem is None and "." not in entry.partition("@")[2]:
        problem = "its domain has no dot"
    return problem


@dataclasses.dataclass(frozen=True)
class AssertedEmail:
    """What an ID token's claims say about the e-mail address: ``address`` (ASCII-lowercased) when it may
    be matched against the allow-lists, else ``problem`` (a sentence for the user and the log)."""

    address: str | None
    problem: str | None
    raw: str | None  # the claim as sent, when it was a string
    plain: bool = False  # raw is a plain address (it may be shown as it is), verified or not

    @property
    def name(self) -> str | None:
        """What to call the user: the address as sent when plain, else escaped (:func:`shown_text`)."""
        if self.raw is None:
            return None
        return self.raw if self.plain else shown_text(self.raw)


def asserted_email(claims: Mapping[str, Any]) -> AssertedEmail:
    """The address the provider verified, in the exact form it asserted it (see the module's docstring)."""
    email = claims.get("email")
    if not isinstance(email, str) or not email:
        return AssertedEmail(None, "your identity provider sent no e-mail address", None)
    problem = address_problem(email)
    if problem is not None:
        return AssertedEmail(None, f"the e-mail address your identity provider sent, {shown(email)}, is not a plain "
                                   f"address: {problem}", email)
    verified = claims.get("email_verified", None)
    if verified is not True:
        said = "does not say" if "email_verified" not in claims else f"says email_verified {shown(verified)}"
        return AssertedEmail(None, f"your identity provider {said}: only email_verified true (a JSON boolean) "
                                   "counts as a verified address", email, plain=True)
    return AssertedEmail(ascii_lower(email), None, email, plain=True)
