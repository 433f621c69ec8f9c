"""Sign-in sessions: what a sign-in is on the server, how long it lives and how it ends.

A browser's OpenID Connect sign-in is Streamlit's signed cookie holding the ID token's claims, valid
for 30 days and the same in every tab; a secret sign-in is an identity in one tab's server-side session
state.  Neither could be ended: signing out only deleted the cookie from that browser, and a tab that was
open, or a copy of the cookie, stayed signed in.  Each sign-in is now also a row of ``signin_sessions``
in the one database (:mod:`nsfw_core.state.migrations`, migration 6), shared by every replica:

- **which row**: an OpenID Connect sign-in's row is the SHA-256 of its ID token's claims (every sign-in
  at the provider gets a new token: a new ``nonce``, ``iat`` and ``exp``), created when the server first
  sees the cookie, which must be within :data:`FIRST_SEEN_S` of the token's ``iat`` (a cookie the server
  has never seen and that is older than that is refused: a sign-in whose row was ended and purged, or
  that predates a lost database, cannot come back).  A secret sign-in's row is created at sign-in, keyed
  by a random token kept only in that tab's session state;
- **how it ends**: signing out sets ``ended_at`` (:meth:`SigninSessions.end`); so does a request after
  the idle lifetime (no action for ``idle_s``) or the absolute one (``max_s`` after sign-in), and the
  provider refusing the sign-in when it is re-checked (:meth:`SigninSessions.check_oidc`'s ``revalidate``).
  ``signin_revocations`` ends every sign-in of an account, or of everyone (``*``), issued before a time
  (:meth:`SigninSessions.end_subject`, ``python -m nsfw_core.state.sessions end-all``);
- **who sees it**: every check of a session (each script run of each tab, and each action again) reads
  its row, from a copy in memory no older than :data:`CACHE_S` (1 s), so an end made through one
  replica holds on every replica within about a second, and on this one at once.  A database that
  cannot be reached grants nothing (fail closed), logged once per outage.

Rows are purged a day after they could last have been valid (see :meth:`SigninSessions.purge`); that
is safe because of the first-seen rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from nsfw_core.access import Identity
from nsfw_core.base.emails import shown
from nsfw_core.base.settings import SessionConfig
from nsfw_core.state.db import Pool
from nsfw_core.state.migrations import MIGRATIONS, REVOCATIONS_TABLE, SESSIONS_TABLE, migrate

log = logging.getLogger(__name__)

CACHE_S = 1.0  # longest a replica answers a session's state from memory
FIRST_SEEN_S = 600.0  # an ID token the server has never seen is accepted this long after its iat
TOUCH_S = 60.0  # last_seen is written at most this often per session (at most a tenth of the idle lifetime)
PURGE_EVERY_S = 3600.0
RETRY_S = 10.0  # a provider that could not be reached is asked again after this long (or the interval)
KEEP_AFTER_S = 86400.0  # rows are kept this long after the session could last have been valid
ALL = "*"  # the subject that stands for every account in signin_revocations
SIGNED_OUT = "you signed out (in this tab or another one)"
_COLUMNS = ("id", "kind", "subject", "name", "role", "issued_at", "last_seen", "validated_at", "ended_at",
            "ended_reason")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM {SESSIONS_TABLE}"
# What Streamlit adds to the ID token's claims in its cookie or in st.user (the cookie's origin, which st.user
# drops, the tokens it may expose): left out, so the cookie and st.user name the same session
_NOT_CLAIMS = frozenset({"tokens", "origin", "is_logged_in"})


@dataclasses.dataclass(frozen=True)
class Row:
    """One sign-in session as the database holds it."""

    id: str
    kind: str  # "oidc" or "secret"
    subject: str
    name: str
    role: str
    issued_at: float
    last_seen: float
    validated_at: float
    ended_at: float | None = None
    ended_reason: str | None = None


@dataclasses.dataclass(frozen=True)
class Status:
    """Whether a session may act now; ``reason`` says why not (a sentence for the user, without a secret)."""

    ok: bool
    reason: str = ""
    ended: bool = False  # for good (sign in again), rather than for now (a database or provider outage)

    @property
    def message(self) -> str:
        if self.ok:
            return ""
        if self.ended:
            return f"Your sign-in has ended: {self.reason}. Sign in again."
        return f"Your sign-in cannot be checked right now: {self.reason}. Try again in a moment."


OK = Status(True)


@dataclasses.dataclass(frozen=True)
class Revalidation:
    """What the identity provider said when a sign-in was checked again (nsfw_ui.signin does the asking)."""

    outcome: str  # "ok", "refused" (end the session) or "unavailable" (the provider could not be asked)
    reason: str = ""

    @classmethod
    def ok(cls) -> "Revalidation":
        return cls("ok")

    @classmethod
    def refused(cls, reason: str) -> "Revalidation":
        return cls("refused", reason)

    @classmethod
    def unavailable(cls, reason: str) -> "Revalidation":
        return cls("unavailable", reason)


def oidc_session_id(claims: Mapping[str, Any]) -> str:
    """The session row of an OpenID Connect sign-in: the SHA-256 of its claims (``st.user`` or the cookie,
    without what Streamlit adds)."""
    body = {k: v for k, v in claims.items() if k not in _NOT_CLAIMS}
    text = json.dumps(body, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)
    return "oidc-" + hashlib.sha256(text.encode()).hexdigest()


def oidc_subject(claims: Mapping[str, Any]) -> str:
    """The account of an OpenID Connect sign-in: its issuer and subject."""
    return f"oidc {claims.get('iss', '')} {claims.get('sub', '')}"


def secret_fingerprint(secret: str) -> str:
    """Which secret a sign-in proved, without keeping it: 32 bits of its SHA-256.  Enough to notice that the
    role's secret was changed (the sign-ins made with the old one end), far too few to tell the secret."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def secret_subject(role: str, secret: str) -> str:
    return f"secret {role} {secret_fingerprint(secret)}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds < 7200 else f"{seconds / 3600:g} hours"


