"""The contract every key provider keeps, run alike over AES and the three cloud KMSs (moto's KMS,
the Cloud KMS and Key Vault doubles, each reached through its real SDK over loopback).

Each provider's own test file keeps what only that provider has: its wire calls, tags and labels,
rotation, legacy Kamus formats, key sizes, checksums, faults and throttling.
"""

import asyncio
import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from crypto import DecryptionError, KeyManager, MalformedCiphertext
from crypto.encoding import b64url_decode, b64url_encode
from crypto.errors import KeyNotFoundError
from kamus.server.metrics import Metrics
from kamus.server.providers import build_key_manager
from tests.kms_doubles.aws import AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support.aio import run
from tests.support.settings import SettingsFactory
from tests.support.values import kms_fields

GENERIC = "the ciphertext could not be decrypted for this service account"
NOT_KAMUS = "this is not a Kamus ciphertext: "
OWNER = "team-a:app"
PROVIDERS = ["aes", "aws", "gcp", "azure"]
KMSS = ["aws", "gcp", "azure"]


def spec_key_id(sa_id: str) -> str:
    """Kamus's key id, computed here independently of crypto/."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(sa_id.encode()).digest()).decode()
    return digest.rstrip("=").replace("_", "-")


class Logged(Protocol):
    @property
    def requests(self) -> list[str]:
        """Every call the double received, in order."""
        ...


class Kms(Protocol):
    """What the contract needs to know of one KMS double."""

    fixture: str
    # False where a racer's second create is harmless: the KMS refuses an existing name.
    looks_before_creating: bool

    @property
    def double(self) -> Logged: ...

    def env(self) -> dict[str, str]: ...

    def key_name(self, sa_id: str) -> str:
        """The name Kamus gives the identity's key in this KMS."""
        ...

    def creates(self, sa_id: str) -> int:
        """Calls in the request log that create the identity's key."""
        ...

    def versions(self) -> list[str]:
        """Every key version the KMS holds, as a value names it (Key Vault's double lists by key
        name: those of ``OWNER``'s key)."""
        ...

    def provision(self, sa_id: str) -> None:
        """Create the identity's key as an administrator would."""
        ...


class Aws:
    fixture = "aws_kms"
    looks_before_creating = True

    def __init__(self, double: AwsKmsDouble) -> None:
        self.double = double

    def env(self) -> dict[str, str]:
        return {"KeyManagement__Provider": "AwsKms", "KeyManagement__AwsKms__Region": "us-east-1"}

    def key_name(self, sa_id: str) -> str:
        return f"alias/kamus/{spec_key_id(sa_id)}"

    def creates(self, sa_id: str) -> int:
        return self.double.requests.count("TrentService.CreateKey")

    def versions(self) -> list[str]:
        return [k["KeyId"] for k in self.double.client().list_keys()["Keys"]]

    def provision(self, sa_id: str) -> None:
        client = self.double.client()
        key_id = client.create_key()["KeyMetadata"]["KeyId"]
        client.create_alias(AliasName=self.key_name(sa_id), TargetKeyId=key_id)


class Gcp:
    fixture = "gcp_kms"
    looks_before_creating = False
    ring = "projects/proj/locations/global/keyRings/kamus"

    def __init__(self, double: CloudKmsDouble) -> None:
        self.double = double

    def env(self) -> dict[str, str]:
        return {
            "KeyManagement__Provider": "GoogleKms",
            "KeyManagement__GoogleKms__ProjectId": "proj",
        }

    def key_name(self, sa_id: str) -> str:
        return f"{self.ring}/cryptoKeys/{spec_key_id(sa_id)}"

    def creates(self, sa_id: str) -> int:
        # The key's id travels in the query string, which the log leaves out.
        return self.double.requests.count(f"POST /v1/{self.ring}/cryptoKeys")

    def versions(self) -> list[str]:
        return [str(n + 1) for key in self.double.keys.values() for n in range(len(key.versions))]

    def provision(self, sa_id: str) -> None:
        client = self.double.client()
        location = self.ring.rsplit("/keyRings", 1)[0]
        client.create_key_ring(request={"parent": location, "key_ring_id": "kamus"})
        client.create_crypto_key(
            request={
                "parent": self.ring,
                "crypto_key_id": spec_key_id(sa_id),
                "crypto_key": {"purpose": 1},  # ENCRYPT_DECRYPT
            }
        )


