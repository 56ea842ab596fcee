"""An HTTP request sent to addresses already checked, never to whatever the name resolves to next.

Checking a host name's addresses and then handing its URL to `requests` resolves the name twice: a
hostile DNS server can answer a public address to the check and a private one to the connection
(DNS rebinding), and a tenant's webhook would reach the panel's own networks. Here the caller
resolves and checks once, and the connection goes to one of those very addresses (in their order,
the next only when one cannot be connected to: nothing was sent yet). Everything else still goes by
the URL's name: the Host header, TLS's SNI and the certificate's name check (`server_hostname`,
`assert_hostname`), against the CA bundle `requests` would use (`verify`, REQUESTS_CA_BUNDLE).
Never through a proxy: a proxy would connect wherever the name pointed by then.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError

DEFAULT_PORTS = {"http": 80, "https": 443}


def host_header(url: str) -> str:
    """What the Host header says for `url`: its host (in brackets for IPv6) and a port not the default."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    port = parts.port
    return host if port is None or port == DEFAULT_PORTS.get(parts.scheme) else f"{host}:{port}"


class PinnedAdapter(HTTPAdapter):
    """Connects to `address` whatever the request's URL names; the URL's host name is what TLS and
    the Host header see."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request: requests.PreparedRequest, verify: Any,
                                             cert: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        name = host_params["host"]
        host_params["host"] = self.address
        if host_params["scheme"] == "https":
            pool_kwargs |= {"server_hostname": name, "assert_hostname": name}
        return host_params, pool_kwargs

    def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
        # Else http.client would name the address the pool connects to.
        request.headers["Host"] = host_header(request.url or "")

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies={})


def never_connected(exc: requests.RequestException) -> bool:
    """Whether the request failed before a connection was made (refused, unreachable, timed out
    connecting): nothing of it was sent, so another address may be tried."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, ConnectTimeoutError)


def _post_to(address: str, url: str, **kwargs: Any) -> requests.Response:
    with requests.Session() as session:
        adapter = PinnedAdapter(address)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session.post(url, **kwargs)


def post(url: str, addresses: Sequence[str], **kwargs: Any) -> requests.Response:
    """`requests.post(url, **kwargs)`, connected to one of `addresses` (tried in order) and never
    to another."""
    if not addresses:
        raise ValueError("no address to connect to")
    for address in addresses[:-1]:
        try:
            return _post_to(address, url, **kwargs)
        except requests.RequestException as exc:
            if not never_connected(exc):
                raise
    return _post_to(addresses[-1], url, **kwargs)
