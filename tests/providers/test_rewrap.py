"""Rewrap and key rotation in the three KMS providers (docs/rotation.md), each built from
settings as the services build it and run against its double through the real SDK: moto's KMS,
the Cloud KMS double and the Key Vault double. The AES provider and the endpoint:
tests/api/test_rewrap_api.py.

A fresh key manager is built for every step that follows a rotation: the providers trust the
current key version for a while (``crypto.cloud.CURRENT_VERSION_SECONDS``, and Key Vault's
``KEY_REFRESH_SECONDS``), as a new decryptor replica would see the rotated key at once.
"""

import base64
import dataclasses
import io
from collections.abc import Callable
from typing import Any, Protocol

import pytest

from crypto import DecryptionError, MalformedCiphertext, m1
from crypto.cloud import CloudKeyManager
from crypto.encoding import b64url_encode
from crypto.lifecycle import LEGACY_KEY_ID, RetiredKey, Rewrapped, RewrapStatus
from crypto.sealing import EPOCH, Keyring, KeyState, SealingPublicKey, Suite, derive
from tests.kms_doubles.aws import AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.providers.test_aws_kms import create_kamus_key, kamus_aws_ciphertext
from tests.providers.test_azure_kv import kamus_envelope, kamus_oaep
from tests.providers.test_gcp_kms import kamus_gcp_ciphertext
from tests.providers.test_key_manager_contract import (  # noqa: F401 (make_subject: a fixture)
    FIXTURES,
    KMSS,
    OWNER,
    Aws,
    Azure,
    Gcp,
    Logged,
    Make,
    make_subject,
)
from tests.support import leaks
from tests.support.aio import run
from tests.support.served_logs import served_logging
from tests.support.values import kms_fields, sealed_to_generation

OTHER = "team-b:app"
# Set on every manager: make_settings leaves earlier settings of the test in the environment.
DEFAULTS = {
    "Encryptor__OutputFormat": "m1",
    "KeyManagement__RetiredKeyIds": "",
    "KeyManagement__AllowLegacyCiphertexts": "true",
}


class Rig(Protocol):
    """One KMS double, with what rotation and Kamus's values need of it."""

    name: str

    @property
    def double(self) -> Logged: ...

    def key_name(self, sa_id: str) -> str: ...

    def rotate(self, sa_id: str) -> str:
        """Make a new key version current for ``sa_id``, as an operator would; returns it."""
        ...

    def kamus_values(self, sa_id: str, plaintext: str) -> dict[str, str]:
        """Kamus's values of ``plaintext``, by format, under ``sa_id``'s key (created here, as
        Kamus created it: call before anything else makes that key)."""
        ...

    def check_rewrap_calls(self, calls: list[str], sa_id: str) -> None:
        """Assert what a rewrap to a new key version asked the KMS."""
        ...


class AwsRig(Aws):
    name = "aws"
    double: AwsKmsDouble

    def rotate(self, sa_id: str) -> str:
        # Manual rotation: a new CMK, and Kamus's alias moved to it.
        client = self.double.client()
        key_id: str = client.create_key()["KeyMetadata"]["KeyId"]
        client.update_alias(AliasName=self.key_name(sa_id), TargetKeyId=key_id)
        return key_id

    def kamus_values(self, sa_id: str, plaintext: str) -> dict[str, str]:
        create_kamus_key(self.double, self.key_name(sa_id))
        return {"env": kamus_aws_ciphertext(self.double, self.key_name(sa_id), plaintext)}

    def check_rewrap_calls(self, calls: list[str], sa_id: str) -> None:
        # ReEncrypt: the data key is never sent back to KMS.
        assert calls.count("TrentService.ReEncrypt") == 1, calls
        assert "TrentService.Encrypt" not in calls
        assert "TrentService.GenerateDataKey" not in calls


