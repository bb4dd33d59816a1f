"""Reading the fields of the values a KMS provider writes, whatever the format: the tests that
check what reached the KMS need the key version and the wrapped data key."""

from dataclasses import dataclass

from crypto import envelope, m1
from crypto.formats import CiphertextFormat, classify


@dataclass(frozen=True)
class KmsFields:
    kms: str
    key_version: str
    wrapped: bytes


def kms_fields(value: str) -> KmsFields:
    """The KMS stanza of an m1 value (it must have exactly one), or the fields of an e1 value."""
    if classify(value) is CiphertextFormat.SEALED_V1:
        [stanza] = [s for s in m1.parse(value).stanzas if s.kind in ("aws", "gcp", "azure")]
        return KmsFields(stanza.kind, stanza.kid, stanza.wrapped)
    kms = value.split("$")[2]
    parsed = envelope.parse(value, kms)
    return KmsFields(kms, parsed.key_version, parsed.wrapped_key)
