"""``kamus rewrap``'s file layer (kamus/cli/tree.py): which values of a tree of manifests are
ciphertexts and whose, and splicing new ciphertexts in with no other byte changed.

The ciphertexts here are fakes of the right shape; nothing is encrypted. The golden tree is
tests/golden/rewrap/before, and tests/golden/rewrap/after is the same tree once every value found
in it is replaced by :func:`new_ciphertext` of its file and key. Line-ending and BOM variants are
made here from those LF files, so that git cannot change what is tested.
"""

import base64
import difflib
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kamus.cli import tree
from kamus.cli.client import UsageError
from kamus.cli.tree import FileScan, Scan, looks_like_ciphertext, scan

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "rewrap"
BEFORE, AFTER = GOLDEN / "before", GOLDEN / "after"
RAW = Path("files", "db-password.kamus")
SKIPPED_TEMPLATE = Path("chart", "templates", "kamussecret.yaml")
MARKER = "PLAINTEXT-hunter2-MARKER"  # a "plaintext" that must never be echoed


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def new_ciphertext(seed: str) -> str:
    """An ``m1``-shaped value, the same for the same seed: a JSON header (commitment, identity
    tag, one stanza), a MAC and a payload."""

    def digest(label: str, size: int = 32) -> bytes:
        return hashlib.sha256(f"{label}:{seed}".encode()).digest()[:size]

    header = {
        "c": b64url(digest("c")),
        "id": digest("id", 4).hex(),
        "s": [{"k": "hpke", "kid": "test-cluster-1", "xk": b64url(digest("xk"))}],
    }
    header_text = json.dumps(header, separators=(",", ":")).encode()
    payload = digest("nonce", 12) + digest("ct", 20) + digest("tag", 16)
    return f"kamus$m1${b64url(header_text)}${b64url(digest('mac'))}${b64url(payload)}"


def old_ciphertext(tag: str) -> str:
    return f"kamus$a1$AAAAAAAA${b64url(tag.encode())}$c2VhbGVkLWJ5LXRlc3Q"


