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

from . import testcases
from . import wire as p
from .errors import AlreadyRunning, CommandError, NotARepository, SupervisorError, TuiciError
from .sanitize import StreamCleaner, one_line
from .sizes import format_size, parse_size
from .statedir import StateDir, find_git_dir, resolve_token
from .wire import NoDispatcher, Query, endpoint_for

# Each command imports what only it needs: `tuici status` never loads asyncio (~25 ms) nor a component.

COMPONENTS = ("dispatcher", "observer", "runner")  # what a supervisor starts
# requests to a dispatcher, printed
QUERIES = ("status", "log", "rerun", "cancel", "wait", "tests", "history", "flaky", "gc")
LOG_MAX_BYTES = 10 * 1024 * 1024  # a component log is rotated at this size...
LOG_BACKUPS = 2  # ...and this many old ones are kept (<component>.log.1, .2)
# Their exit status is a verdict (0 passed, 1 failed): whatever else goes wrong exits 2, never 1.
VERDICTS = ("try", "wait")

# Each command's line in `tuici --help` and in its parser.
SUMMARIES = {
    "serve": "supervise dispatcher, observer and runners without a UI",
    "try": "test the work tree as it is, before committing",
    "wait": "wait until a commit's job is final: exit 0 passed, 1 failed, 2 otherwise",
    "status": "show branches, jobs and runners",
    "log": "print a job's output (-f: as it runs)",
    "rerun": "queue a commit again, at the front",
    "cancel": "cancel a queued or running job",
    "tests": "list a job's test cases, failures first",
    "history": "a test's outcomes across the commits of a branch",
    "flaky": "tests seen both passing and failing on one commit",
    "gc": "apply retention now and print what it freed",
    "demo": "open the control center on a sample repository",
    "completion": "print a shell completion script (bash, zsh)",
    "dispatcher": "run the dispatcher (the job queue server)",
    "observer": "watch a repository and report new commits",
    "runner": "run jobs the dispatcher hands out",
}



def status_schema() -> str:
    """What `status --json` prints, read off the structs it is encoded from (README.md shows the same, and a
    test holds the two together)."""
    lines = ["status --json prints one object:", f'  {"type":<12}"{p.StatusReply.__struct_config__.tag}"']
    for field in msgspec.structs.fields(p.StatusReply):
        if typing.get_origin(field.type) is list:
            text = f"  {field.name:<12}[{{{_fields(typing.get_args(field.type)[0])}}}]".replace(": ", ":\0")
            wrapped = textwrap.fill(text, 110, subsequent_indent=" " * 16, break_on_hyphens=False)
            lines.append(wrapped.replace("\0", " "))  # a field and its values kept on one line
        elif isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            lines.append(f"  {field.name:<10}{{{_fields(field.type)}}}")
        else:
            lines.append(f"  {field.name:<12}{field.type.__name__}")
    lines.append(textwrap.fill(
        "Times are unix seconds; unset fields (counts without JUnit XML, a queued job's exit_code, a priority of 0, "
        "skipped false, a kind of commit, empty lists) are left out. Queued jobs run highest priority first "
        "(reruns and tries 1 and up, new commits 0, a bisection's -1, a branch's newest commit a newer one went "
        "ahead of -2, the other older commits of a push -3, these two newest first), then oldest; env is the key "
        "of the environment setup made; failed_tests and "
        "flaky_tests name up to 20 tests each; a job of kind try tests a work tree (`tuici try`); tips maps each "
        "watched branch to its tip; a bisection's first_bad is null until found.", 110))
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
                        help="mark a runner that holds a job lost after S seconds without a "
                             "heartbeat: the job's lease (default 5)")
    parser.add_argument("--max-attempts", type=int, default=3, metavar="N",
                        help="give up on a job (state error) after N lost attempts (default 3)")


