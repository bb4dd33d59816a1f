"""The file layer of ``kamus rewrap``: find every Kamus ciphertext in a tree of Kubernetes YAML,
then splice new ones in place of the old, changing no other byte of any file.

Loading and dumping YAML would reflow the files (comments, quoting, key order, line endings), so
a rewrite here is a splice: the composer gives each scalar's character span and style, and only
those spans are replaced, each rendered in its old style where YAML allows it. Before a file is
written its new text is parsed again and must hold the same data but for the new values.

Values are never quoted in an error, a ``repr`` or a report: a plaintext may sit in a file by
mistake, where a ciphertext belongs. Errors name the file, the line and the YAML path.
"""

import base64
import binascii
import bisect
import contextlib
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from kamus.cli.client import UsageError
from kamus.cli.inputs import line_and_column
from kamus.server.identity import SERVICE_ACCOUNT_ANNOTATION

SUFFIXES = (".yaml", ".yml", ".json")
KAMUS_SECRET_API_VERSIONS = ("soluto.com/v1alpha2", "soluto.com/v1alpha1")

_BOM = b"\xef\xbb\xbf"
_ASCII_SPACE = " \t\n\r\x0b\x0c"
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")  # what YAML (and ruamel) count as line breaks
_BLOCK_HEADER = re.compile(r"([|>])([-+1-9]*)([^\r\n\x85\u2028\u2029]*)")

# The shapes are written out here rather than taken from crypto.formats: that package loads the
# whole crypto stack, and a scan never decrypts.
_CIPHERTEXT = re.compile(
    r"kamus\$[a-z0-9]+\$[!-~]+"  # ours: kamus$<format>$..., printable ASCII without spaces
    r"|env\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+"  # Kamus's AWS envelope
    r"|[A-Za-z0-9+/]{22}==:[A-Za-z0-9+/=]+"  # Kamus's AES: base64 of a 16-byte IV, then base64
)
# Kamus's GCP and Azure values are bare base64 of a KMS ciphertext; a file holding nothing else
# was named by the user, so that shape is enough there. 32 bytes keeps out short plain words.
_BARE_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_BARE_MIN_BYTES = 32


def looks_like_ciphertext(text: str) -> bool:
    """Whether ``text`` has the shape of a ciphertext that can be told from other text: ours
    (``kamus$...``), Kamus's AWS envelope (``env$...``) or Kamus's AES ``iv:ct``."""
    return _CIPHERTEXT.fullmatch(text) is not None


@dataclass(frozen=True)
class Found:
    """A ciphertext in a file. ``key`` identifies it among its file's values, for
    :meth:`FileScan.rewritten`."""

    file: Path
    line: int  # 1-based line of the scalar's first character
    where: str  # "KamusSecret team-a/db: stringData.password", "raw file"
    identity: str  # "namespace:service-account"
    ciphertext: str = field(repr=False)  # it may be a plaintext put there by mistake
    key: int


@dataclass(frozen=True)
class Problem:
    """A value that should be rewrapped but cannot be as the file stands; ``reason`` says what to
    fix."""

    file: Path
    line: int  # 0 when it concerns the whole file
    where: str
    reason: str


@dataclass(frozen=True)
class Skipped:
    """A file met while walking a directory that could not be read as YAML (a Helm template)."""

    file: Path
    line: int  # 0 when it concerns the whole file
    reason: str


@dataclass(frozen=True)
class _Site:
    """Where a value's text is replaced: ``[start, end)`` of the file's decoded text."""

    start: int
    end: int
    style: str | None  # None (plain), "'", '"', "|", ">", or "raw"
    flow: bool  # inside a flow collection, where ",[]{}" end a plain scalar
    suffix: str = ""  # a block scalar's trailing line breaks, which stay after its new content
    header: str = ""  # a block scalar's indicator line, comment included
    newline: str = ""  # the line break after that header
    indent: str = ""  # the block's content indentation
    node: ScalarNode | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class _Source:
    data: bytes = field(repr=False)
    bom: bool
    text: str = field(repr=False)
    docs: list[Node] | None = field(repr=False)  # None: a raw file that is not YAML
    sites: dict[int, _Site] = field(repr=False)