def files_of(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def golden_scan(root: Path) -> Scan:
    return scan([str(root), str(root / RAW)], namespace="team-a", service_account="app")


def golden_replacements(found: FileScan, root: Path) -> dict[int, str]:
    rel = found.path.relative_to(root).as_posix()
    return {value.key: new_ciphertext(f"{rel}#{value.key}") for value in found.values}


def only(result: Scan) -> FileScan:
    [found] = result.files
    return found


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def kamus_secret(body: str, *, namespace: str = "team-a", sa: str = "app") -> str:
    ns = f"  namespace: {namespace}\n" if namespace else ""
    account = f"serviceAccount: {sa}\n" if sa else ""
    return (
        "apiVersion: soluto.com/v1alpha2\nkind: KamusSecret\n"
        f"metadata:\n  name: db\n{ns}{account}{body}"
    )


def configmap(body: str, *, annotation: str | None = None, namespace: str = "team-a") -> str:
    annotations = (
        f"  annotations:\n    kamus.soluto.com/service-account: {annotation}\n"
        if annotation is not None
        else ""
    )
    ns = f"  namespace: {namespace}\n" if namespace else ""
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n{ns}{annotations}{body}"


def rewrite_all(found: FileScan, new: str) -> bytes:
    return found.rewritten({value.key: new for value in found.values})


# --- the golden tree ------------------------------------------------------------------------


def test_the_golden_tree_is_found_where_and_as_whom() -> None:
    result = golden_scan(BEFORE)
    found = [
        f"{v.file.name}:{v.line} {v.where} as {v.identity}" for f in result.files for v in f.values
    ]
    assert found == [
        "app-config.yaml:10 ConfigMap team-a/app-config: data.LEGACY_TOKEN as team-a:app",
        "app-secrets.yaml:10 ConfigMap team-a/app-secrets: data.api-key as team-a:app",
        "app-secrets.yaml:12 ConfigMap team-a/app-secrets: data.db-password as team-a:app",
        "api.json:10 KamusSecret team-a/webhook: stringData.signing-key as team-a:webhook",
        "db.yaml:14 KamusSecret team-a/db: stringData.username as team-a:db",
        "db.yaml:15 KamusSecret team-a/db: stringData.password as team-a:db",
        "db.yaml:16 KamusSecret team-a/db: stringData.url as team-a:db",
        "db.yaml:19 KamusSecret team-a/db: stringData.ca.crt as team-a:db",
        "db.yaml:23 KamusSecret team-a/db: data.token as team-a:db",
        "db.yaml:33 KamusSecret team-a/db-replica: data.password as team-a:db",
        "db.yaml:34 KamusSecret team-a/db-replica: data.replica.crt as team-a:db",
        "db.yaml:41 KamusSecret team-a/api: stringData.key as team-a:api",
        "db.yaml:41 KamusSecret team-a/api: stringData.id as team-a:api",
        "db-password.kamus:1 raw file as team-a:app",  # named after the directory
    ]
    assert [f.problems for f in result.files] == [[]] * len(result.files)
    assert [(s.file.relative_to(BEFORE), s.line, s.reason) for s in result.skipped] == [
        (SKIPPED_TEMPLATE, 1, "not valid YAML")
    ]
    ca = next(v for f in result.files for v in f.values if v.where.endswith("ca.crt"))
    assert ca.ciphertext == "AAAAAAAAAAAAAAAAAAAAAA==:Y2EtY2VydGlmaWNhdGUtY2lwaGVydGV4dA=="


def test_the_golden_tree_is_rewritten_byte_for_byte(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(BEFORE, root)
    result = golden_scan(root)
    for found in result.files:
        found.write(golden_replacements(found, root))
    assert files_of(root) == files_of(AFTER)
    assert set(files_of(BEFORE)) == set(files_of(AFTER))


def test_the_diff_touches_only_the_lines_of_the_replaced_values() -> None:
    result = golden_scan(BEFORE)
    changed_files = set()
    for found in result.files:
        rel = found.path.relative_to(BEFORE)
        before = (BEFORE / rel).read_text().splitlines()
        after = (AFTER / rel).read_text().splitlines()
        assert len(before) == len(after)
        allowed: set[int] = set()
        for value in found.values:
            # From the scalar's first line to the line that holds its text (a block's content).
            last = next(
                n for n in range(value.line, len(before) + 1) if value.ciphertext in before[n - 1]
            )
            allowed.update(range(value.line, last + 1))
        changed = {n for n, (a, b) in enumerate(zip(before, after, strict=True), 1) if a != b}
        assert changed, rel
        assert changed <= allowed, rel
        matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
        for op, i1, i2, _, _ in matcher.get_opcodes():
            assert op in ("equal", "replace")
            assert op == "equal" or set(range(i1 + 1, i2 + 1)) <= allowed
        changed_files.add(rel)
    unchanged = set(files_of(BEFORE)) - changed_files
    assert unchanged == {
        Path("deployment.yaml"),
        Path("kustomization.yaml"),
        SKIPPED_TEMPLATE,
    }
    for rel in unchanged:
        assert (BEFORE / rel).read_bytes() == (AFTER / rel).read_bytes()


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def bom(data: bytes) -> bytes:
    return b"\xef\xbb\xbf" + data


def no_final_newline(data: bytes) -> bytes:
    return data.rstrip(b"\n")


@pytest.mark.parametrize(
    "variant",
    [crlf, bom, no_final_newline, lambda d: bom(crlf(no_final_newline(d)))],
    ids=["crlf", "bom", "no-final-newline", "all-three"],
)
def test_line_endings_a_bom_and_a_missing_final_newline_are_kept(
    tmp_path: Path, variant: Callable[[bytes], bytes]
) -> None:
    root = tmp_path / "repo"
    for rel, data in files_of(BEFORE).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(variant(data))
    result = golden_scan(root)
    assert len(result.files) == 5
    original = golden_scan(BEFORE)
    for found in result.files:
        rel = found.path.relative_to(root)
        [same] = [f for f in original.files if f.path.relative_to(BEFORE) == rel]
        assert [(v.line, v.where, v.ciphertext) for v in found.values] == [
            (v.line, v.where, v.ciphertext) for v in same.values
        ]
        expected = variant((AFTER / rel).read_bytes())
        assert found.rewritten(golden_replacements(found, root)) == expected, rel


# --- what is found, and as whom -------------------------------------------------------------


def test_namespace_option_wins_over_metadata(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.yaml",
        kamus_secret(f"data:\n  a: {old_ciphertext('a')}\n")
        + "---\n"
        + configmap(f"data:\n  b: {old_ciphertext('b')}\n", annotation="web"),
    )
    assert [v.identity for v in only(scan([str(path)])).values] == ["team-a:app", "team-a:web"]
    overlaid = only(scan([str(path)], namespace="prod"))
    assert [(v.identity, v.where) for v in overlaid.values] == [
        ("prod:app", "KamusSecret prod/db: data.a"),
        ("prod:web", "ConfigMap prod/app: data.b"),
    ]


def test_a_configmaps_annotation_wins_and_the_option_fills_in(tmp_path: Path) -> None:
    annotated = write(
        tmp_path / "a.yaml", configmap("data:\n  k: CiQAbWFkZS11cA==\n", annotation="web")
    )
    plain = write(
        tmp_path / "p.yaml",
        configmap(f"data:\n  k: {old_ciphertext('k')}\n  level: info\n  bare: CiQAbWFkZS11cA==\n"),
    )
    # The annotation makes every value a ciphertext, bare base64 (GCP, Azure) included.
    assert [v.identity for v in only(scan([str(annotated)], service_account="x")).values] == [
        "team-a:web"
    ]
    # Without it, only values of a ciphertext's shape, as --service-account.
    found = only(scan([str(plain)], service_account="worker"))
    assert [(v.where, v.identity) for v in found.values] == [
        ("ConfigMap team-a/app: data.k", "team-a:worker")
    ]
    [problem] = only(scan([str(plain)])).problems
    assert (problem.line, problem.where) == (7, "ConfigMap team-a/app: data.k")
    assert "kamus.soluto.com/service-account" in problem.reason
    assert "--service-account" in problem.reason


def test_missing_identities_are_problems_saying_what_to_set(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.yaml",
        kamus_secret(f"stringData:\n  a: {old_ciphertext('a')}\n", namespace="", sa="")
        + "---\n"
        + kamus_secret(f"stringData:\n  b: {old_ciphertext('b')}\n", sa="")
        + "---\n"
        + configmap("data:\n  c: CiQAbWFkZS11cA==\n", annotation="", namespace=""),
    )
    found = only(scan([str(path)]))
    assert found.values == []
    reasons = {p.where: p.reason for p in found.problems}
    assert set(reasons) == {
        "KamusSecret db: stringData.a",
        "KamusSecret team-a/db: stringData.b",
        "ConfigMap app: data.c",
    }
    assert "metadata.namespace" in reasons["KamusSecret db: stringData.a"]
    assert "--namespace" in reasons["KamusSecret db: stringData.a"]
    assert "serviceAccount" in reasons["KamusSecret db: stringData.a"]
    assert "namespace" not in reasons["KamusSecret team-a/db: stringData.b"]
    assert "must name a service account" in reasons["ConfigMap app: data.c"]
    # --namespace fills in a missing namespace, not a missing serviceAccount.
    with_ns = only(scan([str(path)], namespace="team-b", service_account="app"))
    assert len(with_ns.problems) == 3


def test_other_documents_are_ignored(tmp_path: Path) -> None:
    ct = old_ciphertext("x")
    path = write(
        tmp_path / "other.yaml",
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData:\n  a: {ct}\n"
        f"---\napiVersion: soluto.com/v1\nkind: KamusSecret\nserviceAccount: a\ndata: {{a: {ct}}}\n"
        f"---\n- {ct}\n---\n{ct}\n---\njust: some config\ndata: {{a: {ct}}}\n---\n",
    )
    assert scan([str(path)], namespace="a", service_account="b").files == []


def test_v1alpha1_and_merge_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.yaml",
        kamus_secret(
            f"x-common: &common\n  shared: {old_ciphertext('shared')}\n"
            f"  own: {old_ciphertext('shadowed')}\n"
            f"stringData:\n  <<: *common\n  own: {old_ciphertext('own')}\n"
        ).replace("v1alpha2", "v1alpha1"),
    )
    found = only(scan([str(path)]))
    assert [(v.line, v.where, v.ciphertext) for v in found.values] == [
        (12, "KamusSecret team-a/db: stringData.own", old_ciphertext("own")),
        (8, "KamusSecret team-a/db: stringData.shared", old_ciphertext("shared")),
    ]


def test_values_that_are_not_strings_are_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.yaml",
        kamus_secret(
            f"stringData:\n  nested:\n    deeper: {MARKER}\n  listed: [{MARKER}]\n"
            f"  number: 12345678\n  empty: ''\n  none:\n  fine: {old_ciphertext('fine')}\n"
            f"data: [{MARKER}]\n"
        )
        + "---\n"
        + configmap(f"data:\n  port: 8080\n  nested: {{a: {MARKER}}}\n", annotation=""),
    )
    found = only(scan([str(path)], service_account="app"))
    assert [v.where for v in found.values] == ["KamusSecret team-a/db: stringData.fine"]
    assert [(p.line, p.where) for p in found.problems] == [
        (9, "KamusSecret team-a/db: stringData.nested"),
        (10, "KamusSecret team-a/db: stringData.listed"),
        (11, "KamusSecret team-a/db: stringData.number"),
        (15, "KamusSecret team-a/db: data"),
        (25, "ConfigMap team-a/app: data.port"),
        (26, "ConfigMap team-a/app: data.nested"),
    ]