def _log_file_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-file", type=Path, metavar="FILE",
                        help=f"log to FILE, rotated at {LOG_MAX_BYTES >> 20} MiB ({LOG_BACKUPS} old ones kept as "
                             "FILE.1, FILE.2), stdout and stderr with it (how serve starts its components); "
                             "default: stderr")
def _store_opts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="URL", default=os.environ.get("TUICI_STORE", ""),
                        help="keep the queue, history and logs in this PostgreSQL database (postgresql://USER@HOST/DB, "
                             "or $TUICI_STORE; needs pip install 'tuici[postgres]'), shared with every other "
                             "dispatcher given the same URL: one is active, the others stand by and take over "
                             "(default: SQLite in the state dir, one dispatcher)")
    parser.add_argument("--lease", type=float, default=5.0, metavar="S",
                        help="with --store: a standby takes over S seconds after the active dispatcher was last "
                             "heard from the database (at once when its process ends); default 5")


def _client_opts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dispatcher", required=True, metavar="ADDRESS[,ADDRESS...]",
                        help="the dispatcher's address: unix:PATH (its socket, on its machine) or HOST:PORT; for a "
                             "group of dispatchers sharing a PostgreSQL store, each of theirs, comma-separated (the "
                             "active one is found and followed through takeovers)")
    parser.add_argument("--token", help="the dispatcher's token (default: $TUICI_TOKEN or the token in --state); "
                                        "prefer TUICI_TOKEN: a command line is visible to every process")
    parser.add_argument("--state", type=Path, metavar="DIR", help="a local state dir to read the token from")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="connect over TCP with TLS, trusting the dispatcher certificate signed by the CA in FILE")
    _log_file_arg(parser)


