"""Sealing keys in the KMS modes: a seed wrapped by the KMS, unwrapped once by the decryptor,
from which the bundle derives; offline values then open with no KMS call. Real SDK clients
against the AWS, Cloud KMS and Key Vault doubles."""

import asyncio
from datetime import UTC, datetime

import pytest

from crypto import bundle
from crypto.cloud import SEALING_IDENTITY, CloudKeyManager, WrappedSeed
from crypto.errors import DecryptionError, KeyManagerUnavailable
from kamus.server.errors import ConfigurationError
from kamus.server.providers import build_key_manager
from kamus.server.sealing import export_bundle, sealing_masters
from kamus.server.settings import Settings
from tests.support.apps import Provider
from tests.support.settings import SettingsFactory
from tests.support.values import kms_fields

KMS = pytest.mark.parametrize("provider", ["aws", "gcp", "azure"], indirect=True)
SA = "team-a:app"
NOW = datetime.now(UTC)


def manager(settings: Settings) -> CloudKeyManager:
    built = build_key_manager(settings)
    assert isinstance(built, CloudKeyManager)
    return built


async def seeded(provider: Provider, make_settings: SettingsFactory) -> tuple[Settings, str]:
    """Settings with a fresh seed, as `kamus create-key-secret` makes it, and the seed's text."""
    seed = await manager(make_settings(**provider.env)).new_sealing_seed()
    text = str(seed)
    return make_settings(**provider.env, KeyManagement__Sealing__WrappedSeeds=text), text


@KMS
async def test_an_offline_value_opens_through_the_seed_with_no_kms_call(
    provider: Provider, make_settings: SettingsFactory
) -> None:
    settings, seed = await seeded(provider, make_settings)
    assert seed.startswith(f"{provider.name}$")
    assert WrappedSeed.parse(seed).kind == provider.name
    decryptor = manager(settings)
    masters = await sealing_masters(settings, decryptor)
    assert [len(m) for m in masters] == [32]
    keys = bundle.load(export_bundle(settings, NOW, masters))
    [value] = keys.seal([b"s3cret"], SA, NOW)

    before = len(provider.kms_requests())
    assert await decryptor.decrypt(value, SA) == b"s3cret"
    assert await decryptor.decrypt(value, SA) == b"s3cret"
    assert len(provider.kms_requests()) == before  # unwrapped once, above; HPKE is local
    with pytest.raises(DecryptionError):
        await decryptor.decrypt(value, "team-a:web")


@KMS
async def test_a_fresh_decryptor_unwraps_the_seed_once_when_an_offline_value_comes(
    provider: Provider, make_settings: SettingsFactory
) -> None:
    settings, _ = await seeded(provider, make_settings)
    masters = await sealing_masters(settings, manager(settings))
    [value] = bundle.load(export_bundle(settings, NOW, masters)).seal([b"x"], SA, NOW)
    fresh = manager(settings)
    before = len(provider.kms_requests())
    results = await asyncio.gather(*(fresh.decrypt(value, SA) for _ in range(5)))
    assert results == [b"x"] * 5
    unwraps = len(provider.kms_requests()) - before
    assert 1 <= unwraps <= 2  # one unwrap (Key Vault may also fetch the key version first)


@KMS
async def test_online_values_carry_only_the_service_accounts_kms_stanza(
    provider: Provider, make_settings: SettingsFactory
) -> None:
    settings, _ = await seeded(provider, make_settings)
    kms = manager(settings)
    value = await kms.encrypt(b"online", SA)
    assert value.startswith("kamus$m1$")
    assert kms_fields(value).kms == provider.name  # and no HPKE stanza (kms_fields wants one)
    assert await kms.decrypt(value, SA) == b"online"
    with pytest.raises(DecryptionError):
        await kms.decrypt(value, "team-b:app")


@KMS
async def test_a_seed_that_does_not_unwrap_is_an_outage_not_a_bad_value(
    provider: Provider, make_settings: SettingsFactory
) -> None:
    """A damaged seed is the operator's to fix: 503 (and a log line), never "your value is bad"."""
    _, text = await seeded(provider, make_settings)
    seed = WrappedSeed.parse(text)
    damaged = WrappedSeed(
        seed.kind, seed.key_version, seed.wrapped[:-1] + bytes([seed.wrapped[-1] ^ 1])
    )
    settings = make_settings(**provider.env, KeyManagement__Sealing__WrappedSeeds=str(damaged))
    good_settings = make_settings(**provider.env, KeyManagement__Sealing__WrappedSeeds=text)
    masters = await sealing_masters(good_settings, manager(good_settings))
    [value] = bundle.load(export_bundle(good_settings, NOW, masters)).seal([b"x"], SA, NOW)
    with pytest.raises(KeyManagerUnavailable) as raised:
        await manager(settings).decrypt(value, SA)
    assert "sealing seed did not unwrap" in raised.value.reason


@KMS
async def test_the_seed_is_bound_to_its_reserved_identity(
    provider: Provider, make_settings: SettingsFactory
) -> None:
    """The seed's wrapped form does not unwrap as a workload's identity, and no namespace can
    be named like the reserved one."""
    _, text = await seeded(provider, make_settings)
    seed = WrappedSeed.parse(text)
    kms = manager(make_settings(**provider.env))
    assert await kms.unwrap_data_key(seed.key_version, seed.wrapped, SEALING_IDENTITY)
    with pytest.raises(DecryptionError):
        await kms.unwrap_data_key(seed.key_version, seed.wrapped, SA)
    assert "_" in SEALING_IDENTITY.split(":")[0]


@KMS
def test_a_seed_of_another_provider_is_a_start_up_error(
    provider: Provider, make_settings: SettingsFactory
) -> None:
    other = "gcp" if provider.name != "gcp" else "aws"
    settings = make_settings(**provider.env, KeyManagement__Sealing__WrappedSeeds=f"{other}$1$AAAA")
    with pytest.raises(ConfigurationError, match=f"wrapped by {other}"):
        build_key_manager(settings)
    with pytest.raises(ConfigurationError, match="<kms>\\$<key version>\\$<base64url>"):
        build_key_manager(
            make_settings(**provider.env, KeyManagement__Sealing__WrappedSeeds="not a seed")
        )


@KMS
async def test_without_a_seed_the_kms_modes_say_how_to_make_one(
    provider: Provider, make_settings: SettingsFactory
) -> None:
    settings = make_settings(**provider.env)
    with pytest.raises(ConfigurationError, match="kamus create-key-secret"):
        await sealing_masters(settings, manager(settings))
