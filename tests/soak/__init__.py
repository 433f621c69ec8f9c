"""Long-running checks that the test suite does not run (see tests/soak/soak.py)."""
