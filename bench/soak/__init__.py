"""Long-running checks that the test suite does not run (see bench/soak/soak.py)."""