class GcpRig(Gcp):
    name = "gcp"
    double: CloudKmsDouble

    def rotate(self, sa_id: str) -> str:
        self.double.rotate(self.key_name(sa_id))
        return str(len(self.double.keys[self.key_name(sa_id)].versions))

    def kamus_values(self, sa_id: str, plaintext: str) -> dict[str, str]:
        return {"raw": kamus_gcp_ciphertext(self.double, sa_id, plaintext)}

    def check_rewrap_calls(self, calls: list[str], sa_id: str) -> None:
        key = f"/v1/{self.key_name(sa_id)}"
        assert f"GET {key}" in calls, calls  # GetCryptoKey: which version is primary
        assert calls.count(f"POST {key}:encrypt") == 1, calls


class AzureRig(Azure):
    name = "azure"
    double: KeyVaultDouble

    def rotate(self, sa_id: str) -> str:
        self.double.create_key(self.key_name(sa_id))  # Key Vault adds a version
        return self.double.versions(self.key_name(sa_id))[-1]

    def kamus_values(self, sa_id: str, plaintext: str) -> dict[str, str]:
        name = self.key_name(sa_id)
        self.double.create_key(name)
        return {
            "raw": kamus_oaep(self.double, name, plaintext.encode()),
            "env": kamus_envelope(self.double, name, plaintext),
        }

    def check_rewrap_calls(self, calls: list[str], sa_id: str) -> None:
        # The new version's public half wraps locally: only the unwrap is remote.
        assert not [c for c in calls if c.endswith(("/wrapkey", "/encrypt"))], calls
        assert [c for c in calls if c.endswith("/unwrapkey")], calls


RIGS: dict[str, Callable[[Any], Rig]] = {"aws": AwsRig, "gcp": GcpRig, "azure": AzureRig}


@dataclasses.dataclass
class Kms:
    """The KMS under test: its double, and fresh key managers built from settings."""

    rig: Rig
    make: Make

    @property
    def name(self) -> str:
        return self.rig.name

    def manager(self, **env: str) -> CloudKeyManager:
        built = self.make(self.name, **{**DEFAULTS, **env}).manager
        assert isinstance(built, CloudKeyManager)
        return built


def kms_for(request: pytest.FixtureRequest, name: str) -> Kms:
    make: Make = request.getfixturevalue("make_subject")
    return Kms(RIGS[name](request.getfixturevalue(FIXTURES[name])), make)


@pytest.fixture(params=KMSS)
def kms(request: pytest.FixtureRequest) -> Kms:
    return kms_for(request, request.param)


def secret(text: str) -> bytes:
    """A plaintext the test knows, registered so that the log check catches it too."""
    leaks.register(text)
    return text.encode()


def assert_no_plaintext(result: Rewrapped, *plaintexts: bytes) -> None:
    """No field of ``result`` holds a plaintext, raw or in the base64 forms values use."""
    fields = [str(getattr(result, f.name)) for f in dataclasses.fields(result)]
    for plaintext in plaintexts:
        forms = [
            plaintext.decode(errors="replace"),
            base64.b64encode(plaintext).decode(),
            b64url_encode(plaintext),
        ]
        assert not [form for form in forms for field in fields if form in field]


def stanza_kinds(value: str) -> list[str]:
    return [s.kind for s in m1.parse(value).stanzas]


def test_an_e1_value_rewraps_to_m1_under_the_current_version(kms: Kms) -> None:
    plaintext = secret("e1 plaintext: correct horse battery staple")
    e1 = run(kms.manager(Encryptor__OutputFormat="legacy").encrypt(plaintext, OWNER))
    assert e1.startswith(f"kamus$e1${kms.name}$")
    manager = kms.manager()

    result = run(manager.rewrap(e1, OWNER))

    assert result.status is RewrapStatus.REWRAPPED
    assert result.source_key_id == kms_fields(e1).key_version
    assert result.target_key_id == run(manager.current_key_version(OWNER))
    assert result.ciphertext is not None
    assert result.ciphertext.startswith("kamus$m1$")
    assert stanza_kinds(result.ciphertext) == [kms.name]
    assert kms_fields(result.ciphertext).key_version == result.target_key_id
    assert run(manager.decrypt(result.ciphertext, OWNER)) == plaintext
    with pytest.raises(DecryptionError):
        run(manager.decrypt(result.ciphertext, OTHER))
    assert_no_plaintext(result, plaintext)


