"""The `tuici` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import protocol as p
from .client import Control, NoDispatcher
from .sanitize import StreamCleaner, one_line
from .statedir import NotARepository, StateDir, find_git_dir, resolve_token

COMMANDS = ("serve", "dispatcher", "observer", "runner", "status", "log", "rerun", "cancel", "demo")

STATUS_SCHEMA = """\
status --json prints one object:
  repo      the repository URL runners clone from
  last_seq  the newest event's sequence number
  runners   [{name, host, pid, state: idle|busy|lost, job: id|null, jobs_done, last_heartbeat}]
  jobs      [{id, commit, branch, state: queued|running|passed|failed|error|cancelled, runner,
              attempts, exit_code, duration_s, passed, failed, skipped, error, queued_at,
              started_at, finished_at, log_size}]
  commits   [{sha, branch, author, subject, time}]
  attempts  [{job_id, attempt, runner, started_at, ended_at, outcome, reason}]
Times are unix seconds; counts are null when the command wrote no JUnit XML."""


def _repo_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", nargs="?", default=".", metavar="REPO",
                        help="the git repository (default: the current directory)")


def _dispatcher_opts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heartbeat-timeout", type=float, default=5.0, metavar="S",
                        help="mark a runner lost after S seconds without a heartbeat (default 5)")
    parser.add_argument("--max-attempts", type=int, default=3, metavar="N",
                        help="give up on a job (state error) after N lost attempts (default 3)")


def _client_opts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dispatcher", required=True, metavar="HOST:PORT", help="the dispatcher's address")
    parser.add_argument("--token", help="the dispatcher's token (default: $TUICI_TOKEN or the token in --state); "
                                        "prefer TUICI_TOKEN: a command line is visible to every process")
    parser.add_argument("--state", type=Path, metavar="DIR", help="a local state dir to read the token from")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="connect with TLS, trusting the dispatcher certificate signed by the CA in FILE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuici",
        description="Continuous integration in the terminal. `tuici [REPO]` opens the control center; "
                    "the commands below run or query its parts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="supervise dispatcher, observer and runners without a UI",
                       description="Start the dispatcher, the observer and N runners for REPO, restart any that "
                                   "dies, and print every event, one per line, until SIGINT/SIGTERM.")
    _repo_arg(s)
    s.add_argument("--runners", type=int, default=os.cpu_count() or 1, metavar="N", help="runners to start")
    s.add_argument("--json", action="store_true", help="print events as JSON lines")
    s.add_argument("--output", action="store_true", help="also print the jobs' output as it arrives")
    s.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="the dispatcher's address (default: 127.0.0.1 and a free port)")
    _dispatcher_opts(s)

    d = sub.add_parser("dispatcher", help="run the dispatcher (the job queue server)",
                       description="Serve the job queue for one repository's state dir.")
    d.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="address to listen on (default: 127.0.0.1 and a free port, written to the state dir)")
    d.add_argument("--state", type=Path, metavar="DIR",
                   help="state directory (default: .git/tuici of the repository in the current directory)")
    d.add_argument("--repo", metavar="REPO", help="the repository URL or path runners clone from")
    d.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    d.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    d.add_argument("--insecure", action="store_true",
                   help="allow listening beyond loopback without TLS (the token then crosses the network in clear)")
    _dispatcher_opts(d)

    o = sub.add_parser("observer", help="watch a repository and report new commits",
                       description="Report every new commit on the watched branches of REPO to the dispatcher, "
                                   "reacting to ref changes; with --poll, fetch REPO (a URL) every N seconds.")
    _repo_arg(o)
    _client_opts(o)
    o.add_argument("--poll", type=float, metavar="SECONDS", help="fetch from the remote REPO every SECONDS")

    r = sub.add_parser("runner", help="run jobs the dispatcher hands out",
                       description="Register with the dispatcher and test one commit at a time in a workspace of "
                                   "its own.")
    _client_opts(r)
    r.add_argument("--name", help="the runner's name (default: HOST-PID)")
    r.add_argument("--workdir", type=Path, metavar="DIR", help="where the runner keeps its checkout")

    st = sub.add_parser("status", help="show commits, jobs and runners", description=STATUS_SCHEMA,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _repo_arg(st)
    st.add_argument("--json", action="store_true", help="print the whole state as JSON (schema above)")
    st.add_argument("--limit", type=int, default=20, help="jobs to list without --json (default 20)")

    lg = sub.add_parser("log", help="print a job's stored output",
                        description="Print the output stored for JOB: what it has printed so far while it runs, "
                                    "all of it after.")
    lg.add_argument("job", type=int, metavar="JOB")
    _repo_arg(lg)
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job finishes")

    rr = sub.add_parser("rerun", help="queue a commit again, at the front", description="Queue COMMIT "
                        "(a sha or unique prefix) again, ahead of every other job.")
    rr.add_argument("commit", metavar="COMMIT")
    _repo_arg(rr)

    c = sub.add_parser("cancel", help="cancel a queued or running job",
                       description="Cancel JOB: a queued one is dropped, a running one is killed on its runner.")
    c.add_argument("job", type=int, metavar="JOB")
    _repo_arg(c)

    dm = sub.add_parser("demo", help="open the control center on a sample repository",
                        description="Make a sample repository in a temporary directory, keep committing to it, "
                                    "and open the control center on it.")
    dm.add_argument("--runners", type=int, default=2, metavar="N")
    dm.add_argument("--theme", metavar="NAME")
    return parser


def build_ui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuici", description="Open the control center on REPO. Other commands: " + ", ".join(COMMANDS)
        + " (see `tuici COMMAND --help`).",
    )
    _repo_arg(parser)
    parser.add_argument("--runners", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="runners to start (default: the number of CPUs)")
    parser.add_argument("--theme", metavar="NAME", help="colour theme for this run")
    return parser


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")


def die(message: str, code: int = 2) -> "NoReturn":  # noqa: F821
    print(f"tuici: {message}", file=sys.stderr)
    raise SystemExit(code)


def state_for(repo: str) -> StateDir:
    try:
        return StateDir.for_repo(repo)
    except NotARepository as exc:
        die(str(exc))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        args = build_ui_parser().parse_args(argv)
        from .ui.app import run_app

        run_app(args.repo, runners=args.runners, theme=args.theme)
        return
    args = build_parser().parse_args(argv)
    try:
        handler = globals()[f"cmd_{args.command}"]
        result = handler(args)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except NoDispatcher as exc:
        die(str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


# ---------------------------------------------------------------------- components


def cmd_dispatcher(args) -> None:
    import ipaddress

    from .dispatcher import AlreadyRunning, run_dispatcher

    setup_logging()
    state = StateDir(args.state) if args.state else state_for(".")
    host, port = _address(args.listen)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not args.tls_cert and not args.insecure:
        die(f"listening on {host} beyond loopback needs --tls-cert/--tls-key (or --insecure)")
    try:
        tls = p.server_tls(args.tls_cert, args.tls_key)
    except (OSError, ValueError) as exc:
        die(f"cannot load the TLS certificate {args.tls_cert}: {exc}")
    repo = args.repo or ""
    if repo and os.path.isdir(repo):
        repo = str(find_git_dir(repo)[0])
    try:
        asyncio.run(run_dispatcher(state, host, port, heartbeat_timeout=args.heartbeat_timeout,
                                   max_attempts=args.max_attempts, repo_url=repo, tls=tls))
    except AlreadyRunning as exc:
        die(str(exc))
    except OSError as exc:
        die(f"cannot listen on {args.listen}: {exc.strerror or exc}")


def cmd_observer(args) -> None:
    from .observer import Source, mirror_dir_for, run_observer

    setup_logging()
    endpoint, state = _endpoint(args)
    try:
        mirror = (state.path / "mirror.git") if state else mirror_dir_for(args.repo)
        source = Source(args.repo, mirror_dir=mirror)
    except NotARepository as exc:
        die(str(exc))
    if source.remote and not args.poll:
        die(f"{args.repo} is not a local directory; pass --poll SECONDS to fetch it")
    asyncio.run(run_observer(source, endpoint, args.poll))


def cmd_runner(args) -> None:
    import socket

    from .runner import default_workdir, hide_memory, run_runner

    setup_logging()
    endpoint, _ = _endpoint(args)
    if os.environ.pop("TUICI_TOKEN", None) or args.token:  # never handed on to the code under test
        # No token file on this machine the tests could read anyway: keep the one we hold out of their reach.
        hide_memory()
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    workdir = args.workdir or default_workdir(name)
    asyncio.run(run_runner(endpoint, name, workdir.resolve()))


def _endpoint(args) -> tuple[p.Endpoint, StateDir | None]:
    host, port = _address(args.dispatcher)
    state = StateDir(args.state) if args.state else None
    try:
        tls = p.client_tls(args.tls_ca)
    except (OSError, ValueError) as exc:
        die(f"cannot load the CA file {args.tls_ca}: {exc}")
    return p.Endpoint(host, port, resolve_token(args.token, state), tls), state


def _address(text: str) -> tuple[str, int]:
    try:
        return p.parse_address(text)
    except ValueError as exc:
        die(str(exc))


# ---------------------------------------------------------------------- serve


async def cmd_serve(args) -> None:
    from .supervisor import Supervisor, SupervisorError

    setup_logging()
    state = state_for(args.repo)
    top = find_git_dir(args.repo)[0]
    out = Printer(args.json)
    notices: set[asyncio.Task] = set()
    control: Control | None = None

    def on_event(kind: str, name: str, message: str) -> None:
        # Published through the dispatcher, so the stream is the one record of everything.
        if control is not None:
            task = asyncio.ensure_future(_notify(control, kind, name, message))
            notices.add(task)
            task.add_done_callback(notices.discard)

    supervisor = Supervisor(top, state, runners=args.runners, on_event=on_event, listen=args.listen,
                            dispatcher_args=["--heartbeat-timeout", str(args.heartbeat_timeout),
                                             "--max-attempts", str(args.max_attempts)])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    follower = None
    try:
        try:
            await supervisor.start_dispatcher()
            control = Control.for_state(state)
            last_seq = (await control.status(limit=1)).last_seq
            follower = asyncio.ensure_future(follow_events(control, out, last_seq, include_output=args.output))
            await control.notice("process.started", "dispatcher", f"pid {supervisor.children['dispatcher'].pid}")
            await supervisor.start_workers()
        except (SupervisorError, NoDispatcher) as exc:
            die(str(exc))
        await stop.wait()
    finally:
        if follower is not None:
            follower.cancel()
        await asyncio.gather(*(t for t in [follower] if t), *notices, return_exceptions=True)
        if control is not None:
            await control.close()
        await supervisor.stop()


async def _notify(control: Control, kind: str, name: str, message: str) -> None:
    try:
        await control.notice(kind, name, message)
    except (NoDispatcher, OSError, ConnectionError):
        pass  # the dispatcher stayed down; the supervisor's own log has it


async def follow_events(control: Control, out: "Printer", last: int, include_output: bool = False) -> None:
    """Print events after ``last``; after a dropped connection, resume after the last one seen."""
    while True:
        try:
            async for msg in control.subscribe(after_seq=last, output=include_output):
                if isinstance(msg, p.Event):
                    last = msg.seq
                out.message(msg)
        except (NoDispatcher, OSError, ConnectionError, p.ProtocolError):
            pass
        await asyncio.sleep(0.2)


class Printer:
    """Events as JSON lines, or as short human lines."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self._cleaners: dict[int, StreamCleaner] = {}  # job id -> its output's cleaner, while it runs

    def message(self, msg: p.Event | p.JobOutput) -> None:
        # Test output, names and subjects are untrusted: never written to the terminal raw.
        if self.as_json:
            self._emit(p.to_json(msg))
        elif isinstance(msg, p.JobOutput):
            sys.stdout.write(self._cleaners.setdefault(msg.job_id, StreamCleaner()).feed(msg.data))
        else:
            if msg.kind == "job.finished" and msg.job is not None:
                self._cleaners.pop(msg.job.id, None)
            line = one_line(f"{msg.kind:<18} {describe(msg)}")
            self._emit(f"{time.strftime('%H:%M:%S', time.localtime(msg.ts))} {line}")

    @staticmethod
    def _emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def describe(event: p.Event) -> str:
    parts = []
    if event.job is not None:
        j = event.job
        parts.append(f"job {j.id} {j.commit[:10]} {j.branch} {j.state}")
        if j.runner and j.state == "running":
            parts.append(f"on {j.runner}")
        if j.duration_s is not None:
            parts.append(f"({j.duration_s:.2f} s)")
        if j.passed is not None:
            parts.append(f"{j.passed} passed, {j.failed} failed, {j.skipped} skipped")
    elif event.commit is not None:
        c = event.commit
        parts.append(f"{c.sha[:10]} {c.branch} {c.author}: {c.subject}")
    elif event.runner is not None:
        r = event.runner
        parts.append(f"{r.name} ({r.host}, pid {r.pid}) {r.state}")
    if event.message:
        parts.append(f"- {event.message}")
    return " ".join(parts)


