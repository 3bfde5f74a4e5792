"""Scale-out: three engine nodes on loopback sharing one real NATS JetStream server through the
``nats`` code store and queue plugins — any node serves any function, deploys reach every node,
async calls spread over the nodes and survive ``kill -9`` of a node and a restart of NATS."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from easyfaas.client import ApiError
from easyfaas.testing import RunningEngine, write_function
from easyfaas.testing.nats import NatsServer, nats_unavailable

pytestmark = pytest.mark.skipif(nats_unavailable() is not None, reason=f"cannot run NATS: {nats_unavailable()}")

#: Seconds without heartbeats before a lost node's calls go to another node (30 by default).
ACK_WAIT = 2.0
ECHO = "def handler(event, context):\n    return {'event': event, 'version': context.function_version, 'says': 'one'}\n"
PRINTS = "def handler(event, context):\n    print('marker', event.get('n'))\n    return {'n': event.get('n')}\n"
SLEEP = "import time\ndef handler(event, context):\n    time.sleep(event.get('s', 0.1))\n    return {'n': event.get('n')}\n"


class Callbacks:
    """An on_success receiver on loopback: the ``X-Call-Id`` of every POST, repeats included."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner.lock:
                    owner.ids.append(self.headers["X-Call-Id"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def seen(self) -> set[str]:
        with self.lock:
            return set(self.ids)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met in {timeout:.0f}s"
        time.sleep(0.05)


class Cluster:
    """One NATS server and the engine nodes that share it, all on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nats = NatsServer(root / "nats-store").start()
        self.nodes: list[RunningEngine] = []
        self.count = 0

    def profile(self) -> dict[str, Any]:
        common = {"servers": [self.nats.url], "bucket": "cluster"}
        return {"storage": {"nats": common}, "queue": {"nats": {**common, "ack_wait": ACK_WAIT}}}

    def add_nodes(self, n: int) -> list[RunningEngine]:
        new = []
        for _ in range(n):
            self.count += 1
            new.append(RunningEngine(self.root / f"node{self.count}", pool={"python": 1}, extra=self.profile(),
                                     controller={"keep_alive": "60s", "max_queue_wait": "5s"}))  # fmt: skip
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda node: node.start(), new))
        self.nodes += new
        return new

    def close(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()
        self.nats.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        running.add_nodes(3)
        yield running
    finally:
        running.close()


@pytest.fixture
def callbacks() -> Iterator[Callbacks]:
    receiver = Callbacks()
    yield receiver
    receiver.close()


def version_on(node: RunningEngine, name: str) -> str | None:
    try:
        return str(node.client.get(name)["version"])
    except ApiError:
        return None


def local_ids(node: RunningEngine, function: str, status: str) -> list[str]:
    """Ids of the node's own records of ``function`` in ``status``: the calls it ran itself
    (its API also shows the other nodes' records, from the shared archive)."""
    db = sqlite3.connect(f"file:{node.data_dir / 'data' / 'activations.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id FROM activations WHERE function = ? AND status = ?", (function, status)).fetchall()
    finally:
        db.close()
    return [row[0] for row in rows]


def local_record(node: RunningEngine, activation_id: str) -> dict[str, Any] | None:
    """The node's own SQLite copy of a record (what it knew before the shared archive)."""
    db = sqlite3.connect(f"file:{node.data_dir / 'data' / 'activations.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT status, result FROM activations WHERE id = ?", (activation_id,)).fetchone()
    finally:
        db.close()
    return None if row is None else {"status": row[0], "result": row[1]}


def archived(node: RunningEngine, activation_id: str) -> dict[str, Any] | None:
    """The record as the node's API gives it (its own or the shared archive's), or ``None``."""
    try:
        return node.client.activation(activation_id)
    except ApiError as exc:
        assert exc.status == 404, exc
        return None


def test_a_function_deployed_on_one_node_is_served_by_every_node(cluster: Cluster, tmp_path: Path) -> None:
    a, b, c = cluster.nodes[:3]
    a.deploy(write_function(tmp_path / "echo", ECHO), "echo")
    # Through the HTTP trigger of another node…
    response = b.call("echo", "/x?q=1", method="GET")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == "1" and body["event"]["rawPath"] == "/x"
    # …and through the management API of the third.
    invoked = c.client.invoke("echo", b'{"via": "api"}')
    assert invoked.status_code == 200 and invoked.json()["event"] == {"via": "api"}
    assert {f["name"] for f in c.client.list()} >= {"echo"}


def test_a_new_version_and_a_delete_reach_every_node(cluster: Cluster, tmp_path: Path) -> None:
    a, b, c = cluster.nodes[:3]
    b.deploy(write_function(tmp_path / "v1", ECHO), "moving")
    for node in (a, c):
        assert node.call("moving", method="GET").json()["says"] == "one"  # cached in the node's registry now
    new = b.deploy(write_function(tmp_path / "v2", ECHO.replace("'one'", "'two'")), "moving")["version"]
    started = time.monotonic()
    wait_for(lambda: all(version_on(node, "moving") == new for node in (a, c)), 30, "the new version everywhere")
    print(f"version {new} seen on every node {time.monotonic() - started:.3f} s after the deploy returned")
    assert a.call("moving", method="GET").json()["says"] == "two"
    assert c.call("moving", method="GET").json()["says"] == "two"

    c.client.delete("moving")
    wait_for(lambda: all(version_on(node, "moving") is None for node in (a, b)), 30, "the delete everywhere")
    assert a.call("moving", method="GET").status_code == 404


def test_concurrent_deploys_on_different_nodes_get_distinct_versions(cluster: Cluster, tmp_path: Path) -> None:
    directory = write_function(tmp_path / "race", ECHO)
    with ThreadPoolExecutor(6) as pool:
        versions = list(pool.map(lambda i: cluster.nodes[i % 3].deploy(directory, "raced")["version"], range(6)))
    assert sorted(int(v) for v in versions) == [1, 2, 3, 4, 5, 6]
    wait_for(lambda: all(version_on(node, "raced") == "6" for node in cluster.nodes[:3]), 30, "version 6 everywhere")


def test_async_calls_accepted_anywhere_spread_over_the_nodes(cluster: Cluster, tmp_path: Path, callbacks: Callbacks) -> None:
    nodes = cluster.nodes[:3]
    policy = {"on_success": callbacks.url}
    nodes[0].deploy(write_function(tmp_path / "spread", SLEEP, concurrency=4, **{"async": policy}), "spread")
    wait_for(lambda: all(version_on(node, "spread") for node in nodes), 30, "the function everywhere")
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: nodes[i % 3].client.invoke_async("spread", json.dumps({"n": i, "s": 0.2}).encode()),
                            range(60)))  # fmt: skip
    wait_for(lambda: callbacks.seen() >= set(ids), 120, "every call's callback")
    # Each node records the calls it ran: together they ran all, and more than one node took part.
    ran_by = {}
    for index, node in enumerate(nodes):
        for activation_id in local_ids(node, "spread", "success"):
            ran_by[activation_id] = index
    assert set(ran_by) == set(ids)
    # Every node's API shows every call, final, whoever ran it (the shared archive).
    for node in nodes:
        def final_on(node: RunningEngine = node) -> bool:
            return {r["id"] for r in node.client.activations("spread", limit=1000) if r["status"] == "success"} == set(ids)

        wait_for(final_on, 30, "every call final on every node")
    assert len(set(ran_by.values())) >= 2, f"all calls ran on one node: {set(ran_by.values())}"


def test_a_call_run_on_one_node_is_read_on_every_node(cluster: Cluster, tmp_path: Path) -> None:
    """Issue #10: activation records are shared: by id, in the function's list, in ``easyfaas logs``."""
    a, b, c = cluster.nodes[:3]
    a.deploy(write_function(tmp_path / "seen", PRINTS), "seen")
    wait_for(lambda: version_on(c, "seen"), 30, "the function on node C")
    response = a.client.invoke("seen", b'{"n": 7}')
    assert response.status_code == 200 and response.json() == {"n": 7}
    rid = response.headers["X-Easyfaas-Request-Id"]
    assert local_record(c, rid) is None  # node C never ran it…
    record = wait_for(lambda: archived(c, rid), 30, "the record on node C")  # …and reads it all the same
    assert record["status"] == "success" and record["function"] == "seen" and json.loads(record["result"]) == {"n": 7}
    assert "marker 7" in record["logs"]
    assert rid in {r["id"] for r in c.client.activations("seen")}
    assert rid in {r["id"] for r in b.client.activations()}
    logs = subprocess.run([sys.executable, "-m", "easyfaas.cli", "logs", "seen"], env=c.env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert logs.returncode == 0 and f"--- {rid} success" in logs.stdout and "marker 7" in logs.stdout


def test_an_async_call_run_elsewhere_reads_final_where_it_was_accepted(cluster: Cluster, tmp_path: Path) -> None:
    """Accepted on node A, run on B or C: A reads the final record (status and result)."""
    a, b, c = cluster.nodes[:3]
    # One instance per node runs one async call at a time: the other nodes take their share.
    a.deploy(write_function(tmp_path / "handoff", SLEEP, concurrency=1), "handoff")
    wait_for(lambda: all(version_on(node, "handoff") for node in (b, c)), 30, "the function everywhere")
    ids = [a.client.invoke_async("handoff", json.dumps({"n": i, "s": 0.3}).encode()) for i in range(12)]

    def all_final() -> list[dict[str, Any]] | None:
        records = [a.client.activation(i) for i in ids]
        return records if all(r["status"] == "success" for r in records) else None

    records = wait_for(all_final, 120, "every call final on node A")
    assert [json.loads(r["result"]) for r in records] == [{"n": i} for i in range(12)]
    # The calls node A did not run itself: its own copy still says queued, the API says done.
    elsewhere = [i for i in ids if (local_record(a, i) or {}).get("status") != "success"]
    assert elsewhere, "node A ran every call: the test proves nothing"
    for i in elsewhere:
        assert (local_record(a, i) or {})["status"] == "queued"
        assert any((local_record(node, i) or {}).get("status") == "success" for node in (b, c))
    listed = {r["id"]: r for r in a.client.activations("handoff", limit=100)}
    assert set(listed) == set(ids) and all(r["status"] == "success" for r in listed.values())


def test_a_record_written_while_nats_is_down_reaches_the_other_nodes_later(cluster: Cluster, tmp_path: Path) -> None:
    """NATS away during the flush: the call succeeds, the node keeps its record, and the record
    reaches the shared archive (and so the other nodes) once NATS is back."""
    a, _, c = cluster.nodes[:3]
    a.deploy(write_function(tmp_path / "outage", PRINTS), "outage")
    wait_for(lambda: version_on(c, "outage"), 30, "the function on node C")
    assert a.client.invoke("outage", b'{"n": 0}').status_code == 200  # warm: the next call needs no NATS
    cluster.nats.stop()
    try:
        response = a.client.invoke("outage", b'{"n": 1}')
        assert response.status_code == 200 and response.json() == {"n": 1}
        rid = response.headers["X-Easyfaas-Request-Id"]
        wait_for(lambda: local_record(a, rid), 30, "the record in node A's own store")
        # Answered from node A's own records meanwhile.
        assert a.client.activation(rid)["status"] == "success"
        failed = "cannot write activation records to the shared archive"
        wait_for(lambda: failed in a.log(), 60, "a failed write to the archive while NATS is down")
    finally:
        cluster.nats.log_path.write_bytes(b"")  # start() waits for a new "Server is ready"
        cluster.nats.start()
    record = wait_for(lambda: archived(c, rid), 90, "the record on node C after NATS came back")
    assert record["status"] == "success" and json.loads(record["result"]) == {"n": 1}


@pytest.mark.slow
def test_killing_a_node_mid_batch_loses_no_accepted_call(cluster: Cluster, tmp_path: Path, callbacks: Callbacks) -> None:
    """kill -9 of a whole node (supervisor, controller, funclet) while it holds calls: after
    ack_wait the other nodes run them; a node added afterwards takes its share of the rest."""
    victim, *survivors = cluster.nodes[:3]
    policy = {"on_success": callbacks.url}
    victim.deploy(write_function(tmp_path / "batch", SLEEP, concurrency=3, **{"async": policy}), "batch")
    wait_for(lambda: all(version_on(node, "batch") for node in cluster.nodes[:3]), 30, "the function everywhere")
    n = 120
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: cluster.nodes[i % 3].client.invoke_async(
            "batch", json.dumps({"n": i, "s": 0.1}).encode(), idempotency_key=f"batch-{i}"), range(n)))  # fmt: skip
    assert len(set(ids)) == n
    def running_on_victim() -> list[str]:
        return local_ids(victim, "batch", "running")

    running = wait_for(running_on_victim, 60, "the victim running calls of the batch")
    victim.kill()
    done_at_kill = len(callbacks.seen())
    assert done_at_kill < n  # the kill happened mid-batch: the test means something
    [newcomer] = cluster.add_nodes(1)
    wait_for(lambda: callbacks.seen() >= set(ids), 180, "every accepted call's callback")
    assert callbacks.seen() == set(ids) and set(running) <= set(ids)
    # At least once: only calls the victim was running (3 at most) may have run twice.
    assert len(callbacks.ids) - n <= 3
    # Asking again with the same keys, on any node, gives the same calls: the keys are shared.
    again = [[*survivors, newcomer][i % 3].client.invoke_async("batch", b"{}", idempotency_key=f"batch-{i}")
             for i in range(0, n, 10)]  # fmt: skip
    assert again == ids[::10]


