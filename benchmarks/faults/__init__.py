"""The fault matrix (``python -m benchmarks.faults``): cases, harness, verifier."""
