from django.apps import AppConfig


class VmsConfig(AppConfig):
    name = "vms"
    verbose_name = "Virtual machines"

    def ready(self) -> None:
        # Registers the VM job kinds with the job runner.
        from vms import migration, steps  # noqa: F401
