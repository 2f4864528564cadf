"""The sandbox and the runner under attack from the code under test, with real processes: planted hooks, forged
caches, background processes, hostile configs, signals to tuici's processes, and the network.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading

import psutil
import pytest

from tuici.runner.sandbox import find_bwrap, probe

from conftest import GitRepo, job_processes, toml_command, tuici_processes, wait_for

SANDBOX_PROBLEM = probe(find_bwrap())
needs_sandbox = pytest.mark.skipif(SANDBOX_PROBLEM is not None,
                                   reason=f"this machine cannot build the sandbox: {SANDBOX_PROBLEM}")


@pytest.fixture
def outside_repo(outside):
    """A repository outside /tmp (which the sandbox replaces anyway), as a user's would be: the sandbox must
    hide it itself."""
    return GitRepo(outside / "repo")


@pytest.fixture
def outside_cluster(outside_repo, cluster_factory):
    return cluster_factory(outside_repo)


PLANT = """\
git config core.fsmonitor 'cat {token} > {marker}' && echo 'planted fsmonitor'
hooks=$(git rev-parse --git-path hooks) && mkdir -p "$hooks" && for hook in post-checkout pre-commit post-merge; do
  printf '#!/bin/sh\\ncat {token} > {marker}\\n' > "$hooks/$hook" && chmod +x "$hooks/$hook" && echo "planted $hook"
