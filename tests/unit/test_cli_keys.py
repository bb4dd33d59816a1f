"""``kamus keys export|verify`` and ``kamus encrypt|seal --offline``, in-process (CliRunner):
the bundle's signature and anchor are checked, expiry warns and refuses, the values open with
the cluster's sealing keys and only as their identity. No network: keys from a URL are in
tests/e2e/test_offline_sealing.py."""

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from crypto import bundle, m1
from crypto.errors import DecryptionError
from crypto.sealing import Keyring, Schedule
from kamus.cli.main import main
from tests.support import leaks

SECRET = "offline-sealed-s3cr3t"
leaks.register(SECRET)
MASTER = b"m" * 32
OLD_MASTER = b"o" * 32
OTHER_MASTER = b"x" * 32
SECRET_MANIFEST = """\
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: team-a}
stringData: {user: admin, password: hunter2}
data: {blob: aGVsbG8=}
---
apiVersion: v1
kind: Secret
metadata: {name: api, namespace: team-a}
stringData: {token: t0k3n}
"""


def anchor_of(master: bytes) -> str:
    return bundle.fingerprint(bundle.anchor_from_master(master).public_key())


def make_bundle(
    masters: tuple[bytes, ...] = (MASTER,),
    *,
    issued: datetime | None = None,
    period_days: int = 90,
) -> str:
    return bundle.from_masters(
        masters,
        now=issued or datetime.now(UTC),
        schedule=Schedule(timedelta(days=period_days)),
        cluster="test-cluster",
    )


def opened(ciphertext: str, sa_id: str = "team-a:app", master: bytes = MASTER) -> str:
    plaintext, _ = Keyring(masters=[master]).open(ciphertext, sa_id)
    return plaintext.decode()


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository of its own (no .kamus.yaml above it is read), and no pin or keys from the
    developer's environment."""
    for name in ("KAMUS_KEYS", "KAMUS_TRUST_ANCHOR", "KAMUS_URL", "KAMUS_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    monkeypatch.chdir(repo)
    return repo


@pytest.fixture
def keys_file(workdir: Path) -> Path:
    path = workdir / "keys.json"
    path.write_text(make_bundle())
    return path


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, input=stdin)


def offline_encrypt(keys: str | Path, *extra: str, env: dict[str, str] | None = None) -> Result:
    return run(
        "encrypt", "-s", SECRET, "-a", "app", "-n", "team-a", "--offline", "--keys", str(keys),
        *extra, env=env,
    )  # fmt: skip


def tampered(text: str) -> str:
    """The bundle with its active X25519 key swapped for the decrypt-only one's public key: a
    change an attacker who can write the file would make, keeping it valid JSON."""
    document = json.loads(text)
    keys = {k["state"]: k for k in document["keys"] if k["suite"].startswith("hpke-x25519")}
    keys["active"]["public"] = keys["decrypt-only"]["public"]
    keys["active"]["kid"] = keys["decrypt-only"]["kid"]
    return json.dumps(document)


# -- kamus keys export ------------------------------------------------------------------------


def test_export_prints_the_bundle_of_the_master_key_in_the_environment() -> None:
    key = base64.b64encode(MASTER).decode()
    result = run(
        "keys",
        "export",
        env={"KeyManagement__AES__Key": key, "KeyManagement__Sealing__Cluster": "prod"},
    )
    assert result.exit_code == 0, result.stderr
    loaded = bundle.load(result.stdout, anchor_of(MASTER))
    assert loaded.cluster == "prod"
    assert {k.state for k in loaded.keys} == {"active", "next", "decrypt-only"}


def test_export_writes_a_file_and_keeps_an_existing_one(workdir: Path) -> None:
    env = {"KeyManagement__AES__Key": base64.b64encode(MASTER).decode()}
    assert run("keys", "export", "-o", "keys.json", env=env).exit_code == 0
    assert bundle.load((workdir / "keys.json").read_text()).anchor == anchor_of(MASTER)
    again = run("keys", "export", "-o", "keys.json", env=env)
    assert again.exit_code == 2
    assert "--overwrite" in again.stderr
    assert run("keys", "export", "-o", "keys.json", "-O", env=env).exit_code == 0


def test_export_without_a_key_names_the_setting_to_set() -> None:
    result = run("keys", "export")
    assert result.exit_code == 1
    assert "KeyManagement__AES__Key" in result.stderr
    assert "Traceback" not in result.output


# -- kamus keys verify ------------------------------------------------------------------------


