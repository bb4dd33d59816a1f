"""``kamus rewrap`` and ``kamus verify`` over a repository, against a real decryptor process and
the Kubernetes API double: what is written, what is kept byte for byte, exit codes, and a run
cut short."""

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from crypto import bundle
from crypto.sealing import Keyring, Schedule
from kamus.cli.main import main
from tests.k8s_double import KubeApiDouble
from tests.support.processes import Service, decrypt, kamus_serve, run_kamus
from tests.support.settings import aes_encrypt, kamus_aes_value, new_key

USER = "alice@example.com"

KAMUS_SECRET = """\
# The database credentials of team-a's app.
apiVersion: soluto.com/v1alpha2
kind: KamusSecret
metadata:
  name: db
  namespace: team-a   # set by the overlay too
type: Opaque
serviceAccount: app
stringData:
  # rotated 2026-03
  password: {password}
  username: '{username}'
data:
  token: "{token}"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: app-secrets
  namespace: team-a
  annotations:
    kamus.soluto.com/service-account: app
data:
  api-key: {api_key}
"""
OTHER_TEAM = """\
apiVersion: soluto.com/v1alpha2
kind: KamusSecret
metadata: {{name: theirs, namespace: team-b}}
serviceAccount: app
stringData:
  password: {password}
"""
PLAINTEXTS = {
    "password": "pw-🦄-1",
    "username": "admin",
    "token": "dG9rZW4=",
    "api_key": "key-42",
}


class Repo:
    def __init__(self, root: Path, old: str, current: str) -> None:
        self.root = root
        self.old = old
        self.current = current
        values = {k: aes_encrypt(old, v, "team-a:app") for k, v in PLAINTEXTS.items()}
        self.app = root / "apps" / "team-a.yaml"
        self.app.parent.mkdir(parents=True)
        self.app.write_text(KAMUS_SECRET.format(**values))
        self.other = root / "apps" / "team-b.yaml"
        self.other.write_text(OTHER_TEAM.format(password=aes_encrypt(old, "b", "team-b:app")))
        self.template = root / "chart" / "templates" / "secret.yaml"
        self.template.parent.mkdir(parents=True)
        self.template.write_text("data:\n  {{- range .Values.secrets }}\n  {{ . }}\n")

    def snapshot(self) -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in self.root.rglob("*") if p.is_file()}


@pytest.fixture
def keys() -> tuple[str, str]:
    return new_key(), new_key()  # the active master key, and the previous one


@pytest.fixture
def decryptor(kube_api: KubeApiDouble, tmp_path: Path, keys: tuple[str, str]) -> Iterator[Service]:
    current, old = keys
    env = {
        "KeyManagement__AES__Key": current,
        "KeyManagement__AES__PreviousKeys": old,
        "KUBECONFIG": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
    }
    with kamus_serve("decryptor", env, tmp_path / "decryptor.log") as service:
        yield service


@pytest.fixture
def repo(tmp_path: Path, keys: tuple[str, str]) -> Repo:
    current, old = keys
    return Repo(tmp_path / "repo", old, current)


@pytest.fixture
def token_file(kube_api: KubeApiDouble, tmp_path: Path) -> Path:
    kube_api.grant(
        USER, group="soluto.com", resource="kamussecrets", verb="update", namespace="team-a"
    )
    path = tmp_path / "token"
    path.write_text(kube_api.issue_user_token(USER))
    return path


def connection(decryptor: Service, token_file: Path) -> list[str]:
    return [
        "-u",
        decryptor.url,
        "--allow-insecure-url",
        "--allow-token-over-http",
        "--token-file",
        str(token_file),
    ]


def test_a_dry_run_lists_what_would_change_and_writes_nothing(
    repo: Repo, decryptor: Service, token_file: Path
) -> None:
    before = repo.snapshot()
    result = run_kamus("rewrap", str(repo.root), *connection(decryptor, token_file))
    assert result.returncode == 1, result.stderr  # team-b's value: not allowed
    assert repo.snapshot() == before
    out = result.stdout
    assert f"{repo.app}:11: KamusSecret team-a/db: stringData.password: would rewrap" in out
    assert f"{repo.app}:24: ConfigMap team-a/app-secrets: data.api-key: would rewrap" in out
    assert f"{repo.other}:6:" in out
    assert "may not rewrap values of namespace team-b" in out
    assert "5 values: 4 to rewrap, 1 failed" in out
    assert f"{repo.template}:2: skipped: not valid YAML" in result.stderr
    assert "warning" not in result.stderr.replace("warning: sending your token", "")
    for plaintext in PLAINTEXTS.values():
        assert plaintext not in out + result.stderr


