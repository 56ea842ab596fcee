"""What every list's filter set shares (vms/filtersets.py, jobs/filtersets.py).

One django-filter FilterSet per list, used by its page and by its API view alike (NetBox's
filtersets), so that the two cannot disagree on what a filter means. The API reads its errors as
400s (field -> messages); the page draws its form. The rules they share:

- A name (a tenant, a CPU server, a job kind) that names nothing filters to nothing: no error, since
  a host removed or a kind archived since is not a mistake. The page's select shows it anyway.
- A filter on what the user is not told (which hosts) is refused, with a message on that filter.
- A filter may have another name (`aliases`): the query string may use either; the filter's own
  name wins when both are given.
"""
from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import django_filters
from django import forms
from django.core.validators import MaxLengthValidator, ProhibitNullCharactersValidator
from django.db.models import QuerySet
from django.forms.boundfield import BoundField
from django.http import QueryDict
from django.utils import timezone


class OpenSelect(forms.Select):
    """A select that also shows a value not among its options (a name from a link or typed into the
    address, a host removed since), so that the page says what it filters by."""

    def optgroups(self, name: str, value: list[str], attrs: dict[str, Any] | None = None) -> list[Any]:
        groups = super().optgroups(name, value, attrs)
        known = {str(option["value"]) for _, options, _ in groups for option in options}
        for other in (v for v in value if v and v not in known):
            groups.append((None, [self.create_option(name, other, other, True, len(groups), attrs=attrs)], len(groups)))
        return groups


class _Once:
    """Choices read from the database once per form (a select asks for them more than once)."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self.read, self.choices = read, None

    def __call__(self) -> list[tuple[str, str]]:
        if self.choices is None:
            self.choices = list(self.read())
        return self.choices


class OpenChoiceField(forms.ChoiceField):
    """The names there are now to choose from, and any other name up to `max_length` accepted.
    `choices` is a callable, called only when the page draws the select (never for the API)."""

    widget = OpenSelect

    def __init__(self, *, max_length: int, choices: Callable[[], Iterable[tuple[str, str]]], **kwargs: Any) -> None:
        super().__init__(choices=_Once(choices), **kwargs)
        # What a CharField checks: PostgreSQL takes no NUL in a string.
        self.validators += [MaxLengthValidator(max_length), ProhibitNullCharactersValidator()]

    def valid_value(self, value: str) -> bool:
        return True


class NameFilter(django_filters.CharFilter):
    """A name compared exactly: a string in the API, a select of `choices` (a callable, evaluated only
    when the page draws it) on the page."""

    field_class = OpenChoiceField


class LowerCaseField(forms.CharField):
    """Names are lower case: "Web1" means web1."""

    def to_python(self, value: Any) -> str:
        return super().to_python(value).lower()


class FilterForm(forms.Form):
    """The form a filter set builds. Its page draws `shown` with Bootstrap's classes; a field in error
    is marked for sight (is-invalid) and for screen readers (aria-invalid, aria-describedby)."""

    compact = False  # small controls (the VM list)
    page_help: ClassVar[tuple[str, ...]] = ()  # the fields whose help the page shows (the API's schema shows all)
    # Set by the filter set before validation: the fields its page draws for this user, and the
    # filters this user may not use, with why.
    shown_names: list[str]
    refused: dict[str, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shown_names, self.refused = list(self.fields), {}
        size = "-sm" if self.compact else ""
        for name, field in self.fields.items():
            kind = "form-select" if isinstance(field.widget, forms.Select) else "form-control"
            field.widget.attrs.setdefault("class", f"{kind} {kind}{size}" if size else kind)
            if name not in self.page_help:
                field.help_text = ""
            if field.help_text:
                field.widget.attrs["aria-describedby"] = f"id_{name}_help"

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for name, why in self.refused.items():
            if data.get(name) not in (None, ""):
                self.add_error(name, why)
        start, end = data.get("date_from"), data.get("date_to")  # a list's days, when it has them
        if start and end and start > end:
            self.add_error("date_to", "“To” is before “From”.")
        return data

    def full_clean(self) -> None:
        super().full_clean()
        for name in self.errors:
            if name in self.fields:
                attrs = self.fields[name].widget.attrs
                attrs["aria-invalid"] = "true"
                help_id = [f"id_{name}_help"] if self.fields[name].help_text else []
                attrs["aria-describedby"] = " ".join([f"id_{name}_error", *help_id])
                if "is-invalid" not in attrs["class"].split():
                    attrs["class"] += " is-invalid"

    @property
    def shown(self) -> list[BoundField]:
        return [self[name] for name in self.shown_names]

    @property
    def other_errors(self) -> list[str]:
        """Messages the page has no field to put beside: the form's own, and those of filters it does not draw."""
        return [f"{self.fields[name].label or name}: {message}" if name in self.fields else message
                for name, messages in self.errors.items() if name not in self.shown_names for message in messages]

    @property
    def active(self) -> bool:
        return self.is_valid() and any(value not in ("", None) for value in self.cleaned_data.values())