def test_an_m1_value_under_the_current_version_is_unchanged(kms: Kms) -> None:
    plaintext = secret("m1 plaintext: tr0ub4dor&3 unchanged")
    manager = kms.manager()
    value = run(manager.encrypt(plaintext, OWNER))
    version = kms_fields(value).key_version

    result = run(manager.rewrap(value, OWNER))
    checked = run(manager.rewrap(value, OWNER, check_only=True))

    assert result == Rewrapped(RewrapStatus.UNCHANGED, version, version, value)
    assert (checked.status, checked.source_key_id, checked.target_key_id) == (
        RewrapStatus.UNCHANGED,
        version,
        version,
    )
    # The old value, not None, as AES and the sealing keys do (the endpoint drops it when
    # checking); never a new one.
    assert checked.ciphertext == value
    assert_no_plaintext(result, plaintext)
    assert_no_plaintext(checked, plaintext)


def rotated(kms: Kms, plaintext: bytes) -> tuple[str, str, str]:
    """An m1 value made before a rotation, its key version, and the version after it."""
    value = run(kms.manager().encrypt(plaintext, OWNER))
    old = kms_fields(value).key_version
    new = kms.rig.rotate(OWNER)
    assert new != old
    return value, old, new


def test_after_rotation_an_m1_value_still_opens_and_rewraps_to_the_new_version(kms: Kms) -> None:
    plaintext = secret("rotated plaintext: 🔐 hunter2 and more")
    value, old, new = rotated(kms, plaintext)
    manager = kms.manager()  # built after the rotation, as a new replica would be

    before = len(kms.rig.double.requests)
    result = run(manager.rewrap(value, OWNER))
    kms.rig.check_rewrap_calls(kms.rig.double.requests[before:], OWNER)

    assert (result.status, result.source_key_id, result.target_key_id) == (
        RewrapStatus.REWRAPPED,
        old,
        new,
    )
    assert result.ciphertext is not None
    assert m1.parse(result.ciphertext).payload == m1.parse(value).payload
    assert stanza_kinds(result.ciphertext) == [kms.name]
    assert kms_fields(result.ciphertext).key_version == new
    reopened = run(manager.open(result.ciphertext, OWNER))
    assert (reopened.plaintext, reopened.key_id) == (plaintext, new)
    again = run(manager.rewrap(result.ciphertext, OWNER))
    assert again == Rewrapped(RewrapStatus.UNCHANGED, new, new, result.ciphertext)
    # The old value is left as it was, and still opens: its version is decrypt-only in effect.
    opened = run(manager.open(value, OWNER))
    assert (opened.plaintext, opened.key_id) == (plaintext, old)
    checked = run(manager.rewrap(value, OWNER, check_only=True))
    assert checked == Rewrapped(RewrapStatus.STALE, old, new, None)
    for answer in (result, again, checked):
        assert_no_plaintext(answer, plaintext)


def test_kamus_values_rewrap_to_m1_without_upgrade_legacy(kms: Kms) -> None:
    """Kamus's KMS values are bound to the service account's own key already."""
    plaintext = secret("legacy plaintext: from kamus ✓")
    values = kms.rig.kamus_values(OWNER, plaintext.decode())
    manager = kms.manager()
    current = run(manager.current_key_version(OWNER))
    for fmt, value in values.items():
        result = run(manager.rewrap(value, OWNER))
        assert (result.status, result.source_key_id) == (RewrapStatus.REWRAPPED, LEGACY_KEY_ID), fmt
        assert result.target_key_id == current
        assert result.ciphertext is not None
        assert stanza_kinds(result.ciphertext) == [kms.name]
        assert run(manager.decrypt(result.ciphertext, OWNER)) == plaintext
        with pytest.raises(DecryptionError):
            run(manager.decrypt(result.ciphertext, OTHER))
        assert_no_plaintext(result, plaintext)


def test_kamus_values_are_not_rewrapped_when_legacy_reading_is_off(kms: Kms) -> None:
    values = kms.rig.kamus_values(OWNER, secret("legacy plaintext: switched off").decode())
    manager = kms.manager(KeyManagement__AllowLegacyCiphertexts="false")
    for value in values.values():
        with pytest.raises(
            MalformedCiphertext, match="reading legacy Kamus values is switched off"
        ):
            run(manager.rewrap(value, OWNER))


