#!/usr/bin/env python3
"""bench/chaos.py — Mortar under kill -9 and dependency outages (issue 19).

Run it through bench/chaos.sh, which builds mortar, makes the scratch dir, cleans up after a
crash and appends the report to bench/RESULTS.md. Standard library only: the load comes from
threads, each with its own keep-alive `http.client` connection per node.

Scenarios (one function each, `scenario_<name>`):

  jobs       clients enqueue (single POST /v1/jobs and POST /v1/jobs/batch) while the server is
             killed with kill -9 and restarted, in embedded mode (SQLite in a data dir) and in
             cluster mode (2 nodes on a fresh database of the shared PostgreSQL); afterwards every
             acknowledged (201) job must be listed by GET /v1/jobs.
  ratelimit  a node on a private redis-server; checks (POST /v1/ratelimit/check) against a
             fail_open and a fail_closed policy while that Redis is killed (-9: connection
             refused) and later frozen (SIGSTOP: no answer), each for a few seconds, then brought
             back; the node must recover without a restart.
  locks      2 nodes on a fresh PostgreSQL database (lock.backend auto), then again with
             lock.backend = redis (shared Redis, a private key prefix): clients acquire and
             release a few contended locks through both nodes while one node at a time is
             killed with -9 and restarted; fencing tokens must strictly increase. Then the
             "waiter through a dead node" case: holder via A (ttl_ms 3000), a waiter via A
             (wait_ms 45000), a waiter via B (wait_ms 90000), kill -9 A: B's grant must come
             within the holder's TTL plus lock.node_lease_ms.
  pg         a node on a private PostgreSQL (initdb in the scratch dir) under an enqueue load;
             the database is stopped (pg_ctl -m immediate) for a few seconds and started again:
             503 count, their latency, recovery time, and no acknowledged job lost.

Exit status 1 when a "must" check fails: an acknowledged job lost, a fencing token not above
one granted before it was asked for, a 5xx where none is allowed (every 5xx under kill -9; in an
outage only a 503 carrying a `dependency` field is allowed, never a 500 — and a rate-limit check
must never be a 5xx at all, each policy's failure_mode decides), a waiter kept in line by a dead
node, or no recovery without a restart. "Target" rows (fail-fast 503s within 100 ms) are
printed met/missed but do not change the exit status.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Ports of the mortar nodes (bench/chaos.sh checks that they are free). Private Redis and
# PostgreSQL servers get free ports from the kernel.
PORT_A = 18710
PORT_B = 18711

now = time.monotonic


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rand_hex(n: int = 6) -> str:
    return os.urandom(n).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------ settings --


@dataclass
class Durations:
    """Seconds per phase; --quick is a few seconds per scenario, the default about a minute."""

    jobs_run: float  # per mode (embedded, cluster)
    jobs_kills: int
    locks_run: float  # per backend
    locks_kills: int
    rl_baseline: float
    rl_outage: float  # per outage (killed, frozen)
    rl_recovery_max: float
    pg_baseline: float
    pg_outage: float
    pg_recovery_max: float


QUICK = Durations(6, 2, 6, 2, 1, 3, 10, 2, 6, 30)
FULL = Durations(30, 6, 25, 5, 5, 15, 30, 10, 15, 60)


@dataclass
class Ctx:
    mortar: str
    tmp: Path
    database_url: str  # the shared PostgreSQL (databases are created and dropped here)
    redis_url: str  # the shared Redis (only lock.backend = redis uses it)
    redis_prefix: str
    lock_backends: list[str]
    d: Durations
    node_lease_ms: int = 5000

    def note(self, kind: str, value: str) -> None:
        """Records something for bench/chaos.sh to clean up should this process die."""
        with open(self.tmp / f"chaos-{kind}", "a") as f:
            f.write(f"{value}\n")


# ---------------------------------------------------------------------------- HTTP --


class ConnError(Exception):
    """No HTTP answer: refused, reset, or timed out (the outcome of the request is unknown)."""

    def __init__(self, kind: str, secs: float):
        super().__init__(kind)
        self.kind = kind
        self.secs = secs


@dataclass
class Reply:
    status: int
    body: dict | None
    secs: float

    def five_xx(self) -> str | None:
        """None, or the kind of 5xx: "500", "503 dependency" (a problem naming the dependency
        that is down), or "5xx other" (any other 5xx)."""
        if self.status < 500:
            return None
        if self.status == 500:
            return "500"
        if self.status == 503 and isinstance(self.body, dict) and self.body.get("dependency"):
            return "503 dependency"
        return "5xx other"


class Client:
    """One keep-alive connection to one node; reconnects after any failure."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body=None, headers: dict | None = None,
             timeout: float | None = None) -> Reply:
        hdrs = {"content-type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        data = json.dumps(body).encode() if body is not None else None
        t0 = now()
        try:
            if self.conn is None or timeout is not None:
                self.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=timeout or self.timeout)
            self.conn.request(method, path, body=data, headers=hdrs)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            if isinstance(e, socket.timeout):
                kind = "timeout"
            elif isinstance(e, ConnectionRefusedError):
                kind = "refused"
            else:
                kind = "reset"
            raise ConnError(kind, now() - t0) from None
        secs = now() - t0
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if resp.getheader("connection", "").lower() == "close":
            self.close()
        return Reply(resp.status, parsed, secs)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Tally:
    """Counters and latencies shared by the load threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.lats: dict[str, list[float]] = collections.defaultdict(list)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def latency(self, key: str, secs: float) -> None:
        with self.lock:
            self.lats[key].append(secs)

    def reply(self, what: str, r: Reply) -> None:
        """Counts one answer: its latency under `what`, and its 5xx kind if any."""
        with self.lock:
            self.counts[f"{what} requests"] += 1
            self.lats[what].append(r.secs)
            kind = r.five_xx()
            if kind:
                self.counts[kind] += 1

    def conn_error(self, e: ConnError) -> None:
        self.add("timeouts" if e.kind == "timeout" else "connection errors")

    def five_xx(self) -> dict[str, int]:
        return {k: self.counts[k] for k in ("500", "503 dependency", "5xx other")}

    def max_ms(self, key: str) -> str:
        return ms(max(self.lats[key])) if self.lats.get(key) else "-"

    def p99_ms(self, key: str) -> str:
        return ms(percentile(self.lats[key], 0.99)) if self.lats.get(key) else "-"


def ms(secs: float) -> str:
    return f"{secs * 1000:.1f}"


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def fmt_5xx(d: dict[str, int]) -> str:
    total = sum(d.values())
    if total == 0:
        return "0"
    return f"{total} (" + ", ".join(f"{k}: {v}" for k, v in d.items() if v) + ")"


# ----------------------------------------------------------------------- processes --


class Node:
    """One `mortar serve` on 127.0.0.1:<port> with its own directory (kept across restarts:
    its data dir is the embedded mode's state). Log lines of every life go to one file."""

    def __init__(self, ctx: Ctx, name: str, port: int, env: dict[str, str]):
        self.ctx = ctx
        self.name = name
        self.port = port
        self.env = env
        self.dir = ctx.tmp / f"node-{name}"
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.lives = 0

    def argv(self) -> list[str]:
        return [self.ctx.mortar, "serve", "--listen", f"127.0.0.1:{self.port}",
                "--data-dir", str(self.dir / "data")]

    def full_env(self) -> dict[str, str]:
        # No inherited MORTAR_* setting: only what the scenario asks for.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MORTAR_")}
        env.update({"MORTAR_LOG__LEVEL": os.environ.get("MORTAR_BENCH_LOG_LEVEL", "warn"),
                    "MORTAR_CACHE__RESP_LISTEN": "off"})
        env.update(self.env)
        return env

    def shown(self) -> str:
        """The command line for the report, database URLs and prefixes shortened."""
        env = {k: v for k, v in self.full_env().items() if k.startswith("MORTAR_")}
        parts = []
        for k, v in sorted(env.items()):
            if k == "MORTAR_DATABASE_URL":
                v = re.sub(r"//.*", "//…", v)
            if k == "MORTAR_REDIS_PREFIX":
                v = "<fresh prefix>"
            parts.append(f"{k}={v}")
        return " ".join(parts + ["mortar serve --listen", f"127.0.0.1:{self.port}", "--data-dir <tmp>"])

    def start(self, ready_timeout: float = 60.0) -> None:
        self.lives += 1
        with open(self.dir / "mortar.log", "ab") as out:
            out.write(f"--- life {self.lives} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.argv(), cwd=self.dir, env=self.full_env(),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.ctx.note("pids", str(self.proc.pid))
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        c = Client(self.port, timeout=2)
        deadline = now() + timeout
        while now() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); "
                                   f"see {self.dir / 'mortar.log'}")
            try:
                if c.call("GET", "/readyz").status == 200:
                    return
            except ConnError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if not self.alive():
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class PrivateRedis:
    """A redis-server of our own (no persistence) on a free port, to kill and freeze."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.port = free_port()
        self.dir = ctx.tmp / "redis"
        self.dir.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir)]
        with open(self.dir / "redis.log", "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out)
        self.ctx.note("pids", str(self.proc.pid))
        deadline = now() + 10
        while now() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


class PrivatePostgres:
    """A PostgreSQL of our own (initdb in the scratch dir, a free port), as
    crates/mortar-testkit/src/private_pg.rs does: run as `postgres` (via su when root)."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
        if not bins:
            raise RuntimeError("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
        self.bin = bins[-1].parent
        self.port = free_port()
        self.dir = ctx.tmp / "postgres"
        self.version = self.bin.parent.name

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def sh(self, cmd: str) -> None:
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", cmd] if os.geteuid() == 0 else ["sh", "-c", cmd]
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)

    def init(self) -> None:
        (self.dir / "data").mkdir(parents=True)
        if os.geteuid() == 0:
            # The scratch dir is root's (0700): let postgres through, to its own dir only.
            os.chmod(self.ctx.tmp, 0o711)
            subprocess.run(["chown", "-R", "postgres", str(self.dir)], check=True)
        self.ctx.note("pgdata", f"{self.bin} {self.dir / 'data'}")
        self.sh(f"{self.bin / 'initdb'} -D {self.dir / 'data'} -A trust -U postgres --no-sync >/dev/null")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.sh(f"{self.bin / 'pg_ctl'} -D {self.dir / 'data'} -o '{opts}' -l {self.dir / 'log'} -w start >/dev/null")

    def stop(self) -> None:
        """At once, like a crash (`-m immediate`)."""
        self.sh(f"{self.bin / 'pg_ctl'} -D {self.dir / 'data'} -m immediate -w stop >/dev/null")

    def running(self) -> bool:
        return (self.dir / "data" / "postmaster.pid").exists()


