"""The images' lock, deploy/images/requirements.lock, against pyproject.toml, offline.

The images install the lock's exact versions (pip --require-hashes), then the project with
--no-deps: so the lock must pin every runtime dependency that applies to the images (CPython 3.11
on Linux x86_64) at a version pyproject.toml allows, and hold nothing for development. `make lock`
compiles it with uv and appends the hash of the dependencies it was compiled from, the line that
``python -m tests.deploy.test_lock`` prints.
"""

import hashlib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "deploy/images/requirements.lock"
DOCKERFILES = [ROOT / f"Dockerfile.{service}" for service in ("encryptor", "decryptor")]
HASH_LINE = "# dependencies-sha256: "
# The images' interpreter: python:3.11-slim (or deploy/images/base-image.sh's stand-in).
IMAGE_ENVIRONMENT = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.2",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "sys_platform": "linux",
}
# What the header must record: the command, with the target it was resolved for.
COMPILE_COMMAND = re.compile(
    r"^#\s+uv pip compile pyproject\.toml .*--generate-hashes.*--python-version 3\.11 "
    r".*--python-platform x86_64-unknown-linux-gnu",
    re.MULTILINE,
)
PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)(?: \\)?")
VIA = re.compile(r"# via(?: (?P<name>.+))?|#   (?P<item>.+)")
VIA_SUFFIX = re.compile(r" \(.*\)$")  # "kamus-py (pyproject.toml)"


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads(PYPROJECT.read_text())["project"]
    return project


def runtime_dependencies() -> list[Requirement]:
    return [Requirement(line) for line in _project()["dependencies"]]


def dependencies_sha256(requirements: Iterable[Requirement]) -> str:
    """The hash of what the dependencies mean, not of their spelling: their order, comments,
    quotes and spaces in pyproject.toml do not call for a new lock."""
    normalized = []
    for requirement in requirements:
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        marker = f"; {requirement.marker}" if requirement.marker else ""
        # A SpecifierSet prints its clauses sorted.
        name = canonicalize_name(requirement.name)
        normalized.append(f"{name}{extras}{requirement.specifier}{marker}")
    return hashlib.sha256("\n".join(sorted(normalized)).encode()).hexdigest()


def applies_to_images(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(IMAGE_ENVIRONMENT)


@dataclass
class Pin:
    name: NormalizedName
    version: Version
    hashes: list[str] = field(default_factory=list)
    # Why it is in the lock: the project (for its own dependencies) or other pinned packages.
    via: set[NormalizedName] = field(default_factory=set)


def read_lock(text: str) -> dict[NormalizedName, Pin]:
    """uv's requirements format: ``name==version \\``, its ``--hash=`` lines, then ``# via``
    annotations, one name after ``# via`` or one per ``#   `` line below it."""
    pins: dict[NormalizedName, Pin] = {}
    pin: Pin | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not line.startswith((" ", "#")) and stripped:
            match = PIN.fullmatch(line)
            assert match, f"not an exact pin for this platform: {line!r}"
            pin = Pin(canonicalize_name(match["name"]), Version(match["version"]))
            assert pin.name not in pins, f"{pin.name} is pinned twice"
            pins[pin.name] = pin
        elif pin is not None and line.startswith(" "):
            if stripped.startswith("--hash="):
                pin.hashes.append(stripped.removeprefix("--hash=").removesuffix(" \\"))
            elif (via := VIA.fullmatch(stripped)) and (name := via["name"] or via["item"]):
                pin.via.add(canonicalize_name(VIA_SUFFIX.sub("", name)))
    return pins


@pytest.fixture(scope="module")
def lock() -> dict[NormalizedName, Pin]:
    assert LOCK.exists(), f"{LOCK.relative_to(ROOT)} is missing: run make lock"
    return read_lock(LOCK.read_text())


def test_lock_pins_exact_versions_with_hashes(lock: dict[NormalizedName, Pin]) -> None:
    assert len(lock) > 20
    for pin in lock.values():
        # pip --require-hashes refuses a package without one.
        assert pin.hashes, f"{pin.name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin


def test_lock_pins_every_runtime_dependency(lock: dict[NormalizedName, Pin]) -> None:
    required = [r for r in runtime_dependencies() if applies_to_images(r)]
    for requirement in required:
        pin = lock.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement} is not in the lock: run make lock"
        assert pin.version in requirement.specifier, (
            f"the lock pins {pin.name}=={pin.version}, outside {requirement}: run make lock"
        )


