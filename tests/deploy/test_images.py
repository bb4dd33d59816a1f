"""The container images: Dockerfile.encryptor and Dockerfile.decryptor.

The lint tests (hadolint, trivy) always run. The image tests build both images with podman,
without a Docker engine or a registry (see deploy/images/ and the tooling notes), and run them:
the encryptor encrypts, the decryptor decrypts that ciphertext for a token the Kubernetes API
double accepts, the same image runs ``kamus init`` and the controller, and the HEALTHCHECK
passes. Without podman they skip, loudly: run deploy/tools/install-system-tools.sh (as root).

The built images are kept in podman's store (localhost/kamus-*:test), so that a rerun reuses
the layer cache; ``podman rmi`` them, and the base image, to measure a cold build.
"""

import base64
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.k8s_double import KubeApiDouble
from tests.support.ports import free_port
from tests.support.settings import new_key

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("encryptor", "decryptor")
DOCKERFILES = [ROOT / f"Dockerfile.{service}" for service in SERVICES]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
USER = "10001:10001"
SECRET = "image-test-secret"

# What works on the build machines (docs: /work/shared/notes/tooling.md): crun cannot run here
# (cgroups v1 "hybrid", no CAP_SYS_RESOURCE to raise RLIMIT_NOFILE), runc with lower ulimits can.
# podman's default store (overlay, /var/lib/containers/storage) keeps the cache between runs.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