class _Version(argparse.Action):
    """``--version``, with the version looked up only when asked (importlib.metadata costs every command ~5 ms)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print tuici's version and exit"):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib import metadata

        try:
            version = metadata.version("tuici")
        except metadata.PackageNotFoundError:  # run from a source tree that was never installed
            version = "(not installed)"
        print(f"tuici {version}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuici",
        description="Continuous integration in the terminal. `tuici [REPO]` opens the control center; "
                    "the commands below run or query its parts.",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help=SUMMARIES["serve"],
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
    _store_opts(s)

    d = sub.add_parser("dispatcher", help=SUMMARIES["dispatcher"],
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
    _log_file_arg(d)
    _store_opts(d)
    d.add_argument("--advertise", metavar="ADDRESS",
                   help="with a shared store: the address the other dispatchers of the group give clients for this "
                        "one while it is active (default: its --listen address, else its Unix socket)")

    o = sub.add_parser("observer", help=SUMMARIES["observer"],
                       description="Report every new commit on the watched branches of REPO to the dispatcher, "
                                   "reacting to ref changes; with --poll, fetch REPO (a URL) every N seconds.")
    _repo_arg(o)
    _client_opts(o)
    o.add_argument("--poll", type=float, metavar="SECONDS", help="fetch from the remote REPO every SECONDS")

    r = sub.add_parser("runner", help=SUMMARIES["runner"],
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

    t = sub.add_parser("try", help=SUMMARIES["try"], description=(
        "Snapshot the work tree of REPO as it is (staged, unstaged and untracked files that git does not ignore, and "
        "deletions) into a commit no branch points to, kept as refs/tuici/try/SHA; queue it at the front, print its "
        "output as it runs, and exit with 0 (passed), 1 (failed) or 2 (error, cancelled, no dispatcher). The "
        "running dispatcher tests it; without one, a dispatcher and N runners are started for the try alone and "
        "stopped after it. The index, branches, stash and work tree are left as they are. Ctrl-C cancels the job."))
    _repo_arg(t)
    t.add_argument("--runners", type=int, default=1, metavar="N",
                   help="runners to start when no dispatcher runs (default 1)")
    _sandbox_arg(t)

    w = sub.add_parser("wait", help=SUMMARIES["wait"], description=(
        "Block until the job for COMMIT (default HEAD), or JOB, is final, then exit with 0 (passed), 1 (failed) "
        "or 2 (error, cancelled, timed out, no dispatcher). A commit is anything git names one by in REPO (a sha, "
        "a branch, HEAD~1); a number of up to six digits is a job. A commit with no job yet is waited for; one "
        "skipped with [skip ci] exits 0 at once. For a pre-push hook (see the README)."))
    w.add_argument("target", nargs="?", default="HEAD", metavar="COMMIT|JOB",
                   help="the commit whose newest job to wait for, or a job number (default HEAD)")
    _repo_arg(w)
    w.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 2)")

    st = sub.add_parser("status", help=SUMMARIES["status"], description=status_schema(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _repo_arg(st)
    st.add_argument("--json", action="store_true", help="print the whole state as JSON (schema above)")
    st.add_argument("--limit", type=int, default=20, help="jobs to list without --json (default 20)")
    st.add_argument("--exit-status", action="store_true",
                    help="exit with 1 if any branch tip's latest job failed (0 otherwise)")

    lg = sub.add_parser("log", help=SUMMARIES["log"],
                        description="Print the output stored for JOB: what it has printed so far while it runs, "
                                    "all of it after. With -f, through the dispatcher's socket (so from another "
                                    "machine too, with TUICI_DISPATCHER, TUICI_TOKEN and TUICI_TLS_CA).")
    lg.add_argument("job", type=int, metavar="JOB")
    _repo_arg(lg)
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job finishes")

    rr = sub.add_parser("rerun", help=SUMMARIES["rerun"], description="Queue COMMIT "
                        "(a sha or unique prefix) again, ahead of every other job.")
    rr.add_argument("commit", metavar="COMMIT")
    _repo_arg(rr)

    ts = sub.add_parser("tests", help=SUMMARIES["tests"],
                        description="List the test cases JOB reported (from its JUnit XML), failures first, each "
                                    "failing one with the commit that broke it (or the range of untested commits "
                                    "it broke in) and its last outcomes on the branch, each passing one that "
                                    "failed on the previous tested commit with the commit that fixed it.")
    ts.add_argument("job", type=int, metavar="JOB")
    _repo_arg(ts)
    ts.add_argument("--failed", action="store_true", help="only the tests that failed or erred")
    ts.add_argument("--json", action="store_true",
                    help='print [{"name", "outcome", "duration_s", "message", "details", "flaky", "broken_by", '
                         '"fixed_by", "history"}]')

    hs = sub.add_parser("history", help=SUMMARIES["history"],
                        description="Print TEST's outcome in each tested commit of a branch, newest first. TEST is "
                                    "a test's name (pytest's node id), or a part of it that names one test alone.")
    hs.add_argument("test", metavar="TEST")
    _repo_arg(hs)
    hs.add_argument("--branch", metavar="B", default="", help="the branch (default: the one the test last ran on)")
    hs.add_argument("--limit", type=int, default=0, metavar="N", help="the newest N outcomes only")
    hs.add_argument("--json", action="store_true", help='print [{"commit", "job", "outcome", "duration_s", "flaky"}]')

    fl = sub.add_parser("flaky", help=SUMMARIES["flaky"],
                        description="List the tests seen flaky (failed, then passed on retry: retry_failed; or "
                                    "failed and passed in jobs of the same commit), the latest first.")
    _repo_arg(fl)
    fl.add_argument("--json", action="store_true",
                    help='print [{"name", "jobs", "commits", "last_seen", "last_commit", "last_job", "branch"}]')

    c = sub.add_parser("cancel", help=SUMMARIES["cancel"],
                       description="Cancel JOB: a queued one is dropped, a running one is killed on its runner.")
    c.add_argument("job", type=int, metavar="JOB")
    _repo_arg(c)

    g = sub.add_parser("gc", help=SUMMARIES["gc"],
                       description="Delete the job logs and events older than keep_days, and the oldest job logs "
                                   "beyond keep_bytes (never a queued or running job's), as the dispatcher does at "
                                   "start and every hour; keep_days and keep_bytes are set in "
                                   "REPO/.git/tuici/config.toml (default 30 days, 2G).")
    _repo_arg(g)

    dm = sub.add_parser("demo", help=SUMMARIES["demo"],
                        description="Make a sample repository in a temporary directory, keep committing to it, "
                                    "and open the control center on it.")
    dm.add_argument("--runners", type=int, default=2, metavar="N")
    dm.add_argument("--theme", metavar="NAME")

    cp = sub.add_parser("completion", help=SUMMARIES["completion"], description=(
        "Print a completion script for SHELL: `source <(tuici completion bash)` in ~/.bashrc; for zsh, "
        "`tuici completion zsh > ~/.zfunc/_tuici` with ~/.zfunc in $fpath before compinit."))
    cp.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL", help="bash or zsh")
    return parser


def _sandbox_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sandbox", choices=("auto", "on", "off"), default="auto",
                        help="run test commands in user and mount namespaces of their own, where the state dir "
                             "(with the token), other runners' work dirs and the repository are out of their "
                             "reach (auto: where the machine allows it, else say so in each job's log; on: "
                             "refuse to run without; off: never; default auto)")


def build_ui_parser() -> argparse.ArgumentParser:
    """`tuici [REPO]`, the control center; its --help also lists the commands."""
    commands = "\n".join(f"  {name:<12}{SUMMARIES[name]}" for name in COMMANDS)
    parser = argparse.ArgumentParser(
        prog="tuici", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [-h] [--version] [REPO] [--runners N] [--theme NAME] [--sandbox {auto,on,off}]\n"
              "       %(prog)s COMMAND ...",
        description="Continuous integration in the terminal: open the control center on REPO, starting its "
                    "dispatcher,\nobserver and runners (or attaching to those `tuici serve` runs).",
        epilog=f"commands (`tuici COMMAND --help` for each):\n{commands}",
    )
    parser.add_argument("--version", action=_Version)
    _ui_options(parser)
    return parser


def _ui_options(parser: argparse.ArgumentParser, repo: bool = True) -> None:
    if repo:
        _repo_arg(parser)
    parser.add_argument("--runners", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="runners to start (default: the number of CPUs)")
    parser.add_argument("--theme", metavar="NAME", help="colour theme for this run")
    _sandbox_arg(parser)


def completion_script(shell: str) -> str:
    """The completion script for ``shell``, made by shtab from the parsers: the commands and their options, and the
    control center's options. REPO completes to directories, certificates and keys to files."""
    import shtab

    parser = build_parser()
    _ui_options(parser, repo=False)
    parsers = [parser]
    while parsers:  # argparse lists a parser's arguments only in _actions, which shtab reads too
        for action in parsers.pop()._actions:
            if isinstance(action.choices, dict):  # the commands: a parser each
                for command in action.choices.values():
                    command.description = None  # shtab's zsh script then describes each by its one line
                    parsers.append(command)
            elif action.dest in ("repo", "workdir", "state"):
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
            elif action.metavar == "FILE":
                action.complete = shtab.FILE  # type: ignore[attr-defined]
    return shtab.complete(parser, shell=shell)