def test_verify_prints_the_anchor_and_each_key(keys_file: Path) -> None:
    result = run("keys", "verify", str(keys_file))
    assert result.exit_code == 0, result.stderr
    assert f"anchor:  {anchor_of(MASTER)}" in result.stdout
    assert "cluster: test-cluster" in result.stdout
    loaded = bundle.load(keys_file.read_text())
    for key in loaded.keys:
        row = next(line for line in result.stdout.splitlines() if key.kid in line)
        assert str(key.suite) in row
        assert f" {key.state} " in row
        assert key.expires is not None
        assert key.expires.strftime("%Y-%m-%dT%H:%M:%SZ") in row
    # Unpinned: how to pin it.
    assert f"--trust-anchor {anchor_of(MASTER)}" in result.stderr


def test_verify_accepts_the_pinned_anchor(keys_file: Path) -> None:
    result = run("keys", "verify", str(keys_file), "--trust-anchor", anchor_of(MASTER).upper())
    assert result.exit_code == 0, result.stderr
    assert "nothing pins" not in result.stderr


def test_verify_refuses_a_tampered_bundle(keys_file: Path) -> None:
    keys_file.write_text(tampered(keys_file.read_text()))
    result = run("keys", "verify", str(keys_file))
    assert result.exit_code == 6
    assert "signature does not hold" in result.stderr
    assert "anchor:" not in result.stdout


def test_verify_refuses_a_foreign_anchor(workdir: Path) -> None:
    foreign = workdir / "foreign.json"
    foreign.write_text(make_bundle((OTHER_MASTER,)))
    result = run("keys", "verify", str(foreign), "--trust-anchor", anchor_of(MASTER))
    assert result.exit_code == 6
    assert f"not by the pinned {anchor_of(MASTER)}" in result.stderr


def test_verify_refuses_a_malformed_pin(keys_file: Path) -> None:
    result = run("keys", "verify", str(keys_file), "--trust-anchor", "sha256:abc")
    assert result.exit_code == 2
    assert "--trust-anchor" in result.stderr
    assert "ed25519:" in result.stderr


def test_verify_warns_within_14_days_and_fails_once_expired(workdir: Path) -> None:
    soon = workdir / "soon.json"
    soon.write_text(make_bundle(period_days=4))
    warned = run("keys", "verify", str(soon))
    assert warned.exit_code == 0, warned.stderr
    assert "warning: the key bundle's keys expire on" in warned.stderr
    expired = workdir / "expired.json"
    expired.write_text(make_bundle(issued=datetime.now(UTC) - timedelta(days=30), period_days=4))
    result = run("keys", "verify", str(expired))
    assert result.exit_code == 6
    assert "EXPIRED" in result.stderr
    assert "anchor:" in result.stdout  # what it is, even though it is refused


def test_verify_follows_the_link_when_the_master_key_rotated(workdir: Path) -> None:
    env = {
        "KeyManagement__AES__Key": base64.b64encode(MASTER).decode(),
        "KeyManagement__AES__PreviousKeys": base64.b64encode(OLD_MASTER).decode(),
    }
    exported = run("keys", "export", "-o", "keys.json", env=env)
    assert exported.exit_code == 0, exported.stderr
    result = run("keys", "verify", "keys.json", "--trust-anchor", anchor_of(OLD_MASTER))
    assert result.exit_code == 0, result.stderr
    assert (
        f"the anchor changed: followed the link from the pinned {anchor_of(OLD_MASTER)} to "
        f"{anchor_of(MASTER)}"
    ) in result.stderr
    # A pin on an anchor the link does not come from is still refused.
    other = run("keys", "verify", "keys.json", "--trust-anchor", anchor_of(OTHER_MASTER))
    assert other.exit_code == 6


def test_verify_reads_stdin(keys_file: Path) -> None:
    result = run("keys", "verify", "-", stdin=keys_file.read_text())
    assert result.exit_code == 0, result.stderr
    assert anchor_of(MASTER) in result.stdout


# -- kamus encrypt --offline ------------------------------------------------------------------


def test_offline_encrypt_opens_with_the_cluster_keys_and_only_as_its_identity(
    keys_file: Path,
) -> None:
    result = offline_encrypt(keys_file)
    assert result.exit_code == 0, result.stderr
    ciphertext = result.stdout.strip()
    assert ciphertext.startswith("kamus$m1$")
    assert opened(ciphertext) == SECRET
    for other in ("team-a:web", "team-b:app"):
        with pytest.raises(DecryptionError):
            opened(ciphertext, other)
    with pytest.raises(DecryptionError):
        opened(ciphertext, master=OTHER_MASTER)
    parsed = m1.parse(ciphertext)
    assert [s.kind for s in parsed.stanzas] == ["hpke-x25519"]
    assert not parsed.expired_keys
    # An unpinned file: its fingerprint, to compare and pin.
    assert f"signed by anchor {anchor_of(MASTER)}" in result.stderr
    assert SECRET not in result.stderr


