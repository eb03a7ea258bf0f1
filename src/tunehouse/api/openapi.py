"""The published `/openapi.json`: every dialect's routes with their request bodies, query parameters, auth
(as security schemes) and error envelopes, and none of FastAPI's 422 answers, which this server never sends.

The routes read their bodies themselves (each dialect validates in its own terms), so FastAPI cannot see
them; their shapes are declared here, next to the document they belong to.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tunehouse.api.dialects import Dialect, dialect_of
from tunehouse.api.qianfan import publishing as qianfan_publishing
from tunehouse.api.qianfan import services as qianfan_services
from tunehouse.api.qianfan import v1 as qianfan_v1
from tunehouse.api.qianfan import v2 as qianfan_v2

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
OBJ: Schema = {"type": "object"}
STRS: Schema = {"type": "array", "items": STR}

SECURITY_SCHEMES: Schema = {
    "bce": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "Baidu Cloud BCE auth v1 signature "
        "(`bce-auth-v1/{ak}/{timestamp}/{expiration}/{signedHeaders}/{signature}`) over a request that "
        "also carries `x-bce-date`; `host` must be among the signed headers.",
    },
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer th-…`.",
    },
}

_ERRORS: dict[Dialect, Schema] = {
    Dialect.QIANFAN_V2: {
        "type": "object",
        "required": ["requestId", "code", "message"],
        "properties": {"requestId": STR, "code": STR, "message": STR},
    },
    Dialect.QIANFAN_V1: {
        "type": "object",
        "required": ["log_id", "error_code", "error_msg"],
        "properties": {"log_id": STR, "error_code": INT, "error_msg": STR},
    },
    Dialect.DASHSCOPE: {
        "type": "object",
        "required": ["request_id", "code", "message"],
        "properties": {"request_id": STR, "code": STR, "message": STR},
    },
    Dialect.OPENAI: {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": STR,
                    "type": STR,
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
}
_ERROR_NAMES = {
    Dialect.QIANFAN_V2: "QianfanV2Error",
    Dialect.QIANFAN_V1: "QianfanV1Error",
    Dialect.DASHSCOPE: "DashScopeError",
    Dialect.OPENAI: "OpenAIError",
}
_ERROR_STATUSES = {
    "400": "Invalid parameter",
    "401": "Missing or invalid credentials",
    "403": "Credentials refused",
    "404": "No such resource or route",
    "405": "Method not allowed",
    "413": "Request body over the limit",
    "429": "Rate or concurrency limit reached",
    "500": "Internal error",
    "507": "Insufficient storage",
}
# V1 answers application errors as HTTP 200 with error_code; a success carries result instead.
_V1_OK: Schema = {
    "oneOf": [{"$ref": "#/components/schemas/QianfanV1Error"}, {"type": "object", "required": ["result"]}]
}


def _json(schema: Schema, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _multipart(properties: Schema, required: list[str]) -> Schema:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def _obj(properties: Schema, required: list[str] | None = None) -> Schema:
    return {"type": "object", "properties": properties, "required": required or []}


def _query(name: str, schema: Schema, description: str = "", required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


_LIMIT = _query("limit", {"type": "integer", "minimum": 1}, "Page size; values above the maximum are clamped")
_AFTER = _query("after", STR, "The id of the last item of the previous page")
_PAGE = [
    _query("page_no", {"type": "integer", "minimum": 1}),
    _query("page_size", {"type": "integer", "minimum": 1, "maximum": 100}),
]

_V2_BODIES = [
    qianfan_v2.CreateJobBody,
    qianfan_v2.ListJobsBody,
    qianfan_v2.CreateTaskBody,
    qianfan_v2.ListTasksBody,
    qianfan_v2.TaskIdBody,
    qianfan_v2.JobIdBody,
]

_V2_MODEL_BODIES = [qianfan_publishing.ModelSetBody, qianfan_v2.PageBody, qianfan_publishing.ModelBody]
_V2_SERVICE_BODIES = [
    qianfan_services.CreateServiceBody,
    qianfan_services.ServiceIdBody,
    qianfan_services.ListServicesBody,
]
_COMPONENT_BODIES = [*_V2_BODIES, *_V2_MODEL_BODIES, *_V2_SERVICE_BODIES]


def _v2_actions(actions: dict[str, Any], bodies: list[Any]) -> Schema:
    return {
        "parameters": [_query("Action", {"type": "string", "enum": list(actions)}, required=True)],
        # anyOf: bodies whose fields are all optional overlap, and each Action reads only its own fields.
        "requestBody": _json({"anyOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in bodies]}),
    }


OPENAI_CREATE_JOB = _obj(
    {
        "model": STR,
        "training_file": STR,
        "validation_file": {"type": ["string", "null"]},
        "suffix": {"type": ["string", "null"]},
        "seed": {"type": ["integer", "null"]},
        "method": OBJ,
        "hyperparameters": OBJ,
        "metadata": {"type": ["object", "null"], "additionalProperties": STR},
        "integrations": {"type": ["array", "null"], "items": OBJ},
    },
    ["model", "training_file"],
)
DASHSCOPE_CREATE_JOB = _obj(
    {
        "model": STR,
        "training_file_ids": STRS,
        "validation_file_ids": STRS,
        "training_type": STR,
        "hyper_parameters": OBJ,
        "model_name": STR,
        "finetuned_output": STR,
        "finetuned_output_suffix": STR,
        "job_name": STR,
    },
    ["model", "training_file_ids"],
)

_CAPACITY: Schema = {"type": "integer", "minimum": 1, "maximum": 64}
DASHSCOPE_CREATE_DEPLOYMENT = _obj(
    {
        "model_name": STR,
        "capacity": _CAPACITY,
        "suffix": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,7}$"},
        "plan": {"type": "string", "enum": ["lora", "Lora", "LORA", "mu", "MU", "cu", "CU", "ptu", "PTU"]},
        "model_version": STR,
        "template_id": STR,
        "deploy_spec": OBJ,
        "billing_method": STR,
    },
    ["model_name", "capacity"],
)
DASHSCOPE_GENERATION = _obj(
    {
        "model": STR,
        "input": _obj(
            {
                "messages": {
                    "type": "array",
                    "items": _obj(
                        {
                            "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
                            "content": {"oneOf": [STR, {"type": "array", "items": _obj({"text": STR})}]},
                        },
                        ["role", "content"],
                    ),
                },
                "prompt": STR,
            }
        ),
        "parameters": _obj(
            {
                "result_format": {"type": "string", "enum": ["text", "message"]},
                "incremental_output": {"type": "boolean"},
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "max_tokens": {"type": "integer", "minimum": 1},
                "seed": {"type": "integer", "minimum": 0},
                "stop": {"oneOf": [STR, STRS]},
                "n": {"type": "integer", "minimum": 1, "maximum": 4},
            }
        ),
    },
    ["model", "input"],
)
_SSE_OR_JSON: Schema = {"application/json": {"schema": OBJ}, "text/event-stream": {"schema": STR}}
_DS_CONFLICT: Schema = {
    "409": {
        "description": "A deployment of that name exists",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DashScopeError"}}},
    }
}

# (method, path) → what the route reads that FastAPI cannot see.
OPENAI_CHAT: Schema = _obj(
    {
        "model": STR,
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": _obj(
                {
                    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                    "content": {"oneOf": [STR, {"type": "array", "items": _obj({"type": STR, "text": STR})}]},
                },
                ["role"],
            ),
        },
        "stream": {"type": "boolean"},
        "stream_options": _obj({"include_usage": {"type": "boolean"}}),
        "max_tokens": INT,
        "max_completion_tokens": INT,
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stop": {"oneOf": [STR, STRS]},
        "seed": INT,
        "n": {"type": "integer", "minimum": 1, "maximum": 8},
    },
    ["model", "messages"],
)

_OPENAI_CHAT_EXTRA: Schema = {
    "requestBody": _json(OPENAI_CHAT),
    "responses": {
        "200": {
            "description": "A chat.completion, or with `stream: true` chat.completion.chunk events",
            "content": _SSE_OR_JSON,
        },
        "503": {
            "description": "The model is being undeployed; retry",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}},
        },
    },
}

QIANFAN_V1_CHAT: Schema = _obj(
    {
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": _obj(
                {"role": {"type": "string", "enum": ["user", "assistant"]}, "content": STR},
                ["role", "content"],
            ),
        },
        "system": STR,
        "stream": {"type": "boolean"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "max_output_tokens": {"type": "integer", "minimum": 1},
        "stop": {"type": "array", "items": STR, "maxItems": 4},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
        "user_id": STR,
        "penalty_score": {"type": "number"},
    },
    ["messages"],
)
_CHAT_200 = {
    "description": "A completion, or with `stream: true` server-sent chunks",
    "content": {"application/json": {"schema": OBJ}, "text/event-stream": {"schema": STR}},
}

_EXTRA: dict[tuple[str, str], Schema] = {
    ("post", "/v2/model"): _v2_actions(qianfan_publishing.ACTIONS, _V2_MODEL_BODIES),
    ("post", "/v2/service"): _v2_actions(qianfan_services.ACTIONS, _V2_SERVICE_BODIES),
    ("post", "/wenxinworkshop/modelrepo/publishTrainModel"): {
        "requestBody": _json(qianfan_publishing.PublishBody.model_json_schema())
    },
    ("post", "/wenxinworkshop/modelrepo/modelVersionDetail"): {
        "requestBody": _json(qianfan_publishing.VersionBody.model_json_schema())
    },
    ("post", "/wenxinworkshop/service/list"): {"requestBody": _json(OBJ, required=False)},
    ("post", "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{endpoint}"): {
        "requestBody": _json(QIANFAN_V1_CHAT),
        "responses": {
            "200": {
                "description": "A result, an application error, or with `stream: true` result frames",
                "content": {
                    "application/json": {"schema": _V1_OK},
                    "text/event-stream": {"schema": STR},
                },
            }
        },
    },
    ("get", "/v1/BCE-BEARER/token"): {
        "parameters": [_query("expireInSeconds", {"type": "integer", "minimum": 1, "maximum": 30 * 86400})]
    },
    ("post", "/v2/chat/completions"): {
        "requestBody": _json(OPENAI_CHAT),
        "responses": {
            "200": _CHAT_200,
            "503": {
                "description": "The service is being deleted; retry",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}},
            },
        },
    },
    ("post", "/v2/finetuning"): {
        "parameters": [_query("Action", {"type": "string", "enum": list(qianfan_v2.ACTIONS)}, required=True)],
        "requestBody": _json({"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in _V2_BODIES]}),
    },
    ("post", "/wenxinworkshop/finetune/createTask"): {
        "requestBody": _json(qianfan_v1.CreateTaskBody.model_json_schema())
    },
    ("post", "/wenxinworkshop/finetune/createJob"): {
        "requestBody": _json(qianfan_v1.CreateJobBody.model_json_schema())
    },
    ("post", "/wenxinworkshop/finetune/jobDetail"): {
        "requestBody": _json(qianfan_v1.JobRef.model_json_schema())
    },
    ("post", "/wenxinworkshop/finetune/stopJob"): {
        "requestBody": _json(qianfan_v1.JobRef.model_json_schema())
    },
    ("get", "/v1/files"): {
        "parameters": [
            _LIMIT,
            _AFTER,
            _query("order", {"type": "string", "enum": ["asc", "desc"]}),
            _query("purpose", STR),
        ]
    },
    ("post", "/v1/files"): {
        "requestBody": _multipart(
            {
                "file": {"type": "string", "format": "binary"},
                "purpose": {"type": "string", "enum": ["fine-tune"]},
                "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                "expires_after[seconds]": INT,
            },
            ["file", "purpose"],
        )
    },
    ("get", "/v1/fine_tuning/jobs"): {"parameters": [_LIMIT, _AFTER, _query("metadata", STR)]},
    ("post", "/v1/fine_tuning/jobs"): {"requestBody": _json(OPENAI_CREATE_JOB)},
    ("get", "/v1/fine_tuning/jobs/{job_id}/events"): {"parameters": [_LIMIT, _AFTER]},
    ("get", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): {"parameters": [_LIMIT, _AFTER]},
    ("post", "/v1/fine_tuning/checkpoints/{model}/permissions"): {
        "requestBody": _json(_obj({"project_ids": STRS}), required=False)
    },
    ("get", "/api/v1/files"): {"parameters": _PAGE},
    ("post", "/api/v1/files"): {
        "requestBody": _multipart(
            {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "descriptions": STRS,
                "purpose": {"type": "string", "enum": ["fine-tune", "fine_tune"]},
            },
            ["files"],
        )
    },
    ("post", "/v1/chat/completions"): _OPENAI_CHAT_EXTRA,
    ("post", "/compatible-mode/v1/chat/completions"): _OPENAI_CHAT_EXTRA,
    ("get", "/api/v1/fine-tunes"): {"parameters": [*_PAGE, _query("model", STR)]},
    ("post", "/api/v1/fine-tunes"): {"requestBody": _json(DASHSCOPE_CREATE_JOB)},
    ("get", "/api/v1/fine-tunes/{job_id}/logs"): {
        "parameters": [
            _query("offset", {"type": "integer", "minimum": 0}),
            _query("line", {"type": "integer", "minimum": 1, "maximum": 1000}),
        ]
    },
    ("get", "/api/v1/deployments"): {"parameters": _PAGE},
    ("post", "/api/v1/deployments"): {
        "requestBody": _json(DASHSCOPE_CREATE_DEPLOYMENT),
        "responses": _DS_CONFLICT,
    },
    ("put", "/api/v1/deployments/{deployed_model}/scale"): {
        "requestBody": _json(_obj({"deployed_model": STR, "capacity": _CAPACITY}, ["capacity"]))
    },
    ("post", "/api/v1/services/aigc/text-generation/generation"): {
        "parameters": [
            {
                "name": "X-DashScope-SSE",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "enum": ["enable", "disable"]},
                "description": "`enable`: answer as server-sent events",
            }
        ],
        "requestBody": _json(DASHSCOPE_GENERATION),
        "responses": {
            "200": {
                "description": "A generation, or with X-DashScope-SSE its events",
                "content": _SSE_OR_JSON,
            }
        },
    },
    ("get", "/api/v1/fine-tunes/{job_id}/stream"): {
        "responses": {
            "200": {"description": "Server-sent events", "content": {"text/event-stream": {"schema": STR}}}
        }
    },
}


def build_openapi(app: FastAPI) -> Schema:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in _COMPONENT_BODIES:
        schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schemas[model.__name__].pop("$defs", {}))
    for dialect, name in _ERROR_NAMES.items():
        schemas[name] = _ERRORS[dialect]
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, ops in doc.get("paths", {}).items():
        dialect = dialect_of(path)
        for method, op in ops.items():
            _complete(op, method, path, dialect)
    return doc


def _complete(op: Schema, method: str, path: str, dialect: Dialect) -> None:
    responses = op.setdefault("responses", {})
    responses.pop("422", None)
    extra = _EXTRA.get((method, path), {})
    if "parameters" in extra:
        op["parameters"] = [*op.get("parameters", []), *extra["parameters"]]
    if "requestBody" in extra:
        op["requestBody"] = _hoist_defs(extra["requestBody"])
    responses.update(extra.get("responses", {}))
    if dialect in (Dialect.QIANFAN_V1, Dialect.QIANFAN_V2):
        op["security"] = [{"bce": []}]
    elif dialect in (Dialect.OPENAI, Dialect.DASHSCOPE):
        op["security"] = [{"bearer": []}]
    if dialect is Dialect.QIANFAN_V1 and "200" not in extra.get("responses", {}):
        responses["200"] = {
            "description": "A result, or an application error",
            "content": {"application/json": {"schema": _V1_OK}},
        }
    name = _ERROR_NAMES.get(dialect)
    if name is not None:
        for status, description in _ERROR_STATUSES.items():
            # Qianfan's auth failures use the V2 envelope on both versions.
            shape = "QianfanV2Error" if dialect is Dialect.QIANFAN_V1 and status in ("401", "403") else name
            content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}}
            responses.setdefault(status, {"description": description, "content": content})


def _hoist_defs(body: Schema) -> Schema:
    """Pydantic puts nested models under $defs with local refs; point them at the document's components."""
    for media in body.get("content", {}).values():
        schema = media.get("schema", {})
        defs = schema.pop("$defs", None)
        if defs:
            media["schema"] = _rewrite_refs(schema, defs)
    return body


def _rewrite_refs(schema: Any, defs: Schema) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _rewrite_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _rewrite_refs(v, defs) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rewrite_refs(v, defs) for v in schema]
    return schema
