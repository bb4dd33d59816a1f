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
