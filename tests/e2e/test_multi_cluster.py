"""Issue 22 end to end, with real ``kamus`` processes: one value sealed offline for two clusters
(two AES masters, two signed bundles) and a break-glass age key opens in each cluster's
decryptor as its identity only, is refused by a third cluster with a reason, and opens with
``kamus recover``; ``kamus recipients add/remove`` change a tree of manifests, offline and
through a decryptor that allows only what ``Decryptor__AllowedRecipients`` lists."""

import base64
import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pyrage import x25519

from crypto import bundle, m1
from kamus.server.errors import ConfigurationError
from kamus.server.providers import build_key_manager
from tests.k8s_double import KubeApiDouble
from tests.kms_doubles.aws import AwsKmsDouble
from tests.support import leaks
from tests.support.cluster import eventually
from tests.support.kms import WRAPS, crypto_calls
from tests.support.processes import Service, decrypt, deploy, kamus_serve, run_kamus
from tests.support.settings import SettingsFactory, new_key

SECRET = "multi-cluster-pa55w0rd"
leaks.register(SECRET)
NS, SA = "team-a", "app"


@dataclass
class Cluster:
    name: str
    key_file: Path
    keys: Path  # its exported, signed bundle
    anchor: str

    def env(self) -> dict[str, str]:
        return {"KeyManagement__AES__KeyFile": str(self.key_file)}


def make_cluster(name: str, tmp: Path) -> Cluster:
    key_file = tmp / f"{name}.key"
    key_file.write_text(new_key())
    keys = tmp / f"{name}-keys.json"
    exported = run_kamus(
        "keys", "export", "-o", str(keys), env={**Cluster(name, key_file, keys, "").env()}
    )
    assert exported.returncode == 0, exported.stderr
    master = base64.b64decode(key_file.read_text())
    anchor = bundle.fingerprint(bundle.anchor_from_master(master).public_key())
    return Cluster(name, key_file, keys, anchor)


@dataclass
class BreakGlass:
    identity_file: Path
    recipient: str


def make_age(tmp: Path, name: str = "dr") -> BreakGlass:
    identity = x25519.Identity.generate()
    path = tmp / f"{name}.agekey"
    path.write_text(f"# created by the test\n# public key: {identity.to_public()}\n{identity}\n")
    leaks.register(str(identity))
    return BreakGlass(path, str(identity.to_public()))


@pytest.fixture
def clusters(tmp_path: Path) -> dict[str, Cluster]:
    return {name: make_cluster(name, tmp_path) for name in ("eu", "us", "other")}


@pytest.fixture
def dr(tmp_path: Path) -> BreakGlass:
    return make_age(tmp_path)


@pytest.fixture
def decryptors(
    clusters: dict[str, Cluster], kube_api: KubeApiDouble, tmp_path: Path
) -> Iterator[dict[str, Service]]:
    """A decryptor per cluster, all trusting the same Kubernetes double (the identities are the
    same names in each cluster)."""
    kubeconfig = str(kube_api.write_kubeconfig(tmp_path / "kubeconfig"))
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(
                kamus_serve(
                    "decryptor",
                    {**c.env(), "KUBECONFIG": kubeconfig},
                    tmp_path / f"decryptor-{name}.log",
                )
            )
            for name, c in clusters.items()
        }


