"""Sandbox side of `rest_em.rewards.code`: the zygote and the per-program launcher.

A checker worker starts this file as `python -I -S -B _sandbox_child.py CONFIG_JSON`
(isolated mode, no site, scrubbed environment) with one end of a SOCK_SEQPACKET socket.
The process (the "zygote", S) first confines itself, once:

* a new user, network, mount, PID, IPC and UTS namespace where the kernel allows it
  (no network at all: not even loopback is up); S is PID 1 of its PID namespace, so
  every process a program starts dies with S, and `kill(-1)` from S ends them all;
* in the mount namespace: every mount re-bound read-only, a fresh /proc that shows only
  this namespace, and a size-capped tmpfs for the programs' working directories;
* non-dumpable (no ptrace or /proc/<pid>/mem access to S by its children).

It then pre-imports common standard-library modules and serves jobs: for each, it
forks a child (U) that confines itself further before it runs any untrusted code:
its own session, the job's file descriptors only, a private working directory, a
scrubbed environment, rlimits (CPU, address space, file size, processes, open files,
no core), all capabilities dropped with no_new_privs, and a Landlock domain (where the
kernel has Landlock): read-only access to the standard library and system
directories, write access to its directory only, no TCP bind/connect, no signals or
abstract Unix sockets outside the domain. S never sees tests or expected answers: it
only forks; programs arrive on the job's own socket after the fork.

A program talks to the checker only through values: in "call" mode U loads the program,
then answers call requests ("call function f with these arguments") with the encoded
return value (`encode`: plain builtin data only). The checker decodes with `decode`,
which builds builtin objects only, and runs the tests itself.

Stdlib only; never imports rest_em (the checker worker loads this file by path for
the codec).
"""

from __future__ import annotations

import json
import os
import struct
import sys

# ------------------------------------------------------------------------ value codec
# JSON with tagged arrays for everything that is not a JSON scalar:
#   ["l", ...] list   ["t", ...] tuple   ["s", ...] set   ["f", ...] frozenset
#   ["d", k1, v1, k2, v2, ...] dict   ["b", hex] bytes   ["y", hex] bytearray
#   ["i", hex] big int   ["c", real, imag] complex
# Subclasses of builtin types are encoded as their builtin base through the base
# type's own methods (an OrderedDict is a dict; a str subclass with an always-true
# __eq__ becomes its plain characters). Anything else is unsupported.

MAX_DEPTH = 200
_BIG_INT = 1 << 1024


class UnsupportedValue(TypeError):
    """A value that the codec does not carry (functions, generators, custom objects)."""


def encode(x, _depth: int = 0):
    if _depth > MAX_DEPTH:
        raise UnsupportedValue("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str or t is float:
        return x
    if t is int:
        return x if -_BIG_INT < x < _BIG_INT else ["i", format(x, "x")]
    d = _depth + 1
    if t is list:
        return ["l", *[encode(e, d) for e in x]]
    if t is tuple:
        return ["t", *[encode(e, d) for e in x]]
    if t is dict:
        out = ["d"]
        for k, v in x.items():
            out.append(encode(k, d))
            out.append(encode(v, d))
        return out
    if t is set:
        return ["s", *[encode(e, d) for e in x]]
    if t is frozenset:
        return ["f", *[encode(e, d) for e in x]]
    if t is bytes:
        return ["b", x.hex()]
    if t is bytearray:
        return ["y", x.hex()]
    if t is complex:
        return ["c", x.real, x.imag]
    # Subclasses: project onto the builtin base with the base's own methods.
    if isinstance(x, int):
        return encode(int.__int__(x), _depth)
    if isinstance(x, float):
        return float.__float__(x)
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, list):
        return ["l", *[encode(e, d) for e in list.__iter__(x)]]
    if isinstance(x, tuple):
        return ["t", *[encode(e, d) for e in tuple.__iter__(x)]]
    if isinstance(x, dict):
        out = ["d"]
        for k, v in dict.items(x):
            out.append(encode(k, d))
            out.append(encode(v, d))
        return out
    if isinstance(x, frozenset):
        return ["f", *[encode(e, d) for e in frozenset.__iter__(x)]]
    if isinstance(x, set):
        return ["s", *[encode(e, d) for e in set.__iter__(x)]]
    raise UnsupportedValue(f"values of type {t.__name__} are not supported")


