"""A throw-away PostgreSQL database for a bench that fills its own tables, and Django set up on it.

Runs before Django is set up: it points DATABASE_URL at the bench's database first.
"""
from __future__ import annotations

import importlib
import os
import warnings

SERVER_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]


def server_sql(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{SERVER_URL}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def exists(name: str) -> bool:
    import psycopg

    with psycopg.connect(f"{SERVER_URL}/postgres", autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone())


def set_up(name: str, *, reuse: bool = False, as_server: bool = False) -> None:
    """Point Django at database `name` (made afresh unless `reuse`), set it up and migrate. `as_server`:
    set up as the web server is (xenaoe_panel/asgi.py), for a bench that times its pages."""
    os.environ["DATABASE_URL"] = f"{SERVER_URL}/{name}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xenaoe_panel.settings_lab")
    if not reuse:
        drop(name)
        server_sql(f'CREATE DATABASE "{name}"')
    # WhiteNoise looks for collected static files that a bench does not need.
    warnings.filterwarnings("ignore", "No directory at", UserWarning)
    if as_server:
        # What it loaded is kept out of the garbage collector's full collections, as in the server.
        importlib.import_module("xenaoe_panel.asgi")
    else:
        import django

        django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def drop(name: str) -> None:
    from django.db import connection

    connection.close()
    server_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