@dataclass
class FileScan:
    """One file's values and problems, and what it takes to rewrite it (kept out of ``repr``)."""

    path: Path
    values: list[Found]
    problems: list[Problem]
    _source: _Source | None = field(default=None, repr=False, compare=False)

    def rewritten(self, replacements: Mapping[int, str]) -> bytes:
        """The file's bytes with the values keyed in ``replacements`` replaced and no other byte
        changed; checked by parsing them again."""
        unknown = sorted(set(replacements) - {value.key for value in self.values})
        if unknown:
            raise ValueError(f"{self.path}: no value with key {unknown} was found in this file")
        source = self._scanned()
        if not replacements:
            return source.data
        pieces: list[str] = []
        cursor = len(source.text)
        for key in sorted(replacements, key=lambda k: source.sites[k].start, reverse=True):
            site = source.sites[key]
            pieces += [source.text[site.end : cursor], _render(site, replacements[key])]
            cursor = site.start
        pieces.append(source.text[:cursor])
        text = "".join(reversed(pieces))
        _self_check(self.path, source, text, replacements)
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{self.path}: a new value is not valid Unicode text") from None
        return (_BOM if source.bom else b"") + encoded

    def write(self, replacements: Mapping[int, str]) -> None:
        """Replace the file atomically with :meth:`rewritten`: a crash or an interrupt at any
        point leaves it either as it was or as it is meant to be."""
        if not replacements:
            return
        source = self._scanned()
        new = self.rewritten(replacements)
        if new == source.data:
            return
        # Through a symlink to its target, so that the link stays a link.
        target = Path(os.path.realpath(self.path))
        if target.read_bytes() != source.data:
            raise RuntimeError(f"{self.path} changed since it was scanned; nothing written")
        mode = stat.S_IMODE(target.stat().st_mode)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with open(fd, "wb") as out:
                out.write(new)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_directory(target.parent)

    def _scanned(self) -> _Source:
        if self._source is None:
            raise RuntimeError(f"{self.path} was not read as YAML: it has nothing to rewrite")
        return self._source


@dataclass
class Scan:
    files: list[FileScan]  # only files holding at least one value or problem
    skipped: list[Skipped]


def scan(
    paths: Sequence[str], *, namespace: str | None = None, service_account: str | None = None
) -> Scan:
    """Find the ciphertexts under ``paths`` (files, or directories walked for YAML and JSON).
    ``namespace`` overrides the manifests' own (a kustomize overlay sets it); ``service_account``
    stands for a ConfigMap's missing annotation, and with ``namespace`` names a raw file's
    identity."""
    result = Scan(files=[], skipped=[])
    for path, explicit in _targets(paths, result.skipped):
        scanned = _scan_file(path, explicit, namespace or None, service_account or None)
        if isinstance(scanned, Skipped):
            result.skipped.append(scanned)
        elif scanned.values or scanned.problems:
            result.files.append(scanned)
    return result


# --- which files ----------------------------------------------------------------------------


def _targets(paths: Sequence[str], skipped: list[Skipped]) -> list[tuple[Path, bool]]:
    """Each file once (by its real path), with whether it was named rather than walked into."""
    chosen: dict[str, tuple[Path, bool]] = {}

    def add(path: Path, explicit: bool) -> None:
        real = os.path.realpath(path)
        first, was_explicit = chosen.get(real, (path, False))
        chosen[real] = (first, was_explicit or explicit)

    for given in paths:
        path = Path(given)
        if path.is_dir():
            for found in _walk(path, skipped):
                add(found, False)
        elif path.is_file():
            add(path, True)
        elif path.exists() or path.is_symlink():
            raise UsageError(f"{given}: not a regular file or a directory")
        else:
            raise UsageError(f"{given}: no such file or directory")
    return list(chosen.values())


def _walk(top: Path, skipped: list[Skipped]) -> Iterator[Path]:
    def unreadable(error: OSError) -> None:
        skipped.append(Skipped(Path(error.filename or top), 0, _cannot_read(error)))

    # followlinks=False: a link to a directory elsewhere (or to an ancestor) is not walked into.
    for root, dirs, files in os.walk(top, onerror=unreadable, followlinks=False):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(SUFFIXES):
                yield Path(root, name)