done
mkdir -p "$(git rev-parse --git-path info)" && echo '* filter=evil' > "$(git rev-parse --git-path info)/attributes"
git config filter.evil.clean 'cat {token} > {marker}'; git config filter.evil.smudge 'cat {token} > {marker}'
echo done planting
"""


@pytest.mark.parametrize("mode", ["on", "off"])
def test_hooks_fsmonitor_and_filters_planted_by_a_test_never_run(repo, cluster, tmp_path, mode):
    """The sandbox keeps the checkout's git dir read-only; and whatever a job left there (with --sandbox off it
    can write it), the runner's own git runs with hooks, fsmonitor and the clone's config out of play."""
    if mode == "on" and SANDBOX_PROBLEM is not None:
        pytest.skip(f"this machine cannot build the sandbox: {SANDBOX_PROBLEM}")
    marker = tmp_path / "pwned"
    token = cluster.state.token_file
    cluster.start_observer()
    cluster.start_runner("r1", "--sandbox", mode)
    cluster.wait_job(repo.head())
    plant = repo.commit("plant", files={"plant.sh": PLANT.format(token=token, marker=marker)},
                        config=toml_command("sh plant.sh; exit 0"))
    out = cluster.log_of(cluster.wait_job(plant).id)
    assert "done planting" in out
    if mode == "on":
        assert "planted" not in out.replace("done planting", ""), out  # .git is read-only in the sandbox
    else:
        assert "planted fsmonitor" in out and "planted post-checkout" in out, out  # all is writable without it
    for n in range(2):  # checkouts, cleans and fetches of later jobs, outside the sandbox
        job = cluster.wait_job(repo.commit(f"after {n}", files={f"f{n}.txt": "x\n"}, config=toml_command("true")))
        assert job.state == "passed"
    assert not marker.exists()


def test_a_forged_pyc_from_another_branch_never_changes_a_verdict(repo, cluster):
    """A test on branch ``evil`` writes a .pyc for mod.py stamped with the real mod.py's mtime and size: the next
    job on ``main``, for a commit that does not touch mod.py, must still find main broken."""
    forge = (
        "import importlib.util, os, sys\n"
        "from importlib._bootstrap_external import _code_to_timestamp_pyc\n"
        "src = open('mod.py').read()\n"
        "fake = 'def ok():\\n    return True\\n'\n"
        "fake = fake + '#' * (len(src) - len(fake))\n"
        "st = os.stat('mod.py')\n"
        "code = compile(fake, os.path.abspath('mod.py'), 'exec')\n"
        "os.makedirs('__pycache__', exist_ok=True)\n"
        "pyc = importlib.util.cache_from_source('mod.py')\n"
        "open(pyc, 'wb').write(_code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size))\n"
        "import mod; print('forged ok() ->', mod.ok())\n"
    )
    check = toml_command("python3 -c 'import mod, sys; sys.exit(0 if mod.ok() else 1)'")
    cluster.start_observer()
    cluster.start_runner("r1")
    broken = repo.commit("broken", files={"mod.py": "def ok():\n    return False\n" + "#" * 40 + "\n"}, config=check)
    assert cluster.wait_job(broken).state == "failed"
    repo.git("checkout", "-q", "-b", "evil")
    evil = repo.commit("forge", files={"forge.py": forge}, config=toml_command("python3 forge.py"))
    out = cluster.log_of(cluster.wait_job(evil).id)
    assert "forged ok() -> True" in out  # the forgery works where it was made
    repo.git("checkout", "-q", "main")
    later = repo.commit("unrelated", files={"notes.txt": "x\n"})
    assert cluster.wait_job(later).state == "failed"


@pytest.mark.parametrize("mode", ["on", "off"])
def test_a_background_process_holding_the_output_does_not_hold_the_job(repo, cluster, mode):
    """The job ends when its main process exits: what it left running is killed, and the verdict is the main
    process's. (Before, asyncio waited for the pipe to close: "timed out; killed" after 12 s.)"""
    if mode == "on" and SANDBOX_PROBLEM is not None:
        pytest.skip(f"this machine cannot build the sandbox: {SANDBOX_PROBLEM}")
    marker = f"300.{os.getpid()}{len(mode)}"
    cluster.start_observer()
    cluster.start_runner("r1", "--sandbox", mode)
    # Once the forked shell has become the sleep (else "killed what it left running: sh", rightly).
    started = f"sleep {marker} & until grep -qx sleep /proc/$!/comm 2>/dev/null; do :; done"
    sha = repo.commit("server left running", config=toml_command(f"{started}; echo tests done; exit 0",
                                                                timeout=12))
    job = cluster.wait_job(sha)
    out = cluster.log_of(job.id)
    assert job.state == "passed" and "timed out" not in out, out
    assert "tests done" in out

    def left() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["cmdline"] == ["sleep", marker] and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found

    wait_for(lambda: not left(), 5, message="the background process to be killed")
    if mode == "off":
        assert "killed what it left running: sleep" in out
    # Nothing of the job is left below the runner (a subreaper), not even a zombie: neither the sandbox's init,
    # which the outer bwrap leaves behind, nor the killed process; only the clone's own cat-file.
    runner = psutil.Process(cluster.procs["r1"].pid)

    def below_runner() -> list[str]:
        found = []
        for child in runner.children():
            try:
                if child.status() == psutil.STATUS_ZOMBIE or child.cmdline()[-2:] != ["cat-file", "--batch"]:
                    found.append(f"{child.pid} {child.name()} {child.status()}")
            except psutil.ZombieProcess:  # cmdline() of one that became a zombie meanwhile
                found.append(f"{child.pid} zombie")
            except psutil.NoSuchProcess:
                pass
        return found

    wait_for(lambda: not below_runner(), 10, message="the runner to have reaped the job's processes")


@pytest.mark.parametrize("mode", ["on", "off"])
def test_a_runner_killed_mid_job_takes_the_command_with_it(repo, cluster, mode):
    """The command is made to die with its runner (bwrap, whose PID namespace takes everything in it; or the
    command itself, without a sandbox): a runner killed by SIGKILL leaves nothing of the job running."""
    if mode == "on" and SANDBOX_PROBLEM is not None:
        pytest.skip(f"this machine cannot build the sandbox: {SANDBOX_PROBLEM}")
    cluster.start_observer()
    cluster.start_runner("r1", "--sandbox", mode)
    cluster.wait_job(repo.head())
    sha = repo.commit("long", config=toml_command("echo started; exec sleep 60", timeout=120))
    running = cluster.wait_job(sha, states={"running"})
    wait_for(lambda: "started" in cluster.log_of(running.id), message="the job's output")
    assert job_processes(sha)
    cluster.kill("r1", signal.SIGKILL)
    wait_for(lambda: not job_processes(sha), 10, message="the job's processes to die with their runner")


