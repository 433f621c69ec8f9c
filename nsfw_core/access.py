"""Who may do what in the browser app: roles, identities, permissions and the sign-in checks.

Three roles, each with everything the one before it has::

    anonymous   the Classify page, and only when the API is public (no NSFW_API_KEYS) or the
                operator opts in with NSFW_PUBLIC_DEMO; nothing else
    reviewer    + the review queue (claim, decide, skip, undo), the Evaluate page
    admin       + calibration (labelled sets, uploaded or on the server), saving and rolling back
                thresholds, exports of the reviewed items, the allow/deny hash lists, adapters and
                example sets (train, publish, roll back)

An :class:`Identity` is decided on the server from one of three things, never from the peer
address (behind a reverse proxy every visitor comes from 127.0.0.1) and never from what the page
sent about itself:

- **local mode** (``NSFW_LOCAL_MODE``, only with a loopback ``NSFW_HOST``; ``./run.sh`` sets both):
  the person at ``http://localhost:8080`` is admin ``local``.  A request whose ``Host`` is not a
  loopback name (DNS rebinding) or that carries proxy headers gets no local rights;
- **OpenID Connect** (Streamlit's ``st.login``): the provider's verified e-mail address (``email_verified``
  the boolean true), in the exact form it asserted it (:mod:`nsfw_core.base.emails`), matched against
  ``NSFW_ADMIN_EMAILS`` / ``NSFW_REVIEWER_EMAILS`` (addresses or ``@domains``);
- **a per-role secret** (``NSFW_ADMIN_SECRET`` / ``NSFW_REVIEWER_SECRET``) for deployments without
  an identity provider: compared in constant time, failed attempts rate-limited, never logged.

The identity's ``name`` is what saves and review decisions record; a secret sign-in's name carries a
random token made at sign-in (``reviewer (secret, session 3fa2c1)``), so two people with the same
secret hold their own claims and undo only their own decisions.  Pages hide what a role may not
use and the actions check again with :meth:`Access.require` (a forged widget message reaches the
action, not the widget), raising :class:`~nsfw_core.base.errors.Forbidden`.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import logging
import secrets
import threading
import time
import tomllib
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

from nsfw_core.base.emails import asserted_email, shown_text
from nsfw_core.base.errors import Forbidden, TooManyAttempts
from nsfw_core.base.settings import ROOT, AccessConfig

log = logging.getLogger(__name__)


class Role(enum.IntEnum):
    ANONYMOUS = 0
    REVIEWER = 1
    ADMIN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class Permission(enum.Enum):
    CLASSIFY = "classify"  # the Classify page (fetches URLs, runs the model)
    REVIEW = "review"  # the review queue: claim, decide, skip, undo
    CALIBRATE = "calibrate"  # the calibrate page: labelled sets, uploaded or on the server
    SAVE_THRESHOLDS = "save_thresholds"  # save a thresholds version, roll back
    EXPORT = "export"  # download the reviewed items (CSV, ZIP with stored uploads)
    LISTS = "lists"  # import, export and clear the allow/deny hash lists
    ADAPTERS = "adapters"  # train, publish and roll back adapters; add and remove example sets
    EVALUATE = "evaluate"  # the Evaluate page: the estimated error rate of production's automatic decisions


NEEDS: Mapping[Permission, Role] = {
    Permission.CLASSIFY: Role.REVIEWER,  # or anonymous when the demo is public: Access.can
    Permission.REVIEW: Role.REVIEWER,
    Permission.CALIBRATE: Role.ADMIN,
    Permission.SAVE_THRESHOLDS: Role.ADMIN,
    Permission.EXPORT: Role.ADMIN,
    Permission.LISTS: Role.ADMIN,
    Permission.ADAPTERS: Role.ADMIN,
    Permission.EVALUATE: Role.REVIEWER,
}


@dataclasses.dataclass(frozen=True)
class Identity:
    """A visitor as the server sees them; ``name`` is recorded with what they change."""

    name: str
    role: Role
    via: str  # "none", "local", "oidc" or "secret"
    # Why this identity has less than it might (an address the provider did not verify, a sign-in that
    # ended): said on the Sign in page.  Not part of the identity's equality.
    note: str = dataclasses.field(default="", compare=False)
    # The sign-in session a secret sign-in holds (nsfw_core.state.sessions), "" for the others
    session: str = dataclasses.field(default="", compare=False, repr=False)

    @property
    def signed_in(self) -> bool:
        return self.via in ("oidc", "secret")


ANONYMOUS = Identity("anonymous", Role.ANONYMOUS, "none")
LOCAL = Identity("local", Role.ADMIN, "local")

# Headers a reverse proxy or CDN adds: a request carrying any of them did not come straight from the browser
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
                 "x-real-ip", "x-client-ip", "true-client-ip", "cf-connecting-ip", "via")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def same_origin(origin: str, host_header: str) -> bool:
    """Whether an ``Origin`` header names the origin the request was addressed to (``http(s)://<Host>``).

    A browser sends ``Origin`` with every websocket handshake: a page of another origin (another
    localhost port, a file opened from disk: ``null``) gets a different value and no local rights.
    """
    origin, host = origin.strip().lower(), host_header.strip().lower()
    return bool(host) and origin in (f"http://{host}", f"https://{host}")


def loopback_host(host_header: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback (``localhost:8080``, ``[::1]:8080``...)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name, port = name + "]", rest[1:] if rest.startswith(":") else rest
    else:
        name, _, port = host.partition(":")
    return name.rstrip(".") in LOOPBACK_NAMES and (port == "" or port.isdigit())


class AttemptLimiter:
    """Failed sign-ins allowed per sliding window, for the whole process (every session together).

    A wrong secret is counted; once ``max_failures`` fall in ``window_s`` seconds, every attempt is
    refused unchecked until the oldest failure leaves the window.  With ``NSFW_DATABASE_URL`` the failures
    are counted in the database (``store``), so replicas share the count; per process otherwise.

    Global on purpose, and so a denial of service: anyone can keep secret sign-in locked with 5 wrong
    guesses a minute.  Counting per session or per client would not bound guessing (a new websocket
    session costs nothing, and behind a proxy every client has the proxy's address), and a higher global
    limit only makes the lockout cost more guesses.  Sessions already signed in keep their sign-in, and
    OpenID Connect sign-in is not limited by it; refused attempts are logged (counted, never the secret).
    """

    def __init__(self, max_failures: int = 5, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, store: FailureStore | None = None) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock  # wall-clock seconds with a shared store (replicas compare their times)
        self._failures: deque[float] = deque()
        self._store = store  # the database's (nsfw_core.state.limits), shared by replicas; None: this process
        self._lock = threading.Lock()
        self.refused = 0  # attempts refused unchecked during the current lockout

    def _recent(self, now: float) -> list[float]:
        if self._store is not None:
            return self._store.since(now - self.window_s, self.max_failures)
        while self._failures and now - self._failures[0] >= self.window_s:
            self._failures.popleft()
        return list(self._failures)

    def check(self) -> None:
        """Raise :class:`TooManyAttempts` while the window is full."""
        with self._lock:
            now = self._clock()
            recent = self._recent(now)
            if len(recent) >= self.max_failures:
                wait = max(1, int(self.window_s - (now - recent[0]) + 0.999))
                self.refused += 1
                if self.refused & (self.refused - 1) == 0:  # the 1st, 2nd, 4th, 8th...: counted, no log flood
                    log.warning("sign-in with a secret refused unchecked: %d failures in %g s; %d attempts "
                                "refused in this lockout", len(recent), self.window_s, self.refused)
                raise TooManyAttempts(f"too many failed sign-ins: try again in {wait} s", retry_after=wait)
            if self.refused:
                log.warning("sign-in lockout over: %d attempts were refused unchecked during it", self.refused)
                self.refused = 0

    def failed(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.add(self._clock())
            else:
                self._failures.append(self._clock())


class FailureStore(Protocol):
    """Where :class:`AttemptLimiter` keeps its failures when replicas share them (``nsfw_core.state.limits``)."""

    def add(self, at: float) -> None: ...

    def since(self, after: float, limit: int) -> list[float]: ...


def _matches(email: str, entries: Iterable[str]) -> bool:
    """Whether ``email`` (plain and ASCII-lowercased: :func:`nsfw_core.base.emails.asserted_email`) is one of
    the addresses or in one of the ``@domains`` of ``entries``, exactly: no trimming, no other folding."""
    domain = email.partition("@")[2]
    for entry in entries:
        if entry.startswith("@"):
            if domain == entry[1:]:
                return True
        elif email == entry:
            return True
    return False


def secrets_toml_auth(paths: Iterable[Path] | None = None) -> bool:
    """Whether a Streamlit secrets file configures ``st.login`` (an ``[auth]`` section)."""
    for path in paths if paths is not None else (ROOT / ".streamlit" / "secrets.toml",
                                                  Path.home() / ".streamlit" / "secrets.toml"):
        try:
            with open(path, "rb") as f:
                if isinstance(tomllib.load(f).get("auth"), dict):
                    return True
        except (OSError, tomllib.TOMLDecodeError, ValueError):
            continue
    return False


class Access:
    """The access rules of one process, built from :class:`~nsfw_core.base.settings.AccessConfig`."""

    def __init__(self, config: AccessConfig, *, oidc_from_secrets: bool | None = None,
                 limiter: AttemptLimiter | None = None) -> None:
        self.config = config
        self.oidc = config.oidc.configured or (secrets_toml_auth() if oidc_from_secrets is None
                                               else oidc_from_secrets)
        self.limiter = limiter or AttemptLimiter()

    # -------------------------------------------------------------- what is configured
    @property
    def secrets(self) -> bool:
        return bool(self.config.admin_secret or self.config.reviewer_secret)

    def secret_of(self, role: Role) -> str:
        """The secret that signs ``role`` in now ("" when that role has none)."""
        return {Role.ADMIN: self.config.admin_secret, Role.REVIEWER: self.config.reviewer_secret}.get(role, "")

    @property
    def sign_in_configured(self) -> bool:
        return self.oidc or self.secrets

    @property
    def public_classify(self) -> bool:
        """Whether visitors who are not signed in may classify (local mode gives local visitors admin instead;
        a request it does not recognise as local is anonymous like anywhere else)."""
        return self.config.public_demo or not self.config.api_keyed

    def warnings(self) -> list[str]:
        """What /health and the start-up log say about sign-in."""
        if self.config.local_mode:
            return []
        out = []
        if not self.sign_in_configured:
            out.append("sign-in is not configured: the calibrate and review pages are locked (set "
                       "NSFW_ADMIN_SECRET, or OpenID Connect sign-in; docs/security.md)")
        elif self.oidc and not (self.config.admin_emails or self.config.reviewer_emails) and not self.secrets:
            out.append("OpenID Connect sign-in is configured but NSFW_ADMIN_EMAILS and NSFW_REVIEWER_EMAILS "
                       "are empty: nobody who signs in gets a role")
        return out

    # -------------------------------------------------------------- decisions
    def can(self, who: Identity, permission: Permission) -> bool:
        if permission is Permission.CLASSIFY and self.public_classify:
            return True
        return who.role >= NEEDS[permission]

    def require(self, who: Identity, permission: Permission) -> None:
        """Raise :class:`Forbidden` unless ``who`` may ``permission``."""
        if not self.can(who, permission):
            raise Forbidden(f"{permission.value} needs the {NEEDS[permission].label} role; "
                            f"{who.name} is {who.role.label}")

    def local_visitor(self, headers: Mapping[str, str]) -> Identity | None:
        """:data:`LOCAL` in local mode for a request addressed to a loopback name, without proxy headers,
        and, when it has an ``Origin`` (a browser's websocket always does), from a page of that same origin:
        a page served on another localhost port or from another site opening the websocket is not local."""
        if not self.config.local_mode:
            return None
        lower = {k.lower(): v for k, v in headers.items()}
        host = lower.get("host", "")
        if not loopback_host(host) or any(h in lower for h in PROXY_HEADERS):
            return None
        if "origin" in lower and not same_origin(lower["origin"], host):
            return None
        return LOCAL

    def role_for_email(self, email: str) -> Role:
        """The role of a plain, ASCII-lowercased address (:func:`nsfw_core.base.emails.asserted_email`)."""
        if _matches(email, self.config.admin_emails):
            return Role.ADMIN
        if _matches(email, self.config.reviewer_emails):
            return Role.REVIEWER
        return Role.ANONYMOUS

    def from_oidc(self, claims: Mapping[str, Any]) -> Identity:
        """The identity of an OpenID Connect user (``st.user``): role by the e-mail address the provider
        verified, in the exact form it asserted it (:func:`nsfw_core.base.emails.asserted_email`); an address
        it did not verify, or one that is not plain ASCII with one @, gives no role and says why (``note``)."""
        email = asserted_email(claims)
        name = email.name or f"oidc:{shown_text(claims.get('sub', '?'))}"
        if email.address is not None:
            return Identity(name[:200], self.role_for_email(email.address), "oidc")
        return Identity(name[:200], Role.ANONYMOUS, "oidc", note=f"No role: {email.problem}.")

    def sign_in_with_secret(self, attempt: str) -> Identity:
        """The role whose secret ``attempt`` is; :class:`Forbidden` when none, after the rate limit."""
        self.limiter.check()
        given = attempt.encode("utf-8", "surrogatepass")[:1024]
        role = Role.ANONYMOUS
        # both compared, no early exit: the time does not tell which secret came close
        for secret, candidate in ((self.config.reviewer_secret, Role.REVIEWER),
                                  (self.config.admin_secret, Role.ADMIN)):
            if hmac.compare_digest(given, secret.encode()) and secret:
                role = max(role, candidate)
        if role is Role.ANONYMOUS:
            self.limiter.failed()
            log.warning("sign-in with a secret failed")  # never the attempt itself
            raise Forbidden("that secret is not valid")
        # Everyone who knows a role's secret is told apart by a token made now: claims, undo and the
        # audit trail belong to this sign-in (this browser tab), not to every holder of the secret
        name = f"{role.label} (secret, session {secrets.token_hex(3)})"
        log.info("signed in with the %s secret as %s", role.label, name)
        return Identity(name, role, "secret")
