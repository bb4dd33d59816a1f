"""What machine a run measured on: results carry it, since ratios differ between machines."""

import importlib.util
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    models = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu": models[0] if models else platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "httptools": importlib.util.find_spec("httptools") is not None,
    }
