"""Swagger UI and Redoc, served from drf-spectacular-sidecar's static files: an air-gapped cluster's
browsers reach no CDN. No inline script (the Swagger UI set-up is a separate script, as the panel's
policy wants); the viewers draw their own styles at run time, so these two pages allow inline styles."""
from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerSplitView

DOCS_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self' data:",
    "worker-src 'self' blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))


class _DocsPolicy:
    def finalize_response(self, request: Any, response: HttpResponse, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        if response.get("Content-Type", "").startswith("text/html"):
            response["Content-Security-Policy"] = DOCS_POLICY
        return response


class SwaggerView(_DocsPolicy, SpectacularSwaggerSplitView):
    template_name = "api/swagger_ui.html"


class RedocView(_DocsPolicy, SpectacularRedocView):
    template_name = "api/redoc.html"