def test_lock_holds_only_what_the_runtime_dependencies_need(
    lock: dict[NormalizedName, Pin],
) -> None:
    project = canonicalize_name(_project()["name"])
    runtime = {canonicalize_name(r.name) for r in runtime_dependencies() if applies_to_images(r)}
    dev = {
        canonicalize_name(Requirement(r).name) for r in _project()["optional-dependencies"]["dev"]
    }
    for pin in lock.values():
        if project in pin.via:
            # A development tool (pytest, ruff, mypy, moto...) may be in the lock only as a runtime
            # package's dependency (pyjwt, for msal), never for the project itself.
            assert pin.name in runtime, (
                f"{pin.name} is in the lock for the project, but is no runtime dependency"
                + (" (a development tool)" if pin.name in dev else "")
            )
    # Every pin is wanted by a runtime dependency, directly or through other pins.
    needed = set(runtime)
    grown = True
    while grown:
        more = {pin.name for pin in lock.values() if pin.via & needed} - needed
        needed |= more
        grown = bool(more)
    assert set(lock) <= needed, f"pinned, but needed by no runtime dependency: {set(lock) - needed}"


def test_lock_was_compiled_from_the_current_dependencies() -> None:
    text = LOCK.read_text()
    assert COMPILE_COMMAND.search(text), "the lock's header does not record its uv command"
    recorded = [
        line.removeprefix(HASH_LINE) for line in text.splitlines() if line.startswith(HASH_LINE)
    ]
    assert len(recorded) == 1, f"the lock needs one {HASH_LINE!r} line: run make lock, not uv alone"
    assert recorded == [dependencies_sha256(runtime_dependencies())], (
        "pyproject.toml's dependencies changed since the lock was compiled: run make lock"
    )


def test_markers_are_read_for_the_images() -> None:
    assert applies_to_images(Requirement("uvloop; sys_platform != 'win32'"))
    assert applies_to_images(
        Requirement("x; platform_machine == 'x86_64' and python_version < '3.12'")
    )
    assert not applies_to_images(Requirement("pywin32; sys_platform == 'win32'"))
    assert not applies_to_images(Requirement("tomli; python_version < '3.11'"))


def test_dependencies_hash_follows_their_meaning_not_their_spelling() -> None:
    base = [Requirement("uvloop>=0.21,<1; sys_platform != 'win32'"), Requirement("Jinja2>=3.1")]
    respelled = [Requirement("jinja2 >= 3.1"), Requirement('uvloop<1,>=0.21;sys_platform!="win32"')]
    assert dependencies_sha256(base) == dependencies_sha256(respelled)
    for changed in ("jinja2>=3.2", "jinja2[i18n]>=3.1", "jinja2>=3.1; python_version < '4'"):
        assert dependencies_sha256([base[0], Requirement(changed)]) != dependencies_sha256(base)
    assert dependencies_sha256(base[:1]) != dependencies_sha256(base)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_install_the_lock_then_the_project_alone(dockerfile: Path) -> None:
    """The dependencies layer comes from the lock, before any source is copied; the project
    itself brings no dependency of its own."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.startswith("#")]
    text = "\n".join(lines)
    from_lock = re.search(
        r"pip install .*--require-hashes (?:-r|--requirement) requirements\.lock", text
    )
    assert from_lock, "the dependencies are not installed from the lock"
    assert text.index("COPY deploy/images/requirements.lock ./") < from_lock.start()
    assert from_lock.start() < text.index("COPY kamus/")
    projects = [
        i for i in re.findall(r"pip install ([^\n&]*)", text) if re.search(r"(?:^| )\.(?: |$)", i)
    ]
    assert projects, "the project is not installed"
    assert all("--no-deps" in install for install in projects), projects


if __name__ == "__main__":
    print(f"{HASH_LINE}{dependencies_sha256(runtime_dependencies())}")
