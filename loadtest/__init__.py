"""Locust load test of the classifier API: weighted tasks, real photos, SLO gate (``python -m loadtest.run``)."""
