"""Locust load test of the classifier API: weighted tasks, real photos, an SLO gate.

Entry point: ``python -m loadtest.run``.
"""