def test_a_retired_key_version_is_refused_on_open_and_on_rewrap(kms: Kms) -> None:
    plaintext = secret("retired plaintext: a leaked key")
    under_old = {
        "m1": run(kms.manager().encrypt(plaintext, OWNER)),
        "e1": run(kms.manager(Encryptor__OutputFormat="legacy").encrypt(plaintext, OWNER)),
    }
    retired = kms_fields(under_old["m1"]).key_version
    assert kms_fields(under_old["e1"]).key_version == retired
    kms.rig.rotate(OWNER)
    under_new = run(kms.manager().encrypt(plaintext, OWNER))
    manager = kms.manager(KeyManagement__RetiredKeyIds=f"unrelated, {retired}")

    for fmt, value in under_old.items():
        before = len(kms.rig.double.requests)
        for attempt in (manager.open, manager.rewrap):
            with pytest.raises(RetiredKey) as info:
                run(attempt(value, OWNER))
            assert info.value.key_id == retired, fmt
            assert "kamus rewrap" in str(info.value), fmt
        # Refused before the KMS is asked: a forgery under a leaked key learns nothing.
        assert kms.rig.double.requests[before:] == [], fmt
    assert run(manager.decrypt(under_new, OWNER)) == plaintext
    assert run(manager.rewrap(under_new, OWNER)).status is RewrapStatus.UNCHANGED


def test_a_value_rewrapped_as_another_identity_fails(kms: Kms) -> None:
    plaintext = secret("foreign plaintext: not yours")
    [kamus, *_] = kms.rig.kamus_values(OWNER, plaintext.decode()).values()
    values = {
        "kamus": kamus,
        "m1": run(kms.manager().encrypt(plaintext, OWNER)),
        "e1": run(kms.manager(Encryptor__OutputFormat="legacy").encrypt(plaintext, OWNER)),
    }
    manager = kms.manager()
    run(manager.encrypt(b"x", OTHER))  # the other identity has a key of its own
    for fmt, value in values.items():
        for check_only in (False, True):
            with pytest.raises(DecryptionError):
                run(manager.rewrap(value, OTHER, check_only=check_only))
        assert run(manager.decrypt(value, OWNER)) == plaintext, fmt


def test_with_legacy_output_e1_values_stay_e1(kms: Kms) -> None:
    """Output format legacy (older decryptors still about): an e1 value under the current
    version is left alone, and one under an older version moves to the current one as e1."""
    plaintext = secret("e1 output plaintext: older decryptors")
    value = run(kms.manager(Encryptor__OutputFormat="legacy").encrypt(plaintext, OWNER))
    old = kms_fields(value).key_version
    result = run(kms.manager(Encryptor__OutputFormat="legacy").rewrap(value, OWNER))
    assert result == Rewrapped(RewrapStatus.UNCHANGED, old, old, value)

    new = kms.rig.rotate(OWNER)
    manager = kms.manager(Encryptor__OutputFormat="legacy")
    moved = run(manager.rewrap(value, OWNER))
    assert (moved.status, moved.source_key_id, moved.target_key_id) == (
        RewrapStatus.REWRAPPED,
        old,
        new,
    )
    assert moved.ciphertext is not None
    assert moved.ciphertext.startswith(f"kamus$e1${kms.name}${new}$")
    assert run(manager.decrypt(moved.ciphertext, OWNER)) == plaintext
    for answer in (result, moved):
        assert_no_plaintext(answer, plaintext)


