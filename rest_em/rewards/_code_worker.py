"""The code reward's checker worker (W in code.py's threat model): runs the TESTS and
decides the verdict; the program runs in the sandbox, reached through `_code_host`.

`_run_job(spec)` is the HardTimeoutPool task: it judges one program against its tests
(assert-style, call-based or stdin/stdout) and returns plain data, the outcome as its
string value. The program's functions are replaced in the trusted test code by proxies
(`_Remote`) that ask the job child to call them and decode what comes back; objects
the job child cannot send as plain data come back as opaque handles (`_Handle`, equal
only to themselves); nothing the program claims decides a verdict.

The pool worker loads this file by path, and it loads `status.py` and `_code_host.py`
the same way: standard library only, and nothing from the rest_em package.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib.util
import math
import os
import select
import sys
import time
import types
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str) -> types.ModuleType:
    """rewards/<name>.py, loaded by path once per process (so that this file and
    `_code_host.py` share one instance of it)."""
    key = f"_rest_em_code_worker_{name.lstrip('_')}"
    mod = sys.modules.get(key)
    if mod is None:
        spec = importlib.util.spec_from_file_location(key, os.path.join(_HERE, f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return mod


Outcome = _load("status").Outcome
_hostlib = _load("_code_host")
_Host, _Job, _codec = _hostlib._Host, _hostlib._Job, _hostlib._codec
_JobEnded, _FrameTooLarge, _BadFrame = (
    _hostlib._JobEnded,
    _hostlib._FrameTooLarge,
    _hostlib._BadFrame,
)


_EXITED = "the program exited"
_MAX_HANDLES = _codec().MAX_HANDLES  # distinct handles one run may send (U caps its side)
_MAX_NAMES = _codec().MAX_NAMES  # top-level names a program may report


class _Abort(BaseException):  # not an error of the test: it ends the test
    """Ends a test run early with a verdict (the program died, timed out, misbehaved)."""

    def __init__(self, status: Outcome, detail: str):
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
            return _Abort(Outcome.RUNTIME_ERROR, f"the program raised {type_name}: {message}")
        try:
            e = cls(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs 5 arguments
            e = RemoteError(f"{type_name}: {message}")
    else:
        e = RemoteError(f"{type_name}: {message}")
    setattr(e, _REMOTE_ATTR, True)
    return e


def _encode(job: _Job, x: Any) -> Any:
    """An argument for the program: plain data, builtin types, and handles of this run."""
    codec = _codec()

    def hook(v: Any) -> Any:
        if type(v) is _Handle:
            if v._rest_em_job is job:
                return ["h", v._rest_em_id]
            raise codec.UnsupportedValue(f"{v!r} belongs to another run")
        if type(v) is _Remote:
            raise codec.UnsupportedValue(f"{v!r} (functions are not passed to the program)")
        raise codec.UnsupportedValue(f"values of type {type(v).__name__} are not supported")

    try:
        return codec.encode(x, hook=hook)
    except codec.UnsupportedValue as e:
        raise _CheckerProblem(f"the test passes a value the sandbox cannot carry: {e}") from None


def _handle_of(job: _Job, items: list) -> _Handle:
    """W's one opaque object for the program's ["h", id, type name]."""
    if not (
        len(items) == 2
        and type(items[0]) is int
        and 0 <= items[0] < 1 << 62
        and type(items[1]) is str
    ):
        raise ValueError("malformed handle")
    h = job.handles.get(items[0])
    if h is None:
        if len(job.handles) >= _MAX_HANDLES:
            raise _Abort(
                Outcome.RUNTIME_ERROR, f"the program sent more than {_MAX_HANDLES} object handles"
            )
        h = job.handles[items[0]] = _Handle(job, items[0], items[1][:100])
    return h


def _request(job: _Job, req: list, what: str) -> Any:
    """Sends one request to the program; the decoded value it answers, or raises."""
    codec = _codec()
    if job.ctl.fileno() < 0:  # a handle (or proxy) kept from a run that has ended
        raise _CheckerProblem(f"the test uses {what}, which belongs to a finished run")
    job.requests += 1
    try:
        codec.write_frame(job.ctl.fileno(), req)
    except OSError:
        job.dead = True
    reply = _reply(job)
    tag = reply[0] if isinstance(reply, list) and reply else None
    if tag == "ok" and len(reply) == 2:
        try:
            return codec.decode(reply[1], hook=functools.partial(_handle_of, job))
        except (ValueError, TypeError, RecursionError, MemoryError) as e:
            raise _Abort(Outcome.RUNTIME_ERROR, f"malformed return value: {e}") from None
    if tag == "exc" and len(reply) == 3 and all(isinstance(x, str) for x in reply[1:]):
        raise _remote_exception(reply[1], reply[2])
    if tag == "unsupported":
        raise _Abort(
            Outcome.WRONG_ANSWER,
            f"{what} returned something the sandbox cannot carry: {str(reply[1:])[:200]}",
        )
    raise _Abort(Outcome.RUNTIME_ERROR, "the program broke the call protocol")


def _call(job: _Job, name: str, args: tuple, kwargs: dict) -> Any:
    """Asks the program to call its top-level `name`; the decoded return value, or raises."""
    req = ["call", name, _encode(job, list(args)), _encode(job, dict(kwargs))]
    return _request(job, req, name)


def _reply(job: _Job) -> Any:
    """The program's next reply; what ends the run early raises _Abort."""
    try:
        return job.recv()
    except TimeoutError:
        raise _Abort(Outcome.TIMEOUT, f"no answer within {job.lim['time_limit_s']:g} s") from None
    except _JobEnded:
        raise _Abort(Outcome.RUNTIME_ERROR, _EXITED) from None
    except _FrameTooLarge as e:
        raise _Abort(Outcome.OUTPUT_LIMIT, str(e)) from None
    except _BadFrame as e:
        raise _Abort(Outcome.RUNTIME_ERROR, str(e)) from None


