"""Settings under Kamus's names, and the key provider refusing unsafe configurations."""

import asyncio
import base64
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from crypto import KAMUS_PUBLIC_DEFAULT_KEY, AESKeyManager
from kamus.cli.main import main
from kamus.server.errors import ConfigurationError
from kamus.server.providers import build_key_manager
from kamus.server.settings import Settings
from tests.support.settings import new_key


def build(monkeypatch: pytest.MonkeyPatch, **env: str) -> AESKeyManager:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    manager = build_key_manager(Settings())
    assert isinstance(manager, AESKeyManager)
    return manager


def roundtrip(manager: AESKeyManager, sa: str = "ns:sa") -> bytes:
    async def go() -> bytes:
        return await manager.decrypt(await manager.encrypt(b"v", sa), sa)

    return asyncio.run(go())


def test_kamus_environment_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "KeyManagement__Provider": "AESKey",
        "KeyManagement__AES__Key": "k",
        "KeyManagement__AES__UseKeyDeriviation": "true",
        "Kubernetes__ProxyUrl": "http://127.0.0.1:8001",
        "Decryptor__Audiences": "a,b , c",
        "Server__MaxRequestBodyBytes": "2048",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.key_management.aes.use_key_derivation is True
    assert settings.kubernetes.proxy_url == "http://127.0.0.1:8001"
    assert settings.decryptor.audiences == ["a", "b", "c"]
    assert settings.server.max_request_body_bytes == 2048
    # Upper-case spellings (as some deployment tools write them) work too.
    monkeypatch.setenv("KEYMANAGEMENT__AES__USEKEYDERIVIATION", "false")
    monkeypatch.delenv("KeyManagement__AES__UseKeyDeriviation")
    assert Settings().key_management.aes.use_key_derivation is False


def test_secrets_are_not_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key()
    monkeypatch.setenv("KeyManagement__AES__Key", key)
    assert key not in repr(Settings())


def test_missing_key_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="no AES key is configured"):
        build(monkeypatch)


def test_key_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = new_key()
    (tmp_path / "key").write_text(key + "\n")
    from_file = build(monkeypatch, KeyManagement__AES__KeyFile=str(tmp_path / "key"))
    monkeypatch.delenv("KeyManagement__AES__KeyFile")
    from_env = build(monkeypatch, KeyManagement__AES__Key=key)
    assert from_file.active_key_id == from_env.active_key_id
    assert roundtrip(from_file) == b"v"


def test_key_and_key_file_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "key").write_text(new_key())
    with pytest.raises(ConfigurationError, match="not both"):
        build(
            monkeypatch,
            KeyManagement__AES__Key=new_key(),
            KeyManagement__AES__KeyFile=str(tmp_path / "key"),
        )


def test_unreadable_key_file_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=r"KeyManagement__AES__KeyFile .* cannot be read"):
        build(monkeypatch, KeyManagement__AES__KeyFile=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
        (base64.b64encode(os.urandom(33)).decode(), "decodes to 33 bytes"),
    ],
)
def test_bad_keys_are_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        build(monkeypatch, KeyManagement__AES__Key=value)
    assert value not in str(info.value)


def test_public_default_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="published default key"):
        build(monkeypatch, KeyManagement__AES__Key=KAMUS_PUBLIC_DEFAULT_KEY)
    with pytest.raises(ConfigurationError, match="AllowPublicDefaultKey"):
        build(
            monkeypatch,
            KeyManagement__AES__Key=new_key(),
            KeyManagement__AES__PreviousKeys=KAMUS_PUBLIC_DEFAULT_KEY,
        )


def test_public_default_key_allowed_with_a_loud_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    manager = build(
        monkeypatch,
        KeyManagement__AES__Key=KAMUS_PUBLIC_DEFAULT_KEY,
        KeyManagement__AES__AllowPublicDefaultKey="true",
    )
    assert roundtrip(manager) == b"v"
    assert "INSECURE" in caplog.text
    assert KAMUS_PUBLIC_DEFAULT_KEY not in caplog.text


def test_previous_keys_from_variable_or_file_still_decrypt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old, older, new = new_key(), new_key(), new_key()
    old_manager = build(monkeypatch, KeyManagement__AES__Key=old)
    ciphertext = asyncio.run(old_manager.encrypt(b"kept", "ns:sa"))
    rotated = build(monkeypatch, KeyManagement__AES__Key=new, KeyManagement__AES__PreviousKeys=old)
    assert asyncio.run(rotated.decrypt(ciphertext, "ns:sa")) == b"kept"
    assert rotated.active_key_id != old_manager.active_key_id
    monkeypatch.delenv("KeyManagement__AES__PreviousKeys")
    (tmp_path / "previous").write_text(f"{older}, {old}\n")
    from_file = build(monkeypatch, KeyManagement__AES__PreviousKeysFile=str(tmp_path / "previous"))
    assert asyncio.run(from_file.decrypt(ciphertext, "ns:sa")) == b"kept"


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ("AwsKms", "KeyManagement__AwsKms__Region"),
        ("GoogleKms", "GOOGLE_APPLICATION_CREDENTIALS"),
        ("AzureKeyVault", "KeyManagement__KeyVault__Name"),
    ],
)
def test_cloud_providers_say_which_setting_is_missing(
    monkeypatch: pytest.MonkeyPatch, provider: str, message: str
) -> None:
    monkeypatch.setenv("KeyManagement__Provider", provider)
    monkeypatch.setenv("HOME", "/nonexistent")  # no gcloud application-default credentials
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # and no metadata server
    with pytest.raises(ConfigurationError, match=message):
        build_key_manager(Settings())


def test_serve_refuses_to_start_without_a_key() -> None:
    result = CliRunner().invoke(main, ["serve", "encryptor", "--port", "0"])
    assert result.exit_code == 1
    assert "no AES key is configured" in result.output


def test_serve_reports_invalid_settings_without_their_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KeyManagement__Provider", "Vault-secret-value")
    result = CliRunner().invoke(main, ["serve", "decryptor"])
    assert result.exit_code == 1
    assert "invalid settings" in result.output
    assert "KeyManagement__Provider" in result.output
    assert "Vault-secret-value" not in result.output


def test_serve_rejects_unknown_services() -> None:
    result = CliRunner().invoke(main, ["serve", "controller-x"])
    assert result.exit_code == 2


def test_controller_election_timing_is_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KeyManagement__AES__Key", new_key())
    monkeypatch.setenv("Controller__LeaseDurationSeconds", "5")
    monkeypatch.setenv("Controller__RenewDeadlineSeconds", "5")
    result = CliRunner().invoke(main, ["serve", "controller"])
    assert result.exit_code == 1
    assert "Controller__LeaseDurationSeconds > Controller__RenewDeadlineSeconds" in result.output


def test_controller_lease_duration_must_be_whole_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KeyManagement__AES__Key", new_key())
    monkeypatch.setenv("Controller__LeaseDurationSeconds", "2.5")
    result = CliRunner().invoke(main, ["serve", "controller"])
    assert result.exit_code == 1
    assert "LeaseDurationSeconds" in result.output


@pytest.mark.parametrize("entry", ["/team", "example..org", "example.org team"])
def test_a_denied_metadata_prefix_that_could_match_nothing_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    monkeypatch.setenv("KeyManagement__AES__Key", new_key())
    monkeypatch.setenv("Controller__DeniedMetadataPrefixes", f"example.com,{entry}")
    result = CliRunner().invoke(main, ["serve", "controller"])
    assert result.exit_code == 1
    assert "DeniedMetadataPrefixes" in result.output
    assert "write a domain (example.org, which covers its subdomains)" in result.output
