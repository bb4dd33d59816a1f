"""The key lifecycle settings as the crypto core takes them: the sealing schedule and which keys
are retired (crypto/lifecycle.py)."""

from datetime import timedelta

from crypto.lifecycle import KeyPolicy
from crypto.sealing import Schedule
from kamus.server.settings import Settings


def schedule_of(settings: Settings) -> Schedule:
    return Schedule(timedelta(days=settings.key_management.sealing.renew_period_days))


def key_policy(settings: Settings) -> KeyPolicy:
    return KeyPolicy.of(settings.key_management.retired_key_ids)