def _cannot_read(error: OSError) -> str:
    return f"cannot be read ({error.strerror or type(error).__name__})"


# --- one file -------------------------------------------------------------------------------


class _NotYaml(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _compose(text: str) -> list[Node]:
    """The documents' node trees, without constructing values (no timestamps, no duplicate-key
    errors), so any YAML a cluster could be given is read."""
    try:
        # ruamel warns about some input (a reused anchor), quoting it: never printed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [doc for doc in YAML(typ="rt").compose_all(text) if doc is not None]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise _NotYaml(mark.line + 1 if mark is not None else 0) from None
    except ReaderError as exc:
        raise _NotYaml(line_and_column(text, exc.position)[0]) from None
    except Exception:
        raise _NotYaml(0) from None


def _scan_file(
    path: Path, explicit: bool, namespace: str | None, service_account: str | None
) -> FileScan | Skipped:
    def refuse(line: int, reason: str) -> FileScan | Skipped:
        if explicit:
            return FileScan(path, [], [Problem(path, line, "file", reason)])
        return Skipped(path, line, reason)

    try:
        data = path.read_bytes()
    except OSError as exc:
        return refuse(0, _cannot_read(exc))
    bom = data.startswith(_BOM)
    try:
        text = data[len(_BOM) if bom else 0 :].decode("utf-8")
    except UnicodeDecodeError as exc:
        good = data[len(_BOM) if bom else 0 : exc.start].decode("utf-8", errors="replace")
        return refuse(line_and_column(good, len(good))[0], "not UTF-8 text")
    docs: list[Node] | None
    try:
        docs = _compose(text)
        error_line = 0
    except _NotYaml as exc:
        docs, error_line = None, exc.line

    collector = _Collector(path, text)
    if explicit and _is_raw(text, docs):
        collector.raw(namespace, service_account)
    elif docs is None:
        return refuse(error_line, "not valid YAML" + (" nor a raw ciphertext" if explicit else ""))
    else:
        for doc in docs:
            collector.document(doc, namespace, service_account)
    return FileScan(
        path,
        collector.values,
        collector.problems,
        _Source(data, bom, text, docs, collector.sites),
    )


def _is_raw(text: str, docs: list[Node] | None) -> bool:
    """A file that is one ciphertext (the init container's ``files`` mode mounts such files):
    not YAML, or YAML that is one plain string."""
    token = text.strip(_ASCII_SPACE)
    if docs is not None:
        if len(docs) != 1 or not isinstance(docs[0], ScalarNode):
            return False
        if docs[0].style is not None or docs[0].tag != _STR or docs[0].value != token:
            return False
    if looks_like_ciphertext(token):
        return True
    if _BARE_BASE64.fullmatch(token) is None:
        return False
    try:
        return len(base64.b64decode(token, validate=True)) >= _BARE_MIN_BYTES
    except binascii.Error:
        return False


def _text_of(node: Node | None) -> str | None:
    """A string scalar's text; None for anything else (absent, null, a number, a mapping)."""
    if isinstance(node, ScalarNode) and node.tag == _STR and node.value:
        return str(node.value)
    return None


def _pairs(mapping: MappingNode) -> list[tuple[Node, Node]]:
    """The key and value nodes of a mapping as a loader sees them: merge keys (``<<: *base``)
    resolved, a key given explicitly winning over a merged one."""
    out: list[tuple[Node, Node]] = []
    names: set[str] = set()
    visiting: set[int] = set()

    def visit(node: MappingNode) -> None:
        if id(node) in visiting:  # a mapping merging itself: YAML allows the loop
            return
        visiting.add(id(node))
        own = [(k, v) for k, v in node.value if not (isinstance(k, ScalarNode) and k.tag == _MERGE)]
        merged = [v for k, v in node.value if isinstance(k, ScalarNode) and k.tag == _MERGE]
        for key, value in own:
            name = key.value if isinstance(key, ScalarNode) else None
            if name is None or name not in names:
                out.append((key, value))
                if name is not None:
                    names.add(name)
        for value in merged:
            for source in value.value if isinstance(value, SequenceNode) else [value]:
                if isinstance(source, MappingNode):
                    visit(source)

    visit(mapping)
    return out


def _fields(node: Node | None) -> dict[str, Node]:
    """A mapping's values by key (the last of duplicate keys, as most loaders keep)."""
    if not isinstance(node, MappingNode):
        return {}
    return {str(k.value): v for k, v in _pairs(node) if isinstance(k, ScalarNode)}


def _flow_scalars(doc: Node) -> set[int]:
    """The scalars written inside a flow collection (``{...}``, ``[...]``): each at its anchor,
    which comes before any alias to it."""
    inside: set[int] = set()
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(doc, False)]
    while stack:
        node, flow = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            if flow:
                inside.add(id(node))
            continue
        flow = flow or bool(getattr(node, "flow_style", False))
        children: list[Node] = (
            [n for pair in node.value for n in pair]
            if isinstance(node, MappingNode)
            else list(node.value)
        )
        stack.extend((child, flow) for child in reversed(children))
    return inside


