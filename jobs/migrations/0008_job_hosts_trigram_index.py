"""A trigram index on Job.hosts, for the job history's host filter (`hosts LIKE '% cpu2 %'`).

Without it every count and page filtered by a host reads the whole table (14-30 ms at 100,000 jobs,
whatever the host); with it a host that few jobs touched is found in a fraction of a millisecond,
and one that a quarter of them touched in about two thirds of the time. PostgreSQL only: pg_trgm is
a trusted extension, which the database's owner may create. SQLite (the demo) keeps its scan.
Not in the model's Meta: Django would create a GIN index on SQLite too.
"""
from django.db import migrations


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    schema_editor.execute("CREATE INDEX IF NOT EXISTS job_hosts_trgm ON jobs_job USING gin (hosts gin_trgm_ops)")


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS job_hosts_trgm")


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0007_job_lease_and_wake'),
    ]

    operations = [migrations.RunPython(create_index, drop_index)]
