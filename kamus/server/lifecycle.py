"""The key lifecycle settings as the crypto core takes them: the sealing schedule, which keys
are retired (crypto/lifecycle.py), and how long unwrapped data keys are kept
(crypto/datakeys.py)."""

from datetime import timedelta

from crypto.datakeys import CacheLimits
from crypto.lifecycle import KeyPolicy
from crypto.recipients import AgeRecipient
from crypto.sealing import Schedule
from kamus.server.errors import ConfigurationError
from kamus.server.settings import Settings


def schedule_of(settings: Settings) -> Schedule:
    return Schedule(timedelta(days=settings.key_management.sealing.renew_period_days))


def key_policy(settings: Settings) -> KeyPolicy:
    decryptor = settings.decryptor
    return KeyPolicy.of(
        settings.key_management.retired_key_ids,
        required=decryptor.required_recipients,
        forbidden=decryptor.forbidden_recipients,
        extra=_extra_recipients(settings.key_management.extra_recipients),
    )


def _extra_recipients(names: list[str]) -> list[AgeRecipient]:
    out = []
    for name in names:
        kind, _, recipient = name.partition(":")
        try:
            if kind != "age":
                raise ValueError("only age recipients (age:age1…) are added to every value")
            out.append(AgeRecipient(recipient))
        except ValueError as exc:
            raise ConfigurationError(f"KeyManagement__ExtraRecipients: {exc}") from None
    return out


def cache_limits(settings: Settings) -> CacheLimits:
    """``KeyManagement__DataKeyCache__*``, for every provider."""
    cache = settings.key_management.data_key_cache
    return CacheLimits(cache.capacity, cache.max_age_seconds, cache.max_uses)
