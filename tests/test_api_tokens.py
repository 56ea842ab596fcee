"""API tokens: shown once when made, stored only as a hash, refused once expired, rotated by command."""
from __future__ import annotations

import datetime
import io

import pytest
from django.apps import apps
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, models
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from tenants.services import add_user, create_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return add_user(create_tenant("acme"), "alice")


def _token(*args: str) -> str:
    out = io.StringIO()
    call_command("api", "token", *args, stdout=out)
    return out.getvalue().strip()


def _me(key: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/api/me/").status_code


def _stored_anywhere(text: str) -> list[str]:
    """Every text column of every table that holds `text`."""
    found = []
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, models.CharField | models.TextField) and \
                    model._default_manager.filter(**{field.name: text}).exists():
                found.append(f"{model._meta.db_table}.{field.column}")
    return found


def test_a_token_is_stored_only_as_a_hash(alice):
    key = _token("alice")
    assert len(key) >= 40 and _me(key) == 200
    assert _stored_anywhere(key) == []


def test_a_token_is_shown_once_and_rotation_makes_a_new_one(alice):
    first = _token("alice")
    with pytest.raises(CommandError, match="--rotate"):
        _token("alice")  # it cannot be shown again: only its hash is kept
    assert _me(first) == 200
    second = _token("alice", "--rotate")
    assert second != first and _me(first) == 401 and _me(second) == 200


@override_settings(API_TOKEN_DAYS=90)
def test_a_token_expires(alice):
    key = _token("alice")
    from api.models import ApiToken

    token = ApiToken.objects.get(user=alice)
    assert abs(token.expires_at - (timezone.now() + datetime.timedelta(days=90))) < datetime.timedelta(minutes=1)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = client.get("/api/me/")
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    assert _me(_token("alice")) == 200  # an expired token is replaced without --rotate
    assert _me(_token("alice", "--rotate", "--days", "1")) == 200
    assert ApiToken.objects.get(user=alice).expires_at < timezone.now() + datetime.timedelta(days=1, minutes=1)


def test_plain_tokens_left_by_older_versions_are_hashed_and_emptied(alice):
    """The data migration, run on a table as rest_framework.authtoken left it."""
    import importlib

    from api.tokens import user_for_token

    migration = importlib.import_module("api.migrations.0002_hash_plain_tokens")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created timestamp with time zone "
                       "NOT NULL, user_id integer NOT NULL)")
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, %s, %s)",
                       ["0123456789abcdef0123456789abcdef01234567", timezone.now(), alice.pk])

    class Editor:  # what RunPython hands the function: the connection it runs on
        pass

    editor = Editor()
    editor.connection = connection
    migration.hash_plain_tokens(apps, editor)
    assert user_for_token("0123456789abcdef0123456789abcdef01234567") == alice
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM authtoken_token")
        assert cursor.fetchone()[0] == 0
