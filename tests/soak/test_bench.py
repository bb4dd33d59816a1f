"""The benchmark suite keeps working: its smoke run (``python -m bench --quick``) completes and
reports every measurement. What the numbers are is for docs/performance.md, never asserted here;
the TokenReview counts are functional facts, so they are."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.bare import app as bare_app
from bench.load import Target, closed_loop, open_loop
from tests.support.servers import ThreadedServer

ROOT = Path(__file__).resolve().parents[2]


def positive(section: dict[str, Any], *paths: str) -> None:
    for path in paths:
        value: Any = section
        for part in path.split("."):
            value = value[part]
        assert isinstance(value, int | float), path
        assert value > 0, path


def test_quick_bench_reports_every_measurement(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard, not a performance check
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS" in run.stdout or "FAIL" in run.stdout  # the table was printed
    assert (tmp_path / "performance.png").read_bytes().startswith(b"\x89PNG")
    results = json.loads((tmp_path / "results.json").read_text())

    enc = results["encrypt_throughput"]
    for name in ("kamus", "bare", "fastapi", "floor", "reuse"):
        positive(enc, f"{name}.median_rps", f"{name}.requests")
        assert enc[name]["errors"] == 0
    positive(
        enc, "ratio", "fastapi_over_bare", "floor_over_bare", "kamus_over_floor", "reuse_over_bare"
    )

    pod = results["pod_start"]
    positive(pod, "speedup", "speedup_warm", "speedup_with_process_start")
    for name in ("kamus", "v1_cached", "cold", "warm", "process"):
        positive(pod, f"median_ms.{name}")
    # One TokenReview for a new pod's token, none for the same token again; Kamus's flow
    # without the cache asks once per secret.
    assert set(pod["token_reviews"]["cold"]) == {1}
    assert set(pod["token_reviews"]["warm"]) == {0}
    assert set(pod["token_reviews"]["kamus"]) == {pod["secrets"]}
    assert set(pod["token_reviews"]["v1_cached"]) == {1}

    dec = results["decrypt_throughput"]
    positive(dec, "warm.median_rps", "cold.median_rps", "ratio")
    assert dec["warm"]["errors"] == dec["cold"]["errors"] == 0
    assert dec["token_reviews_per_cold_request"] > 0.9  # the cache really was off
    assert dec["warm_cache_lookups"]["hit"] > 0

    positive(results["memory"], "encryptor.rss_mb", "decryptor.rss_mb", "requests")
    for name in ("bare", "encrypt", "decrypt"):
        positive(results["latency"], f"{name}.p50_ms", f"{name}.p99_ms", f"{name}.requests")
    assert results["worker_sweep"] == {"skipped": "quick run"}

    # Issue 22: a value's size grows with its recipients, and opening it finds its own stanza by
    # key id: one X25519 unwrap whatever the number of stanzas.
    by_count = results["recipients"]["recipients"]
    assert list(by_count) == ["1", "2", "5"]
    for count in by_count:
        positive(by_count, f"{count}.size", f"{count}.seal_us", f"{count}.open_us")
        assert by_count[count]["unwraps_per_open"] == 1
    assert by_count["1"]["size"] < by_count["2"]["size"] < by_count["5"]["size"]
    assert "10. recipients (clusters): 1, 2, 5" in run.stdout


def test_python_load_generator_counts_requests() -> None:
    """The fallback for machines without wrk, and the memory and latency client."""
    server = ThreadedServer(bare_app)
    server.start()
    try:
        target = Target(f"http://127.0.0.1:{server.port}/api/v1/encrypt", {"data": "x"}, {})
        counted = closed_loop(target, connections=4, count=50)
        assert counted.requests == 50
        assert counted.errors == 0
        latency = open_loop(target, rate=100, seconds=0.2)
        assert latency.requests == 20
        assert latency.errors == 0
        assert 0 < latency.p50_ms <= latency.p99_ms <= latency.max_ms
    finally:
        server.stop()
