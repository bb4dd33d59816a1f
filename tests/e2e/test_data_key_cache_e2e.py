"""The data-key cache in a real ``kamus serve decryptor`` process: SIGHUP empties it, and the
process can write no core dump (the cached keys and the master key are in its memory)."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.k8s_double import KubeApiDouble
from tests.kms_doubles.gcp import CloudKmsDouble
from tests.support import leaks
from tests.support.processes import deploy

SECRET = "sighup-s3cr3t"
leaks.register(SECRET)


def misses(decryptor_url: str) -> float:
    text = httpx.get(f"{decryptor_url}/metrics", timeout=10).text
    found = re.search(r'^kamus_data_key_cache_total\{result="miss"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_sighup_empties_the_cache_and_no_core_dump_is_possible(
    gcp_kms: CloudKmsDouble, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    gcp_kms.allow_anonymous = False
    env = {**gcp_kms.env(tmp_path / "sa.json"), "KeyManagement__Provider": "GoogleKms"}
    with deploy(kube_api, tmp_path, env) as deployment:
        ciphertext = deployment.encrypt(SECRET, "team-a", "app").text
        token = kube_api.issue_token("team-a", "app")
        url = deployment.decryptor.url
        for _ in range(3):
            assert deployment.decrypt(ciphertext, token).text == SECRET
        assert misses(url) == 1

        process = deployment.decryptor.process
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "the data-key cache is empty" not in deployment.decryptor.log_file.read_text():
            assert process.poll() is None, "SIGHUP stopped the decryptor"
            assert time.monotonic() < deadline, "the decryptor did not log the cleared cache"
            time.sleep(0.05)
        assert deployment.decrypt(ciphertext, token).text == SECRET
        assert misses(url) == 2

        limits = Path(f"/proc/{process.pid}/limits").read_text()
        core = re.search(r"^Max core file size\s+(\S+)\s+(\S+)", limits, re.M)
        assert core is not None
        assert core.groups() == ("0", "0")


def test_no_core_dumps_also_makes_the_process_undumpable() -> None:
    """PR_SET_DUMPABLE 0 (read back with PR_GET_DUMPABLE), which also keeps other processes of
    the same user from ptrace and /proc/<pid>/mem; in a process of its own, as a service's."""
    script = (
        "import ctypes, resource; from kamus.server.process import no_core_dumps; "
        "libc = ctypes.CDLL(None); before = libc.prctl(3, 0, 0, 0, 0); no_core_dumps(); "
        "print(before, libc.prctl(3, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split(maxsplit=2) == ["1", "0", "(0, 0)\n"]
