"""Which key the encryptor encrypts with, and the public key bundle it serves.

* ``Encryptor__SealingKeysFile`` set: the bundle comes from that file (the chart mounts the
  decryptor's ConfigMap there). In AES mode the encryptor then seals to it and needs no master key.
* AES mode without it (the Kamus way, and ``make run``): the encryptor derives the bundle from the
  master key in its environment, and says once that it holds a key it does not need.
* ``Encryptor__OutputFormat=legacy``: the provider writes a1/e1, for decryptors older than m1.
* The KMS modes encrypt online with the service account's KMS key (an m1 value with that one
  KMS stanza), and serve a bundle only from a file: the encryptor never unwraps the seed.
"""

import logging

from crypto import KeyManager
from crypto.bundle import BundleError
from kamus.server.errors import ConfigurationError
from kamus.server.lifecycle import key_policy
from kamus.server.metrics import Metrics
from kamus.server.providers import build_key_manager
from kamus.server.sealing import BundleSource, SealingKeyManager, export_bundle
from kamus.server.settings import Settings

log = logging.getLogger(__name__)


def bundle_source(settings: Settings) -> BundleSource | None:
    if settings.encryptor.sealing_keys_file is not None:
        try:
            return BundleSource(
                file=settings.encryptor.sealing_keys_file,
                trust_anchor=settings.encryptor.trust_anchor,
            )
        except BundleError as exc:
            raise ConfigurationError(f"Encryptor__TrustAnchor: {exc}") from None
    if settings.key_management.provider == "AESKey":
        export_bundle(settings)  # a bad key is a start-up error, not a 503 at the first request
        log.warning(
            "this encryptor holds the AES master key, which decrypts every value, and needs it "
            "only to derive the public key bundle: mount the bundle (Encryptor__SealingKeysFile) "
            "and remove the key from the encryptor (docs/offline-encryption.md)"
        )
        return BundleSource(derive=lambda now: export_bundle(settings, now))
    return None


def build_keys(
    settings: Settings, metrics: Metrics, key_manager: KeyManager | None = None
) -> tuple[KeyManager, BundleSource | None]:
    """The key manager the encryptor seals with, and where its bundle comes from (if any)."""
    source = bundle_source(settings) if key_manager is None else None
    seals_to_bundle = (
        source is not None
        and settings.encryptor.output_format == "m1"
        and settings.key_management.provider == "AESKey"
    )
    if seals_to_bundle:
        assert source is not None
        reuse = settings.encryptor.data_key_reuse_seconds
        return SealingKeyManager(source, reuse_seconds=reuse, policy=key_policy(settings)), source
    return key_manager or build_key_manager(settings, observer=metrics), source