def test_in_place_rewrites_only_the_ciphertexts_and_leaves_failed_files_alone(
    repo: Repo, decryptor: Service, token_file: Path, kube_api: KubeApiDouble
) -> None:
    other_before = repo.other.read_bytes()
    old_text = repo.app.read_text()
    result = run_kamus("rewrap", str(repo.root), "--in-place", *connection(decryptor, token_file))
    assert result.returncode == 1, result.stderr
    assert "1 files written" in result.stdout
    assert f"1 files left untouched because a value in them failed: {repo.other}" in (result.stdout)
    assert "does not change the secrets themselves" in result.stdout
    assert repo.other.read_bytes() == other_before

    new_text = repo.app.read_text()
    old_lines, new_lines = old_text.splitlines(), new_text.splitlines()
    changed = [n for n, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
    assert [n + 1 for n in changed] == [11, 12, 14, 24]  # the four value lines, nothing else
    assert new_lines[11].startswith("  username: 'kamus$m1$")  # quoting kept
    assert new_lines[13].startswith('  token: "kamus$m1$')
    docs = list(yaml.safe_load_all(new_text))
    values = {**docs[0]["stringData"], **docs[0]["data"], "api_key": docs[1]["data"]["api-key"]}
    token = kube_api.issue_token("team-a", "app")
    for name, plaintext in PLAINTEXTS.items():
        assert decrypt(decryptor.url, values[name], token).text == plaintext
    wrong = kube_api.issue_token("team-a", "web")
    assert decrypt(decryptor.url, values["password"], wrong).status_code == 400

    # A second run has nothing left to do in team-a.
    again = run_kamus("rewrap", str(repo.app), *connection(decryptor, token_file))
    assert again.returncode == 0, again.stdout
    assert "4 values: 4 unchanged" in again.stdout


def test_check_is_a_ci_gate_that_needs_no_decryptor(
    repo: Repo, decryptor: Service, token_file: Path, tmp_path: Path
) -> None:
    text = bundle.from_masters(
        [base64.b64decode(repo.current)], now=datetime.now(UTC), schedule=Schedule()
    )
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(text)
    anchor = bundle.load(text).anchor
    check = ["rewrap", "--check", "--keys", str(keys_file), "--trust-anchor", anchor]

    stale = run_kamus(*check, str(repo.app))
    assert stale.returncode == 1
    assert f"{repo.app}:11: KamusSecret team-a/db: stringData.password: not current: format " in (
        stale.stdout
    )
    assert "4 values: 0 current, 4 not current" in stale.stdout

    run_kamus("rewrap", str(repo.app), "--in-place", *connection(decryptor, token_file))
    current = run_kamus(*check, str(repo.app))
    assert current.returncode == 0, current.stdout
    assert "4 values: 4 current, 0 not current" in current.stdout

    wrong_pin = run_kamus(*check[:-1], "ed25519:" + "0" * 64, str(repo.app))
    assert wrong_pin.returncode == 6, wrong_pin.stderr


def test_check_names_legacy_values_and_old_generations(repo: Repo, tmp_path: Path) -> None:
    master = base64.b64decode(repo.current)
    text = bundle.from_masters([master], now=datetime.now(UTC), schedule=Schedule())
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(text)
    current, _ = Keyring(masters=[master]).seal(b"x", "team-a:app")
    raw = tmp_path / "values"
    raw.mkdir()
    (raw / "legacy.kamus").write_text(kamus_aes_value(repo.current, "x"))
    (raw / "current.kamus").write_text(current)
    args = ["-n", "team-a", "-a", "app", "--keys", str(keys_file), "--trust-anchor"]
    result = run_kamus(
        "rewrap",
        "--check",
        *args,
        bundle.load(text).anchor,
        str(raw / "legacy.kamus"),
        str(raw / "current.kamus"),
    )
    assert result.returncode == 1
    assert "a Kamus value (legacy-aes-cbc): kamus rewrap [--upgrade-legacy]" in result.stdout
    assert "2 values: 1 current, 1 not current" in result.stdout


def test_verify_opens_every_value_without_returning_one(
    repo: Repo, decryptor: Service, token_file: Path
) -> None:
    good = run_kamus("verify", str(repo.app), *connection(decryptor, token_file))
    assert good.returncode == 0, good.stdout
    assert "4 values: 4 open for their identity" in good.stdout
    text = repo.app.read_text()
    value = yaml.safe_load_all(text).__next__()["stringData"]["password"]
    repo.app.write_text(text.replace(value, aes_encrypt(repo.current, "x", "team-a:web")))
    bad = run_kamus("verify", str(repo.app), *connection(decryptor, token_file))
    assert bad.returncode == 1
    assert f"{repo.app}:11: KamusSecret team-a/db: stringData.password: failed: the data " in (
        bad.stdout
    )
    for plaintext in PLAINTEXTS.values():
        assert plaintext not in good.stdout + bad.stdout


def test_a_rewrap_cut_short_leaves_every_file_old_or_new(
    tmp_path: Path,
    keys: tuple[str, str],
    decryptor: Service,
    token_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Interrupted while writing the third file: the first two are new, the rest old, and no
    temporary file is left."""
    _, old = keys
    root = tmp_path / "many"
    root.mkdir()
    for n in range(6):
        (root / f"s{n}.yaml").write_text(
            "apiVersion: soluto.com/v1alpha2\nkind: KamusSecret\n"
            f"metadata: {{name: s{n}, namespace: team-a}}\nserviceAccount: app\n"
            f"stringData:\n  a: {aes_encrypt(old, 'a', 'team-a:app')}\n"
            f"  b: {aes_encrypt(old, 'b', 'team-a:app')}\n"
        )
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    replaced: list[str] = []
    real_replace = os.replace

    def interrupting(source: str, target: str) -> None:
        if len(replaced) == 2:
            raise KeyboardInterrupt
        real_replace(source, target)
        replaced.append(Path(target).name)

    monkeypatch.setattr("kamus.cli.tree.os.replace", interrupting)
    args = ["rewrap", str(root), "--in-place", *connection(decryptor, token_file)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "Aborted" in result.output  # click's answer to Ctrl-C
    after = {p.name: p.read_bytes() for p in root.iterdir()}
    assert sorted(after) == sorted(before)  # no temporary file left behind
    assert [name for name in sorted(after) if after[name] != before[name]] == replaced
    for name in replaced:
        assert after[name].count(b"kamus$m1$") == 2


def test_killed_at_any_moment_no_file_is_half_written(
    tmp_path: Path, keys: tuple[str, str], decryptor: Service, token_file: Path
) -> None:
    """SIGKILL lands wherever it lands: each file is old or new, and parses. (A kill between
    creating a file's temporary copy and renaming it can leave that hidden copy; no cleanup can
    run after SIGKILL. Ctrl-C removes it: the test above.)"""
    _, old = keys
    root = tmp_path / "tree"
    root.mkdir()
    for n in range(40):
        values = "".join(f"  v{i}: {aes_encrypt(old, 'x', 'team-a:app')}\n" for i in range(10))
        (root / f"s{n:02}.yaml").write_text(
            "apiVersion: soluto.com/v1alpha2\nkind: KamusSecret\n"
            f"metadata: {{name: s{n}, namespace: team-a}}\nserviceAccount: app\n"
            f"stringData:\n{values}"
        )
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    command = [sys.executable, "-m", "kamus", "rewrap", str(root), "--in-place"]
    process = subprocess.Popen(
        [*command, *connection(decryptor, token_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": os.environ["PATH"]},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if any(p.read_bytes() != before[p.name] for p in root.glob("*.yaml")):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    for path in root.iterdir():
        data = path.read_bytes()
        if path.name not in before:
            assert path.name.startswith(f".{path.name.split('.')[1]}."), path.name
            continue
        if data != before[path.name]:
            assert data.count(b"kamus$m1$") == 10, path.name
            assert yaml.safe_load(data)["metadata"]["name"] == f"s{int(path.name[1:3])}"
