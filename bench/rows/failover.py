"""failover: dispatchers sharing a PostgreSQL store (issue 14). Takeover time after the active one is SIGKILLed
and after its machine's link is cut, and throughput and latency on PostgreSQL beside SQLite's, in one run."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from .. import pgserver
from ..harness import PY, BenchError, Figure, Repo, summarize
from ..netns import Island, NetnsUnavailable
from ..shared import wait_for
from .common import Context, _cluster, _warm_up, toml

ROW = "failover"


def failover(ctx: Context) -> list[Figure]:
    try:
        server = pgserver.start()  # not under the run's temp dir: the server's user could not enter it
    except pgserver.PgUnavailable as exc:
        return [Figure(ROW, "takeover after SIGKILL", "s", None, "p50 <= 2 s", None, error=f"skipped: {exc}")]
    try:
        figures = _takeovers_after_kill(ctx, server)
        figures += _takeovers_after_cut(ctx)
        figures += _postgres_beside_sqlite(ctx, server)
    finally:
        server.stop()
    return figures


class Group:
    """Dispatchers of one repository on one database, each with a state dir and TCP port of its own, and
    runners and an observer that know every address. Processes of the run's ``Procs``."""

    def __init__(self, ctx: Context, tag: str, repo: Repo, dsn: str, lease: float):
        self.ctx, self.tag, self.repo, self.dsn, self.lease = ctx, tag, repo, dsn, lease
        self.addresses: dict[str, str] = {}
        self.token = ""
        self.names: list[str] = []

    def _full(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def start_dispatcher(self, name: str, island: Island | None = None) -> str:
        state = self.ctx.dir(f"{self.tag}-{name}-state")
        (state / "address").unlink(missing_ok=True)
        host = island.ip if island else "127.0.0.1"
        dsn = self.dsn.replace("@127.0.0.1:", f"@{island.host_ip}:") if island else self.dsn
        argv = [PY, "-m", "tuici", "dispatcher", "--state", str(state), "--repo", str(self.repo.path),
                "--listen", self.addresses.get(name, f"{host}:0"), "--insecure", "--store", dsn,
                "--lease", str(self.lease)]
        if island:
            argv = ["nsenter", "-t", str(island.holder.pid), "-n", "--", *argv]
        full = self._full(name)
        self.ctx.procs.procs.pop(full, None)
        self.ctx.procs.spawn(full, argv)
        if full not in self.names:
            self.names.append(full)

        def address():
            self.ctx.procs.check_alive(full)
            try:
                return next((a for a in (state / "address").read_text().split() if not a.startswith("unix:")), None)
            except FileNotFoundError:
                return None
        self.addresses[name] = wait_for(address, 30, 0.01, f"{full}'s address", error=BenchError)
        self.token = self.token or (state / "token").read_text().strip()
        return self.addresses[name]

    def start_workers(self, runners: int) -> None:
        every = ",".join(self.addresses.values())
        for i in range(runners):
            name = self._full(f"r{i + 1}")
            self.names.append(name)
            self.ctx.procs.spawn(name, [PY, "-m", "tuici", "runner", "--dispatcher", every, "--token", self.token,
                                        "--name", f"r{i + 1}",
                                        "--workdir", str(self.ctx.dir(f"{self.tag}-work") / f"r{i + 1}")])
        name = self._full("observer")
        self.names.append(name)
        self.ctx.procs.spawn(name, [PY, "-m", "tuici", "observer", str(self.repo.path), "--dispatcher", every,
                                    "--token", self.token])

    def pid(self, name: str) -> int:
        return self.ctx.procs.procs[self._full(name)].pid

    def leader(self) -> tuple[str, int] | None:
        """(the active dispatcher's name, its epoch), read from the database."""
        import psycopg

        with psycopg.connect(self.dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT address, epoch FROM leader WHERE expires_at > now()").fetchone()
        if row is None:
            return None
        names = [n for n, a in self.addresses.items() if a == row[0]]
        return (names[0], row[1]) if names else None

    def serves(self, name: str, runners: int) -> bool:
        """Whether ``name`` answers a status request as the active one, with ``runners`` runners back."""
        import asyncio

        from tuici import wire as p

        async def ask():
            endpoint = p.Endpoint(p.parse_addresses(self.addresses[name]), self.token)
            conn, _ = await asyncio.wait_for(p.handshake(endpoint, p.Hello(role="control", token=self.token)), 5)
            try:
                return await asyncio.wait_for(conn.request(p.StatusRequest(limit=1)), 5)
            finally:
                await conn.close()
        try:
            status = asyncio.run(ask())
        except Exception:
            return False
        return sum(1 for r in status.runners if r.state != "lost") >= runners

    def stop(self) -> None:
        self.ctx.procs.stop([n for n in self.names if "-d" not in n[len(self.tag):]])
        self.ctx.procs.stop(self.names)


def _takeover(group: Group, victim: str, runners: int, sig: int = signal.SIGKILL) -> tuple[float, float, str]:
    """Signal the active dispatcher; seconds until another holds the lease and serves status as the active one,
    and until every runner is back with it."""
    before = group.leader()
    assert before is not None and before[0] == victim
    group.ctx.procs.procs[group._full(victim)].send_signal(sig)
    hit = time.monotonic()
    new = wait_for(lambda: (lead := group.leader()) and lead[1] > before[1] and lead[0], 60, 0.02,
                   "a takeover", error=BenchError)
    wait_for(lambda: group.serves(new, 0), 60, 0.02, f"{new} serving", error=BenchError)
    serving = time.monotonic() - hit
    wait_for(lambda: group.serves(new, runners), 60, 0.05, "the runners back", error=BenchError)
    return serving, time.monotonic() - hit, new


def _takeovers_after_kill(ctx: Context, server: pgserver.PgServer) -> list[Figure]:
    s = ctx.sizes
    repo = Repo(ctx.tmp / "failover-kill-repo", toml("true", 30), files=10)
    group = Group(ctx, "fo-kill", repo, server.create_database("failover_kill"), s.failover_lease)
    serving, runners_back = [], []
    try:
        for name in ("d1", "d2", "d3"):
            group.start_dispatcher(name)
        group.start_workers(2)
        wait_for(lambda: group.serves("d1", 2), 60, 0.05, "the group serving", error=BenchError)
        for i in range(s.failover_rounds):
            victim = group.leader()[0]  # type: ignore[index]
            took, back, _ = _takeover(group, victim, 2)
            serving.append(took)
            runners_back.append(back)
            ctx.procs.procs[group._full(victim)].wait(10)
            group.start_dispatcher(victim)  # back as a standby
            ctx.say(f"failover: SIGKILL {i + 1}/{s.failover_rounds}: {took:.2f} s to serve, {back:.2f} s runners")
            time.sleep(random.uniform(0.2, 0.5))
    finally:
        group.stop()
    st, rb = summarize(serving), summarize(runners_back)
    return [Figure(
        ROW, "takeover after SIGKILL of the active dispatcher, p50", "s", st["p50"], "p50 <= 2 s", st["p50"] <= 2,
        spread=f"max {st['max']:.2f}, n={st['n']}; every runner back: p50 {rb['p50']:.2f}, max {rb['max']:.2f}",
        limit=f"0 (the killed one's session ends at once; a standby polls every 0.2 s); lease {s.failover_lease:g} s",
        stats=st, details={"runners_back_s": rb, "dispatchers": 3, "runners": 2})]


def _takeovers_after_cut(ctx: Context) -> list[Figure]:
    """The active dispatcher in a network namespace whose link is cut: only its lease's expiry can tell."""
    s = ctx.sizes
    serving, runners_back = [], []
    try:
        probe = Island()
        probe.close()
    except NetnsUnavailable as exc:
        return [Figure(ROW, "takeover after a cut link", "s", None, f"~ the lease ({s.failover_lease:g} s)", None,
                       error=f"skipped: {exc}")]
    for i in range(s.failover_rounds):
        for attempt in range(1, CUT_ATTEMPTS + 1):
            timed = _cut_round(ctx, f"fo-cut{i}-{attempt}")
            if timed is not None:
                break
            ctx.say(f"failover: cut link {i + 1}: the island lost its lease before the cut (a loaded machine?); "
                    f"again ({attempt}/{CUT_ATTEMPTS})")
        else:
            raise BenchError(f"the island lost its lease before the cut {CUT_ATTEMPTS} times in a row")
        serving.append(timed[0])
        runners_back.append(timed[1])
        ctx.say(f"failover: cut link {i + 1}/{s.failover_rounds}: {serving[-1]:.2f} s to serve, "
                f"{runners_back[-1]:.2f} s runners")
    st, rb = summarize(serving), summarize(runners_back)
    return [Figure(
        ROW, "takeover after the active dispatcher's link is cut, p50", "s", st["p50"],
        f"~ the lease ({s.failover_lease:g} s)", None,
        spread=f"max {st['max']:.2f}, n={st['n']}; every runner back: p50 {rb['p50']:.2f}, max {rb['max']:.2f}",
        limit=f"the lease, {s.failover_lease:g} s (nothing else can tell a silent machine from a slow one); "
              f"runners: TCP_USER_TIMEOUT 6 s", stats=st, details={"runners_back_s": rb})]


CUT_ATTEMPTS = 3  # tries of a cut-link round whose island lost its lease before the cut


def _cut_round(ctx: Context, tag: str) -> tuple[float, float] | None:
    """The island leads, the host stands by, two runners and an observer know both; cut the island's link.
    Seconds until the host serves as the active one, and until both runners are back with it; None if the
    island lost its lease before the cut (nothing to time: the host had taken over already)."""
    s = ctx.sizes
    island = Island()
    server = pgserver.start(hosts=(island.host_ip,), trust=(island.network,))
    repo = Repo(ctx.tmp / f"{tag}-repo", toml("true", 30), files=10)
    group = Group(ctx, tag, repo, server.create_database("cut"), s.failover_lease)
    try:
        group.start_dispatcher("island", island)
        wait_for(lambda: (lead := group.leader()) and lead[0] == "island", 60, 0.02, "the island leading",
                 error=BenchError)
        group.start_dispatcher("host")
        group.start_workers(2)
        wait_for(lambda: group.serves("island", 2) or (lead := group.leader()) and lead[0] != "island", 60, 0.05,
                 "the group serving", error=BenchError)
        if not group.serves("island", 2):
            return None
        island.cut()
        hit = time.monotonic()
        wait_for(lambda: (lead := group.leader()) and lead[0] == "host", 60, 0.02, "a takeover", error=BenchError)
        wait_for(lambda: group.serves("host", 0), 60, 0.02, "the standby serving", error=BenchError)
        took = time.monotonic() - hit
        wait_for(lambda: group.serves("host", 2), 60, 0.05, "the runners back", error=BenchError)
        return took, time.monotonic() - hit
    finally:
        group.stop()
        island.close()
        server.stop()


def _postgres_beside_sqlite(ctx: Context, server: pgserver.PgServer) -> list[Figure]:
    """The backlog and commit-latency workloads, once on SQLite and once on PostgreSQL, in the same run."""
    s = ctx.sizes
    results: dict[str, dict[str, float]] = {}
    for store in ("sqlite", "postgresql"):
        dsn = server.create_database(f"bench_{random.randrange(1 << 30)}") if store == "postgresql" else ""
        args = ("--store", dsn) if dsn else ()
        tag = f"fo-{store}"
        repo = Repo(ctx.tmp / f"{tag}-repo", toml("date +%s%N", 30), files=10)
        cluster = _cluster(ctx, tag, repo, 4, dispatcher_args=args)
        try:
            _warm_up(cluster, repo, 4)
            latencies = []
            for _ in range(s.failover_latency):
                sha, returned = repo.commit()
                time.sleep(0.05)
                job = cluster.wait_jobs([sha], timeout=60, interval=0.03)[sha]
                started = _stamp(job.id, repo.state_path, dsn)
                latencies.append((started - returned) * 1000)
                time.sleep(0.25 + random.uniform(0, 0.1))
            shas, made = repo.fast_import(s.failover_backlog)
            jobs = cluster.wait_jobs(shas, timeout=max(60.0, s.failover_backlog / 2), interval=0.5)
        finally:
            cluster.stop()
        lost = sum(1 for j in jobs.values() if j.state != "passed")
        rate = len(shas) / (max(j.finished_at for j in jobs.values()) - made)
        results[store] = {"rate": rate, "lost": lost, **{f"lat_{k}": v for k, v in summarize(latencies).items()}}
        ctx.say(f"failover: {store}: {rate:.1f} jobs/s, commit -> start p50 {results[store]['lat_p50']:.1f} ms")
    sq, pg = results["sqlite"], results["postgresql"]
    return [
        Figure(ROW, "backlog throughput, 4 runners: PostgreSQL / SQLite", "x", pg["rate"] / sq["rate"],
               "PostgreSQL within 2x of SQLite (>= 0.5)", pg["rate"] / sq["rate"] >= 0.5 and pg["lost"] == 0,
               spread=f"PostgreSQL {pg['rate']:.1f} jobs/s ({pg['lost']:.0f} lost), SQLite {sq['rate']:.1f} jobs/s; "
                      f"{s.failover_backlog} commits at once", limit="1.0", stats=pg),
        Figure(ROW, "commit -> test start p50: PostgreSQL / SQLite", "x", pg["lat_p50"] / sq["lat_p50"],
               "PostgreSQL within 2x of SQLite (<= 2)", pg["lat_p50"] / sq["lat_p50"] <= 2,
               spread=f"PostgreSQL p50 {pg['lat_p50']:.1f} ms (max {pg['lat_max']:.1f}), SQLite p50 "
                      f"{sq['lat_p50']:.1f} ms (max {sq['lat_max']:.1f}), n={s.failover_latency}", limit="1.0",
               stats=sq),
    ]


def _stamp(job_id: int, state_path: Path, dsn: str) -> float:
    """When the job's command printed its ``date +%s%N``: from the log file, or from the database's chunks."""
    if dsn:
        import psycopg

        with psycopg.connect(dsn) as conn:
            text = b"".join(bytes(r[0]) for r in conn.execute(
                'SELECT data FROM log_chunks WHERE job_id = %s ORDER BY "offset"', (job_id,))).decode()
    else:
        text = (state_path / "logs" / "jobs" / f"{job_id}.log").read_text()
    return next(int(line) for line in text.splitlines() if line.isdigit()) / 1e9
