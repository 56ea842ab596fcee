from django.apps import AppConfig


class HostsConfig(AppConfig):
    name = "hosts"
    verbose_name = "Hosts"

    def ready(self) -> None:
        # Registers the cluster.verify and cluster.fix job kinds with the job runner.
        from hosts import steps  # noqa: F401