def seal(clusters: list[Cluster], *more: str, stdin: str | None = None) -> str:
    args = ["encrypt", "-s", SECRET, "-a", SA, "-n", NS, "--offline", "-i"]
    for cluster in clusters:
        args += ["--keys", str(cluster.keys), "--trust-anchor", cluster.anchor]
    done = run_kamus(*args, *more)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_one_value_opens_in_each_of_its_clusters_as_its_identity_only(
    clusters: dict[str, Cluster],
    decryptors: dict[str, Service],
    dr: BreakGlass,
    kube_api: KubeApiDouble,
    tmp_path: Path,
) -> None:
    value = seal([clusters["eu"], clusters["us"]], "--recipient", f"age:{dr.recipient}")
    parsed = m1.parse(value)
    assert [s.kind for s in parsed.stanzas] == ["hpke-x25519", "hpke-x25519", "age"]
    assert parsed.threshold == 1

    token = kube_api.issue_token(NS, SA)
    for name in ("eu", "us"):
        opened = decrypt(decryptors[name].url, value, token)
        assert opened.status_code == 200, opened.text
        assert opened.text == SECRET
        # Not as another identity, in either cluster.
        for ns, sa in [(NS, "web"), ("team-b", SA)]:
            other = decrypt(decryptors[name].url, value, kube_api.issue_token(ns, sa))
            assert other.status_code == 400, other.text
            assert SECRET not in other.text

    # A third cluster holds no key of the value: it says so, naming the stanzas' keys.
    refused = decrypt(decryptors["other"].url, value, token)
    assert refused.status_code == 400
    message = refused.json().get("message", refused.text)
    assert "no stanza for a sealing key this Kamus holds" in message, message
    assert parsed.stanzas[0].kid in message

    # Each decrypt's audit line names the stanza kinds the value carries.
    audit = [
        json.loads(line)
        for line in decryptors["eu"].log_file.read_text().splitlines()
        if '"audit"' in line
    ]
    opened_lines = [a for a in audit if a.get("outcome") == "success"]
    assert opened_lines
    assert opened_lines[0]["stanzas"] == "age,hpke-x25519"

    # The break-glass key opens it with no cluster at all.
    out = tmp_path / "recovered.txt"
    recovered = run_kamus("recover", "-i", str(dr.identity_file), "-o", str(out), stdin=value)
    assert recovered.returncode == 0, recovered.stderr
    assert out.read_text() == SECRET
    assert out.stat().st_mode & 0o777 == 0o600


def test_a_value_whose_stanzas_were_swapped_or_removed_fails_the_commitment(
    clusters: dict[str, Cluster], decryptors: dict[str, Service], kube_api: KubeApiDouble
) -> None:
    both = m1.parse(seal([clusters["eu"], clusters["us"]]))
    other = m1.parse(seal([clusters["eu"], clusters["us"]]))
    token = kube_api.issue_token(NS, SA)

    def rebuilt(value: m1.M1, stanzas: list[m1.Stanza]) -> str:
        """``value`` with its header's stanzas replaced and its MAC kept: what a forger who
        holds no data key can make."""
        header = json.loads(base64.urlsafe_b64decode(value.header_text + "=" * 4))
        header["s"] = [s.to_json() for s in stanzas]
        text = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        mac = base64.urlsafe_b64encode(value.mac).rstrip(b"=").decode()
        payload = base64.urlsafe_b64encode(value.payload).rstrip(b"=").decode()
        return f"kamus$m1${text}${mac}${payload}"

    forged = {
        # The us stanza removed: eu's still opens, but the header's MAC no longer holds.
        "removed": rebuilt(both, [both.stanzas[0]]),
        # Another value's eu stanza (a data key that unwraps fine) swapped in.
        "swapped": rebuilt(both, [other.stanzas[0], both.stanzas[1]]),
    }
    for what, value in forged.items():
        answer = decrypt(decryptors["eu"].url, value, token)
        assert answer.status_code == 400, (what, answer.text)
        assert SECRET not in answer.text
    # The audit line is written once the response is on its way (logs.py, write_soon).
    reasons = ("m1 header MAC failed", "m1 commitment does not match the data key")
    log_file = decryptors["eu"].log_file
    eventually(lambda: all(r in log_file.read_text() for r in reasons), timeout=5)


