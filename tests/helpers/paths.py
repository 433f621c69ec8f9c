"""Paths every test module shares (the one ROOT of the test suite)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
REFERENCE_IMAGES = sorted(REFERENCE.glob("*.jpg"))
START_POSTGRES = ROOT / "scripts" / "start-postgres.sh"

# Servers started by tests get temporary data folders; they all share one folder of models
# compiled for LiteRT (NSFW_COMPILED_DIR), so each model is compiled once per checkout, not per server.
COMPILED_DIR = str(ROOT / "var" / "compiled")

# Servers started by tests have sign-in configured (a secret for the admin role), as a deployment should:
# without any, /health warns that the operator pages are locked. Tests of that warning say so.
ADMIN_SECRET = "test-admin-secret-0123456789"
REVIEWER_SECRET = "test-reviewer-secret-0123456789"
