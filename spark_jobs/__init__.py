"""Spark jobs, runnable with spark-submit and importable."""