# ---------------------------------------------------------------------- queries


async def cmd_status(args) -> None:
    control = Control.for_state(state_for(args.repo))
    try:
        status = await control.status()
    finally:
        await control.close()
    if args.json:
        sys.stdout.flush()
        sys.stdout.buffer.write(p.to_json_bytes(status) + b"\n")
        return
    # Names, branches and subjects come from runners and commits: shown through one_line, never raw.
    print(f"repository {one_line(status.repo_url)}")
    print(f"\nrunners ({len(status.runners)})")
    for r in status.runners:
        job = f"job {r.job}" if r.job else ""
        print(f"  {one_line(r.name):<16} {r.state:<5} {one_line(r.host)} pid {r.pid:<8} done {r.jobs_done:<5} {job}")
    commits = {c.sha: c for c in status.commits}
    counts: dict[str, int] = {}
    for j in status.jobs:
        counts[j.state] = counts.get(j.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"\njobs ({len(status.jobs)}{': ' + summary if summary else ''}), newest first")
    for j in reversed(status.jobs[-args.limit:] if args.limit else status.jobs):
        subject = one_line(commits[j.commit].subject) if j.commit in commits else ""
        dur = f"{j.duration_s:7.2f}s" if j.duration_s is not None else " " * 8
        print(f"  {j.id:>5} {j.state:<9} {j.commit[:10]} {one_line(j.branch)[:20]:<20} {dur} {subject[:50]}")