def decode(v, _depth: int = 0):
    """Inverse of `encode` for untrusted input: builds builtin objects only, or raises."""
    if _depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is not list or not v or type(v[0]) is not str:
        raise ValueError(f"malformed value of type {t.__name__}")
    tag, items, d = v[0], v[1:], _depth + 1
    if tag == "l":
        return [decode(e, d) for e in items]
    if tag == "t":
        return tuple(decode(e, d) for e in items)
    if tag == "s":
        return {decode(e, d) for e in items}
    if tag == "f":
        return frozenset(decode(e, d) for e in items)
    if tag == "d":
        if len(items) % 2:
            raise ValueError("malformed dict")
        return {decode(items[i], d): decode(items[i + 1], d) for i in range(0, len(items), 2)}
    if tag in ("b", "y", "i") and len(items) == 1 and type(items[0]) is str:
        if tag == "i":
            if len(items[0]) > 1 << 20:
                raise ValueError("integer too large")
            return int(items[0], 16)
        return (bytes if tag == "b" else bytearray).fromhex(items[0])
    if tag == "c" and len(items) == 2 and all(type(e) in (int, float) for e in items):
        return complex(items[0], items[1])
    raise ValueError(f"malformed value tag {tag!r}")


# ------------------------------------------------------------ framing on a stream fd
_LEN = struct.Struct(">I")


def write_frame(fd: int, obj) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    data = _LEN.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def read_frame(fd: int, max_bytes: int = 1 << 30):
    """Blocking read of one frame; None at EOF."""
    head = _read_exact(fd, _LEN.size)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > max_bytes:
        raise ValueError(f"frame of {n} bytes exceeds {max_bytes}")
    body = _read_exact(fd, n)
    if body is None:
        return None
    return json.loads(body)


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


# Exit codes of a job child that mean "the sandbox failed", not "the program failed".
EXIT_SETUP_FAILED = 120
EXIT_LANDLOCK_FAILED = 121

# ---------------------------------------------------------------- kernel interfaces
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
_KEEP_MOUNT_FLAGS = 2 | 4 | 8 | 1024 | 2048 | 4096  # nosuid nodev noexec noatime nodiratime relatime

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_SECUREBITS, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 28, 36, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_SECUREBITS_ALL_LOCKED = 0b11101111  # noroot, no_setuid_fixup, no_cap_ambient_raise (+locks)

_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1, 2, 4, 8
_LL_TRUNCATE, _LL_IOCTL_DEV = 1 << 14, 1 << 15
_LL_FILE_RIGHTS = _LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | _LL_TRUNCATE | _LL_IOCTL_DEV
_LL_READ = _LL_EXECUTE | _LL_READ_FILE | _LL_READ_DIR


def _ll_fs_rights(abi: int) -> int:
    """Every filesystem right the kernel's Landlock ABI knows."""
    rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        rights |= 1 << 13  # refer
    if abi >= 3:
        rights |= _LL_TRUNCATE
    if abi >= 5:
        rights |= _LL_IOCTL_DEV
    return rights


