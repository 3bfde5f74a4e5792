"""Suite 3, memory: USS of idle warm instances, and the engine's RSS with 0, 100, 200 of them.

200 copies of examples/hello are deployed with ``concurrency: 1`` and the controller's
``keep_alive`` at 600 s, then called once each (a warm instance per function). Measured with
psutil ``memory_full_info()``:

* the engine: RSS of the controller and the funclet with 0, 100 and 200 warm instances;
* each warm, idle instance: USS (and PSS) of its runner process, found by the pid in
  ``GET /v1/instances``; with the namespace sandbox an instance is two processes (the
  pid-namespace init and the runner), so the instance's total is also given;
* what the sandbox keeps besides instances (zygotes, pool sandboxes): USS/RSS;
* a reference in the same run: a fresh idle ``python -I -S`` (how runners start) USS.

With ``--sandbox docker`` (bench/run's lean variant): 16 functions; an instance is the runner
and docker-init (pid 1 of its container); each container's containerd shim, the generic pool's
containers and dockerd/containerd RSS are reported beside it.

    python bench/memory.py [--quick] [--sandbox process] [--json out.json]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RawHttp, deploy_many, emit, engine, hello_dir, log, machine, parser, sandboxes, scratch, summary

MIB = 2**20


def mem(pid: int) -> dict[str, float] | None:
    import psutil

    try:
        m = psutil.Process(pid).memory_full_info()
    except psutil.Error:
        return None
    return {"rss": m.rss / MIB, "uss": m.uss / MIB, "pss": m.pss / MIB}


def fresh_interpreter_uss() -> dict[str, float] | None:
    from easyfaas_runtime_python.runtime import _real_executable

    proc = subprocess.Popen([_real_executable(), "-I", "-S", "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(1.0)
        return mem(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def engine_rss(eng: Any) -> dict[str, float]:
    roles = eng.children()
    out = {role: round((mem(pid) or {}).get("rss", float("nan")), 2) for role, pid in roles.items()}
    out["controller+funclet"] = round(sum(out.values()), 2)
    return out


def instance_groups(eng: Any, sandbox: str = "process") -> dict[str, list[int]]:
    """instance pid -> the processes that make up that instance (runner, plus its pid-ns init;
    with docker: the runner and docker-init, pid 1 of the container; its shim is Docker's, see
    ``docker_shims``)."""
    import psutil

    funclet = eng.children()["funclet"]
    groups = {}
    for inst in eng.client.instances():
        pid = int(inst.get("pid") or 0)
        if not pid:
            continue
        chain = [pid]
        if sandbox == "docker":
            try:
                init = psutil.Process(pid).parent()
                if init is not None and init.pid != pid and "shim" not in init.name():
                    chain.append(init.pid)
            except psutil.Error:
                pass
            groups[inst["id"]] = chain
            continue
        try:
            p = psutil.Process(pid)
            while True:
                parent = p.parent()
                if parent is None or parent.pid == funclet or parent.ppid() == funclet:
                    break  # stop below the funclet's direct child (a zygote) or at it
                chain.append(parent.pid)
                p = parent
        except psutil.Error:
            pass
        groups[inst["id"]] = chain
    return groups


def sandbox_overhead(eng: Any, instance_pids: set[int]) -> dict[str, Any]:
    """Processes under the funclet that are not warm instances: zygotes and pool sandboxes."""
    import psutil

    funclet = psutil.Process(eng.children()["funclet"])
    others = [c for c in funclet.children(recursive=True) if c.pid not in instance_pids]
    ms = [m for m in (mem(c.pid) for c in others) if m]
    return {
        "processes": len(ms),
        "uss_mib": round(sum(m["uss"] for m in ms), 2),
        "rss_mib": round(sum(m["rss"] for m in ms), 2),
    }


def docker_shims(groups: dict[str, list[int]]) -> list[int]:
    """The containerd shim of each docker instance (the parent of its docker-init)."""
    import psutil

    shims = []
    for chain in groups.values():
        try:
            parent = psutil.Process(chain[-1]).parent()
        except psutil.Error:
            continue
        if parent is not None and "shim" in parent.name():
            shims.append(parent.pid)
    return shims


def docker_daemons() -> dict[str, float]:
    """RSS of dockerd and containerd (shared by every engine on this host: other work may use them)."""
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("dockerd", "containerd"):
            m = mem(proc.pid)
            if m:
                out[proc.info["name"]] = round(out.get(proc.info["name"], 0.0) + m["rss"], 2)
    return out


def docker_pool_overhead(eng: Any, instance_pids: set[int]) -> dict[str, Any]:
    """The containers of this engine that are not warm instances (the generic pool): their
    runner, docker-init and shim processes."""
    import docker
    import psutil

    state_dir = str((Path(eng.data_dir) / "data" / "sandboxes" / "docker").absolute())
    api = docker.APIClient(version="auto")
    try:
        containers = api.containers(filters={"label": f"easyfaas.state_dir={state_dir}"})
        inits = [int(api.inspect_container(c["Id"])["State"].get("Pid") or 0) for c in containers]
    finally:
        api.close()
    pids: list[int] = []
    pool = 0
    for init in inits:
        try:
            proc = psutil.Process(init)
            family = [proc, *proc.children(recursive=True)]
            if any(p.pid in instance_pids for p in family):
                continue
            shim = proc.parent()
            pids += [p.pid for p in family] + ([shim.pid] if shim is not None else [])
            pool += 1
        except psutil.Error:
            continue
    ms = [m for m in (mem(pid) for pid in pids) if m]
    return {
        "containers": pool,
        "processes": len(ms),
        "uss_mib": round(sum(m["uss"] for m in ms), 2),
        "rss_mib": round(sum(m["rss"] for m in ms), 2),
    }


def run_sandbox(sandbox: str, quick: bool) -> dict[str, Any]:
    docker = sandbox == "docker"
    # docker: 16 containers (each takes ~0.5 s to create), within bench/run's 10-minute budget.
    total = (4 if quick else 16) if docker else 10 if quick else 200
    half = total // 2
    out: dict[str, Any] = {"functions": total}
    if docker:
        out["note"] = (
            f"{total} functions instead of 200: each container takes ~0.5 s to create (bench/run's time budget)"
        )
        out["docker_daemons_rss_mib"] = {"0": docker_daemons()}
    with engine(sandbox, pool=2 if quick and docker else 8, keep_alive="600s") as eng:
        tmp = scratch("efbench-mem-")
        fdir = hello_dir(tmp / "hello", concurrency=1)
        names = [f"mem-{i}" for i in range(total)]
        log(f"memory {sandbox}: deploying {total} functions")
        out["deploy_s"] = round(deploy_many(eng, fdir, names), 2)
        time.sleep(1.0)
        out["engine_rss_mib"] = {"0": engine_rss(eng)}
        client = RawHttp.for_url(eng.http_url)
        for start, stop in ((0, half), (half, total)):
            log(f"memory {sandbox}: warming instances {start}..{stop - 1}")
            for name in names[start:stop]:
                status, _, body = client.request("GET", f"/function/{name}")
                if status != 200:
                    raise RuntimeError(f"{name}: HTTP {status}: {body[:200]!r}")
            time.sleep(1.0)
            out["engine_rss_mib"][str(stop)] = engine_rss(eng)
        client.close()
        groups = instance_groups(eng, sandbox)
        out["warm_instances"] = len(groups)
        runner = [m for m in (mem(chain[0]) for chain in groups.values()) if m]
        whole = []
        for chain in groups.values():
            ms = [m for m in (mem(pid) for pid in chain) if m]
            if ms:
                whole.append({k: sum(m[k] for m in ms) for k in ("rss", "uss", "pss")})
        out["runner_uss_mib"] = summary([m["uss"] for m in runner])
        out["runner_rss_mib"] = summary([m["rss"] for m in runner])
        out["instance_uss_mib"] = summary([m["uss"] for m in whole])
        out["instance_processes"] = round(sum(len(c) for c in groups.values()) / max(1, len(groups)), 2)
        out["instances_sum_pss_mib"] = round(sum(m["pss"] for m in whole), 1)
        out["instances_sum_uss_mib"] = round(sum(m["uss"] for m in whole), 1)
        inst_pids = {pid for chain in groups.values() for pid in chain}
        if docker:
            shims = [m for m in (mem(pid) for pid in docker_shims(groups)) if m]
            out["shim_uss_mib"] = summary([m["uss"] for m in shims])
            out["shim_rss_mib"] = summary([m["rss"] for m in shims])
            out["instances_sum_shim_pss_mib"] = round(sum(m["pss"] for m in shims), 1)
            out["docker_daemons_rss_mib"][str(total)] = docker_daemons()
            out["sandbox_overhead"] = docker_pool_overhead(eng, inst_pids)
        else:
            out["sandbox_overhead"] = sandbox_overhead(eng, inst_pids)
        rss = out["engine_rss_mib"]
        out["engine_rss_growth_kib_per_instance"] = round(
            (rss[str(total)]["controller+funclet"] - rss["0"]["controller+funclet"]) * 1024 / total, 1
        )
    return out


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    run, skipped = sandboxes(args.sandbox)
    result: dict[str, Any] = {"suite": "memory", "skipped": skipped, "sandboxes": {}}
    result["fresh_interpreter_mib"] = fresh_interpreter_uss()
    for sandbox in run:
        try:
            result["sandboxes"][sandbox] = run_sandbox(sandbox, args.quick)
        except Exception as exc:  # noqa: BLE001 - report and keep the other sandbox's figures
            log(f"memory {sandbox} failed: {exc!r}")
            result["sandboxes"][sandbox] = {"error": repr(exc)[-2000:]}
    result["machine"] = machine()
    emit(result, args.json)


if __name__ == "__main__":
    main()
