"""Benchmarks for issue 7, run with ``make bench`` (``python -m bench``): they print ratios
measured within one run, against doubles of Kubernetes and Cloud KMS, and write a JSON file and a
plot. ``python -m bench --quick`` is the smoke run that ``tests/soak/test_bench.py`` keeps alive."""
