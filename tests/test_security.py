"""Security: the token stays out of the code under test's reach, roles hold, TLS and the rate limiter guard the
socket, across real network namespaces where the machine allows them, and hostile names inject nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import pytest

from tuici import wire as p
from tuici.dispatcher import server as dispatcher_module
from tuici.runner.sandbox import find_bwrap, probe
from tuici.statedir import StateDir
from tuici.wire import Control, NoDispatcher

from conftest import Cluster, GitRepo, _env, _wait_or_kill, make_certs, tcp_address, toml_command, wait_for


def _raw(address: str, source: str = "127.0.0.1") -> socket.socket:
    tcp = p.parse_address(address)
    return socket.create_connection((tcp.host, tcp.port), timeout=10, source_address=(source, 0))


def _exchange(sock: socket.socket, *msgs: p.Message) -> list[p.Message]:
    """Send ``msgs``, end our side, and decode everything the dispatcher answers until it closes."""
    try:
        sock.sendall(b"".join(p.encode(m) for m in msgs))
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the dispatcher cut us off already
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    out = []
    while data:
        length = int.from_bytes(data[:4], "big")
        out.append(p.decode(data[4:4 + length]))
        data = data[4 + length:]
    return out


# ---------------------------------------------------------------------- the token and the code under test

TOKEN_PROBE = """\
import hashlib, os, re, socket, subprocess, sys

want, hello, address = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
runner = os.getppid()


def leaks(data):
    return any(hashlib.sha256(m.group()).hexdigest() == want for m in re.finditer(rb"[A-Za-z0-9_-]{43}", data))


def read(path):
    with open(path, "rb") as fh:
        return fh.read()


def memory(pid):
    out = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if perms.startswith("r"):
                start, end = (int(x, 16) for x in span.split("-"))
                try:
                    mem.seek(start)
                    out.append(mem.read(end - start))
                except (OSError, ValueError, OverflowError):
                    pass
    return b"".join(out)


def every_process_root():
    # /proc/<pid>/root of any process outside a mount namespace shows the files as they are outside it.
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found.append(read(f"/proc/{pid}/root{token_file}"))
        except OSError:
            pass
    return b"".join(found)


def shell(script):
    return subprocess.run(["sh", "-c", script], capture_output=True).stdout


origin = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True).stdout.strip()
state = os.path.join(origin, ".git", "tuici")
token_file = os.path.join(state, "token")
places = {
    "environment": lambda: "\\0".join(f"{k}={v}" for k, v in os.environ.items()).encode(),
    "runner environ": lambda: read(f"/proc/{runner}/environ"),
    "runner cmdline": lambda: read(f"/proc/{runner}/cmdline"),
    "runner memory": lambda: memory(runner),
    "token file": lambda: read(token_file),
    "every process's root": every_process_root,
    "token file after umount": lambda: shell(f"umount -l {state} 2>&1; cat {token_file}"),
    "token file after umount in a nested namespace":
        lambda: shell(f"unshare -Urm sh -c 'umount -l {state} 2>&1; cat {token_file}'"),
}
for place, get in places.items():
    try:
        print(f"probe {place}: {'LEAKED' if leaks(get()) else 'safe'}")
    except OSError as exc:
        print(f"probe {place}: unreadable ({exc.strerror})")
try:
    print(f"probe state dir listing: {sorted(os.listdir(state))}")
except OSError as exc:
    print(f"probe state dir listing: unreadable ({exc.strerror})")
print(f"probe beside the checkout: {sorted(os.listdir('..'))}")
try:
    with open(os.path.join(origin, ".git", "refs", "heads", "injected"), "w") as fh:
        fh.write("0" * 40)
    print("probe write to the repository: written")
except OSError as exc:
    print(f"probe write to the repository: refused ({exc.strerror})")
sockets = []
for fd in os.listdir("/proc/self/fd"):
    try:
        if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
            sockets.append(fd)
    except FileNotFoundError:
        pass  # the listing's own descriptor, closed by now