# -- lint: no podman needed ---------------------------------------------------------------------


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), f"{hadolint} is missing: reinstall the venv (make .venv/.dev)"
    result = subprocess.run(
        [str(hadolint), *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_dockerfiles_pass_trivy_config(tmp_path: Path) -> None:
    trivy = Path(sys.executable).parent / "trivy"
    assert trivy.exists(), f"{trivy} is missing: reinstall the venv (make .venv/.dev)"
    scanned = tmp_path / "dockerfiles"
    scanned.mkdir()
    for dockerfile in DOCKERFILES:
        shutil.copy(dockerfile, scanned)
    result = subprocess.run(
        [
            str(trivy),
            "config",
            "--skip-check-update",
            "--quiet",
            "--exit-code",
            "1",
            "--severity",
            "HIGH,CRITICAL",
            "--format",
            "json",
            str(scanned),
        ],
        env={**os.environ, "TRIVY_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"trivy config:\n{result.stdout}{result.stderr}"
    report = json.loads(result.stdout)
    # Both files were recognised as Dockerfiles and checked: a scan of nothing also exits 0.
    targets = {
        r["Target"]: r.get("MisconfSummary", {})
        for r in report.get("Results", [])
        if r.get("Type") == "dockerfile"
    }
    assert sorted(targets) == sorted(p.name for p in DOCKERFILES), report
    for summary in targets.values():
        assert summary.get("Successes", 0) > 0
        assert summary.get("Failures", 0) == 0


def _shared_part(dockerfile: Path) -> list[str]:
    """The instructions from the builder stage to USER in the final stage, without comments."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.startswith("#")]
    start = lines.index("FROM python:3.11-slim AS builder")
    end = lines.index(f"USER {USER}")
    return lines[start : end + 1]


def test_dockerfiles_share_the_build_and_the_user() -> None:
    """One build for both: the same builder stage and the same final layers up to USER, so the
    second build reuses the first one's layer cache, and both images run as the same user."""
    encryptor, decryptor = (_shared_part(p) for p in DOCKERFILES)
    assert encryptor == decryptor


# -- the images ---------------------------------------------------------------------------------


@dataclass
class Podman:
    binary: str
    env: dict[str, str]

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"podman {' '.join(args)} exited {result.returncode}:\n"
                f"{_tail(result.stdout)}\n{_tail(result.stderr)}"
            )
        return result

    def image_id(self, image: str) -> str | None:
        result = self.run("image", "inspect", "--format", "{{.Id}}", image, check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    def inspect(self, image: str) -> dict[str, Any]:
        """``podman image inspect``: the OCI ``Config``, and podman's ``Healthcheck`` beside it."""
        [info] = json.loads(self.run("image", "inspect", image).stdout)
        assert isinstance(info, dict)
        return info


@dataclass
class Images:
    podman: Podman
    tags: dict[str, str]
    # Containers (ids or names) to remove at the end of the module, whatever happens.
    containers: list[str]

    @property
    def encryptor(self) -> str:
        return self.tags["encryptor"]

    @property
    def decryptor(self) -> str:
        return self.tags["decryptor"]


@contextmanager
def timed(label: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    # Shown with -s or -rA: cold and warm builds differ by minutes.
    print(f"{label}: {time.monotonic() - start:.1f} s")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    binary = shutil.which("podman")
    if binary is None:
        pytest.skip(
            "podman is not installed: the images were NOT built or run; "
            "run deploy/tools/install-system-tools.sh"
        )
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    podman = Podman(binary, {**os.environ, "CONTAINERS_CONF": str(conf)})

    with timed("base image"):
        base = subprocess.run(
            [str(ROOT / "deploy/images/base-image.sh")],
            env=podman.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    assert base.returncode == 0, f"base-image.sh:\n{base.stdout}{_tail(base.stderr)}"
    tags = {service: f"localhost/kamus-{service}:test" for service in SERVICES}
    for service, tag in tags.items():
        build = [
            "build",
            "--pull=never",
            "--format=docker",  # the OCI format has no HEALTHCHECK
            # The host trusts a TLS-intercepting proxy's CA that the base image does not: pip
            # reaches PyPI with the host's bundle, mounted read-only during the build only.
            "--volume",
            f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
            "--file",
            str(ROOT / f"Dockerfile.{service}"),
            "--tag",
            tag,
            str(ROOT),
        ]
        before = podman.image_id(tag)
        with timed(f"build {tag}"):
            podman.run(*build, timeout=900)
        if before not in (None, podman.image_id(tag)):
            # Superseded by a code change: free its layers (~270 MB of venv), keep the cache.
            podman.run("rmi", before, check=False)
    images = Images(podman, tags, [])
    yield images
    if images.containers:
        podman.run("rm", "--force", "--ignore", "--time=2", *images.containers, check=False)


@dataclass
class Container:
    id: str
    url: str


@contextmanager
def serving(
    images: Images,
    image: str,
    env: dict[str, str],
    mounts: Sequence[tuple[Path, str]] = (),
) -> Iterator[Container]:
    """``image`` in the background on a free loopback port of the host network, from when
    ``/healthz`` answers until it is removed."""
    port = free_port()
    # The HEALTHCHECK probes the image's default port unless told the one in use.
    env = {**env, "KAMUS_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/healthz"}
    args = ["run", "--detach", "--network=host"]  # not --rm: keep the logs of a failed start
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    for source, target in mounts:
        args += ["--volume", f"{source}:{target}:ro"]
    args += [image, "--host", "127.0.0.1", "--port", str(port)]
    container = images.podman.run(*args).stdout.strip()
    images.containers.append(container)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_health(images, container, url)
        yield Container(container, url)
    finally:
        images.podman.run("rm", "--force", "--time=2", container, check=False)
        images.containers.remove(container)


def _wait_for_health(images: Images, container: str, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        state = images.podman.run("inspect", "--format", "{{.State.Running}}", container)
        if state.stdout.strip() != "true":
            break
        time.sleep(0.2)
    logs = images.podman.run("logs", container, check=False)
    pytest.fail(f"{container} did not serve {url}/healthz:\n{_tail(logs.stdout + logs.stderr)}")


@dataclass
class Encryptor:
    container: Container
    key: str

    def encrypt(self, data: str, namespace: str, sa: str) -> str:
        body = {"data": data, "service-account": sa, "namespace": namespace}
        response = httpx.post(f"{self.container.url}/api/v1/encrypt", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.text


@pytest.fixture(scope="module")
def encryptor(images: Images) -> Iterator[Encryptor]:
    key = new_key()
    with serving(images, images.encryptor, {"KeyManagement__AES__Key": key}) as container:
        yield Encryptor(container, key)


@pytest.fixture
def decryptor(
    images: Images, encryptor: Encryptor, kube_api: KubeApiDouble, tmp_path: Path
) -> Iterator[Container]:
    """The decryptor image with the encryptor's key, trusting the API double through a mounted
    kubeconfig (the double listens on the host's loopback, which --network=host shares)."""
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    env = {"KeyManagement__AES__Key": encryptor.key, "KUBECONFIG": "/etc/kamus/kubeconfig"}
    # The kubeconfig names the CA file by its host path: mount it at the same path.
    mounts = [(kubeconfig, "/etc/kamus/kubeconfig"), (kube_api.ca_file, str(kube_api.ca_file))]
    with serving(images, images.decryptor, env, mounts) as container:
        yield container


def in_image(images: Images, *args: str) -> str:
    """``podman run --rm`` with ``args`` (options, the image, then the command); returns its
    standard output."""
    name = f"kamus-image-test-{uuid.uuid4().hex[:12]}"
    images.containers.append(name)  # removed at the end even if the run times out
    # No HEALTHCHECK for one-off commands: podman would try to schedule it with systemd.
    result = images.podman.run("run", "--rm", "--no-healthcheck", "--name", name, *args)
    return result.stdout


# -- tests of the images ------------------------------------------------------------------------

_INSPECT = """
import json, pathlib, shutil, sys
venv = pathlib.Path(sys.prefix)
print(json.dumps({
    "venv": str(venv),
    "tools": sorted(t for t in ("gcc", "cc", "g++", "make", "ld") if shutil.which(t)),
    "venv_pip": [p.name for p in (venv / "bin").glob("pip*")]
    + [p.name for p in venv.glob("lib/python*/site-packages/pip")]
    + [p.name for p in venv.glob("lib/python*/site-packages/setuptools")],
    "caches": [str(p) for p in map(pathlib.Path, ["/root/.cache", "/home/kamus/.cache", "/src"])
        if p.exists()],
}))
"""

_IMPORT_ALL = """
import importlib, pkgutil
names = []
for package in ("crypto", "encryptor", "decryptor", "controller", "injector", "kamus"):
    module = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if not info.name.endswith("__main__"):  # kamus.__main__ runs the command
            importlib.import_module(info.name)
            names.append(info.name)
print(len(names))
"""


@pytest.mark.slow
@pytest.mark.parametrize("service", SERVICES)
def test_image_runs_as_non_root_without_build_tools(images: Images, service: str) -> None:
    image = images.tags[service]
    info = images.podman.inspect(image)
    config = info["Config"]
    assert config["User"] == USER
    assert config["Entrypoint"] == ["kamus", "serve", service]
    assert config["Labels"]["org.opencontainers.image.title"] == f"kamus-{service}"
    assert info.get("Healthcheck"), "built without --format=docker: the HEALTHCHECK is lost"

    ids = in_image(images, "--network=none", "--entrypoint", "sh", image, "-c", "id -u; id -g")
    assert ids.split() == ["10001", "10001"]

    # As root, to see root's home too.
    report = in_image(
        images, "--network=none", "--user=0", "--entrypoint", "python", image, "-c", _INSPECT
    )
    found = json.loads(report.splitlines()[-1])
    assert found["venv"] == "/opt/kamus"
    assert found["tools"] == [], "build tools in the final image"
    assert found["venv_pip"] == [], "pip or setuptools left in the venv"
    assert found["caches"] == [], "pip caches or build leftovers in the final image"

    # Every module imports from the installed (non-editable) package with its dependencies.
    count = in_image(images, "--network=none", "--entrypoint", "python", image, "-c", _IMPORT_ALL)
    assert int(count.split()[-1]) > 20


@pytest.mark.slow
def test_encryptor_image_encrypts(encryptor: Encryptor) -> None:
    alive = httpx.get(f"{encryptor.container.url}/api/v1/isAlive", timeout=5)
    assert alive.status_code == 200
    assert alive.json() is True
    ciphertext = encryptor.encrypt("x", "ns", "sa")
    assert ciphertext not in ("", "x")  # the decryptor test opens it
    # The encrypt page's files are in the installed package, not only in the source tree.
    for path in ("/ui", "/ui/ui.js", "/ui/ui.css"):
        page = httpx.get(f"{encryptor.container.url}{path}", timeout=5)
        assert page.status_code == 200, path
        assert "default-src 'none'" in page.headers["content-security-policy"]


@pytest.mark.slow
def test_decryptor_image_decrypts_what_the_encryptor_image_encrypted(
    encryptor: Encryptor, decryptor: Container, kube_api: KubeApiDouble
) -> None:
    alive = httpx.get(f"{decryptor.url}/api/v1/isAlive", timeout=5)
    assert alive.status_code == 200
    assert alive.json() is True
    ciphertext = encryptor.encrypt(SECRET, "team-a", "app")

    def decrypt(token: str) -> httpx.Response:
        return httpx.post(
            f"{decryptor.url}/api/v1/decrypt",
            json={"data": ciphertext},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    decrypted = decrypt(kube_api.issue_token("team-a", "app"))
    assert decrypted.status_code == 200, decrypted.text
    assert decrypted.text == SECRET
    # The TokenReview really went to the double, and its answer counts.
    assert kube_api.reviews
    assert decrypt(kube_api.issue_token("team-a", "web")).status_code == 400
    assert decrypt(kube_api.forge_token("team-a", "app")).status_code == 401


@pytest.mark.slow
def test_decryptor_image_runs_the_controller_and_the_init_container(
    images: Images,
    encryptor: Encryptor,
    decryptor: Container,
    kube_api: KubeApiDouble,
    tmp_path: Path,
) -> None:
    image = images.decryptor
    kamus = ["--network=none", "--entrypoint", "kamus", image]
    assert "Usage: kamus init" in in_image(images, *kamus, "init", "--help")
    assert "Usage: kamus serve" in in_image(images, *kamus, "serve", "controller", "--help")

    # The init container, for real: ciphertexts from a ConfigMap mount, the pod's token, files
    # written as the image's non-root user into an emptyDir.
    encrypted = tmp_path / "encrypted"
    encrypted.mkdir()
    (encrypted / "password").write_text(encryptor.encrypt(SECRET, "team-a", "app"))
    token = tmp_path / "token"
    token.write_text(kube_api.issue_token("team-a", "app"))
    decrypted = tmp_path / "decrypted"
    decrypted.mkdir()
    decrypted.chmod(0o777)  # an emptyDir is writable by the pod's user
    output = in_image(
        images,
        "--network=host",
        "--volume",
        f"{encrypted}:/encrypted:ro",
        "--volume",
        f"{token}:/var/run/secrets/kubernetes.io/serviceaccount/token:ro",
        "--volume",
        f"{decrypted}:/decrypted",
        "--env",
        f"KAMUS_URL={decryptor.url}",
        "--entrypoint",
        "kamus",
        image,
        "init",
        "--encrypted-folders",
        "/encrypted",
        "--decrypted-path",
        "/decrypted",
        "--output-format",
        "files",
        "--timeout",
        "10",
    )
    written = decrypted / "password"
    assert written.exists(), output
    assert written.read_text() == SECRET
    assert written.stat().st_uid == 10001
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


@pytest.mark.slow
def test_healthcheck_passes(images: Images, encryptor: Encryptor, decryptor: Container) -> None:
    for image, container in [
        (images.encryptor, encryptor.container),
        (images.decryptor, decryptor),
    ]:
        # Without systemd podman cannot schedule it, but runs it on demand.
        result = images.podman.run("healthcheck", "run", container.id, check=False)
        assert result.returncode == 0, f"{image}: {result.stdout}{result.stderr}"

        # The same command, run by hand: it passes, and fails where nothing answers.
        test = images.podman.inspect(image)["Healthcheck"]["Test"]
        assert test[0] == "CMD"
        assert images.podman.run("exec", container.id, *test[1:], check=False).returncode == 0
        closed = f"KAMUS_HEALTHCHECK_URL=http://127.0.0.1:{free_port()}/healthz"
        failed = images.podman.run("exec", "--env", closed, container.id, *test[1:], check=False)
        assert failed.returncode != 0


@pytest.mark.slow
def test_decryptor_image_runs_the_injector_with_its_own_ca(
    images: Images, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """``kamus serve injector`` from the decryptor image, as the chart runs it: its CA made in
    the (double's) cluster, its leaf loaded from memory, an AdmissionReview answered over TLS
    that chains to that CA."""
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    port = free_port()
    env = {
        "KUBECONFIG": "/etc/kamus/kubeconfig",
        "Injector__Image": images.decryptor,
        "Injector__DecryptorUrl": "http://kamus-decryptor.kamus.svc:80",
        "Injector__Namespace": "kamus",
        "Injector__ExtraHosts": "127.0.0.1",
    }
    args = ["run", "--detach", "--no-healthcheck", "--network=host", "--read-only"]
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    args += ["--volume", f"{kubeconfig}:/etc/kamus/kubeconfig:ro"]
    args += ["--volume", f"{kube_api.ca_file}:{kube_api.ca_file}:ro"]
    args += ["--entrypoint", "kamus", images.decryptor, "serve", "injector"]
    container = images.podman.run(*args, "--host", "127.0.0.1", "--port", str(port)).stdout.strip()
    images.containers.append(container)
    url = f"https://127.0.0.1:{port}"
    try:
        # The CA is made by the injector as it starts, before it listens: trust only that.
        deadline = time.monotonic() + 60
        trusted: ssl.SSLContext | None = None
        while True:
            secrets = kube_api.objects("secrets", "kamus")
            if secrets and trusted is None:
                ca = base64.b64decode(secrets[0]["data"]["ca.crt"]).decode()
                trusted = ssl.create_default_context(cadata=ca)
            try:
                if trusted and httpx.get(f"{url}/readyz", verify=trusted).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                logs = images.podman.run("logs", container, check=False)
                pytest.fail(f"the injector did not get ready:\n{_tail(logs.stdout + logs.stderr)}")
            time.sleep(0.2)
        pod = {
            "metadata": {
                "name": "web-0",
                "labels": {"kamus.soluto.com/inject": "true"},
                "annotations": {"kamus.soluto.com/secrets-from": "web-secrets"},
            },
            "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "w"}]},
        }
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "c0ffee",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "team-a",
                "operation": "CREATE",
                "object": pod,
            },
        }
        assert trusted is not None
        answer = httpx.post(f"{url}/mutate", json=review, verify=trusted, timeout=10).json()
        assert answer["response"]["uid"] == "c0ffee"
        patch = json.loads(base64.b64decode(answer["response"]["patch"]))
        [init] = [op["value"][0] for op in patch if op["path"] == "/spec/initContainers"]
        assert init["image"] == images.decryptor
        assert init["command"] == ["kamus"]
    finally:
        images.podman.run("rm", "--force", "--time=2", container, check=False)
        images.containers.remove(container)