class PanelFilterSet(django_filters.FilterSet):
    """A list's filters, for its page and its API view. `request` is required: what a filter offers
    or refuses depends on who asks."""

    aliases: ClassVar[dict[str, str]] = {}  # another name -> the filter's

    def __init__(self, data: Mapping[str, Any] | None = None, queryset: Any = None, *, request: Any,
                 prefix: str | None = None) -> None:
        super().__init__(_unaliased(data, self.aliases), queryset, request=request, prefix=prefix)
        self.user = request.user

    @property
    def form(self) -> FilterForm:
        if not hasattr(self, "_form"):
            self.prepare_form(super().form)
        return self._form

    def prepare_form(self, form: FilterForm) -> None:
        """Tell the new form what depends on the user (before it validates anything)."""
        form.shown_names = [name for name in form.fields if self.shown_on_page(name)]
        form.refused = self.refused()

    def shown_on_page(self, name: str) -> bool:
        """Whether the page draws this filter for this user (the API takes every filter)."""
        return name not in self.refused()

    def refused(self) -> dict[str, str]:
        """The filters this user may not use, with why."""
        return {}


def _unaliased(data: Mapping[str, Any] | None, aliases: dict[str, str]) -> Mapping[str, Any] | None:
    """The query string with each alias under its filter's name (unless that name is there too)."""
    found = [(alias, name) for alias, name in aliases.items() if data and alias in data and name not in data]
    if not found:
        return data
    if isinstance(data, QueryDict):
        query = data.copy()
        for alias, name in found:
            query.setlist(name, query.pop(alias))
        return query
    plain = dict(data)
    for alias, name in found:
        plain[name] = plain.pop(alias)
    return plain


def as_utc(moment: datetime.datetime) -> datetime.datetime:
    """An aware time in UTC, as every database takes it. One whose UTC time falls off the calendar
    (0001-01-01T00:00+01:00 is in year 0) becomes the calendar's first or last moment."""
    try:
        return moment.astimezone(datetime.UTC)
    except OverflowError:
        end = datetime.datetime.min if moment.year == datetime.MINYEAR else datetime.datetime.max
        return end.replace(tzinfo=datetime.UTC)


def midnight(day: datetime.date) -> datetime.datetime:
    """The start of a day in the panel's time zone: dates on the page are shown in it."""
    return as_utc(timezone.make_aware(datetime.datetime.combine(day, datetime.time.min)))


class TimeRangeFilters:
    """The methods of a list's time filters, on its `time_field`: `date_from` / `date_to` (whole days
    in the panel's time zone, the page's), `since` / `before` (ISO 8601 moments, the API's). In UTC:
    ISO 8601 allows offsets (up to -23:59) that PostgreSQL refuses (found by schemathesis), clamped
    to the calendar (0001-01-01T00:00+01:00 is in year 0)."""

    time_field: ClassVar[str]

    def filter_date_from(self, rows: QuerySet[Any], name: str, value: datetime.date) -> QuerySet[Any]:
        return rows.filter(**{f"{self.time_field}__gte": midnight(value)})

    def filter_date_to(self, rows: QuerySet[Any], name: str, value: datetime.date) -> QuerySet[Any]:
        if value == datetime.date.max:  # the calendar's last day: no end
            return rows
        return rows.filter(**{f"{self.time_field}__lt": midnight(value + datetime.timedelta(days=1))})

    def filter_since(self, rows: QuerySet[Any], name: str, value: datetime.datetime) -> QuerySet[Any]:
        return rows.filter(**{f"{self.time_field}__gte": as_utc(value)})

    def filter_before(self, rows: QuerySet[Any], name: str, value: datetime.datetime) -> QuerySet[Any]:
        return rows.filter(**{f"{self.time_field}__lt": as_utc(value)})