def setup_logging(log_file: Path | None = None, max_bytes: int = LOG_MAX_BYTES) -> None:
    """Log to stderr, or to ``log_file``, rotated by size (a component a supervisor started: its stdout and
    stderr are that file too, and follow it when it is rotated)."""
    import logging
    import logging.handlers

    class Rotating(logging.handlers.RotatingFileHandler):
        def doRollover(self) -> None:
            super().doRollover()
            if self.stream is not None:  # a traceback or a stray print goes to the new file too
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(self.stream.fileno(), 1)
                os.dup2(self.stream.fileno(), 2)

    handler: logging.Handler = (logging.StreamHandler(sys.stderr) if log_file is None
                                else Rotating(log_file, maxBytes=max_bytes, backupCount=LOG_BACKUPS))
    logging.basicConfig(level=logging.INFO, handlers=[handler],
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
    ui = not argv or argv[0] not in COMMANDS
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
        die(who, str(exc), 2 if command in VERDICTS else 1)
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

    setup_logging(args.log_file)
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
        asyncio.run(run_dispatcher(state, tcp, store=_store_url(args.store, args.lease), lease_seconds=args.lease,
                                   advertise=args.advertise or "", heartbeat_timeout=args.heartbeat_timeout,
                                   max_attempts=args.max_attempts, repo_url=repo, tls=tls, socks=socks))
    except OSError as exc:
        where = exc.filename or args.listen or state.socket
        raise CommandError(f"cannot listen on {where}: {exc.strerror or exc}") from None


def cmd_observer(args) -> None:
    import asyncio

    from .observer import Source, mirror_dir_for, run_observer

    setup_logging(args.log_file)
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
    from .runner.environments import EnvCache
    from .statedir import cache_root

    setup_logging(args.log_file)
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


def _store_url(url: str, lease: float) -> str:
    """The --store URL, checked: empty (SQLite in the state dir) or postgresql://USER@HOST/DB."""
    from urllib.parse import urlsplit

    if url and not url.startswith(("postgresql://", "postgres://")):
        raise CommandError(f"--store: {url!r} is not a postgresql:// URL")
    if url and not urlsplit(url).path.strip("/"):
        raise CommandError("--store: the URL names no database (postgresql://USER@HOST/DATABASE)")
    if not lease > 0:
        raise CommandError(f"--lease: {lease:g} is not a positive number of seconds")
    return url


def _endpoint(args) -> tuple[p.Endpoint, StateDir | None]:
    try:
        addresses = p.parse_addresses(args.dispatcher)
    except ValueError as exc:
        raise CommandError(f"--dispatcher: {exc}") from None
    state = StateDir(args.state) if args.state else None
    try:
        tls = p.client_tls(args.tls_ca)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot load the CA file {args.tls_ca}: {exc}") from None
    return p.Endpoint(addresses, resolve_token(args.token, state), tls), state


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
    _store_url(args.store, args.lease)
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


def _state(repo: str) -> StateDir | None:
    """The repository's state dir; None where there is no repository but TUICI_DISPATCHER says where to go (a
    query from another machine)."""
    try:
        return StateDir.for_repo(repo)
    except NotARepository:
        if os.environ.get("TUICI_DISPATCHER"):
            return None
        raise


def cmd_status(args) -> int:
    with Query(endpoint_for(_state(args.repo))) as query:
        if args.json:
            sys.stdout.flush()
            _widen_pipe(sys.stdout.fileno())
            query.status_json(sys.stdout.buffer)
            sys.stdout.buffer.write(b"\n")
            return _failing_tips(query.status()) if args.exit_status else 0
        status = query.status()
    # Names, shas, branches and subjects come from the dispatcher: shown through one_line, never raw.
    print(f"repository {one_line(status.repo_url)}")
    print(f"history    {describe_history(status.history)}")
    if status.dispatchers:
        print(f"\ndispatchers ({len(status.dispatchers)}, sharing one store)")
        for d in status.dispatchers:
            print(f"  {d.role:<8} {one_line(d.address):<40} {one_line(d.name)}")
    latest = _latest_jobs(status)
    commits = {c.sha: c for c in status.commits}
    print(f"\nbranches ({len(status.tips)})")
    for branch, sha in sorted(status.tips.items()):
        job = latest.get(sha)
        state = job.state if job is not None else "skipped" if sha in commits and commits[sha].skipped else "no job"
        print(f"  {one_line(branch)[:30]:<30} {one_line(sha)[:10]} {state:<9} {f'job {job.id}' if job else ''}")
    print(f"\nrunners ({len(status.runners)})")
    for r in status.runners:
        job_text = f"job {r.job}" if r.job else ""
        print(f"  {one_line(r.name):<16} {r.state:<5} {one_line(r.host)} pid {r.pid:<8} done {r.jobs_done:<5} "
              f"{job_text}")
    counts: dict[str, int] = {}
    for j in status.jobs:
        counts[j.state] = counts.get(j.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"\njobs ({len(status.jobs)}{': ' + summary if summary else ''}), newest first")
    for j in reversed(status.jobs[-args.limit:] if args.limit else status.jobs):
        subject = one_line(commits[j.commit].subject) if j.commit in commits else ""
        dur = f"{j.duration_s:7.2f}s" if j.duration_s is not None else " " * 8
        branch = f"try {one_line(j.branch)}" if j.kind == "try" else one_line(j.branch)
        print(f"  {j.id:>5} {j.state:<9} {one_line(j.commit)[:10]} {branch[:20]:<20} {dur} {subject[:50]}")
    if status.bisections:
        print(f"\nbisections ({len(status.bisections)}), newest first")
    for b in reversed(status.bisections[-args.limit:] if args.limit else status.bisections):
        first_bad = f"first bad {one_line(b.first_bad)[:10]}" if b.first_bad else ""
        print(f"  {one_line(b.branch)[:20]:<20} {b.state:<9} {one_line(b.good)[:10]}..{one_line(b.bad)[:10]} "
              f"{len(b.jobs):>3} jobs {first_bad}")
    return _failing_tips(status) if args.exit_status else 0


def _latest_jobs(status: p.StatusReply) -> dict[str, p.JobInfo]:
    """Each commit's newest job."""
    return {job.commit: job for job in status.jobs}


def _failing_tips(status: p.StatusReply) -> int:
    """1 if the latest job of some branch's tip failed, else 0 (`status --exit-status`)."""
    latest = _latest_jobs(status)
    failed = sorted(b for b, sha in status.tips.items() if sha in latest and latest[sha].state == "failed")
    if failed:
        print(f"tuici: failing: {', '.join(one_line(b) for b in failed)}", file=sys.stderr)
    return 1 if failed else 0


def describe_history(history: p.History) -> str:
    days = f"{history.keep_days:g} days" if history.keep_days else "for ever"
    kept = (f"kept {days}, at most {format_size(history.keep_bytes)}" if history.keep_bytes
            else "retention off: .git/tuici/config.toml has a mistake, the dispatcher's log says which")
    return (f"{history.logs} job logs, {format_size(history.log_bytes)} ({kept}); "
            f"database {format_size(history.db_bytes)}")


def cmd_gc(args) -> int:
    with Query(endpoint_for(_state(args.repo))) as query:
        reply = query.request(p.GcRequest())
    if isinstance(reply, p.Reply):
        print(reply.message)
        return 0 if reply.ok else 1
    reply = p.expect(reply, p.GcReply)
    print(f"freed {format_size(reply.log_bytes)}: {reply.logs} job logs, {reply.events} events")
    print(f"history {describe_history(reply.history)}")
    return 0


def cmd_rerun(args) -> int:
    return _simple(args.repo, p.RerunRequest(commit=args.commit))


def cmd_cancel(args) -> int:
    return _simple(args.repo, p.CancelRequest(job_id=args.job))


def _simple(repo: str, request: p.Message) -> int:
    """Send ``request``, print the answer; the exit status says whether the dispatcher did it."""
    with Query(endpoint_for(_state(repo))) as query:
        reply = p.expect(query.request(request), p.Reply)
    print(reply.message)
    return 0 if reply.ok else 1


def _answer(repo: str, request: p.Message) -> list[p.Message]:
    """Every piece of the dispatcher's answer; a ``Reply`` (an unknown job, a name that fits no test or many)
    is its refusal."""
    with Query(endpoint_for(_state(repo))) as query:
        answer = list(query.pieces(request))
    if isinstance(answer[0], p.Reply):
        raise CommandError(answer[0].message)
    return answer


def _print_json(items: list) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(p.to_json_bytes(items) + b"\n")


def _change(change: p.Change, what: str) -> str:
    """Where a test broke (``what``: broken) or was fixed, in words."""
    if change.commit is not None:
        return f"{what} by {change.commit[:10]}"
    if not change.after:
        return f"{'failing' if what == 'broken' else 'passing'} since {change.since[:10]} (none before on record)"
    return (f"{what} between {change.after[:10]} and {change.since[:10]} ({change.untested} untested "
            f"commit{'s' if change.untested != 1 else ''} in between)")


def cmd_tests(args) -> None:
    pieces = [p.expect(piece, p.TestsReply) for piece in _answer(
        args.repo, p.TestsRequest(job_id=args.job, failed_only=args.failed, history=testcases.HISTORY_STRIP))]
    tests = [case for piece in pieces for case in piece.tests]
    if args.json:
        _print_json(tests)
        return
    job = pieces[0].job
    if job is not None:
        counts: dict[str, int] = {}
        for case in tests:
            counts[case.outcome] = counts.get(case.outcome, 0) + 1
        flaky = sum(1 for case in tests if case.flaky)
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items(), key=lambda item: -item[1]))
        print(f"job {job.id} {job.state} · {job.commit[:10]} {one_line(job.branch)} · "
              f"{summary or 'no test results'}{f' · {flaky} flaky' if flaky else ''}")
    for case in tests:
        label = "flaky" if case.flaky else case.outcome
        print(f"{label:<8} {one_line(case.name)}  ({case.duration_s:.2f} s)")
        notes = []
        if case.message and (case.outcome in testcases.FAILING or case.flaky):
            first_line = case.message.strip().split("\n", 1)[0]
            notes.append(("first failure: " if case.flaky else "") + one_line(first_line)[:200])
        blame = [_change(change, what) for change, what in ((case.broken_by, "broken"), (case.fixed_by, "fixed"))
                 if change is not None]
        if blame or case.history:
            notes.append(" · ".join(blame + ([f"history {case.history}"] if case.history else [])))
        for note in notes:
            print(f"{'':<9}{note}")