# --- raw files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        old_ciphertext("raw") + "\n",
        "\n  env$AQIDAHhZmFrZQ==$AAAAAAAAAAAAAAAAAAAAAA==:Y3Q=\r\n\r\n",
        "AAAAAAAAAAAAAAAAAAAAAA==:bGVnYWN5",
        base64.b64encode(b"k" * 48).decode() + "\n",  # GCP/Azure: bare base64
    ],
)
def test_a_raw_file_given_by_name_is_one_value(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / "password", content)
    found = only(scan([str(path)], namespace="team-a", service_account="app"))
    [value] = found.values
    assert (value.where, value.identity, value.ciphertext) == (
        "raw file",
        "team-a:app",
        content.strip(),
    )
    assert value.line == content.count("\n", 0, content.index(content.strip())) + 1
    new = new_ciphertext("raw")
    assert found.rewritten({0: new}) == content.replace(content.strip(), new).encode()


def test_a_raw_file_needs_both_options_and_is_not_found_by_walking(tmp_path: Path) -> None:
    path = write(tmp_path / "conf" / "password.yaml", old_ciphertext("raw"))
    [problem] = only(scan([str(path)], namespace="team-a")).problems
    assert (problem.where, problem.line) == ("raw file", 1)
    assert "--service-account" in problem.reason
    assert "--namespace" not in problem.reason
    assert scan([str(tmp_path)], namespace="team-a", service_account="app").files == []