def test_threshold_opens_with_n_shares_and_not_with_fewer(tmp_path: Path) -> None:
    alice, bob, carol = (make_age(tmp_path, n) for n in ("alice", "bob", "carol"))
    args = ["encrypt", "-s", SECRET, "-a", SA, "-n", NS, "--offline", "--threshold", "2"]
    for holder in (alice, bob, carol):
        args += ["--recipient", f"age:{holder.recipient}"]
    sealed = run_kamus(*args)
    assert sealed.returncode == 0, sealed.stderr
    value = sealed.stdout.strip()
    parsed = m1.parse(value)
    assert parsed.threshold == 2
    assert sorted(s.group for s in parsed.stanzas if s.group) == [1, 2, 3]

    for pair in [(alice, bob), (bob, carol), (alice, carol)]:
        out = tmp_path / "out.txt"
        out.unlink(missing_ok=True)
        ids = [a for holder in pair for a in ("-i", str(holder.identity_file))]
        opened = run_kamus("recover", *ids, "-o", str(out), stdin=value)
        assert opened.returncode == 0, opened.stderr
        assert out.read_text() == SECRET

    one = run_kamus(
        "recover", "-i", str(alice.identity_file), "-o", str(tmp_path / "x"), stdin=value
    )
    assert one.returncode != 0
    # Each group's verdict is named: which one opened, which had no key here.
    assert "needs shares of 2 of its 3 recipient groups" in one.stderr
    assert f"group 1 (age:{alice.recipient}): a key is held here" in one.stderr
    assert f"group 2 (age:{bob.recipient}): no key held here" in one.stderr
    assert not (tmp_path / "x").exists()


def test_recover_turns_a_kamus_secret_into_its_secret_and_refuses_a_terminal(
    clusters: dict[str, Cluster], dr: BreakGlass, tmp_path: Path
) -> None:
    manifest = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: team-a}\n"
        f"stringData: {{password: {SECRET}}}\n"
        "data: {blob: AAEC/w==}\n"
    )
    sealed = run_kamus(
        "seal", "-a", SA, "--offline", "--keys", str(clusters["eu"].keys),
        "--recipient", f"age:{dr.recipient}", stdin=manifest,
    )  # fmt: skip
    assert sealed.returncode == 0, sealed.stderr
    kamus_secret = yaml.safe_load(sealed.stdout)
    # One data key per Secret: every value of it carries the same stanzas.
    headers = {v.split("$")[2] for v in kamus_secret["stringData"].values()} | {
        v.split("$")[2] for v in kamus_secret["data"].values()
    }
    assert len(headers) == 1

    recovered = run_kamus("recover", "-i", str(dr.identity_file), stdin=sealed.stdout)
    assert recovered.returncode == 0, recovered.stderr
    secret = yaml.safe_load(recovered.stdout)
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "team-a"},
        "type": "Opaque",
        "stringData": {"password": SECRET},
        "data": {"blob": "AAEC/w=="},
    }

    # Moved into another namespace's manifest: refused, not recovered there.
    moved = sealed.stdout.replace("namespace: team-a", "namespace: team-b")
    refused = run_kamus("recover", "-i", str(dr.identity_file), stdin=moved)
    assert refused.returncode != 0
    assert "made for team-a:app, but its manifest names team-b:app" in refused.stderr
    assert SECRET not in refused.stdout + refused.stderr

    # Without a namespace or a service account (a kustomize overlay's base): the values'
    # identity names them, and a value of another identity beside them is refused.
    bare = yaml.safe_load(sealed.stdout)
    del bare["metadata"]["namespace"], bare["serviceAccount"]
    unplaced = run_kamus("recover", "-i", str(dr.identity_file), stdin=yaml.safe_dump(bare))
    assert unplaced.returncode == 0, unplaced.stderr
    assert yaml.safe_load(unplaced.stdout)["metadata"] == {"name": "db", "namespace": "team-a"}
    stranger = run_kamus("encrypt", "-s", "x", "-a", SA, "-n", "team-b", "--offline",
                         "--keys", str(clusters["eu"].keys),
                         "--recipient", f"age:{dr.recipient}")  # fmt: skip
    assert stranger.returncode == 0, stranger.stderr
    bare["stringData"]["stranger"] = stranger.stdout.strip()
    mixed = run_kamus("recover", "-i", str(dr.identity_file), stdin=yaml.safe_dump(bare))
    assert mixed.returncode != 0
    assert "made for team-b:app, but its manifest names team-a:app" in mixed.stderr

    # A value without an age stanza says what to do.
    plain = run_kamus(
        "encrypt", "-s", "x", "-a", SA, "-n", NS, "--offline", "--keys", str(clusters["eu"].keys)
    )
    missing = run_kamus("recover", "-i", str(dr.identity_file), stdin=plain.stdout)
    assert missing.returncode != 0
    assert "no stanza for a key held here" in missing.stderr


