"""kamus/kubernetes_alone.py: what it saves, and that every module importing ``kubernetes``
runs it first (through its package's ``__init__.py``)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("crypto", "encryptor", "decryptor", "controller", "kamus")
ALONE = "kamus.kubernetes_alone"

PROBE = """
import sys
{first}
import kubernetes.aio.client
rss_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
              if line.startswith("VmRSS:"))
synchronous = [m for m in sys.modules if m.startswith("kubernetes.client")]
print(rss_kb, len(synchronous))
"""


def loaded(first: str) -> tuple[float, int]:
    """RSS in MB after ``import kubernetes.aio.client``, and the synchronous modules loaded."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=ROOT,
    )
    rss_kb, synchronous = result.stdout.split()
    return int(rss_kb) / 1024, int(synchronous)


def test_the_asyncio_client_loads_alone_and_saves_memory() -> None:
    plain_mb, plain_sync = loaded("")
    alone_mb, alone_sync = loaded(f"import {ALONE}")
    print(f"import kubernetes.aio.client: {plain_mb:.1f} MB, {alone_mb:.1f} MB with {ALONE}")
    assert plain_sync > 0  # the synchronous client, loaded for nothing
    assert alone_sync == 0
    assert plain_mb - alone_mb > 8  # the decryptor's whole margin is under 1 MB


def test_every_module_that_imports_kubernetes_runs_it_first() -> None:
    missing = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = [
                alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            ] + [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
            if not any(name.split(".")[0] == "kubernetes" for name in names):
                continue
            inits = [folder / "__init__.py" for folder in path.relative_to(ROOT).parents][:-1]
            if not any(f"import {ALONE}" in (ROOT / init).read_text() for init in inits):
                missing.append(str(path.relative_to(ROOT)))
    assert missing == []