class Azure:
    fixture = "azure_kv"
    looks_before_creating = True  # a second create would add a key version

    def __init__(self, double: KeyVaultDouble) -> None:
        self.double = double

    def env(self) -> dict[str, str]:
        return {
            "KeyManagement__Provider": "AzureKeyVault",
            "KeyManagement__KeyVault__Url": self.double.url,
            # The double is https://127.0.0.1:port, which the challenge's resource cannot match.
            "KeyManagement__KeyVault__VerifyChallengeResource": "false",
        }

    def key_name(self, sa_id: str) -> str:
        return spec_key_id(sa_id)

    def creates(self, sa_id: str) -> int:
        return self.double.requests.count(f"POST /keys/{spec_key_id(sa_id)}/create")

    def versions(self) -> list[str]:
        return self.double.versions(spec_key_id(OWNER))

    def provision(self, sa_id: str) -> None:
        self.double.create_key(spec_key_id(sa_id))


KMS_TYPES: dict[str, Callable[[Any], Kms]] = {"aws": Aws, "gcp": Gcp, "azure": Azure}
FIXTURES = {"aws": Aws.fixture, "gcp": Gcp.fixture, "azure": Azure.fixture}


@dataclass
class Subject:
    """One provider under test: its key manager, the metrics it reports, its KMS (None: AES)."""

    name: str
    manager: KeyManager
    metrics: Metrics
    kms: Kms | None

    @property
    def requests(self) -> list[str]:
        """The calls the KMS double received so far (AES makes none)."""
        return [] if self.kms is None else list(self.kms.double.requests)

    def keys_created(self) -> float:
        labels = {"provider": self.name}
        value = self.metrics.registry.get_sample_value("kamus_kms_keys_created_total", labels)
        return value or 0.0


Make = Callable[..., Subject]


@pytest.fixture
def make_subject(request: pytest.FixtureRequest, make_settings: SettingsFactory) -> Make:
    """``make(name, **settings)``: a provider built from settings as the services build it, with
    its double (a session double, emptied for the test) started and this process pointed at it."""

    def make(name: str, **env: str) -> Subject:
        kms = None if name == "aes" else KMS_TYPES[name](request.getfixturevalue(FIXTURES[name]))
        metrics = Metrics()
        # Named even for AES: an earlier subject of the same test set the variable.
        provider = kms.env() if kms else {"KeyManagement__Provider": "AESKey"}
        settings = make_settings(**provider, **env)
        return Subject(name, build_key_manager(settings, observer=metrics), metrics, kms)

    return make


@pytest.fixture(params=PROVIDERS)
def subject(request: pytest.FixtureRequest, make_subject: Make) -> Subject:
    return make_subject(request.param)


@pytest.fixture(params=KMSS)
def kms_subject(request: pytest.FixtureRequest, make_subject: Make) -> Subject:
    return make_subject(request.param)


def refused(subject: Subject, ciphertext: str, sa_id: str) -> DecryptionError:
    with pytest.raises(DecryptionError) as info:
        run(subject.manager.decrypt(ciphertext, sa_id))
    return info.value


def test_every_provider_is_a_key_manager(subject: Subject) -> None:
    assert isinstance(subject.manager, KeyManager)


@pytest.mark.parametrize(
    "plaintext",
    [b"", "pässwörd 🔐 סוד 密码".encode(), bytes(range(256)) * 256],
    ids=["empty", "unicode", "64KiB"],
)
def test_round_trip(subject: Subject, plaintext: bytes) -> None:
    ciphertext = run(subject.manager.encrypt(plaintext, OWNER))
    assert ciphertext.startswith("kamus$")
    assert run(subject.manager.decrypt(ciphertext, OWNER)) == plaintext


