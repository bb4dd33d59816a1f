"""Reading the fields of the values a KMS provider writes, whatever the format (the tests that
check what reached the KMS need the key version and the wrapped data key), and making values
sealed to a given generation."""

import base64
from dataclasses import dataclass

from crypto import envelope, m1
from crypto.formats import CiphertextFormat, classify
from crypto.sealing import EPOCH, KeyState, SealingPublicKey, Suite, derive


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


def sealed_to_generation(master_b64: str, generation: int, plaintext: str, sa_id: str) -> str:
    """An m1 value sealed offline to sealing key generation ``generation`` of a master key (an
    AES key, or a KMS mode's unwrapped seed), as an old bundle would have sealed it."""
    key = derive(base64.b64decode(master_b64), Suite.X25519, generation)
    public = SealingPublicKey(key.kid, key.suite, key.public, KeyState.ACTIVE, EPOCH, None)
    data_key = m1.new_data_key()
    return m1.seal(data_key, [public.wrap(data_key, sa_id)], [plaintext.encode()], sa_id)[0]
