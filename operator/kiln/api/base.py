"""Shared pydantic base: camelCase on the wire (Kubernetes convention), snake_case in Python."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class KilnModel(BaseModel):
    """Base of every spec and status type.

    Unknown fields are rejected so a typo in a user's YAML is an error naming the field,
    not a silently ignored setting.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form written to status.json and to the Kubernetes API."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
