"""Task module for tests/math_reward_test.py's HardTimeoutPool tests (loaded by path)."""

import os
import time


def echo(x):
    return x


def pid():
    return os.getpid()


def sleep(seconds):
    time.sleep(seconds)
    return "slept"


def spin():
    """Holds the GIL inside C code (a huge integer power): SIGALRM could not stop it."""
    return 9 ** (9**9) % 7


def boom():
    raise ValueError("boom")


def die():
    os._exit(3)
