from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        user_logged_out.connect(_end_session_streams, dispatch_uid="xenaoe-end-session-streams")


def _end_session_streams(sender, request, user, **kwargs) -> None:
    """Logging out ends the websockets that session opened (a console above all), not the user's
    others: another browser or a script with a token goes on."""
    from xenaoe_panel.ws_guard import end_session_streams

    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        end_session_streams(session_key, "logged out")
