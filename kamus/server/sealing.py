"""Sealing keys as the services see them: the signed bundle from the provider settings, and the
encryptor's key manager that seals to a bundle and holds nothing that decrypts.

The bundle comes from one of two places (docs/offline-encryption.md):
* ``Encryptor__SealingKeysFile``: the file the chart mounts from the ``<release>-public-keys``
  ConfigMap, which the decryptor keeps current. Read again when it changes, so a renewed bundle
  needs no restart; until a valid one is there, the encryptor is not ready.
* the AES master key in the environment, the Kamus way: the encryptor derives the bundle itself
  (and logs once that it holds a key it does not need).
"""

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from crypto import KeyManager, bundle, m1
from crypto.cloud import CloudKeyManager
from crypto.errors import DecryptionError, KeyManagerUnavailable
from crypto.lifecycle import KeyPolicy
from kamus.server.errors import ConfigurationError
from kamus.server.lifecycle import schedule_of
from kamus.server.providers import aes_master_keys
from kamus.server.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
RELOAD_CHECK_SECONDS = 2.0


def _now() -> datetime:
    return datetime.now(UTC)


async def sealing_masters(settings: Settings, key_manager: KeyManager | None) -> list[bytes]:
    """What the sealing keys derive from, active first: the AES master keys, or in the KMS modes
    the seeds the provider unwraps (once)."""
    km = settings.key_management
    if km.provider == "AESKey":
        return aes_master_keys(km.aes)
    if not isinstance(key_manager, CloudKeyManager) or not key_manager.wrapped_seeds:
        raise ConfigurationError(
            f"the {km.provider} provider has no sealing seed: set "
            "KeyManagement__Sealing__WrappedSeeds or ...WrappedSeedsFile (kamus create-key-secret "
            "makes one; docs/offline-encryption.md)"
        )
    return await key_manager.sealing_masters()


def export_bundle(
    settings: Settings, now: datetime | None = None, masters: Sequence[bytes] | None = None
) -> str:
    """The signed bundle the sealing keys make, as `kamus keys export` prints it. ``masters``
    defaults to the AES master keys; the KMS modes pass the unwrapped seeds."""
    km = settings.key_management
    if masters is None:
        if km.provider != "AESKey":
            raise ConfigurationError(
                f"the {km.provider} provider's sealing keys come from its unwrapped seeds"
            )
        masters = aes_master_keys(km.aes)
    return bundle.from_masters(
        masters, now=now or _now(), schedule=schedule_of(settings), cluster=km.sealing.cluster
    )


@dataclass(frozen=True)
class Published:
    """The bundle as served: its text, the verified bundle, and its ETag."""

    bundle: bundle.Bundle

    @property
    def text(self) -> str:
        return self.bundle.text

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.text.encode()).hexdigest()[:32] + '"'


class BundleSource:
    """Where the encryptor's current bundle comes from: a watched file, or its own master key."""

    def __init__(
        self,
        *,
        file: Path | None = None,
        derive: Callable[[datetime], str] | None = None,
        trust_anchor: str | None = None,
        clock: Clock = _now,
    ) -> None:
        if (file is None) == (derive is None):
            raise ValueError("a bundle comes from a file or from a master key")
        self._file, self._derive, self._clock = file, derive, clock
        # Whoever can rewrite the ConfigMap must not be able to make this encryptor seal to
        # their own key: a renewed bundle must come from the anchor in use (or link from it).
        self._pin = bundle.normalise_fingerprint(trust_anchor) if trust_anchor else None
        self._published: Published | None = None
        self._problem = "no sealing key bundle has been read yet"
        self._stamp: object = None
        self._checked = -1e9

    @property
    def origin(self) -> str:
        return str(self._file) if self._file else "the AES master key"

    def current(self) -> Published:
        """The bundle to seal with; :class:`KeyManagerUnavailable` (503, not ready) if none is
        valid. Looks for a change at most every couple of seconds: a stat, not a read."""
        if time.monotonic() - self._checked >= RELOAD_CHECK_SECONDS:
            self._checked = time.monotonic()
            self._refresh()
        if self._published is None:
            raise KeyManagerUnavailable(f"no valid sealing key bundle: {self._problem}")
        return self._published

    def _refresh(self) -> None:
        if self._derive is not None:
            # The derived bundle changes only when a generation starts: issue it once a day.
            day = self._clock().date()
            if self._stamp != day:
                self._published = Published(bundle.load(self._derive(self._clock())))
                self._stamp = day
            return
        assert self._file is not None
        try:
            st = os.stat(self._file)
        except OSError as exc:
            self._fail(f"{self._file} cannot be read ({exc.strerror})")
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            loaded = bundle.load(self._file.read_text(encoding="utf-8"), self._pin)
        except (OSError, UnicodeDecodeError, bundle.BundleError) as exc:
            self._fail(f"{self._file}: {exc}")
            return
        if self._published is None or loaded.text != self._published.text:
            log.info(
                "sealing key bundle loaded",
                extra={
                    "kamus_fields": {
                        "file": str(self._file),
                        "anchor": loaded.anchor,
                        "key_ids": [k.kid for k in loaded.keys],
                    }
                },
            )
        self._published = Published(loaded)
        self._pin = loaded.anchor

    def _fail(self, problem: str) -> None:
        # A bundle that went bad keeps the last good one in use: a half-written ConfigMap update
        # must not take the encryptor out of service. Only the first one is awaited.
        if problem != self._problem:
            log.error("sealing key bundle not usable: %s", problem)
        self._problem = problem


