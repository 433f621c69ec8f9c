"""The OpenAPI document matches the behaviour: schemathesis, all checks, against a real ``python app.py``.

Schemathesis (CLI, in a subprocess) reads ``/openapi.json`` from the server
on 127.0.0.1 and runs its examples, coverage and fuzzing phases with
``--checks all``: responses must match the documented schemas, statuses and
content types; requests the document calls valid must not be refused with
400, and requests it calls invalid must be refused.  The expectations that
differ from schemathesis's defaults are in :data:`CONFIG`, each for a reason
JSON Schema cannot express:

- 502/503/504 are the documented answers for an image host that cannot be
  resolved, reached or that times out (every generated URL is such a host
  here; the network is loopback only), or an overload: gateway errors, not bugs.
  A 500 is still a failure.
- 413/415/422 for a body that is schema-valid bytes but not a decodable image
  (which bytes are an image is beyond a schema).

``tests/helpers/openapi_hooks.py`` keeps positive ``POST /predict`` cases to
exactly one of ``?url=`` and a body.

Every request carries one API key that is a client key and a reviewer key too (NSFW_API_KEYS,
NSFW_REVIEWER_API_KEYS), so the reviewer API and ``GET /v1/evaluation`` are exercised rather than all
401 (which schemathesis reports as "Authentication failed"), and ``ignored_auth`` checks that every
keyed operation refuses a request without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.appserver import app_server
from tests.helpers.paths import ROOT

MAX_EXAMPLES = 150  # per operation and phase: about 10 s on a 2-core machine
SEED = 20261201  # fixed, so that a failure reproduces; change it to explore
KEY = "conformance-key-0123456789"  # a client key and a reviewer key
CONFIG = """\
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "415", "422", "429", "502", "503", "504"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429",
                     "502", "503", "504"]
"""


def schemathesis_cli() -> str | None:
    path = Path(sys.executable).with_name("schemathesis")
    return str(path) if path.exists() else shutil.which("schemathesis")


pytestmark = pytest.mark.skipif(schemathesis_cli() is None, reason="schemathesis is not installed "
                                                                  "(requirements-dev.txt)")


def test_schemathesis_all_checks_find_nothing(tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cli = schemathesis_cli()
    assert cli is not None  # the module is skipped otherwise
    with app_server(tmp_path, NSFW_FETCH_TIMEOUT="2", NSFW_API_KEYS=KEY, NSFW_REVIEWER_API_KEYS=KEY) as server:
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.helpers.openapi_hooks",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(
            [cli, "--config-file", str(config), "--no-color", "run",
             f"{server.base_url}/openapi.json", "--header", f"Authorization: Bearer {KEY}",
             "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
             "--seed", str(SEED), "--generation-database", "none", "--request-timeout", "20",
             "--report", "junit", "--report-dir", str(tmp_path / "report")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-8000:]
        assert "passed" in output and "failed" not in output, output[-3000:]
        assert server.health().status == 200
        log = server.new_log()
    assert "Traceback" not in log and "internal_error" not in log, log[-3000:]
    assert f"127.0.0.1:{server.port}" in output  # only ever the server under test
