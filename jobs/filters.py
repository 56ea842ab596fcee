"""The job history's filters: a plain form that validates the query string and narrows a queryset.

Every filter is one indexed column compared with `=`, a prefix or a range, so that the first page
comes off an index whatever the filters (see the indexes on Job and docs/jobs.md).
"""
from __future__ import annotations

import datetime
import re

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from jobs.choices import JobState
from jobs.models import Job

# VM and host names (vms.models, hosts.models); a trailing * makes a VM name a prefix. \Z, not $:
# $ also matches before a final newline.
VM_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}\*?\Z")
HOST_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")


def kinds_present() -> list[str]:
    """The distinct kinds in the table, in order.

    A recursive query hops from one kind to the next on the kind index: a handful of index probes
    instead of reading every row, which a plain DISTINCT does (tens of ms at 100,000 jobs).
    Standard SQL, so SQLite runs it too.
    """
    table = connection.ops.quote_name(Job._meta.db_table)
    sql = (
        f"WITH RECURSIVE k(kind) AS ("  # noqa: S608 - the table name is ours, quoted; no user input
        f" SELECT MIN(kind) FROM {table}"
        f" UNION ALL SELECT (SELECT MIN(kind) FROM {table} WHERE kind > k.kind) FROM k WHERE k.kind IS NOT NULL"
        f") SELECT kind FROM k WHERE kind IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]


class JobFilterForm(forms.Form):
    kind = forms.ChoiceField(required=False)
    state = forms.ChoiceField(required=False, choices=[("", "Any state"), *JobState.choices])
    vm = forms.CharField(
        required=False, max_length=64, label="VM",
        help_text="A name, or the start of names followed by * (web*).",
    )
    host = forms.CharField(required=False, max_length=63, help_text="A CPU or disk server the job acts on.")
    user = forms.CharField(required=False, max_length=150, help_text="Username of who started the job.")
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, kinds: list[str], users: QuerySet | None = None, with_hosts: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.users = users if users is not None else get_user_model().objects.all()
        if not with_hosts:  # a tenant's users are not told which hosts jobs touch
            del self.fields["host"]
        self.fields["kind"].choices = [("", "Any kind"), *((kind, kind) for kind in kinds)]
        self.fields["kind"].error_messages["invalid_choice"] = "There is no job of kind “%(value)s”."
        self.fields["state"].error_messages["invalid_choice"] = "“%(value)s” is not a job state."
        for name, field in self.fields.items():
            field.widget.attrs["class"] = "form-select" if isinstance(field, forms.ChoiceField) else "form-control"
            if name in ("host", "user"):
                field.widget.attrs["list"] = f"{name}-names"
            if field.help_text:
                field.widget.attrs["aria-describedby"] = f"id_{name}_help"

    def clean_vm(self) -> str:
        value = self.cleaned_data["vm"].strip()
        if value and not VM_PATTERN.match(value):
            raise ValidationError("A VM name is lower-case letters, digits and '-' (end with * for a prefix).")
        return value

    def clean_host(self) -> str:
        # Not checked against today's hosts: a job keeps the name of a host that has since gone.
        value = self.cleaned_data["host"].strip()
        if value and not HOST_PATTERN.match(value):
            raise ValidationError("A host name is lower-case letters, digits and '-', starting with a letter.")
        return value

    def clean_user(self) -> AbstractBaseUser | None:
        value = self.cleaned_data["user"].strip()
        if not value:
            return None
        # Looked up once here, so that the list filters on the indexed user_id without a join.
        user = self.users.filter(username=value).first()
        if user is None:
            raise ValidationError(f"There is no user named “{value}”.")
        return user

    def clean(self) -> dict:
        data = super().clean()
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "“To” is before “From”.")
        return data

    def mark_errors(self) -> None:
        """Let screen readers announce which fields are wrong and why."""
        for name in self.errors:
            if name in self.fields:
                attrs = self.fields[name].widget.attrs
                attrs["aria-invalid"] = "true"
                attrs["aria-describedby"] = " ".join(
                    [f"id_{name}_error", *([f"id_{name}_help"] if self.fields[name].help_text else [])]
                )
                attrs["class"] += " is-invalid"

    @property
    def active(self) -> bool:
        return self.is_valid() and any(value not in ("", None) for value in self.cleaned_data.values())

    def filter(self, jobs: QuerySet[Job]) -> QuerySet[Job]:
        data = self.cleaned_data
        if data["kind"]:
            jobs = jobs.filter(kind=data["kind"])
        if data["state"]:
            jobs = jobs.filter(state=data["state"])
        if vm := data["vm"]:
            # By the name the job keeps, so that the jobs of a deleted VM are found too.
            jobs = jobs.filter(target_name__startswith=vm[:-1]) if vm.endswith("*") else jobs.filter(target_name=vm)
        if data.get("host"):
            jobs = jobs.filter(hosts__contains=f" {data['host']} ")
        if data["user"]:
            jobs = jobs.filter(user=data["user"])
        if data["date_from"]:
            jobs = jobs.filter(created_at__gte=_midnight(data["date_from"]))
        if data["date_to"] and data["date_to"] < datetime.date.max:  # the calendar's last day: no end
            jobs = jobs.filter(created_at__lt=_midnight(data["date_to"] + datetime.timedelta(days=1)))
        return jobs


def as_utc(moment: datetime.datetime) -> datetime.datetime:
    """An aware time in UTC, as every database takes it. One whose UTC time falls off the calendar
    (0001-01-01T00:00+01:00 is in year 0) becomes the calendar's first or last moment."""
    try:
        return moment.astimezone(datetime.UTC)
    except OverflowError:
        end = datetime.datetime.min if moment.year == datetime.MINYEAR else datetime.datetime.max
        return end.replace(tzinfo=datetime.UTC)


def _midnight(day: datetime.date) -> datetime.datetime:
    """The start of a day in the panel's time zone: dates on the page are shown in it."""
    return as_utc(timezone.make_aware(datetime.datetime.combine(day, datetime.time.min)))