def test_files_given_by_name_that_are_not_yaml_are_problems(tmp_path: Path) -> None:
    bad = write(tmp_path / "notes.txt", f"key: [{MARKER}\nmore: x\n")
    short = write(tmp_path / "short.bin", "aGVsbG8=")  # base64, but not of a ciphertext's size
    word = write(tmp_path / "word.txt", f"{MARKER}\n")  # YAML: a string that is no ciphertext
    result = scan([str(bad), str(short), str(word)], namespace="a", service_account="b")
    [found] = result.files
    assert found.path == bad
    assert [(p.line, p.where, p.reason) for p in found.problems] == [
        (2, "file", "not valid YAML nor a raw ciphertext")
    ]
    found.write({})  # nothing to replace: not even read again
    with pytest.raises(ValueError, match="no value with key"):
        found.rewritten({0: new_ciphertext("x")})


# --- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "old_value", "suffix"),
    [
        ("|-\n    {}\n", "{}", ""),
        ("|\n    {}\n", "{}", "\n"),
        (">\n    {}\n", "{}", "\n"),
        ("|+\n    {}\n\n\n", "{}", "\n\n\n"),
        (">-  # a comment\n\n    {}\n", "\n{}", ""),
        ("|2-\n      {}\n", "  {}", ""),
        ("|\n    {}", "{}", ""),  # no final newline: clip keeps none
    ],
)
def test_block_scalars_stay_blocks(tmp_path: Path, block: str, old_value: str, suffix: str) -> None:
    ct = old_ciphertext("block")
    text = kamus_secret(f"stringData:\n  a: {block.format(ct)}") + (
        "after: x\n" if block.endswith("\n") else ""
    )
    found = only(scan([str(write(tmp_path / "s.yaml", text))]))
    [value] = found.values
    assert value.ciphertext == old_value.format(ct)
    new = new_ciphertext("block")
    out = found.rewritten({0: new}).decode()
    header = block.split("\n")[0].replace("2", "")
    content = next(line for line in block.split("\n") if "{}" in line)
    indent = content[: len(content) - len(content.lstrip())]  # the old first line's
    assert f"  a: {header}\n{indent}{new}" in out
    assert yaml.safe_load(out)["stringData"]["a"] == new + suffix


