"""PostgreSQL itself refuses to change or delete an audit event, whichever client asks.

Two exceptions keep the record whole:
- deleting a user or a tenant makes Django empty the link to it (ON DELETE SET NULL): an UPDATE
  that sets actor_id or tenant_id to NULL and changes nothing else passes; the names stay;
- the audit archive (audit/retention.py) deletes the events it has just written to its file: in its
  transaction it sets `xenaoe.audit_archived_before`, and only events older than that pass, and
  only when that time is a day old at least, so that no setting reaches the last day's events.
TRUNCATE is not refused: the application never issues it, and the test runner empties tables with it.
The database's owner can drop the trigger: this guards against the application, not against them.
SQLite (the demo) has no trigger: the ORM's refusal (audit/models.py) is all it has.
"""
from django.db import migrations

CREATE = """
CREATE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    archived_before timestamptz;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (NEW.actor_id IS NULL OR NEW.actor_id = OLD.actor_id)
           AND (NEW.tenant_id IS NULL OR NEW.tenant_id = OLD.tenant_id)
           AND (to_jsonb(NEW) - 'actor_id' - 'tenant_id') = (to_jsonb(OLD) - 'actor_id' - 'tenant_id') THEN
            RETURN NEW;
        END IF;
    ELSE
        archived_before := NULLIF(current_setting('xenaoe.audit_archived_before', true), '')::timestamptz;
        IF archived_before <= now() - interval '1 day' AND OLD.time < archived_before THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit events are append-only: % of event % refused', TG_OP, OLD.id
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent;
DROP FUNCTION IF EXISTS audit_event_append_only();
"""


def _on_postgresql(sql: str):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)  # the SQL has % of its own: no placeholders

    return run


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunPython(_on_postgresql(CREATE), _on_postgresql(DROP))]