def test_recover_refuses_to_print_plaintext_to_a_terminal(dr: BreakGlass) -> None:
    """stdout a terminal: refused without --force (the helper runs it under a pty)."""
    import os
    import pty
    import subprocess
    import sys

    value = seal([], "--recipient", f"age:{dr.recipient}")
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kamus", "recover", "-i", str(dr.identity_file)],
            input=value.encode(),
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
            env={"PATH": os.environ["PATH"]},
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 2
    assert b"refusing to write plaintext to a terminal" in done.stderr


TREE = """\
# Team A's secrets: this comment must survive.
apiVersion: soluto.com/v1alpha2
kind: KamusSecret
metadata:
  name: db
  namespace: team-a
serviceAccount: app
stringData:
  password: {one}   # trailing comment
  user: '{two}'
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: untouched
  namespace: team-a
data:
  plain: not a ciphertext
"""


def test_recipients_add_and_remove_offline_keep_comments_and_other_values(
    clusters: dict[str, Cluster],
    decryptors: dict[str, Service],
    dr: BreakGlass,
    kube_api: KubeApiDouble,
    tmp_path: Path,
) -> None:
    eu = clusters["eu"]
    one = seal([eu], "--recipient", f"age:{dr.recipient}")
    two = seal([eu], "--recipient", f"age:{dr.recipient}")
    tree = tmp_path / "deploy"
    tree.mkdir()
    (tree / "db.yaml").write_text(TREE.format(one=one, two=two))
    other_file = tree / "other.yaml"
    untouched_value = seal([eu])  # no age stanza: offline, it cannot be opened, and stays
    other_file.write_text(
        "apiVersion: soluto.com/v1alpha2\nkind: KamusSecret\nmetadata: {name: x, namespace: "
        f"team-a}}\nserviceAccount: app\nstringData: {{k: {untouched_value}}}\n"
    )
    before = (tree / "db.yaml").read_text()

    us = clusters["us"]
    dry = run_kamus(
        "recipients", "add", str(tree / "db.yaml"), "--keys", str(us.keys),
        "--trust-anchor", us.anchor, "-i", str(dr.identity_file),
    )  # fmt: skip
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "recipients would change" in dry.stdout
    assert (tree / "db.yaml").read_text() == before

    added = run_kamus(
        "recipients", "add", str(tree), "--keys", str(us.keys), "--trust-anchor", us.anchor,
        "-i", str(dr.identity_file), "--in-place",
    )  # fmt: skip
    # The value without an age stanza fails, so its file is left as it was; db.yaml is written.
    assert added.returncode == 1, added.stdout
    assert "other.yaml" in added.stdout
    assert "no stanza for a key held here" in added.stdout
    assert other_file.read_text().count(untouched_value) == 1
    after = (tree / "db.yaml").read_text()
    assert "# Team A's secrets: this comment must survive." in after
    assert "# trailing comment" in after
    assert "plain: not a ciphertext" in after
    docs = list(yaml.safe_load_all(after))
    new_one, new_two = docs[0]["stringData"]["password"], docs[0]["stringData"]["user"]
    assert new_one != one
    assert new_two != two
    # The payload is the same: only the header changed.
    assert new_one.split("$")[4] == one.split("$")[4]
    assert len(m1.parse(new_one).stanzas) == 3

    token = kube_api.issue_token(NS, SA)
    answer = decrypt(decryptors["us"].url, new_one, token)
    assert answer.status_code == 200
    assert answer.text == SECRET
    assert decrypt(decryptors["us"].url, one, token).status_code == 400

    # Adding it again changes nothing.
    again = run_kamus(
        "recipients", "add", str(tree / "db.yaml"), "--keys", str(us.keys),
        "--trust-anchor", us.anchor, "-i", str(dr.identity_file), "--in-place",
    )  # fmt: skip
    assert again.returncode == 0, again.stdout
    assert (tree / "db.yaml").read_text() == after

    # A cluster removed by its bundle: every stanza for a key it lists goes; the eu cluster
    # then says the value was not sealed for it, and us still opens it.
    gone = run_kamus(
        "recipients", "remove", str(tree / "db.yaml"), "--keys", str(eu.keys),
        "--trust-anchor", eu.anchor, "-i", str(dr.identity_file), "--in-place",
    )  # fmt: skip
    assert gone.returncode == 0, gone.stdout + gone.stderr
    without_eu = next(iter(yaml.safe_load_all((tree / "db.yaml").read_text())))
    value = without_eu["stringData"]["password"]
    assert len(m1.parse(value).stanzas) == 2
    refused = decrypt(decryptors["eu"].url, value, token)
    assert refused.status_code == 400
    assert "this value was not sealed for this Kamus" in refused.text
    assert decrypt(decryptors["us"].url, value, token).text == SECRET
    # Back again, for what follows.
    back = run_kamus(
        "recipients", "add", str(tree / "db.yaml"), "--keys", str(eu.keys),
        "--trust-anchor", eu.anchor, "-i", str(dr.identity_file), "--in-place",
    )  # fmt: skip
    assert back.returncode == 0, back.stdout

    # Removing the break-glass stanza: the values still open in both clusters, not offline.
    removed = run_kamus(
        "recipients", "remove", str(tree / "db.yaml"), "--recipient", "age:*",
        "-i", str(dr.identity_file), "--in-place",
    )  # fmt: skip
    assert removed.returncode == 0, removed.stdout
    final = yaml.safe_load_all((tree / "db.yaml").read_text())
    value = next(iter(final))["stringData"]["password"]
    assert m1.parse(value).kinds == ["hpke-x25519"]
    assert "# trailing comment" in (tree / "db.yaml").read_text()
    for name in ("eu", "us"):
        assert decrypt(decryptors[name].url, value, token).text == SECRET


