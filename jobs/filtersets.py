"""The job history's filters, for the page (/jobs/) and the API (/api/jobs/) alike
(xenaoe_panel/filtersets.py); each narrows what the user may see (Job.objects.visible_to)."""
from __future__ import annotations

import re
from typing import Any

import django_filters
from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import connection
from django.db.models import QuerySet

from jobs.choices import JobState
from jobs.models import Job
from tenants.access import is_operator, shows_cpu_server, tenant_of
from xenaoe_panel.filtersets import FilterForm, LowerCaseField, NameFilter, PanelFilterSet, TimeRangeFilters
from xenaoe_panel.names import NAME, NAME_RE

# VM and host names (vms.models, hosts.models); a trailing * makes a VM name a prefix. \Z, not $:
# $ also matches before a final newline.
VM_PATTERN = re.compile(rf"^{NAME}\*?\Z")
HOST_PATTERN = NAME_RE


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


def _kind_choices() -> list[tuple[str, str]]:
    return [("", "Any kind"), *((kind, kind) for kind in kinds_present())]


class JobFilterForm(FilterForm):
    page_help = ("vm", "host", "user")
    # The users the `user` filter may name (set by JobFilterSet): everyone for operators, a
    # tenant's users their tenant's.
    users: QuerySet

    def clean_user(self) -> AbstractBaseUser | None:
        value = self.cleaned_data["user"]
        if not value:
            return None
        # Looked up once here, so that the list filters on the indexed user_id without a join.
        user = self.users.filter(username=value).first()
        if user is None:
            # With params, not formatted in: django-filter formats the message again for the API.
            raise ValidationError("There is no user named “%(name)s”.", params={"name": value})
        return user


class NameField(LowerCaseField):
    """A VM or host name, in any case; checked against `pattern` (names are lower case)."""

    def __init__(self, *, pattern: re.Pattern[str], message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators.append(RegexValidator(pattern, message))


class PatternFilter(django_filters.CharFilter):
    field_class = NameField


class JobFilterSet(TimeRangeFilters, PanelFilterSet):
    """The job history's filters: the page (/jobs/) draws all but `since`; the API (/api/jobs/) takes them all.

    Every filter is one indexed column compared with `=`, a prefix or a range, so that the first page
    comes off an index whatever the filters (see the indexes on Job and docs/jobs.md)."""

    kind = NameFilter(choices=_kind_choices, max_length=32, label="Kind", help_text="A job kind (vm.create).")
    state = django_filters.ChoiceFilter(choices=JobState.choices, empty_label="Any state",
                                        error_messages={"invalid_choice": "“%(value)s” is not a job state."})
    vm = PatternFilter(method="filter_vm", max_length=64, label="VM", pattern=VM_PATTERN,
                            message="A VM name is lower-case letters, digits and '-' (end with * for a prefix).",
                            help_text="A name, or the start of names followed by * (web*).")
    host = PatternFilter(method="filter_host", max_length=63, label="Host", pattern=HOST_PATTERN,
                              message="A host name is lower-case letters, digits and '-', starting with a letter.",
                              help_text="A CPU or disk server the job acts on.",
                              widget=forms.TextInput(attrs={"list": "host-names"}))
    user = django_filters.CharFilter(method="filter_user", max_length=150, label="User",
                                     help_text="Username of who started the job.",
                                     widget=forms.TextInput(attrs={"list": "user-names"}))
    date_from = django_filters.DateFilter(method="filter_date_from", label="From",
                                          help_text="Created on or after this day (YYYY-MM-DD, the panel's time zone).",
                                          widget=forms.DateInput(attrs={"type": "date"}))
    date_to = django_filters.DateFilter(method="filter_date_to", label="To",
                                        help_text="Created on or before this day (YYYY-MM-DD, the panel's time zone).",
                                        widget=forms.DateInput(attrs={"type": "date"}))
    since = django_filters.IsoDateTimeFilter(method="filter_since", label="Since",
                                             help_text="Created at or after this ISO 8601 time.")

    time_field = "created_at"

    class Meta:
        model = Job
        fields = ["kind", "state", "vm", "host", "user", "date_from", "date_to", "since"]
        form = JobFilterForm

    def prepare_form(self, form: JobFilterForm) -> None:
        super().prepare_form(form)
        form.users = self.users()

    def users(self) -> QuerySet:
        users = get_user_model().objects.all()
        if is_operator(self.user):
            return users
        tenant = tenant_of(self.user)
        return users.filter(membership__tenant=tenant) if tenant is not None else users.none()

    def shown_on_page(self, name: str) -> bool:
        return super().shown_on_page(name) and name != "since"  # the page has its two dates

    def refused(self) -> dict[str, str]:
        return {} if shows_cpu_server(self.user) else {"host": "you are not shown which hosts a job acts on"}

    def filter_vm(self, jobs: QuerySet[Job], name: str, value: str) -> QuerySet[Job]:
        # By the name the job keeps, so that the jobs of a deleted VM are found too.
        if value.endswith("*"):
            return jobs.filter(target_name__startswith=value[:-1])
        return jobs.filter(target_name=value)

    def filter_host(self, jobs: QuerySet[Job], name: str, value: str) -> QuerySet[Job]:
        # Not checked against today's hosts: a job keeps the name of a host that has since gone.
        return jobs.filter(hosts__contains=f" {value} ")

    def filter_user(self, jobs: QuerySet[Job], name: str, value: AbstractBaseUser) -> QuerySet[Job]:
        return jobs.filter(user=value)