def test_offline_post_quantum_seals_with_the_hybrid_suite(keys_file: Path) -> None:
    result = offline_encrypt(keys_file, "--post-quantum")
    assert result.exit_code == 0, result.stderr
    ciphertext = result.stdout.strip()
    assert [s.kind for s in m1.parse(ciphertext).stanzas] == ["hpke-mlkem768x25519"]
    assert opened(ciphertext) == SECRET


def test_offline_refuses_a_tampered_bundle(keys_file: Path) -> None:
    keys_file.write_text(tampered(keys_file.read_text()))
    result = offline_encrypt(keys_file)
    assert result.exit_code == 6
    assert "signature does not hold" in result.stderr
    assert result.stdout == ""


def test_offline_refuses_a_foreign_anchor(workdir: Path) -> None:
    foreign = workdir / "foreign.json"
    foreign.write_text(make_bundle((OTHER_MASTER,)))
    result = offline_encrypt(foreign, "--trust-anchor", anchor_of(MASTER))
    assert result.exit_code == 6
    assert "not by the pinned" in result.stderr
    assert result.stdout == ""


def test_offline_follows_the_anchor_link_from_an_old_pin(workdir: Path) -> None:
    (workdir / "keys.json").write_text(make_bundle((MASTER, OLD_MASTER)))
    result = offline_encrypt("keys.json", "--trust-anchor", anchor_of(OLD_MASTER))
    assert result.exit_code == 0, result.stderr
    assert f"followed the link from the pinned {anchor_of(OLD_MASTER)}" in result.stderr
    assert opened(result.stdout.strip()) == SECRET


def test_offline_warns_when_the_keys_expire_soon(workdir: Path) -> None:
    (workdir / "keys.json").write_text(make_bundle(period_days=4))
    result = offline_encrypt("keys.json")
    assert result.exit_code == 0, result.stderr
    assert "warning: the key bundle's keys expire on" in result.stderr
    assert not m1.parse(result.stdout.strip()).expired_keys


def test_offline_refuses_expired_keys_unless_allowed_and_then_records_it(workdir: Path) -> None:
    (workdir / "keys.json").write_text(
        make_bundle(issued=datetime.now(UTC) - timedelta(days=30), period_days=4)
    )
    refused = offline_encrypt("keys.json")
    assert refused.exit_code == 6
    assert "--allow-expired-keys" in refused.stderr
    assert refused.stdout == ""
    allowed = offline_encrypt("keys.json", "--allow-expired-keys")
    assert allowed.exit_code == 0, allowed.stderr
    assert "WARNING: the key bundle's keys EXPIRED" in allowed.stderr
    ciphertext = allowed.stdout.strip()
    assert m1.parse(ciphertext).expired_keys  # "xk" in the header: reviewers see it
    assert opened(ciphertext) == SECRET


def test_the_pin_comes_from_kamus_yaml_at_the_repository_root(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "keys.json").write_text(make_bundle())
    sub = workdir / "apps" / "db"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    (workdir / ".kamus.yaml").write_text(f"trust-anchor: {anchor_of(OTHER_MASTER)}\n")
    foreign = offline_encrypt("../../keys.json")
    assert foreign.exit_code == 6
    assert "not by the pinned" in foreign.stderr
    (workdir / ".kamus.yaml").write_text(f"trust-anchor: {anchor_of(MASTER)}\n")
    pinned = offline_encrypt("../../keys.json")
    assert pinned.exit_code == 0, pinned.stderr
    assert "nothing pins" not in pinned.stderr
    assert run("keys", "verify", "../../keys.json").exit_code == 0
    # The command line wins over the file.
    override = offline_encrypt("../../keys.json", "--trust-anchor", anchor_of(OTHER_MASTER))
    assert override.exit_code == 6


def test_a_kamus_yaml_above_the_repository_root_is_not_read(workdir: Path, tmp_path: Path) -> None:
    (tmp_path / ".kamus.yaml").write_text(f"trust-anchor: {anchor_of(OTHER_MASTER)}\n")
    (workdir / "keys.json").write_text(make_bundle())
    result = offline_encrypt("keys.json")
    assert result.exit_code == 0, result.stderr
    assert "which nothing pins" in result.stderr


def test_a_malformed_kamus_yaml_is_named(workdir: Path) -> None:
    (workdir / "keys.json").write_text(make_bundle())
    (workdir / ".kamus.yaml").write_text("trust-anchor: [not, a, fingerprint]\n")
    result = offline_encrypt("keys.json")
    assert result.exit_code == 2
    assert ".kamus.yaml" in result.stderr


