"""KMS keys named explicitly as m1 recipients (multi-cluster values), against each KMS double
through the real SDKs: ``aws`` stanzas whose kid is a key or alias ARN, ``gcp`` ones naming a
CryptoKey's resource name, ``azure`` ones naming a Key Vault key URL. A decryptor opens such a
stanza only when the key is in its ``recipient_keys``, binding the identity as for its own keys;
any other named stanza is skipped without a KMS call."""

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from azure.keyvault.keys import KeyClient
from google.cloud import kms as gkms

from crypto import m1
from crypto.aws import AwsKmsKeyManager, classify_aws_error
from crypto.azure import AzureKeyVaultKeyManager, classify_azure_error, client_kwargs
from crypto.cloud import CloudKeyManager
from crypto.datakeys import OFF, CacheLimits
from crypto.errors import (
    DecryptionError,
    KeyDisabled,
    KeyManagerUnavailable,
    MalformedCiphertext,
)
from crypto.gcp import GoogleKmsKeyManager, classify_gcp_error
from crypto.kms import BlockingCalls, Classifier, NullObserver
from crypto.lifecycle import RewrapStatus
from crypto.sealing import EPOCH, KeyState, SealingPublicKey, Suite, derive
from kamus.server.errors import ConfigurationError
from kamus.server.providers import build_key_manager
from tests.kms_doubles.aws import REGION, AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support import leaks
from tests.support.kms import crypto_calls, provider_env
from tests.support.settings import SettingsFactory

SECRET = b"named-key-s3cr3t"
leaks.register(SECRET.decode())
SA = "team-a:app"
CACHE = CacheLimits(capacity=16, max_age_seconds=60.0, max_uses=100)
UNWRAPS = ("Decrypt", "UnwrapKey")  # the operations BlockingCalls reports for an unwrap