def psql(url: str, sql: str) -> str:
    out = subprocess.run(["psql", url, "-qtAc", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


class SharedDatabase:
    """A fresh database on the shared PostgreSQL, dropped afterwards (with bench/chaos.sh
    dropping it too should this process die first)."""

    def __init__(self, ctx: Ctx, label: str):
        self.ctx = ctx
        self.name = f"mortar_chaos_{label}_{rand_hex(4)}"
        self.admin = ctx.database_url

    def __enter__(self) -> str:
        self.ctx.note("dbs", self.name)
        psql(self.admin, f"CREATE DATABASE {self.name}")
        return self.admin.rsplit("/", 1)[0] + "/" + self.name

    def __exit__(self, *exc) -> None:
        try:
            psql(self.admin, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        except subprocess.CalledProcessError as e:
            log(f"could not drop database {self.name}: {e.stderr}")


# ------------------------------------------------------------------------- helpers --


class Load:
    """Load threads that run `fn(i, stop)` until stopped."""

    def __init__(self):
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def spawn(self, n: int, fn) -> None:
        for _ in range(n):
            i = len(self.threads)

            def run(i=i):
                try:
                    fn(i, self.stop)
                except BaseException as e:  # a bug in the driver: fail loudly
                    self.errors.append(e)
                    log(f"load thread {i} died: {e!r}")

            t = threading.Thread(target=run, daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} load thread(s) failed: {self.errors[0]!r}")


def kill_loop(nodes: list[Node], seconds: float, kills: int, tally: Tally, stop_early: threading.Event) -> None:
    """Kills (-9) a node `kills` times, spread over `seconds` (jittered), alternating between
    nodes; each is restarted after 0.2–1 s down. Counts kills and the time to ready again."""
    gap = seconds / (kills + 1)
    for k in range(kills):
        if stop_early.wait(gap * random.uniform(0.75, 1.25)):
            return
        node = nodes[k % len(nodes)]
        node.kill9()
        tally.add("kills")
        log(f"kill -9 {node.name} ({k + 1}/{kills})")
        time.sleep(random.uniform(0.2, 1.0))
        t = now()
        node.start()
        tally.latency("restart", now() - t)
    stop_early.wait(gap)  # and a last stretch without a kill


@dataclass
class Check:
    what: str
    ok: bool
    detail: str
    must: bool = True  # False: a target, reported but not failing the run


@dataclass
class Section:
    title: str
    intro: str
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", self.intro, ""]
        for header, rows in self.tables:
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
            for r in rows:
                out.append("| " + " | ".join(str(c) for c in r) + " |")
            out.append("")
        for n in self.notes:
            out.append(n)
        if self.notes:
            out.append("")
        for c in self.checks:
            mark = ("pass" if c.ok else "FAIL") if c.must else ("met" if c.ok else "missed")
            kind = "" if c.must else " (target)"
            out.append(f"- **{mark}**{kind}: {c.what} — {c.detail}")
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- scenario: jobs --


def list_job_ids(port: int, queue: str) -> set[str]:
    """Every job of a queue, page by page (GET /v1/jobs?queue=&limit=1000&cursor=)."""
    c = Client(port)
    ids: set[str] = set()
    cursor = ""
    while True:
        path = f"/v1/jobs?queue={queue}&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        for attempt in range(10):
            try:
                r = c.call("GET", path)
                if r.status == 200:
                    break
            except ConnError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"listing jobs failed: GET {path}")
        ids.update(j["id"] for j in r.body["items"])
        cursor = r.body.get("next_cursor") or ""
        if not cursor:
            return ids


def enqueue_load(nodes: list[Node], queue: str, tally: Tally, acked: list[str], batch: int):
    """Load functions: single enqueues and batched enqueues, spread over the nodes; a client
    whose node does not answer moves on to the next node."""

    def single(i: int, stop: threading.Event) -> None:
        clients = [Client(n.port) for n in nodes]
        at, n = i % len(nodes), 0
        while not stop.is_set():
            n += 1
            try:
                r = clients[at].call("POST", "/v1/jobs",
                                     {"queue": queue, "kind": "chaos", "payload": {"t": i, "n": n}})
            except ConnError as e:
                tally.conn_error(e)
                at = (at + 1) % len(nodes)
                time.sleep(0.02)
                continue
            tally.reply("single", r)
            if r.status == 201:
                with tally.lock:
                    acked.append(r.body["id"])
                tally.add("acked single")
            elif r.status < 500:
                tally.add(f"single {r.status}")

    def batched(i: int, stop: threading.Event) -> None:
        clients = [Client(n.port) for n in nodes]
        at, n = i % len(nodes), 0
        while not stop.is_set():
            n += 1
            jobs = [{"queue": queue, "kind": "chaos", "payload": {"t": i, "n": n, "k": k}}
                    for k in range(batch)]
            try:
                r = clients[at].call("POST", "/v1/jobs/batch", {"jobs": jobs},
                                     headers={"prefer": "return=minimal"})
            except ConnError as e:
                tally.conn_error(e)
                at = (at + 1) % len(nodes)
                time.sleep(0.02)
                continue
            tally.reply("batch", r)
            if r.status == 201:
                ids = [j["id"] for j in r.body["items"]]
                with tally.lock:
                    acked.extend(ids)
                tally.add("acked batched", len(ids))
            elif r.status < 500:
                tally.add(f"batch {r.status}")

    return single, batched


def jobs_under_kills(ctx: Ctx, mode: str, section: Section) -> list[str]:
    d = ctx.d
    queue = f"chaos-{rand_hex(4)}"
    tally, acked = Tally(), []
    nodes: list[Node] = []
    with contextlib.ExitStack() as cleanup:
        if mode == "cluster":
            url = cleanup.enter_context(SharedDatabase(ctx, "jobs"))
            env = {"MORTAR_DATABASE_URL": url}
            nodes = [Node(ctx, "jobs-cluster-a", PORT_A, env), Node(ctx, "jobs-cluster-b", PORT_B, env)]
        else:
            nodes = [Node(ctx, "jobs-embedded", PORT_A, {})]
        cleanup.callback(lambda: [n.stop() for n in nodes])  # before the database is dropped
        for n in nodes:
            n.start()
        log(f"jobs/{mode}: {d.jobs_run:.0f} s of enqueues, {d.jobs_kills} kill -9")
        single, batched = enqueue_load(nodes, queue, tally, acked, batch=100)
        load = Load()
        load.spawn(4, single)
        load.spawn(2, batched)
        kill_loop(nodes, d.jobs_run, d.jobs_kills, tally, load.stop)
        load.finish()
        for n in nodes:
            if not n.alive():
                n.start()
        stored = list_job_ids(nodes[-1].port, queue)
        acked_set = set(acked)
        lost = acked_set - stored
        if lost:
            (ctx.tmp / f"lost-jobs-{mode}.txt").write_text("\n".join(sorted(lost)) + "\n")
        c = tally.counts
        section.tables[0][1].append([
            mode + (" (2 nodes)" if mode == "cluster" else ""),
            c["kills"],
            f"{c['single requests']} / {c['batch requests']}",
            f"{c['acked single']} / {c['acked batched']}",
            len(lost),
            len(stored - acked_set),
            fmt_5xx(tally.five_xx()),
            f"{c['connection errors']} / {c['timeouts']}",
            f"{tally.p99_ms('single')} / {tally.max_ms('single')}",
            f"{tally.p99_ms('batch')} / {tally.max_ms('batch')}",
            tally.max_ms("restart"),
        ])
        other = {k: v for k, v in c.items() if re.match(r"(single|batch) \d+$", k)}
        if other:
            section.notes.append(f"{mode}: other answers {dict(other)}")
        if len(acked) != len(acked_set):
            section.notes.append(f"{mode}: {len(acked) - len(acked_set)} job ids acknowledged twice")
        section.checks.append(Check(f"{mode}: no acknowledged job lost", not lost,
                                    f"{len(lost)} of {len(acked_set)} missing"
                                    + (f" (ids in lost-jobs-{mode}.txt)" if lost else "")))
        n5 = sum(tally.five_xx().values())
        section.checks.append(Check(f"{mode}: no 5xx", n5 == 0, fmt_5xx(tally.five_xx())))
        return [n.shown() for n in nodes[:1]]


def scenario_jobs(ctx: Ctx) -> Section:
    s = Section(
        "jobs: enqueues through kill -9",
        f"4 threads POST /v1/jobs and 2 threads POST /v1/jobs/batch (100 jobs, `Prefer: return=minimal`), "
        f"each one request at a time on a keep-alive connection, for {ctx.d.jobs_run:.0f} s per mode while "
        f"the server is killed with `kill -9` {ctx.d.jobs_kills} times (cluster: the nodes in turn) and "
        "restarted after 0.2–1 s; a client whose node does not answer moves to the next node. Afterwards "
        "every job of the run's queue is listed (GET /v1/jobs?queue=&limit=1000&cursor=) and compared "
        "with the acknowledged (201) ids. *Stored, unacked*: jobs whose request was cut off by a kill "
        "but committed (not an error). Latencies in ms, answered requests only.")
    s.tables.append(([
        "mode", "kills", "requests single / batch", "acked single / batched", "lost",
        "stored, unacked", "5xx", "conn errors / timeouts", "single p99 / max", "batch p99 / max",
        "restart → ready max"], []))
    cmds = []
    for mode in ("embedded", "cluster"):
        cmds += jobs_under_kills(ctx, mode, s)
    s.notes.insert(0, "servers: " + "; ".join(f"`{c}`" for c in cmds))
    return s


# ----------------------------------------------------------------- scenario: ratelimit --


def scenario_ratelimit(ctx: Ctx) -> Section:
    d = ctx.d
    redis = PrivateRedis(ctx)
    node = None
    try:
        redis.start()
        node = Node(ctx, "ratelimit", PORT_A, {"MORTAR_REDIS_URL": redis.url})
        node.start()
        c = Client(node.port)
        policies = {"chaos-open": "fail_open", "chaos-closed": "fail_closed"}
        for name, mode in policies.items():
            r = c.call("PUT", f"/v1/ratelimit/policies/{name}",
                       {"algorithm": "token_bucket", "limit": 1_000_000_000, "window_ms": 1000,
                        "failure_mode": mode})
            if r.status not in (200, 201):
                raise RuntimeError(f"PUT policy {name}: {r.status} {r.body}")

        # Every check: (sent, answered, status, degraded, policy, 5xx kind) or, without an
        # answer, (sent, gave up, None, False, policy, "reset" | "refused" | "timeout").
        samples: list[tuple] = []
        samples_lock = threading.Lock()

        def checker(i: int, stop: threading.Event) -> None:
            cl = Client(node.port, timeout=10)
            names = list(policies)
            k = 0
            while not stop.is_set():
                k += 1
                pol = names[k % 2]
                t0 = now()
                try:
                    r = cl.call("POST", "/v1/ratelimit/check",
                                {"policies": [pol], "key": f"k{i}", "cost": 1})
                    rec = (t0, t0 + r.secs, r.status, bool((r.body or {}).get("degraded")), pol,
                           r.five_xx())
                except ConnError as e:
                    rec = (t0, t0 + e.secs, None, False, pol, e.kind)
                with samples_lock:
                    samples.append(rec)

        load = Load()
        load.spawn(4, checker)
        marks: dict[str, float] = {"start": now()}
        time.sleep(d.rl_baseline)

        def outage(label: str, down, up) -> None:
            log(f"ratelimit: redis {label} for {d.rl_outage:.0f} s")
            marks[f"{label} down"] = now()
            down()
            time.sleep(d.rl_outage)
            up()
            marks[f"{label} up"] = now()
            # Wait for answers that did reach Redis again (fail_closed allowed, not degraded).
            deadline = now() + d.rl_recovery_max
            while now() < deadline:
                with samples_lock:
                    ok = any(s[0] >= marks[f"{label} up"] and s[2] == 200 and not s[3]
                             and s[4] == "chaos-closed" for s in samples)
                if ok:
                    break
                time.sleep(0.05)
            time.sleep(min(2.0, d.rl_baseline + 1))
            marks[f"{label} end"] = now()

        outage("killed", redis.kill9, redis.start)
        outage("frozen", redis.freeze, redis.thaw)
        load.finish()
    finally:
        if node:
            node.stop()
        redis.stop()

    s = Section(
        "ratelimit: checks through a Redis outage",
        f"One node with `MORTAR_REDIS_URL` on a private redis-server; policies `chaos-open` "
        f"(token_bucket, 10⁹ per s, fail_open) and `chaos-closed` (the same, fail_closed). 4 threads "
        f"POST /v1/ratelimit/check, alternating the two policies, one at a time. After {d.rl_baseline:.0f} s, "
        f"Redis is killed (-9: connection refused) for {d.rl_outage:.0f} s and started again on the same "
        f"port; after recovery, frozen (SIGSTOP: no answer) for {d.rl_outage:.0f} s and continued. "
        "*Degraded*: answers decided by the failure_mode (`\"degraded\": true`). *Recovered*: a "
        "fail_closed check sent after Redis came back was allowed and not degraded, within "
        f"{d.rl_recovery_max:.0f} s, without restarting mortar. Checks belong to the phase in which they were sent (one sent just "
        "before an outage may be answered by the failure_mode). Latencies in ms.")
    s.notes.append(f"server: `{node.shown()}`")
    header = ["phase", "checks", "200 / 429", "degraded", "5xx", "no answer", "p50", "p99", "max",
              "recovered (Redis back → first real answer)"]
    rows = []
    all5 = collections.Counter()
    recovered_all = True

    def phase(label: str, t0: float, t1: float, rec: str) -> None:
        xs = [s_ for s_ in samples if t0 <= s_[0] < t1]
        lats = [s_[1] - s_[0] for s_ in xs if s_[2] is not None]
        fx = collections.Counter(s_[5] for s_ in xs if s_[2] is not None and s_[5])
        all5.update(fx)
        rows.append([
            label, len(xs),
            f"{sum(1 for s_ in xs if s_[2] == 200)} / {sum(1 for s_ in xs if s_[2] == 429)}",
            sum(1 for s_ in xs if s_[3]),
            fmt_5xx({k: fx.get(k, 0) for k in ("500", "503 dependency", "5xx other")}),
            sum(1 for s_ in xs if s_[2] is None),
            ms(percentile(lats, 0.5)) if lats else "-",
            ms(percentile(lats, 0.99)) if lats else "-",
            ms(max(lats)) if lats else "-",
            rec])

    phase("baseline", marks["start"], marks["killed down"], "")
    for label in ("killed", "frozen"):
        down, up, end = marks[f"{label} down"], marks[f"{label} up"], marks[f"{label} end"]
        first = min((s_[1] for s_ in samples if s_[0] >= up and s_[2] == 200 and not s_[3]
                     and s_[4] == "chaos-closed"), default=None)
        ok = first is not None and first - up <= d.rl_recovery_max
        recovered_all &= ok
        phase(f"Redis {label} ({d.rl_outage:.0f} s)", down, up, "")
        phase(f"after ({label})", up, end,
              f"yes, {ms(first - up)} ms" if ok else f"no (within {d.rl_recovery_max:.0f} s)")
    s.tables.append((header, rows))
    n5 = sum(all5.values())
    s.checks.append(Check("no 5xx from a check (the failure_mode decides)", n5 == 0,
                          fmt_5xx({k: all5.get(k, 0) for k in ("500", "503 dependency", "5xx other")})))
    unanswered = collections.Counter(s_[5] for s_ in samples if s_[2] is None)
    s.checks.append(Check("every check answered (mortar itself stays up)", not unanswered,
                          ", ".join(f"{v} {k}" for k, v in unanswered.items()) or "all answered", must=False))
    s.checks.append(Check("recovered after each outage without a restart", recovered_all,
                          "; ".join(f"{r[0]}: {r[-1]}" for r in rows if r[-1])))
    return s


# --------------------------------------------------------------------- scenario: locks --


def token_regressions(grants: list[tuple]) -> tuple[int, int]:
    """(regressions, duplicate tokens) over grants (name, token, sent, answered): a grant whose
    acquire was sent after another grant of the same lock was answered must carry a larger
    token — a happens-before check that needs no shared clock beyond this process's."""
    by_name = collections.defaultdict(list)
    for g in grants:
        by_name[g[0]].append(g)
    regressions = dup = 0
    for gs in by_name.values():
        tokens = collections.Counter(g[1] for g in gs)
        dup += sum(n - 1 for n in tokens.values() if n > 1)
        answered = sorted(gs, key=lambda g: g[3])
        best, j = -1, 0
        for g in sorted(gs, key=lambda g: g[2]):
            while j < len(answered) and answered[j][3] < g[2]:
                best = max(best, answered[j][1])
                j += 1
            if g[1] <= best:
                regressions += 1
    return regressions, dup


def lock_load(nodes: list[Node], names: list[str], tally: Tally, grants: list[tuple]):
    def worker(i: int, stop: threading.Event) -> None:
        clients = [Client(n.port, timeout=15) for n in nodes]
        at = i % len(nodes)
        while not stop.is_set():
            name = random.choice(names)
            t0 = now()
            try:
                r = clients[at].call("POST", f"/v1/locks/{name}/acquire",
                                     {"ttl_ms": 3000, "owner": f"chaos-{i}", "wait_ms": 2000})
            except ConnError as e:
                tally.conn_error(e)
                at = (at + 1) % len(nodes)
                time.sleep(0.02)
                continue
            tally.reply("acquire", r)
            if r.status != 200:
                tally.add(f"acquire {r.status}")
                if r.status >= 500:
                    time.sleep(0.05)
                continue
            with tally.lock:
                grants.append((name, r.body["fencing_token"], t0, t0 + r.secs))
            time.sleep(random.uniform(0, 0.01))
            # Release through the same node, or the other one when it does not answer.
            for attempt in range(len(nodes) * 2):
                try:
                    rr = clients[at].call("POST", f"/v1/locks/{name}/release",
                                          {"lease_id": r.body["lease_id"]})
                except ConnError as e:
                    tally.conn_error(e)
                    at = (at + 1) % len(nodes)
                    time.sleep(0.02)
                    continue
                tally.reply("release", rr)
                if rr.status != 204:
                    tally.add(f"release {rr.status}")
                break

    return worker


def waiter_through_dead_node(ctx: Ctx, a: Node, b: Node) -> tuple[list, Check]:
    """Holder via A (ttl 3000), waiter via A (wait 45000), waiter via B (wait 90000), kill -9 A:
    when is B granted?"""
    name = f"chaos-waiter-{rand_hex(4)}"
    ca, cb = Client(a.port, timeout=120), Client(b.port, timeout=120)
    ttl = 3000
    r = ca.call("POST", f"/v1/locks/{name}/acquire", {"ttl_ms": ttl, "owner": "holder", "wait_ms": 0})
    if r.status != 200:
        raise RuntimeError(f"waiter scenario: holder not granted: {r.status} {r.body}")
    t_hold = now() - r.secs / 2
    holder_token = r.body["fencing_token"]
    out: dict[str, object] = {}

    def wait_via(client: Client, key: str, wait_ms: int) -> None:
        t0 = now()
        try:
            rr = client.call("POST", f"/v1/locks/{name}/acquire",
                             {"ttl_ms": 10000, "owner": key, "wait_ms": wait_ms})
            out[key] = (rr.status, now(), rr.body, now() - t0)
        except ConnError as e:
            out[key] = (e.kind, now(), None, e.secs)

    ta = threading.Thread(target=wait_via, args=(Client(a.port, timeout=120), "waiter-a", 45000), daemon=True)
    ta.start()
    time.sleep(0.5)
    tb = threading.Thread(target=wait_via, args=(cb, "waiter-b", 90000), daemon=True)
    tb.start()
    time.sleep(0.5)
    t_kill = now()
    a.kill9()
    log("locks: waiter through a dead node: A killed, waiting for B's grant")
    tb.join(120)
    ta.join(5)
    a.start()
    status, t_answer, body, waited = out.get("waiter-b", ("no answer", now(), None, 0.0))
    bound = (ttl + ctx.node_lease_ms) / 1000 + 1.5
    from_hold = t_answer - t_hold
    ok = status == 200 and from_hold <= bound and (body or {}).get("fencing_token", 0) > holder_token
    row = [f"{status}", f"{waited:.2f}", f"{from_hold:.2f}", f"{t_answer - t_kill:.2f}",
           f"{(ttl + ctx.node_lease_ms) / 1000:.1f}", f"{out.get('waiter-a', ('-',))[0]}"]
    check = Check("waiter through a dead node: B granted within the holder's TTL + lock.node_lease_ms",
                  ok, f"B answered {status} {from_hold:.2f} s after the holder's grant "
                      f"(TTL {ttl / 1000:.0f} s + node lease {ctx.node_lease_ms / 1000:.1f} s, "
                      f"+1.5 s slack allowed: ≤ {bound:.1f} s)")
    return row, check


def scenario_locks(ctx: Ctx) -> Section:
    d = ctx.d
    s = Section(
        "locks: fencing tokens through kill -9, and a waiter through a dead node",
        f"Two nodes on a fresh PostgreSQL database (`lock.backend` auto), then two with "
        f"`lock.backend = redis` (the shared Redis, a fresh key prefix). 6 threads acquire "
        f"(ttl_ms 3000, wait_ms 2000) one of 3 lock names through one node, hold 0–10 ms and release "
        f"(through the other node when theirs does not answer), for {d.locks_run:.0f} s while the nodes "
        f"are killed with `kill -9` in turn ({d.locks_kills} kills, restarted after 0.2–1 s). "
        "*Regressions*: grants whose token is not above that of a grant of the same lock answered "
        "before the acquire was sent. 409 = still held when wait_ms ran out. Latencies in ms; an "
        "acquire's includes its time in line (≤ 2000 ms).")
    fencing = []
    waiters = []
    cmds = []
    for backend in ctx.lock_backends:
        with SharedDatabase(ctx, "locks") as url:
            env = {"MORTAR_DATABASE_URL": url}
            if backend == "redis":
                env.update({"MORTAR_REDIS_URL": ctx.redis_url, "MORTAR_REDIS_PREFIX": ctx.redis_prefix,
                            "MORTAR_LOCK__BACKEND": "redis"})
            nodes = [Node(ctx, f"locks-{backend}-a", PORT_A, env), Node(ctx, f"locks-{backend}-b", PORT_B, env)]
            try:
                for n in nodes:
                    n.start()
                cmds.append(nodes[0].shown())
                log(f"locks/{backend}: {d.locks_run:.0f} s of acquire/release, {d.locks_kills} kill -9")
                tally, grants = Tally(), []
                names = [f"chaos-{rand_hex(4)}-{k}" for k in range(3)]
                load = Load()
                load.spawn(6, lock_load(nodes, names, tally, grants))
                kill_loop(nodes, d.locks_run, d.locks_kills, tally, load.stop)
                load.finish()
                regressions, dup = token_regressions(grants)
                c = tally.counts
                fencing.append([
                    backend, c["kills"], len(grants), regressions, dup, c["acquire 409"],
                    c["release 410"], fmt_5xx(tally.five_xx()),
                    f"{c['connection errors']} / {c['timeouts']}",
                    f"{tally.p99_ms('acquire')} / {tally.max_ms('acquire')}",
                    f"{tally.p99_ms('release')} / {tally.max_ms('release')}"])
                other = {k: v for k, v in c.items()
                         if re.match(r"(acquire|release) \d+$", k) and k not in ("acquire 409", "release 410")}
                if other:
                    s.notes.append(f"{backend}: other answers {dict(other)}")
                s.checks.append(Check(f"{backend}: fencing tokens strictly increase", regressions == 0 and dup == 0,
                                      f"{regressions} regressions, {dup} duplicate tokens in {len(grants)} grants"))
                n5 = sum(tally.five_xx().values())
                s.checks.append(Check(f"{backend}: no 5xx", n5 == 0, fmt_5xx(tally.five_xx())))
                for n in nodes:
                    if not n.alive():
                        n.start()
                row, check = waiter_through_dead_node(ctx, nodes[0], nodes[1])
                waiters.append([backend] + row)
                check.what = f"{backend}: {check.what}"
                s.checks.append(check)
            finally:
                for n in nodes:
                    n.stop()
    s.tables.append((["backend", "kills", "grants", "regressions", "duplicate tokens", "acquire 409",
                      "release 410", "5xx", "conn errors / timeouts", "acquire p99 / max",
                      "release p99 / max"], fencing))
    s.tables.append((["backend (waiter through a dead node)", "B's answer", "B waited s",
                      "holder's grant → B's grant s", "A killed → B's grant s",
                      "TTL + node lease s", "waiter via A"], waiters))
    s.notes.insert(0, "servers (A; B the same on port %d): " % PORT_B + "; ".join(f"`{c}`" for c in cmds))
    s.notes.append(f"waiter through a dead node: holder via A (ttl_ms 3000, wait_ms 0), 0.5 s later a "
                   f"waiter via A (wait_ms 45000), 0.5 s later a waiter via B (wait_ms 90000), 0.5 s later "
                   f"`kill -9` A; lock.node_lease_ms = {ctx.node_lease_ms}.")
    return s


# ------------------------------------------------------------------------ scenario: pg --


def scenario_pg(ctx: Ctx) -> Section:
    d = ctx.d
    pg = PrivatePostgres(ctx)
    node = None
    samples: list[tuple] = []  # (sent, answered, status | conn-error kind, 5xx kind, job id)
    lock = threading.Lock()
    queue = f"chaos-{rand_hex(4)}"
    marks: dict[str, float] = {}
    try:
        pg.init()
        pg.start()
        node = Node(ctx, "pg-outage", PORT_A, {"MORTAR_DATABASE_URL": pg.url})
        node.start()

        def enqueuer(i: int, stop: threading.Event) -> None:
            cl = Client(node.port, timeout=30)
            n = 0
            while not stop.is_set():
                n += 1
                t0 = now()
                try:
                    r = cl.call("POST", "/v1/jobs", {"queue": queue, "kind": "chaos", "payload": {"t": i, "n": n}})
                    rec = (t0, t0 + r.secs, r.status, r.five_xx(),
                           r.body["id"] if r.status == 201 else None)
                except ConnError as e:
                    rec = (t0, t0 + e.secs, e.kind, None, None)
                with lock:
                    samples.append(rec)
                if rec[2] != 201:
                    time.sleep(0.01)  # a client that backs off a little, as clients should

        load = Load()
        load.spawn(4, enqueuer)
        marks["start"] = now()
        time.sleep(d.pg_baseline)
        log(f"pg: PostgreSQL stopped for {d.pg_outage:.0f} s")
        marks["down"] = now()
        pg.stop()
        time.sleep(d.pg_outage)
        pg.start()
        marks["up"] = now()
        log("pg: PostgreSQL started again")
        deadline = now() + d.pg_recovery_max
        while now() < deadline:
            with lock:
                if any(x[1] > marks["up"] and x[2] == 201 for x in samples):
                    break
            time.sleep(0.05)
        time.sleep(2)
        marks["end"] = now()
        load.finish()
        stored = list_job_ids(node.port, queue)
    finally:
        if node:
            node.stop()
        if pg.running():
            pg.stop()

    acked = {x[4] for x in samples if x[4]}
    lost = acked - stored
    f503 = [x for x in samples if x[3] == "503 dependency"]
    fx = collections.Counter(x[3] for x in samples if x[3])
    first503 = min((x[1] for x in f503), default=None)
    # "Once detected": 503s for requests sent after the first 503 came back.
    late503 = [x[1] - x[0] for x in f503 if first503 is not None and x[0] >= first503]
    ok_after = [x[1] for x in samples if x[2] == 201 and x[1] > marks["up"]]
    recovery = (min(ok_after) - marks["up"]) if ok_after else None
    during = [x for x in samples if marks["down"] <= x[0] < marks["up"]]
    answered = [x for x in samples if isinstance(x[2], int)]
    unanswered = collections.Counter(x[2] for x in samples if not isinstance(x[2], int))
    s = Section(
        "pg: jobs through a PostgreSQL outage",
        f"One node with `MORTAR_DATABASE_URL` on a private PostgreSQL {pg.version} (initdb in the "
        f"scratch dir, fsync off); 4 threads POST /v1/jobs one at a time (10 ms pause after a "
        f"non-201). After {d.pg_baseline:.0f} s PostgreSQL is stopped (`pg_ctl stop -m immediate`) for "
        f"{d.pg_outage:.0f} s, then started again. *Detected*: the first 503 answer; *503 once "
        "detected*: requests sent after it. *Recovery*: PostgreSQL accepting connections again "
        "→ the first 201. Latencies in ms.")
    s.notes.append(f"server: `{node.shown()}`")
    s.tables.append((["requests", "during outage", "acked", "lost", "503 (dependency)", "other 5xx",
                      "no answer: reset / refused / timeout", "stopped → first 503 ms", "503 p50 / max",
                      "503 once detected p50 / max", "max latency (any answer)", "recovery ms"], [[
        len(samples), len(during), len(acked), len(lost), fx["503 dependency"],
        fmt_5xx({"500": fx["500"], "5xx other": fx["5xx other"]}),
        " / ".join(str(unanswered[k]) for k in ("reset", "refused", "timeout")),
        ms(first503 - marks["down"]) if first503 else "-",
        (f"{ms(percentile([x[1] - x[0] for x in f503], 0.5))} / {ms(max(x[1] - x[0] for x in f503))}" if f503 else "-"),
        (f"{ms(percentile(late503, 0.5))} / {ms(max(late503))}" if late503 else "-"),
        ms(max(x[1] - x[0] for x in answered)) if answered else "-",
        ms(recovery) if recovery is not None else f"none within {d.pg_recovery_max:.0f} s"]]))
    s.checks.append(Check("no acknowledged job lost", not lost, f"{len(lost)} of {len(acked)} missing"))
    s.checks.append(Check("no 5xx but a 503 naming the dependency", fx["500"] + fx["5xx other"] == 0,
                          fmt_5xx({"500": fx["500"], "5xx other": fx["5xx other"]})))
    s.checks.append(Check("recovered without a restart", recovery is not None,
                          f"first 201 {ms(recovery)} ms after PostgreSQL was back" if recovery is not None
                          else f"no 201 within {d.pg_recovery_max:.0f} s"))
    s.checks.append(Check("503s within 100 ms once the outage is detected",
                          bool(late503) and max(late503) <= 0.1,
                          f"max {ms(max(late503))} ms over {len(late503)} answers" if late503
                          else "no 503 for a request sent after the first 503", must=False))
    s.checks.append(Check("every request answered (the node never dies here: a reset is a connection "
                          "the server dropped, a timeout a client that gave up after 30 s)",
                          not unanswered, ", ".join(f"{v} {k}" for k, v in unanswered.items()) or "all answered",
                          must=False))
    return s


# --------------------------------------------------------------------------- main --

SCENARIOS = {
    "jobs": scenario_jobs,
    "ratelimit": scenario_ratelimit,
    "locks": scenario_locks,
    "pg": scenario_pg,
}


def node_lease_ms(mortar: str) -> int:
    """lock.node_lease_ms as this build prints it (its default), 5000 when absent."""
    out = subprocess.run([mortar, "serve", "--print-config"], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MORTAR_")})
    m = re.search(r"^\s*node_lease_ms\s*=\s*(\d+)", out.stdout, re.M)
    return int(m.group(1)) if m else 5000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="a few seconds per scenario")
    ap.add_argument("--mortar", required=True, help="the mortar binary")
    ap.add_argument("--tmp", required=True, help="scratch dir (node dirs, logs)")
    ap.add_argument("--database-url", required=True, help="the shared PostgreSQL (fresh databases are made there)")
    ap.add_argument("--redis-url", required=True, help="the shared Redis (lock.backend = redis)")
    ap.add_argument("--redis-prefix", required=True, help="a fresh key prefix on the shared Redis")
    ap.add_argument("--lock-backends", default="postgres,redis")
    ap.add_argument("--report", required=True, help="write the Markdown report here")
    args = ap.parse_args()
    names = args.scenarios or list(SCENARIOS)
    for n in names:
        if n not in SCENARIOS:
            ap.error(f"unknown scenario {n!r}; pick from {', '.join(SCENARIOS)}")
    # bench/chaos.sh stops us with SIGTERM: unwind through the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    ctx = Ctx(mortar=args.mortar, tmp=Path(args.tmp), database_url=args.database_url,
              redis_url=args.redis_url, redis_prefix=args.redis_prefix,
              lock_backends=[b for b in args.lock_backends.split(",") if b],
              d=QUICK if args.quick else FULL)
    ctx.node_lease_ms = node_lease_ms(ctx.mortar)
    sections = []
    for n in names:
        log(f"scenario {n}")
        t = now()
        try:
            sec = SCENARIOS[n](ctx)
        except Exception as e:  # report it and go on with the next scenario
            log(f"scenario {n} did not finish: {e!r}")
            sec = Section(f"{n}: did not finish", "")
            sec.checks.append(Check("the scenario ran to the end", False, f"{type(e).__name__}: {e}"))
        sec.title += f" ({now() - t:.0f} s)"
        sections.append(sec)
        print(sec.markdown(), flush=True)
    failed = [c for sec in sections for c in sec.checks if c.must and not c.ok]
    missed = [c for sec in sections for c in sec.checks if not c.must and not c.ok]
    summary = (f"**{'FAILED' if failed else 'passed'}**: {len(failed)} failed check(s)"
               + (": " + "; ".join(c.what for c in failed) if failed else "")
               + f"; {len(missed)} missed target(s)"
               + (": " + "; ".join(c.what for c in missed) if missed else "") + ".")
    Path(args.report).write_text("\n".join(s.markdown() for s in sections) + "\n" + summary + "\n")
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
