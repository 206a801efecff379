"""HardTimeoutPool: run functions in worker processes that can be killed mid-call.

Why not signal.alarm or concurrent.futures: SIGALRM only works on the main thread and
cannot interrupt C code (a sympy power tower computes for minutes inside GMP), and a
ProcessPoolExecutor cannot kill one stuck worker without breaking the whole pool. Here
each worker is its own process with its own pipe: a call that overruns its timeout gets
its worker SIGKILLed and replaced on the next call, from any thread.

Workers are fresh interpreters (subprocess, i.e. fork+exec: safe in a process that has
JAX loaded) that load the task module *by file path*, so they import neither the
caller's __main__ (as multiprocessing 'spawn' does) nor the `rest_em` package (whose
__init__ imports JAX): a task module must only need the standard library and its own
third-party imports. Each worker also gets kernel-enforced backstops: an address-space
limit, no core files, and a CPU-time limit per call that ends it even if the parent died.

`PerProcess` holds a process's default pool (the math checker's, the code reward's
default Sandbox): made on first use, and made anew in a forked child, whose copy of the
parent's belongs to the parent.

This file is stdlib-only and is itself loaded by path inside the workers.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = [
    "HardTimeoutPool",
    "PerProcess",
    "PoolError",
    "TaskError",
    "TaskTimeout",
    "WorkerCrashed",
]

T = TypeVar("T")

_HEADER = struct.Struct(">I")
# Loads this file by path in the child; drops '' (the cwd) from sys.path first so that a
# math.py / code.py next to the caller cannot shadow the standard library.
_BOOTSTRAP = (
    "import sys\n"
    "sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
    "import importlib.util\n"
    "spec = importlib.util.spec_from_file_location('_rest_em_pool_worker', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(mod)\n"
    "mod._worker_main(sys.argv[2:])\n"
)


class PoolError(Exception):
    """Base class: the call did not produce a result."""


class TaskTimeout(PoolError):
    """The call overran its timeout; its worker was killed."""


class WorkerCrashed(PoolError):
    """The worker died (or could not start) before answering."""


class TaskError(PoolError):
    """The task raised; the message is the remote exception's type and text."""


class _Dead(Exception):
    pass


class _Expired(Exception):
    pass