class KmsCalls(NullObserver):
    """The provider's observer: every call that reached the KMS, as ``operation:outcome``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def kms_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        self.calls.append(f"{operation}:{outcome}")

    def unwraps(self) -> int:
        return sum(call.split(":")[0] in UNWRAPS for call in self.calls)


Build = Callable[[BlockingCalls, Sequence[str], CacheLimits], CloudKeyManager]


@dataclass
class NamedKeys:
    """One provider against its double: two keys named by their full names (``name`` is the
    one decryptors list; ``other`` is another cluster's), and how to build managers."""

    kind: str
    name: str
    other: str
    double: AwsKmsDouble | CloudKmsDouble | KeyVaultDouble
    build: Build
    classify: Classifier
    made: list[BlockingCalls] = field(default_factory=list)
    managers: list[CloudKeyManager] = field(default_factory=list)

    def manager(
        self, recipient_keys: Sequence[str] = (), cache: CacheLimits = OFF
    ) -> tuple[CloudKeyManager, KmsCalls]:
        seen = KmsCalls()
        calls = BlockingCalls(
            self.kind,
            timeout_seconds=10.0,
            max_concurrency=4,
            classify=self.classify,
            observer=seen,
        )
        self.made.append(calls)
        manager = self.build(calls, recipient_keys, cache)
        self.managers.append(manager)
        return manager, seen

    @property
    def requests(self) -> list[str]:
        """The double's request log."""
        return self.double.requests

    def close(self) -> None:
        for manager in self.managers:
            if isinstance(manager, AzureKeyVaultKeyManager):
                manager.close()  # its TLS connections to the double, not left to the collector
        for calls in self.made:
            calls.close()


def aws_named(double: AwsKmsDouble) -> NamedKeys:
    admin = double.client()
    key_arn = admin.create_key(Description="cluster b")["KeyMetadata"]["Arn"]
    other = admin.create_key(Description="cluster c")["KeyMetadata"]["Arn"]
    admin.create_alias(AliasName="alias/clusters/c", TargetKeyId=other)
    other_alias = other.split(":key/")[0] + ":alias/clusters/c"

    def build(calls: BlockingCalls, keys: Sequence[str], cache: CacheLimits) -> CloudKeyManager:
        client = boto3.client(
            "kms",
            region_name=REGION,
            endpoint_url=double.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        return AwsKmsKeyManager(client, calls, recipient_keys=keys, cache=cache)

    return NamedKeys("aws", key_arn, other_alias, double, build, classify_aws_error)


def gcp_named(double: CloudKmsDouble) -> NamedKeys:
    admin = double.client()
    ring = "projects/other-project/locations/europe-west1/keyRings/clusters"
    admin.create_key_ring(
        request={"parent": ring.rsplit("/keyRings/", 1)[0], "key_ring_id": "clusters"}
    )
    purpose = gkms.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT
    names = [
        admin.create_crypto_key(
            request={"parent": ring, "crypto_key_id": key_id, "crypto_key": {"purpose": purpose}}
        ).name
        for key_id in ("cluster-b", "cluster-c")
    ]

    def build(calls: BlockingCalls, keys: Sequence[str], cache: CacheLimits) -> CloudKeyManager:
        return GoogleKmsKeyManager(
            double.client(),
            calls,
            project="test-project",
            location="global",
            key_ring="kamus",
            recipient_keys=keys,
            cache=cache,
        )

    return NamedKeys("gcp", names[0], names[1], double, build, classify_gcp_error)


def azure_options(double: KeyVaultDouble) -> dict[str, Any]:
    return {"verify_challenge_resource": False, "connection_verify": str(double.ca_file)}


def azure_named(double: KeyVaultDouble) -> NamedKeys:
    # Without a version: the key's latest version wraps, and the stanza keeps the URL as given.
    name = double.create_key("cluster-b").rsplit("/", 1)[0]
    other = double.create_key("cluster-c").rsplit("/", 1)[0]

    def build(calls: BlockingCalls, keys: Sequence[str], cache: CacheLimits) -> CloudKeyManager:
        options = azure_options(double)
        credential = double.credential()
        return AzureKeyVaultKeyManager(
            KeyClient(double.url, credential, **client_kwargs(options)),
            credential,
            calls,
            client_options=options,
            recipient_keys=keys,
            cache=cache,
        )

    return NamedKeys("azure", name, other, double, build, classify_azure_error)


def closed(named: NamedKeys) -> Iterator[NamedKeys]:
    named.requests.clear()  # the arranging calls
    yield named
    named.close()


@pytest.fixture(params=["aws", "gcp", "azure"])
def kms(request: pytest.FixtureRequest) -> Iterator[NamedKeys]:
    if request.param == "aws":
        yield from closed(aws_named(request.getfixturevalue("aws_kms")))
    elif request.param == "gcp":
        yield from closed(gcp_named(request.getfixturevalue("gcp_kms")))
    else:
        yield from closed(azure_named(request.getfixturevalue("azure_kv")))


@pytest.fixture
def aws_keys(aws_kms: AwsKmsDouble) -> Iterator[NamedKeys]:
    yield from closed(aws_named(aws_kms))


@pytest.fixture
def azure_keys(azure_kv: KeyVaultDouble) -> Iterator[NamedKeys]:
    yield from closed(azure_named(azure_kv))


def other_cluster(data_key: bytes, sa_id: str) -> m1.Stanza:
    """An HPKE stanza for another cluster's sealing key (one this decryptor does not hold)."""
    key = derive(os.urandom(32), Suite.X25519, 0)
    public = SealingPublicKey(key.kid, key.suite, key.public, KeyState.ACTIVE, EPOCH, None)
    return public.wrap(data_key, sa_id)


async def seal_for(
    sealer: CloudKeyManager, names: Sequence[str], sa_id: str = SA, hpke: bool = False
) -> str:
    """A value whose data key is wrapped for the keys ``names`` (and another cluster's HPKE key)."""
    data_key = m1.new_data_key()
    stanzas = [await sealer.recipient(name).wrap(data_key, sa_id) for name in names]
    if hpke:
        stanzas.insert(1, other_cluster(data_key, sa_id))
    [value] = m1.seal(data_key, stanzas, [SECRET], sa_id)
    return value


def named_stanza(value: str, name: str) -> m1.Stanza:
    return next(s for s in m1.parse(value).stanzas if s.kid == name)


async def test_a_value_for_a_listed_key_opens_as_its_identity_only(kms: NamedKeys) -> None:
    """Stanzas for another cluster's KMS key and HPKE key come first: the decryptor looks its
    listed key up, never tries the others, and unwraps once."""
    sealer, _ = kms.manager()
    value = await seal_for(sealer, [kms.other, kms.name], hpke=True)
    stanza = named_stanza(value, kms.name)
    assert (stanza.kind, stanza.kid) == (kms.kind, kms.name)
    manager, seen = kms.manager([kms.name])
    kms.requests.clear()

    opened = await manager.open(value, SA)

    assert opened.plaintext == SECRET
    assert opened.key_id == kms.name
    assert seen.unwraps() == 1
    assert all(call.endswith(":success") for call in seen.calls), seen.calls
    assert crypto_calls(kms.requests) == 1
    # Another identity: refused by the value's identity tag, before any KMS call ...
    with pytest.raises(DecryptionError) as refused:
        await manager.open(value, "team-b:app")
    assert not isinstance(refused.value, MalformedCiphertext)
    assert seen.unwraps() == 1
    # ... and by the KMS itself, which the identity is bound to (the AWS encryption context,
    # the Cloud KMS additional authenticated data, the digest inside the Key Vault blob).
    with pytest.raises(DecryptionError) as bound:
        await manager.unwrap_with_key(kms.name, stanza.wrapped, "team-b:app")
    assert not isinstance(bound.value, KeyDisabled | MalformedCiphertext)
    # The other key's blob does not open under the listed key's name.
    with pytest.raises(DecryptionError):
        await manager.unwrap_with_key(kms.name, named_stanza(value, kms.other).wrapped, SA)
    assert await manager.unwrap_with_key(kms.name, stanza.wrapped, SA) != b""


async def test_a_decryptor_that_does_not_list_the_key_refuses_it_without_a_kms_call(
    kms: NamedKeys,
) -> None:
    """Neither a decryptor listing no key nor one of another cluster (listing its own key)
    tries a stanza of a key it does not list."""
    sealer, _ = kms.manager()
    value = await seal_for(sealer, [kms.name], hpke=True)
    for listed in ([], [kms.other]):
        manager, seen = kms.manager(listed)
        kms.requests.clear()
        with pytest.raises(MalformedCiphertext) as info:
            await manager.open(value, SA)
        assert f"no {kms.kind} stanza for a key of this Kamus" in str(info.value)
        with pytest.raises(MalformedCiphertext):
            await manager.rewrap(value, SA)
        assert seen.calls == []
        assert kms.requests == []


async def test_five_opens_make_one_kms_unwrap(kms: NamedKeys) -> None:
    sealer, _ = kms.manager()
    value = await seal_for(sealer, [kms.name])
    manager, seen = kms.manager([kms.name], cache=CACHE)
    kms.requests.clear()
    for _ in range(5):
        assert (await manager.open(value, SA)).plaintext == SECRET
    assert seen.unwraps() == 1
    assert crypto_calls(kms.requests) == 1
    # The cache is keyed by the identity too: another one is refused, not served.
    with pytest.raises(DecryptionError):
        await manager.open(value, "team-b:app")


async def test_rewrap_keeps_a_named_key_value(kms: NamedKeys) -> None:
    """The KMS rotates a named key's versions behind its name: nothing to rewrap."""
    sealer, _ = kms.manager()
    value = await seal_for(sealer, [kms.name], hpke=True)
    manager, seen = kms.manager([kms.name])
    for check_only in (False, True):
        result = await manager.rewrap(value, SA, check_only=check_only)
        assert result.status is RewrapStatus.UNCHANGED
        assert result.ciphertext == value
        assert result.source_key_id == result.target_key_id == kms.name
    # It unwraps to check the value (never cached), and asks for no key version of its own.
    assert seen.unwraps() == 2
    assert (await manager.open(value, SA)).plaintext == SECRET


KEY_NAMES: dict[str, tuple[list[str], list[str]]] = {
    "aws": (
        [
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws-cn:kms:cn-north-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:ap-southeast-2:111122223333:alias/kamus/cluster-b",
            "arn:aws:kms:eu-west-1:111122223333:alias/cluster_b",
        ],
        [
            "1234abcd-12ab-34cd-56ef-1234567890ab",  # a key id: what own stanzas name
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "alias/kamus/abc",
            "arn:aws:kms:eu-west-1:111122223333:key/",
            "arn:aws:kms:eu-west-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:s3:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab ",
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab\n",
        ],
    ),
    "gcp": (
        [
            "projects/my-project/locations/global/keyRings/kamus/cryptoKeys/abc-DEF_1",
            "projects/p-1/locations/europe-west1/keyRings/r/cryptoKeys/k",
        ],
        [
            "1",  # a key version: what own stanzas name
            "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
            "projects/p/locations/global/keyRings/r",
            "projects/p/locations/global/keyRings/r/cryptoKeys/",
            "/projects/p/locations/global/keyRings/r/cryptoKeys/k",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k/",
            "projects/p/locations/global/keyRings/r/cryptoKeys/k:encrypt",
        ],
    ),
    "azure": (
        [
            "https://my-vault.vault.azure.net/keys/cluster-b",
            "https://my-vault.vault.azure.net/keys/cluster-b/0123456789abcdef0123456789abcdef",
            "https://hsm.managedhsm.azure.net/keys/k",
            "https://127.0.0.1:8443/keys/k",
        ],
        [
            "0123456789abcdef0123456789abcdef",  # a key version: what own stanzas name
            "http://my-vault.vault.azure.net/keys/cluster-b",
            "https://my-vault.vault.azure.net/keys/",
            "https://my-vault.vault.azure.net/keys/cluster-b/",
            "https://my-vault.vault.azure.net/secrets/cluster-b",
            "https://my-vault.vault.azure.net/keys/cluster_b",
            "https://my-vault.vault.azure.net/keys/cluster-b/v1/extra",
            "https://user@my-vault.vault.azure.net/keys/cluster-b",
        ],
    ),
}


async def test_key_names_have_the_full_shape(kms: NamedKeys) -> None:
    manager, seen = kms.manager()
    accepted, refused = KEY_NAMES[kms.kind]
    for name in [*accepted, kms.name, kms.other]:
        assert manager.is_key_name(name), name
        assert manager.recipient(name).name == f"{kms.kind}:{name}"
    for name in [*refused, "", "junk", " ", "x" * 600]:
        assert not manager.is_key_name(name), name
    with pytest.raises(ValueError, match="not a full") as info:
        manager.recipient("junk")
    assert manager.key_name_example
    assert manager.key_name_example in str(info.value)
    # The stanza of a service account's own key names a version, never a key name.
    own = await manager.encrypt(b"own", SA)
    assert not manager.is_key_name(m1.parse(own).stanzas[0].kid)
    with pytest.raises(ValueError, match="not a full"):
        manager.recipient(m1.parse(own).stanzas[0].kid)
    assert all(not call.startswith(UNWRAPS) for call in seen.calls)


async def test_a_wrapped_key_of_no_valid_size_is_a_shape_fact(kms: NamedKeys) -> None:
    manager, seen = kms.manager([kms.name])
    limit = {"aws": 6144, "gcp": 65536, "azure": 1 + 32 + 512}[kms.kind]
    for wrapped in (b"", b"\x01" * (limit + 1)):
        with pytest.raises(MalformedCiphertext):
            manager.check_wrapped(kms.name, wrapped)
    if kms.kind != "gcp":  # a Cloud KMS blob that large does not fit an m1 header at all
        data_key = m1.new_data_key()
        stanza = m1.Stanza(kms.kind, kms.name, b"\x01" * (limit + 1))
        [value] = m1.seal(data_key, [stanza], [SECRET], SA)
        with pytest.raises(MalformedCiphertext):
            await manager.open(value, "team-b:app")  # a shape fact whoever asks
    assert seen.calls == []


async def test_the_recipient_keys_setting_reaches_the_provider(
    kms: NamedKeys, make_settings: SettingsFactory
) -> None:
    """``KeyManagement__RecipientKeys`` through kamus/server/cloud.py, as a decryptor reads it."""
    sealer, _ = kms.manager()
    value = await seal_for(sealer, [kms.other, kms.name])
    env = provider_env(kms.kind, kms.double)
    manager = build_key_manager(make_settings(**env, KeyManagement__RecipientKeys=kms.name))
    assert isinstance(manager, CloudKeyManager)
    assert manager.recipient_keys == {kms.name}
    assert (await manager.open(value, SA)).plaintext == SECRET
    # A key version listed by mistake would make the identity's own stanzas look named:
    # refused at start, naming the setting and what a key name looks like.
    with pytest.raises(ConfigurationError) as raised:
        build_key_manager(make_settings(**env, KeyManagement__RecipientKeys=f"{kms.name},1"))
    assert "KeyManagement__RecipientKeys: '1' is not a full" in str(raised.value)


# -- AWS -------------------------------------------------------------------------------------


async def test_aws_an_alias_arn_and_a_key_arn_are_both_recipients(aws_keys: NamedKeys) -> None:
    named = aws_keys
    sealer, _ = named.manager()
    value = await seal_for(sealer, [named.other])  # the alias ARN
    manager, seen = named.manager([named.name, named.other])
    assert (await manager.open(value, SA)).key_id == named.other
    assert seen.calls == ["Decrypt:success"]


async def test_aws_a_key_of_another_region_is_refused_before_any_call(
    aws_keys: NamedKeys,
) -> None:
    named = aws_keys
    elsewhere = named.name.replace(f":{REGION}:", ":eu-west-1:")
    manager, seen = named.manager([elsewhere])
    with pytest.raises(KeyManagerUnavailable) as wrapping:
        await manager.recipient(elsewhere).wrap(m1.new_data_key(), SA)
    with pytest.raises(KeyManagerUnavailable) as unwrapping:
        await manager.unwrap_with_key(elsewhere, b"\x01" * 100, SA)
    for info in (wrapping, unwrapping):
        assert f"is in eu-west-1, and this Kamus's AWS KMS client in {REGION}" in info.value.reason
    assert seen.calls == []


# -- Azure -----------------------------------------------------------------------------------


async def test_azure_an_unversioned_url_follows_the_key_rotation(
    azure_keys: NamedKeys, azure_kv: KeyVaultDouble
) -> None:
    """The wrapped form records the version that wrapped it: values of the old version keep
    opening after a new one became the latest, which new values use."""
    named = azure_keys
    key = named.name.rsplit("/", 1)[-1]
    [first_version] = azure_kv.versions(key)
    old = await seal_for(named.manager()[0], [named.name])
    azure_kv.create_key(key)
    new_version = azure_kv.versions(key)[-1]
    new = await seal_for(named.manager()[0], [named.name])  # a new sealer reads the latest
    for value, version in ((old, first_version), (new, new_version)):
        wrapped = named_stanza(value, named.name).wrapped
        assert wrapped[0] == len(version)
        assert wrapped[1 : 1 + len(version)] == version.encode()
    manager, seen = named.manager([named.name])
    azure_kv.requests.clear()
    for value in (old, new):
        assert (await manager.open(value, SA)).plaintext == SECRET
    assert seen.unwraps() == 2
    assert f"POST /keys/{key}/{first_version}/unwrapkey" in azure_kv.requests
    assert f"POST /keys/{key}/{new_version}/unwrapkey" in azure_kv.requests


async def test_azure_a_versioned_url_wraps_with_that_version_only(
    azure_keys: NamedKeys, azure_kv: KeyVaultDouble
) -> None:
    named = azure_keys
    key = named.name.rsplit("/", 1)[-1]
    [version] = azure_kv.versions(key)
    pinned = f"{named.name}/{version}"
    azure_kv.create_key(key)  # the latest is another version now
    value = await seal_for(named.manager()[0], [pinned])
    wrapped = named_stanza(value, pinned).wrapped
    assert wrapped[1 : 1 + len(version)] == version.encode()
    manager, seen = named.manager([pinned])
    assert (await manager.open(value, SA)).plaintext == SECRET
    # A wrapped form that records another version than the URL's is a shape fact.
    latest = azure_kv.versions(key)[-1].encode()
    with pytest.raises(MalformedCiphertext, match="another"):
        manager.check_wrapped(pinned, bytes([len(latest)]) + latest + wrapped[1 + len(version) :])
    with pytest.raises(MalformedCiphertext):
        manager.check_wrapped(named.name, b"\x00" + wrapped[1 + len(version) :])
    with pytest.raises(MalformedCiphertext):
        manager.check_wrapped(named.name, b"\x05ab$%!" + wrapped[1 + len(version) :])
    assert seen.unwraps() == 1


async def test_azure_another_vault_gets_no_token_when_challenges_are_not_verified(
    azure_keys: NamedKeys,
) -> None:
    """With VerifyChallengeResource=false the SDK would send this identity's Key Vault token to
    any host that asks: only this Kamus's vault and those of its listed keys are used."""
    named = azure_keys
    elsewhere = "https://vault.elsewhere.example/keys/cluster-b"
    manager, seen = named.manager()
    with pytest.raises(KeyManagerUnavailable) as info:
        await manager.recipient(elsewhere).wrap(m1.new_data_key(), SA)
    assert "VerifyChallengeResource=false" in info.value.reason
    assert seen.calls == []
    assert named.requests == []