def test_recipients_through_the_decryptor_add_only_what_the_operator_allows(
    clusters: dict[str, Cluster], kube_api: KubeApiDouble, dr: BreakGlass, tmp_path: Path
) -> None:
    eu, us = clusters["eu"], clusters["us"]
    mallory = make_age(tmp_path, "mallory")
    kubeconfig = str(kube_api.write_kubeconfig(tmp_path / "kubeconfig"))
    env = {
        **eu.env(),
        "KUBECONFIG": kubeconfig,
        "Decryptor__AllowedRecipients": f"age:{dr.recipient},anchor:{us.anchor}",
    }
    user = kube_api.issue_user_token("alice")
    kube_api.grant(
        "alice", group="soluto.com", resource="kamussecrets", verb="update", namespace=NS
    )
    token_file = tmp_path / "token"
    token_file.write_text(user)
    tree = tmp_path / "t"
    tree.mkdir()
    value = seal([eu])
    (tree / "v.yaml").write_text(
        "apiVersion: soluto.com/v1alpha2\nkind: KamusSecret\nmetadata: {name: x, namespace: "
        f"team-a}}\nserviceAccount: app\nstringData: {{k: {value}}}  # keep me\n"
    )
    with kamus_serve("decryptor", env, tmp_path / "decryptor.log") as decryptor:
        common = ["-u", decryptor.url, "--allow-insecure-url", "--allow-token-over-http"]
        common += ["--token-file", str(token_file), "--in-place"]
        # The rewrapper's own key: refused, and the file stays.
        own = run_kamus("recipients", "add", str(tree), "--recipient", f"age:{mallory.recipient}",
                        *common)  # fmt: skip
        assert own.returncode == 1, own.stdout + own.stderr
        assert "is not in Decryptor__AllowedRecipients" in own.stdout
        assert m1.parse(yaml.safe_load((tree / "v.yaml").read_text())["stringData"]["k"]).kinds == [
            "hpke-x25519"
        ]
        # A bundle of a cluster whose anchor is not listed: refused.
        stranger = clusters["other"]
        foreign = run_kamus("recipients", "add", str(tree), "--keys", str(stranger.keys),
                            "--trust-anchor", stranger.anchor, *common)  # fmt: skip
        assert foreign.returncode == 1
        assert "not signed by an anchor listed in Decryptor__AllowedRecipients" in foreign.stdout

        allowed = run_kamus(
            "recipients", "add", str(tree), "--recipient", f"age:{dr.recipient}",
            "--keys", str(us.keys), "--trust-anchor", us.anchor, *common,
        )  # fmt: skip
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    text = (tree / "v.yaml").read_text()
    assert "# keep me" in text
    new = yaml.safe_load(text)["stringData"]["k"]
    assert m1.parse(new).kinds == ["age", "hpke-x25519"]
    assert len(m1.parse(new).stanzas) == 3
    out = tmp_path / "r"
    assert (
        run_kamus("recover", "-i", str(dr.identity_file), "-o", str(out), stdin=new).returncode == 0
    )
    assert out.read_text() == SECRET