def test_a_symlinked_or_huge_config_is_a_clear_error_and_the_runner_goes_on(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    (repo.path / "tuici.toml").unlink(missing_ok=True)
    os.symlink("/dev/zero", repo.path / "tuici.toml")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "config is a link to /dev/zero")
    job = cluster.wait_job(repo.head())
    assert job.state == "error" and "symbolic link" in job.error, job.error
    (repo.path / "tuici.toml").unlink()
    with open(repo.path / "tuici.toml", "w") as fh:
        fh.write("# padding\n" * (10 * 1024 * 1024))  # 100 MiB
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "a 100 MB config")
    job = cluster.wait_job(repo.head(), timeout=60)
    assert job.state == "error" and "a config may have" in job.error, job.error
    fine = repo.commit("fine again", config=toml_command("echo fine"))
    assert cluster.wait_job(fine).state == "passed"
    assert {r.state for r in cluster.status().runners} == {"idle"}


SIGNAL_EVERYONE = """\
import os, signal, sys
me = os.getpid()
mine = {me}
pid = me
while pid > 1:  # our ancestors inside the namespace
    with open(f"/proc/{pid}/stat") as fh:
        pid = int(fh.read().rsplit(")", 1)[1].split()[1])
    mine.add(pid)
seen = []
for entry in os.listdir("/proc"):
    if entry.isdigit() and int(entry) not in mine:
        try:
            seen.append(open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\\0", b" ").decode())
            os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass
hit = []
for target in map(int, sys.argv[1:]):
    try:
        os.kill(target, signal.SIGKILL)
        hit.append(target)
    except OSError:
        pass
print("visible:", len(mine | set(map(int, filter(str.isdigit, os.listdir("/proc"))))), "others:", seen)
print("tuici seen:", any("tuici" in cmd for cmd in seen), "signalled by pid:", hit)
"""


@needs_sandbox
def test_a_test_command_can_neither_see_nor_signal_any_tuici_process(repo, cluster):
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    ours = {proc.pid for proc in tuici_processes()} | {cluster.procs[n].pid for n in ("dispatcher", "observer", "r1")}
    argv = ["python3", "probe.py", *map(str, sorted(ours))]
    sha = repo.commit("signal everyone", files={"probe.py": SIGNAL_EVERYONE},
                      config=f"command = {argv!r}\ntimeout = 30\n".replace("'", '"'))
    job = cluster.wait_job(sha)
    out = cluster.log_of(job.id)
    assert job.state == "passed", out
    assert "tuici seen: False" in out and "others: []" in out, out
    assert all(cluster.procs[n].poll() is None for n in ("dispatcher", "observer", "r1"))
    # Pids from outside name nothing inside, or something of the job's own (a low pid): never a tuici process.
    assert cluster.wait_job(repo.commit("still here", config=toml_command("true"))).state == "passed"


@needs_sandbox
def test_the_watched_repository_and_tuici_state_are_not_visible_at_all(outside_repo, outside_cluster, outside):
    """The repository (with the state dir: token, database, logs, socket) lies outside /tmp here, as a user's
    does: covered by an empty tmpfs in the job's sandbox; the job works in its own checkout at /tuici/<name>."""
    repo, cluster = outside_repo, outside_cluster
    look = (f"ls -A {repo.path}; echo listed; cat {cluster.state.token_file} || echo 'token: unreadable'; "
            f"pwd; touch {repo.path}/x 2>&1 || echo 'repository: read-only'; git log --oneline -1; "
            f"ls -A /tuici; ls -A {os.environ['TUICI_CACHE_DIR']} | wc -l")
    cluster.start_observer()
    cluster.start_runner("r1")
    sha = repo.commit("look", config=toml_command(look))
    job = cluster.wait_job(sha)
    out = cluster.log_of(job.id)
    assert job.state == "passed", out
    assert "\nlisted\n" in out and "token: unreadable" in out and "repository: read-only" in out
    assert f"\n/tuici/{repo.path.name}\n" in out  # the checkout, which no repository contains
    assert "look\n" in out  # git works inside: the repository's objects are there, read-only
    assert cluster.state.token() not in out


