from django.apps import AppConfig


class ImagesConfig(AppConfig):
    name = "images"
    verbose_name = "Images"

    def ready(self) -> None:
        # Registers the image job kinds with the job runner.
        from images import jobs  # noqa: F401
