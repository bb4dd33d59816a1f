"""``make run``: both services on loopback, on embedded defaults, without a cluster.

A key and a static token for ``system:serviceaccount:default:demo`` are generated once into the
state folder and reused, so ciphertexts from one run still open in the next.
"""

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

DEMO_USER = "system:serviceaccount:default:demo"
DEMO_GROUPS = "system:serviceaccounts,system:serviceaccounts:default,system:authenticated"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def prepare_state(state_dir: Path) -> tuple[Path, Path, str]:
    """The key file, the token file and the demo token, created on first use."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state_dir / ".gitignore").write_text("*\n", encoding="utf-8")
    key_file = state_dir / "aes.key"
    if not key_file.exists():
        _write_private(key_file, base64.b64encode(os.urandom(32)).decode() + "\n")
    token_file = state_dir / "tokens.csv"
    if not token_file.exists():
        token = secrets.token_urlsafe(32)
        _write_private(token_file, f'{token},{DEMO_USER},demo-uid,"{DEMO_GROUPS}"\n')
    token = token_file.read_text(encoding="utf-8").split(",", 1)[0]
    return key_file, token_file, token


def _wait_healthy(url: str, process: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.2)
    return False


def instructions(encryptor: str, decryptor: str, token: str) -> str:
    return f"""
Kamus is running on its embedded defaults (local AES key, static development token).
  encryptor  {encryptor}   (docs: {encryptor}/docs)
  decryptor  {decryptor}   (docs: {decryptor}/docs)

Encrypt for the service account 'demo' in namespace 'default':

  CT=$(curl -s -X POST {encryptor}/api/v1/encrypt -H 'Content-Type: application/json' \\
       -d '{{"data": "s3cr3t", "service-account": "demo", "namespace": "default"}}')
  echo "$CT"

Decrypt it as that service account:

  curl -s -X POST {decryptor}/api/v1/decrypt -H 'Authorization: Bearer {token}' \\
       -H 'Content-Type: application/json' -d "{{\\"data\\": \\"$CT\\"}}"

Press Ctrl-C to stop.
"""


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)  # unwinds through run_dev's finally, which stops the services


def run_dev(state_dir: str, encryptor_port: int, decryptor_port: int) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    key_file, token_file, token = prepare_state(Path(state_dir).resolve())
    env = {
        **os.environ,
        "KeyManagement__Provider": "AESKey",
        "KeyManagement__AES__KeyFile": str(key_file),
        "Kubernetes__TokenAuthFile": str(token_file),
    }
    env.pop("KeyManagement__AES__Key", None)
    services = {"encryptor": encryptor_port, "decryptor": decryptor_port}
    processes = {
        name: subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "kamus", "serve", name, "--host", "127.0.0.1", "--port", str(p)],
            env=env,
        )
        for name, p in services.items()
    }
    try:
        deadline = time.monotonic() + 30
        for name, port in services.items():
            if not _wait_healthy(f"http://127.0.0.1:{port}", processes[name], deadline):
                print(f"kamus dev: the {name} did not start; see its log above", file=sys.stderr)
                return 1
        print(
            instructions(
                f"http://127.0.0.1:{encryptor_port}", f"http://127.0.0.1:{decryptor_port}", token
            ),
            flush=True,
        )
        while all(p.poll() is None for p in processes.values()):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
