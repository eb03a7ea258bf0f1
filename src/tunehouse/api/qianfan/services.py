"""Qianfan services (`/v2/service?Action=…`, and V1's `/wenxinworkshop/service/list`): a published model
version served behind an endpoint (its `urlSuffix`). A service is the core's deployment record, the same one
the other dialects see."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext
from tunehouse.api.limits import MAX_QUERY_INT
from tunehouse.api.qianfan import v2
from tunehouse.api.qianfan.names import v2_time
from tunehouse.api.qianfan.publishing import SET, VERSION, model_set, version
from tunehouse.api.qianfan.v1 import v1_endpoint
from tunehouse.core import deployments as dep_svc
from tunehouse.core import published_models as pub
from tunehouse.core.deployments import DeploymentStatus as S
from tunehouse.core.errors import InvalidParameter, NotFound
from tunehouse.core.ids import strip_prefix
from tunehouse.core.pagination import marker_page
from tunehouse.core.registry import base_models
from tunehouse.serving.engine import EngineError
from tunehouse.store.models import Deployment

log = logging.getLogger(__name__)
router = APIRouter()

SERVICE = "svc-"
CHAT_PATH = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/"
# Qianfan's rule for a service's API path suffix (its docs): 2-20 characters, alphanumeric at both ends.
URL_SUFFIX = re.compile(r"^[a-z0-9][a-z0-9_-]{0,18}[a-z0-9]$")
RUN_STATUS = {
    S.PENDING: "New",
    S.DEPLOYING: "Deploying",
    S.RUNNING: "Serving",
    S.FAILED: "Failed",
    S.STOPPED: "Stopped",
    S.DELETING: "Stopped",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ResourceConfig(_Body):
    type: StrictStr = "GPU-I-2"
    replicasCount: StrictInt = Field(default=1, ge=1, le=dep_svc.MAX_CAPACITY)
    qps: StrictInt | None = Field(default=None, ge=1, le=MAX_QUERY_INT)


class CreateServiceBody(_Body):
    modelSetId: StrictStr
    modelId: StrictStr
    name: StrictStr = Field(min_length=1, max_length=64)
    urlSuffix: StrictStr
    description: StrictStr = ""
    resourceConfig: ResourceConfig = Field(default_factory=ResourceConfig)
    billing: dict[str, Any] | None = None  # nothing is billed here: accepted, not used


class ServiceIdBody(_Body):
    serviceId: StrictStr


class ListServicesBody(v2.PageBody):
    name: StrictStr | None = None
    serviceType: list[StrictStr] | None = None
    runStatus: list[StrictStr] | None = None


def chat_url(ctx: AppContext, endpoint: str) -> str:
    # The SDK takes the last segment of `url` as the endpoint it calls.
    return ctx.settings.public_url.rstrip("/") + CHAT_PATH + endpoint


def render_service(s: Session, ctx: AppContext, dep: Deployment) -> dict[str, Any]:
    pm = pub.version_of_deployment(s, dep)
    out: dict[str, Any] = {
        "serviceId": SERVICE + dep.key,
        "name": dep.endpoint,
        "description": "",
        "serviceType": "chat",
        "baseModel": dep.base_model,
        "modelSetId": SET + pm.set_key if pm else "",
        "modelId": VERSION + pm.key if pm else "",
        "url": chat_url(ctx, dep.endpoint),
        "endpoint": dep.endpoint,
        "runStatus": RUN_STATUS[S(dep.status)],
        "updateStatus": "",
        "chargeType": "ComputingUnit",
        "payType": "Prepaid",
        "chargeStatus": "Normal",
        "resourceConfig": {"type": "GPU-I-2", "replicasCount": dep.capacity, "region": "local"},
        "engine": dep.engine,
        "requestCount": dep.requests,
        "createTime": v2_time(dep.created_at),
        "modifyTime": v2_time(dep.updated_at),
    }
    if dep.status == S.FAILED and dep.error:
        out["errorMessage"] = dep.error
    return out


def _service(s: Session, account: int, service_id: str) -> Deployment:
    key = strip_prefix(service_id, SERVICE)
    if key is not None:
        try:
            return dep_svc.get_deployment_by_key(s, account, key)
        except NotFound:
            pass
    raise NotFound("service", service_id)  # in the caller's terms, whatever the reason


def create_service(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = CreateServiceBody.model_validate(body)
    if not URL_SUFFIX.match(b.urlSuffix):
        raise InvalidParameter(
            "urlSuffix", "2 to 20 characters of a-z, 0-9, '_' and '-', beginning and ending alphanumeric"
        )
    pm = version(s, account, b.modelId)
    if model_set(s, account, b.modelSetId)[0].set_key != pm.set_key:
        raise InvalidParameter("modelId", f"{b.modelId} is not a version of {b.modelSetId}")
    target = pub.target_of(s, account, pm, VERSION + pm.key)
    dep = dep_svc.create_deployment(
        s, account, target, endpoint=b.urlSuffix, capacity=b.resourceConfig.replicasCount
    )
    return {"serviceId": SERVICE + dep.key}


def describe_service(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    return render_service(s, ctx, _service(s, account, ServiceIdBody.model_validate(body).serviceId))


def describe_services(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = ListServicesBody.model_validate(body)
    query = dep_svc.deployments_query(account)
    if b.name:
        query = query.where(Deployment.endpoint == b.name)
    if b.runStatus:
        wanted = [str(k) for k, v in RUN_STATUS.items() if v in b.runStatus]
        query = query.where(Deployment.status.in_(wanted))
    marker = (strip_prefix(b.marker, SERVICE) or b.marker) if b.marker else ""
    page = marker_page(s, query, Deployment, marker, b.maxKeys, b.pageReverse)
    return {
        "serviceList": [render_service(s, ctx, d) for d in page.items],
        "pageInfo": v2.page_info(page, SERVICE),
    }


ACTIONS: dict[str, v2.Handler] = {
    "CreateService": create_service,
    "DescribeService": describe_service,
    "DescribeServices": describe_services,
}
PATH = "/v2/service"


async def _start(request: Request, key: str) -> None:
    try:
        await request.app.state.supervisor.ensure(key)
    except EngineError as exc:  # the supervisor has marked it FAILED with the reason
        log.warning("service %s could not start: %s", key, exc)


@router.post(PATH)
async def v2_service(request: Request) -> JSONResponse:
    response = await v2.dispatch(request, ACTIONS)
    if request.query_params.get("Action") == "CreateService" and response.status_code == 200:
        # Deploying continues after the answer: the SDK polls DescribeService until Serving.
        key = json.loads(bytes(response.body))["result"]["serviceId"].removeprefix(SERVICE)
        task = asyncio.create_task(_start(request, key))
        _STARTING.add(task)
        task.add_done_callback(_STARTING.discard)
    return response


_STARTING: set[asyncio.Task[None]] = set()  # held so that a start is not collected while it runs


# ---- V1: the list the SDK refreshes its endpoints from before each chat call ---------------------------


def service_list(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    def item(name: str, endpoint: str) -> dict[str, Any]:
        return {"name": name, "url": chat_url(ctx, endpoint), "apiType": "chat", "chargeStatus": "OPENED"}

    # `common` (what the SDK reads) holds the base models, each callable by name; `custom` the caller's own.
    return {
        "common": [item(m.name, m.name) for m in base_models(s)],
        "custom": [item(d.endpoint, d.endpoint) for d in dep_svc.list_deployments(s, account)],
    }


router.add_api_route(
    "/wenxinworkshop/service/list",
    v1_endpoint(service_list),
    methods=["POST"],
    name="qianfan_v1_service_list",
)
