"""Preemption: a SIGTERM makes `fit` save at the current step and raise `Preempted`; the
launcher exits with its own code and the same command resumes to the uninterrupted result;
with several processes, a request on any one stops every one at the same step."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from helpers import REPO, TINY, env, metrics, tiny_model_cfg
from rest_em import main as main_lib
from rest_em import model as model_lib
from rest_em import training

CFG = tiny_model_cfg()
FIT = training.FitConfig(
    batch_size=4,
    num_steps=8,
    eval_every=4,
    max_length=16,
    optimizer=training.OptimizerConfig(learning_rate=1e-2),
)


@pytest.fixture(autouse=True)
def _no_leftover_request():
    training.clear_preemption()
    yield
    training.clear_preemption()


def _data(n=8):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 32, size=rng.integers(2, 5)).tolist() for _ in range(n)]
    comps = [rng.integers(3, 32, size=rng.integers(1, 6)).tolist() + [2] for _ in range(n)]
    return prompts, comps


def _fit(params, checkpoint_dir):
    prompts, comps = _data()
    return training.fit(
        params,
        prompts,
        comps,
        model_cfg=CFG,
        cfg=FIT,
        seed=0,
        eval_fn=lambda p: -float(jax.tree.leaves(p)[0].sum()),
        checkpoint_dir=checkpoint_dir,
    )


def test_fit_saves_the_current_step_raises_and_resumes_exactly(tmp_path, monkeypatch):
    params = model_lib.init_params(CFG, jax.random.key(0))
    full = _fit(params, tmp_path / "full")

    # The request arrives while step 5 (0-based) is being prepared, between two
    # validation checkpoints (4 and 8): fit finishes that step, then saves step 6.
    real = training.batch_indices

    def batch_indices(n, step, *args):
        if step == 5:
            training.request_preemption()
        return real(n, step, *args)

    monkeypatch.setattr(training, "batch_indices", batch_indices)
    with pytest.raises(training.Preempted, match="preempted at step 6; run the same") as e:
        _fit(params, tmp_path / "cut")
    assert e.value.step == 6
    assert sorted(p.name for p in (tmp_path / "cut").iterdir() if p.name.isdigit()) == ["6"]

    monkeypatch.setattr(training, "batch_indices", real)
    training.clear_preemption()
    resumed = _fit(params, tmp_path / "cut")
    assert (resumed.best_step, resumed.best_reward, resumed.history) == (
        full.best_step,
        full.best_reward,
        full.history,
    )
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)


def test_request_during_the_last_step_still_stops_after_the_final_save(tmp_path, monkeypatch):
    params = model_lib.init_params(CFG, jax.random.key(0))
    real = training.batch_indices

    def batch_indices(n, step, *args):
        if step == FIT.num_steps - 1:
            training.request_preemption()
        return real(n, step, *args)

    monkeypatch.setattr(training, "batch_indices", batch_indices)
    with pytest.raises(training.Preempted) as e:
        _fit(params, tmp_path)
    assert e.value.step == FIT.num_steps and (tmp_path / str(FIT.num_steps)).exists()
    # The rerun restores the finished state and returns its result without training.
    training.clear_preemption()
    monkeypatch.setattr(training, "batch_indices", real)
    assert _fit(params, tmp_path).best_step in (4, 8)


def test_sigterm_outside_fit_raises_at_once_inside_fit_only_requests():
    old = signal.getsignal(signal.SIGTERM)
    try:
        training.install_preemption_handler()
        with pytest.raises(training.Preempted, match="outside the M-step"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode boundary
        training.clear_preemption()
        training._ACTIVE_FITS[0] += 1  # as inside fit: only the flag is set
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        finally:
            training._ACTIVE_FITS[0] -= 1
        assert training.preemption_requested()
    finally:
        signal.signal(signal.SIGTERM, old)


# --- several processes agree ---------------------------------------------------------------

_AGREE = textwrap.dedent("""
    import os, signal, sys, time
    import jax
    from rest_em import training
    # The handler first, then the distributed runtime (whose own preemption notifier
    # would otherwise take SIGTERM away from it). With several processes the handler
    # never raises on its own (that host alone would leave): it only sets the flag.
    training.install_preemption_handler()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port = int(sys.argv[1]), sys.argv[2]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=120)
    for step in range(50):
        if pid == 1 and step == 7:  # a real SIGTERM on host 1 only, at ITS step 7
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # interrupted: the Python handler runs here
        if training.preemption_requested():
            print("STOPPED", step, flush=True)
            break
    jax.distributed.shutdown()
""")


def test_a_request_on_one_process_stops_every_process_at_the_same_step(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "agree.py"
    script.write_text(_AGREE)
    child_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), str(port)],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert [out.strip().splitlines()[-1] for out, _ in outs] == ["STOPPED 7", "STOPPED 7"]


# --- the launcher, end to end ----------------------------------------------------------------

# One ReST^EM iteration with a longer M-step (16 steps, a checkpoint every 4), so that a
# SIGTERM sent after the first M-step checkpoint lands inside the M-step.
EXTRA = ("--gin.rest_em.EMConfig.num_iterations=1", "--gin.mstep/rest_em.FitConfig.num_steps=16")


def _cmd(workdir):
    return [
        sys.executable,
        "-m",
        "rest_em.main",
        f"--gin_file={TINY}",
        f"--workdir={workdir}",
        *EXTRA,
    ]


def _mstep_steps(workdir):
    d = workdir / "iter_001" / "mstep"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def test_sigterm_in_the_m_step_exits_75_and_the_same_command_resumes(tmp_path):
    full = tmp_path / "full"
    proc = subprocess.run(_cmd(full), env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(full / "base", cut / "base")  # the same base SFT, not trained again
    proc = subprocess.Popen(
        _cmd(cut), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not _mstep_steps(cut):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first M-step checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == main_lib.PREEMPTED_EXIT_CODE == 75, err[-4000:]
    line = next(x for x in err.splitlines() if "preempted at step" in x)
    step = int(line.split("preempted at step ")[1].split(";")[0])
    assert "run the same command to resume" in line
    assert 4 <= step < 16 and _mstep_steps(cut) == [step]  # saved where it stopped
    assert not (cut / "iter_001" / "metrics.json").exists()

    proc = subprocess.run(_cmd(cut), env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert metrics(cut) == metrics(full)