class _Kernel:
    """Thin ctypes wrappers; ctypes is imported here only (the zygote pays for it once)."""

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.libc = libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_char_p]
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                               ctypes.c_ulong]

        class RulesetAttr(ctypes.Structure):
            _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64),
                        ("scoped", ctypes.c_uint64)]

        class PathBeneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

        self.RulesetAttr, self.PathBeneath = RulesetAttr, PathBeneath

    def errno(self) -> int:
        return self.ctypes.get_errno()

    def prctl(self, op: int, a: int = 0, b: int = 0) -> bool:
        return self.libc.prctl(op, a, b, 0, 0) == 0

    def unshare(self, flags: int) -> bool:
        return self.libc.unshare(flags) == 0

    def mount(self, src, target: str, fstype, flags: int, data=None) -> bool:
        enc = lambda s: None if s is None else s.encode()  # noqa: E731
        return self.libc.mount(enc(src), target.encode(), enc(fstype), flags, enc(data)) == 0

    def landlock_abi(self) -> int:
        abi = self.libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, self.ctypes.c_size_t(0),
                                self.ctypes.c_uint32(1))
        return max(int(abi), 0)

    def landlock_ruleset(self, abi: int) -> int:
        attr = self.RulesetAttr(_ll_fs_rights(abi), 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
        size = 8 if abi < 4 else 16 if abi < 6 else 24
        return int(self.libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, self.ctypes.byref(attr),
                                     self.ctypes.c_size_t(size), self.ctypes.c_uint32(0)))

    def landlock_allow(self, ruleset: int, fd: int, rights: int) -> bool:
        rule = self.PathBeneath(rights, fd)
        return self.libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, self.ctypes.byref(rule),
                                 self.ctypes.c_uint32(0)) == 0

    def landlock_restrict(self, ruleset: int) -> bool:
        return self.libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset,
                                 self.ctypes.c_uint32(0)) == 0

    def drop_capabilities(self) -> None:
        """Best effort: lock securebits, empty the bounding/ambient sets, capset to zero.
        Without privileges the calls fail and there is nothing to drop."""
        ctypes = self.ctypes
        self.prctl(PR_SET_SECUREBITS, _SECUREBITS_ALL_LOCKED)
        for cap in range(64):
            if not self.prctl(PR_CAPBSET_DROP, cap) and self.errno() == 22:  # EINVAL: past last
                break
        self.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
        data = (ctypes.c_uint32 * 6)()
        self.libc.capset(header, data)
        self.prctl(PR_SET_NO_NEW_PRIVS, 1)


# --------------------------------------------------------------------- the zygote


_PRELOAD = ("typing", "collections", "math", "itertools", "functools", "re", "heapq",
            "bisect", "string", "random", "copy", "fractions", "decimal", "statistics",
            "hashlib", "datetime", "operator", "array", "io", "traceback", "types",
            "atexit", "resource", "signal", "socket", "shutil", "select")


def _unescape_mount_path(p: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p)


