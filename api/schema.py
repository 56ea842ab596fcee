"""The OpenAPI schema's shared pieces: error bodies, and the error answers every operation can give
(so that a client, or schemathesis, finds each status it can receive documented)."""
from __future__ import annotations

import copy
from typing import Any

from drf_spectacular.contrib.django_filters import DjangoFilterExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


DETAIL = DetailSerializer
# A 400: field name (or non_field_errors) -> messages; {"detail": ...} for a body that is not JSON.
FIELD_ERRORS = OpenApiResponse(OpenApiTypes.OBJECT, description="Field -> list of messages.")
ERROR_RESPONSES = {
    "400": (FIELD_ERRORS, "Invalid input, or the service refused it (nothing changed)."),
    "401": (DETAIL, "No valid token or session."),
    "403": (DETAIL, "Signed in and the object is visible, but this user may not do that."),
    "404": (DETAIL, "No such object, or not one this user may see (also a page past the last)."),
}


class PanelAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus the error answers of every operation: 401 and 404
    everywhere (operator-only endpoints answer 404 to anyone else), 400 where there is input,
    403 for writes on objects a user may see but not change."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if self.method == "GET" and not self._get_parameters_in_query():
            codes = ["401", "404"]
        elif self.method == "GET":
            codes = ["400", "401", "404"]
        else:
            codes = ["400", "401", "403", "404"]
        for code in codes:
            if code not in responses:
                serializer, description = ERROR_RESPONSES[code]
                responses[code] = self._get_response_for_code(serializer, code, direction=direction)
                responses[code]["description"] = description
        return responses

    def _get_parameters_in_query(self) -> bool:
        return any(p.get("in") == "query" for p in self._get_parameters())


class AliasedFilterExtension(DjangoFilterExtension):
    """django-filter's query parameters, and beside each filter its other names (a filter set's
    `aliases`, xenaoe_panel/filtersets.py), which the API takes too."""

    priority = 1  # chosen over drf-spectacular's own

    def get_schema_operation_parameters(self, auto_schema: AutoSchema, *args: Any, **kwargs: Any) -> list[dict]:
        parameters = super().get_schema_operation_parameters(auto_schema, *args, **kwargs)
        aliases = getattr(getattr(auto_schema.view, "filterset_class", None), "aliases", {})
        by_name = {parameter["name"]: parameter for parameter in parameters}
        for alias, name in aliases.items():
            if name in by_name:
                parameters.append(copy.deepcopy(by_name[name]) | {
                    "name": alias, "description": f"The same as `{name}` (which wins when both are given)."})
        return parameters