def test_values_that_cannot_be_plain_are_double_quoted(tmp_path: Path) -> None:
    ct = old_ciphertext("x")
    text = kamus_secret(
        f"stringData:\n  plain: {ct}  # c\n  single: '{ct}'\n  block: |\n    {ct}\n"
        f"data: {{flow: {ct}, other: ''}}\n"
    )
    found = only(scan([str(write(tmp_path / "s.yaml", text))]))
    for new in [
        "true",
        "123",
        "null",
        "- a",
        "#x",
        "a: b",
        "a #b",
        "x,y",
        "[a]",
        "",
        " a",
        "é\x00\n",
    ]:
        out = rewrite_all(found, new).decode()
        loaded = yaml.safe_load(out)
        assert loaded["stringData"] == {"plain": new, "single": new, "block": new + "\n"}, new
        assert loaded["data"] == {"flow": new, "other": ""}, new
        assert "# c" in out
    # A comma ends a plain scalar in a flow mapping only.
    out = rewrite_all(found, "kamus$m1$a,b").decode()
    assert "  plain: kamus$m1$a,b  # c" in out
    assert "data: {flow: \"kamus$m1$a,b\", other: ''}" in out
    # A quote inside single quotes is doubled.
    assert "  single: 'it''s'" in rewrite_all(found, "it's").decode()


def test_a_multi_line_plain_scalar_becomes_one_line(tmp_path: Path) -> None:
    text = kamus_secret(
        "stringData:\n  a:\n    kamus$a1$AAAA$part\n    two  # c\n  b: 'one\n    two'\n"
    )
    found = only(scan([str(write(tmp_path / "s.yaml", text))]))
    assert [v.ciphertext for v in found.values] == ["kamus$a1$AAAA$part two", "one two"]
    out = found.rewritten({0: "kamus$m1$A", 1: "kamus$m1$B"}).decode()
    assert out.endswith("stringData:\n  a:\n    kamus$m1$A  # c\n  b: 'kamus$m1$B'\n")


def test_aliases_are_found_once_at_their_anchor(tmp_path: Path) -> None:
    ct = old_ciphertext("anchored")
    text = kamus_secret(
        f"x-shared: &shared {ct}\nstringData:\n  a: *shared\n  b: &b !!str {ct}\n  c: *b\n"
    )
    found = only(scan([str(write(tmp_path / "s.yaml", text))]))
    assert [(v.line, v.where) for v in found.values] == [
        (7, "KamusSecret team-a/db: stringData.a"),
        (10, "KamusSecret team-a/db: stringData.b"),
    ]
    out = found.rewritten({0: "kamus$m1$A", 1: "kamus$m1$B"}).decode()
    assert "x-shared: &shared kamus$m1$A\n" in out
    assert "  b: &b !!str kamus$m1$B\n" in out
    loaded = yaml.safe_load(out)
    assert loaded["stringData"] == {"a": "kamus$m1$A", "b": "kamus$m1$B", "c": "kamus$m1$B"}


