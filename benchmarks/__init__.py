"""pefs' benchmarks: one script per report beside it, run as ``.venv/bin/python -m benchmarks.NAME`` from the
repository root (README.md here lists them); shared helpers in :mod:`benchmarks.common`."""
