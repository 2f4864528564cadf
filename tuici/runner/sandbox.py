"""The sandbox the code under test runs in: it must reach nothing beyond its own job.

A test command runs as the runner's own user, so on its own it could read the token, signal tuici's processes,
write hooks into a git dir that the runner later uses, or poison what the next job of another branch reuses.
The sandbox is bubblewrap (``bwrap``), the tool Flatpak and rootless containers use, driven from here:

* a root built from nothing: every top-level directory of the machine bound read-only, then the job's own
  files bound in at fixed paths under ``/tuici`` (its checkout, its environment, its JUnit dir), so that
  every runner's job sees the same paths and an environment built by one runner works for another;
* what must stay out of sight covered by empty read-only tmpfs: the watched repository (work tree and git
  dir: token, database, logs, the dispatcher's socket) and tuici's cache (other runners, other environments);
* a fresh ``/tmp`` and cache dir for each job, and the home directory read-only;
* its own PID namespace (with its own ``/proc``): no tuici process is visible or can be signalled, and when
  the command exits, everything it left behind dies with the namespace;
* optionally its own network namespace with only loopback (``network = false``);
* no capabilities, in a user namespace of its own: nothing can be unmounted to look underneath.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = "/tuici"  # where a job's own files appear inside its sandbox
# Machine-wide sockets through which a job could act outside its sandbox (a container engine runs anything as
# anyone): covered with /dev/null. Suites that need them run with --sandbox off.
SYSTEM_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock", "/run/podman/podman.sock",
                  "/run/containerd/containerd.sock")


@dataclass(frozen=True)
class Binding:
    source: Path
    target: str  # the path inside the sandbox
    writable: bool = False


@dataclass(frozen=True)
class Sandbox:
    hide: tuple[Path, ...] = ()  # covered by an empty read-only tmpfs
    binds: tuple[Binding, ...] = ()  # applied in order, after the hiding
    network: bool = True
    fresh_tmp: Path | None = None  # a directory to serve as /tmp
    fresh_cache: tuple[Path, Path] | None = None  # (directory to bind, path it replaces: the user's cache dir)

    def argv(self, command: list[str], cwd: str, bwrap: str) -> list[str]:
        """The bwrap command line that runs ``command`` in ``cwd`` inside this sandbox."""
        args = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if not self.network:
            args.append("--unshare-net")
        for entry in sorted(os.listdir("/")):
            path = "/" + entry
            if entry in ("proc", "dev", "tmp") or entry == ROOT.strip("/"):
                continue
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.exists(path):
                args += ["--ro-bind", path, path]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--bind", str(self.fresh_tmp), "/tmp"] if self.fresh_tmp is not None else ["--tmpfs", "/tmp"]
        replaced = [Path("/tmp")]
        if self.fresh_cache is not None and self.fresh_cache[1].is_dir():
            fresh, cache = self.fresh_cache
            args += ["--bind", str(fresh), str(cache)]
            replaced.append(cache)
        # What lies in a replaced directory is out of sight already (and a mount point there would be made in
        # the job's own fresh directory).
        hidden = [str(path) for path in self.hide
                  if path.is_dir() and not any(path.is_relative_to(r) for r in replaced)
                  and not any(path != other and path.is_relative_to(other) for other in self.hide)]
        for path in hidden:
            args += ["--tmpfs", path]
        for socket in SYSTEM_SOCKETS:
            if os.path.exists(socket) and not os.path.islink(socket):
                args += ["--ro-bind", "/dev/null", socket]
        for bind in self.binds:
            args += ["--bind" if bind.writable else "--ro-bind", str(bind.source), bind.target]
        for path in hidden:
            args += ["--remount-ro", path]
        args += ["--chdir", cwd, "--", *command]
        return args


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def probe(bwrap: str | None, preexec: Callable[[], None] | None = None) -> str | None:
    """None if this machine can build the sandbox (with ``preexec`` run in the child, as for jobs); else why
    not, in words a user can act on."""
    if bwrap is None:
        return "bubblewrap is not installed (the bwrap command; e.g. apt install bubblewrap)"
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    argv = Sandbox(network=False).argv(["true"], "/", bwrap)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=tmp if tmp.is_dir() else "/",
                              preexec_fn=preexec)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap cannot run: {exc}"
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return f"bwrap cannot build a sandbox here: {reason[0]}"
    return None