print(f"probe inherited sockets: {sockets or 'none'}")
host, _, port = address.rpartition(":")
with socket.create_connection((host, int(port)), timeout=10) as sock:
    sock.sendall(hello)
    print(f"probe hello without the token: {sock.recv(4096)[4:]!r}")
"""


SANDBOX_PROBLEM = probe(find_bwrap())


def _probe_commit(repo: GitRepo, token: str, address: str) -> str:
    hello = p.encode(p.Hello(role="control", token="")).hex()
    command = ["python3", "probe.py", hashlib.sha256(token.encode()).hexdigest(), hello, address]
    return repo.commit("probe for the token", files={"probe.py": TOKEN_PROBE},
                       config=f"command = {json.dumps(command)}\ntimeout = 60\n")


def _assert_nothing_leaked(out: str, token: str, sandboxed: bool = False) -> None:
    assert "LEAKED" not in out and token not in out, out
    assert "probe environment: safe" in out and "probe runner cmdline: safe" in out
    # In the sandbox the test's parent is the PID namespace's init (bwrap), which holds no token: the runner is
    # not there to be read at all.
    for place in ("runner environ", "runner memory") if not sandboxed else ():
        assert f"probe {place}: unreadable" in out, out
    assert "probe token file: unreadable" in out, out
    assert "probe every process's root: safe" in out
    assert "probe write to the repository: refused" in out
    assert "probe inherited sockets: none" in out
    assert "wrong token" in out


@pytest.fixture
def shared_dir():
    """A temp dir another user may read (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="tuici-security-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not _user_exists("nobody"),
                    reason="running a runner as another user needs root, setpriv and the user nobody")
def test_code_under_test_cannot_get_the_token_from_a_runner_of_its_own_user(shared_dir, tmp_path):
    """A remote-style runner, run as its own user with the token in TUICI_TOKEN: the test command (same user)
    finds the token nowhere it can read (environment, the runner's /proc files and memory, the token file),
    inherits no socket, and is refused when it tries the dispatcher without the token."""
    import pwd

    repo = GitRepo(shared_dir / "repo")
    repo.commit("initial", config=toml_command("true"))
    nobody = pwd.getpwnam("nobody")
    work = shared_dir / "work"
    work.mkdir()
    # git trusts a repository of another user only by a global setting (not one in the environment).
    (work / ".gitconfig").write_text("[safe]\n\tdirectory = *\n")
    for path in (work, work / ".gitconfig"):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    cluster = Cluster(repo, tmp_path)
    try:
        cluster.start_dispatcher()
        cluster.start_observer()
        token = cluster.state.token()
        env = {**_env(), "TUICI_TOKEN": token, "HOME": str(work), "TUICI_CACHE_DIR": str(work / "cache")}
        log = open(tmp_path / "outsider.log", "ab")
        cluster.procs["outsider"] = subprocess.Popen(
            ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
             sys.executable, "-m", "tuici", "runner", "--dispatcher", cluster.address, "--name", "outsider",
             "--workdir", str(work / "runner")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=shared_dir, start_new_session=True)
        log.close()
        job = cluster.wait_job(_probe_commit(repo, token, cluster.address), timeout=60)
        out = cluster.log_of(job.id)
        assert job.state == "passed", out
        _assert_nothing_leaked(out, token, sandboxed=SANDBOX_PROBLEM is None)
    finally:
        cluster.stop()


@pytest.mark.skipif(SANDBOX_PROBLEM is not None, reason=f"this machine cannot build the sandbox: {SANDBOX_PROBLEM}")
def test_code_under_test_cannot_reach_tuici_from_a_local_runner_of_the_same_user(repo, cluster):
    """The usual set-up: dispatcher, runners and the code under test all run as one user on one machine, the
    token in the state dir next to the database. The sandbox keeps all of it out of reach: the state dir is an
    empty tmpfs that even a nested namespace cannot unmount, no process's /proc files open, the repository is
    read-only, and other runners' work dirs (in the state dir, as `serve` places them) are hidden."""
    cluster.start_observer()
    for name in ("r1", "r2"):
        cluster.start_runner(name)
    cluster.wait_job(repo.head())
    token = cluster.state.token()
    job = cluster.wait_job(_probe_commit(repo, token, cluster.address), timeout=60)
    out = cluster.log_of(job.id)
    assert job.state == "passed", out
    _assert_nothing_leaked(out, token, sandboxed=True)
    for place in ("token file after umount", "token file after umount in a nested namespace"):
        assert f"probe {place}: safe" in out
    assert "probe state dir listing: unreadable" in out  # the repository is not there at all
    # The job's own checkout, its JUnit dir and the repository's objects (read-only), nothing of a runner's.
    assert f"probe beside the checkout: ['.repo-objects', 'junit', '{repo.path.name}']" in out
    assert "no sandbox" not in out
    assert not (repo.path / ".git" / "refs" / "heads" / "injected").exists()


