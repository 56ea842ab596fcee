"""GET /metrics: the panel's metrics in Prometheus' text format (metrics/collector.py), for whoever shows
the token: `Authorization: Bearer <token>`, the token read at start from XENAOE_METRICS_TOKEN_FILE.

A session counts for nothing here, an operator's or a tenant's: the figures are the whole site's, and
a scraper has no session. No token configured: 404, as if the endpoint did not exist. No token sent:
401 (asking for one); a wrong one: 403. The comparison takes the same time wherever they differ.
"""
from __future__ import annotations

import hmac

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_http_methods
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from metrics.collector import registry


@require_http_methods(["GET", "HEAD"])
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("Metrics are off: XENAOE_METRICS_TOKEN_FILE is not set.")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        response = HttpResponse("A bearer token is needed.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="xenaoe-metrics"'
        return response
    if not hmac.compare_digest(given.encode(), token.encode()):
        return HttpResponse("Wrong token.\n", status=403, content_type="text/plain")
    # The classic text format (what prometheus_client's own server sends unless asked for more).
    response = HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response["Cache-Control"] = "no-store"
    return response
