"""The encryptor's request bodies: one model for the route and for encryptor/fast.py."""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from kamus.server.identity import Namespace, ServiceAccountName
from kamus.server.web.api import BatchItems


def _utf8_text(value: str) -> str:
    # JSON can escape lone surrogates (\ud800) that no UTF-8 text holds.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be text that can be encoded as UTF-8 (no lone surrogates)") from None
    return value


def _utf8_items(items: dict[str, str]) -> dict[str, str]:
    for value in items.values():
        _utf8_text(value)
    return items


class EncryptRequest(BaseModel):
    # Only Kamus's own spelling: its Newtonsoft model required "service-account" and refused
    # "service_account" as a missing field, and so do we.
    model_config = ConfigDict(validate_by_name=False, validate_by_alias=True)

    data: Annotated[str, AfterValidator(_utf8_text)] = Field(
        description="The secret to encrypt (UTF-8 text)."
    )
    service_account: ServiceAccountName = Field(
        alias="service-account", description="The service account that may decrypt it."
    )
    namespace: Namespace = Field(description="The namespace of that service account.")


class BatchEncryptRequest(BaseModel):
    model_config = ConfigDict(validate_by_name=False, validate_by_alias=True)

    namespace: Namespace = Field(description="The namespace of the service account.")
    service_account: ServiceAccountName = Field(
        alias="serviceAccount", description="The service account that may decrypt them."
    )
    items: Annotated[BatchItems, AfterValidator(_utf8_items)] = Field(
        description="Secrets by name (UTF-8 text)."
    )