class _Worker:
    """One child process and its pipes; used by one thread at a time."""

    def __init__(self, argv: list[str]):
        self._argv = argv
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self._ready = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        if self.alive():
            return
        self._buf, self._ready = b"", False
        self.proc = subprocess.Popen(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            close_fds=True,
            start_new_session=True,
        )  # no terminal signals; own group to kill

    def ensure_ready(self, start_timeout_s: float) -> None:
        self.launch()
        if self._ready:
            return
        try:
            msg = self._recv(time.monotonic() + start_timeout_s)
        except (_Dead, _Expired) as e:
            self.kill()
            raise WorkerCrashed(f"worker failed to start ({type(e).__name__.strip('_')})") from None
        if msg != "ready":
            self.kill()
            raise WorkerCrashed(f"worker sent {msg!r} instead of 'ready'")
        self._ready = True

    def call(self, func: str, args: tuple, timeout_s: float) -> Any:
        cpu_budget = math.ceil(timeout_s) + 5  # backstop only; the wall clock below rules
        try:
            self._send((func, args, cpu_budget))
            ok, value = self._recv(time.monotonic() + timeout_s)
        except _Expired:
            self.kill()
            raise TaskTimeout(f"{func} took longer than {timeout_s:g} s; worker killed") from None
        except _Dead:
            code = self.kill()
            raise WorkerCrashed(f"worker died during {func} (exit code {code})") from None
        if not ok:
            raise TaskError(value)
        return value

    def kill(self) -> int | None:
        """SIGKILLs the worker's process group and reaps it; returns its exit code."""
        proc, self.proc, self._ready = self.proc, None, False
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        return proc.wait()

    def _send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(_HEADER.pack(len(data)) + data)
        except (BrokenPipeError, OSError, AttributeError):
            raise _Dead() from None

    def _recv(self, deadline: float) -> Any:
        (size,) = _HEADER.unpack(self._read(_HEADER.size, deadline))
        return pickle.loads(self._read(size, deadline))

    def _read(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        poller = select.poll()  # not select.select: fds above 1024 are fine
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Expired()
            if not poller.poll(max(1, math.ceil(remaining * 1000))):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _Dead()
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data


def _kill_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.kill()


class HardTimeoutPool:
    """A fixed number of lazily started workers; `call` runs one task on an idle one.

    Args:
      task_file: path of a module whose top level imports only the standard library and
        third-party packages (it is loaded by path, never as part of `rest_em`).
      max_workers: processes, at most; each starts on first need.
      init: name of a function in the task module to run once at worker start (imports,
        warm-up), so that start-up is never charged to a call's timeout.
      memory_limit_bytes: RLIMIT_AS per worker (None: unlimited). A runaway expression
        then dies with MemoryError instead of taking the host down.
      start_timeout_s: how long a worker may take to import and run `init`.
    """

    def __init__(
        self,
        task_file: str,
        *,
        max_workers: int = 2,
        init: str | None = None,
        memory_limit_bytes: int | None = 4 << 30,
        start_timeout_s: float = 120.0,
    ):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        argv = [
            sys.executable,
            "-c",
            _BOOTSTRAP,
            os.path.abspath(__file__),
            os.path.abspath(task_file),
            init or "",
            str(memory_limit_bytes or 0),
        ]
        self.max_workers = max_workers
        self._start_timeout_s = start_timeout_s
        self._workers = [_Worker(argv) for _ in range(max_workers)]
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()  # reuse warm workers first
        for w in self._workers:
            self._idle.put(w)
        self._pid = os.getpid()
        self._closed = False
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)

    def start(self) -> None:
        """Starts every worker now (in parallel) instead of on first use."""
        workers = [self._idle.get() for _ in range(self.max_workers)]
        try:
            for w in workers:
                w.launch()
            for w in workers:
                w.ensure_ready(self._start_timeout_s)
        finally:
            for w in workers:
                self._idle.put(w)

    def call(self, func: str, *args: Any, timeout_s: float) -> Any:
        """Runs task_module.func(*args) in a worker; blocks until a worker is free.

        Raises TaskTimeout, WorkerCrashed or TaskError instead of returning a result.
        The timeout counts from when the request reaches a ready worker.
        """
        if os.getpid() != self._pid:
            raise PoolError("HardTimeoutPool used in a forked child; create a new one there")
        if self._closed:
            raise PoolError("HardTimeoutPool is closed")
        worker = self._idle.get()
        try:
            worker.ensure_ready(self._start_timeout_s)
            return worker.call(func, args, timeout_s)
        finally:
            self._idle.put(worker)

    def broadcast(self, func: str, *args: Any, timeout_s: float) -> list[Any]:
        """Runs func(*args) once on every worker (starting them), e.g. to clear caches."""
        workers = [self._idle.get() for _ in range(self.max_workers)]
        try:
            for w in workers:
                w.launch()
            results = []
            for w in workers:
                w.ensure_ready(self._start_timeout_s)
                results.append(w.call(func, args, timeout_s))
            return results
        finally:
            for w in workers:
                self._idle.put(w)

    def worker_pids(self) -> list[int]:
        """PIDs of the workers alive now (for tests and monitoring)."""
        return [w.proc.pid for w in self._workers if w.alive()]

    def close(self) -> None:
        """Kills every worker; later calls raise PoolError."""
        with self._lock:
            self._closed = True
        self._finalizer()

    def __enter__(self):  # -> Self (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PerProcess(Generic[T]):
    """One shared object per process (a default pool or sandbox), made on first use.

    A forked child inherits a copy of the parent's object, whose workers and pipes
    belong to the parent: there `get` forgets it (without closing it, which would kill
    the parent's workers) and makes a new one. Thread-safe.

    Args:
      create: makes the object from the arguments given to `get`.
      close: ends an object this process made (on `reset`, or when `get` replaces it).
    """

    def __init__(self, create: Callable[..., T], close: Callable[[T], None]):
        self._create, self._close = create, close
        self._lock = threading.Lock()
        self._obj: T | None = None
        self._pid: int | None = None
        os.register_at_fork(after_in_child=functools.partial(_renew_lock, weakref.ref(self)))

    def get(self, *args: Any, reuse: Callable[[T], bool] | None = None) -> T:
        """This process's object, if it has one and `reuse(obj)` holds (default: any);
        else a new `create(*args)` (closing the one it replaces)."""
        with self._lock:
            if self._obj is not None and self._pid != os.getpid():
                self._obj = None  # forked: the parent's
            if self._obj is not None and reuse is not None and not reuse(self._obj):
                self._close(self._obj)
                self._obj = None
            if self._obj is None:
                self._obj, self._pid = self._create(*args), os.getpid()
            return self._obj

    def reset(self) -> None:
        """Closes this process's object, if any; the next `get` makes a new one."""
        with self._lock:
            if self._obj is not None and self._pid == os.getpid():
                self._close(self._obj)
            self._obj = None


def _renew_lock(ref: weakref.ref) -> None:
    """In a forked child: a lock another thread of the parent held would stay held."""
    obj = ref()
    if obj is not None:
        obj._lock = threading.Lock()


# ---------------------------------------------------------------- worker side (child)


def _read_exact(stream, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _worker_main(argv: list[str]) -> None:
    """Child entry point: serve (func, args, cpu_budget) requests until stdin closes."""
    import importlib.util
    import resource

    task_file, init, memory_limit = argv[0], argv[1], int(argv[2])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the real stdout; stray prints from task code go to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    inp = os.fdopen(os.dup(0), "rb", buffering=0)

    spec = importlib.util.spec_from_file_location("_rest_em_pool_task", task_file)
    task = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = task  # dataclasses and pickle look modules up by name
    spec.loader.exec_module(task)
    if init:
        getattr(task, init)()

    def send(obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_HEADER.pack(len(data)) + data)

    send("ready")
    hard_cpu = resource.getrlimit(resource.RLIMIT_CPU)[1]
    while True:
        header = _read_exact(inp, _HEADER.size)
        if header is None:
            return  # parent closed the pipe or died
        body = _read_exact(inp, _HEADER.unpack(header)[0])
        if body is None:
            return
        func, args, cpu_budget = pickle.loads(body)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime) + cpu_budget
        if hard_cpu == resource.RLIM_INFINITY or soft < hard_cpu:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard_cpu))
        try:
            reply = (True, getattr(task, func)(*args))
        except BaseException as e:  # noqa: BLE001 - report everything, keep serving
            reply = (False, f"{type(e).__name__}: {e}"[:2000])
        try:
            send(reply)
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result
            send((False, f"unpicklable result: {type(e).__name__}: {e}"[:2000]))