def test_an_offline_value_moves_to_the_active_sealing_generation_with_only_the_seed_unwrap(
    request: pytest.FixtureRequest,
) -> None:
    kms = kms_for(request, "aws")
    seed = str(run(kms.manager().new_sealing_seed()))
    seeded = {"KeyManagement__Sealing__WrappedSeeds": seed}
    [master] = run(kms.manager(**seeded).sealing_masters())
    # Not registered with the leak check: in this process botocore's DEBUG lines carry it;
    # `kamus serve` caps the SDK loggers (the DEBUG test below checks that).
    master_b64 = base64.b64encode(master).decode()
    active = Keyring(masters=[master]).active(Suite.X25519)
    assert active.generation >= 1  # so generation 0 is decrypt-only
    plaintext = secret("offline plaintext: sealed on a laptop")
    value = sealed_to_generation(master_b64, 0, plaintext.decode(), OWNER)
    old = m1.parse(value).stanzas[0].kid
    assert old.startswith("x25519:g0:")

    manager = kms.manager(**seeded)
    before = len(kms.rig.double.requests)
    result = run(manager.rewrap(value, OWNER))
    assert kms.rig.double.requests[before:] == ["TrentService.Decrypt"]  # the seed, once

    assert (result.status, result.source_key_id, result.target_key_id) == (
        RewrapStatus.REWRAPPED,
        old,
        active.kid,
    )
    assert result.ciphertext is not None
    new = m1.parse(result.ciphertext)
    assert new.payload == m1.parse(value).payload
    assert [(s.kind, s.kid) for s in new.stanzas] == [("hpke-x25519", active.kid)]
    assert run(manager.decrypt(result.ciphertext, OWNER)) == plaintext
    with pytest.raises(DecryptionError):
        run(manager.decrypt(result.ciphertext, OTHER))
    again = run(manager.rewrap(result.ciphertext, OWNER))
    assert again == Rewrapped(RewrapStatus.UNCHANGED, active.kid, active.kid, result.ciphertext)
    assert kms.rig.double.requests[before:] == ["TrentService.Decrypt"]
    for answer in (result, again):
        assert_no_plaintext(answer, plaintext)


@pytest.mark.parametrize("name", ["aws", "gcp", "azure"])
def test_at_debug_level_the_unwrapped_seed_reaches_no_log_line(
    request: pytest.FixtureRequest, name: str
) -> None:
    """The seed is the master of every sealing key: an operator who turns on DEBUG to chase a
    problem must not write it out (nor any data key a KMS returns)."""
    kms = kms_for(request, name)
    seed = str(run(kms.manager().new_sealing_seed()))
    manager = kms.manager(KeyManagement__Sealing__WrappedSeeds=seed)
    out = io.StringIO()
    with served_logging(out, "DEBUG"):
        [master] = run(manager.sealing_masters())
    lines = out.getvalue()
    assert lines  # DEBUG lines were written: the check below saw something
    forms = [base64.b64encode(master).decode(), b64url_encode(master), master.hex()]
    assert not [form for form in forms if form in lines]


def test_a_retired_sealing_stanza_beside_a_kms_stanza_opens_through_the_kms_one(
    request: pytest.FixtureRequest,
) -> None:
    """A value with two recipients, this cluster's sealing key and its AWS key: retiring the
    sealing generation leaves the KMS stanza to open it, as the KMS's own stanza is not retired."""
    kms = kms_for(request, "aws")
    seed = str(run(kms.manager().new_sealing_seed()))
    seeded = {"KeyManagement__Sealing__WrappedSeeds": seed}
    [master] = run(kms.manager(**seeded).sealing_masters())
    old = derive(master, Suite.X25519, 0)
    online = run(kms.manager(**seeded).new_data_key(OWNER))
    plaintext = secret("two recipients: a sealing key and a KMS key")
    hpke = SealingPublicKey(old.kid, old.suite, old.public, KeyState.ACTIVE, EPOCH, None).wrap(
        online.data_key, OWNER
    )
    aws = m1.Stanza("aws", online.key_version, online.wrapped)
    [value] = m1.seal(online.data_key, [hpke, aws], [plaintext], OWNER)
    retired = kms.manager(**seeded, KeyManagement__RetiredKeyIds=old.kid)
    assert run(retired.decrypt(value, OWNER)) == plaintext
    only_sealed = sealed_to_generation(base64.b64encode(master).decode(), 0, "x", OWNER)
    with pytest.raises(RetiredKey):
        run(retired.decrypt(only_sealed, OWNER))
