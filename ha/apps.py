from django.apps import AppConfig


class HaConfig(AppConfig):
    name = "ha"
    verbose_name = "High availability"

    def ready(self) -> None:
        # Registers the HA job kinds with the job runner (one import line per module).
        import ha.failover  # noqa: F401
        from ha import maintenance  # noqa: F401