class _Collector:
    """The values and problems of one file, each node once however many aliases reach it."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text
        self.values: list[Found] = []
        self.problems: list[Problem] = []
        self.sites: dict[int, _Site] = {}
        self._seen: set[int] = set()
        self._flow: set[int] = set()
        self._line_starts = [m.end() for m in _BREAK.finditer(text)]

    def raw(self, namespace: str | None, service_account: str | None) -> None:
        start = len(self.text) - len(self.text.lstrip(_ASCII_SPACE))
        end = len(self.text.rstrip(_ASCII_SPACE))
        line = self._line(start)
        missing = [
            f"no {what}: pass --{what.replace(' ', '-')}"
            for what, given in (("namespace", namespace), ("service account", service_account))
            if not given
        ]
        if missing:
            self.problems.append(Problem(self.path, line, "raw file", "; ".join(missing)))
            return
        site = _Site(start, end, "raw", flow=False)
        self._found(site, line, "raw file", f"{namespace}:{service_account}", self.text[start:end])

    def document(self, doc: Node, namespace: str | None, service_account: str | None) -> None:
        if not isinstance(doc, MappingNode):
            return
        top = _fields(doc)
        api_version, kind = _text_of(top.get("apiVersion")), _text_of(top.get("kind"))
        metadata = _fields(top.get("metadata"))
        ns = namespace or _text_of(metadata.get("namespace"))
        name = _text_of(metadata.get("name")) or "(no name)"
        label = f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
        no_namespace = "no namespace: set metadata.namespace or pass --namespace"
        self._flow = _flow_scalars(doc)

        if kind == "KamusSecret" and api_version in KAMUS_SECRET_API_VERSIONS:
            sa = _text_of(top.get("serviceAccount"))
            missing = [
                reason
                for reason, given in (
                    (no_namespace, ns),
                    ("no service account: set serviceAccount", sa),
                )
                if not given
            ]
            identity = "; ".join(missing) if missing else f"{ns}:{sa}"
            for section in ("stringData", "data"):
                self._section(top, section, label, identity, bool(missing), every=True)
        elif kind == "ConfigMap" and api_version == "v1":
            annotations = _fields(metadata.get("annotations"))
            annotated = SERVICE_ACCOUNT_ANNOTATION in annotations
            if annotated:
                sa = _text_of(annotations[SERVICE_ACCOUNT_ANNOTATION])
                missing_sa = (
                    f"the annotation {SERVICE_ACCOUNT_ANNOTATION} must name a service account"
                )
            else:
                sa = service_account
                missing_sa = (
                    f"no service account: annotate the ConfigMap with "
                    f"{SERVICE_ACCOUNT_ANNOTATION}: <sa> or pass --service-account"
                )
            missing = [r for r, given in ((no_namespace, ns), (missing_sa, sa)) if not given]
            identity = "; ".join(missing) if missing else f"{ns}:{sa}"
            self._section(top, "data", label, identity, bool(missing), every=annotated)

    def _section(
        self,
        top: Mapping[str, Node],
        section: str,
        label: str,
        identity: str,
        missing: bool,
        *,
        every: bool,
    ) -> None:
        """The values of ``stringData`` or ``data``: all of them (``every``), or those that look
        like ciphertexts. ``identity`` is the reason to report instead when ``missing``."""
        node = top.get(section)
        if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL):
            return
        if not isinstance(node, MappingNode):
            self._problem(node, f"{label}: {section}", "must be a mapping of names to values")
            return
        for key, value in _pairs(node):
            if not isinstance(key, ScalarNode):
                self._problem(key, f"{label}: {section}", "a key is not a string")
                continue
            where = f"{label}: {section}.{key.value}"
            if id(value) in self._seen:
                continue
            if not isinstance(value, ScalarNode):
                kind = "a mapping" if isinstance(value, MappingNode) else "a list"
                self._problem(value, where, f"is {kind}, not a string; a ciphertext is one string")
                continue
            if value.tag == _NULL or value.value == "":
                continue  # Kamus encrypts "" to "": nothing to rewrap
            if value.tag != _STR:
                if every:
                    self._problem(value, where, "is not a string; quote it")
                continue
            if not every and not looks_like_ciphertext(value.value):
                continue
            if missing:
                self._problem(value, where, identity)
                continue
            self._scalar(value, where, identity)

    def _scalar(self, node: ScalarNode, where: str, identity: str) -> None:
        start = _content_start(self.text, node.start_mark.index)
        end = node.end_mark.index
        value = str(node.value)
        if node.style in ("|", ">"):
            site = self._block_site(node, start, end)
            if site is None:  # nothing but line breaks
                return
            ciphertext = value.rstrip("\n")
        else:
            site = _Site(start, end, node.style, flow=id(node) in self._flow, node=node)
            ciphertext = value
        self._found(site, self._line(start), where, identity, ciphertext)

    def _block_site(self, node: ScalarNode, start: int, end: int) -> _Site | None:
        header = _BLOCK_HEADER.match(self.text, start, end)
        assert header is not None
        newline = _BREAK.match(self.text, header.end())
        body_start = header.end() + (len(newline.group()) if newline else 0)
        first_line: str | None = None
        content_end = None
        position = body_start
        while position < end:
            line_break = _BREAK.search(self.text, position, end)
            line_end = line_break.start() if line_break else end
            line = self.text[position:line_end]
            if line.strip(" \t"):
                if first_line is None:
                    first_line = line
                content_end = line_end
            position = line_break.end() if line_break else end
        if first_line is None or content_end is None:
            return None
        value = str(node.value)
        return _Site(
            start,
            content_end,
            node.style,
            flow=False,
            suffix=value[len(value.rstrip("\n")) :],
            header=header.group(),
            newline=newline.group() if newline else "\n",
            indent=first_line[: len(first_line) - len(first_line.lstrip(" "))],
            node=node,
        )

    def _found(self, site: _Site, line: int, where: str, identity: str, ciphertext: str) -> None:
        key = len(self.values)
        if site.node is not None:
            self._seen.add(id(site.node))
        self.sites[key] = site
        self.values.append(Found(self.path, line, where, identity, ciphertext, key))

    def _problem(self, node: Node, where: str, reason: str) -> None:
        self._seen.add(id(node))
        start = _content_start(self.text, node.start_mark.index)
        self.problems.append(Problem(self.path, self._line(start), where, reason))

    def _line(self, index: int) -> int:
        return bisect.bisect_right(self._line_starts, index) + 1


def _content_start(text: str, index: int) -> int:
    """Where a node's own text begins: a node's mark starts at its anchor (``&x``) or tag
    (``!!str``), which are not replaced."""
    while index < len(text) and text[index] in "&!":
        while index < len(text) and text[index] not in " \t\r\n,[]{}":
            index += 1
        while index < len(text) and text[index] in " \t\r\n#":
            if text[index] == "#":
                found = _BREAK.search(text, index)
                index = found.start() if found else len(text)
            else:
                index += 1
    return index


# --- rendering ------------------------------------------------------------------------------


def _render(site: _Site, new: str) -> str:
    """The text that replaces ``site``: ``new`` in the old style where YAML lets it stay so."""
    if site.style == "raw":
        return new
    if site.style is None:
        return new if _plain_ok(new, site.flow) else _double_quoted(new)
    if site.style == "'":
        return f"'{new.replace(chr(39), chr(39) * 2)}'" if _one_line(new) else _double_quoted(new)
    if site.style in ("|", ">"):
        header = _BLOCK_HEADER.fullmatch(site.header)
        assert header is not None
        if _one_line(new) and not new.startswith((" ", "\t")):
            # Without its indentation digit the header lets YAML find the content's own
            # indentation, which is that of the old first line: the parent's is not known here.
            indicators = header.group(2).translate(str.maketrans("", "", "123456789"))
            head = header.group(1) + indicators + header.group(3)
            return f"{head}{site.newline}{site.indent}{new}"
        return _double_quoted(new + site.suffix) + header.group(3)
    return _double_quoted(new)


def _yaml_printable(char: str) -> bool:
    code = ord(char)
    return (
        0x20 <= code <= 0x7E
        or 0xA0 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    ) and char not in "\u2028\u2029\ufeff"  # YAML's line breaks, and a BOM


def _one_line(value: str) -> bool:
    """Printable, without line breaks and not empty: fit for a quoted or block scalar as is."""
    return bool(value) and all(_yaml_printable(c) for c in value)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _double_quoted(value: str) -> str:
    """A double-quoted scalar, escaped so that it is valid JSON as well as YAML."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif _yaml_printable(char):
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