def test_kamus_keys_and_kamus_trust_anchor_from_the_environment(keys_file: Path) -> None:
    env = {"KAMUS_KEYS": str(keys_file), "KAMUS_TRUST_ANCHOR": anchor_of(MASTER)}
    args = ("encrypt", "-s", SECRET, "-a", "app", "-n", "team-a", "--offline")
    result = run(*args, env=env)
    assert result.exit_code == 0, result.stderr
    assert opened(result.stdout.strip()) == SECRET
    assert "nothing pins" not in result.stderr
    foreign = run(*args, env={**env, "KAMUS_TRUST_ANCHOR": anchor_of(OTHER_MASTER)})
    assert foreign.exit_code == 6
    # A URL set in the environment does not stand in the way of --offline.
    with_url = run(*args, env={**env, "KAMUS_URL": "https://kamus.example.com"})
    assert with_url.exit_code == 0, with_url.stderr


def test_keys_from_a_url_need_a_pin(keys_file: Path) -> None:
    result = offline_encrypt("https://kamus.example.com")
    assert result.exit_code == 2
    assert "--trust-anchor" in result.stderr
    assert ".kamus.yaml" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-a", "default", "-n", "team-a"], "'default' service account"),
        (["-a", "app", "-n", "Team_A"], "Kubernetes namespace name"),
        (["-a", "App!", "-n", "team-a"], "Kubernetes service account name"),
        (["-a", "app", "-n", "team-a", "-u", "https://kamus.example.com"], "--kamus-url"),
        (["-a", "app", "-n", "team-a", "--token-file", "token"], "--token-file"),
    ],
)
def test_offline_usage_errors(keys_file: Path, args: list[str], message: str) -> None:
    result = run("encrypt", "-s", SECRET, "--offline", "--keys", str(keys_file), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_offline_options_need_offline_and_offline_needs_keys(keys_file: Path) -> None:
    base = ("encrypt", "-s", SECRET, "-a", "app", "-n", "team-a")
    without = run(*base, "--keys", str(keys_file), "-u", "https://kamus.example.com")
    assert without.exit_code == 2
    assert "--keys goes with --offline" in without.stderr
    no_keys = run(*base, "--offline")
    assert no_keys.exit_code == 2
    assert "--offline needs --keys" in no_keys.stderr
    neither = run(*base)
    assert neither.exit_code == 2
    assert "--kamus-url" in neither.stderr


# -- kamus seal --offline ---------------------------------------------------------------------


def test_offline_seal_uses_one_data_key_per_secret(keys_file: Path) -> None:
    result = run(
        "seal", "-a", "app", "--offline", "--keys", str(keys_file),
        "--trust-anchor", anchor_of(MASTER), stdin=SECRET_MANIFEST,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    db, api = yaml.safe_load_all(result.stdout)
    assert db["kind"] == "KamusSecret"
    assert db["serviceAccount"] == "app"
    assert {k: opened(v) for k, v in db["stringData"].items()} == {
        "user": "admin",
        "password": "hunter2",
    }
    assert opened(db["data"]["blob"]) == "aGVsbG8="
    assert opened(api["stringData"]["token"]) == "t0k3n"
    # One data key (one header, one HPKE stanza) per Secret, a different one for each Secret.
    db_values = [*db["stringData"].values(), *db["data"].values()]
    assert len({m1.parse(v).header_text for v in db_values}) == 1
    assert m1.parse(api["stringData"]["token"]).header_text != m1.parse(db_values[0]).header_text
    assert len(set(db_values)) == 3
    for secret in ("admin", "hunter2", "t0k3n"):
        assert secret not in result.stderr


def test_offline_seal_configmap_and_its_checks(keys_file: Path) -> None:
    result = run(
        "seal", "-a", "app", "--format", "configmap", "--offline", "--keys", str(keys_file),
        stdin=SECRET_MANIFEST,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    db, _ = yaml.safe_load_all(result.stdout)
    assert db["kind"] == "ConfigMap"
    assert opened(db["data"]["blob"]) == "hello"
    refused = run(
        "seal", "-a", "default", "--offline", "--keys", str(keys_file), stdin=SECRET_MANIFEST
    )
    assert refused.exit_code == 2
    assert "'default' service account" in refused.stderr
    bad_ns = SECRET_MANIFEST.replace("namespace: team-a}", "namespace: Team_A}", 1)
    invalid = run("seal", "-a", "app", "--offline", "--keys", str(keys_file), stdin=bad_ns)
    assert invalid.exit_code == 2
    assert "Kubernetes namespace name" in invalid.stderr


def test_offline_seal_refuses_a_tampered_bundle_before_reading_any_secret(
    keys_file: Path,
) -> None:
    keys_file.write_text(tampered(keys_file.read_text()))
    result = run("seal", "-a", "app", "--offline", "--keys", str(keys_file), stdin=SECRET_MANIFEST)
    assert result.exit_code == 6
    assert result.stdout == ""