async def cmd_rerun(args) -> None:
    await _simple(args.repo, lambda c: c.rerun(args.commit))


async def cmd_cancel(args) -> None:
    await _simple(args.repo, lambda c: c.cancel(args.job))


async def _simple(repo: str, call) -> None:
    control = Control.for_state(state_for(repo))
    try:
        reply = await call(control)
    finally:
        await control.close()
    print(reply.message)
    if not reply.ok:
        raise SystemExit(1)


def cmd_log(args) -> None:
    state = state_for(args.repo)
    path = state.job_log(args.job)
    if not path.exists() and not args.follow:
        die(f"no output stored for job {args.job}")
    asyncio.run(_print_log(state, args.job, args.follow))


async def _print_log(state: StateDir, job_id: int, follow: bool) -> None:
    offset = 0
    path = state.job_log(job_id)
    cleaner = StreamCleaner()
    while True:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                while chunk := fh.read(1 << 20):
                    offset += len(chunk)
                    sys.stdout.write(cleaner.feed(chunk))
        except FileNotFoundError:
            pass
        sys.stdout.flush()
        if not follow:
            return
        control = Control.for_state(state)
        try:
            status = await control.status()
        finally:
            await control.close()
        job = next((j for j in status.jobs if j.id == job_id), None)
        if job is None or job.state in p.FINAL_STATES and offset >= job.log_size:
            return
        await asyncio.sleep(0.25)


def cmd_demo(args) -> None:
    from .ui.demo import run_demo

    run_demo(runners=args.runners, theme=args.theme)
