"""The `tuici` command line."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
import typing
from pathlib import Path
from typing import Callable, Literal, NoReturn

import msgspec

from . import wire as p
from .errors import AlreadyRunning, CommandError, NotARepository, SupervisorError, TuiciError
from .sanitize import StreamCleaner, one_line
from .statedir import StateDir, find_git_dir, resolve_token
from .wire import NoDispatcher, Query, endpoint_for

# Each command imports what only it needs: `tuici status` never loads asyncio (~25 ms) nor a component.

COMPONENTS = ("dispatcher", "observer", "runner")  # what a supervisor starts
QUERIES = ("status", "log", "rerun", "cancel")  # one request to a dispatcher, printed



def status_schema() -> str:
    """What `status --json` prints, read off the structs it is encoded from (README.md shows the same, and a
    test holds the two together)."""
    lines = ["status --json prints one object:", f'  {"type":<12}"{p.StatusReply.__struct_config__.tag}"']
    for field in msgspec.structs.fields(p.StatusReply):
        if typing.get_origin(field.type) is list:
            text = f"  {field.name:<12}[{{{_fields(typing.get_args(field.type)[0])}}}]".replace(": ", ":\0")
            wrapped = textwrap.fill(text, 110, subsequent_indent=" " * 16, break_on_hyphens=False)
            lines.append(wrapped.replace("\0", " "))  # a field and its values kept on one line
        else:
            lines.append(f"  {field.name:<12}{field.type.__name__}")
    lines.append(textwrap.fill(
        "Times are unix seconds; unset fields (counts without JUnit XML, a queued job's exit_code, a priority of 0) "
        "are left out. Queued jobs run highest priority first (reruns 1 and up, new commits 0, a bisection's -1, "
        "older commits a newer one went ahead of -2, these newest first), then oldest; env is the key of the "
        "environment setup made; a bisection's first_bad is null until found.", 110))
    return "\n".join(lines)


def _fields(struct: type[msgspec.Struct]) -> str:
    """``struct``'s fields, each with its values where it has a closed set of them (unset ones left out)."""
    return ", ".join(
        f"{f.name}: {'|'.join(v for v in typing.get_args(f.type) if v)}" if typing.get_origin(f.type) is Literal
        else f.name
        for f in msgspec.structs.fields(struct))


def _repo_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", nargs="?", default=".", metavar="REPO",
                        help="the git repository (default: the current directory)")


def _dispatcher_opts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heartbeat-timeout", type=float, default=5.0, metavar="S",
                        help="mark a runner lost after S seconds without a heartbeat (default 5)")
    parser.add_argument("--max-attempts", type=int, default=3, metavar="N",
                        help="give up on a job (state error) after N lost attempts (default 3)")


def _client_opts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dispatcher", required=True, metavar="ADDRESS",
                        help="the dispatcher's address: unix:PATH (its socket, on its machine) or HOST:PORT")
    parser.add_argument("--token", help="the dispatcher's token (default: $TUICI_TOKEN or the token in --state); "
                                        "prefer TUICI_TOKEN: a command line is visible to every process")
    parser.add_argument("--state", type=Path, metavar="DIR", help="a local state dir to read the token from")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="connect over TCP with TLS, trusting the dispatcher certificate signed by the CA in FILE")


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
    _sandbox_arg(s)
    s.add_argument("--json", action="store_true", help="print events as JSON lines")
    s.add_argument("--output", action="store_true", help="also print the jobs' output as it arrives")
    s.add_argument("--listen", metavar="HOST:PORT",
                   help="have the dispatcher also listen on this TCP address, for runners on other machines "
                        "(local processes use its Unix socket in the state dir)")
    _dispatcher_opts(s)

    d = sub.add_parser("dispatcher", help="run the dispatcher (the job queue server)",
                       description="Serve the job queue for one repository's state dir.")
    d.add_argument("--listen", metavar="HOST:PORT",
                   help="also listen on this TCP address, for components on other machines (PORT 0: a free one); "
                        "local ones use the Unix socket STATE/dispatcher.sock. The addresses are written to "
                        "STATE/address")
    d.add_argument("--listen-fd", type=int, action="append", metavar="FD",
                   help="serve on this inherited socket, already bound and listening, instead of binding (how serve "
                        "starts the dispatcher, so that the others can connect while it starts); given once for the "
                        "Unix socket and once more for a TCP one bound to --listen")
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
    r.add_argument("--workdir", type=Path, metavar="DIR",
                   help="where the runner keeps its checkout (default: $TUICI_CACHE_DIR or ~/.cache/tuici, "
                        "runners/NAME); never inside a repository")
    r.add_argument("--env-cache-size", default=os.environ.get("TUICI_ENV_CACHE_SIZE", "10G"), metavar="SIZE",
                   help="keep at most SIZE of job environments and package caches, least recently used "
                        "removed first (default 10G, or $TUICI_ENV_CACHE_SIZE)")
    _sandbox_arg(r)

    st = sub.add_parser("status", help="show commits, jobs and runners", description=status_schema(),
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


def _sandbox_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sandbox", choices=("auto", "on", "off"), default="auto",
                        help="run test commands in user and mount namespaces of their own, where the state dir "
                             "(with the token), other runners' work dirs and the repository are out of their "
                             "reach (auto: where the machine allows it, else say so in each job's log; on: "
                             "refuse to run without; off: never; default auto)")


