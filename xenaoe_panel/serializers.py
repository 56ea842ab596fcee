"""The base of a representation that keeps some fields for operators (an image's copies, a network's
bridge): whoever builds one says whom it is for, and the fields an operator alone is told are
dropped for anyone else. The VM's, with more than two audiences, is vms/serializers.py's."""
from __future__ import annotations

from typing import Any, ClassVar

from rest_framework import serializers


class OperatorFieldsSerializer(serializers.Serializer):
    OPERATOR_FIELDS: ClassVar[tuple[str, ...]] = ()  # told to operators only

    def __init__(self, *args: Any, for_operator: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.for_operator = for_operator

    def is_for_operator(self) -> bool | None:
        """Whether the representation is for an operator. The API's answers None while the OpenAPI
        schema is built (which shows every field); anything else must say."""
        if self.for_operator is None:
            raise TypeError(f"{type(self).__name__} needs for_operator: who is it for?")
        return self.for_operator

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        if self.is_for_operator() is False:
            return {name: field for name, field in fields.items() if name not in self.OPERATOR_FIELDS}
        return fields
