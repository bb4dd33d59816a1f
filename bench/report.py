"""The results as a table for the terminal and as one PNG of six panels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench import recipients
from bench.load import CONNECTIONS


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measurement, result, target, verdict) for each line of the table."""
    enc = results["encrypt_throughput"]
    pod = results["pod_start"]
    med = pod["median_ms"]
    reviews = pod["token_reviews"]
    dec = results["decrypt_throughput"]
    mem = results["memory"]
    lat = results["latency"]
    cold_warm_ok = set(reviews["cold"]) == {1} and set(reviews["warm"]) == {0}
    out = [
        (
            "1. encrypt throughput, kamus / bare uvicorn",
            f"{enc['kamus']['median_rps']:.0f} / {enc['bare']['median_rps']:.0f} req/s"
            f" = {enc['ratio']:.2f}",
            ">= 0.6",
            _verdict(enc["pass"]),
        ),
        (
            "   reference: minimal FastAPI app / bare",
            f"{enc['fastapi']['median_rps']:.0f} req/s = {enc['fastapi_over_bare']:.2f}",
            "",
            "-",
        ),
        (
            "   with Encryptor__DataKeyReuseSeconds=5 / bare",
            f"{enc['reuse']['median_rps']:.0f} req/s = {enc['reuse_over_bare']:.2f}",
            "",
            "-",
        ),
        (
            "   reference: encryption work alone, raw ASGI / bare",
            f"{enc['floor']['median_rps']:.0f} req/s = {enc['floor_over_bare']:.2f}"
            f" (kamus / it = {enc['kamus_over_floor']:.2f})",
            "",
            "-",
        ),
        (
            f"2. pod start, {pod['secrets']} secrets: Kamus flow / init batch",
            f"{med['kamus']:.0f} / {med['cold']:.1f} ms = {pod['speedup']:.1f}x",
            ">= 10x",
            _verdict(pod["pass"]),
        ),
        (
            "   ... Kamus flow against the cache (v1 client)",
            f"{med['v1_cached']:.0f} ms, {_counts(reviews['v1_cached'])} TokenReview(s)",
            "",
            "-",
        ),
        (
            "   ... init batch, same token again (warm)",
            f"{med['warm']:.1f} ms = {pod['speedup_warm']:.1f}x",
            "",
            "-",
        ),
        (
            "   ... kamus init as a new process",
            f"{med['process']:.0f} ms = {pod['speedup_with_process_start']:.1f}x",
            "",
            "-",
        ),
        (
            "   TokenReviews per pod start: cold, warm",
            f"{_counts(reviews['cold'])}, {_counts(reviews['warm'])}"
            f" (Kamus flow {_counts(reviews['kamus'])})",
            "1, 0",
            _verdict(cold_warm_ok),
        ),
        (
            "3. decrypt throughput, cache warm / off",
            f"{dec['warm']['median_rps']:.0f} / {dec['cold']['median_rps']:.0f} req/s"
            f" = {dec['ratio']:.1f}x",
            "",
            "-",
        ),
        (
            f"4. RSS after {mem['requests']} requests: encryptor, decryptor",
            f"{mem['encryptor']['rss_mb']:.1f}, {mem['decryptor']['rss_mb']:.1f} MB",
            "<= 80 MB",
            _verdict(mem["pass"]),
        ),
    ]
    for name in ("encrypt", "decrypt", "bare"):
        out.append(
            (
                f"5. {name} latency at {lat['rate']:g} req/s: p50, p99",
                f"{lat[name]['p50_ms']:.2f}, {lat[name]['p99_ms']:.2f} ms",
                "",
                "-",
            )
        )
    sweep = results["worker_sweep"]
    if "workers" in sweep:
        workers = sweep["workers"]
        numbers = ", ".join(f"{n}: {s['median_rps']:.0f}" for n, s in workers.items())
        out.append(("6. encrypt req/s by --workers: median", numbers, "", "-"))
        numbers = ", ".join(f"{n}: {s['max_rps']:.0f}" for n, s in workers.items())
        out.append(("   best round", numbers, "", "-"))

    else:
        out.append(("6. encrypt req/s by --workers", f"skipped ({sweep['skipped']})", "", "-"))
    if "sealing" in results:
        out.extend(_sealing_rows(results["sealing"]))
    if "rewrap" in results:
        out.extend(_rewrap_rows(results["rewrap"]))
    if "rollout" in results:
        out.extend(_rollout_rows(results["rollout"]))
    if "recipients" in results:
        rows = recipients.rows(results["recipients"])
        out.extend(
            (f"10. {name}" if i == 0 else name, text, "", "-")
            for i, (name, text) in enumerate(rows)
        )
    return out


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _rollout_rows(rollout: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Measurement 9 in the bench's table: per KMS double, the largest rollout's three flows
    and issue 20's targets."""
    out = []
    for target in rollout["targets"]:
        kind, n = target["kms"], target["pods"]
        runs = {r["flow"]: r for r in rollout["runs"] if r["kms"] == kind and r["pods"] == n}
        flows = [runs.get(name) for name in ("kamus", "cache_off", "cache_on")]

        def each(field: str, show: Any = str, flows: list[Any] = flows) -> str:
            return " / ".join("-" if run is None else show(run[field]) for run in flows)

        out += [
            (
                f"9. rollout, {kind} N={n}: KMS calls, Kamus flow / cache off / on",
                f"{each('double_admitted')} (throttled {each('throttled')})",
                f"on <= {target['kms_calls_target']}",
                _verdict(target["kms_calls_pass"]),
            ),
            (
                "   p99 pod start: Kamus flow / cache off / on (s)",
                f"{each('p99_seconds', _seconds)}; pods failed {each('pods_failed')}",
                "0 failed",
                _verdict(target["pods_failed_pass"]),
            ),
            (
                "   p99, cache on / KMS without delay or quota",
                f"{_seconds(target['p99_seconds'])} / "
                f"{_seconds(target['reference_p99_seconds'])} s = "
                + ("-" if target["p99_ratio"] is None else f"{target['p99_ratio']:.2f}x"),
                f"<= {target['p99_ratio_target']}x",
                _verdict(target["p99_pass"]),
            ),
        ]
    return out


def rollout_table(results: dict[str, Any]) -> str:
    """``python -m bench.rollout``'s table: a line per run, then issue 20's targets."""
    plan = results["plan"]
    header = (
        "kms",
        "N",
        "flow",
        "KMS calls",
        "at double",
        "throttled",
        "503 pods",
        "failed",
        "> timeout",
        "p50 s",
        "p99 s",
        "wall s",
    )
    lines = [header]
    for run in results["runs"]:
        lines.append(
            (
                run["kms"],
                str(run["pods"]),
                run["label"],
                str(run["kms_calls"]),
                str(run["double_crypto_calls"]),
                str(run["throttled"]),
                str(run["pods_with_503"]),
                str(run["pods_failed"]),
                str(run.get("pods_over_timeout", "-")),
                _seconds(run["p50_seconds"]),
                _seconds(run["p99_seconds"]),
                f"{run['wall_seconds']:.2f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)
    before, after = results["load_average"]
    text = [
        f"\nRollout ({results['mode']}): N pods x 20 values at once, one decryptor; KMS double "
        f"+{plan['delay'] * 1e3:g} ms a call, quota {plan['quota']:g} crypto calls/s; "
        f"load average {before} before, {after} after",
        "KMS calls: the decryptor's kamus_kms_calls_total (its timeouts included); at double: "
        "crypto calls that reached the KMS double, throttled ones included; > timeout: pods "
        "that got their values, later than kamus init's --timeout",
        rule,
    ]
    for line in lines:
        text.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if line is header:
            text.append(rule)
    text.append("")
    for target in results["targets"]:
        text.append(
            f"target, {target['kms']} N={target['pods']}, cache on: "
            f"KMS calls {target['kms_calls']} <= {target['kms_calls_target']} "
            f"{_verdict(target['kms_calls_pass'])}; pods failed {target['pods_failed']} "
            f"{_verdict(target['pods_failed_pass'])}; p99 {_seconds(target['p99_seconds'])} s "
            f"/ reference {_seconds(target['reference_p99_seconds'])} s = "
            + ("-" if target["p99_ratio"] is None else f"{target['p99_ratio']:.2f}x")
            + f" <= {target['p99_ratio_target']}x {_verdict(target['p99_pass'])}"
        )
    return "\n".join(text)


_FLOW_COLOURS = {
    "kamus": "#c44e52",
    "cache_off": "#dd8452",
    "cache_on": "#4c72b0",
    "reference": "#8c8c8c",
}
_FLOW_NAMES = {
    "kamus": "Kamus flow",
    "cache_off": "ours, cache off",
    "cache_on": "ours, cache on",
    "reference": "reference",
}


def _grouped(
    ax: Axes,
    runs: list[dict[str, Any]],
    value: Any,
    unit: str = "",
    label_format: str = "{:,.0f}",
) -> None:
    """Bars of ``value(run)`` grouped by pod count, one colour per flow."""
    counts = sorted({run["pods"] for run in runs})
    flows = [f for f in _FLOW_NAMES if any(run["flow"] == f for run in runs)]
    width = 0.8 / len(flows)
    for i, flow in enumerate(flows):
        mine = {run["pods"]: run for run in runs if run["flow"] == flow}
        xs = [j + (i - (len(flows) - 1) / 2) * width for j, n in enumerate(counts) if n in mine]
        ys = [value(mine[n]) for n in counts if n in mine]
        heights = [0 if y is None else y for y in ys]
        bars = ax.bar(xs, heights, width, color=_FLOW_COLOURS[flow], label=_FLOW_NAMES[flow])
        labels = ["-" if y is None else label_format.format(y) + unit for y in ys]
        ax.bar_label(bars, labels=labels, fontsize=7)
    ax.set_xticks(range(len(counts)), [f"N = {n} pods" for n in counts])


def plot_rollout(results: dict[str, Any], path: Path) -> None:
    """Measurement 9: for each KMS double a row of pod start, KMS calls and pods hit."""
    kinds = list(dict.fromkeys(run["kms"] for run in results["runs"]))
    fig, axes = plt.subplots(len(kinds), 3, figsize=(16, 4.2 * len(kinds)), squeeze=False)
    plan = results["plan"]
    for row, kind in zip(axes, kinds, strict=True):
        runs = [run for run in results["runs"] if run["kms"] == kind]
        ax = row[0]
        _grouped(ax, runs, lambda run: run["p99_seconds"], " s", "{:.2f}")
        ax.set_title(f"{kind}: p99 pod start (s; '-': over 1% of pods failed)")
        ax.legend(fontsize=7)
        ax = row[1]
        _grouped(ax, runs, lambda run: run["double_admitted"] or None)
        ax.set_yscale("log")  # 20 against 4,000
        ax.set_title(f"{kind}: KMS crypto calls served per rollout (log)")
        ax = row[2]
        _grouped(ax, runs, lambda run: run["pods_with_503"])
        ax.set_ylim(0, max(run["pods"] for run in runs) * 1.1)  # out of N pods
        failed = ", ".join(
            f"{_FLOW_NAMES[run['flow']]} N={run['pods']}: {run['pods_failed']}"
            for run in runs
            if run["pods_failed"]
        )
        ax.set_title(f"{kind}: pods that got a 503\npods failed: {failed or 'none'}", fontsize=9)
    fig.suptitle(
        f"Rollout ({results['mode']}): pods x 20 values at once, one decryptor; KMS double "
        f"+{plan['delay'] * 1e3:g} ms a call, quota {plan['quota']:g}/s; "
        f"load average {results['load_average'][0]}-{results['load_average'][1]}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _rewrap_rows(rewrap: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    aes, aws = rewrap["aes"], rewrap["aws"]
    return [
        (
            f"8. kamus rewrap --in-place, {aes['values']} values: AES (a1 -> m1)",
            f"{aes['values_per_second']:.0f} values/s ({aes['seconds']:.1f} s)",
            "",
            "-",
        ),
        (
            "   AWS KMS via moto, after the alias moved to a new key",
            f"{aws['values_per_second']:.0f} values/s ({aws['seconds']:.1f} s), "
            f"{aws['kms_calls'] / aws['values']:.1f} KMS calls per value",
            "",
            "-",
        ),
    ]


def _sealing_rows(sealing: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    value = sealing["per_value"]
    offline = sealing["offline_secret"]
    enc = sealing["encrypt_throughput"]
    process = f"{offline['process_ms']:.0f} ms" if "process_ms" in offline else offline["process"]
    return [
        (
            "7. per value: a1 encrypt, m1 seal (HPKE X25519), m1 open",
            f"{value['a1_encrypt_us']:.0f}, {value['m1_seal_us']:.0f}, "
            f"{value['m1_open_us']:.0f} µs",
            "",
            "-",
        ),
        (
            "   post-quantum hybrid: seal, open",
            f"{value['pq_seal_us']:.0f}, {value['pq_open_us']:.0f} µs",
            "",
            "-",
        ),
        (
            "   value sizes for 6 bytes: a1, m1, m1 post-quantum",
            ", ".join(str(n) for n in value["sizes"].values()) + " characters",
            "",
            "-",
        ),
        (
            "   20-key Secret sealed offline: in process, kamus seal --offline",
            f"{offline['in_process_us']:.0f} µs, {process}",
            "",
            "-",
        ),
        (
            "   v1 encrypt, bundle-only encryptor (m1) / a1",
            f"{enc['m1']['median_rps']:.0f} / {enc['a1']['median_rps']:.0f} req/s"
            f" = {enc['m1_over_a1']:.2f}",
            "",
            "-",
        ),
    ]


def _counts(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "/".join(map(str, values))


def table(results: dict[str, Any]) -> str:
    lines = rows(results)
    widths = [max(len(row[i]) for row in lines) for i in range(4)]
    header = ("measurement", "result", "target", "")
    rule = "  ".join("-" * w for w in widths)
    before, after = results["load_average"]
    text = [
        f"\nKamus bench ({results['mode']}), {results['load_generator']}; "
        f"load average {before} before, {after} after",
        rule,
    ]
    for row in [header, *lines]:
        text.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if row is header:
            text.append(rule)
    spread = results["worker_sweep"].get("connections_per_worker", {})
    if spread:
        text.append(f"\nwrk's {CONNECTIONS} connections over the workers, round by round:")
        for workers, rounds in spread.items():
            text.append(
                f"  --workers {workers}: " + "  ".join("/".join(map(str, r)) for r in rounds)
            )
    return "\n".join(text)


def _bars(ax: Axes, values: dict[str, float], color: str, unit: str = "") -> None:
    """Bars labelled with their values."""
    bars = ax.bar(list(values), list(values.values()), color=color)
    ax.bar_label(bars, labels=[f"{v:,.0f}{unit}" for v in values.values()], fontsize=8)
    ax.tick_params(axis="x", labelsize=8)


def _rounds(ax: Axes, rounds: list[list[float]]) -> None:
    """Each round's result as a dot on its bar: the spread that the median hides."""
    for i, values in enumerate(rounds):
        ax.plot([i] * len(values), values, "k.", markersize=4)


def plot(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    enc, dec = results["encrypt_throughput"], results["decrypt_throughput"]

    ax = axes[0][0]
    servers = {
        "bare\nuvicorn": enc["bare"],
        "minimal\nFastAPI": enc["fastapi"],
        "encryption\nalone": enc["floor"],
        "kamus\nencrypt": enc["kamus"],
        "decrypt\ncache warm": dec["warm"],
        "decrypt\ncache off": dec["cold"],
    }
    _bars(ax, {k: v["median_rps"] for k, v in servers.items()}, "#4c72b0")
    _rounds(ax, [v["rps"] for v in servers.values()])
    ax.set_title(f"1, 3. Throughput (req/s), median of rounds\nencrypt/bare = {enc['ratio']:.2f}")

    pod = results["pod_start"]
    ax = axes[0][1]
    labels = {"kamus": "Kamus flow\n20 x v1", "v1_cached": "20 x v1\ncache on"}
    labels |= {"cold": "init batch\nnew token", "warm": "init batch\nsame token"}
    labels |= {"process": "kamus init\nprocess"}
    _bars(ax, {labels[k]: pod["median_ms"][k] for k in labels}, "#dd8452", " ms")
    _rounds(ax, [[v * 1e3 for v in pod["seconds"][k]] for k in labels])
    ax.set_title(f"2. Pod start, {pod['secrets']} secrets (ms), median\nspeedup {pod['speedup']}x")

    ax = axes[0][2]
    reviews = pod["token_reviews"]
    names = {"kamus": "Kamus flow", "v1_cached": "20 x v1\ncache on"}
    names |= {"cold": "init batch\nnew token", "warm": "init batch\nsame token"}
    _bars(ax, {names[k]: reviews[k][0] for k in names}, "#55a868")
    ax.set_title("2. TokenReviews per pod start")

    lat = results["latency"]
    ax = axes[1][0]
    names = {"encrypt": "kamus encrypt", "decrypt": "kamus decrypt", "bare": "bare uvicorn"}
    for offset, key in [(-0.2, "p50_ms"), (0.2, "p99_ms")]:
        values = [lat[name][key] for name in names]
        bars = ax.bar([i + offset for i in range(3)], values, width=0.4, label=key[:3])
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
    ax.set_xticks([0, 1, 2], list(names.values()))
    ax.set_yscale("log")  # a single stall makes a p99 that would flatten every other bar
    ax.legend()
    ax.set_title(f"5. Latency at {lat['rate']:g} req/s, open loop (ms, log scale)")

    mem = results["memory"]
    ax = axes[1][1]
    rss = {
        "encryptor\nAES": mem["encryptor"]["rss_mb"],
        "decryptor\nAES": mem["decryptor"]["rss_mb"],
        "encryptor\nGoogleKms": pod["rss_mb"]["encryptor"],
        "decryptor\nGoogleKms": pod["rss_mb"]["decryptor"],
    }
    _bars(ax, rss, "#c44e52", " MB")
    ax.axhline(mem["target_mb"], color="black", linestyle="--", label="target")
    ax.legend(loc="upper left")
    ax.set_title(
        f"4. RSS (MB), AES after {mem['requests']} requests,\nGoogleKms after the pod starts"
    )

    ax = axes[1][2]
    sweep = results["worker_sweep"]
    if "workers" in sweep:
        workers = sweep["workers"]
        _bars(ax, {k: w["median_rps"] for k, w in workers.items()}, "#8172b3")
        _rounds(ax, [w["rps"] for w in workers.values()])
        ax.set_xlabel("kamus serve --workers")
        ax.set_title("6. Encrypt throughput by workers (req/s)")
    else:
        ax.axis("off")
        ax.set_title(f"6. Worker sweep skipped ({sweep['skipped']})")

    info = results["machine"]
    fig.suptitle(
        f"Kamus bench ({results['mode']}): {info['cores']} cores, {info['cpu']}, "
        f"Python {info['python']}; {results['load_generator']}; "
        f"load average {results['load_average'][0]}-{results['load_average'][1]}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
