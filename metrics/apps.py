from django.apps import AppConfig


class MetricsConfig(AppConfig):
    """/metrics and the guests' figures sampler process (`manage.py vm_stats`); no models of its own."""
    name = "metrics"
    verbose_name = "Metrics"
