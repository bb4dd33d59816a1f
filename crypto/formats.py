"""Which ciphertext format a string is, told from its shape alone.

Every format we write starts with ``kamus$``. No Kamus format can: Kamus wrote base64 (whose
alphabet has no ``$``), ``<b64>:<b64>`` and ``env$...``.
"""

from enum import StrEnum

PREFIX = "kamus$"


class CiphertextFormat(StrEnum):
    AES_GCM_V1 = "kamus-a1"
    """Ours: AES-256-GCM under a per-service-account key derived from the local master key."""
    ENVELOPE_V1 = "kamus-e1"
    """Ours: AES-256-GCM under a fresh data key wrapped by the service account's KMS key."""
    LEGACY_AES_CBC = "legacy-aes-cbc"
    """Kamus's AES provider: ``b64(iv):b64(AES-256-CBC-PKCS7)``."""
    LEGACY_ENVELOPE = "legacy-envelope"
    """Kamus's AWS (and large Azure) values: ``env$<wrapped key>$<b64 iv>:<b64 ct>``."""
    LEGACY_RAW = "legacy-raw"
    """Kamus's Azure (RSA-OAEP) and GCP values: plain base64 of the KMS ciphertext."""
    UNKNOWN = "unknown"

    @property
    def is_legacy(self) -> bool:
        return self.value.startswith("legacy-")


def classify(ciphertext: str) -> CiphertextFormat:
    if ciphertext.startswith(PREFIX):
        if ciphertext.startswith(PREFIX + "a1$"):
            return CiphertextFormat.AES_GCM_V1
        if ciphertext.startswith(PREFIX + "e1$"):
            return CiphertextFormat.ENVELOPE_V1
        return CiphertextFormat.UNKNOWN
    if ciphertext.startswith("env$"):
        return CiphertextFormat.LEGACY_ENVELOPE
    if ":" in ciphertext:
        return CiphertextFormat.LEGACY_AES_CBC
    if ciphertext:
        return CiphertextFormat.LEGACY_RAW
    return CiphertextFormat.UNKNOWN
