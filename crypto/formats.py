"""Which ciphertext format a string is, told from its shape alone.

Every format we write starts with ``kamus$``. No Kamus format can: Kamus wrote base64 (whose
alphabet has no ``$``), ``<b64>:<b64>`` and ``env$...``.
"""

from enum import StrEnum

from crypto.errors import MalformedCiphertext, shown

PREFIX = "kamus$"


class CiphertextFormat(StrEnum):
    AES_GCM_V1 = "kamus-a1"
    """Ours: AES-256-GCM under a per-service-account key derived from the local master key."""
    SEALED_V1 = "kamus-m1"
    """Ours: AES-256-GCM under a fresh data key wrapped for one or more recipients (HPKE to a
    cluster's sealing key), key-committing and identity-bound."""
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
        if ciphertext.startswith(PREFIX + "m1$"):
            return CiphertextFormat.SEALED_V1
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


def unreadable(ciphertext: str, provider: str, reads: str) -> MalformedCiphertext:
    """The error for a value the provider does not read, said from its shape alone; ``reads``
    names the formats it does read."""
    fmt = classify(ciphertext)
    if not ciphertext:
        fact = "it is empty"
    elif fmt is CiphertextFormat.UNKNOWN:
        tag = shown(ciphertext[len(PREFIX) :].split("$", 1)[0])
        fact = f"unknown format {PREFIX}{tag}" if tag else f"an unknown format after {PREFIX}"
    else:
        fact = f"this Kamus's {provider} provider reads only {reads}"
    return MalformedCiphertext(f"the {provider} provider cannot read format {fmt}", fact)


def legacy_switched_off(current: str, setting: str) -> MalformedCiphertext:
    """A configuration fact, not a key's verdict: whether a legacy value would open is never
    learned, so saying it gives no oracle, and the fix (encrypt it again) differs from a wrong
    identity's."""
    return MalformedCiphertext(
        "legacy Kamus ciphertexts are switched off",
        f"it is not a {current} value, and reading legacy Kamus values is switched off "
        f"({setting}=false)",
    )