# A reused data key seals at most this many values: far below AES-GCM's 2^32 random nonces.
MAX_REUSES = 1 << 16
MAX_REUSED_IDENTITIES = 4096


class SealingKeyManager:
    """The encryptor's key manager when it seals to a bundle: encrypt only.

    ``reuse_seconds`` (``Encryptor__DataKeyReuseSeconds``, 0: off): single values for one
    identity share a data key and its HPKE wrap for that long, as the values of one document
    do, so that a v1 encrypt costs an AES-GCM operation instead of an X25519 key agreement. The
    values made in one window share a header (they show that they were made together, for the
    identity their header names anyway), and the encryptor holds that data key until the
    window ends (docs/threat-model.md, "Issue 20")."""

    provider = "sealing"

    def __init__(
        self,
        source: BundleSource,
        clock: Clock = _now,
        *,
        reuse_seconds: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        policy: KeyPolicy | None = None,
    ) -> None:
        self.source = source
        self._extra = (policy or KeyPolicy()).extra_stanzas
        self._clock = clock
        self._reuse_seconds = reuse_seconds
        self._monotonic = monotonic
        # identity -> (the bundle it was wrapped for, made at, values sealed, the sealer)
        self._reused: dict[str, tuple[Published, float, int, m1.Sealer]] = {}

    async def encrypt(self, plaintext: bytes, sa_id: str) -> str:
        if self._reuse_seconds > 0:
            return self._reused_sealer(sa_id).seal(plaintext)
        [value] = self.seal_document([plaintext], sa_id)
        return value

    def _reused_sealer(self, sa_id: str) -> m1.Sealer:
        published = self.source.current()
        now = self._monotonic()
        entry = self._reused.get(sa_id)
        if (
            entry is not None
            and entry[0].text == published.text  # the same object, until the bundle changes
            and now - entry[1] < self._reuse_seconds
            and entry[2] < MAX_REUSES
        ):
            self._reused[sa_id] = (published, entry[1], entry[2] + 1, entry[3])
            return entry[3]
        try:
            sealer = published.bundle.sealer(sa_id, self._clock(), extra=self._extra)
        except bundle.BundleError as exc:
            raise KeyManagerUnavailable(f"the sealing key bundle has no usable key: {exc}") from exc
        if len(self._reused) >= MAX_REUSED_IDENTITIES:
            self._reused = {
                k: v for k, v in self._reused.items() if now - v[1] < self._reuse_seconds
            }
            if len(self._reused) >= MAX_REUSED_IDENTITIES:
                self._reused.clear()
        self._reused[sa_id] = (published, now, 1, sealer)
        return sealer

    async def encrypt_many(self, plaintexts: Sequence[bytes], sa_id: str) -> list[str]:
        """One data key and one HPKE operation for the whole request."""
        if len(plaintexts) < 64:
            return self.seal_document(plaintexts, sa_id)
        # A large batch is AES work: off the event loop.
        return await asyncio.to_thread(self.seal_document, plaintexts, sa_id)

    def seal_document(self, plaintexts: Sequence[bytes], sa_id: str) -> list[str]:
        published = self.source.current()
        try:
            return published.bundle.seal(plaintexts, sa_id, self._clock(), extra=self._extra)
        except bundle.BundleError as exc:
            raise KeyManagerUnavailable(f"the sealing key bundle has no usable key: {exc}") from exc

    async def decrypt(self, ciphertext: str, sa_id: str) -> bytes:
        raise DecryptionError("the encryptor holds no key that decrypts")

    async def check(self) -> None:
        self.source.current()
