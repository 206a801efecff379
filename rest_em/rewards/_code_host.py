"""The checker worker's handle on its sandboxed zygote (W -> S in code.py's threat model).

`_Host` starts the zygote (`_sandbox_child.py`, a fresh `python -I -S` with a scrubbed
environment), asks it to fork one job child per program run, ends each run (every
process it started is killed) and restarts the zygote when it dies or cannot clean up.
`_Job` is W's end of one run: its control socket (and stdin/stdout/stderr pipes for
stdin/stdout tests), its deadline, and reading the program's length-prefixed JSON
replies. Judging those replies is `_code_worker.py`'s.

Runs only inside the checker worker, which loads this file by path (from
`_code_worker.py`): standard library only, and nothing from the rest_em package.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import select
import socket
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_CHILD_PATH = os.path.join(_HERE, "_sandbox_child.py")


@functools.cache
def _codec():
    spec = importlib.util.spec_from_file_location("_rest_em_sandbox_child", _CHILD_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _read_paths() -> list[str]:
    """What a program may read (and execute): the standard library and system dirs."""
    paths = [
        os.path.realpath(sys.base_prefix),
        os.path.realpath(sys.exec_prefix),
        os.path.dirname(os.path.realpath(sys.executable)),
        "/usr",
        "/lib",
        "/lib64",
        "/lib32",
        "/bin",
        "/sbin",
        "/etc/ld.so.cache",
        "/etc/localtime",
        "/etc/passwd",
        "/etc/group",
        "/etc/hosts",
        "/etc/nsswitch.conf",
        "/dev/urandom",
        "/dev/random",
        "/dev/zero",
        "/sys/devices/system/cpu",
    ]
    out = []
    for p in paths:
        if os.path.exists(p) and p not in out:
            out.append(p)
    return out


def _work_root() -> str:
    """The directory the zygotes work in, shared by every worker of this user: with a
    mount namespace each zygote mounts a private tmpfs on it (so on the host it stays
    empty); without one each uses a subdirectory named by its PID. Subdirectories of
    zygotes that died without cleaning up (workers are SIGKILLed) are removed here."""
    root = os.path.join(tempfile.gettempdir(), f"rest_em_sandbox_{os.geteuid()}")
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(root)
    if not (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077):
        raise RuntimeError(f"{root} exists and is not a private directory of this user")
    for name in os.listdir(root):
        if name.isdigit() and not _is_zygote(int(name)):
            _remove_dir(os.path.join(root, name))
    return root


def _is_zygote(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"_sandbox_child.py" in f.read()
    except OSError:
        return False


def _remove_dir(path: str) -> None:
    if not _codec().wipe_contents(path):  # too deep for Python: rm copes with any depth
        subprocess.run(
            ["rm", "-rf", "--", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    try:
        os.rmdir(path)
    except OSError:
        pass


def _pids_cgroup_dir() -> str | None:
    """Our cgroup directory in a hierarchy with the pids controller, or None."""
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
        with open("/proc/self/cgroup") as f:
            memberships = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    for fields in mounts:
        sep = fields.index("-")
        fstype, super_opts, mp = fields[sep + 1], fields[sep + 3], fields[4]
        if fstype == "cgroup" and "pids" in super_opts.split(","):
            for _, controllers, path in memberships:
                if "pids" in controllers.split(","):
                    return mp + path.rstrip("/")
    for fields in mounts:
        sep = fields.index("-")
        if fields[sep + 1] == "cgroup2":
            for hid, _, path in memberships:
                if hid == "0":
                    d = fields[4] + path.rstrip("/")
                    try:
                        with open(os.path.join(d, "cgroup.controllers")) as f:
                            if "pids" not in f.read().split():
                                return None
                        with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
                            f.write("+pids")
                    except OSError:
                        return None
                    return d
    return None


class _JobEnded(Exception):
    """The program's end of the control socket closed (it exited or died)."""


