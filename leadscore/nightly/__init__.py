"""Nightly batch rescoring: intake, buckets, resume, and the DuckDB and Spark engines."""