class Zygote:
    def __init__(self, cfg: dict, kernel: _Kernel, namespaces: int, features: list[str]):
        self.cfg = cfg
        self.k = kernel
        self.features = features
        self.pidns = bool(namespaces & CLONE_NEWPID)
        self.base = cfg["base"]
        self.seq = 0
        self.job: dict | None = None
        import socket

        self.sock = socket.socket(fileno=cfg["sock_fd"])
        if namespaces & CLONE_NEWNET:
            features.append("netns")
        if namespaces & CLONE_NEWUSER:
            features.append("userns")
        if self.pidns:
            features.append("pidns")
        if namespaces & CLONE_NEWNS:
            self._setup_mounts(cfg.get("tmpfs_mb", 256))
        if not self.pidns:  # orphans of a job come back to us, so they can be killed
            kernel.prctl(PR_SET_CHILD_SUBREAPER, 1)
        kernel.prctl(PR_SET_DUMPABLE, 0)
        self.ll_abi = kernel.landlock_abi()
        if self.ll_abi:
            features.append(f"landlock{self.ll_abi}")
        self.read_rules = self._open_read_rules(cfg.get("read_paths", []))
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for name in _PRELOAD:
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - a missing optional module only costs speed
                pass

    def _setup_mounts(self, tmpfs_mb: int) -> None:
        k, f = self.k, self.features
        if not k.mount(None, "/", None, MS_REC | MS_PRIVATE):
            return
        mountpoints: list[str] = []
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                mp = _unescape_mount_path(line.split()[4])
                if mp not in mountpoints:
                    mountpoints.append(mp)
        # The working area first: if it cannot be made, do not make everything read-only.
        if not k.mount("tmpfs", self.base, "tmpfs", MS_NOSUID | MS_NODEV,
                       f"size={int(tmpfs_mb)}m,mode=0700"):
            return
        f.append("tmpfs")
        root_ro = False
        for mp in mountpoints:
            try:
                flags = os.statvfs(mp).f_flag & _KEEP_MOUNT_FLAGS
            except OSError:
                continue
            ok = k.mount(None, mp, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
            root_ro = root_ro or (ok and mp == "/")
        if root_ro:
            f.append("readonly_fs")
        if self.pidns and k.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC):
            f.append("private_proc")

    def _open_read_rules(self, paths: list[str]) -> list[tuple[int, int]]:
        rules = []
        if not self.ll_abi:
            return rules
        if self.pidns and "private_proc" in self.features:
            paths = [*paths, "/proc"]
        for p in paths:
            try:
                fd = os.open(p, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            rights = _LL_READ if os.path.isdir(p) else (_LL_EXECUTE | _LL_READ_FILE)
            rules.append((fd, rights))
        return rules

    # ------------------------------------------------------------------ job lifecycle

    def serve(self) -> None:
        import select

        self._send({"ev": "ready", "features": self.features, "pid": os.getpid()})
        sock_fd = self.sock.fileno()
        while True:
            job = self.job
            running = job is not None and job["code"] is None
            poller = select.poll()
            poller.register(sock_fd, select.POLLIN)
            timeout = None
            if running:
                if job["pidfd"] is not None:
                    poller.register(job["pidfd"], select.POLLIN)
                else:
                    timeout = 20  # no pidfd (old kernel): poll waitpid
            events = poller.poll(timeout)
            if running:
                self._check_exited(job)
            if any(fd == sock_fd for fd, _ in events) and not self._handle_message():
                if self.job is not None:
                    self._kill_job_processes(self.job)
                return

    def _send(self, obj: dict) -> None:
        self.sock.send(json.dumps(obj).encode())

    def _handle_message(self) -> bool:
        import socket

        msg, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 8)
        if not msg:
            for fd in fds:
                os.close(fd)
            return False
        op = json.loads(msg)
        if op["op"] == "run":
            if self.job is not None:  # protocol error by the checker: end the old one first
                self._end_job()
            self._start_job(fds)
        elif op["op"] == "end":
            self._end_job()
        return True

    def _start_job(self, fds: list[int]) -> None:
        self.seq += 1
        jobdir = os.path.join(self.base, f"j{self.seq}")
        os.mkdir(jobdir, 0o700)
        pid = os.fork()
        if pid == 0:
            code = EXIT_SETUP_FAILED
            try:
                self._child(fds, jobdir)  # does not return on success
            except BaseException:  # noqa: BLE001 - anything before the program runs
                pass
            os._exit(code)
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None  # old kernel: poll with a short timeout instead
        self.job = {"pid": pid, "pidfd": pidfd, "code": None, "dir": jobdir}

    def _check_exited(self, job: dict) -> None:
        pid, status = os.waitpid(job["pid"], os.WNOHANG)
        if pid == 0:
            return
        job["code"] = os.waitstatus_to_exitcode(status)
        self._kill_job_processes(job)
        self._send({"ev": "exit", "code": job["code"]})

    def _end_job(self) -> None:
        job, self.job = self.job, None
        if job is None:
            self._send({"ev": "done", "code": None})
            return
        if job["code"] is None:
            try:
                os.kill(job["pid"], 9)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(job["pid"], 0)
            job["code"] = os.waitstatus_to_exitcode(status)
            self._kill_job_processes(job)
        if job["pidfd"] is not None:
            os.close(job["pidfd"])
        import shutil

        shutil.rmtree(job["dir"], ignore_errors=True)
        self._send({"ev": "done", "code": job["code"]})

    def _kill_job_processes(self, job: dict) -> None:
        """SIGKILLs and reaps everything a job started, however it detached itself.
        Called once the job's main process has been reaped (job["code"] is set)."""
        if self.pidns:
            try:
                os.kill(-1, 9)  # as PID 1: every other process of the namespace
            except ProcessLookupError:
                pass
            while True:
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    return
        # No PID namespace: the job's process group, then orphans (we are a subreaper).
        try:
            os.killpg(job["pid"], 9)
        except (ProcessLookupError, PermissionError):
            pass
        children_file = f"/proc/self/task/{os.getpid()}/children"
        for _ in range(10000):
            try:
                with open(children_file) as fh:
                    pids = [int(p) for p in fh.read().split()]
            except OSError:
                pids = []
            for p in pids:
                try:
                    os.kill(p, 9)
                except ProcessLookupError:
                    pass
            reaped = False
            while True:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid = 0
                if pid == 0:
                    break
                reaped = True
            if not pids and not reaped:
                return

    # -------------------------------------------------------------- the job child (U)

    def _child(self, fds: list[int], jobdir: str) -> None:
        os.setsid()
        k = self.k
        ctl = fds[0]
        stdio = fds[1:4] if len(fds) >= 4 else [self.devnull] * 3
        for i, fd in enumerate(stdio):
            os.dup2(fd, i)
        os.dup2(ctl, 3)
        ruleset = -1
        if self.ll_abi:
            ruleset = self._job_ruleset(jobdir)
            os.dup2(ruleset, 4)
            ruleset = 4
        os.closerange(5 if ruleset == 4 else 4, 1 << 20)
        os.chdir(jobdir)
        job = read_frame(3)
        if job is None:
            os._exit(EXIT_SETUP_FAILED)
        limits = job["limits"]
        _apply_rlimits(limits)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": jobdir,
                           "TMPDIR": jobdir, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})
        k.drop_capabilities()
        if ruleset >= 0:
            if not k.landlock_restrict(ruleset):
                os._exit(EXIT_LANDLOCK_FAILED)
            os.close(ruleset)
        _run_program(job)

    def _job_ruleset(self, jobdir: str) -> int:
        k, abi = self.k, self.ll_abi
        rs = k.landlock_ruleset(abi)
        if rs < 0:
            os._exit(EXIT_LANDLOCK_FAILED)
        handled = _ll_fs_rights(abi)
        ok = True
        for fd, rights in self.read_rules:
            ok &= k.landlock_allow(rs, fd, rights & handled)
        extra = []
        if not self.pidns:
            extra.append((os.open("/proc/self", os.O_PATH | os.O_CLOEXEC), _LL_READ))
        dev = os.open(os.devnull, os.O_PATH | os.O_CLOEXEC)
        extra.append((dev, (_LL_READ_FILE | _LL_WRITE_FILE | _LL_TRUNCATE | _LL_IOCTL_DEV)))
        extra.append((os.open(jobdir, os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY), handled))
        for fd, rights in extra:
            ok &= k.landlock_allow(rs, fd, rights & handled)
            os.close(fd)
        if not ok:
            os._exit(EXIT_LANDLOCK_FAILED)
        return rs