def test_flow_mappings_and_json(tmp_path: Path) -> None:
    ct = old_ciphertext("flow")
    path = write(
        tmp_path / "s.json",
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "app", "namespace": "team-a"},
                "data": {"a": ct, "b": "plain"},
            }
        ),
    )
    found = only(scan([str(tmp_path)], service_account="app"))
    assert found.path == path
    assert found.values[0].line == 1
    out = found.rewritten({0: 'kamus$m1$"\x01\u2028'})
    assert json.loads(out)["data"] == {"a": 'kamus$m1$"\x01\u2028', "b": "plain"}
    assert out == path.read_bytes().replace(ct.encode(), b'kamus$m1$\\"\\u0001\\u2028')


# --- files and directories ------------------------------------------------------------------


def test_walking_skips_hidden_directories_symlinks_and_other_names(tmp_path: Path) -> None:
    secret = kamus_secret(f"data:\n  a: {old_ciphertext('a')}\n")
    write(tmp_path / "repo" / "b" / "s.YML", secret)
    write(tmp_path / "repo" / "a.yaml", secret)
    write(tmp_path / "repo" / "notes.md", secret)
    write(tmp_path / "repo" / ".git" / "s.yaml", secret)
    write(tmp_path / "repo" / "b" / ".cache" / "s.yaml", secret)
    write(tmp_path / "elsewhere" / "s.yaml", secret)
    (tmp_path / "repo" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "repo" / "loop").symlink_to(tmp_path / "repo", target_is_directory=True)
    result = scan([str(tmp_path / "repo")])
    assert [f.path.relative_to(tmp_path) for f in result.files] == [
        Path("repo/a.yaml"),
        Path("repo/b/s.YML"),
    ]
    # Named, a file is read whatever its name, and once however often it is reached.
    repo = tmp_path / "repo"
    named = scan([str(repo / "notes.md"), str(repo), str(repo / "a.yaml")])
    assert [f.path.name for f in named.files] == ["notes.md", "a.yaml", "s.YML"]


def test_a_named_symlinked_directory_is_walked_and_a_missing_path_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "real" / "s.yaml", kamus_secret(f"data:\n  a: {old_ciphertext('a')}\n"))
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    assert len(scan([str(tmp_path / "link")]).files) == 1
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"nowhere\.yaml: no such file or directory"):
        scan(["nowhere.yaml"])


def test_unreadable_files_are_skipped_when_walked(tmp_path: Path) -> None:
    write(tmp_path / "helm.yaml", "{{- if .Values.x }}\nkey: {{ .Values.y }}\n")
    (tmp_path / "latin1.yaml").write_bytes(b"a: b\nc: caf\xe9\n")
    write(tmp_path / "empty.yaml", "")
    result = scan([str(tmp_path)])
    assert result.files == []
    assert [(s.file.name, s.line, s.reason) for s in result.skipped] == [
        ("helm.yaml", 1, "not valid YAML"),
        ("latin1.yaml", 2, "not UTF-8 text"),
    ]


