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
        "`wrk -t2 -cN -d8s --latency` (c1 runs `-t1`: wrk needs connections ≥ threads). The baseline is",
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
        out += [f"### sandbox `{sb}`", ""]
        if r.get("note"):
            out += [f"*{r['note']}.*", ""]
        out += ["| N | baseline req/s | engine req/s | engine / baseline | baseline p50 / p99 ms | engine p50 / p99 ms | CPU µs/req baseline → engine (controller + instances) |",
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
        if c64:
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
        out += [f"### sandbox `{sb}` (n = {r.get('n')} per path)", ""]
        if r.get("note"):
            out += [f"*{r['note']}.*", ""]
        out += ["| figure (ms) | n | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|",
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
        out.append("")
        if rp:
            out += [f"Refilling the whole pool of {rp.get('sandboxes')} after draining it: "
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
        out += [f"### sandbox `{sb}` ({r.get('warm_instances')} warm instances of {r.get('functions')} functions)", ""]
        if r.get("note"):
            out += [f"*{r['note']}.*", ""]
        out += ["| warm instances | controller RSS MiB | funclet RSS MiB | controller + funclet MiB |", "|---|---|---|---|"]  # fmt: skip
        for k, v in rss.items():
            out.append(
                f"| {k} | {_num(v.get('controller'))} | {_num(v.get('funclet'))} | {_num(v.get('controller+funclet'))} |"
            )
        out += ["", f"Engine growth: {_num(r.get('engine_rss_growth_kib_per_instance'))} KiB RSS per warm instance.", "",
                "| per idle warm instance (MiB) | n | p50 | p95 | max |", "|---|---|---|---|---|",
                _stat_row("runner process USS", r.get("runner_uss_mib"), ("n", "p50", "p95", "max")),
                _stat_row("runner process RSS", r.get("runner_rss_mib"), ("n", "p50", "p95", "max")),
                _stat_row(f"whole instance USS ({r.get('instance_processes')} processes each)", r.get("instance_uss_mib"), ("n", "p50", "p95", "max"))]  # fmt: skip
        if r.get("shim_uss_mib"):
            out += [_stat_row("its containerd shim USS (Docker's, per container)", r.get("shim_uss_mib"), ("n", "p50", "p95", "max")),
                    _stat_row("its containerd shim RSS", r.get("shim_rss_mib"), ("n", "p50", "p95", "max"))]  # fmt: skip
        out += ["", f"All instances: {_num(r.get('instances_sum_uss_mib'))} MiB summed USS, {_num(r.get('instances_sum_pss_mib'))} MiB summed PSS. "
                + (f"Sandbox processes that are not instances (the generic pool's {_get(r, 'sandbox_overhead', 'containers')} containers: runner, "
                   f"docker-init and shim each): {_get(r, 'sandbox_overhead', 'processes')} processes, "
                   if "containers" in (r.get("sandbox_overhead") or {}) else
                   f"Sandbox processes that are not instances (zygotes, pool): {_get(r, 'sandbox_overhead', 'processes')} processes, ")
                + f"{_num(_get(r, 'sandbox_overhead', 'uss_mib'))} MiB USS.", ""]  # fmt: skip
        daemons = r.get("docker_daemons_rss_mib") or {}
        if daemons:
            cells = "; ".join(
                f"{k} instances: " + ", ".join(f"{name} {_num(v)}" for name, v in d.items()) for k, d in daemons.items()
            )
            out += [f"dockerd and containerd RSS MiB (shared with any other user of this Docker engine): {cells}.", ""]
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
            per100 = (
                (
                    r["instances_sum_pss_mib"]
                    + (r.get("instances_sum_shim_pss_mib") or 0)  # docker: shims count
                    + (_get(r, "sandbox_overhead", "uss_mib") or 0)
                )
                * 100
                / n
            )
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


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "—"
    return f"**{a / b:.2f}×**"


def docker_vs(suites: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Docker's figures from suites 1-3 beside the namespace sandbox's (and process's) of the same run."""
    out = ["## 6. Docker sandbox beside namespace (same run)", ""]
    why = (meta.get("skipped_sandboxes") or {}).get("docker")
    if why:
        return [*out, f"> sandbox `docker` skipped: {why}", ""]
    cold = _get(suites, "cold_starts", "sandboxes") or {}
    warm_ = _get(suites, "warm_calls", "sandboxes") or {}
    mem = _get(suites, "memory", "sandboxes") or {}
    if not any("docker" in x for x in (cold, warm_, mem)):
        return [*out, "> docker was not measured in this run.", ""]
    out += [
        f"From sections 1–3: the docker sandbox runs only the cold-start (HTTP trigger, n = {_get(cold, 'docker', 'n') or '—'}),",
        "warm c1 + sequential-call and idle-memory parts (fewer instances) of those suites, to keep `bench/run` under",
        f"10 minutes; dockerd was {meta.get('dockerd') or '—'}. Ratios are docker ÷ namespace, measured minutes apart in",
        "this run (process for reference).",
        "",
        "| figure | process | namespace | docker | docker / namespace |",
        "|---|---|---|---|---|",
    ]
    rows = [
        ("cold p50, HTTP trigger, client (ms)", cold, ("http", "client_ms", "p50")),
        ("cold p99, HTTP trigger, client (ms)", cold, ("http", "client_ms", "p99")),
        ("cold p50, controller acquire `wait_ms` (ms)", cold, ("http", "controller_acquire_ms", "p50")),
        ("cold p50, runner init (ms)", cold, ("http", "runner_init_ms", "p50")),
        ("pool refill wait before each cold call, p50 (ms)", cold, ("refill_wait_ms", "p50")),
        ("warm c1 wrk req/s", warm_, ("c1", "engine", "rps")),
        ("warm c1 wrk p50 (ms)", warm_, ("c1", "engine", "p50_ms")),
        ("warm c1 wrk p99 (ms)", warm_, ("c1", "engine", "p99_ms")),
        ("warm c1 engine / baseline req/s", warm_, ("c1", "rps_ratio")),
        ("warm sequential raw client p50 (ms)", warm_, ("sequential", "engine_raw", "p50")),
        ("warm sequential raw client p99 (ms)", warm_, ("sequential", "engine_raw", "p99")),
        ("idle instance: runner USS p50 (MiB)", mem, ("runner_uss_mib", "p50")),
        ("idle instance: whole instance USS p50 (MiB)", mem, ("instance_uss_mib", "p50")),
        ("idle instance: + containerd shim USS p50 (MiB)", mem, ("shim_uss_mib", "p50")),
        ("engine RSS growth per warm instance (KiB)", mem, ("engine_rss_growth_kib_per_instance",)),
    ]
    for label, src, path in rows:
        vals = [_get(src, sb, *path) for sb in ("process", "namespace", "docker")]
        out.append(f"| {label} | {' | '.join(_num(v) for v in vals)} | {_ratio(vals[2], vals[1])} |")
    d_inst = _get(mem, "docker", "instance_uss_mib", "p50")
    d_shim = _get(mem, "docker", "shim_uss_mib", "p50")
    n_inst = _get(mem, "namespace", "instance_uss_mib", "p50")
    if d_inst is not None and d_shim is not None:
        out.append(
            f"| idle instance incl. shim USS p50 (MiB) | — | {_num(n_inst)} | {_num(d_inst + d_shim)} | {_ratio(d_inst + d_shim, n_inst)} |"
        )
    out.append("")
    return out


def runtimes(s: dict[str, Any]) -> list[str]:
    out = ["## 7. Runtimes (cold start and warm calls per runtime)", ""]
    out += _errors(s)
    for rt, why in (s.get("runtimes_skipped") or {}).items():
        out.append(f"> runtime `{rt}` skipped: {why}")
    out += ["One engine per sandbox with `runtimes: [python, node, exec, http, lambda]` and a generic pool of 2 per runtime;",
            "each runtime's example (`examples/hello`, `examples/<runtime>-hello`) deployed under new names. *cold*: the first",
            "call of each copy through the management API invoke, that runtime's pool full before each; *init* is its",
            "`X-Easyfaas-Init-Ms` (python, node: handler import; exec: nothing to load; http: until the server listens; lambda:",
            "until the bootstrap asks for its first event); *acquire* is the activation record's `wait_ms` (funclet warm-up",
            "including init, connect) and *first call* its `duration_ms − wait_ms`. *warm*: sequential keep-alive calls through the HTTP trigger to",
            "one warm copy per runtime, the runtimes alternating in blocks. *× python* divides by the python runtime's figure",
            "in the same engine.", ""]  # fmt: skip
    ref = s.get("startup_reference") or {}
    if ref and "error" not in ref:
        out += ["What each runtime starts, outside any engine, in the same run (hyperfine, ms):", "",
                "| runtime | command | median | min | max |", "|---|---|---|---|---|"]  # fmt: skip
        for rt, r in ref.items():
            out.append(
                f"| {rt} | {r['label']}: `{r['command']}` | {_num(r['median'])} | {_num(r['min'])} | {_num(r['max'])} |"
            )
        out.append("")
    elif ref:
        out += [f"> start-up reference failed: `{ref['error']}`", ""]
    for sb, r in (s.get("sandboxes") or {}).items():
        if "error" in r:
            continue
        out += [f"### sandbox `{sb}` (cold n = {r.get('n_cold')} per runtime, warm n = {r.get('n_warm')} per runtime)", "",
                "| runtime | init p50 ms | init × python | acquire p50 ms | first call p50 ms | cold client p50 / max ms | cold × python | warm p50 / p99 ms | warm p50 × python | deploy ms (each) |",
                "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for rt, x in (r.get("runtimes") or {}).items():
            cold, warm_, vs = x.get("cold") or {}, x.get("warm_ms") or {}, x.get("vs_python") or {}
            out.append(
                f"| {rt} | {_num(_get(cold, 'init_ms', 'p50'))} | {_num(vs.get('init_p50'))} | "
                f"{_num(_get(cold, 'acquire_ms', 'p50'))} | {_num(_get(cold, 'first_call_ms', 'p50'))} | "
                f"{_num(_get(cold, 'client_ms', 'p50'))} / {_num(_get(cold, 'client_ms', 'max'))} | {_num(vs.get('cold_client_p50'))} | "
                f"{_num(warm_.get('p50'))} / {_num(warm_.get('p99'))} | {_num(vs.get('warm_p50'))} | {_num(x.get('deploy_ms_each'))} |"
            )
        out.append("")
    return out


def scheduling(s: dict[str, Any]) -> list[str]:
    out = ["## 8. Scheduling (issue #4): controller overhead per call, bursts", ""]
    out += _errors(s)
    out += ["**Overhead per call.** A warm no-op Python function; sequential keep-alive calls via the HTTP trigger and",
            "the management API, alternating in blocks with INVOKEs sent straight to a *bare runner* (the same runner file,",
            "interpreter and handler as a plain process, no engine: the same-run baseline). `duration_ms` / `wait_ms` come",
            "from each call's activation record (matched by request id). The handler's own time is the RESULT frame's `ms`,",
            "which the engine does not keep in the activation record: it is read from the bare runner's frames. So",
            "*duration − handler* is the controller's invoke (acquire, frame out, runner framing, frame back) without the",
            "handler; *duration − bare round trip* is what the controller adds beyond one bare hop; *client − duration* is the",
            "trigger's HTTP layer (request parsing, event, response). Medians of per-call differences (ms):", ""]  # fmt: skip
    for sb, r in (s.get("sandboxes") or {}).items():
        if "error" in r:
            continue
        o = r.get("overhead") or {}
        out += [f"### sandbox `{sb}` (n = {o.get('n')} per path)", "",
                f"Handler in the runner (RESULT `ms`): p50 {_num(_get(o, 'handler_ms_in_runner', 'p50'))} ms; bare runner round trip "
                f"(client → unix socket → runner → client): p50 {_num(_get(o, 'bare_runner_round_trip_ms', 'p50'))} ms, "
                f"p99 {_num(_get(o, 'bare_runner_round_trip_ms', 'p99'))} ms.", "",
                "| path | client p50 / p99 | activation duration p50 / p99 | wait_ms (acquire) p50 / p99 | duration − handler p50 | duration − bare round trip p50 | client − duration p50 | client / bare round trip |",
                "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for path, label in (("http", "HTTP trigger"), ("api", "management API")):
            x = o.get(path) or {}
            out.append(
                f"| {label} | {_num(_get(x, 'client_ms', 'p50'))} / {_num(_get(x, 'client_ms', 'p99'))} | "
                f"{_num(_get(x, 'duration_ms', 'p50'))} / {_num(_get(x, 'duration_ms', 'p99'))} | "
                f"{_num(_get(x, 'wait_ms', 'p50'))} / {_num(_get(x, 'wait_ms', 'p99'))} | "
                f"{_num(_get(x, 'duration_minus_handler_ms', 'p50'))} | {_num(_get(x, 'duration_minus_bare_round_trip_ms', 'p50'))} | "
                f"{_num(_get(x, 'outside_invoke_ms', 'p50'))} | **{_num(x.get('client_vs_bare_round_trip'))}×** |"
            )
        b = r.get("burst") or {}
        if b:
            out += ["", f"**Burst.** `concurrency` {b.get('concurrency')}, handler sleeps {_num(b.get('sleep_ms'))} ms (capacity "
                    f"{_num(b.get('capacity_per_s'))} calls/s), N instances warm, engine `queue_size` {b.get('queue_size')}, "
                    f"`max_queue_wait` {_num(b.get('max_queue_wait_s'))} s; {b.get('calls')} parallel calls through the HTTP trigger at once, "
                    f"over in {_num(b.get('seconds'))} s.", "",
                    "| accepted (200) | throttled (429) | 5xx | client errors | accepted/s (to the last 200) | ÷ capacity | throttled/s | accepted p50 / p99 ms | throttled p50 / p99 ms | instances after |",
                    "|---|---|---|---|---|---|---|---|---|---|",
                    f"| {b.get('accepted')} | {b.get('throttled')} | {b.get('server_errors')} | {b.get('client_errors')} | {_num(b.get('accepted_per_s'))} | "
                    f"**{_num(b.get('accepted_rate_vs_capacity'))}×** | {_num(b.get('throttled_per_s'))} | "
                    f"{_num(_get(b, 'accepted_ms', 'p50'))} / {_num(_get(b, 'accepted_ms', 'p99'))} | "
                    f"{_num(_get(b, 'throttled_ms', 'p50'))} / {_num(_get(b, 'throttled_ms', 'p99'))} | {b.get('instances_after')} |"]  # fmt: skip
        out.append("")
    return out


def async_calls(s: dict[str, Any]) -> list[str]:
    out = ["## 9. Async calls (issue #6): accept and drain rates", ""]
    out += _errors(s)
    out += ["A no-op Python function (concurrency 10), engine `async_concurrency` 64, instances warm. C concurrent keep-alive",
            "clients POST Event invocations to the management API as fast as the 202s come (the dispatcher runs them",
            "meanwhile), then the run waits for the last success on /metrics. *accept* is 202/s; *end to end* is calls ÷ time",
            "from the first POST to the last run. Baseline, same engine, right after: the same C clients making synchronous",
            "invokes (200/s). Logic: `bench/bench_async.py`.", ""]  # fmt: skip
    for sb, r in (s.get("sandboxes") or {}).items():
        if "error" in r:
            continue
        sync = r.get("sync") or {}
        out += [f"### sandbox `{sb}` ({r.get('calls')} calls, {r.get('clients')} clients)", "",
                "| | calls/s | ÷ sync | p50 / p99 ms of a response | seconds |", "|---|---|---|---|---|"]  # fmt: skip
        for key, label in (("drain", "async"), ("drain_with_idempotency_keys", "async, idempotency key per call")):
            d = r.get(key) or {}
            a = d.get("accept") or {}
            out.append(f"| {label}: accept (202/s) | {_num(a.get('accepted_per_s'))} | **{_num(d.get('accept_vs_sync'))}×** | "
                       f"{_num(a.get('p50_ms'))} / {_num(a.get('p99_ms'))} | {_num(a.get('seconds'))} |")  # fmt: skip
            out.append(
                f"| {label}: end to end (runs/s) | {_num(d.get('completed_per_s'))} | **{_num(d.get('completed_vs_sync'))}×** | — | {_num(d.get('seconds'))} |"
            )
        out.append(f"| sync invokes, same clients (200/s, baseline) | {_num(sync.get('calls_per_s'))} | 1× | "
                   f"{_num(_get(sync, 'latency_ms', 'p50'))} / {_num(_get(sync, 'latency_ms', 'p99'))} | {_num(sync.get('seconds'))} |")  # fmt: skip
        out.append("")
    return out


def scale_out(s: dict[str, Any]) -> list[str]:
    out = ["## 10. Scale-out on NATS JetStream (issue #10): drain rate by node count, deploy propagation", ""]
    out += _errors(s)
    for sb, why in (s.get("skipped") or {}).items():
        out += [f"Not measured ({sb}): {why}", ""]
    r = (s.get("sandboxes") or {}).get("process")
    if not r or "error" in r:
        return out
    base = r.get("baseline_sqlite") or {}
    out += [f"{r.get('calls')} async no-op calls accepted round-robin over the nodes by {r.get('clients')} keep-alive clients, then",
            "drained by every node (`storage`/`queue: nats`, the shared activation archive on; process sandbox). All nodes",
            "and NATS share this VM's 2 cores, so more nodes cannot add capacity here: the figures show what the shared queue",
            "costs. Baseline, same run: one node on the default SQLite queue. *archive lag*: from the last run until the",
            "activations bucket holds every call's record. Logic: `bench/bench_nats.py`.", "",
            "| nodes | queue | drained (runs/s) | ÷ SQLite node | accepted (202/s) | accept p50 / p99 ms | archive lag s |",
            "|---|---|---|---|---|---|---|",
            f"| 1 | SQLite (baseline) | {_num(base.get('completed_per_s'))} | 1× | {_num(base.get('accepted_per_s'))} | "
            f"{_num(base.get('accept_p50_ms'))} / {_num(base.get('accept_p99_ms'))} | — |"]  # fmt: skip
    for d in r.get("drain") or []:
        out.append(f"| {d.get('nodes')} | NATS | {_num(d.get('completed_per_s'))} | **{_num(d.get('vs_sqlite'))}×** | "
                   f"{_num(d.get('accepted_per_s'))} | {_num(d.get('accept_p50_ms'))} / {_num(d.get('accept_p99_ms'))} | "
                   f"{_num(d.get('archive_lag_s'))} |")  # fmt: skip
    out += ["", "A deploy on node 1 until every other node's registry names the new version (target: within 1 s):", "",
            "| nodes | deploys | p50 ms | max ms |", "|---|---|---|---|"]  # fmt: skip
    for n, p in sorted((r.get("propagation") or {}).items()):
        out.append(f"| {n} | {p.get('rounds')} | {_num(p.get('p50_ms'))} | {_num(p.get('max_ms'))} |")
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
    if "docker" in (meta.get("skipped_sandboxes") or {}) or "docker" in (meta.get("sandboxes") or []):
        body += docker_vs(suites, meta)
    if "runtimes" in suites:
        body += runtimes(suites["runtimes"])
    if "scheduling" in suites:
        body += scheduling(suites["scheduling"])
    if "async_calls" in suites:
        body += async_calls(suites["async_calls"])
    if "scale_out" in suites:
        body += scale_out(suites["scale_out"])
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
        *(f"- **sandbox `{sb}` skipped**: {why}" for sb, why in (meta.get("skipped_sandboxes") or {}).items()),
        *(
            [
                f"- **docker**: measured in {', '.join(meta.get('docker_suites') or [])} only (lean variants, see §6); dockerd "
                f"{meta.get('dockerd')}"
            ]
            if "docker" in (meta.get("sandboxes") or [])
            else []
        ),
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
