"""Builds the configured key provider from settings, refusing unsafe configurations at start."""

import base64
import binascii
import logging
from collections.abc import Callable

from crypto import KAMUS_PUBLIC_DEFAULT_KEY, AESKeyManager, KeyManager
from crypto.aes import KEY_SIZES
from crypto.kms import KmsObserver
from kamus.server.errors import ConfigurationError
from kamus.server.lifecycle import cache_limits, key_policy, schedule_of
from kamus.server.settings import AESSettings, Settings, secret_setting

log = logging.getLogger(__name__)


def build_key_manager(settings: Settings, observer: KmsObserver | None = None) -> KeyManager:
    km = settings.key_management
    if km.provider == "AESKey":
        return _build_aes(settings, observer)
    # Imported here: an AES deployment never loads the cloud SDKs.
    from kamus.server import cloud

    builders: dict[str, Callable[[Settings, KmsObserver | None], KeyManager]] = {
        "AwsKms": cloud.build_aws,
        "GoogleKms": cloud.build_gcp,
        "AzureKeyVault": cloud.build_azure,
    }
    try:
        return builders[km.provider](settings, observer)
    except ValueError as exc:  # a setting the provider refuses, e.g. KeyManagement__RecipientKeys
        raise ConfigurationError(str(exc)) from None


def _decode_key(text: str, name: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            f"{name} is not valid base64; generate one with: openssl rand -base64 32"
        ) from None
    if len(key) not in KEY_SIZES:
        raise ConfigurationError(
            f"{name} decodes to {len(key)} bytes; an AES key is 16, 24 or 32 bytes "
            "(generate one with: openssl rand -base64 32)"
        )
    return key


def aes_master_keys(aes: AESSettings) -> list[bytes]:
    """The active master key, then the previous ones, refusing unsafe configurations."""
    active = secret_setting(aes.key, aes.key_file, "KeyManagement__AES__Key")
    previous = secret_setting(
        aes.previous_keys, aes.previous_keys_file, "KeyManagement__AES__PreviousKeys"
    )
    if not active:
        # Kamus made up a random key per process here, which silently breaks with two replicas.
        raise ConfigurationError(
            "no AES key is configured: set KeyManagement__AES__Key or KeyManagement__AES__KeyFile "
            "to a base64 key (openssl rand -base64 32)"
        )
    previous_texts = [p.strip() for p in (previous or "").split(",") if p.strip()]
    if KAMUS_PUBLIC_DEFAULT_KEY in (active, *previous_texts):
        if not aes.allow_public_default_key:
            raise ConfigurationError(
                "the configured AES key is Kamus's published default key, which anyone can use to "
                "read and forge your secrets. Generate a new key (openssl rand -base64 32); to "
                "read values encrypted under the old one while you migrate, set "
                "KeyManagement__AES__AllowPublicDefaultKey=true"
            )
        log.warning(
            "INSECURE: Kamus's published default AES key is configured; anyone can read and forge "
            "values made with it. Re-encrypt your secrets under a new key and remove it."
        )
    return [
        _decode_key(active, "KeyManagement__AES__Key"),
        *(_decode_key(p, "KeyManagement__AES__PreviousKeys") for p in previous_texts),
    ]


def _build_aes(settings: Settings, observer: KmsObserver | None) -> AESKeyManager:
    aes = settings.key_management.aes
    active, *previous = aes_master_keys(aes)
    return AESKeyManager(
        active,
        previous,
        legacy_key_derivation=aes.use_key_derivation,
        allow_legacy=aes.allow_legacy_ciphertexts,
        sealed_output=settings.encryptor.output_format == "m1",
        policy=key_policy(settings),
        schedule=schedule_of(settings),
        cache=cache_limits(settings),
        observer=observer,
    )
