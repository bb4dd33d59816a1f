"""Kamus's key id: how a namespace:service-account names its key in a KMS."""

import base64
import hashlib


def kamus_key_id(sa_id: str) -> str:
    """``base64url(sha256("<namespace>:<sa>"))`` with ``_`` replaced by ``-``, exactly as Kamus.

    ASP.NET's ``Base64UrlEncode`` drops the padding; Kamus then swaps ``_`` for ``-`` because Azure
    Key Vault key names allow only letters, digits and dashes.
    """
    digest = hashlib.sha256(sa_id.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii").replace("_", "-")