@pytest.mark.slow
def test_a_restart_of_nats_loses_nothing_accepted(cluster: Cluster, tmp_path: Path, callbacks: Callbacks) -> None:
    """NATS is killed and restarted on the same store directory in the middle of a batch: the
    nodes reconnect; every call that was answered 202 runs, and deploys propagate again."""
    nodes = [node for node in cluster.nodes if node.proc is not None and node.proc.poll() is None]
    policy = {"on_success": callbacks.url}
    nodes[0].deploy(write_function(tmp_path / "steady", SLEEP, concurrency=3, **{"async": policy}), "steady")
    wait_for(lambda: all(version_on(node, "steady") for node in nodes), 30, "the function everywhere")
    accepted: list[str] = []
    refused = 0

    def submit(i: int) -> None:
        nonlocal refused
        try:
            accepted.append(nodes[i % len(nodes)].client.invoke_async("steady", json.dumps({"n": i, "s": 0.2}).encode()))
        except (ApiError, httpx.HTTPError):
            refused += 1  # NATS was away: not accepted, and the client was told so

    for i in range(40):
        submit(i)
    cluster.nats.restart(kill=True, down_for=1.0)
    assert len(callbacks.seen()) < len(accepted)  # NATS went away mid-batch: the test means something
    for i in range(40, 80):
        submit(i)
        time.sleep(0.02)
    wait_for(lambda: callbacks.seen() >= set(accepted), 180, "every accepted call's callback")
    assert len(accepted) >= 40 and len(accepted) + refused == 80

    # The function registry follows again: a deploy on one node reaches the others.
    new = nodes[-1].deploy(write_function(tmp_path / "after", ECHO.replace("'one'", "'after'")), "steady")["version"]
    wait_for(lambda: all(version_on(node, "steady") == new for node in nodes), 30, "a deploy after the restart")
    assert nodes[0].call("steady", method="GET").json()["says"] == "after"


def test_an_unknown_function_is_refused_before_the_202_on_every_node(cluster: Cluster) -> None:
    for node in cluster.nodes:
        if node.proc is not None and node.proc.poll() is None:
            with pytest.raises(ApiError) as missing:
                node.client.invoke_async(f"missing-{uuid.uuid4().hex[:6]}", b"{}")
            assert missing.value.status == 404
