"""The exceptions every ciphertext failure raises."""

import re


class DecryptionError(Exception):
    """A ciphertext did not open for the given identity.

    Raised alike for a wrong key, tampered bytes or the wrong service account, so that a caller
    learns nothing about which check failed once a key was used (no padding oracle). ``reason``
    says which, for the audit log only: it never holds key material or data.
    """

    def __init__(self, reason: str) -> None:
        super().__init__("the ciphertext could not be decrypted for this service account")
        self.reason = reason


class MalformedCiphertext(DecryptionError):
    """The value is not a ciphertext this Kamus reads, told from its shape before any key or KMS
    is used: not base64, an unknown format, a missing field, a length no value of its format has,
    a key id that is not configured.

    Such a fact is the same for every identity and every key, so saying it gives no oracle; it
    tells the user that the value was damaged (a pasted newline, a truncated copy) rather than
    made for another service account. ``fact`` is a fixed phrase: it may name a key id or format
    tag read from the value (see :func:`shown`), never ciphertext bytes.
    """

    def __init__(self, reason: str, fact: str | None = None) -> None:
        super().__init__(reason)
        self.fact = fact or reason

    def __str__(self) -> str:
        return f"this is not a Kamus ciphertext: {self.fact}"


class Refused(DecryptionError):
    """The value and this Kamus's configuration do not go together, told before any key is used:
    a recipient policy, or a threshold value whose groups are not held here. Said to the caller
    as it is, with what to do; it names only recipients read from the value's header."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason)
        self.message = message

    def __str__(self) -> str:
        return self.message


_SHOWABLE = re.compile(r"[A-Za-z0-9_-]{1,16}")


def shown(field: str) -> str | None:
    """A field read from a value (a key id, a format tag) as a message may show it, or None
    when it does not look like one: a long or odd field may be a body pasted in the wrong
    place, and the allowed characters need no escaping."""
    return field if _SHOWABLE.fullmatch(field) else None


class KeyDisabled(DecryptionError):
    """The KMS refused to unwrap because the key (version) that wrapped the value is disabled,
    pending deletion or gone: a decision of its owner, answered as any value that does not
    open. The data-key cache drops what that key wrapped for the identity (crypto/datakeys.py).
    """


class KeyManagerUnavailable(Exception):
    """The key manager (a cloud KMS) could not be used right now: down, slow, throttling, or
    refusing our credentials. Callers answer 503; ``reason`` is for the audit log only.
    """

    def __init__(self, reason: str) -> None:
        super().__init__("the key manager is unavailable; retry later")
        self.reason = reason


class KeyManagerBusy(KeyManagerUnavailable):
    """The key manager answers, but not to this call in time: every one of this process's KMS
    call slots (``KeyManagement__MaxConcurrentCalls``) stayed taken until its deadline, or the KMS
    throttled it (:class:`KmsThrottled`). A 503 for the caller, and not an outage: the replica
    stays ready, since taking it out of service would only load the others more."""


class KmsThrottled(KeyManagerBusy):
    """The KMS kept refusing a call for its request rate (throttling) until the call's deadline.

    Still a 503 for the caller, but not an outage: the KMS answers, it is only busy, so this
    does not make a replica unready (one noisy caller must not take it out of service).
    ``retry_after`` is how many seconds the KMS asked us to wait, when it said (Key Vault's
    ``Retry-After``); the caller's ``Retry-After`` follows it.
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class KeyNotFoundError(Exception):
    """The service account has no key and this deployment does not create keys."""

    def __init__(self, key_name: str) -> None:
        super().__init__(
            f"no key {key_name} exists for this service account, and this Kamus does not create "
            "keys (KeyManagement__CreateKeys=false); ask an administrator to create it"
        )
        self.key_name = key_name
