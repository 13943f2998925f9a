"""Benchmarks of sagas against raw Celery, Celery + PostgreSQL, DBOS and celery-saga.

Not part of the package or the test suite. See bench/README.md.
"""
