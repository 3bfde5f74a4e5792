"""Render the suites' JSON figures as bench/RESULTS.md (used by bench/run).

python bench/report.py results.json > RESULTS.md
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{max(1, digits - len(str(int(abs(v)))))}f}"
    return str(v)


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


class Targets:
    """Rows of (figure, value, target text, value/target, meets)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(
        self, figure: str, value: float | None, target: float, *, at_most: bool, unit: str = "", note: str = ""
    ) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self.rows.append((figure, "—", f"{'≤' if at_most else '≥'} {_num(target)}{unit}", "—", "not measured"))
            return
        ratio = value / target if target else float("nan")
        ok = value <= target if at_most else value >= target
        meets = "yes" if ok else "**no**"
        self.rows.append((figure + (f" ({note})" if note else ""), f"{_num(value)}{unit}",
                          f"{'≤' if at_most else '≥'} {_num(target)}{unit}", f"{ratio:.2f}×", meets))  # fmt: skip

    def markdown(self) -> str:
        if not self.rows:
            return ""
        out = ["| figure | measured | target | measured / target | meets |", "|---|---|---|---|---|"]
        out += [f"| {' | '.join(r)} |" for r in self.rows]
        return "\n".join(out)


def _stat_row(label: str, s: dict[str, Any] | None, keys: tuple[str, ...] = ("n", "p50", "p95", "p99", "max")) -> str:
    if not s:
        return f"| {label} | " + " | ".join("—" for _ in keys) + " |"
    return f"| {label} | " + " | ".join(_num(s.get(k)) for k in keys) + " |"


def _errors(suite: dict[str, Any]) -> list[str]:
    out = []
    if "error" in suite:
        out.append(f"> **suite failed:** `{str(suite['error'])[-600:]}`")
    for sb, why in (suite.get("skipped") or {}).items():
        out.append(f"> sandbox `{sb}` skipped: {why}")
    for sb, res in (suite.get("sandboxes") or {}).items():
        if isinstance(res, dict) and "error" in res:
            out.append(f"> **`{sb}` failed:** `{str(res['error'])[-800:]}`")
    return out