def build_ui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuici", description="Open the control center on REPO. Other commands: " + ", ".join(COMMANDS)
        + " (see `tuici COMMAND --help`).",
    )
    _repo_arg(parser)
    parser.add_argument("--runners", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="runners to start (default: the number of CPUs)")
    parser.add_argument("--theme", metavar="NAME", help="colour theme for this run")
    _sandbox_arg(parser)
    return parser


def setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")


# Exit status 2: the command could not begin with what it was given or found; 1: it began and failed.
CANNOT_BEGIN = (AlreadyRunning, CommandError, NotARepository, NoDispatcher, SupervisorError)


def die(who: str, message: str, code: int) -> NoReturn:
    print(f"{who}: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """The `tuici` program, and the one place where errors become messages and exit codes (a query ends the
    process once its output is out)."""
    argv = sys.argv[1:] if argv is None else argv
    ui = not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"))
    args = (build_ui_parser() if ui else build_parser()).parse_args(argv)
    command = None if ui else args.command
    # A component's stderr goes to a log, serve's, shared with the others: its messages say which one it is.
    who = f"tuici {command}" if command in COMPONENTS else "tuici"
    try:
        if ui:
            from .ui.launch import run_app

            run_app(args.repo, runners=args.runners, theme=args.theme, sandbox=args.sandbox)
            code = 0
        else:
            if command in COMPONENTS:
                from .procs import die_with_supervisor

                die_with_supervisor()
            code = COMMANDS[args.command](args) or 0
    except CANNOT_BEGIN as exc:
        die(who, str(exc), 2)
    except TuiciError as exc:
        die(who, str(exc), 1)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        # The reader (`| head`, say) has all it wanted: stop quietly, as a filter does, with no flush to fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    if command in QUERIES:
        # A query holds nothing that needs finalizing once its output is flushed, and the interpreter's
        # teardown of what it imported (a garbage collection over msgspec's and typing's objects) is ~25 ms
        # of a `status --json` that takes ~150 ms.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        raise SystemExit(code)


# ---------------------------------------------------------------------- components


def cmd_dispatcher(args) -> None:
    import asyncio
    import ipaddress
    import socket

    from .dispatcher import run_dispatcher

    setup_logging()
    state = StateDir(args.state) if args.state else StateDir.for_repo(".")
    tcp = _tcp_address(args.listen) if args.listen else None
    if tcp is not None:
        try:
            loopback = ipaddress.ip_address(tcp.host).is_loopback
        except ValueError:
            loopback = tcp.host == "localhost"
        if not loopback and not args.tls_cert and not args.insecure:
            raise CommandError(f"listening on {tcp.host} beyond loopback needs --tls-cert/--tls-key (or --insecure)")
    try:
        tls = p.server_tls(args.tls_cert, args.tls_key)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot load the TLS certificate {args.tls_cert}: {exc}") from None
    repo = args.repo or ""
    if repo and os.path.isdir(repo):
        repo = str(find_git_dir(repo)[0])
    try:
        socks = [socket.socket(fileno=fd) for fd in args.listen_fd or []]
        asyncio.run(run_dispatcher(state, tcp, heartbeat_timeout=args.heartbeat_timeout,
                                   max_attempts=args.max_attempts, repo_url=repo, tls=tls, socks=socks))
    except OSError as exc:
        where = exc.filename or args.listen or state.socket
        raise CommandError(f"cannot listen on {where}: {exc.strerror or exc}") from None


def cmd_observer(args) -> None:
    import asyncio

    from .observer import Source, mirror_dir_for, run_observer

    setup_logging()
    endpoint, state = _endpoint(args)
    mirror = (state.path / "mirror.git") if state else mirror_dir_for(args.repo)
    source = Source(args.repo, mirror_dir=mirror)
    if source.remote and not args.poll:
        raise CommandError(f"{args.repo} is not a local directory; pass --poll SECONDS to fetch it")
    asyncio.run(run_observer(source, endpoint, args.poll))


def cmd_runner(args) -> None:
    import asyncio
    import socket

    from .procs import hide_memory
    from .runner import default_workdir, run_runner
    from .runner.environments import EnvCache, parse_size
    from .statedir import cache_root

    setup_logging()
    endpoint, state = _endpoint(args)
    if os.environ.pop("TUICI_TOKEN", None) or args.token:  # never handed on to the code under test
        # No token file on this machine the tests could read anyway: keep the one we hold out of their reach.
        hide_memory()
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    workdir = (args.workdir or default_workdir(name)).resolve()
    # Out of the code under test's sight: the token and database, other runners' work dirs and environments,
    # and this runner's own (its spools, its git dir), of which the job gets only what it needs.
    hide = [cache_root(), workdir, *([state.path.resolve()] if state else [])]
    try:
        limit = parse_size(args.env_cache_size)
    except ValueError:
        raise CommandError(f"--env-cache-size: {args.env_cache_size!r} is not a size (like 10G or 500M)") from None
    asyncio.run(run_runner(endpoint, name, workdir, tuple(hide), args.sandbox, EnvCache(cache_root(), limit)))


def _endpoint(args) -> tuple[p.Endpoint, StateDir | None]:
    try:
        address = p.parse_address(args.dispatcher)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    state = StateDir(args.state) if args.state else None
    try:
        tls = p.client_tls(args.tls_ca)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot load the CA file {args.tls_ca}: {exc}") from None
    return p.Endpoint(address, resolve_token(args.token, state), tls), state


def _tcp_address(text: str) -> p.TcpAddress:
    try:
        address = p.parse_address(text)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if not isinstance(address, p.TcpAddress):
        raise CommandError(f"--listen takes HOST:PORT, not {text!r}: the Unix socket is always STATE/dispatcher.sock")
    return address


# ---------------------------------------------------------------------- serve


def cmd_serve(args) -> None:
    import asyncio

    from .serve import serve

    setup_logging()
    top, git_dir = find_git_dir(args.repo)
    asyncio.run(serve(args, StateDir.in_git_dir(git_dir), top))


# ---------------------------------------------------------------------- queries


def _widen_pipe(fd: int) -> None:
    """Through the default 64 KiB pipe, 5 MB of status is ~85 hand-offs between us and the reader (~20 ms);
    at 1 MiB, the most Linux allows without privileges, it is 6. Not a pipe, or not Linux: nothing to do."""
    import fcntl

    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (OSError, AttributeError):
        pass


def cmd_status(args) -> None:
    with Query(endpoint_for(StateDir.for_repo(args.repo))) as query:
        if args.json:
            sys.stdout.flush()
            _widen_pipe(sys.stdout.fileno())
            query.status_json(sys.stdout.buffer)
            sys.stdout.buffer.write(b"\n")
            return
        status = query.status()
    # Names, shas, branches and subjects come from the dispatcher: shown through one_line, never raw.
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
        print(f"  {j.id:>5} {j.state:<9} {one_line(j.commit)[:10]} {one_line(j.branch)[:20]:<20} {dur} {subject[:50]}")
    if status.bisections:
        print(f"\nbisections ({len(status.bisections)}), newest first")
    for b in reversed(status.bisections[-args.limit:] if args.limit else status.bisections):
        first_bad = f"first bad {one_line(b.first_bad)[:10]}" if b.first_bad else ""
        print(f"  {one_line(b.branch)[:20]:<20} {b.state:<9} {one_line(b.good)[:10]}..{one_line(b.bad)[:10]} "
              f"{len(b.jobs):>3} jobs {first_bad}")


def cmd_rerun(args) -> int:
    return _simple(args.repo, p.RerunRequest(commit=args.commit))


def cmd_cancel(args) -> int:
    return _simple(args.repo, p.CancelRequest(job_id=args.job))


def _simple(repo: str, request: p.Message) -> int:
    """Send ``request``, print the answer; the exit status says whether the dispatcher did it."""
    with Query(endpoint_for(StateDir.for_repo(repo))) as query:
        reply = p.expect(query.request(request), p.Reply)
    print(reply.message)
    return 0 if reply.ok else 1


def cmd_log(args) -> None:
    state = StateDir.for_repo(args.repo)
    path = state.job_log(args.job)
    if not path.exists() and not args.follow:
        raise CommandError(f"no output stored for job {args.job}")
    offset = 0
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
        if not args.follow:
            return
        with Query(endpoint_for(state)) as query:
            status = query.status()
        job = next((j for j in status.jobs if j.id == args.job), None)
        if job is None or job.state in p.FINAL_STATES and offset >= job.log_size:
            return
        time.sleep(0.25)


def cmd_demo(args) -> None:
    from .ui.demo import run_demo

    run_demo(runners=args.runners, theme=args.theme)


Command = Callable[[argparse.Namespace], "int | None"]  # an exit status (None: 0)
COMMANDS: dict[str, Command] = {
    "serve": cmd_serve, "dispatcher": cmd_dispatcher, "observer": cmd_observer, "runner": cmd_runner,
    "status": cmd_status, "log": cmd_log, "rerun": cmd_rerun, "cancel": cmd_cancel, "demo": cmd_demo,
}