def _apply_rlimits(limits: dict) -> None:
    import resource

    def setlim(which, soft, hard=None):
        hard = soft if hard is None else hard
        cur_hard = resource.getrlimit(which)[1]
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(which, (soft, hard))

    cpu = int(limits["cpu_s"])
    setlim(resource.RLIMIT_CPU, cpu, cpu + 1)
    setlim(resource.RLIMIT_AS, int(limits["memory_bytes"]))
    setlim(resource.RLIMIT_FSIZE, int(limits["file_bytes"]))
    setlim(resource.RLIMIT_NPROC, int(limits["nproc"]))
    setlim(resource.RLIMIT_NOFILE, 256)
    setlim(resource.RLIMIT_CORE, 0)
    for name in ("RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_RTPRIO"):
        if hasattr(resource, name):
            try:
                setlim(getattr(resource, name), 0)
            except (ValueError, OSError):
                pass


# --------------------------------------------------------- running the program in U


def _run_program(job: dict) -> None:
    """Runs untrusted code; never returns. Everything from here on is untrusted territory:
    the checker only believes values, never claims."""
    import builtins
    import io
    import types

    me = os.getpid()
    module = types.ModuleType("__main__" if job["mode"] == "io" else "__rest_em_program__")
    g = module.__dict__
    g["__builtins__"] = builtins
    sys.modules["__main__"] = module
    sys.argv = ["program.py"]
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8",
        errors="surrogateescape")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8",
        errors="surrogateescape")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
        errors="backslashreplace", line_buffering=True)
    program = job["program"]
    if job["mode"] == "io":
        os._exit(_run_main(program, g, me))
    try:
        exec(compile(program, "program.py", "exec"), g)  # noqa: S102 - sandboxed by design
    except BaseException as e:  # noqa: BLE001 - SystemExit too: the program did not load
        if os.getpid() == me:
            _report(["load_error", type(e).__name__, _msg(e)])
        os._exit(1)
    if os.getpid() != me:  # a process the program forked came back here
        os._exit(0)
    _report(["ready"])
    _serve_calls(g, me)