@lru_cache(maxsize=4096)
def _plain_ok(value: str, flow: bool) -> bool:
    """Whether ``value`` written plain reads back as this very string, in a block or flow
    context, under YAML 1.2 and 1.1 (whose ``yes`` is a boolean)."""
    if not _one_line(value) or value != value.strip(" "):
        return False
    sample = f"{{k: {value}}}\n" if flow else f"k: {value}\n"
    for version in ("", "%YAML 1.1\n---\n"):
        try:
            docs = _compose(version + sample)
        except _NotYaml:
            return False
        if len(docs) != 1 or not isinstance(docs[0], MappingNode) or len(docs[0].value) != 1:
            return False
        scalar = docs[0].value[0][1]
        if not isinstance(scalar, ScalarNode):
            return False
        if scalar.style is not None or scalar.tag != _STR or scalar.value != value:
            return False
    return True


# --- checking and writing -------------------------------------------------------------------


def _self_check(path: Path, source: _Source, text: str, replacements: Mapping[int, str]) -> None:
    """The new text must read as the old, but for the replaced values, which must read as their
    new values exactly. The error names the file only."""
    if source.docs is None or any(source.sites[k].style == "raw" for k in replacements):
        if text.strip(_ASCII_SPACE) != "".join(replacements.values()):
            raise RuntimeError(f"{path}: the rewritten raw file would not hold the new value")
        return
    expected: dict[int, str] = {}
    for key, new in replacements.items():
        site = source.sites[key]
        assert site.node is not None
        expected[id(site.node)] = new + site.suffix
    try:
        docs = _compose(text)
    except _NotYaml:
        raise RuntimeError(f"{path}: the rewritten file would not be valid YAML") from None
    if len(docs) != len(source.docs) or not _same_data(source.docs, docs, expected):
        raise RuntimeError(f"{path}: the rewritten file would change more than the replaced values")