class _FrameTooLarge(Exception):
    """The program sent a reply larger than max_output_bytes allows."""


class _BadFrame(Exception):
    """The program sent something that is not a JSON frame."""


class _Host:
    """W's handle on its zygote: start, run jobs one at a time, restart when needed."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.features: list[str] = []
        self.work_dir: str | None = None  # the zygote's directory on the host, if any
        self.cgroup: str | None = None
        self._starts = 0
        self._pids_max: int | None = None
        # Test knobs for the degraded modes (read from the environment the worker got).
        self.namespaces = os.environ.get("REST_EM_SANDBOX_NAMESPACES", "1") != "0"
        self.landlock = os.environ.get("REST_EM_SANDBOX_LANDLOCK", "1") != "0"

    # ---------------------------------------------------------------- lifecycle

    def ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.stop()
        self._start()

    def _start(self) -> None:
        root = _work_root()
        self._setup_cgroup()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cfg = {
            "sock_fd": child.fileno(),
            "base": root,
            "read_paths": _read_paths(),
            "tmpfs_mb": int(os.environ.get("REST_EM_SANDBOX_TMPFS_MB", "256")),
            "cgroup_procs": self.cgroup and os.path.join(self.cgroup, "cgroup.procs"),
            "namespaces": self.namespaces,
            "landlock": self.landlock,
        }
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", _CHILD_PATH, json.dumps(cfg)],
            pass_fds=[child.fileno()],
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            close_fds=True,
        )
        child.close()
        self.sock = parent
        msg = self._recv_event(time.monotonic() + 60.0)
        if msg is None or msg.get("ev") != "ready":
            self.stop()
            if self.namespaces:  # retry once without namespaces before giving up
                self.namespaces = False
                return self._start()
            raise RuntimeError("sandbox zygote failed to start")
        self.features = list(msg["features"])
        if "tmpfs" not in self.features:
            self.work_dir = msg["base"]
        if os.geteuid() != 0:
            self.features.append("rlimit_nproc")  # the kernel ignores it for root

    def _setup_cgroup(self) -> None:
        self.cgroup, self._pids_max = None, None
        if os.geteuid() != 0:
            return
        parent = _pids_cgroup_dir()
        if parent is None:
            return
        self._starts += 1
        d = os.path.join(parent, f"rest_em_sandbox_{os.getpid()}_{self._starts}")
        try:
            os.mkdir(d)
            self.cgroup = d
        except OSError:
            return

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.cgroup:
            for _ in range(100):  # tasks leave the cgroup asynchronously after SIGKILL
                try:
                    os.rmdir(self.cgroup)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
            self.cgroup = None
        if self.work_dir:  # only without a mount namespace (else the tmpfs held it all)
            _remove_dir(self.work_dir)
            self.work_dir = None

    def _recv_event(self, deadline: float) -> dict | None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], remaining)
            if r:
                try:
                    data = self.sock.recv(1 << 16)
                except OSError:
                    return None
                return json.loads(data) if data else None

    # ---------------------------------------------------------------------- jobs

    def start_job(self, program: str, mode: str, lim: dict, cpu_s: float, io: bool) -> _Job:
        try:
            return self._start_job(program, mode, lim, cpu_s, io)
        except OSError:  # the zygote went away between jobs: once more, on a new one
            self.stop()
            return self._start_job(program, mode, lim, cpu_s, io)

    def _start_job(self, program: str, mode: str, lim: dict, cpu_s: float, io: bool) -> _Job:
        self.ensure()
        nproc = int(lim["max_processes"]) + 2  # + the zygote and its namespace parent
        if self.cgroup and self._pids_max != nproc:
            with open(os.path.join(self.cgroup, "pids.max"), "w") as f:
                f.write(str(nproc))
            self._pids_max = nproc
        ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fds = [ctl_child.fileno()]
        pipes: dict[str, int] = {}
        if io:  # the child gets stdin's read end and stdout's / stderr's write ends
            (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
            pipes = {"stdin": in_w, "stdout": out_r, "stderr": err_r}
            child_fds += [in_r, out_w, err_w]
        try:
            socket.send_fds(self.sock, [b'{"op":"run"}'], child_fds)
        except OSError:
            ctl.close()
            for fd in pipes.values():
                os.close(fd)
            raise
        finally:
            ctl_child.close()
            for fd in child_fds[1:]:
                os.close(fd)
        job = _Job(self, ctl, pipes, lim)
        limits = {
            "cpu_s": math.ceil(cpu_s) + 1,
            "memory_bytes": int(lim["memory_mb"]) << 20,
            "file_bytes": int(lim["max_file_bytes"]),
            "nproc": nproc,
        }
        try:
            _codec().write_frame(ctl.fileno(), {"mode": mode, "program": program, "limits": limits})
        except OSError:
            pass  # the child died during setup: end_job reports it
        return job

    def end_job(self, job: _Job) -> int | None:
        """Kills whatever is left of the job; its main process's exit code (negative:
        killed by that signal), or None if the zygote failed (it is then restarted)."""
        job.close()
        try:
            self.sock.send(b'{"op":"end"}')
        except OSError:
            self.stop()
            return job.exit_code
        deadline = time.monotonic() + 10.0
        while True:
            msg = self._recv_event(deadline)
            if msg is None:
                self.stop()
                return job.exit_code
            if msg["ev"] == "exit":
                job.exit_code = msg["code"]
            elif msg["ev"] == "done":
                if job.exit_code is None:
                    job.exit_code = msg["code"]
                job.setup_ok = bool(msg.get("setup", True))
                if msg.get("retire"):  # it could not clean up: use a new one next time
                    self.stop()
                return job.exit_code


class _Job:
    """W's side of one program run: its socket (and pipes), deadline and bookkeeping."""

    def __init__(self, host: _Host, ctl: socket.socket, pipes: dict[str, int], lim: dict):
        self.host, self.ctl, self.pipes, self.lim = host, ctl, pipes, lim
        self.buf = b""
        self.deadline = time.monotonic() + float(lim["time_limit_s"])
        self.exit_code: int | None = None
        self.setup_ok = True  # False: the child failed before running the program
        self.dead = False
        self.handles: dict[int, Any] = {}  # handle id -> W's opaque object for it (the
        # worker's `_Handle`), so that one object of the program is one object here
        self.names: frozenset[str] = frozenset()  # top-level names the program reported
        self.requests = 0  # requests sent to the program so far

    def close(self) -> None:
        self.ctl.close()
        for fd in self.pipes.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.pipes = {}

    def recv(self) -> Any:
        """The next frame from the program; raises _JobEnded (EOF), TimeoutError (past
        the deadline), _FrameTooLarge or _BadFrame."""
        cap = int(self.lim["max_output_bytes"]) + 1024
        fd = self.ctl.fileno()
        need = 4
        while True:
            if len(self.buf) >= 4:  # a length-prefixed JSON frame
                n = int.from_bytes(self.buf[:4], "big")
                if n > cap:
                    raise _FrameTooLarge(
                        f"the program sent a value of {n} bytes (> max_output_bytes)"
                    )
                need = 4 + n
                if len(self.buf) >= need:
                    data, self.buf = self.buf[4:need], self.buf[need:]
                    try:
                        return json.loads(data)
                    except (ValueError, RecursionError):
                        raise _BadFrame("the program wrote garbage on its result channel") from None
            if self.dead:
                raise _JobEnded()
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError()
            r, _, _ = select.select([fd], [], [], remaining)
            if not r:
                continue
            try:
                chunk = os.read(fd, max(1 << 16, need - len(self.buf)))
            except OSError:  # ECONNRESET: the program died with our request unread
                chunk = b""
            if not chunk:
                self.dead = True
                continue
            self.buf += chunk