def cmd_history(args) -> None:
    pieces = [p.expect(piece, p.HistoryReply) for piece in _answer(
        args.repo, p.HistoryRequest(test=args.test, branch=args.branch, limit=max(0, args.limit)))]
    entries = [entry for piece in pieces for entry in piece.entries]
    if args.json:
        _print_json(entries)
        return
    print(f"{one_line(pieces[0].test)} on {one_line(pieces[0].branch)}, newest first")
    for e in entries:
        print(f"  {e.commit[:10]}  job {e.job:<6} {'flaky' if e.flaky else e.outcome:<8} {e.duration_s:8.2f} s")


def cmd_flaky(args) -> None:
    tests = [test for piece in _answer(args.repo, p.FlakyRequest())
             for test in p.expect(piece, p.FlakyReply).tests]
    if args.json:
        _print_json(tests)
        return
    print(f"flaky tests ({len(tests)}), latest first")
    for t in tests:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.last_seen))
        print(f"  {one_line(t.name)}  {t.jobs} job{'s' if t.jobs != 1 else ''} on {t.commits} "
              f"commit{'s' if t.commits != 1 else ''}, last {when} in job {t.last_job} "
              f"({t.last_commit[:10]} {one_line(t.branch)})")


def cmd_log(args) -> None:
    """The stored log, read from the state dir; with -f (or TUICI_DISPATCHER set, or no such file here: a
    dispatcher on a shared store keeps logs in the database), from the dispatcher, which sends what is stored and
    then what the job prints until it is final."""
    from .joboutput import OutputPrinter

    state = _state(args.repo)
    remote = bool(os.environ.get("TUICI_DISPATCHER"))
    path = state.job_log(args.job) if state is not None else None
    if path is not None and path.exists() and not args.follow and not remote:
        _print_file(path)
        return
    try:
        query = Query(endpoint_for(state))
    except NoDispatcher:
        if remote or path is None:
            raise
        if not path.exists():
            raise CommandError(f"no output stored for job {args.job}") from None
        _print_file(path)  # no dispatcher: nothing can add to it
        return
    printer = OutputPrinter(sys.stdout)
    with query:
        for msg in query.log(args.job, follow=args.follow):
            if isinstance(msg, p.JobOutput):
                printer.feed(msg)
            elif not msg.ok:
                raise CommandError(msg.message)


