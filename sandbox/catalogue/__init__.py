"""Codat's own OpenAPI files: the webhook catalogue (Webhooks.json) and its examples, and the
Platform API (Codat-Platform.json), which the sandbox answers as and is tested against."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import orjson


def load() -> dict[str, Any]:
    return orjson.loads(files(__name__).joinpath("Webhooks.json").read_bytes())


PLATFORM_SPEC = files(__name__).joinpath("Codat-Platform.json")


def platform() -> dict[str, Any]:
    return orjson.loads(PLATFORM_SPEC.read_bytes())


def examples(catalogue: dict[str, Any] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(example name, event type, body) for every example: the new events' request examples,
    and the legacy schemas' (named legacy-N), which sit in components.schemas."""
    catalogue = catalogue or load()
    found = []
    type_of_schema = {}
    for event_type, item in catalogue["webhooks"].items():
        content = item["post"]["requestBody"]["content"]["application/json"]
        for name, example in content.get("examples", {}).items():
            found.append((name, event_type, example["value"]))
        type_of_schema[content["schema"]["$ref"].rsplit("/", 1)[1]] = event_type
    for schema_name, schema in catalogue["components"]["schemas"].items():
        listed = schema.get("examples")
        for index, body in enumerate(listed if isinstance(listed, list) else []):
            if isinstance(body, dict) and "RuleType" in body and schema_name in type_of_schema:
                found.append((f"legacy-{index}", type_of_schema[schema_name], body))
    return found
