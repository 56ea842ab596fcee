"""What every API view shares: who may call it, how a service's refusal becomes a 400, and the 202
answer of an operation that started a job."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import permissions, serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.settings import api_settings

from tenants.access import is_operator
from xenaoe_panel.serializers import OperatorFieldsSerializer


class IsOperator(permissions.BasePermission):
    """Operators only. Anyone else signed in gets a 404, as on the pages: the endpoint does not
    exist for them. Anonymous callers get the 401 that IsAuthenticated gives."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if not is_operator(request.user):
            raise NotFound()
        return True


def viewer(serializer: serializers.BaseSerializer) -> Any:
    """The user a representation is for; None while drf-spectacular builds the schema (which must
    show every field, including those only some users get)."""
    view = serializer.context.get("view")
    request = serializer.context.get("request")
    if request is None or getattr(view, "swagger_fake_view", False):
        return None
    return request.user


class ForViewerSerializer(OperatorFieldsSerializer):
    """Put before an app's OperatorFieldsSerializer in the API: it is for the request's user."""

    def is_for_operator(self) -> bool | None:
        user = viewer(self)
        return None if user is None else is_operator(user)


def error_dict(exc: DjangoValidationError) -> dict[str, list[str]]:
    """A service's ValidationError as DRF's field -> messages; "__all__" becomes non_field_errors."""
    if hasattr(exc, "error_dict"):
        return {(api_settings.NON_FIELD_ERRORS_KEY if field == "__all__" else field): messages
                for field, messages in exc.message_dict.items()}
    return {api_settings.NON_FIELD_ERRORS_KEY: exc.messages}


@contextmanager
def service_call() -> Iterator[None]:
    """Turn a service's ValidationError (nothing changed) into a 400 with the field errors."""
    try:
        yield
    except DjangoValidationError as exc:
        raise serializers.ValidationError(error_dict(exc)) from exc