def test_recipient_rules_in_kamus_yaml_choose_the_recipients_by_path(
    clusters: dict[str, Cluster], dr: BreakGlass, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".kamus").mkdir()
    eu, us = clusters["eu"], clusters["us"]
    shutil.copy(eu.keys, repo / ".kamus" / "eu.json")
    shutil.copy(us.keys, repo / ".kamus" / "us.json")
    (repo / ".kamus.yaml").write_text(
        f"""\
recipients:
  - path: ^prod/
    keys: [.kamus/eu.json, .kamus/us.json]
    trust-anchors: [{eu.anchor}, {us.anchor}]
    recipients: [age:{dr.recipient}]
  - path: ^staging/
    keys: [.kamus/eu.json]
    trust-anchors: [{eu.anchor}]
"""
    )
    (repo / "prod").mkdir()
    (repo / "staging").mkdir()
    import os
    import subprocess
    import sys

    def sealed_in(directory: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kamus", "encrypt", "-s", SECRET, "-a", SA, "-n", NS,
             "--offline", "-i", "-o", "value.txt"],
            cwd=directory, capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": os.environ["PATH"]},
        )  # fmt: skip

    prod = sealed_in(repo / "prod")
    assert prod.returncode == 0, prod.stderr
    assert m1.parse((repo / "prod" / "value.txt").read_text()).kinds == ["age", "hpke-x25519"]
    assert len(m1.parse((repo / "prod" / "value.txt").read_text()).stanzas) == 3
    assert "unpinned" not in prod.stderr
    assert "which nothing pins" not in prod.stderr

    staging = sealed_in(repo / "staging")
    assert staging.returncode == 0, staging.stderr
    assert len(m1.parse((repo / "staging" / "value.txt").read_text()).stanzas) == 1

    nowhere = sealed_in(repo)
    assert nowhere.returncode == 2
    assert "or a recipients rule in .kamus.yaml whose path matches" in nowhere.stderr

    # A rule whose pinned anchor does not sign its bundle is refused before any sealing.
    (repo / ".kamus.yaml").write_text(
        f"recipients:\n  - keys: [.kamus/eu.json]\n    trust-anchors: [{us.anchor}]\n"
    )
    wrong = sealed_in(repo / "prod")
    assert wrong.returncode == 6, wrong.stderr
    assert "refusing the key bundle" in wrong.stderr


