"""Content-Security-Policy on every response (Django 5.1 has none built in).

The pages load scripts and style sheets only from this panel (no inline script anywhere: page scripts
live in static/js and read their data from data- attributes or json_script). Inline style *attributes*
stay allowed (style-src-attr) because progress bars are drawn server-side with style="width: N%";
<style> elements are not (style-src-elem). A browser that knows only CSP level 2 falls back to
style-src, which therefore lists 'unsafe-inline' too. Websockets go back to the same host.
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

POLICY = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "style-src-elem 'self'",
    "style-src-attr 'unsafe-inline'",
    "img-src 'self' data:",  # Bootstrap draws form controls' icons with data: SVGs
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)


def content_security_policy(request: HttpRequest, *, inline_style_elements: bool = False) -> str:
    policy = POLICY
    if inline_style_elements:
        policy = tuple("style-src-elem 'self' 'unsafe-inline'" if part == "style-src-elem 'self'" else part
                       for part in POLICY)
    connect = "connect-src 'self'"
    try:
        host = request.get_host()
    except DisallowedHost:
        host = ""
    if host:
        # Older Safari does not count ws:/wss: to the page's own host as 'self'.
        connect += f" {'wss' if request.is_secure() else 'ws'}://{host}"
    return "; ".join((*policy, connect))


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Adds the policy unless a view set its own. Django's debug pages (DEBUG only) carry inline
    scripts and styles, so error responses go without it there."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if "Content-Security-Policy" in response:
            return response
        if settings.DEBUG and response.status_code >= 400:
            return response
        response["Content-Security-Policy"] = content_security_policy(request)
        return response