def _print_file(path: Path) -> None:
    cleaner = StreamCleaner()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sys.stdout.write(cleaner.feed(chunk))
    sys.stdout.flush()


def job_line(job: p.JobInfo) -> str:
    """One line saying how a job ended, for `wait` and `try`."""
    what = f"try of {job.branch}" if job.kind == "try" else job.branch
    parts = [f"job {job.id} ({job.commit[:10]}, {what}) {job.state}"]
    if job.duration_s is not None:
        parts.append(f"in {job.duration_s:.1f} s")
    if job.passed is not None:
        parts.append(f"({job.passed} passed, {job.failed} failed, {job.skipped} skipped)")
    if job.error:
        parts.append(f"- {job.error}")
    return one_line(" ".join(parts))


VERDICT_CODES = {"passed": 0, "failed": 1}  # any other final state (error, cancelled) exits 2


def cmd_wait(args) -> int:
    from . import waiting

    state = _state(args.repo)
    target = waiting.resolve(args.target, args.repo if state is not None else None)
    endpoint = endpoint_for(state)

    def told(note: str) -> None:
        print(f"tuici: waiting for {one_line(note)}", file=sys.stderr, flush=True)

    verdict = waiting.wait(lambda: Query(endpoint), target, args.timeout, told)
    if verdict.outcome == "skipped":
        assert verdict.commit is not None
        print(f"{verdict.commit.sha[:10]} is skipped ([skip ci] in its message): it has no job")
        return 0
    if verdict.outcome == "timeout" or verdict.job is None:
        print(f"tuici: timed out after {args.timeout:g} s waiting for {one_line(target.text)}", file=sys.stderr)
        return 2
    print(job_line(verdict.job))
    return VERDICT_CODES.get(verdict.job.state, 2)