def test_a_kms_key_named_as_a_recipient_opens_in_the_cluster_that_lists_it_with_one_kms_call(
    clusters: dict[str, Cluster],
    aws_kms: AwsKmsDouble,
    kube_api: KubeApiDouble,
    tmp_path: Path,
) -> None:
    """``--recipient aws:<ARN>``: the CLI wraps the data key with the caller's AWS credentials;
    a decryptor in AWS mode that lists the key opens it (the data-key cache: one Decrypt for five
    opens), one that does not refuses it without a KMS call, and the AES cluster opens its own
    HPKE stanza of the same value with none."""
    arn = aws_kms.client().create_key()["KeyMetadata"]["Arn"]
    eu = clusters["eu"]
    aws_env = aws_kms.env()
    sealed = run_kamus(
        "encrypt", "-s", SECRET, "-a", SA, "-n", NS, "--offline", "-i",
        "--keys", str(eu.keys), "--trust-anchor", eu.anchor, "--recipient", f"aws:{arn}",
        env=aws_env,
    )  # fmt: skip
    assert sealed.returncode == 0, sealed.stderr
    value = sealed.stdout.strip()
    assert [(s.kind, s.kid) for s in m1.parse(value).stanzas][1] == ("aws", arn)
    assert crypto_calls(aws_kms.requests, WRAPS) == 1  # one Encrypt, by the CLI

    kubeconfig = str(kube_api.write_kubeconfig(tmp_path / "kubeconfig"))
    base = {**aws_env, "KeyManagement__Provider": "AwsKms", "KUBECONFIG": kubeconfig}
    token = kube_api.issue_token(NS, SA)
    with (
        kamus_serve(
            "decryptor", {**base, "KeyManagement__RecipientKeys": arn}, tmp_path / "listed.log"
        ) as listed,
        kamus_serve("decryptor", base, tmp_path / "unlisted.log") as unlisted,
        kamus_serve(
            "decryptor", {**eu.env(), "KUBECONFIG": kubeconfig}, tmp_path / "eu.log"
        ) as aes,
    ):
        aws_kms.requests.clear()
        for _ in range(5):
            opened = decrypt(listed.url, value, token)
            assert opened.status_code == 200, opened.text
            assert opened.text == SECRET
        assert crypto_calls(aws_kms.requests) == 1
        other = decrypt(listed.url, value, kube_api.issue_token(NS, "web"))
        assert other.status_code == 400  # the identity tag: refused before the KMS

        aws_kms.requests.clear()
        refused = decrypt(unlisted.url, value, token)
        assert refused.status_code == 400
        assert "no aws stanza for a key of this Kamus" in refused.text
        assert crypto_calls(aws_kms.requests) == 0

        assert decrypt(aes.url, value, token).text == SECRET
        assert crypto_calls(aws_kms.requests) == 0


def test_a_kms_recipient_the_cli_cannot_use_is_a_usage_error(tmp_path: Path) -> None:
    bad = run_kamus("encrypt", "-s", "x", "-a", SA, "-n", NS, "--offline",
                    "--recipient", "aws:not-an-arn")  # fmt: skip
    assert bad.returncode == 2
    assert "is not a full" in bad.stderr or "not a full key name" in bad.stderr
    unknown = run_kamus("encrypt", "-s", "x", "-a", SA, "-n", NS, "--offline",
                        "--recipient", "pgp:ABCD")  # fmt: skip
    assert unknown.returncode == 2
    assert "is not age:age1…, aws:<key ARN>" in unknown.stderr