def _same_data(old: list[Node], new: list[Node], expected: Mapping[int, str]) -> bool:
    """Node by node, aliases included: the same shape, tags and values, but for ``expected``
    (old scalars' ids to their new values)."""
    forward: dict[int, Node] = {}
    backward: dict[int, Node] = {}
    stack: list[tuple[Node, Node]] = list(zip(old, new, strict=True))
    while stack:
        a, b = stack.pop()
        if id(a) in forward or id(b) in backward:
            if forward.get(id(a)) is not b or backward.get(id(b)) is not a:
                return False
            continue
        forward[id(a)], backward[id(b)] = b, a
        if type(a) is not type(b) or a.tag != b.tag:
            return False
        if isinstance(a, ScalarNode):
            if b.value != expected.get(id(a), a.value):
                return False
            continue
        children_a: list[Any] = a.value
        children_b: list[Any] = b.value
        if len(children_a) != len(children_b):
            return False
        if isinstance(a, MappingNode):
            for (key_a, value_a), (key_b, value_b) in zip(children_a, children_b, strict=True):
                stack += [(key_a, key_b), (value_a, value_b)]
        else:
            stack += list(zip(children_a, children_b, strict=True))
    return True


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    if os.name != "posix":  # Windows cannot open a directory to flush it
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
