"""Settings, keys and audit lines as the tests use them."""

import asyncio
import base64
import os
from collections.abc import Callable
from typing import Any

import pytest

from crypto import AESKeyManager
from kamus.server.settings import Settings
from tests.support import leaks

# Settings come from the environment; tests must not inherit a developer's.
# Cloud SDK variables are cleared too: no test may ever reach a real cloud account.
SETTING_PREFIXES = (
    "keymanagement__",
    "kubernetes__",
    "encryptor__",
    "decryptor__",
    "server__",
    "controller__",
    "logging__",
    "activedirectory__",
    "aws_",
    "google_",
    "gce_",
    "azure_",
    "identity_",
    "msi_",
)


def new_key() -> str:
    key = base64.b64encode(os.urandom(32)).decode()
    leaks.register(key)
    return key


SettingsFactory = Callable[..., Settings]


def audit_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The structured fields of every audit line captured so far."""
    return [getattr(r, "kamus_fields", {}) for r in caplog.records if r.name == "kamus.audit"]


def aes_encrypt(key_b64: str, plaintext: str, sa_id: str) -> str:
    """What the encryptor answers for ``sa_id`` under the AES master key ``key_b64``."""
    return asyncio.run(AESKeyManager(base64.b64decode(key_b64)).encrypt(plaintext.encode(), sa_id))