def test_an_age_identity_pasted_for_a_recipient_is_refused_and_never_repeated(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """The break-glass key's secret half, where its recipient belongs: on the command line,
    with or without the age: prefix, and in the encryptor's KeyManagement__ExtraRecipients."""
    identity = str(x25519.Identity.generate())
    leaks.register(identity, identity.removeprefix("AGE-SECRET-KEY-"))
    for given in (f"age:{identity}", identity):
        pasted = run_kamus("encrypt", "-s", "x", "-a", SA, "-n", NS, "--offline",
                           "--recipient", given)  # fmt: skip
        assert pasted.returncode == 2
        assert "this is an age identity (AGE-SECRET-KEY-1…), the secret half" in pasted.stderr
        assert not leaks.found_in(pasted.stdout + pasted.stderr)
    with pytest.raises(ConfigurationError) as raised:
        build_key_manager(make_settings(KeyManagement__ExtraRecipients=f"age:{identity}"))
    assert "age-keygen -y" in str(raised.value)
    assert not leaks.found_in(str(raised.value))


def test_an_operators_break_glass_key_goes_into_every_new_value_and_can_be_required(
    clusters: dict[str, Cluster], dr: BreakGlass, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """``KeyManagement__ExtraRecipients`` puts the break-glass stanza into the encryptor's values
    (and a decryptor's rewraps of older formats), so ``Decryptor__RequiredRecipients`` can hold
    for them; a value without it is refused on decrypt and by ``kamus verify``, until
    ``kamus recipients add`` through the decryptor gives it one."""
    eu = clusters["eu"]
    dr_name = f"age:{dr.recipient}"
    env = {
        **eu.env(),
        "KeyManagement__ExtraRecipients": dr_name,
        "Decryptor__RequiredRecipients": dr_name,
        "Decryptor__AllowedRecipients": dr_name,
    }
    user = "ops@example.com"
    kube_api.grant(user, group="soluto.com", resource="kamussecrets", verb="update", namespace=NS)
    token_file = tmp_path / "token"
    token_file.write_text(kube_api.issue_user_token(user))
    with deploy(kube_api, tmp_path, env) as kamus:
        online = kamus.encrypt(SECRET, NS, SA)
        assert online.status_code == 200, online.text
        value = online.text
        assert m1.parse(value).kinds == ["age", "hpke-x25519"]
        token = kube_api.issue_token(NS, SA)
        assert kamus.decrypt(value, token).text == SECRET
        out = tmp_path / "online.txt"
        recovered = run_kamus("recover", "-i", str(dr.identity_file), "-o", str(out), stdin=value)
        assert recovered.returncode == 0, recovered.stderr
        assert out.read_text() == SECRET

        without = seal([eu])  # sealed offline, with no break-glass stanza
        refused = kamus.decrypt(without, token)
        assert refused.status_code == 400
        assert "refuses values without a recipient matching" in refused.text
        assert "Decryptor__RequiredRecipients" in refused.text

        tree = tmp_path / "tree"
        tree.mkdir()
        manifest = tree / "db.yaml"
        manifest.write_text(
            "apiVersion: soluto.com/v1alpha2\nkind: KamusSecret\nmetadata: {name: db, "
            f"namespace: team-a}}\nserviceAccount: app\nstringData: {{password: {without}}}\n"
        )
        connection = ["-u", kamus.decryptor.url, "--allow-insecure-url", "--allow-token-over-http",
                      "--token-file", str(token_file)]  # fmt: skip
        verify = run_kamus("verify", str(tree), *connection)
        assert verify.returncode == 1
        assert "Decryptor__RequiredRecipients" in verify.stdout

        added = run_kamus("recipients", "add", str(tree), "--recipient", dr_name, *connection,
                          "--in-place")  # fmt: skip
        assert added.returncode == 0, added.stdout + added.stderr
        fixed = yaml.safe_load(manifest.read_text())["stringData"]["password"]
        assert kamus.decrypt(fixed, token).text == SECRET
        assert run_kamus("verify", str(tree), *connection).returncode == 0


def test_recover_leaves_out_other_documents_and_keeps_plain_settings(
    clusters: dict[str, Cluster], dr: BreakGlass, tmp_path: Path
) -> None:
    value = seal([clusters["eu"]], "--recipient", f"age:{dr.recipient}")
    stream = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: env\n  namespace: team-a\n"
        "  annotations: {kamus.soluto.com/service-account: app}\n"
        f"data:\n  password: {value}\n  LOG_LEVEL: debug\n"
    )
    recovered = run_kamus("recover", "-i", str(dr.identity_file), stdin=stream)
    assert recovered.returncode == 0, recovered.stderr
    assert "document 1: left out: not a KamusSecret or a ConfigMap" in recovered.stderr
    [config] = list(yaml.safe_load_all(recovered.stdout))
    assert config["data"] == {"password": SECRET, "LOG_LEVEL": "debug"}
