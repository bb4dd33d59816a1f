"""Settings, keys and audit lines as the tests use them."""

import asyncio
import base64
import os
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

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


def kamus_aes_value(key_b64: str, plaintext: str, *, derive_for: str | None = None) -> str:
    """What Kamus's AES provider wrote, built independently of crypto/: ``b64(iv):b64(CBC)``,
    with the key HKDF-expanded for ``derive_for`` when Kamus's UseKeyDeriviation was on."""
    key = base64.b64decode(key_b64)
    if derive_for is not None:
        key = HKDFExpand(hashes.SHA256(), 32, derive_for.encode("utf-8")).derive(key)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode()) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = enc.update(padded) + enc.finalize()
    return f"{base64.b64encode(iv).decode()}:{base64.b64encode(body).decode()}"