class _Remote:
    """Stands in for a top-level name of the program (a function or a class) inside the
    trusted test code: calling it asks the program to call it."""

    def __init__(self, job: _Job, name: str):
        self._job, self._name, self.__name__ = job, name, name

    def __call__(self, *args, **kwargs):
        return _call(self._job, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<sandboxed function {self._name}>"


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class _Handle:
    """An object of the program that stays in the job child (U): what U cannot send as
    plain data (an instance of a class of the program, the class itself, a function).

    Opaque here: equal only to itself (W compares identity and never asks U), hashed by
    identity, always true, unordered, not iterable. Attribute reads and writes and
    calls are forwarded to U as requests ("getattr", "setattr", "delattr", "callh"),
    with plain data or handles of this run as the values; a read or a call answers
    plain data or a handle. Passing it to the program (also inside lists, tuples,
    dicts, sets) hands U its own object back.
    """

    __slots__ = ("_rest_em_job", "_rest_em_id", "_rest_em_type")

    def __init__(self, job: _Job, hid: int, type_name: str):
        object.__setattr__(self, "_rest_em_job", job)
        object.__setattr__(self, "_rest_em_id", hid)
        object.__setattr__(self, "_rest_em_type", type_name)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<sandboxed {self._rest_em_type} object #{self._rest_em_id}>"

    def __getattr__(self, name: str) -> Any:  # only for names not found on _Handle itself
        if _is_dunder(name) or name.startswith("_rest_em_"):
            raise AttributeError(name)
        return _request(self._rest_em_job, ["getattr", self._rest_em_id, name], f"{self!r}.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        if _is_dunder(name) or name.startswith("_rest_em_"):
            raise AttributeError(f"cannot set {name} on {self!r}")
        job = self._rest_em_job
        _request(job, ["setattr", self._rest_em_id, name, _encode(job, value)], repr(self))

    def __delattr__(self, name: str) -> None:
        if _is_dunder(name) or name.startswith("_rest_em_"):
            raise AttributeError(f"cannot delete {name} on {self!r}")
        _request(self._rest_em_job, ["delattr", self._rest_em_id, name], repr(self))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        job = self._rest_em_job
        req = ["callh", self._rest_em_id, _encode(job, list(args)), _encode(job, dict(kwargs))]
        return _request(job, req, repr(self))


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


def _classify_test_exception(e: BaseException, sources: dict[str, str]) -> tuple[Outcome, str]:
    if isinstance(e, _Abort):
        return e.status, e.detail
    if isinstance(e, _CheckerProblem):
        return Outcome.CHECKER_ERROR, str(e)
    msg = f"{type(e).__name__}: {str(e)[:300]}"
    if getattr(e, _REMOTE_ATTR, False):
        return Outcome.RUNTIME_ERROR, f"the program raised {msg}"
    where = _failure_line(e, sources)
    if isinstance(e, AssertionError):
        return Outcome.WRONG_ANSWER, f"assertion failed{where}"
    if isinstance(e, Exception):
        return Outcome.WRONG_ANSWER, f"the test raised {msg}{where}"
    return Outcome.CHECKER_ERROR, f"the test raised {msg}{where}"


def _wait_ready(job: _Job) -> tuple[Outcome, str] | None:
    """None once the program has loaded; else the verdict."""
    reply = _reply(job)
    if isinstance(reply, list) and len(reply) == 2 and reply[0] == "ready":
        names = reply[1]
        if (
            isinstance(names, list)
            and len(names) <= _MAX_NAMES
            and all(type(n) is str for n in names)
        ):
            job.names = frozenset(names)
            return None
    if isinstance(reply, list) and reply and reply[0] == "load_error" and len(reply) == 3:
        return Outcome.RUNTIME_ERROR, f"loading the program raised {reply[1]}: {reply[2]}"[:500]
    return Outcome.RUNTIME_ERROR, "the program broke the call protocol while loading"


def _finish(host: _Host, job: _Job, status: Outcome, detail: str) -> tuple[Outcome, str]:
    """Ends the job; refines "the program exited" with how it ended."""
    code = host.end_job(job)
    job.handles.clear()  # handles kept elsewhere still name this job: refused later
    if not job.setup_ok:
        return _exit_verdict(code, False)
    if status is Outcome.RUNTIME_ERROR and detail == _EXITED and code is not None:
        return _exit_verdict(code, True)
    return status, detail


def _exit_verdict(code: int | None, setup_ok: bool) -> tuple[Outcome, str]:
    if not setup_ok or code is None:
        return Outcome.CHECKER_ERROR, f"sandbox setup failed in the child (code {code})"
    if code == -24:  # SIGXCPU: the CPU-time rlimit
        return Outcome.TIMEOUT, "CPU time limit exceeded"
    if code < 0:
        return Outcome.RUNTIME_ERROR, f"the program was killed by signal {-code}"
    return Outcome.RUNTIME_ERROR, f"{_EXITED} (code {code})"


def _run_assert(host: _Host, program: str, t: dict, lim: dict) -> tuple[Outcome, str, int, int]:
    try:  # the test must be valid before any program is judged by it
        context_code = _compiled(t["context"], "<context>") if t["context"] else None
        context_free = _free_names(t["context"]) if t["context"] else ()
        test_code = _compiled(t["test"], "<test>")
        free_names = _free_names(t["test"])
    except (SyntaxError, ValueError) as e:
        return Outcome.CHECKER_ERROR, f"the test does not compile: {e}", 0, 1
    job = host.start_job(program, "call", lim, lim["time_limit_s"], io=False)
    status, detail = Outcome.PASSED, ""
    try:
        try:
            sources = {"<test>": t["test"], "<context>": t["context"]}
            ready = _wait_ready(job)
            if ready is not None:
                status, detail = ready
            else:
                ns: dict[str, Any] = {"__name__": "__rest_em_test__", "__builtins__": builtins}
                # The context may use names of the program (a class it builds objects
                # of): those it does not bind itself, that are no builtins, and that the
                # program defines. What the context binds (HumanEval's helpers) stays its.
                for name in context_free:
                    if name in job.names:
                        ns[name] = _Remote(job, name)
                out, err = sys.stdout, sys.stderr
                sys.stdout = sys.stderr = _NullWriter()
                try:
                    if context_code is not None:
                        _run_context(job, context_code, ns, context_free)
                    for name in free_names:
                        if name not in ns:
                            ns[name] = _Remote(job, name)
                    entry = t["entry_point"]
                    if entry:  # the one name that may shadow a builtin (MBPP's `sum`)
                        ns[entry] = _Remote(job, entry)
                    exec(test_code, ns)  # noqa: S102 - trusted dataset code
                    check = ns.get("check")
                    if entry and callable(check) and type(check) not in (_Remote, _Handle):
                        check(ns[entry])
                finally:
                    sys.stdout, sys.stderr = out, err
        except BaseException as e:  # noqa: BLE001 - classified, never propagated
            status, detail = _classify_test_exception(e, sources)
    finally:
        status, detail = _finish(host, job, status, detail)
    return status, detail, int(status is Outcome.PASSED), 1


def _run_context(job: _Job, code: Any, ns: dict, free: tuple[str, ...]) -> None:
    """Runs the trusted setup code. Its own failure is the checker's problem; once it
    has used the program (calls, handles), a failure is judged like the test's."""
    try:
        exec(code, ns)  # noqa: S102 - trusted dataset code
    except Exception as e:  # noqa: BLE001
        name = getattr(e, "name", None) if isinstance(e, NameError) else None
        if name in free and name not in job.names:
            raise _Abort(
                Outcome.RUNTIME_ERROR,
                f"the program does not define {name!r}, which the test's setup code uses",
            ) from None
        if job.requests or getattr(e, _REMOTE_ATTR, False):
            raise
        raise _CheckerProblem(f"the context raised {type(e).__name__}: {e}") from None


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


def _run_call(host: _Host, program: str, t: dict, lim: dict) -> tuple[Outcome, str, int, int]:
    n = len(t["inputs"])
    job = host.start_job(program, "call", lim, lim["time_limit_s"] * max(n, 1), io=False)
    status, detail, passed, first_fail = Outcome.PASSED, "", 0, None
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
                        case_status = Outcome.PASSED if ok else Outcome.WRONG_ANSWER
                        case_detail = "" if ok else f"case {i}: wrong return value"
                    except _Abort:
                        raise
                    except BaseException as e:  # noqa: BLE001
                        case_status, case_detail = _classify_test_exception(e, {})
                        case_detail = f"case {i}: {case_detail}"
                    if case_status is Outcome.PASSED:
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


def _run_io_case(host: _Host, program: str, stdin: str, lim: dict) -> tuple[Outcome, str, str]:
    """(status, detail, stdout) of one stdin/stdout run; status PASSED means "exited 0"."""
    job = host.start_job(program, "io", lim, lim["time_limit_s"], io=True)
    data = stdin.encode("utf-8", "surrogateescape")
    stdin_fd, out_fd, err_fd = job.pipes["stdin"], job.pipes["stdout"], job.pipes["stderr"]
    os.set_blocking(stdin_fd, False)
    cap = int(lim["max_output_bytes"])
    out, err = bytearray(), bytearray()
    open_fds = {out_fd, err_fd}
    exited = False
    status, detail = Outcome.PASSED, ""
    try:
        if not data:
            os.close(stdin_fd)
            del job.pipes["stdin"]
            stdin_fd = None
        while open_fds or not exited:
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                status, detail = Outcome.TIMEOUT, f"over {lim['time_limit_s']:g} s"
                break
            poller = select.poll()
            for fd in open_fds:
                poller.register(fd, select.POLLIN)
            if stdin_fd is not None:
                poller.register(stdin_fd, select.POLLOUT)
            if not exited:
                poller.register(host.sock.fileno(), select.POLLIN)
            for fd, _ in poller.poll(max(1, math.ceil(remaining * 1000))):
                if fd == stdin_fd:
                    try:
                        n = os.write(stdin_fd, data[: 1 << 16])
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
                        raise _Abort(Outcome.CHECKER_ERROR, "sandbox zygote died")
                    if msg["ev"] == "exit":
                        exited, job.exit_code = True, msg["code"]
                else:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        open_fds.discard(fd)
                    elif fd == out_fd:
                        out += chunk
                        if len(out) > cap:
                            status = Outcome.OUTPUT_LIMIT
                            detail = f"more than {cap} bytes of output"
                            break
                    else:
                        err += chunk
                        del err[:-8192]
            if status is not Outcome.PASSED:
                break
    except _Abort as e:
        status, detail = e.status, e.detail
    code = host.end_job(job)
    if not job.setup_ok or (status is Outcome.PASSED and code != 0):
        if code is None:
            status, detail = Outcome.CHECKER_ERROR, "sandbox zygote died"
        else:
            status, detail = _exit_verdict(code, job.setup_ok)
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:]
            if last:
                detail += f": {last[0][:300]}"
    return status, detail, out.decode("utf-8", "replace")


def _run_io(host: _Host, program: str, t: dict, lim: dict) -> tuple[Outcome, str, int, int]:
    n = len(t["inputs"])
    passed, first_fail = 0, None
    for i, (stdin, expected) in enumerate(zip(t["inputs"], t["outputs"])):
        status, detail, out = _run_io_case(host, program, stdin, lim)
        if status is Outcome.PASSED and _normalise(out, t["compare"]) != _normalise(
            expected, t["compare"]
        ):
            status, detail = Outcome.WRONG_ANSWER, "output differs"
        if status is Outcome.PASSED:
            passed += 1
        elif first_fail is None:
            first_fail = (status, f"case {i}: {detail}")
            if lim["stop_at_first_failure"]:
                break
    status, detail = first_fail or (Outcome.PASSED, "")
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
        status, detail, passed, total = (
            Outcome.CHECKER_ERROR,
            f"{type(e).__name__}: {e}"[:500],
            0,
            0,
        )
    return {
        "status": status.value,
        "detail": detail,
        "num_passed": passed,
        "num_tests": total,
        "elapsed_s": time.monotonic() - t0,
        "isolation": list(_host.features),
    }