@pytest.mark.parametrize("other", ["team-a:web", "team-b:app"], ids=["sa", "namespace"])
def test_a_value_for_one_identity_fails_for_another(subject: Subject, other: str) -> None:
    ciphertext = run(subject.manager.encrypt(b"s3cr3t", OWNER))
    run(subject.manager.encrypt(b"x", other))  # the other identity has a key of its own
    error = refused(subject, ciphertext, other)
    assert str(error) == GENERIC


def test_a_tampered_body_fails(subject: Subject) -> None:
    ciphertext = run(subject.manager.encrypt(b"s3cr3t", OWNER))
    header, _, body = ciphertext.rpartition("$")
    raw = bytearray(b64url_decode(body))
    raw[len(raw) // 2] ^= 0x01
    error = refused(subject, f"{header}${b64url_encode(bytes(raw))}", OWNER)
    assert str(error) == GENERIC


@pytest.mark.parametrize(
    ("before", "after"), [(" ", ""), ("", "\n"), ("\t", "\r\n")], ids=["space", "lf", "tab-crlf"]
)
def test_surrounding_whitespace_is_refused(subject: Subject, before: str, after: str) -> None:
    """Callers strip whitespace where values enter; crypto/ itself stays strict."""
    ciphertext = run(subject.manager.encrypt(b"s3cr3t", OWNER))
    calls = len(subject.requests)
    error = refused(subject, before + ciphertext + after, OWNER)
    assert isinstance(error, MalformedCiphertext)
    # Another provider's m1 value is well formed: it was sealed for another Kamus. Its a1 and
    # e1 values are in a format this provider does not read.
    assert str(error).startswith((NOT_KAMUS, "this value was not sealed for this Kamus: it has "))
    assert len(subject.requests) == calls  # told from the shape: the KMS was not asked


@pytest.mark.parametrize(
    ("writer", "reader"), [(w, r) for w in PROVIDERS for r in PROVIDERS if w != r]
)
def test_another_providers_value_is_not_readable(
    make_subject: Make, writer: str, reader: str
) -> None:
    ciphertext = run(make_subject(writer).manager.encrypt(b"s3cr3t", OWNER))
    subject = make_subject(reader)
    calls = len(subject.requests)
    error = refused(subject, ciphertext, OWNER)
    assert isinstance(error, MalformedCiphertext)
    # Another provider's m1 value is well formed: it was sealed for another Kamus. Its a1 and
    # e1 values are in a format this provider does not read.
    assert str(error).startswith((NOT_KAMUS, "this value was not sealed for this Kamus: it has "))
    assert len(subject.requests) == calls


def test_concurrent_first_encrypts_create_the_key_once(kms_subject: Subject) -> None:
    async def race() -> list[str]:
        return await asyncio.gather(*(kms_subject.manager.encrypt(b"v", OWNER) for _ in range(8)))

    values = run(race())
    assert kms_subject.kms is not None
    assert kms_subject.keys_created() == 1
    creates = kms_subject.kms.creates(OWNER)
    assert creates == 1 if kms_subject.kms.looks_before_creating else creates >= 1
    [version] = kms_subject.kms.versions()
    assert {kms_fields(value).key_version for value in values} == {version}
    for value in values:
        assert run(kms_subject.manager.decrypt(value, OWNER)) == b"v"


@pytest.mark.parametrize("name", KMSS)
def test_create_keys_off_refuses_instead_of_creating(make_subject: Make, name: str) -> None:
    subject = make_subject(name, KeyManagement__CreateKeys="false")
    assert subject.kms is not None
    with pytest.raises(KeyNotFoundError) as info:
        run(subject.manager.encrypt(b"v", OWNER))
    assert str(info.value) == (
        f"no key {subject.kms.key_name(OWNER)} exists for this service account, and this Kamus "
        "does not create keys (KeyManagement__CreateKeys=false); ask an administrator to create it"
    )
    assert subject.kms.versions() == []
    assert subject.kms.creates(OWNER) == 0
    subject.kms.provision(OWNER)  # an administrator creates it
    ciphertext = run(subject.manager.encrypt(b"v", OWNER))
    assert run(subject.manager.decrypt(ciphertext, OWNER)) == b"v"
    assert subject.keys_created() == 0
