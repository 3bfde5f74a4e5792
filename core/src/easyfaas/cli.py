"""The ``easyfaas`` command line.

Exit codes scripts can rely on: 0 ok; 1 error; 2 usage error; 3 not found; 4 the function
failed (its error is printed); 5 the engine is unreachable; 78 bad configuration.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from easyfaas.client import ApiError, EngineClient, config_path, load_function_dir, resolve_target, save_login
from easyfaas.errors import ConfigurationError, EasyFaaSError

__all__ = ["main"]

EXIT_ERROR, EXIT_NOT_FOUND, EXIT_FUNCTION_ERROR, EXIT_UNREACHABLE, EXIT_CONFIG = 1, 3, 4, 5, 78


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _emit(ctx: click.Context, value: Any, human: str) -> None:
    if ctx.obj["output"] == "json":
        click.echo(json.dumps(value, indent=2))
    else:
        click.echo(human)


def _table(ctx: click.Context, rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """``rows`` as JSON, or as a table of ``(title, key)`` columns."""
    if ctx.obj["output"] == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for title, _ in columns:
        table.add_column(title, no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for _, key in columns))
    Console(width=max(120, sum(len(t) for t, _ in columns) * 3)).print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


class _Client:
    """Opens the API client lazily and turns its errors into exit codes."""

    def __init__(self, ctx: click.Context) -> None:
        self.endpoint = ctx.obj["endpoint"]
        self.token = ctx.obj["token"]

    def __enter__(self) -> EngineClient:
        self.client = EngineClient(self.endpoint, token=self.token)
        return self.client

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.client.close()
        if isinstance(exc, ApiError):
            if exc.status == 401:
                _fail(f"{exc} — run `easyfaas login --token …` or set EASYFAAS_TOKEN", EXIT_ERROR)
            _fail(str(exc), EXIT_NOT_FOUND if exc.status == 404 else EXIT_ERROR)
        if isinstance(exc, httpx.TransportError):
            _fail(f"cannot reach the engine at {self.client.endpoint}: {exc} (is `easyfaas up` running?)", EXIT_UNREACHABLE)
        if isinstance(exc, EasyFaaSError):
            _fail(str(exc))


@click.group()
@click.option("--endpoint", envvar="EASYFAAS_ENDPOINT", default=None, help="Management API URL (default http://127.0.0.1:9090).")
@click.option("--token", envvar="EASYFAAS_TOKEN", default=None, help="API token (default: the one saved by login/up).")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", help="Output format.")
@click.pass_context
def cli(ctx: click.Context, endpoint: str | None, token: str | None, output: str) -> None:
    """easyfaas: a light, self-hosted function-compute engine."""
    ctx.obj = {"endpoint": endpoint, "token": token, "output": output}


@cli.command()
@click.option("--profile", type=click.Path(path_type=Path), default=None, help="Engine profile (YAML); default: embedded.")
@click.option("--deploy", "deploy_dirs", multiple=True, type=click.Path(path_type=Path, exists=True),
              help="Function directory (with function.yaml) to deploy once the engine is up. Repeatable.")  # fmt: skip
@click.pass_context
def up(ctx: click.Context, profile: Path | None, deploy_dirs: tuple[Path, ...]) -> None:
    """Start the engine (controller + funclet) and keep it running until Ctrl-C."""
    from easyfaas._log import setup_logging
    from easyfaas.profile import load_profile
    from easyfaas.supervisor import Supervisor

    setup_logging("easyfaas")
    try:
        prof = load_profile(profile)
    except ConfigurationError as exc:
        _fail(str(exc), EXIT_CONFIG)
    host, _, port = prof.model.controller.api.rpartition(":")
    endpoint = ctx.obj["endpoint"] or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    cfg = prof.model.controller
    token_file = (prof.base_dir / cfg.token_file).resolve() if cfg.token_file else prof.data_dir / "token"
    first_start = cfg.auth and not token_file.exists()
    sup = Supervisor(profile, prof.funclet_socket)
    signal.signal(signal.SIGTERM, sup.request_stop)
    signal.signal(signal.SIGINT, sup.request_stop)

    def ready() -> bool:
        try:
            return httpx.get(f"{endpoint}/v1/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    sup.start(ready)
    token = token_file.read_text().strip() if cfg.auth else None
    if token:
        # The operator on this host is logged in to their own engine; the token stays 0600.
        save_login(endpoint, token)
        if first_start:
            click.echo(f"API token (shown once; saved to {config_path()} and {token_file}):\n  {token}")
    with EngineClient(endpoint, token=token) as client:
        health = client.health()
        for directory in deploy_dirs:
            try:
                spec, archive = load_function_dir(directory, {})
                name = str(spec.get("name") or directory.resolve().name)
                fv = client.deploy(name, spec, archive)
            except EasyFaaSError as exc:
                sup.stop()
                _fail(f"deploying {directory}: {exc}")
            click.echo(f"deployed {fv['name']} (version {fv['version']}, runtime {fv['runtime']})")
    urls = [t.get("url") for t in health.get("triggers", {}).values() if t.get("url")]
    click.echo(f"easyfaas is up: management API {endpoint}/v1, sandbox {health['funclet']['sandbox']}")
    for url in urls:
        click.echo(f"HTTP trigger: {url}<name>")
    for directory in deploy_dirs:
        spec, _ = load_function_dir(directory, {})
        name = str(spec.get("name") or directory.resolve().name)
        if urls:
            click.echo(f"try it:  curl -s '{urls[0]}{name}?name=you'")
    click.echo("stop with Ctrl-C", err=True)
    sys.exit(sup.run())


@cli.command()
@click.option("--token", "login_token", prompt="API token", hide_input=True, help="The engine's API token.")
@click.pass_context
def login(ctx: click.Context, login_token: str) -> None:
    """Save an endpoint (--endpoint) and its token for later commands."""
    endpoint, _ = resolve_target(ctx.obj["endpoint"], None)
    with EngineClient(endpoint, token=login_token) as client:
        try:
            client.list()
        except ApiError as exc:
            _fail(f"the engine at {endpoint} refused the token: {exc}")
        except httpx.TransportError as exc:
            _fail(f"cannot reach the engine at {endpoint}: {exc}", EXIT_UNREACHABLE)
    path = save_login(endpoint, login_token)
    _emit(ctx, {"endpoint": endpoint, "config": str(path)}, f"logged in to {endpoint} (saved in {path})")


@cli.command()
@click.pass_context
def plugins(ctx: click.Context) -> None:
    """List installed plugins per group, with distribution and version."""
    from easyfaas.plugin.manager import GROUPS, Plugins

    logging.getLogger("easyfaas.plugin.manager").setLevel(logging.ERROR)
    found = Plugins().discover()
    if ctx.obj["output"] == "json":
        click.echo(json.dumps([info.__dict__ for info in found], indent=2))
        return
    for kind, group in GROUPS.items():
        click.echo(f"{group}:")
        rows = [info for info in found if info.kind == kind]
        if not rows:
            click.echo("  (none)")
        for info in rows:
            status = f"  BROKEN: {info.error}" if info.error else ""
            click.echo(f"  {info.name:<12} {info.distribution} {info.version}{status}")


@cli.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Report kernel features and which sandbox drivers can work here."""
    from easyfaas.doctor import format_report, kernel_report
    from easyfaas.plugin.manager import Plugins

    report = kernel_report()
    host = Plugins()
    drivers: dict[str, str] = {}
    for info in host.discover(["sandboxes"]):
        if info.error:
            drivers[info.name] = f"broken: {info.error}"
            continue
        host.load({"sandboxes": [info.name]})
        reason = host.get("sandboxes", info.name).availability()
        drivers[info.name] = "works here" if reason is None else f"unavailable: {reason}"
    report["sandboxes"] = drivers
    _emit(ctx, report, format_report(report) + "\nsandbox drivers:\n" + "\n".join(f"  {k:<10} {v}" for k, v in drivers.items()))


