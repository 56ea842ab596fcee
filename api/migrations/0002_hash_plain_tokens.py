"""Tokens of the versions that kept them in plain text (rest_framework.authtoken's table): each is
stored as a hash, with the default expiry from now, and the plain table emptied. Its table stays,
empty, for Django's record of that app's migrations; drop it by hand if you like."""
import datetime
import hashlib

from django.conf import settings
from django.db import migrations
from django.utils import timezone

LEGACY_TABLE = "authtoken_token"


def hash_plain_tokens(apps, schema_editor):
    connection = schema_editor.connection
    if LEGACY_TABLE not in connection.introspection.table_names():
        return
    api_token = apps.get_model("api", "ApiToken")
    now = timezone.now()
    expires = now + datetime.timedelta(days=settings.API_TOKEN_DAYS)
    table = connection.ops.quote_name(LEGACY_TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {connection.ops.quote_name('key')}, user_id FROM {table}")  # noqa: S608 - fixed names
        rows = cursor.fetchall()
        for key, user_id in rows:
            api_token.objects.update_or_create(
                user_id=user_id,
                defaults={"digest": hashlib.sha256(key.encode()).hexdigest(), "created_at": now, "expires_at": expires})
        cursor.execute(f"DELETE FROM {table}")  # noqa: S608 - a fixed name


class Migration(migrations.Migration):
    dependencies = [("api", "0001_api_token")]

    operations = [migrations.RunPython(hash_plain_tokens, migrations.RunPython.noop)]