def warm(s: dict[str, Any], t: Targets) -> list[str]:
    out = ["## 1. Warm calls (HTTP trigger → Python hello)", ""]
    out += _errors(s)
    out += [
        "`wrk -t2 -cN -d10s --latency` (c1 runs `-t1`: wrk needs connections ≥ threads). The baseline is",
        "`bench/baseline_hop.py` (aiohttp+uvloop front → one unix connection → one uvloop worker, `!II` frames),",
        "measured seconds before the engine at each N. *hello* is examples/hello as shipped (concurrency 10,",
        "instance_concurrency 1); *hello-mux* is the same code shaped like the baseline (1 instance,",
        "instance_concurrency 64). CPU is utime+stime of the serving processes over the run, per request.",
        "",
    ]
    bare = s.get("bare_c64")
    if bare:
        out += [f"Bare aiohttp+uvloop hello (no hop) at c64 for reference: **{_num(bare['rps'])} req/s**, p50 {_num(bare['p50_ms'])} ms, "
                f"{_num(bare.get('cpu_us_per_req'))} µs CPU/req.", ""]  # fmt: skip
    for sb, r in (s.get("sandboxes") or {}).items():
        if "error" in r:
            continue
        out += [f"### sandbox `{sb}`", "",
                "| N | baseline req/s | engine req/s | engine / baseline | baseline p50 / p99 ms | engine p50 / p99 ms | CPU µs/req baseline → engine (controller + instances) |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        for key in ("c1", "c16", "c64"):
            row = r.get(key)
            if not row:
                continue
            b, e = row["baseline"], row["engine"]
            cpu_e = e.get("cpu_us_per_req_by") or {}
            out.append(
                f"| {key[1:]} | {_num(b['rps'])} | {_num(e['rps'])} | **{_num(row['rps_ratio'])}** | {_num(b['p50_ms'])} / {_num(b['p99_ms'])} | "
                f"{_num(e['p50_ms'])} / {_num(e['p99_ms'])} | {_num(b.get('cpu_us_per_req'))} → {_num(e.get('cpu_us_per_req'))} "
                f"({_num(cpu_e.get('controller'))} + {_num(cpu_e.get('instances'))}) |"
            )
            if key == "c64" and row.get("engine_mux"):
                m = row["engine_mux"]
                cpu_m = m.get("cpu_us_per_req_by") or {}
                out.append(
                    f"| 64, hello-mux | {_num(b['rps'])} | {_num(m['rps'])} | **{_num(row['mux_rps_ratio'])}** | {_num(b['p50_ms'])} / {_num(b['p99_ms'])} | "
                    f"{_num(m['p50_ms'])} / {_num(m['p99_ms'])} | {_num(b.get('cpu_us_per_req'))} → {_num(m.get('cpu_us_per_req'))} "
                    f"({_num(cpu_m.get('controller'))} + {_num(cpu_m.get('instances'))}) |"
                )
        seq = r.get("sequential") or {}
        out += ["", "Sequential warm calls, one keep-alive connection (ms):", "",
                "| client → server | n | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|"]  # fmt: skip
        for key, label in (("engine_raw", "raw socket → engine"), ("baseline_raw", "raw socket → baseline"),
                           ("engine_httpx", "httpx → engine"), ("baseline_httpx", "httpx → baseline")):  # fmt: skip
            out.append(_stat_row(label, seq.get(key)))
        out.append("")
        c64, c1 = r.get("c64") or {}, r.get("c1") or {}
        t.add(f"warm c64 throughput engine/baseline [{sb}]", c64.get("rps_ratio"), 0.8, at_most=False, unit="×")
        t.add(
            f"warm c64 hello-mux/baseline [{sb}]",
            c64.get("mux_rps_ratio"),
            0.8,
            at_most=False,
            unit="×",
            note="baseline-shaped spec",
        )
        t.add(f"warm c1 p50, wrk [{sb}]", _get(c1, "engine", "p50_ms"), 0.6, at_most=True, unit=" ms")
        t.add(f"warm c1 p99, wrk [{sb}]", _get(c1, "engine", "p99_ms"), 3.0, at_most=True, unit=" ms")
        t.add(
            f"warm p50, 1,000 sequential calls, Python raw client [{sb}]",
            _get(seq, "engine_raw", "p50"),
            0.6,
            at_most=True,
            unit=" ms",
        )
    return out


def cold(s: dict[str, Any], t: Targets, control: dict[str, Any] | None) -> list[str]:
    out = ["## 2. Cold starts (new function → new instance, generic pool of 8 warm)", ""]
    out += _errors(s)
    out += [
        "Each first call goes to a function deployed earlier and never called; the pool is refilled before each",
        "call. *client* is measured at the client; *acquire* is the controller's `wait_ms` from the activation record",
        "(funclet WarmUp gRPC + connecting to the runner); *runner init* is the handler import in the runner",
        "(the `X-Easyfaas-Init-Ms` header of the management API's invoke is the same figure).",
        "",
    ]
    interp = _get(s, "interpreters", "results") or {}
    pyiS = None
    if interp:
        out += [
            "Interpreter start-up in the same run (hyperfine, ms):",
            "",
            "| command | n | min | median | max |",
            "|---|---|---|---|---|",
        ]
        for label, r in interp.items():
            out.append(f"| `{label}` | {r['n']} | {_num(r['min'])} | {_num(r['median'])} | {_num(r['max'])} |")
            if "-I -S" in label:
                pyiS = r["median"]
        out.append("")
    for sb, r in (s.get("sandboxes") or {}).items():
        if "error" in r:
            continue
        http, api = r.get("http") or {}, r.get("api") or {}
        out += [f"### sandbox `{sb}` (n = {r.get('n')} per path)", "",
                "| figure (ms) | n | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|",
                _stat_row("HTTP trigger, client", http.get("client_ms")),
                _stat_row("HTTP trigger, controller acquire (wait_ms)", http.get("controller_acquire_ms")),
                _stat_row("HTTP trigger, runner init (handler import)", http.get("runner_init_ms")),
                _stat_row("management API invoke, client", api.get("client_ms")),
                _stat_row("management API `X-Easyfaas-Init-Ms`", api.get("x_easyfaas_init_ms")),
                _stat_row("wait for the pool to refill before each call", r.get("refill_wait_ms"))]  # fmt: skip
        wp = _get(control, "sandboxes", sb, "warm_up_ms")
        if wp:
            out.append(_stat_row("funclet WarmUp gRPC round trip (suite 5)", wp))
        rp = r.get("refill_of_whole_pool") or {}
        out += ["", f"Refilling the whole pool of {rp.get('sandboxes')} after draining it: "
                f"{_num(rp.get('seconds_from_first_call'))} s from the first of {rp.get('sandboxes')} cold calls.", ""]  # fmt: skip
        p50 = _get(http, "client_ms", "p50")
        if p50 and pyiS:
            out += [
                f"Cold p50 through the HTTP trigger is **{p50 / pyiS:.2f}×** `python -I -S -c pass` measured in this run.",
                "",
            ]
        t.add(f"cold p50, HTTP trigger [{sb}]", p50, 10.0, at_most=True, unit=" ms")
        t.add(f"cold p99, HTTP trigger [{sb}]", _get(http, "client_ms", "p99"), 25.0, at_most=True, unit=" ms",
              note=f"n={_get(http, 'client_ms', 'n')}: p99 ≈ max")  # fmt: skip
        if wp:
            t.add(f"cold p50 at the funclet (WarmUp round trip) [{sb}]", wp.get("p50"), 5.0, at_most=True, unit=" ms")
    return out


def memory(s: dict[str, Any], t: Targets) -> list[str]:
    out = ["## 3. Memory", ""]
    out += _errors(s)
    fresh = s.get("fresh_interpreter_mib")
    if fresh:
        out += [
            f"Reference in the same run: a fresh idle `python -I -S` is {fresh['uss']:.2f} MiB USS, {fresh['rss']:.2f} MiB RSS.",
            "",
        ]
    for sb, r in (s.get("sandboxes") or {}).items():
        if "error" in r:
            continue
        rss = r.get("engine_rss_mib") or {}
        out += [f"### sandbox `{sb}` ({r.get('warm_instances')} warm instances of {r.get('functions')} functions)", "",
                "| warm instances | controller RSS MiB | funclet RSS MiB | controller + funclet MiB |", "|---|---|---|---|"]  # fmt: skip
        for k, v in rss.items():
            out.append(
                f"| {k} | {_num(v.get('controller'))} | {_num(v.get('funclet'))} | {_num(v.get('controller+funclet'))} |"
            )
        out += ["", f"Engine growth: {_num(r.get('engine_rss_growth_kib_per_instance'))} KiB RSS per warm instance.", "",
                "| per idle warm instance (MiB) | n | p50 | p95 | max |", "|---|---|---|---|---|",
                _stat_row("runner process USS", r.get("runner_uss_mib"), ("n", "p50", "p95", "max")),
                _stat_row("runner process RSS", r.get("runner_rss_mib"), ("n", "p50", "p95", "max")),
                _stat_row(f"whole instance USS ({r.get('instance_processes')} processes each)", r.get("instance_uss_mib"), ("n", "p50", "p95", "max")),
                "", f"All instances: {_num(r.get('instances_sum_uss_mib'))} MiB summed USS, {_num(r.get('instances_sum_pss_mib'))} MiB summed PSS. "
                f"Sandbox processes that are not instances (zygotes, pool): {_get(r, 'sandbox_overhead', 'processes')} processes, "
                f"{_num(_get(r, 'sandbox_overhead', 'uss_mib'))} MiB USS.", ""]  # fmt: skip
        t.add(
            f"idle warm instance USS, runner [{sb}]", _get(r, "runner_uss_mib", "p50"), 2.0, at_most=True, unit=" MiB"
        )
        if r.get("instance_processes", 1) > 1:
            t.add(
                f"idle warm instance USS, whole instance [{sb}]",
                _get(r, "instance_uss_mib", "p50"),
                2.0,
                at_most=True,
                unit=" MiB",
            )
        n = r.get("warm_instances") or 0
        if n and r.get("instances_sum_pss_mib") is not None:
            per100 = (r["instances_sum_pss_mib"] + (_get(r, "sandbox_overhead", "uss_mib") or 0)) * 100 / n
            t.add(f"summed PSS per 100 idle instances incl. sandbox overhead [{sb}]", per100, 200.0, at_most=True, unit=" MiB",
                  note="perf-anchors implied target 7")  # fmt: skip
    return out


def scale(s: dict[str, Any], t: Targets) -> list[str]:
    out = ["## 4. Scale", ""]
    out += _errors(s)
    out += ["An empty engine (only the target function) and a loaded one (1,000 functions deployed, 200 warm instances)",
            "run side by side; sequential keep-alive calls to the target alternate between them in blocks.", ""]  # fmt: skip
    for sb, r in (s.get("sandboxes") or {}).items():
        if "error" in r:
            continue
        out += [f"### sandbox `{sb}`: {r.get('loaded_functions')} functions, {r.get('loaded_instances')} instances in the loaded engine", "",
                "| engine (ms) | n | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|",
                _stat_row("empty", r.get("empty")), _stat_row("loaded", r.get("loaded")), ""]  # fmt: skip
        if r.get("wrk_empty"):
            out += [f"wrk c64 5 s: empty {_num(r['wrk_empty']['rps'])} req/s, loaded {_num(r['wrk_loaded']['rps'])} req/s "
                    f"(loaded/empty {_num(r.get('rps_ratio'))}).", ""]  # fmt: skip
        out += [f"Setup: {r.get('deploy_s')} s to deploy, {r.get('warm_s')} s to warm the instances.", ""]
        t.add(f"scale p50 loaded/empty [{sb}]", r.get("p50_ratio"), 1.10, at_most=True, unit="×")
        t.add(f"scale p99 loaded/empty [{sb}]", r.get("p99_ratio"), 1.10, at_most=True, unit="×")
    return out


def control(s: dict[str, Any], t: Targets) -> list[str]:
    out = ["## 5. Control plane", ""]
    out += _errors(s)
    base = s.get("grpc_echo_baseline_ms")
    out += ["`FuncletClient` on the engine's funclet socket. Baseline in the same run: a bare grpc.aio echo server",
            "(second process, unix socket, 64 B).", "",
            "| figure (ms) | n | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|",
            _stat_row("bare grpc.aio echo (baseline)", base)]  # fmt: skip
    for sb, r in (s.get("sandboxes") or {}).items():
        if "error" in r:
            continue
        out += [_stat_row(f"[{sb}] funclet Health", r.get("health_ms")),
                _stat_row(f"[{sb}] funclet WarmUp (pooled sandbox → handler loaded; {r.get('warm_up_from_pool')} from pool)", r.get("warm_up_ms")),
                _stat_row(f"[{sb}]  · of which funclet bind", r.get("warm_up_bind_ms")),
                _stat_row(f"[{sb}]  · of which runner handler import", r.get("warm_up_runner_init_ms")),
                _stat_row(f"[{sb}] funclet Destroy", r.get("destroy_ms")),
                _stat_row(f"[{sb}] deploy of a small function (client side)", r.get("deploy_ms")),
                _stat_row(f"[{sb}] redeploy of the same name", r.get("redeploy_same_name_ms"))]  # fmt: skip
        if base and r.get("health_ms"):
            out.append(f"| [{sb}] Health / bare echo p50 | | **{r['health_ms']['p50'] / base['p50']:.2f}×** | | | |")
    out.append("")
    return out


def render(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    m = meta.get("machine", {})
    t = Targets()
    suites = results.get("suites", {})
    body: list[str] = []
    if "warm_calls" in suites:
        body += warm(suites["warm_calls"], t)
    if "cold_starts" in suites:
        body += cold(suites["cold_starts"], t, suites.get("control_plane"))
    if "memory" in suites:
        body += memory(suites["memory"], t)
    if "scale" in suites:
        body += scale(suites["scale"], t)
    if "control_plane" in suites:
        body += control(suites["control_plane"], t)
    durations = ", ".join(f"{k} {v:.0f} s" for k, v in (meta.get("durations_s") or {}).items())
    head = [
        "# easyfaas benchmark results"
        + (" (quick smoke run: sample sizes too small to mean anything)" if meta.get("quick") else ""),
        "",
        f"- **date**: {meta.get('date')}",
        f"- **machine**: {m.get('nproc')} × {m.get('model')}, {m.get('memory')} RAM, kernel {m.get('kernel')}, {m.get('os')}",
        f"- **python**: {m.get('python')} ({m.get('python_path')}); {m.get('wrk')}; {m.get('hyperfine')}",
        f"- **load average** (1/5/15 min) at start: {', '.join(f'{x:.2f}' for x in meta.get('loadavg_start', []))}; at end: "
        f"{', '.join(f'{x:.2f}' for x in meta.get('loadavg_end', []))}; 1-min load before → after each suite: "
        + ", ".join(f"{k} {v[0]:.1f} → {v[1]:.1f}" for k, v in (meta.get("loadavg_1min") or {}).items())
        + " (other work shares this VM: a load above ~1 before a suite means its absolute figures are inflated)",
        f"- **command**: `{meta.get('command')}` (sandboxes: {', '.join(meta.get('sandboxes', []))}; total {meta.get('total_s', 0):.0f} s: {durations})",
        "",
        "Ratios compare figures measured in this same run (the machine varies ~25 % between runs).",
        "Nothing here is asserted: a miss is reported, not failed.",
        "",
        "## Targets (DESIGN.md §8)",
        "",
        t.markdown(),
        "",
    ]
    return "\n".join(head + body) + "\n"


if __name__ == "__main__":
    from pathlib import Path

    print(render(json.loads(Path(sys.argv[1]).read_text())))
