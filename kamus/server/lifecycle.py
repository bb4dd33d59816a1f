"""The key lifecycle settings as the crypto core takes them: the sealing schedule, which keys
are retired (crypto/lifecycle.py), and how long unwrapped data keys are kept
(crypto/datakeys.py)."""

from datetime import timedelta

from crypto.datakeys import CacheLimits
from crypto.lifecycle import KeyPolicy
from crypto.sealing import Schedule
from kamus.server.settings import Settings


def schedule_of(settings: Settings) -> Schedule:
    return Schedule(timedelta(days=settings.key_management.sealing.renew_period_days))


def key_policy(settings: Settings) -> KeyPolicy:
    decryptor = settings.decryptor
    return KeyPolicy.of(
        settings.key_management.retired_key_ids,
        required=decryptor.required_recipients,
        forbidden=decryptor.forbidden_recipients,
    )


def cache_limits(settings: Settings) -> CacheLimits:
    """``KeyManagement__DataKeyCache__*``, for every provider."""
    cache = settings.key_management.data_key_cache
    return CacheLimits(cache.capacity, cache.max_age_seconds, cache.max_uses)