def test_no_message_or_repr_holds_a_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lonely = f"stringData:\n  a: {MARKER}\n  b: {{c: {MARKER}}}\n  d: [{MARKER}]\n"
    write(tmp_path / "s.yaml", kamus_secret(lonely, namespace="", sa=""))
    write(tmp_path / "c.yaml", configmap(f"data:\n  a: kamus$x9${MARKER}\n"))
    write(tmp_path / "bad.yaml", f"a: {MARKER}\nb: [{MARKER}\n")
    (tmp_path / "bin.yaml").write_bytes(f"a: {MARKER}\xe9".encode("latin-1"))
    write(tmp_path / "plain", MARKER)
    write(tmp_path / "raw", old_ciphertext("raw"))
    write(tmp_path / "ok.yaml", kamus_secret(f"stringData:\n  a: kamus$a1${MARKER}\n"))
    named = [str(tmp_path / name) for name in ("plain", "raw", "bad.yaml")]
    result = scan([str(tmp_path), *named])
    texts = [repr(result), str(result)]
    texts += [str(p) for f in result.files for p in f.problems]
    texts += [str(s) for s in result.skipped]
    assert [s.file.name for s in result.skipped] == ["bin.yaml"]
    assert [(f.path.name, p.where) for f in result.files for p in f.problems] == [
        ("bad.yaml", "file"),
        ("c.yaml", "ConfigMap team-a/app: data.a"),
        ("s.yaml", "KamusSecret db: stringData.a"),
        ("s.yaml", "KamusSecret db: stringData.b"),
        ("s.yaml", "KamusSecret db: stringData.d"),
        ("raw", "raw file"),
    ]
    [ok] = [f for f in result.files if f.path.name == "ok.yaml"]
    raw = only(scan([str(tmp_path / "raw")], namespace="a", service_account="b"))
    assert ok.values[0].ciphertext.endswith(MARKER)  # kept, but never shown
    with pytest.raises(ValueError, match="no value with key") as refused:
        ok.rewritten({7: MARKER})
    texts.append(str(refused.value))
    with pytest.raises(RuntimeError, match="raw") as failed:
        raw.rewritten({0: f"{MARKER}\n"})
    texts.append(str(failed.value))
    monkeypatch.setattr(tree, "_render", lambda site, new: f"{new}\nbad: [{MARKER}")
    with pytest.raises(RuntimeError, match="not be valid YAML") as failed:
        ok.rewritten({0: MARKER})
    texts.append(str(failed.value))
    assert all(MARKER not in text for text in texts)
    assert all(old_ciphertext("raw") not in text for text in texts)


# --- the self-check and writing -------------------------------------------------------------


def test_the_self_check_catches_a_splice_that_changes_another_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "c.yaml",
        configmap(f"data:\n  other: keep\n  key: {old_ciphertext('a')}\n"),
    )
    found = only(scan([str(path)], service_account="app"))
    assert [v.where for v in found.values] == ["ConfigMap team-a/app: data.key"]
    before = path.read_bytes()
    real_render = tree._render
    # The new value right, then a second `other`, which a loader would take over the first.
    monkeypatch.setattr(tree, "_render", lambda site, new: f"{new}\n  other: changed")
    with pytest.raises(RuntimeError, match=r"c\.yaml: .*more than the replaced values"):
        found.write({0: new_ciphertext("a")})
    monkeypatch.setattr(tree, "_render", lambda site, new: real_render(site, new + "-wrong"))
    with pytest.raises(RuntimeError, match="more than the replaced values"):
        found.rewritten({0: new_ciphertext("a")})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.yaml"]


def test_replacing_a_key_that_was_not_found_is_refused() -> None:
    found = only(scan([str(BEFORE / "configmaps" / "app-config.yaml")], service_account="app"))
    with pytest.raises(ValueError, match=r"app-config\.yaml: no value with key \[1\]"):
        found.rewritten({1: new_ciphertext("x")})
    assert found.rewritten({}) == (BEFORE / "configmaps" / "app-config.yaml").read_bytes()


@pytest.mark.parametrize("failing", ["replace", "fsync", "chmod"])
@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_original_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, error: BaseException
) -> None:
    path = write(tmp_path / "s.yaml", kamus_secret(f"data:\n  a: {old_ciphertext('a')}\n"))
    before = path.read_bytes()
    found = only(scan([str(path)]))

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(type(error)):
        found.write({0: new_ciphertext("a")})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.yaml"]


def test_a_write_keeps_the_mode_and_a_symlink(tmp_path: Path) -> None:
    real = write(tmp_path / "real" / "s.yaml", kamus_secret(f"data:\n  a: {old_ciphertext('a')}\n"))
    real.chmod(0o640)
    link = tmp_path / "s.yaml"
    link.symlink_to(real)
    found = only(scan([str(link)]))
    found.write({0: new_ciphertext("a")})
    assert link.is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert yaml.safe_load(real.read_text())["data"] == {"a": new_ciphertext("a")}
    assert sorted(os.listdir(real.parent)) == ["s.yaml"]


