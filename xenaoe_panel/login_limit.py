"""Failed-login limits, counted in the cache (Redis), so that every web process sees the same counts.

Two limits, each counting failures over LOGIN_FAILURE_WINDOW_S from the first one:
- per account and address: LOGIN_FAILURES_PER_ACCOUNT wrong passwords for one user name from one
  client address lock that pair (a guesser aimed at one account; the owner elsewhere is not locked out);
- per address: LOGIN_FAILURES_PER_ADDRESS wrong passwords from one address, whatever the user names,
  lock the address (a guesser trying one password on many accounts).
A lock lasts LOGIN_LOCKOUT_S. While it holds, a login is refused before the password is looked at, so
that a locked guesser learns nothing, not even from a right password. A successful login clears the
account-and-address count (not the address's: one good password must not buy a spraying address more tries).

Client addresses: REMOTE_ADDR, or, behind TRUSTED_PROXIES reverse proxies, the address the outermost
of them saw (X-Forwarded-For). IPv6 clients are counted by their /64, which one subscriber usually owns whole.
"""
from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

ACCOUNT = "account"
ADDRESS = "address"


@dataclass(frozen=True)
class Lockout:
    scope: str  # ACCOUNT (this user name from this address) or ADDRESS (every user name from it)
    retry_after_s: int

    @property
    def retry_after_minutes(self) -> int:
        return max(1, math.ceil(self.retry_after_s / 60))

    @property
    def message(self) -> str:
        minutes = self.retry_after_minutes
        wait = f"{minutes} minute{'' if minutes == 1 else 's'}"
        if self.scope == ACCOUNT:
            return f"Too many failed logins for this account from your address; try again in {wait}."
        return f"Too many failed logins from your address; try again in {wait}."


def client_ip(request: HttpRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's own address: REMOTE_ADDR, or the one the outermost trusted proxy saw. None when
    neither is an IP address (a unix socket)."""
    remote = request.META.get("REMOTE_ADDR", "")
    address = remote
    proxies = settings.TRUSTED_PROXIES
    if proxies:
        # Each proxy appends the address it received the request from; entries further left were
        # written by the client and prove nothing. The outermost trusted proxy wrote the -Nth entry.
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if hops:
            address = hops[-proxies] if len(hops) >= proxies else hops[0]
    for candidate in (address, remote):
        try:
            return ipaddress.ip_address(candidate)
        except ValueError:
            continue
    return None


def client_address(request: HttpRequest) -> str:
    """The client's address as the limits count it (an IPv6 client's /64)."""
    ip = client_ip(request)
    if ip is None:
        return request.META.get("REMOTE_ADDR", "") or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _key(kind: str, scope: str, address: str, username: str = "") -> str:
    # Hashed: user names are whatever a client typed, and keys must stay short and plain.
    digest = hashlib.sha256(f"{address}\0{username.casefold()}".encode()).hexdigest()[:32]
    return f"login:{kind}:{scope}:{digest}"


def _scopes(username: str, address: str) -> list[tuple[str, str, str, int]]:
    """(scope, count key, lock key, limit) for each limit that applies."""
    scopes = [(ADDRESS, _key("count", ADDRESS, address), _key("lock", ADDRESS, address),
               settings.LOGIN_FAILURES_PER_ADDRESS)]
    if username:
        scopes.insert(0, (ACCOUNT, _key("count", ACCOUNT, address, username),
                          _key("lock", ACCOUNT, address, username), settings.LOGIN_FAILURES_PER_ACCOUNT))
    return scopes


def lockout(username: str, address: str) -> Lockout | None:
    """The lock that refuses this login, or None. Never looks at a password."""
    now = time.time()
    for scope, _count_key, lock_key, _limit in _scopes(username, address):
        until = cache.get(lock_key)
        if until is not None and until > now:
            return Lockout(scope=scope, retry_after_s=max(1, math.ceil(until - now)))
    return None


def record_failure(username: str, address: str) -> Lockout | None:
    """Count a wrong password; returns the lock it caused, if it reached a limit."""
    window = settings.LOGIN_FAILURE_WINDOW_S
    caused: Lockout | None = None
    for scope, count_key, lock_key, limit in _scopes(username, address):
        cache.add(count_key, 0, timeout=window)
        try:
            failures = cache.incr(count_key)
        except ValueError:  # expired between add and incr
            cache.set(count_key, 1, timeout=window)
            failures = 1
        if failures >= limit:
            duration = settings.LOGIN_LOCKOUT_S
            cache.set(lock_key, time.time() + duration, timeout=duration)
            # The next window starts after the lock: a full LIMIT tries again, not one.
            cache.delete(count_key)
            caused = caused or Lockout(scope=scope, retry_after_s=duration)
    return caused


def record_success(username: str, address: str) -> None:
    """A right password: this account's count from this address starts again."""
    cache.delete_many([_key("count", ACCOUNT, address, username), _key("lock", ACCOUNT, address, username)])


def allow_reset_email(address: str, email: str) -> bool:
    """Whether a password reset email may go out now: at most PASSWORD_RESET_EMAILS_PER_HOUR per
    client address and per email address, so that the form cannot be used to flood someone's mailbox
    (or the mail relay). The page says "sent" either way: it must not tell which addresses exist."""
    limit = settings.PASSWORD_RESET_EMAILS_PER_HOUR
    keys = [_key("reset", ADDRESS, address), _key("reset", "email", "", email.strip())]
    for key in keys:
        cache.add(key, 0, timeout=3600)
    if any((cache.get(key) or 0) >= limit for key in keys):
        return False
    for key in keys:
        try:
            cache.incr(key)
        except ValueError:  # expired in between: counts from one again
            cache.set(key, 1, timeout=3600)
    return True
