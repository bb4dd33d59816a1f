"""Errors as the services answer them. The v2 APIs answer RFC 9457 problem details, each kind
with a stable ``type`` (listed in docs/errors.md) that clients can branch on; the v1 APIs keep
the ``{"detail"}`` bodies Kamus clients know."""

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:kamus:problem:"
_PROBLEM_PATH_PREFIXES = ("/api/v2/",)

# Every kind of error the services answer; mypy checks each ApiError against it.
ProblemKind = Literal[
    "invalid-request",
    "missing-token",
    "token-rejected",
    "not-a-service-account",
    "default-service-account",
    "not-allowed-to-encrypt",
    "not-allowed-to-rewrap",
    "recipient-not-allowed",
    "no-key",
    "no-key-bundle",
    "undecryptable",
    "too-many-items",
    "body-too-large",
    "rate-limited",
    "kubernetes-unavailable",
    "busy",
    "key-manager-unavailable",
    "starting",
    "not-found",
    "method-not-allowed",
    "error",
]
# kind -> title; the title is the same for every problem of a kind (RFC 9457 3.1.3).
PROBLEMS: dict[ProblemKind, str] = {
    "invalid-request": "The request is invalid",
    "missing-token": "No service account token",
    "token-rejected": "Kubernetes did not accept the token",
    "not-a-service-account": "The caller is not a service account",
    "default-service-account": "The default service account is not allowed",
    "not-allowed-to-encrypt": "The caller may not encrypt for this namespace",
    "not-allowed-to-rewrap": "The caller may not rewrap values of this namespace",
    "recipient-not-allowed": "The decryptor may not add this recipient",
    "no-key": "The service account has no key",
    "no-key-bundle": "This encryptor serves no public key bundle",
    "undecryptable": "The data cannot be decrypted",
    "too-many-items": "Too many items",
    "body-too-large": "The request body is too large",
    "rate-limited": "Too many requests",
    "kubernetes-unavailable": "The Kubernetes API is unavailable",
    "busy": "The service is busy",
    "key-manager-unavailable": "The key manager is unavailable",
    "starting": "The service is starting",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "error": "Error",
}
_KIND_BY_STATUS: dict[int, ProblemKind] = {
    400: "invalid-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    429: "rate-limited",
}


class ApiError(HTTPException):
    """An HTTP error of a known kind."""

    def __init__(
        self, status: int, kind: ProblemKind, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, detail, dict(headers) if headers else None)
        self.kind = kind


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(
        description=f"The kind of error, a stable URI: {PROBLEM_TYPE_PREFIX}<kind>, see "
        "docs/errors.md.",
        examples=[f"{PROBLEM_TYPE_PREFIX}token-rejected"],
    )
    title: str = Field(description="A summary of the kind of error.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, and how to fix it.")


def problem_responses(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a v2 route: each error status as problem details."""
    return {
        status: {
            "description": description,
            "model": Problem,  # puts Problem in the components, for the $ref
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status, description in descriptions.items()
    }


def _wants_problem(request: Request) -> bool:
    return request.url.path.startswith(_PROBLEM_PATH_PREFIXES)


def error_response(
    request: Request,
    status: int,
    detail: str,
    kind: ProblemKind | None,
    headers: Mapping[str, str] | None,
) -> JSONResponse:
    if not _wants_problem(request):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    kind = kind or _KIND_BY_STATUS.get(status, "error")
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + kind, title=PROBLEMS[kind], status=status, detail=detail
    )
    return JSONResponse(
        problem.model_dump(), status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def http_error_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """The answer to an HTTP error raised by a handler (an :class:`ApiError` or Starlette's)."""
    return error_response(
        request, exc.status_code, str(exc.detail), getattr(exc, "kind", None), exc.headers
    )


_FRIENDLY = {
    "missing": "is required",
    "string_type": "must be a string",
}


def describe_validation_errors(errors: Iterable[Any]) -> str:
    """A 400 message naming each bad field, without ever echoing the submitted value."""
    problems = []
    for error in errors:
        loc = [str(part) for part in error["loc"] if part != "body"]
        if error["type"] == "json_invalid":
            return "the request body is not valid JSON"
        if not loc:
            return "the request body must be a JSON object (send Content-Type: application/json)"
        message = _FRIENDLY.get(error["type"], str(error["msg"]).removeprefix("Value error, "))
        problems.append(f"{'.'.join(loc)}: {message}")
    return "; ".join(problems)