def _parse_env(values: tuple[str, ...]) -> dict[str, str] | None:
    env = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env or None


@cli.command()
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("--runtime", default=None, help="Runtime (default: from function.yaml, else python).")
@click.option("--handler", default=None, help="module.function (default: from function.yaml, else handler.handler).")
@click.option("--memory", type=int, default=None, help="Memory limit in MB.")
@click.option("--timeout", type=float, default=None, help="Timeout in seconds.")
@click.option("--concurrency", type=int, default=None, help="Max instances.")
@click.option("--env", "env", multiple=True, help="KEY=VALUE environment variable. Repeatable.")
@click.pass_context
def deploy(ctx: click.Context, name: str, path: Path, runtime: str | None, handler: str | None, memory: int | None,
           timeout: float | None, concurrency: int | None, env: tuple[str, ...]) -> None:  # fmt: skip
    """Deploy PATH (a directory, zip or tar.gz) as function NAME: a new version."""
    overrides = {"runtime": runtime, "handler": handler, "memory": memory, "timeout": timeout,
                 "concurrency": concurrency, "env": _parse_env(env), "name": name}  # fmt: skip
    with _Client(ctx) as client:
        spec, archive = load_function_dir(path, overrides)
        if len(archive) >= 1 << 20 and ctx.obj["output"] != "json":
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            with Progress("uploading", BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
                task = bar.add_task("upload", total=len(archive))
                fv = client.deploy(name, spec, archive, progress=lambda sent: bar.update(task, completed=sent))
        else:
            fv = client.deploy(name, spec, archive)
    _emit(ctx, fv, f"deployed {fv['name']} version {fv['version']} ({len(archive)} bytes, runtime {fv['runtime']})")


@cli.command()
@click.argument("name")
@click.option("--handler", default=None)
@click.option("--runtime", default=None)
@click.option("--memory", type=int, default=None, help="Memory limit in MB.")
@click.option("--timeout", type=float, default=None, help="Timeout in seconds.")
@click.option("--concurrency", type=int, default=None, help="Max instances.")
@click.option("--instance-concurrency", type=int, default=None, help="Calls per instance.")
@click.option("--min-warm", type=int, default=None, help="Instances kept ready.")
@click.option("--keep-alive", type=float, default=None, help="Idle seconds before an instance retires.")
@click.option("--env", "env", multiple=True, help="KEY=VALUE (replaces the whole environment). Repeatable.")
@click.pass_context
def update(ctx: click.Context, /, name: str, env: tuple[str, ...], **changes: Any) -> None:
    """Change a function's configuration: a new version with the same code."""
    body = {k: v for k, v in changes.items() if v is not None}
    if env:
        body["env"] = _parse_env(env)
    if not body:
        _fail("nothing to change: give at least one option", 2)
    with _Client(ctx) as client:
        fv = client.update(name, body)
    _emit(ctx, fv, f"updated {fv['name']}: version {fv['version']}")


@cli.command()
@click.argument("name")
@click.pass_context
def versions(ctx: click.Context, name: str) -> None:
    """List a function's versions."""
    with _Client(ctx) as client:
        rows = client.versions(name)
    _table(ctx, rows, [("VERSION", "version"), ("RUNTIME", "runtime"), ("HANDLER", "handler"), ("MEMORY", "memory"),
                       ("TIMEOUT", "timeout"), ("SHA256", "code_sha256")])  # fmt: skip


@cli.group()
def alias() -> None:
    """Manage aliases: names for versions, optionally splitting traffic (canary)."""


@alias.command("set")
@click.argument("name")
@click.argument("alias_name")
@click.argument("version")
@click.option("--additional-version", default=None, help="Second version that gets --weight of the calls.")
@click.option("--weight", type=float, default=0.0, help="Share of calls (0..1) for --additional-version.")
@click.option("--description", default="")
@click.pass_context
def alias_set(ctx: click.Context, name: str, alias_name: str, version: str, additional_version: str | None,
              weight: float, description: str) -> None:  # fmt: skip
    """Point ALIAS_NAME of function NAME at VERSION."""
    body = {"version": version, "additional_version": additional_version, "weight": weight, "description": description}
    with _Client(ctx) as client:
        stored = client.put_alias(name, alias_name, body)
    split = f" and {stored['additional_version']} ({stored['weight']:.0%})" if stored["additional_version"] else ""
    _emit(ctx, stored, f"{name}:{alias_name} → version {stored['version']}{split}")


@alias.command("list")
@click.argument("name")
@click.pass_context
def alias_list(ctx: click.Context, name: str) -> None:
    """List the aliases of function NAME."""
    with _Client(ctx) as client:
        rows = client.aliases(name)
    _table(ctx, rows, [("ALIAS", "name"), ("VERSION", "version"), ("ADDITIONAL", "additional_version"), ("WEIGHT", "weight")])


@alias.command("delete")
@click.argument("name")
@click.argument("alias_name")
@click.pass_context
def alias_delete(ctx: click.Context, name: str, alias_name: str) -> None:
    """Delete an alias."""
    with _Client(ctx) as client:
        client.delete_alias(name, alias_name)
    _emit(ctx, {"deleted": f"{name}:{alias_name}"}, f"deleted alias {name}:{alias_name}")


@cli.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new calls' logs until Ctrl-C.")
@click.option("--limit", default=20, show_default=True, help="How many recent calls to show first.")
@click.pass_context
def logs(ctx: click.Context, name: str, follow: bool, limit: int) -> None:
    """What function NAME printed, call by call (oldest first)."""
    import time

    def show(rows: list[dict[str, Any]]) -> None:
        # By start: rows from other nodes (the shared archive, issue #10) have no local seq.
        for row in sorted(rows, key=lambda r: (r.get("start") or 0.0, r["seq"])):
            if ctx.obj["output"] == "json":
                click.echo(json.dumps({k: row[k] for k in ("id", "status", "start", "duration_ms", "logs")}))
                continue
            click.echo(f"--- {row['id']} {row['status']} {row['duration_ms']:.2f} ms")
            if row["logs"]:
                click.echo(row["logs"], nl=not row["logs"].endswith("\n"))

    with _Client(ctx) as client:
        rows = client.activations(name, limit=limit)
        show(rows)
        last = max((r["seq"] for r in rows), default=0)
        while follow:
            time.sleep(0.5)
            rows = client.activations(name, limit=1000, since=last)
            show(rows)
            last = max((r["seq"] for r in rows), default=last)


@cli.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """List deployed functions."""
    with _Client(ctx) as client:
        functions = client.list()
    _table(ctx, functions, [("NAME", "name"), ("VERSION", "version"), ("RUNTIME", "runtime"), ("HANDLER", "handler"),
                            ("MEMORY", "memory"), ("TIMEOUT", "timeout")])  # fmt: skip


@cli.command()
@click.argument("name")
@click.pass_context
def get(ctx: click.Context, name: str) -> None:
    """Show one function's latest version."""
    with _Client(ctx) as client:
        fv = client.get(name)
    _emit(ctx, fv, "\n".join(f"{k}: {v}" for k, v in fv.items()))


@cli.command()
@click.argument("name")
@click.pass_context
def delete(ctx: click.Context, name: str) -> None:
    """Delete a function and all its versions."""
    with _Client(ctx) as client:
        client.delete(name)
    _emit(ctx, {"deleted": name}, f"deleted {name}")


@cli.command()
@click.argument("name")
@click.option("--data", "-d", default=None, help="Event as JSON, or @FILE to read it from a file.")
@click.option("--log-tail", is_flag=True, help="Also print what the function logged during the call.")
@click.option("--async", "async_", is_flag=True, help="Queue the call and print its activation id (docs/async.md).")
@click.option("--idempotency-key", default=None, help="With --async: a key reused within the window returns the first id.")
@click.pass_context
def invoke(ctx: click.Context, name: str, data: str | None, log_tail: bool, async_: bool, idempotency_key: str | None) -> None:
    """Call a function synchronously and print its result (or, with --async, queue it)."""
    import base64

    if data is None:
        payload = b"{}"
    elif data.startswith("@"):
        try:
            payload = Path(data[1:]).read_bytes()
        except OSError as exc:
            _fail(f"cannot read {data[1:]}: {exc.strerror}")
    else:
        payload = data.encode()
    try:
        json.loads(payload)
    except ValueError as exc:
        _fail(f"--data is not valid JSON: {exc}", 2)
    if async_:  # issue #6
        with _Client(ctx) as client:
            activation_id = client.invoke_async(name, payload, idempotency_key=idempotency_key)
        _emit(ctx, {"activation_id": activation_id}, activation_id)
        return
    with _Client(ctx) as client:
        response = client.invoke(name, payload, log_tail=log_tail)
    if log_tail and "X-Easyfaas-Log-Result" in response.headers:
        click.echo(base64.b64decode(response.headers["X-Easyfaas-Log-Result"]).decode(errors="replace"), err=True, nl=False)
    if response.headers.get("X-Easyfaas-Function-Error"):
        click.echo(response.text)
        sys.exit(EXIT_FUNCTION_ERROR)
    click.echo(response.text)


@cli.command()
@click.pass_context
def ps(ctx: click.Context) -> None:
    """List running instances and their states."""
    with _Client(ctx) as client:
        rows = client.instances()
    _table(ctx, rows, [("INSTANCE", "id"), ("FUNCTION", "function"), ("VER", "version"), ("STATE", "state"),
                       ("CALLS", "calls"), ("INIT ms", "init_ms"), ("IDLE s", "idle_s")])  # fmt: skip


@cli.command()
@click.argument("name", required=False)
@click.option("--limit", default=20, show_default=True)
@click.pass_context
def activations(ctx: click.Context, name: str | None, limit: int) -> None:
    """Recent activation records (all functions, or NAME's)."""
    with _Client(ctx) as client:
        rows = client.activations(name, limit=limit)
    _table(ctx, rows, [("ID", "id"), ("FUNCTION", "function"), ("VER", "version"), ("STATUS", "status"),
                       ("ms", "duration_ms"), ("INIT ms", "init_ms"), ("TRIGGER", "trigger")])  # fmt: skip


# -- issue #6: dead letters of asynchronous calls (docs/async.md) ---------------------------


@cli.group()
def dlq() -> None:
    """Dead letters: asynchronous calls given up after their retries or max event age."""


@dlq.command("list")
@click.option("--function", "function", default=None, help="Only this function's.")
@click.option("--limit", default=100, show_default=True)
@click.pass_context
def dlq_list(ctx: click.Context, function: str | None, limit: int) -> None:
    """List dead letters, newest first."""
    with _Client(ctx) as client:
        rows = client.dead_letters(function, limit=limit)
    if ctx.obj["output"] != "json":  # columns for people; JSON keeps the API's rows
        import time

        for row in rows:
            row["attempt_count"] = len(row["attempts"])
            row["dead"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["dead_at"] or 0))
    _table(ctx, rows, [("ID", "id"), ("FUNCTION", "function"), ("REASON", "reason"), ("ATTEMPTS", "attempt_count"),
                       ("DEAD AT", "dead"), ("TRIGGER", "trigger")])  # fmt: skip


@dlq.command("redrive")
@click.argument("activation_id")
@click.pass_context
def dlq_redrive(ctx: click.Context, activation_id: str) -> None:
    """Queue a dead letter again (same activation id, fresh attempts and age)."""
    with _Client(ctx) as client:
        queued = client.redrive(activation_id)
    _emit(ctx, {"activation_id": queued}, f"queued {queued} again")


@dlq.command("purge")
@click.option("--function", "function", default=None, help="Only this function's.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def dlq_purge(ctx: click.Context, function: str | None, yes: bool) -> None:
    """Delete dead letters (all, or one function's)."""
    if not yes:
        click.confirm(f"Delete the dead letters of {function or 'every function'}?", abort=True)
    with _Client(ctx) as client:
        purged = client.purge_dead_letters(function)
    _emit(ctx, {"purged": purged}, f"purged {purged} dead letter(s)")


# -- end of issue #6 -------------------------------------------------------------------------


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConfigurationError as exc:
        _fail(str(exc), EXIT_CONFIG)


if __name__ == "__main__":
    main()