def _msg(e: BaseException) -> str:
    try:
        return str(e)[:500]
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return "<unprintable>"


def _report(obj) -> None:
    try:
        write_frame(3, obj)
    except OSError:
        os._exit(1)


def _run_main(program: str, g: dict, me: int) -> int:
    import atexit
    import traceback

    code = 0
    try:
        exec(compile(program, "program.py", "exec"), g)  # noqa: S102 - sandboxed by design
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - the program's own error: a runtime error
        traceback.print_exc()
        code = 1
    if os.getpid() != me:
        code = 0
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - e.g. output limit reached
            code = code or 1
    return code


def _serve_calls(g: dict, me: int) -> None:
    while True:
        try:
            req = read_frame(3)
        except Exception:  # noqa: BLE001
            os._exit(1)
        if req is None or os.getpid() != me:
            os._exit(0)
        _, name, args, kwargs = req
        try:
            fn = g.get(name)
            if fn is None and name not in g and isinstance(g.get("Solution"), type):
                fn = getattr(g["Solution"](), name)  # LeetCode-style `class Solution`
            if fn is None:
                raise NameError(f"name {name!r} is not defined")
            result = fn(*decode(args), **decode(kwargs))
            if os.getpid() != me:
                os._exit(0)
            reply = ["ok", encode(result)]
        except UnsupportedValue as e:
            reply = ["unsupported", _msg(e)]
        except BaseException as e:  # noqa: BLE001 - reported, judged by the checker
            if os.getpid() != me:
                os._exit(0)
            reply = ["exc", type(e).__name__, _msg(e)]
        try:
            write_frame(3, reply)
        except (ValueError, OSError, RecursionError) as e:  # e.g. NaN-free json failure
            _report(["unsupported", _msg(e)])


# ----------------------------------------------------------------------- entry point


def _enter_namespaces(k: _Kernel) -> int:
    euid, egid = os.geteuid(), os.getegid()
    full = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    for flags in (full, CLONE_NEWUSER | CLONE_NEWNET):
        if not k.unshare(flags):
            continue
        try:
            with open("/proc/self/setgroups", "w") as fh:
                fh.write("deny")
            with open("/proc/self/uid_map", "w") as fh:
                fh.write(f"0 {euid} 1")
            with open("/proc/self/gid_map", "w") as fh:
                fh.write(f"0 {egid} 1")
        except OSError:
            pass  # unmapped: we look like nobody inside; file access is unchanged
        return flags
    return 0


def main(argv: list[str]) -> None:
    cfg = json.loads(argv[1])
    import resource

    for which in (resource.RLIMIT_CPU, resource.RLIMIT_AS):  # inherited from the worker
        resource.setrlimit(which, (resource.getrlimit(which)[1],) * 2)
    k = _Kernel()
    k.prctl(PR_SET_PDEATHSIG, 9)  # die with the checker worker
    features: list[str] = []
    if cfg.get("cgroup_procs"):
        try:
            with open(cfg["cgroup_procs"], "w") as fh:
                fh.write(str(os.getpid()))
            features.append("cgroup_pids")
        except OSError:
            pass
    namespaces = _enter_namespaces(k) if cfg.get("namespaces", True) else 0
    if namespaces & CLONE_NEWPID:
        pid = os.fork()  # the child is PID 1 of the new namespace
        if pid:
            os.close(cfg["sock_fd"])
            os.closerange(3, 1 << 16)
            _, status = os.waitpid(pid, 0)
            os._exit(max(0, os.waitstatus_to_exitcode(status)))
        k.prctl(PR_SET_PDEATHSIG, 9)
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    Zygote(cfg, k, namespaces, features).serve()


if __name__ == "__main__":
    main(sys.argv)