def cmd_try(args) -> int:
    import asyncio

    from .trying import run_try

    top, git_dir = find_git_dir(args.repo)
    if top == git_dir:
        raise CommandError(f"{top} is a bare repository: it has no work tree to try")
    if args.runners < 1:
        raise CommandError("--runners must be 1 or more")
    job = asyncio.run(run_try(top, StateDir.in_git_dir(git_dir), args.runners, args.sandbox))
    if job is None:
        return 2
    print(f"tuici: {job_line(job)}", file=sys.stderr)
    return VERDICT_CODES.get(job.state, 2)


def cmd_completion(args) -> None:
    sys.stdout.write(completion_script(args.shell))


def cmd_demo(args) -> None:
    from .ui.demo import run_demo

    run_demo(runners=args.runners, theme=args.theme)


Command = Callable[[argparse.Namespace], "int | None"]  # an exit status (None: 0)
COMMANDS: dict[str, Command] = {
    "serve": cmd_serve, "try": cmd_try, "wait": cmd_wait, "status": cmd_status, "log": cmd_log, "rerun": cmd_rerun,
    "cancel": cmd_cancel, "tests": cmd_tests, "history": cmd_history, "flaky": cmd_flaky, "gc": cmd_gc,
    "demo": cmd_demo, "completion": cmd_completion, "dispatcher": cmd_dispatcher, "observer": cmd_observer,
    "runner": cmd_runner,
}
