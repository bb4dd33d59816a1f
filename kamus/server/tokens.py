"""Reading a bearer token's claims without verifying it (standard library only: the CLI and
``kamus init`` import this, and start fast)."""

import base64
import binascii
import json
from typing import Any


def unverified_jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, without checking its signature, or None if it is not one.

    Only for what verification does not decide: how long to trust what Kubernetes has just
    verified, or whether a token the CLI is about to send is bound to an audience."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return claims if isinstance(claims, dict) else None
