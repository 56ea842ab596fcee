"""Job parameters, typed: each job kind declares what its job carries once, as a frozen dataclass
registered with the kind (`jobs.kinds.job_kind(..., params=...)`), as Ganeti's opcodes do.

A parameters object is checked against its annotations whenever it is made: by the verb that queues
the job (`jobs.services.start_job` writes nothing for a bad one) and when a step reads a job's
parameters back from its row (`of(job)`). A bad value is a ValidationError naming the class, the
field and the value. The parameters also say which hosts the job acts on (`hosts()`): the job
history's host column and the redaction of host names in a job's log come from there, not from a
list of keys kept by hand. The JSON a job row keeps is the dataclass's fields, by name.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar, Self

from django.core.exceptions import ValidationError

from jobs.models import Job
from xenaoe_panel.names import NAME_RE


class Record:
    """A frozen dataclass checked against its annotations, to and from JSON. Fields may be str, int,
    bool, None, Any, unions of them, list[...], dict[str, ...], and other Records."""

    def __post_init__(self) -> None:
        for name, hint in _hints(type(self)).items():
            value = getattr(self, name)
            if not _fits(value, hint):
                raise ValidationError(f"{type(self).__name__}: {name} must be {_describe(hint)}, not {value!r}")

    @classmethod
    def from_json(cls, data: Any) -> Self:
        hints = _hints(cls)
        if not isinstance(data, dict):
            raise ValidationError(f"{cls.__name__}: expected an object with {', '.join(hints)}, not {data!r}")
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise ValidationError(f"{cls.__name__}: unknown parameter{'s' if len(unknown) > 1 else ''} "
                                  f"{', '.join(unknown)} (it takes {', '.join(hints) or 'none'})")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValidationError(f"{cls.__name__}: missing {', '.join(missing)}")
        return cls(**{name: _decode(value, hints[name]) for name, value in data.items()})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class JobParams(Record):
    """The parameters of a job kind. `host_fields` names the fields that hold the hosts the job acts
    on (a host's name, a list of them, or None); a kind whose hosts sit deeper overrides `hosts()`.
    The hosts of the VM a job acts on are not parameters: `start_job` asks the VM where it is."""

    host_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for host in self.hosts():
            # The history's host column is names between spaces: anything else would corrupt it.
            if not isinstance(host, str) or not NAME_RE.match(host):
                raise ValidationError(f"{type(self).__name__}: {host!r} is not a host's name")

    def hosts(self) -> list[str]:
        """Every host the job acts on, as its parameters name them."""
        names: list[str] = []
        for name in self.host_fields:
            value = getattr(self, name)
            names += [value] if isinstance(value, str) else list(value or [])
        return names

    @classmethod
    def of(cls, job: Job) -> Self:
        """The parameters a job's row keeps, read through this class."""
        return cls.from_json(job.params)


@dataclasses.dataclass(frozen=True)
class NoParams(JobParams):
    """A kind that takes no parameters (cluster.verify, and any kind that declares none)."""


@functools.cache
def _hints(cls: type[Record]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(key, str) and _fits(item, args[1])
                                               for key, item in value.items())
    if hint is int:  # JSON has no bool/int confusion, Python does: True is not a count
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _decode(value: Any, hint: Any) -> Any:
    """JSON to the field's value: objects become the Records the field declares."""
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_json(value)
    if typing.get_origin(hint) is list and isinstance(value, list):
        return [_decode(item, typing.get_args(hint)[0]) for item in value]
    return value


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"an object of {_describe(args[1])}"
    return {Any: "anything", type(None): "null"}.get(hint) or hint.__name__