def _listener() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    return server, server.getsockname()[1]


@needs_sandbox
def test_network_false_leaves_the_job_only_its_own_loopback(repo, cluster):
    server, port = _listener()
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    probe = ("import socket\n"
             "try:\n"
             f"    socket.create_connection(('127.0.0.1', {port}), timeout=5); print('host: reached')\n"
             "except OSError as exc:\n"
             "    print('host: unreachable', exc)\n"
             "s = socket.create_server(('127.0.0.1', 0)); c = socket.create_connection(s.getsockname())\n"
             "print('own loopback: works')\n")
    try:
        cluster.start_observer()
        cluster.start_runner("r1")
        cut = repo.commit("cut off", files={"probe.py": probe},
                          config='command = "python3 probe.py"\nnetwork = false\n')
        out = cluster.log_of(cluster.wait_job(cut).id)
        assert "host: unreachable" in out and "own loopback: works" in out, out
        joined = repo.commit("networked", config='command = "python3 probe.py"\n')
        out = cluster.log_of(cluster.wait_job(joined).id)
        assert "host: reached" in out, out
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def test_what_a_job_leaves_in_its_junit_dir_and_checkout_never_reaches_the_next_job(repo, cluster):
    """A FIFO named like a file the next job writes (git clean passes FIFOs over), a directory where the next
    job's JUnit XML goes, an unreadable JUnit dir: the next job, on another branch, is untouched by all of it."""
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    litter = ("mkfifo output.txt conftest.py; "
              "for i in $(seq $TUICI_JOB_ID $((TUICI_JOB_ID + 20))); do "
              "mkdir -p $(dirname $TUICI_JUNIT_XML)/$i.xml; done; "
              "chmod 000 $(dirname $TUICI_JUNIT_XML); echo littered")
    sha = repo.commit("litter", config=toml_command(litter))
    assert "littered" in cluster.log_of(cluster.wait_job(sha).id)
    repo.git("checkout", "-q", "-b", "clean")
    tests = {"test_write.py": "def test_write():\n    open('output.txt', 'w').write('x')\n"}
    sha = repo.commit("writes output.txt", files=tests, config=toml_command("python -m pytest -q", timeout=30))
    job = cluster.wait_job(sha)
    assert (job.state, job.passed, job.failed) == ("passed", 1, 0), cluster.log_of(job.id)


@needs_sandbox
def test_a_job_that_changes_its_tmp_and_cache_dirs_leaves_the_next_job_new_ones(repo, cluster):
    """The runner keeps a job's /tmp and cache dir when the job left them as they were made: one it emptied,
    gave another mode, or an extended attribute (a default ACL is one) is made anew for the next job."""
    cluster.start_observer()
    cluster.start_runner("r1")
    cluster.wait_job(repo.head())
    script = """\
import os, pathlib, sys
cache = pathlib.Path.home() / ".cache"
print("seen", oct(os.stat("/tmp").st_mode), oct(os.stat(cache).st_mode), os.listdir("/tmp"), os.listdir(cache),
      os.listxattr("/tmp"), os.listxattr(cache))
if sys.argv[1:] == ["change"]:
    for folder in ("/tmp", cache):
        open(f"{folder}/left", "w").close()
    os.remove("/tmp/left")
    os.chmod("/tmp", 0o701)
    os.chmod(cache, 0o500)
    os.setxattr("/tmp", "user.tuici", b"left")
"""
    seen = []
    for n, command in enumerate(("python dirs.py", "python dirs.py change", "python dirs.py")):
        sha = repo.commit(f"job {n}", files={"dirs.py": script}, config=toml_command(command, timeout=30))
        job = cluster.wait_job(sha)
        log = cluster.log_of(job.id)
        if "Operation not supported" in log:
            pytest.skip("no user extended attributes on this file system")
        assert job.state == "passed", log
        seen.append(next(line for line in log.splitlines() if line.startswith("seen ")))
    assert seen[0] == seen[1] == seen[2], seen
    # the job's /tmp holds nothing a job left, only the mount points of what the sandbox binds under /tmp (a
    # checkout of tuici and its venv there, as in a fresh clone under /tmp); its cache dir nothing; no attribute
    assert "'left'" not in seen[0] and seen[0].endswith("[] [] []"), seen


