"""Settings from the environment: helpers that fail fast on bad values."""
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no)")


def env_int(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={value} is above the maximum {maximum}")
    return value


def env_optional_int(name: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """An integer, or None (no value) when the variable is unset or empty."""
    if not os.environ.get(name, "").strip():
        return None
    return env_int(name, 0, minimum, maximum)


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw) if raw else default


def read_secret_file(name: str, path: str, min_length: int = 1) -> str:
    """A secret read from the file a variable names (never from the variable itself, which `ps e`
    and /proc show); the file must not be readable by every user."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        value = file.read_text().strip()
    except OSError as exc:
        raise ImproperlyConfigured(f"{name}={path!r}: {exc.strerror}") from exc
    if mode & 0o004:
        raise ImproperlyConfigured(f"{name}={path!r} is readable by every user (chmod o-r)")
    if len(value) < min_length:
        raise ImproperlyConfigured(f"{name}={path!r} holds {len(value)} characters; at least {min_length} needed")
    return value
