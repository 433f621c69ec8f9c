#!/usr/bin/env bash
# A throw-away PostgreSQL server on 127.0.0.1 for the review-queue tests.
#
#   scripts/start-postgres.sh start [DIR]   start one; prints its URL (the only line on stdout)
#   scripts/start-postgres.sh stop DIR      stop it and delete DIR
#
# start: installs Debian's `postgresql` with apt-get when no server binaries are
# found (needs root), runs initdb into DIR (a new temporary folder when DIR is
# not given), starts the server on a free loopback port (no Unix socket; fsync
# off: test data only), creates the database `nsfw_review` and prints
#
#   postgresql://nsfw:<random password>@127.0.0.1:<port>/nsfw_review
#
# The URL is also written to DIR/url, the folder to DIR/dir; progress and
# errors go to stderr, the server log to DIR/server.log.  Run as root, the
# server runs as the `postgres` user (initdb refuses root) and DIR is chowned
# to it; run as another user, the server runs as that user.
#
# In a shell or CI job:
#   url=$(scripts/start-postgres.sh start /tmp/nsfw-pg)
#   NSFW_TEST_DATABASE_URL=$url .venv/bin/python -m pytest tests/test_review.py
#   scripts/start-postgres.sh stop /tmp/nsfw-pg
# (tests/test_review.py also calls this script by itself when
# NSFW_TEST_DATABASE_URL is not set.)
set -euo pipefail

DB_NAME=nsfw_review
DB_USER=nsfw

log() { printf 'start-postgres: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

find_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
            echo "$d"; return 0
        fi
    done
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"; return 0
    fi
    return 1
}

install_postgres() {
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed and this is not root: apt-get install postgresql"
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and there is no apt-get"
    log "installing Debian's postgresql (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends postgresql >&2 || die "apt-get install postgresql failed"
}

# Run a command as the server's user.
as_server_user() {
    if [[ $(id -u) -eq 0 ]]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

free_port() {
    local py
    for py in python3 python; do
        if command -v "$py" >/dev/null 2>&1; then
            "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
            return 0
        fi
    done
    echo $(( 20000 + RANDOM % 20000 ))
}

start() {
    local dir=${1:-}
    local bindir
    bindir=$(find_bindir) || { install_postgres; bindir=$(find_bindir) || die "no initdb/pg_ctl after installing postgresql"; }
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the server"
    fi
    if [[ -z "$dir" ]]; then
        dir=$(mktemp -d "${TMPDIR:-/tmp}/nsfw-pg.XXXXXX")
    else
        mkdir -p "$dir"
        [[ -z "$(ls -A "$dir")" ]] || die "$dir is not empty"
    fi
    dir=$(cd "$dir" && pwd)
    chmod 700 "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$dir"
    fi
    local password
    password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s\n' "$password" > "$dir/pwfile"
    if [[ $(id -u) -eq 0 ]]; then chown postgres: "$dir/pwfile"; fi
    chmod 600 "$dir/pwfile"

    log "initdb in $dir/data ($bindir)"
    as_server_user "$bindir/initdb" -D "$dir/data" -U "$DB_USER" --pwfile="$dir/pwfile" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }

    local port attempt
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        log "starting the server on 127.0.0.1:$port"
        if as_server_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100" >&2; then
            break
        fi
        port=""
        tail -n 20 "$dir/server.log" >&2 2>/dev/null || true
    done
    [[ -n "$port" ]] || die "the server did not start (see $dir/server.log)"
    printf '%s\n' "$bindir" > "$dir/bindir"

    PGPASSWORD=$password "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB_NAME" >&2 \
        || { stop "$dir"; die "createdb failed"; }
    local url="postgresql://$DB_USER:$password@127.0.0.1:$port/$DB_NAME"
    printf '%s\n' "$url" > "$dir/url"
    printf '%s\n' "$dir" > "$dir/dir"
    chmod 600 "$dir/url"
    log "ready: $DB_NAME on 127.0.0.1:$port (stop with: $0 stop $dir)"
    printf '%s\n' "$url"
}

stop() {
    local dir=${1:-}
    [[ -n "$dir" ]] || die "usage: $0 stop DIR"
    [[ -d "$dir" ]] || { log "$dir does not exist; nothing to stop"; return 0; }
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        local bindir
        bindir=$(cat "$dir/bindir" 2>/dev/null || find_bindir || true)
        if [[ -n "$bindir" ]]; then
            as_server_user "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >&2 || log "pg_ctl stop failed"
        fi
    fi
    # Only remove what this script created.
    if [[ -f "$dir/dir" || -f "$dir/pwfile" || -d "$dir/data" ]]; then
        rm -rf -- "$dir"
    fi
}

case "${1:-}" in
    start) shift; start "${1:-}" ;;
    stop) shift; stop "${1:-}" ;;
    *) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2 ;;
esac
