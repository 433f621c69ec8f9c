"""The database's schema (the review queue, the thresholds history, the traffic counts) and how it gets there.

``review_schema_version`` records the applied versions; :data:`MIGRATIONS` is
the ordered list.  Opening a queue applies the missing ones in one transaction
(under an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two
processes starting together migrate once.  A database newer than this code is
refused (:class:`ReviewConfigError`) rather than written to.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

from nsfw_core.state.db import Backend
from nsfw_core.state.errors import ReviewConfigError

TABLE = "review_items"
VERSION_TABLE = "review_schema_version"  # the one database's schema version (review queue and thresholds)
THRESHOLDS_TABLE = "thresholds_versions"
OUTBOX_TABLE = "webhook_outbox"  # API v1's webhook events until delivered (nsfw_core.state.webhooks)
KNOWN_TABLE = "known_images"  # remembered decisions and hash lists (nsfw_core.state.known), an append-only log
SESSIONS_TABLE = "signin_sessions"  # the browser app's sign-in sessions (nsfw_core.state.sessions)
REVOCATIONS_TABLE = "signin_revocations"  # sign-ins of an account, or all, ended before a time
TICKETS_TABLE = "review_tickets"  # the unguessable review ids handed to clients, each bound to one client (issue 29)
VOTES_TABLE = "review_votes"  # double review: each reviewer's own label (nsfw_core.state.review.audit)
TRAFFIC_TABLE = "traffic_counts"  # the API's decisions and score histograms per UTC day (nsfw_core.state.traffic)
# Adapters and example sets (issue 26; nsfw_core.state.adapters, nsfw_core.state.examples)
ADAPTER_VERSIONS_TABLE = "adapter_versions"  # every adapter trained, with its head and report; never changed
ADAPTER_PUBLICATIONS_TABLE = "adapter_publications"  # which adapter is in force per model: an append-only log
EXAMPLE_SETS_TABLE = "example_sets"  # example sets added and removed: an append-only log
REVIEW_EMBEDDINGS_TABLE = "review_embeddings"  # a queued item's embedding, from the request that queued it
JOBS_TABLE = "video_jobs"  # long videos judged in the background (nsfw_core.state.jobs)
JOB_FRAMES_TABLE = "video_job_frames"  # each judged frame of a job, kept so that a restart resumes
BUCKETS_TABLE = "limit_buckets"  # rate limits' token buckets shared by replicas (nsfw_core.state.limits)
FAILURES_TABLE = "limit_failures"  # failed sign-ins shared by replicas (nsfw_core.state.limits)


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]  # {pk}, {blob}, {float} are replaced by the backend's types


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "review items, one open item per image, queue order", (
        f"""CREATE TABLE {TABLE} (
            id {{pk}},
            sha256 TEXT NOT NULL,
            source TEXT NOT NULL,
            scores TEXT NOT NULL,
            model TEXT NOT NULL,
            verdict TEXT NOT NULL,
            created_at {{float}} NOT NULL,
            queued_at {{float}} NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'claimed', 'decided', 'skipped')),
            claimed_by TEXT,
            lease_until {{float}},
            decision TEXT,
            decided_by TEXT,
            decided_at {{float}},
            skips INTEGER NOT NULL DEFAULT 0,
            image {{blob}}
        )""",
        # At most one open (pending or claimed) item per image: enqueue's ON CONFLICT target.
        f"CREATE UNIQUE INDEX {TABLE}_open_sha256 ON {TABLE} (sha256) WHERE status IN ('pending', 'claimed')",
        f"CREATE INDEX {TABLE}_queue ON {TABLE} (status, queued_at, id)",
    )),
    Migration(2, "indexes for undo and retention", (
        f"CREATE INDEX {TABLE}_decided ON {TABLE} (decided_by, decided_at)",
        f"CREATE INDEX {TABLE}_created ON {TABLE} (created_at)",
    )),
    # The thresholds as a versioned history (nsfw_core.state.thresholds): the highest version is in force; a
    # rollback is a new version copying an old one (rolled_back_from).  Rows are never updated or deleted.
    Migration(3, "thresholds as a versioned history", (
        f"""CREATE TABLE {THRESHOLDS_TABLE} (
            version {{pk}},
            adult {{float}} NOT NULL,
            safe {{float}} NOT NULL,
            adult_classes TEXT NOT NULL,
            safe_classes TEXT NOT NULL,
            model TEXT NOT NULL,
            saved_by TEXT NOT NULL,
            saved_at {{float}} NOT NULL,
            tuned_on TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            rolled_back_from INTEGER
        )""",
    )),
    # Remembered decisions and hash lists (nsfw_core.state.known): an append-only log that every process reads
    # forward by id.  op 'add' adds an entry (kind 'review' or 'list'), op 'remove' ends the entry whose id
    # is in ``removes``.  ``hashes``: PDQ hashes, hex, comma-separated.  Review items keep the hashes of
    # their image from the request that queued them (``phash``), for when they are decided.
    Migration(4, "remembered decisions and hash lists", (
        f"ALTER TABLE {TABLE} ADD COLUMN phash TEXT",
        f"""CREATE TABLE {KNOWN_TABLE} (
            id {{pk}},
            op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
            kind TEXT NOT NULL CHECK (kind IN ('review', 'list')),
            sha256 TEXT,
            hashes TEXT NOT NULL DEFAULT '',
            verdict TEXT NOT NULL DEFAULT '',
            label TEXT NOT NULL DEFAULT '',
            note TEXT NOT NULL DEFAULT '',
            review_id BIGINT,
            removes BIGINT,
            added_by TEXT NOT NULL,
            added_at {{float}} NOT NULL
        )""",
        f"CREATE INDEX {KNOWN_TABLE}_review ON {KNOWN_TABLE} (review_id)",
        f"CREATE INDEX {KNOWN_TABLE}_removes ON {KNOWN_TABLE} (removes)",
    )),
    # API v1's webhooks (nsfw_core.state.webhooks): one row per review decision, written in the decision's own
    # transaction, delivered (at least once) by a background task that records delivered_at.
    Migration(5, "webhook outbox", (
        f"""CREATE TABLE {OUTBOX_TABLE} (
            id {{pk}},
            event_id TEXT NOT NULL UNIQUE,
            item_id BIGINT NOT NULL,
            payload TEXT NOT NULL,
            created_at {{float}} NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {{float}} NOT NULL,
            delivered_at {{float}},
            last_error TEXT
        )""",
        f"CREATE INDEX {OUTBOX_TABLE}_due ON {OUTBOX_TABLE} (delivered_at, next_attempt_at)",
    )),
    # Sign-in sessions (nsfw_core.state.sessions): one row per sign-in, shared by every replica.  ``id`` is a
    # hash of the ID token's claims (OpenID Connect) or a random token held in the server's memory (a secret
    # sign-in); ``subject`` is the account (issuer and subject, or the secret's role).  Signing out sets
    # ended_at; a row of ``signin_revocations`` ends every sign-in of a subject ('*': all) issued before a time.
    Migration(6, "sign-in sessions and revocations", (
        f"""CREATE TABLE {SESSIONS_TABLE} (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('oidc', 'secret')),
            subject TEXT NOT NULL,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            issued_at {{float}} NOT NULL,
            last_seen {{float}} NOT NULL,
            validated_at {{float}} NOT NULL,
            ended_at {{float}},
            ended_reason TEXT
        )""",
        f"CREATE INDEX {SESSIONS_TABLE}_subject ON {SESSIONS_TABLE} (subject)",
        f"CREATE INDEX {SESSIONS_TABLE}_issued ON {SESSIONS_TABLE} (issued_at)",
        f"""CREATE TABLE {REVOCATIONS_TABLE} (
            subject TEXT PRIMARY KEY,
            revoked_before {{float}} NOT NULL,
            revoked_by TEXT NOT NULL
        )""",
    )),
    # Issue 29, what reviewers remember must not be a way in:
    # - review items keep who queued them (``client``: a hash of the API key, never the key) for the key's
    #   review quota and for GET /v1/reviews, and whom their decision protects (``audience``: '' everyone,
    #   else the one client whose per-request thresholds queued it); one open item per image and audience;
    # - ``matched``: the remembered decision a perceptual match pointed at when the model's view disagreed
    #   (shown to the reviewer); ``public_id``: the creator's review id (the webhook's);
    # - remembered decisions keep the decided image's scores and model (a look-alike inherits a decision only
    #   when the model sees it alike) and their audience;
    # - review_tickets: the unguessable ids clients get for items, one per client and item.
    Migration(7, "review items per client, tickets, decided scores, audiences", (
        f"ALTER TABLE {TABLE} ADD COLUMN client TEXT NOT NULL DEFAULT ''",
        f"ALTER TABLE {TABLE} ADD COLUMN audience TEXT NOT NULL DEFAULT ''",
        f"ALTER TABLE {TABLE} ADD COLUMN matched TEXT",
        f"ALTER TABLE {TABLE} ADD COLUMN public_id TEXT",
        f"DROP INDEX {TABLE}_open_sha256",
        f"CREATE UNIQUE INDEX {TABLE}_open_sha256_audience ON {TABLE} (sha256, audience) "
        f"WHERE status IN ('pending', 'claimed')",
        f"CREATE INDEX {TABLE}_client ON {TABLE} (client, created_at)",
        f"ALTER TABLE {KNOWN_TABLE} ADD COLUMN scores TEXT NOT NULL DEFAULT ''",
        f"ALTER TABLE {KNOWN_TABLE} ADD COLUMN model TEXT NOT NULL DEFAULT ''",
        f"ALTER TABLE {KNOWN_TABLE} ADD COLUMN audience TEXT NOT NULL DEFAULT ''",
        f"""CREATE TABLE {TICKETS_TABLE} (
            ticket TEXT PRIMARY KEY,
            item_id BIGINT NOT NULL,
            client TEXT NOT NULL,
            created_at {{float}} NOT NULL
        )""",
        f"CREATE INDEX {TICKETS_TABLE}_item ON {TICKETS_TABLE} (item_id, client)",
    )),
    # Issue 29, points 5-6 (nsfw_core.state.limits, nsfw_core.state.webhooks): the rate limits' token buckets and
    # the failed sign-ins, shared by replicas; the API key id of the client whose request queued an item (its
    # webhook events say whose image it is); the outbox purged by age (created_at) with the review items.
    Migration(8, "shared rate limits and sign-in failures, the client of a review item", (
        f"""CREATE TABLE {BUCKETS_TABLE} (
            bucket TEXT PRIMARY KEY,
            tokens {{float}} NOT NULL,
            updated_at {{float}} NOT NULL,
            full_at {{float}} NOT NULL
        )""",
        f"CREATE INDEX {BUCKETS_TABLE}_full ON {BUCKETS_TABLE} (full_at)",
        f"""CREATE TABLE {FAILURES_TABLE} (
            id {{pk}},
            scope TEXT NOT NULL,
            failed_at {{float}} NOT NULL
        )""",
        f"CREATE INDEX {FAILURES_TABLE}_scope ON {FAILURES_TABLE} (scope, failed_at)",
        f"ALTER TABLE {TABLE} ADD COLUMN client_key TEXT",
        f"CREATE INDEX {OUTBOX_TABLE}_created ON {OUTBOX_TABLE} (created_at)",
    )),
    # Issue 25 (nsfw_core.state.review.audit, nsfw_core.state.traffic): audit items (a random sample of the automatic
    # verdicts, ``kind`` 'audit') with the probability that queued them (1 for what NSFW_REVIEW_VERDICTS queues);
    # double review (``reviews_needed`` 2: each reviewer's label in ``review_votes``; ``escalated`` 1 when the
    # two disagree, until an admin decides); the API's decisions and score histograms counted per UTC day.
    Migration(9, "audit sampling, double review, traffic counts", (
        f"ALTER TABLE {TABLE} ADD COLUMN kind TEXT NOT NULL DEFAULT 'review'",
        f"ALTER TABLE {TABLE} ADD COLUMN probability {{float}} NOT NULL DEFAULT 1.0",
        f"ALTER TABLE {TABLE} ADD COLUMN reviews_needed INTEGER NOT NULL DEFAULT 1",
        f"ALTER TABLE {TABLE} ADD COLUMN escalated INTEGER NOT NULL DEFAULT 0",
        f"CREATE INDEX {TABLE}_kind_created ON {TABLE} (kind, created_at)",
        f"""CREATE TABLE {VOTES_TABLE} (
            id {{pk}},
            item_id BIGINT NOT NULL,
            reviewer TEXT NOT NULL,
            label TEXT NOT NULL,
            decided_at {{float}} NOT NULL,
            UNIQUE (item_id, reviewer)
        )""",
        f"CREATE INDEX {VOTES_TABLE}_reviewer ON {VOTES_TABLE} (reviewer, decided_at)",
        f"""CREATE TABLE {TRAFFIC_TABLE} (
            day TEXT NOT NULL,
            name TEXT NOT NULL,
            count BIGINT NOT NULL,
            PRIMARY KEY (day, name)
        )""",
    )),
    # ---- issue 26: adapters and example sets (nsfw_core.state.adapters, nsfw_core.state.examples) ----
    # adapter_versions: one row per training (name, version), never updated: the head (coefficients as JSON,
    # never a pickle), the thresholds chosen on held-out scores, the report, the data's hash, who and when.
    # adapter_publications: append-only; the newest row of a model says which adapter is in force for it
    # (name NULL: the base model).  example_sets: append-only like known_images (op add / remove).
    # review_embeddings: the embedding of a queued item's image (float16, base64), from its request.
    Migration(10, "adapters, example sets, the embeddings of queued items and of remembered decisions", (
        f"""CREATE TABLE {ADAPTER_VERSIONS_TABLE} (
            id {{pk}},
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            model TEXT NOT NULL,
            model_version TEXT NOT NULL,
            head TEXT NOT NULL,
            t_adult {{float}} NOT NULL,
            t_safe {{float}} NOT NULL,
            report TEXT NOT NULL,
            dataset_sha256 TEXT NOT NULL,
            examples INTEGER NOT NULL,
            publishable INTEGER NOT NULL,
            trained_by TEXT NOT NULL,
            trained_at {{float}} NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            UNIQUE (name, version)
        )""",
        f"""CREATE TABLE {ADAPTER_PUBLICATIONS_TABLE} (
            id {{pk}},
            model TEXT NOT NULL,
            name TEXT,
            version INTEGER,
            action TEXT NOT NULL CHECK (action IN ('publish', 'rollback', 'withdraw')),
            published_by TEXT NOT NULL,
            published_at {{float}} NOT NULL,
            note TEXT NOT NULL DEFAULT ''
        )""",
        f"CREATE INDEX {ADAPTER_PUBLICATIONS_TABLE}_model ON {ADAPTER_PUBLICATIONS_TABLE} (model, id)",
        f"""CREATE TABLE {EXAMPLE_SETS_TABLE} (
            id {{pk}},
            op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
            name TEXT NOT NULL,
            verdict TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            model_version TEXT NOT NULL DEFAULT '',
            threshold {{float}},
            vectors TEXT NOT NULL DEFAULT '',
            report TEXT NOT NULL DEFAULT '{{{{}}}}',
            removes BIGINT,
            added_by TEXT NOT NULL,
            added_at {{float}} NOT NULL
        )""",
        f"""CREATE TABLE {REVIEW_EMBEDDINGS_TABLE} (
            item_id BIGINT PRIMARY KEY,
            model TEXT NOT NULL,
            model_version TEXT NOT NULL,
            embedding TEXT NOT NULL,
            created_at {{float}} NOT NULL
        )""",
        # a remembered decision keeps the decided image's embedding (and the model version that made it) beside
        # its scores: a look-alike inherits the decision only when its embedding is near (nsfw_core.classify)
        f"ALTER TABLE {KNOWN_TABLE} ADD COLUMN embedding TEXT NOT NULL DEFAULT ''",
        f"ALTER TABLE {KNOWN_TABLE} ADD COLUMN model_version TEXT NOT NULL DEFAULT ''",
    )),
    # Video jobs (nsfw_core.state.jobs): one row per POST /v1/jobs, claimed by one instance at a time under a lease
    # (lease_owner, lease_until; SKIP LOCKED on PostgreSQL), its judged frames in video_job_frames so that a
    # job taken over after a crash goes on from there.  ``client``: whose job it is, as review items keep it (a
    # hash of the API key, else of the peer address: only that client reads it and its review id);
    # ``client_key``: the key's id for the job.completed event (key: and 16 hex digits of its SHA-256; NULL
    # without keys).  ``media`` tells a review item or a known entry that is a video (its hashes: one PDQ hash
    # per sampled frame, matched as a whole, nsfw_core.state.known).
    Migration(11, "video jobs and their frames, videos among review items and known images", (
        f"""CREATE TABLE {JOBS_TABLE} (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            client TEXT,
            client_key TEXT,
            client_ref TEXT,
            model TEXT NOT NULL,
            thresholds TEXT,
            sampling TEXT NOT NULL,
            seed BIGINT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
            sha256 TEXT,
            info TEXT,
            frames_total INTEGER,
            frames_done INTEGER NOT NULL DEFAULT 0,
            result TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until {{float}},
            created_at {{float}} NOT NULL,
            started_at {{float}},
            finished_at {{float}}
        )""",
        f"CREATE INDEX {JOBS_TABLE}_due ON {JOBS_TABLE} (status, created_at)",
        f"CREATE INDEX {JOBS_TABLE}_client ON {JOBS_TABLE} (client, status)",
        f"""CREATE TABLE {JOB_FRAMES_TABLE} (
            job_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            frame_index INTEGER NOT NULL,
            time_ms INTEGER NOT NULL,
            scores TEXT NOT NULL,
            phash TEXT,
            PRIMARY KEY (job_id, position)
        )""",
        f"ALTER TABLE {TABLE} ADD COLUMN media TEXT NOT NULL DEFAULT 'image'",
        f"ALTER TABLE {KNOWN_TABLE} ADD COLUMN media TEXT NOT NULL DEFAULT 'image'",
    )),
    # Issue 26, point 4 for video jobs ("frames use it"): each judged frame of a job keeps its embedding from the
    # forward pass that scored it (float16, little-endian, raw: 2 bytes a value, 3,584 bytes for the default
    # model's 1,792; NULL for frames stored before), so that the job's verdict is the adapter's in force when it
    # is judged, as a request's video is, and an example set may decide it.  ``adapter``: 0 when the job asked
    # for the base model (``"adapter": false``).
    Migration(12, "the embeddings of video jobs' frames, a job's choice of the base model", (
        f"ALTER TABLE {JOB_FRAMES_TABLE} ADD COLUMN embedding {{blob}}",
        f"ALTER TABLE {JOBS_TABLE} ADD COLUMN adapter INTEGER NOT NULL DEFAULT 1",
    )),
    # Issue 30, reviewers see why: an item keeps the evidence heat-maps of its image (JSON,
    # nsfw_core.inference.explain), computed once when it is first claimed or ahead of that in the background
    # (nsfw_core.state.review.evidence); similar past decisions are found by the decided items' PDQ hashes (the
    # phash column of version 4) with the index on (status, decided_at) for reading them forward; an item a
    # review grid's reviewer ticked as an exception is kept for one-by-one review (``one_by_one``: no grid
    # shows it again, nsfw_core.state.review.grid).
    Migration(13, "evidence heat-maps kept with review items, items set aside for one-by-one review", (
        f"ALTER TABLE {TABLE} ADD COLUMN evidence TEXT",
        f"ALTER TABLE {TABLE} ADD COLUMN one_by_one INTEGER NOT NULL DEFAULT 0",
        f"CREATE INDEX {TABLE}_decided_at ON {TABLE} (status, decided_at)",
    )),
    # Issue 30, a video's evidence: a video item keeps when its deciding frame is shown (the frame whose scores it
    # got, ``Classification.deciding_time_ms``), so its evidence heat-map is computed on that one frame, decoded
    # alone in the isolated lane (nsfw_ui.evidence); NULL for an image, an animation and a video queued before.
    Migration(14, "the deciding frame's time of a video review item", (
        f"ALTER TABLE {TABLE} ADD COLUMN deciding_ms BIGINT",
    )),
    # Jobs take turns by client: a worker claims the oldest job of the client whose latest lease ended
    # earliest (nsfw_core.state.jobs.JobStore.claim); this index makes "when was this client last served"
    # a lookup rather than a scan of its jobs.
    Migration(15, "video jobs claimed in turn by client", (
        f"CREATE INDEX {JOBS_TABLE}_client_lease ON {JOBS_TABLE} (client, lease_until)",
    )),
    # A client keeps its newest NSFW_JOB_MAX_KEPT finished jobs (nsfw_core.state.jobs.JobStore._keep_newest): its
    # finished jobs of one status by finish time. (For the two statuses together, SQLite's planner takes the
    # (client, status) index and sorts at most NSFW_JOB_MAX_KEPT + 1 rows: under 1 ms, the attack pass measured.)
    Migration(16, "a client's finished video jobs, newest first", (
        f"CREATE INDEX {JOBS_TABLE}_client_finished ON {JOBS_TABLE} (client, status, finished_at)",
    )),
)
LATEST_VERSION = max(m.version for m in MIGRATIONS)


def migrate(backend: Backend, conn: Any, migrations: Sequence[Migration] = MIGRATIONS,
            clock: Callable[[], float] = time.time) -> list[int]:
    """Apply the missing migrations in one transaction; returns the versions applied."""
    known = max((m.version for m in migrations), default=0)
    with backend.begin(conn, write=True) as tx:
        backend.lock_migrations(tx)
        tx.run(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, "
               f"description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        done = {int(row[0]) for row in tx.run(f"SELECT version FROM {VERSION_TABLE}")}
        current_version = max(done, default=0)
        if current_version > known:
            raise ReviewConfigError(f"the review database ({backend.describe()}) has schema version "
                                    f"{current_version}, newer than this code's {known}; upgrade the app")
        applied = []
        # every migration not applied yet, in order, below the newest applied one too: versions are assigned to
        # branches that merge in any order (9 was merged before 8: a database at 9 still gets 8)
        for m in sorted(migrations, key=lambda m: m.version):
            if m.version in done:
                continue
            for statement in m.statements:
                tx.run(statement.format(**backend.types))
            tx.run(f"INSERT INTO {VERSION_TABLE} (version, description, applied_at) VALUES (?, ?, ?)",
                   (m.version, m.description, clock()))
            applied.append(m.version)
    return applied
