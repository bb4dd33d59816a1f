"""A test run leaves nothing behind: the doubles' certificate folders go with the doubles (the
processes a run starts are checked by conftest's ``_nothing_left_running``).

A double may start again after it stops, with the same certificate, so its folder lives as long
as the double: at the latest, until the interpreter exits."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_doubles_folders_are_removed_when_the_interpreter_exits() -> None:
    """Doubles still referenced at exit, as a session fixture's are."""
    script = (
        "from tests.k8s_double import KubeApiDouble\n"
        "from tests.kms_doubles.azure import KeyVaultDouble\n"
        "kept = [KubeApiDouble().start(), KeyVaultDouble().start()]\n"
        "print(*(d.ca_file for d in kept))\n"
        "for d in kept: d.stop()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    folders = [Path(ca).parent for ca in result.stdout.split()]
    assert len(folders) == 2
    assert not any(folder.exists() for folder in folders)
