"""ASGI entry point: HTTP through Django, websockets through Channels (authenticated by session)."""
import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xenaoe_panel.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from api.ws_auth import TokenAuthMiddleware  # noqa: E402
from xenaoe_panel.routing import websocket_urlpatterns  # noqa: E402
from xenaoe_panel.ws_guard import StreamGuardMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The origin check is the websocket's CSRF protection: a page on another site cannot
        # open a stream with the operator's cookies.
        # A script may sign in with an API token header instead of a session (api/ws_auth.py).
        # Every route drops frames that are not JSON, and ends when its user's access changes
        # (xenaoe_panel/ws_guard.py).
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(TokenAuthMiddleware(StreamGuardMiddleware(URLRouter(websocket_urlpatterns))))
        ),
    }
)

# What the server has loaded by now (Django, the apps, their modules: ~150,000 objects) lives as long
# as the process. Out of the collector's sight, it is no longer walked by every full collection: one
# took 60-110 ms in the middle of about one request in fifteen at a site's scale (bench/scale.py).
gc.freeze()
