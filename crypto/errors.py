"""The one exception every ciphertext failure raises."""


class DecryptionError(Exception):
    """A ciphertext did not open for the given identity.

    Raised alike for a wrong key, tampered bytes, bad encoding or the wrong service account, so
    that a caller learns nothing about which check failed (no padding or format oracle). ``reason``
    says which, for the audit log only: it never holds key material or data.
    """

    def __init__(self, reason: str) -> None:
        super().__init__("the ciphertext could not be decrypted for this service account")
        self.reason = reason


class KeyManagerUnavailable(Exception):
    """The key manager (a cloud KMS) could not be used right now: down, slow, throttling, or
    refusing our credentials. Callers answer 503; ``reason`` is for the audit log only.
    """

    def __init__(self, reason: str) -> None:
        super().__init__("the key manager is unavailable; retry later")
        self.reason = reason


class KeyNotFoundError(Exception):
    """The service account has no key and this deployment does not create keys."""

    def __init__(self, key_name: str) -> None:
        super().__init__(
            f"no key {key_name} exists for this service account, and this Kamus does not create "
            "keys (KeyManagement__CreateKeys=false); ask an administrator to create it"
        )
        self.key_name = key_name