def test_a_file_changed_since_the_scan_is_not_written(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", kamus_secret(f"data:\n  a: {old_ciphertext('a')}\n"))
    found = only(scan([str(path)]))
    path.write_text(path.read_text() + "# edited meanwhile\n")
    edited = path.read_bytes()
    with pytest.raises(RuntimeError, match="changed since it was scanned"):
        found.write({0: new_ciphertext("a")})
    assert path.read_bytes() == edited


def test_shapes_that_look_like_ciphertexts() -> None:
    for text in (
        old_ciphertext("x"),
        new_ciphertext("x"),
        "kamus$e1$a$b$c",
        "env$AQIDAHhZmFrZQ==$AAAAAAAAAAAAAAAAAAAAAA==:Y3Q=",
        "AAAAAAAAAAAAAAAAAAAAAA==:Y3Q=",
    ):
        assert looks_like_ciphertext(text), text
    for text in (
        "",
        "kamus$",
        "kamus$a1$with space",
        "CiQAbWFkZS11cC1nY3Ata21zLWNpcGhlcnRleHQ=",  # bare base64: could be anything
        "AAAAAAAAAAAAAAAAAAAAA==:Y3Q=",  # a 21-character IV
        "redis://cache:6379",
        "hello: world",
        "env$",
    ):
        assert not looks_like_ciphertext(text), text


# --- property: any mix of styles and comments -----------------------------------------------

KEYS = st.from_regex(r"k[a-z0-9.-]{0,8}", fullmatch=True)  # never a YAML 1.1 boolean
COMMENT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
B64 = st.binary(min_size=1, max_size=24).map(lambda b: base64.b64encode(b).decode())
OLD = st.one_of(
    st.binary(min_size=1, max_size=24).map(lambda b: f"kamus$a1$AAAAAAAA${b64url(b)}"),
    B64.map(lambda b: f"AAAAAAAAAAAAAAAAAAAAAA==:{b}"),
    B64.map(lambda b: f"env$AQIDAHhZmFrZQ==$AAAAAAAAAAAAAAAAAAAAAA==:{b}"),
)
NEW = st.one_of(OLD, st.binary(min_size=1, max_size=48).map(lambda b: f"kamus$m1${b64url(b)}"))
ENTRY = st.tuples(
    OLD, st.sampled_from(["plain", "single", "double"]), st.none() | COMMENT, st.none() | COMMENT
)


def styled(value: str, style: str) -> str:
    return {"plain": value, "single": f"'{value}'", "double": f'"{value}"'}[style]


@settings(
    max_examples=60, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(entries=st.dictionaries(KEYS, ENTRY, min_size=1, max_size=8), data=st.data())
def test_any_styles_and_comments_rewrap_to_exactly_the_new_values(
    tmp_path: Path, entries: dict[str, tuple[str, str, str | None, str | None]], data: st.DataObject
) -> None:
    lines = ["# generated", *configmap("data:", annotation="app").splitlines()]
    for key, (value, style, above, inline) in entries.items():
        if above is not None:
            lines.append(f"  #{above}")
        lines.append(f"  {key}: {styled(value, style)}" + (f"  #{inline}" if inline else ""))
    path = tmp_path / "generated.yaml"
    path.write_text("\n".join(lines) + "\n")
    found = only(scan([str(path)]))
    assert [v.ciphertext for v in found.values] == [value for value, *_ in entries.values()]
    new = {v.key: data.draw(NEW) for v in found.values}
    out = found.rewritten(new).decode().split("\n")
    assert yaml.safe_load("\n".join(out))["data"] == dict(zip(entries, new.values(), strict=True))
    assert len(out) == len(lines) + 1
    for old_line, new_line in zip(lines, out, strict=False):
        if old_line.lstrip().startswith("#"):
            assert new_line == old_line
        assert new_line.partition("  #")[2] == old_line.partition("  #")[2]