def test_the_token_is_not_in_the_test_environment_log_or_open_files(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    sha = repo.commit("look around", config=toml_command(
        "env; ls -l /proc/self/fd; tr '\\0' ' ' < /proc/$PPID/cmdline; echo; "
        "tr '\\0' '\\n' < /proc/$PPID/environ || echo 'runner environ: unreadable'"))
    job = cluster.wait_job(sha)
    out = cluster.log_of(job.id)
    assert job.state == "passed" and "TUICI_COMMIT=" in out
    assert cluster.state.token() not in out and "TUICI_TOKEN" not in out
    assert "socket:" not in out  # no connection of the runner's is inherited


# ---------------------------------------------------------------------- roles


def test_a_runner_reports_only_on_its_own_job_and_only_control_clients_control(repo, cluster, tmp_path, outside):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    gate = outside / "go"
    sha = repo.commit("held", config=toml_command(f"echo mine; while [ ! -e {gate} ]; do sleep 0.05; done; echo done"))
    job = cluster.wait_job(sha, states={"running"})
    token = cluster.state.token()
    intruder = p.Hello(role="runner", token=token, name="intruder", pid=1)

    answer = _exchange(_raw(cluster.address), intruder,
                       p.JobResult(job_id=job.id, attempt=1, exit_code=1, duration_s=0, log_size=0))
    assert isinstance(answer[0], p.Welcome)
    ack = answer[1]
    assert isinstance(ack, p.ResultAck) and not ack.accepted and "no longer assigned" in ack.reason

    answer = _exchange(_raw(cluster.address), intruder, p.Output(job_id=job.id, attempt=1, offset=0, data=b"forged"))
    assert [type(m) for m in answer] == [p.Welcome]  # and then cut off
    for msg in (p.StatusRequest(), p.CancelRequest(job_id=job.id), p.RerunRequest(commit=sha),
                p.Subscribe(output=True), p.Notice(kind="process.started", name="x")):
        assert [type(m) for m in _exchange(_raw(cluster.address), intruder, msg)] == [p.Welcome]
        observer = p.Hello(role="observer", token=token)
        assert [type(m) for m in _exchange(_raw(cluster.address), observer, msg)] == [p.Welcome]

    log = cluster.component_log("dispatcher")
    assert "rejected result from intruder" in log and "which is not this runner's" in log
    for name in ("StatusRequest", "CancelRequest", "RerunRequest", "Subscribe", "Notice"):
        assert f"a runner may not send {name}" in log and f"an observer may not send {name}" in log

    gate.touch()
    done = cluster.wait_job(sha)
    assert (done.state, done.runner, done.attempts) == ("passed", "r1", 1)
    assert "forged" not in cluster.log_of(done.id) and cluster.log_of(done.id).rstrip().endswith("done")
    # A control client may do what the others may not.
    assert cluster.control(lambda c: c.rerun(sha)).ok


# ---------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a dispatcher certificate it signed (for 127.0.0.1 and the namespace address), and a stranger CA."""
    return make_certs(tmp_path_factory.mktemp("certs"), {"server": ["127.0.0.1", NETNS_DISPATCHER]})


def _status_over_tls(address: str, token: str, ca: Path | None) -> p.StatusReply:
    async def go():
        control = Control(p.Endpoint(p.parse_addresses(address), token, p.client_tls(str(ca) if ca else None)))
        try:
            return await control.status()
        finally:
            await control.close()
    return asyncio.run(go())


def test_tls_dispatcher_takes_runners_that_trust_its_ca_and_no_others(repo, tmp_path, certs):
    cluster = Cluster(repo, tmp_path)
    try:
        cluster._spawn("dispatcher", "dispatcher", "--listen", "127.0.0.1:0", "--state", str(cluster.state.path),
                       "--repo", str(repo.path), "--tls-cert", str(certs / "server.pem"),
                       "--tls-key", str(certs / "server.key"))
        cluster.address = address = wait_for(lambda: tcp_address(cluster.state), 15,
                                             message="the dispatcher's address")
        token = cluster.state.token()
        common = ["--dispatcher", address, "--state", str(cluster.state.path)]
        cluster._spawn("observer", "observer", str(repo.path), *common, "--tls-ca", str(certs / "ca.pem"))
        for name, ca in (("trusting", "ca.pem"), ("misled", "stranger.pem"), ("plain", None)):
            cluster._spawn(name, "runner", *common, "--name", name, "--workdir", str(tmp_path / name),
                           *(["--tls-ca", str(certs / ca)] if ca else []))

        def passed() -> bool:
            job = next((j for j in _status_over_tls(address, token, certs / "ca.pem").jobs
                        if j.commit == repo.head()), None)
            return job is not None and job.state == "passed"
        wait_for(passed, 30, interval=0.2, message="the first commit to pass over TLS")
        status = _status_over_tls(address, token, certs / "ca.pem")
        assert {r.name for r in status.runners} == {"trusting"}
        assert status.jobs[0].runner == "trusting"
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in cluster.component_log("misled"), 20,
                 message="the runner with the wrong CA to fail verification")
        for ca in (certs / "stranger.pem", None):
            with pytest.raises((NoDispatcher, OSError, p.ProtocolError)):
                _status_over_tls(address, token, ca)
        with pytest.raises(p.RefusedError, match="wrong token"):
            _status_over_tls(address, "not-the-token", certs / "ca.pem")
        assert "wrong token" in cluster.component_log("dispatcher")
        assert {r.name for r in _status_over_tls(address, token, certs / "ca.pem").runners} == {"trusting"}
        # The command line's control commands, sent over TCP, find the dispatcher's CA in TUICI_TLS_CA.
        for ca, works in ((certs / "ca.pem", True), (certs / "stranger.pem", False)):
            status_cmd = subprocess.run([sys.executable, "-m", "tuici", "status", "--json"], cwd=repo.path,
                                        capture_output=True, text=True, timeout=60,
                                        env={**_env(), "TUICI_DISPATCHER": address, "TUICI_TLS_CA": str(ca)})
            assert (status_cmd.returncode == 0) == works, status_cmd.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in status_cmd.stderr and "Traceback" not in status_cmd.stderr
    finally:
        cluster.stop()


