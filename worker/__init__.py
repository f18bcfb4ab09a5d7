"""Celery workers: run pgd_core jobs from the queue and report into the database."""