@pytest.mark.parametrize("mode", ["on", "off"])
def test_a_setup_cannot_make_the_runner_write_through_a_link(repo, cluster, outside, mode):
    """setup may write anything into its environment: a link planted where the runner keeps its own record of
    the environment would make the runner write through it, outside the sandbox."""
    if mode == "on" and SANDBOX_PROBLEM is not None:
        pytest.skip(f"this machine cannot build the sandbox: {SANDBOX_PROBLEM}")
    canary = outside / "canary.txt"
    canary.write_text("original")
    canary.chmod(0o666)
    plant = "; ".join(f'ln -sf {canary} "$VIRTUAL_ENV/{name}"' for name in
                      (".tuici-ready", "pyvenv.cfg.tmp", "bin/activate.tmp")) + "; echo planted"
    cluster.start_observer()
    cluster.start_runner("r1", "--sandbox", mode)
    sha = repo.commit("plant a link", config=f'setup = {json.dumps(plant)}\ncommand = "true"\ntimeout = 60\n')
    job = cluster.wait_job(sha, timeout=60)
    assert job.state == "passed" and "planted" in cluster.log_of(job.id), cluster.log_of(job.id)
    again = cluster.wait_job(repo.commit("reuse it"), timeout=60)
    assert again.state == "passed" and again.env_reused
    assert canary.read_text() == "original"


@needs_sandbox
def test_the_python_on_path_is_the_one_the_job_runs_even_where_the_sandbox_replaces_the_directory(repo, cluster,
                                                                                                  tmp_path):
    """A developer's virtualenv in /tmp (or in the repository, or the cache dir) is bound back in, read-only,
    rather than another python on PATH silently taking its place."""
    import subprocess
    import sys

    venv = tmp_path / "devvenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    cluster.start_observer()
    cluster.start_runner("r1", env={"PATH": f"{venv / 'bin'}:{os.environ['PATH']}"})
    sha = repo.commit("which python", files={"which.py": "import sys\nprint('prefix', sys.prefix)\n"},
                      config=toml_command("python which.py"))
    job = cluster.wait_job(sha)
    out = cluster.log_of(job.id)
    assert job.state == "passed" and f"prefix {venv}" in out, out
    assert f"visible read-only, as an interpreter on PATH lives where the sandbox hides: {venv}" in out


@needs_sandbox
@pytest.mark.skipif(not __import__("tuici.runner.landlock", fromlist=["available"]).available(),
                    reason="this kernel's Landlock cannot scope abstract Unix sockets (Linux 6.12+)")
def test_abstract_unix_sockets_outside_the_job_are_out_of_reach_even_with_the_network(repo, cluster):
    """No path hides an abstract socket (an X server's, a session bus's): Landlock scopes them to the job."""
    name = f"tuici-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen()
    probe = ("import socket\n"
             "own = socket.socket(socket.AF_UNIX); own.bind('\\0mine'); own.listen()\n"
             "c = socket.socket(socket.AF_UNIX); c.connect('\\0mine'); print('own abstract socket: works')\n"
             "try:\n"
             f"    socket.socket(socket.AF_UNIX).connect('\\0{name}'); print('outside: reached')\n"
             "except OSError as exc:\n"
             "    print('outside: refused', exc)\n")
    try:
        cluster.start_observer()
        cluster.start_runner("r1")
        sha = repo.commit("abstract", files={"probe.py": probe}, config='command = "python3 probe.py"\n')
        out = cluster.log_of(cluster.wait_job(sha).id)
        assert "own abstract socket: works" in out and "outside: refused" in out, out
    finally:
        server.close()