def test_a_dispatcher_refuses_to_listen_beyond_loopback_without_tls(repo, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tuici", "dispatcher", "--listen", "0.0.0.0:0",
                          "--state", str(tmp_path / "state")], capture_output=True, text=True, env=_env(), timeout=30)
    assert out.returncode == 2 and "needs --tls-cert" in out.stderr


def test_a_missing_or_wrong_token_is_refused_with_a_logged_reason(repo, cluster):
    missing = msgspec.msgpack.encode({"type": "hello", "role": "runner", "name": "r9"})
    sock = _raw(cluster.address)
    sock.sendall(len(missing).to_bytes(4, "big") + missing)
    assert _exchange(sock) == []  # cut off without a word
    assert _exchange(_raw(cluster.address), p.Hello(role="runner", token="", name="r9")) == [
        p.Refused(reason="wrong token")]
    log = wait_for(lambda: (text := cluster.component_log("dispatcher")).count("refused") and text,
                   message="the refusals to be logged")
    assert "Object missing required field `token`" in log and "refused 127.0.0.1:" in log and ": wrong token" in log
    assert cluster.status().runners == []  # neither got in


# ---------------------------------------------------------------------- rate limiting


class FakeTime:
    """Stands in for the ``time`` module inside tuici.dispatcher.server: a clock the test moves."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def test_rate_limiter_counts_failed_handshakes_per_address_in_bounded_memory(monkeypatch):
    clock = FakeTime()
    monkeypatch.setattr(dispatcher_module, "time", clock)
    limiter = dispatcher_module.RateLimiter(rate=1.0, burst=20.0, penalty=5.0)
    for _ in range(19):
        limiter.failed("10.0.0.1")
        assert limiter.should_log("10.0.0.1")  # within the budget, every failure is logged
    assert not limiter.failing("10.0.0.1")
    limiter.failed("10.0.0.1")
    assert limiter.failing("10.0.0.1") and not limiter.failing("10.0.0.2")  # other addresses have their own
    assert limiter.should_log("10.0.0.1") and not limiter.should_log("10.0.0.1")  # past it, a line per 10 s
    clock.now += 10.0
    assert not limiter.failing("10.0.0.1")
    limiter.failed("10.0.0.1", wrong_token=True)  # a wrong token costs five failures
    limiter.failed("10.0.0.1", wrong_token=True)
    assert limiter.failing("10.0.0.1") and limiter.should_log("10.0.0.1")
    # However long a flood, the debt is one bucket: the address is back 2 * burst / rate seconds after it.
    for _ in range(10_000):
        limiter.failed("10.0.0.1", wrong_token=True)
    clock.now += 20.0
    assert limiter.failing("10.0.0.1")
    clock.now += 1.0
    assert not limiter.failing("10.0.0.1")
    # A flood from many addresses: the limiter's memory stays bounded, and the flood does not reset the
    # bucket of an address that keeps failing all along; the least recently seen go first.
    for i in range(20_000):
        ip = f"10.1.{i // 250}.{i % 250}"
        for _ in range(5):
            limiter.failed(ip, wrong_token=True)
        assert limiter.failing(ip)
        limiter.should_log(ip)
        if i % 1000 == 0:
            limiter.failed("10.0.0.1", wrong_token=True)
        assert len(limiter._buckets) <= dispatcher_module.MAX_TRACKED_ADDRESSES
        assert len(limiter._logged) <= dispatcher_module.MAX_TRACKED_ADDRESSES
    assert limiter.failing("10.0.0.1")
    assert "10.1.79.249" in limiter._buckets and "10.1.0.0" not in limiter._buckets


def test_failed_handshakes_from_an_address_lock_out_nobody_who_has_the_token(repo, cluster):
    """Everything local shares 127.0.0.1: whatever else comes from an address, a peer with the token gets in."""
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    token = cluster.state.token()
    hello = p.encode(p.Hello(role="control", token=token)) + p.encode(p.StatusRequest(limit=1))
    socks = []
    for _ in range(600):  # many at once from one address, each with the token: every one is served
        sock = _raw(cluster.address, "127.0.0.3")
        sock.sendall(hello)
        socks.append(sock)
    assert all(type(answer[-1]) is p.StatusReply for answer in map(_exchange, socks))

    # Wrong tokens are refused; past the address's budget they are no longer logged one by one, and a peer
    # with the token from the same address is let in all the same.
    for _ in range(30):
        answer = _exchange(_raw(cluster.address, "127.0.0.4"), p.Hello(role="control", token="guess"))
        assert answer == [p.Refused(reason="wrong token")]
    answer = _exchange(_raw(cluster.address, "127.0.0.4"), p.Hello(role="control", token=token), p.StatusRequest())
    assert [type(m) for m in answer] == [p.Welcome, p.StatusReply]
    assert 0 < cluster.component_log("dispatcher").count("refused 127.0.0.4:") < 10

    # Connections that never say hello, a steady stream of them: past MAX_PENDING those that waited longest are
    # dropped, while a peer that says hello is let in.
    silent = []
    try:
        def dropping() -> bool:
            silent.extend(_raw(cluster.address, "127.0.0.5") for _ in range(20))
            return "connections waited" in cluster.component_log("dispatcher")
        wait_for(dropping, 30, interval=0.1, message="silent connections to be dropped")
        answer = _exchange(_raw(cluster.address, "127.0.0.5"), p.Hello(role="control", token=token),
                           p.StatusRequest())
        assert [type(m) for m in answer] == [p.Welcome, p.StatusReply]
    finally:
        for sock in silent:
            sock.close()
    assert cluster.status().runners[0].name == "r1"


# ---------------------------------------------------------------------- across hosts: network namespaces

NETNS_SUBNET = f"10.200.{os.getpid() % 250}"
NETNS_DISPATCHER = f"{NETNS_SUBNET}.1"
NETNS_RUNNER = f"{NETNS_SUBNET}.2"


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class Hosts:
    """Two network namespaces joined by a veth pair: the dispatcher's host and a runner's host."""

    def __init__(self):
        tag = str(os.getpid())
        self.dispatcher_ns, self.runner_ns = f"tuici-d{tag}", f"tuici-r{tag}"
        self.link = f"tv{tag}"[:13]
        self.procs: list[subprocess.Popen] = []

    def up(self) -> str | None:
        """Set the namespaces up; the reason it is impossible here, if it is."""
        steps = [
            ("netns", "add", self.dispatcher_ns), ("netns", "add", self.runner_ns),
            ("link", "add", f"{self.link}d", "type", "veth", "peer", "name", f"{self.link}r"),
            ("link", "set", f"{self.link}d", "netns", self.dispatcher_ns),
            ("link", "set", f"{self.link}r", "netns", self.runner_ns),
            ("-n", self.dispatcher_ns, "addr", "add", f"{NETNS_DISPATCHER}/24", "dev", f"{self.link}d"),
            ("-n", self.runner_ns, "addr", "add", f"{NETNS_RUNNER}/24", "dev", f"{self.link}r"),
            ("-n", self.dispatcher_ns, "link", "set", f"{self.link}d", "up"),
            ("-n", self.runner_ns, "link", "set", f"{self.link}r", "up"),
            ("-n", self.dispatcher_ns, "link", "set", "lo", "up"),
            ("-n", self.runner_ns, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                return f"`ip {' '.join(step)}` failed: {done.stderr.strip()}"
        return None

    def spawn(self, ns: str, log: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
        with open(log, "ab") as fh:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "tuici", *args], stdout=fh,
                                    stderr=fh, stdin=subprocess.DEVNULL, env=env or _env(), start_new_session=True)
        self.procs.append(proc)
        return proc

    def status(self, ns: str, address: str, token: str, ca: Path) -> dict:
        script = ("import asyncio, sys; from tuici import wire as p; from tuici.wire import Control\n"
                  "async def go():\n"
                  "    c = Control(p.Endpoint(p.parse_addresses(sys.argv[1]), sys.argv[2],\n"
                  "                           p.client_tls(sys.argv[3])))\n"
                  "    try:\n"
                  "        print(p.to_json(await c.status()))\n"
                  "    finally:\n"
                  "        await c.close()\n"
                  "asyncio.run(go())\n")
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, address, token, str(ca)],
                             capture_output=True, text=True, env=_env(), timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def down(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            _wait_or_kill(proc)
        for ns in (self.dispatcher_ns, self.runner_ns):
            _ip("netns", "del", ns)  # takes the veth pair with it
        _ip("link", "del", f"{self.link}d")  # if setting up stopped before it was moved into a namespace


@pytest.fixture
def hosts():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and the ip command")
    h = Hosts()
    try:
        reason = h.up()
        if reason:
            pytest.skip(f"network namespaces are not available here: {reason}")
        yield h
    finally:
        h.down()


@pytest.mark.timeout(180)
def test_a_runner_on_another_host_over_tls_with_refusals_logged(repo, tmp_path, certs, hosts):
    state = StateDir(repo.path / ".git" / "tuici")
    # Beyond loopback the dispatcher insists on TLS.
    bare = subprocess.run(["ip", "netns", "exec", hosts.dispatcher_ns, sys.executable, "-m", "tuici", "dispatcher",
                           "--listen", f"{NETNS_DISPATCHER}:0", "--state", str(state.path)],
                          capture_output=True, text=True, env=_env(), timeout=30)
    assert bare.returncode == 2 and "needs --tls-cert" in bare.stderr

    hosts.spawn(hosts.dispatcher_ns, tmp_path / "dispatcher.log", "dispatcher", "--listen", f"{NETNS_DISPATCHER}:0",
                "--state", str(state.path), "--repo", str(repo.path), "--tls-cert", str(certs / "server.pem"),
                "--tls-key", str(certs / "server.key"))
    address = wait_for(lambda: tcp_address(state), 15, message="the dispatcher's address")
    assert address.startswith(NETNS_DISPATCHER)
    token = state.token()
    ca = certs / "ca.pem"
    hosts.spawn(hosts.dispatcher_ns, tmp_path / "observer.log", "observer", str(repo.path), "--dispatcher", address,
                "--state", str(state.path), "--tls-ca", str(ca))
    # The remote runner has no state dir: the token comes in its environment.
    remote_env = {**_env(), "TUICI_TOKEN": token}
    hosts.spawn(hosts.runner_ns, tmp_path / "remote.log", "runner", "--dispatcher", address, "--tls-ca", str(ca),
                "--name", "remote", "--workdir", str(tmp_path / "remote"), env=remote_env)

    def job_for(sha: str) -> dict | None:
        jobs = [j for j in hosts.status(hosts.runner_ns, address, token, ca)["jobs"] if j["commit"] == sha]
        return jobs[-1] if jobs and jobs[-1]["state"] in p.FINAL_STATES else None

    first = wait_for(lambda: job_for(repo.head()), 60, interval=0.5, message="the first commit to be tested")
    assert (first["state"], first["runner"]) == ("passed", "remote")
    sha = repo.commit("tested on the other host", config=toml_command("echo from $(hostname -I)"))
    job = wait_for(lambda: job_for(sha), 60, interval=0.5, message="the new commit to be tested")
    assert job["state"] == "passed"
    assert NETNS_RUNNER in state.job_log(job["id"]).read_text()  # it really ran in the runner's namespace

    # From the runner's host: a wrong token, no token, and no TLS are each refused.
    wrong = hosts.spawn(hosts.runner_ns, tmp_path / "wrong.log", "runner", "--dispatcher", address,
                        "--tls-ca", str(ca), "--name", "wrong", "--workdir", str(tmp_path / "wrong"),
                        env={**_env(), "TUICI_TOKEN": "not-the-token"})
    assert wrong.wait(30) != 0
    assert "dispatcher refused us: wrong token" in (tmp_path / "wrong.log").read_text()
    hosts.spawn(hosts.runner_ns, tmp_path / "plain.log", "runner", "--dispatcher", address, "--name", "plain",
                "--workdir", str(tmp_path / "plain"), env=remote_env)
    wait_for(lambda: "cannot reach dispatcher" in (tmp_path / "plain.log").read_text(), 30,
             message="the runner without TLS to be turned away")
    dispatcher_log = (tmp_path / "dispatcher.log").read_text()
    assert f"refused {NETNS_RUNNER}:" in dispatcher_log and "wrong token" in dispatcher_log
    names = {r["name"] for r in hosts.status(hosts.dispatcher_ns, address, token, ca)["runners"]}
    assert names == {"remote"}


# ---------------------------------------------------------------------- names that are not what they seem

HOSTILE_BRANCHES = ["x;rm${IFS}-rf${IFS}x", "$(touch${IFS}pwned)", "`touch${IFS}pwned`", "a'b\"c|d&e>pwned<f"]


def test_branch_names_with_shell_words_run_as_plain_data(repo, cluster, tmp_path):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    shas = {}
    for branch in HOSTILE_BRANCHES:
        repo.git("checkout", "-q", "-b", branch, "main")
        shas[branch] = repo.commit(f"on {branch}", config=toml_command('echo "branch=$TUICI_BRANCH"'))
    for branch, sha in shas.items():
        job = cluster.wait_job(sha)
        assert (job.state, job.branch) == ("passed", branch)
        assert f"branch={branch}\n" in cluster.log_of(job.id)
    _assert_nothing_escaped(tmp_path, cluster)


def _assert_nothing_escaped(tmp_path: Path, cluster: Cluster) -> None:
    found = [str(path) for path in tmp_path.rglob("*") if path.name in ("pwned", "x")]
    assert found == [] and not Path("pwned").exists()
    logs = {path.name for path in (cluster.state.logs / "jobs").iterdir()}
    assert all(name.removesuffix(".log").isdigit() for name in logs)


def test_hostile_names_from_a_peer_cannot_escape_or_inject(repo, tmp_path, cluster):
    """A peer holding the token reports real commits under branch names no git would allow."""
    cluster.start_runner("r1")
    token = cluster.state.token()
    commits = [repo.commit(f"c{i}", files={f"c{i}.txt": "x"}, config=toml_command('echo "branch=$TUICI_BRANCH"'))
               for i in range(2)]
    reporter = p.Hello(role="observer", token=token)
    for branch, sha in zip(["../../x;rm -rf x", "$(touch pwned) `touch pwned`"], commits, strict=False):
        answer = _exchange(_raw(cluster.address), reporter, p.CommitsSeen(branch=branch, tip=sha, commits=[
            p.CommitInfo(sha=sha, branch=branch, author="$(touch pwned)", subject="; touch pwned")]))
        assert [type(m) for m in answer] == [p.Welcome, p.TipsAck]
        job = cluster.wait_job(sha)
        assert (job.state, job.branch) == ("passed", branch)
        assert f"branch={branch}\n" in cluster.log_of(job.id)

    # What cannot even be said: a sha that is an option, a branch with a NUL, a commit time that is not a number.
    bad = [
        {"type": "commits", "branch": "main", "tip": "--upload-pack=touch pwned", "commits": []},
        {"type": "commits", "branch": "x\x00y", "tip": commits[0], "commits": []},
        {"type": "commits", "branch": "main", "tip": commits[0],
         "commits": [{"sha": commits[0], "branch": "main", "time": float("nan")}]},
    ]
    before = len(cluster.jobs())
    for body in bad:
        encoded = msgspec.msgpack.encode(body)
        sock = _raw(cluster.address)
        sock.sendall(p.encode(reporter) + len(encoded).to_bytes(4, "big") + encoded)
        assert [type(m) for m in _exchange(sock)] == [p.Welcome]  # and then cut off
    assert "invalid message" in cluster.component_log("dispatcher")
    for prefix in ("--exec=touch pwned", "../../x", "$(touch pwned)"):
        reply = cluster.control(lambda c, prefix=prefix: c.rerun(prefix))
        assert not reply.ok and "no commit matches" in reply.message
    assert len(cluster.jobs()) == before
    # The store took nothing bad and still takes writes: a real commit goes through.
    cluster.start_observer()
    assert cluster.wait_job(repo.commit("still fine", config=toml_command("true"))).state == "passed"
    _assert_nothing_escaped(tmp_path, cluster)
    bad_log = subprocess.run([sys.executable, "-m", "tuici", "log", "../../etc/passwd"], cwd=repo.path,
                             capture_output=True, text=True, env=_env(), timeout=30)
    assert bad_log.returncode == 2 and "invalid int value" in bad_log.stderr


@pytest.mark.parametrize("config, key", [
    ("command = 'true'\ntimeout = nan\n", "timeout"),
    ("command = 'true'\ntimeout = inf\n", "timeout"),
    ("command = 'true'\n[env]\n'A=B' = 'x'\n", "env"),
    ("command = 'true'\n[env]\nA = \"x\\u0000y\"\n", "env"),
    ("command = \"echo \\u0000\"\n", "command"),
    ("command = ['echo', \"a\\u0000b\"]\n", "command"),
])
def test_config_values_that_cannot_run_fail_the_job_naming_the_key(repo, cluster, config, key):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    sha = repo.commit("odd config", config=config)
    job = cluster.wait_job(sha)
    assert job.state == "error" and "tuici.toml" in job.error and f"'{key}" in job.error, job.error
    assert cluster.wait_job(repo.commit("fine again", config=toml_command("true"))).state == "passed"
