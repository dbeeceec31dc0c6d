"""JSON Schema of the flow language, generated from the node models."""

from __future__ import annotations

import json
from typing import Annotated, Any, Union

from pydantic import Field, create_model

import ivr.flow.nodes  # noqa: F401
from ivr.flow.loader import FlowDoc
from ivr.flow.model import NODE_TYPES


def flow_schema() -> dict[str, Any]:
    node_union = Annotated[Union[tuple(NODE_TYPES[name] for name in sorted(NODE_TYPES))], Field(discriminator="type")]
    model = create_model(
        "Flow",
        __base__=FlowDoc,
        nodes=(dict[str, node_union], Field(min_length=1, description="node id -> node")),
    )
    schema = model.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "IVR flow"
    schema["description"] = "A YAML-defined IVR flow. See docs/flows.md."
    return schema


def schema_json() -> str:
    return json.dumps(flow_schema(), indent=2, ensure_ascii=False) + "\n"
