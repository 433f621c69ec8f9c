"""Ephemeral disk detection (nsfw_core/platform.py): the warning, /health and the start-up log."""

from __future__ import annotations

import logging

import pytest

from nsfw_core.base.platform import ephemeral_disk, storage_warnings, uses_sqlite
from nsfw_core.base.settings import SettingsError, load_settings
from tests.helpers.apiclient import make_settings, running
from tests.helpers.paths import COMPILED_DIR

APP_PLATFORM = {"APP_URL": "https://nsfw-service-abc12.ondigitalocean.app"}
WARNING = ("the database is SQLite on an ephemeral disk (NSFW_DATABASE_URL is not a PostgreSQL URL): "
           "a redeploy or container replacement loses the review queue, the reviewers' decisions and the "
           "saved thresholds, and instances do not share them; set NSFW_DATABASE_URL to a PostgreSQL URL "
           "(.do/app.yaml binds ${db.DATABASE_URL}), or NSFW_EPHEMERAL_DISK=false if the disk persists")
POSTGRES = "postgresql://doadmin:secret@db-postgresql-fra1-1.b.db.ondigitalocean.com:25060/defaultdb?sslmode=require"


def test_ephemeral_disk_follows_app_url_unless_overridden():
    assert ephemeral_disk(APP_PLATFORM) is True
    assert ephemeral_disk({}) is False
    assert ephemeral_disk({"APP_URL": ""}) is False
    assert ephemeral_disk({"APP_URL": "  "}) is False
    assert ephemeral_disk({"APP_DOMAIN": "x.ondigitalocean.app"}) is False  # only APP_URL is bound by the spec
    assert ephemeral_disk(APP_PLATFORM, override=False) is False
    assert ephemeral_disk({}, override=True) is True


@pytest.mark.parametrize(("url", "sqlite"), [
    ("", True), ("  ", True), ("sqlite:///var/review.sqlite", True), ("SQLITE:////tmp/r.sqlite", True),
    (POSTGRES, False), ("postgres://u@h/db", False),
])
def test_uses_sqlite(url, sqlite):
    assert uses_sqlite(url) is sqlite


def test_storage_warnings_exactly():
    assert storage_warnings(APP_PLATFORM, "") == [WARNING]
    assert storage_warnings(APP_PLATFORM, "sqlite:////data/review.sqlite") == [WARNING]
    assert storage_warnings(APP_PLATFORM, POSTGRES) == []
    assert storage_warnings({}, "") == []
    assert storage_warnings(APP_PLATFORM, "", override=False) == []
    assert storage_warnings({}, "", override=True) == [WARNING]
    assert storage_warnings({}, POSTGRES, override=True) == []


@pytest.mark.parametrize(("raw", "value"), [("auto", None), ("AUTO", None), ("true", True), ("false", False),
                                            ("1", True), ("0", False)])
def test_the_setting(raw, value):
    assert load_settings({"NSFW_EPHEMERAL_DISK": raw}).ephemeral_disk is value
    assert load_settings({}).ephemeral_disk is None


def test_the_setting_rejects_other_values():
    with pytest.raises(SettingsError, match="NSFW_EPHEMERAL_DISK='maybe'"):
        load_settings({"NSFW_EPHEMERAL_DISK": "maybe"})


def test_health_and_the_log_carry_the_warning_on_app_platform_with_sqlite(default_model, tmp_path, monkeypatch,
                                                                          caplog):
    monkeypatch.setenv("APP_URL", APP_PLATFORM["APP_URL"])
    monkeypatch.delenv("NSFW_EPHEMERAL_DISK", raising=False)
    with caplog.at_level(logging.WARNING, logger="nsfw_core.context"):
        with running(make_settings(tmp_path, compiled_dir=COMPILED_DIR)) as c:
            body = c.get("/health").json()
    assert body["status"] == "ok"
    assert body["warnings"] == [WARNING]
    logged = [r.getMessage() for r in caplog.records if r.name == "nsfw_core.context"]
    assert logged.count(WARNING) == 1


def test_health_has_no_storage_warning_when_overridden(default_model, tmp_path, monkeypatch):
    monkeypatch.setenv("APP_URL", APP_PLATFORM["APP_URL"])
    with running(make_settings(tmp_path, compiled_dir=COMPILED_DIR, ephemeral_disk=False)) as c:
        assert c.get("/health").json()["warnings"] == []


def test_the_app_spec_attaches_postgresql_and_binds_it():
    """.do/app.yaml: a PG database attached, NSFW_DATABASE_URL and APP_URL bound, build and run unchanged."""
    yaml = pytest.importorskip("yaml")  # PyYAML comes with schemathesis (requirements-dev.txt)
    from tests.helpers.paths import ROOT

    spec = yaml.safe_load((ROOT / ".do" / "app.yaml").read_text())
    (database,) = spec["databases"]
    assert database["engine"] == "PG"
    (web,) = spec["services"]
    assert web["build_command"] == "python -m nsfw_core.inference.litert --all"
    assert web["run_command"] == "python app.py" and web["http_port"] == 8080
    assert web["health_check"]["http_path"] == "/health"
    envs = {e["key"]: e for e in web["envs"]}
    assert envs["NSFW_DATABASE_URL"] == {"key": "NSFW_DATABASE_URL", "scope": "RUN_TIME",
                                         "value": "${" + database["name"] + ".DATABASE_URL}"}
    assert envs["APP_URL"]["value"] == "${APP_URL}" and envs["APP_URL"]["scope"] == "RUN_TIME"
    assert envs["NSFW_API_KEYS"]["type"] == "SECRET" and "value" not in envs["NSFW_API_KEYS"]
    # What the service makes of that environment on App Platform: PostgreSQL, so no storage warning.
    environ = {"APP_URL": "https://nsfw-service-abc12.ondigitalocean.app", "NSFW_DATABASE_URL": POSTGRES}
    settings = load_settings(environ)
    assert storage_warnings(environ, settings.database_url, settings.ephemeral_disk) == []