class SigninSessions:
    """The sign-in sessions of the one database, with a copy in memory no older than ``cache_s``."""

    def __init__(self, pool: Pool, config: SessionConfig, *, clock: Callable[[], float] = time.time,
                 cache_s: float = CACHE_S, first_seen_s: float = FIRST_SEEN_S) -> None:
        self.pool = pool
        self.backend = pool.backend
        self.config = config
        self.clock = clock
        self.cache_s = cache_s
        self.first_seen_s = first_seen_s
        self.touch_s = min(TOUCH_S, config.idle_s / 10)
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._prepared = False
        # id -> (row or None, revoked_before for its subject or everyone, monotonic time read)
        self._cache: dict[str, tuple[Row | None, float | None, float]] = {}
        self._down = False
        self._purged = float("-inf")
        self._unreachable: dict[str, float] = {}  # id -> monotonic time the provider last failed to answer

    # ------------------------------------------------------------ database

    def _prepare(self) -> None:
        with self._prepare_lock:
            if self._prepared:
                return
            self.backend.recover()
            with self.pool.connection() as conn:
                migrate(self.backend, conn, MIGRATIONS, self.clock)
            self._prepared = True

    def _run(self, work: Callable[[Any], Any], write: bool) -> Any:
        self._prepare()
        with self.pool.connection() as conn:
            with self.backend.begin(conn, write=write) as tx:
                return work(tx)

    def _read(self, session_id: str, subject: str | None) -> tuple[Row | None, float | None]:
        def work(tx: Any) -> tuple[Row | None, float | None]:
            found = tx.one(f"{_SELECT} WHERE id = ?", (session_id,))
            row = Row(*found) if found is not None else None
            who = row.subject if row is not None else subject
            revoked = tx.one(f"SELECT MAX(revoked_before) FROM {REVOCATIONS_TABLE} WHERE subject IN (?, ?)",
                             (who or ALL, ALL))
            return row, (float(revoked[0]) if revoked and revoked[0] is not None else None)

        result: tuple[Row | None, float | None] = self._run(work, write=False)
        return result

    def _lookup(self, session_id: str, subject: str | None = None) -> tuple[Row | None, float | None]:
        """The row and its revocation time, from memory when read less than ``cache_s`` ago."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(session_id)
        if cached is not None and now - cached[2] < self.cache_s:
            return cached[0], cached[1]
        row, revoked = self._read(session_id, subject)
        self._remember(session_id, row, revoked, now)
        return row, revoked

    def _remember(self, session_id: str, row: Row | None, revoked: float | None, at: float | None = None) -> None:
        with self._lock:
            self._cache[session_id] = (row, revoked, time.monotonic() if at is None else at)
            if len(self._cache) > 10000:  # forget the oldest half (they are re-read when used)
                for key in sorted(self._cache, key=lambda k: self._cache[k][2])[:5000]:
                    del self._cache[key]

    def _update(self, session_id: str, sql: str, params: Sequence[Any]) -> None:
        def work(tx: Any) -> None:
            tx.run(f"UPDATE {SESSIONS_TABLE} SET {sql} WHERE id = ?", (*params, session_id))

        self._run(work, write=True)

    def _guarded(self, what: str, check: Callable[[], Status]) -> Status:
        """``check()``, failing closed (no rights, not ended) while the database cannot be reached."""
        try:
            status = check()
        except Exception as exc:  # the database: grant nothing, say so once per outage
            if not self._down:
                self._down = True
                log.error("sign-in sessions cannot be checked (%s): every sign-in has no role until the "
                          "database answers again: %s", what, self.backend.describe() + f": {exc}")
            return Status(False, "the server cannot reach its database")
        if self._down:
            self._down = False
            log.warning("sign-in sessions can be checked again: the database answers")
        return status

    # ------------------------------------------------------------ starting

    def start_secret(self, who: Identity, secret: str) -> str:
        """A new session for a secret sign-in ``who`` made with ``secret`` (its role's); its id (keep it in the
        tab's session state only).  Raises when the database cannot be reached (the sign-in is refused)."""
        session_id = "secret-" + secrets.token_hex(16)
        now = self.clock()
        row = Row(session_id, "secret", secret_subject(who.role.label, secret), who.name, who.role.label, now, now,
                  now)
        self._insert(row)
        self._remember(session_id, row, None)
        return session_id

    def _insert(self, row: Row) -> None:
        def work(tx: Any) -> None:
            tx.run(f"INSERT INTO {SESSIONS_TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                   f"ON CONFLICT (id) DO NOTHING", dataclasses.astuple(row))

        self._run(work, write=True)
        self._maybe_purge()

    # ------------------------------------------------------------ checking

    def check_secret(self, session_id: str, who: Identity, secret: str, *, touch: bool = True) -> Status:
        """Whether the secret sign-in ``session_id``, which a browser session resumed as ``who``, may act now
        (extending its idle lifetime, unless not ``touch``: an open tab checking that it still holds, which is
        no action of the visitor's).  It keeps only the identity it proved: the server's row must name the
        same person and role, made with the role's secret of now (``secret``: "" when the role has none left;
        a changed or removed secret ends the sign-ins made with the old one)."""
        def check() -> Status:
            if not session_id:
                return Status(False, "this sign-in is not known to the server", ended=True)
            row, revoked = self._lookup(session_id)
            if row is None or row.kind != "secret":
                return Status(False, "this sign-in is not known to the server", ended=True)
            if (row.name, row.role) != (who.name, who.role.label):
                return Status(False, "this sign-in does not match the identity it was made for", ended=True)
            if not secret or row.subject != secret_subject(row.role, secret):
                return self._end_row(row, f"the {row.role} secret it was made with was changed")
            return self._live(row, revoked, touch)

        return self._guarded("secret sign-in", check)

    def check_oidc(self, claims: Mapping[str, Any], who: Identity,
                   revalidate: Callable[[], Revalidation] | None = None, *, touch: bool = True) -> Status:
        """Whether the OpenID Connect sign-in of ``claims`` (``st.user``; ``who`` its identity) may act now
        (extending its idle lifetime unless not ``touch``, as :meth:`check_secret`).

        The first check of a sign-in records it (if its token is recent); ``revalidate`` asks the provider
        again when the last answer is older than the configured interval (None: it cannot be asked)."""
        session_id = oidc_session_id(claims)
        return self._guarded("OpenID Connect sign-in",
                             lambda: self._check_oidc(session_id, claims, who, revalidate, touch))

    def _check_oidc(self, session_id: str, claims: Mapping[str, Any], who: Identity,
                    revalidate: Callable[[], Revalidation] | None, touch: bool = True) -> Status:
        subject = oidc_subject(claims)
        row, revoked = self._lookup(session_id, subject)
        now = self.clock()
        if row is None:
            iat = _number(claims.get("iat"))
            if iat is None:
                return Status(False, "the identity provider's token has no issue time (iat)", ended=True)
            if revoked is not None and iat <= revoked:
                return Status(False, "the operator ended the sign-ins made before then", ended=True)
            if now - iat > self.first_seen_s:
                log.warning("refused an OpenID Connect sign-in the server has never seen, issued %.0f s ago "
                            "(more than %.0f s: ended and forgotten, or older than the sign-in records): %s",
                            now - iat, self.first_seen_s, shown(who.name))
                return Status(False, "this server has no record of this sign-in and it is too old to be new",
                              ended=True)
            issued = min(now, iat)
            row = Row(session_id, "oidc", subject, who.name, who.role.label, issued, now, now)
            self._insert(row)
            row, revoked = self._read(session_id, subject)
            self._remember(session_id, row, revoked)
            if row is None:  # pragma: no cover - deleted between the insert and the read
                return Status(False, "this sign-in is not known to the server", ended=True)
            if who.note:  # the operator learns why someone got no role (the user reads it on the page)
                log.warning("OpenID Connect sign-in of %s (subject %s) has no role: %s", shown(who.name),
                            shown(claims.get("sub")), who.note)
            else:
                log.info("OpenID Connect sign-in of %s as %s", shown(who.name), who.role.label)
        status = self._live(row, revoked, touch)
        if not status.ok or revalidate is None or self.config.revalidate_s <= 0:
            return status
        return self._revalidate(row, revalidate)

    def _live(self, row: Row, revoked: float | None, touch: bool = True) -> Status:
        """Whether ``row`` is still valid now; ends it (recorded) when a lifetime has run out; ``touch``: the
        visitor acted, which extends the idle lifetime."""
        now = self.clock()
        if row.ended_at is not None:
            return Status(False, row.ended_reason or "it was ended", ended=True)
        if revoked is not None and row.issued_at <= revoked:
            return Status(False, "the operator ended the sign-ins made before then", ended=True)
        if now - row.issued_at >= self.config.max_s:
            return self._end_row(row, f"it began more than {_minutes(self.config.max_s)} ago (the longest a "
                                      "sign-in lasts)")
        if now - row.last_seen >= self.config.idle_s:
            return self._end_row(row, f"nothing was done for more than {_minutes(self.config.idle_s)}")
        if touch and now - row.last_seen >= self.touch_s:
            self._update(row.id, "last_seen = ?", (now,))
            self._remember(row.id, dataclasses.replace(row, last_seen=now), revoked)
        return OK

    def _revalidate(self, row: Row, revalidate: Callable[[], Revalidation]) -> Status:
        now = self.clock()
        interval = self.config.revalidate_s
        if now - row.validated_at < interval:
            return OK
        with self._lock:
            failed = self._unreachable.get(row.id)
        if failed is None or time.monotonic() - failed >= min(RETRY_S, interval):
            answer = revalidate()
            if answer.outcome == "ok":
                self._update(row.id, "validated_at = ?", (now,))
                with self._lock:
                    self._unreachable.pop(row.id, None)
                    cached = self._cache.get(row.id)
                self._remember(row.id, dataclasses.replace(row, validated_at=now), cached[1] if cached else None)
                return OK
            if answer.outcome == "refused":
                log.warning("OpenID Connect sign-in of %s ended by the identity provider's answer: %s",
                            shown(row.name), answer.reason)
                return self._end_row(row, answer.reason)
            with self._lock:
                self._unreachable[row.id] = time.monotonic()
                if len(self._unreachable) > 10000:
                    self._unreachable.clear()
            if failed is None:  # once per session and outage, not at every action
                log.warning("OpenID Connect sign-in of %s could not be re-checked with the identity provider "
                            "(last confirmed %.0f s ago; no rights once that reaches %.0f s): %s", shown(row.name),
                            now - row.validated_at, 2 * interval, answer.reason)
        if now - row.validated_at < 2 * interval:
            return OK
        return Status(False, "the identity provider cannot be reached to confirm it")

    # ------------------------------------------------------------ ending

    def _end_row(self, row: Row, reason: str) -> Status:
        self.end(row.id, reason)
        return Status(False, reason, ended=True)

    def end(self, session_id: str, reason: str = SIGNED_OUT) -> bool:
        """End one session for good (signing out, a lifetime run out); True when it was live until now."""
        now = self.clock()

        def work(tx: Any) -> int:
            tx.run(f"UPDATE {SESSIONS_TABLE} SET ended_at = ?, ended_reason = ? WHERE id = ? AND ended_at IS NULL",
                   (now, reason[:500], session_id))
            return int(tx.rowcount)

        ended = bool(self._run(work, write=True))
        with self._lock:
            cached = self._cache.pop(session_id, None)
        if cached is not None and cached[0] is not None:  # this replica knows at once
            row = cached[0]
            if row.ended_at is None:
                row = dataclasses.replace(row, ended_at=now, ended_reason=reason[:500])
            self._remember(session_id, row, cached[1])
        if ended:
            log.info("sign-in session ended: %s", reason)
        return ended

    def end_subject(self, subject: str, by: str, reason: str) -> int:
        """End every sign-in of ``subject`` (:data:`ALL`: everyone's) made until now, including OpenID
        Connect cookies the server has not seen yet; the number of sessions that were live."""
        now = self.clock()

        def work(tx: Any) -> int:
            tx.run(f"INSERT INTO {REVOCATIONS_TABLE} (subject, revoked_before, revoked_by) VALUES (?, ?, ?) "
                   "ON CONFLICT (subject) DO UPDATE SET revoked_before = excluded.revoked_before, "
                   "revoked_by = excluded.revoked_by", (subject, now, by[:200]))
            where = "" if subject == ALL else " AND subject = ?"
            tx.run(f"UPDATE {SESSIONS_TABLE} SET ended_at = ?, ended_reason = ? WHERE ended_at IS NULL{where}",
                   (now, reason[:500], *(() if subject == ALL else (subject,))))
            return int(tx.rowcount)

        count: int = self._run(work, write=True)
        with self._lock:
            self._cache.clear()
        log.warning("%d sign-in sessions ended (%s) by %s: %s", count,
                    "all accounts" if subject == ALL else shown(subject), shown(by), reason)
        return count

    def subjects_named(self, name: str) -> list[str]:
        """The accounts that signed in under ``name`` (an e-mail address, ASCII case-insensitively)."""
        def work(tx: Any) -> list[str]:
            return [r[0] for r in tx.run(f"SELECT DISTINCT subject FROM {SESSIONS_TABLE} WHERE LOWER(name) = ?",
                                         (name.lower(),))]

        subjects: list[str] = self._run(work, write=False)
        return subjects

    def live(self) -> list[Row]:
        """The sessions not ended (some may have run out of a lifetime without anyone checking since)."""
        def work(tx: Any) -> list[Row]:
            return [Row(*r) for r in tx.run(f"{_SELECT} WHERE ended_at IS NULL ORDER BY issued_at")]

        rows: list[Row] = self._run(work, write=False)
        return rows

    # ------------------------------------------------------------ housekeeping

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._purged < PURGE_EVERY_S:
            return
        self._purged = now
        try:
            self.purge()
        except Exception:  # housekeeping never fails a sign-in
            log.warning("purging old sign-in sessions failed", exc_info=True)

    def purge(self) -> int:
        """Delete sessions (and revocations) older than the longest a sign-in lasts, plus a day: a cookie of
        such a session is refused anyway, as a sign-in never seen and older than :data:`FIRST_SEEN_S`."""
        cutoff = self.clock() - max(self.config.max_s, self.first_seen_s) - KEEP_AFTER_S

        def work(tx: Any) -> int:
            tx.run(f"DELETE FROM {SESSIONS_TABLE} WHERE issued_at < ?", (cutoff,))
            count = tx.rowcount
            tx.run(f"DELETE FROM {REVOCATIONS_TABLE} WHERE revoked_before < ?", (cutoff,))
            return int(count)

        purged: int = self._run(work, write=True)
        return purged


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nsfw_core.state.sessions list | end-all | end EMAIL``: sessions of the configured database."""
    import argparse

    from nsfw_core.base.settings import load_settings
    from nsfw_core.state.db import open_pool

    parser = argparse.ArgumentParser(prog="python -m nsfw_core.state.sessions",
                                     description="List or end the browser app's sign-in sessions (every replica "
                                                 "sees an end within about a second).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the sessions not ended")
    sub.add_parser("end-all", help="end every sign-in, OpenID Connect and secret")
    one = sub.add_parser("end", help="end every sign-in of the accounts that signed in with this e-mail address")
    one.add_argument("email")
    args = parser.parse_args(argv)
    settings = load_settings()
    pool = open_pool(settings.database_url or None, settings.data_dir)
    try:
        sessions = SigninSessions(pool, settings.session_config)
        if args.command == "list":
            for row in sessions.live():
                print(f"{row.kind}\t{row.role}\t{shown(row.name)}\tsince "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(row.issued_at))} UTC")
        elif args.command == "end-all":
            count = sessions.end_subject(ALL, "command line", "the operator ended all sign-ins")
            print(f"{count} sessions ended; sign-ins not seen yet are refused too")
        else:
            subjects = sessions.subjects_named(args.email)
            if not subjects:
                print(f"no sign-in of {shown(args.email)} is recorded")
                return 1
            count = sum(sessions.end_subject(s, "command line", "the operator ended this account's sign-ins")
                        for s in subjects)
            print(f"{count} sessions of {shown(args.email)} ended")
    finally:
        pool.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
