"""What the services' APIs share: the v2 batch models and limits, readiness, and the answer to
a key manager outage."""

import math
from typing import Annotated, Any

from fastapi import HTTPException, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from crypto.errors import KeyManagerBusy, KeyManagerUnavailable, KmsThrottled
from kamus.server.settings import Settings
from kamus.server.web.middleware import annotate
from kamus.server.web.problems import ApiError


# The v2 batch APIs: values by name, answered per name (Vault's batch_input semantics).
def _valid_items(items: dict[str, str]) -> dict[str, str]:
    if not items:
        raise ValueError("send at least one item")
    for name in items:
        # JSON can escape lone surrogates (\ud800) that no UTF-8 text holds: such names would
        # come back mangled, two of them under one name.
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("item names must be UTF-8 text (no lone surrogates)") from None
    return items


BatchItems = Annotated[dict[str, str], AfterValidator(_valid_items)]


class BatchItem(BaseModel):
    """One answer: the value, or why this one failed (the others still succeed)."""

    model_config = ConfigDict(extra="forbid")
    data: str | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    items: dict[str, BatchItem]


def check_batch_size(request: Request, items: dict[str, str], settings: Settings) -> None:
    limit = settings.server.max_batch_items
    if len(items) > limit:
        annotate(request, reason=f"{len(items)} items, over the limit")
        raise ApiError(
            413,
            "too-many-items",
            f"items: at most {limit} per request (Server__MaxBatchItems); split the batch",
        )


class Readiness(BaseModel):
    status: str = Field(description="ready, starting or unavailable", examples=["ready"])
    unavailable: list[str] | None = Field(
        None, description="What does not answer: kubernetes, key-manager."
    )


READINESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Ready."},
    503: {"model": Readiness, "description": "Starting, or a dependency does not answer."},
}


def key_manager_unavailable(
    request: Request, exc: KeyManagerUnavailable, settings: Settings
) -> HTTPException:
    """The 503 for a KMS outage, or for a KMS that throttled the call until its deadline: then
    ``Retry-After`` is the wait the KMS asked for, when it said. The reason goes to the audit log,
    never to the caller."""
    annotate(request, reason=exc.reason)
    detail = "the key manager is unavailable; retry later"
    retry_after = settings.server.retry_after_seconds
    if isinstance(exc, KmsThrottled):
        detail = "the key manager is throttling requests; retry later"
        if exc.retry_after is not None:
            retry_after = max(1, math.ceil(exc.retry_after))  # whole seconds, as HTTP has them
    elif isinstance(exc, KeyManagerBusy):
        detail = "the key manager is busy; retry later"
    return ApiError(
        503, "key-manager-unavailable", detail, headers={"Retry-After": str(retry_after)}
    )
