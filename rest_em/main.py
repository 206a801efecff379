r"""Launches a gin-configured ReST^EM experiment (t5x style).

  python -m rest_em.main --gin_file=gin_configs/arithmetic.gin --workdir=/tmp/run \
      --gin.EMConfig.num_iterations=3 --gin.EMConfig.seed=1

`--gin.NAME=VALUE` is shorthand for `--gin_bindings='NAME = VALUE'`. All bindings are
parsed (and unknown names rejected) before any work starts; the operative config is
written to WORKDIR/config.gin. Running the same command again resumes the run; running
it with another config in the same workdir is refused before any work (exit 2, each
differing value named) unless `--on_config_change=continue` (rest_em.fingerprint).

User errors (a missing gin file, an unknown binding, a required value left unset, a bad
checkpoint or data row, a workdir of another config) print one line, `error: ...`, and
exit 2; `--verbosity=1` or REST_EM_TRACEBACK=1 adds the traceback.

Preemption: on SIGTERM the run stops cleanly (an M-step first saves its state at the
current step, on every host at the same step) and the process exits with code 75
(`PREEMPTED_EXIT_CODE`, sysexits' EX_TEMPFAIL) after logging "preempted at step N; run
the same command to resume". Any other failure exits with 1; success with 0. Outside an
M-step a single process stops at once (every finished unit is on disk); with several
processes the request waits for the next M-step, where all processes stop together.

Multi-host: start the same command on every host (one process per host, or per GPU),
with `--distributed` where JAX detects the cluster itself (Cloud TPU pod slices, SLURM,
Open MPI), or with `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`
anywhere else. `jax.distributed.initialize` then runs before any other JAX use, the mesh
(`rest_em.run.mesh_shape`) spans every process's devices, and process 0 writes the
workdir, which every host must see (a shared filesystem). See README "Multi-host runs".
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import traceback
from collections.abc import Sequence

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "gin config files (searched also under gin_configs/)")
flags.DEFINE_multi_string("gin_bindings", [], "individual gin bindings, 'NAME = VALUE'")
flags.DEFINE_string("workdir", None, "where every artifact of the run lands (resumable)")
flags.DEFINE_bool(
    "distributed",
    False,
    "multi-host: call jax.distributed.initialize(), which "
    "detects Cloud TPU pod slices, SLURM and Open MPI by itself",
)
flags.DEFINE_string(
    "coordinator_address",
    None,
    "multi-host: process 0's HOST:PORT (implies "
    "--distributed); with --num_processes and --process_id",
)
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's id, 0..num_processes-1")
flags.DEFINE_enum(
    "on_config_change",
    "refuse",
    ["refuse", "continue"],
    "a workdir holding results of another config: refuse (exit 2) or continue "
    "with the new config (the change is recorded in fingerprint_history.jsonl)",
)

flags.DEFINE_bool(
    "require_isolation",
    False,
    "code tasks: a sandbox without network namespace, PID namespace or Landlock is an "
    "error instead of a warning and a metric (sets REST_EM_REQUIRE_ISOLATION=1; per task: "
    "rest_em.SandboxConfig.require_isolation)",
)

REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "gin_configs"
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "temporary failure, retry": rerun to resume
USAGE_EXIT_CODE = 2  # a user error: fix the command, the config or the data


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (t5x's shorthand)."""
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin.") :].split("=", 1)
            out.append(f"--gin_bindings={name} = {value}")
        else:
            out.append(arg)
    return out


_CONFIGURED: dict[str, object] = {}


def register_configurables() -> None:
    """Makes the library's plain functions and config dataclasses gin-configurable."""
    import gin

    from rest_em import em, experiment, lora, mstep, training
    from rest_em.model import ModelConfig
    from rest_em.tasks import arithmetic, code_tasks, embedded_code, jsonl_tasks, programs

    if _CONFIGURED:
        return
    for fn in (
        experiment.run,
        experiment.sft_base,
        experiment.hf_base,
        experiment.byte_tokenizer,
        experiment.hf_tokenizer,
        experiment.chat_task,
        experiment.hf_model_config,
        *jsonl_tasks.GIN_CONFIGURABLES,
        *embedded_code.GIN_CONFIGURABLES,
        *code_tasks.GIN_CONFIGURABLES,
    ):
        _CONFIGURED[fn.__name__] = gin.external_configurable(fn, module="rest_em")
    for cls in (
        ModelConfig,
        em.EMConfig,
        mstep.StepNegativesConfig,
        training.FitConfig,
        lora.LoraConfig,
        training.OptimizerConfig,
        programs.SandboxConfig,
    ):
        _CONFIGURED[cls.__name__] = gin.external_configurable(cls, module="rest_em")
    _CONFIGURED["arithmetic_task"] = gin.external_configurable(
        arithmetic.make_task, name="arithmetic_task", module="rest_em"
    )
    _CONFIGURED["arithmetic_transfer_task"] = gin.external_configurable(
        arithmetic.make_transfer_task, name="arithmetic_transfer_task", module="rest_em"
    )


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parses files and bindings; a missing file, an unknown configurable or parameter and
    a value left at %gin.REQUIRED raise `errors.ConfigError` here, before any work."""
    import gin

    from rest_em import errors

    register_configurables()
    _quiet_gin_include_probe()
    gin.add_config_file_search_path(str(REPO_CONFIGS))
    resolved = []
    for f in files:
        path = pathlib.Path(f)
        if not path.exists() and (REPO_CONFIGS / f).exists():
            path = REPO_CONFIGS / f
        if not path.exists():
            raise errors.ConfigError(f"gin file {f!r} not found (also looked in {REPO_CONFIGS})")
        resolved.append(str(path))
    try:
        gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=False)
        missing = _required_unset(gin.config_str())
        if missing:
            raise errors.ConfigError(
                f"{', '.join(files)} needs a value for {', '.join(missing)}: pass "
                + " ".join(f"--gin.{m}=VALUE" for m in missing)
                + " (a path is quoted twice: --gin.NAME=\"'/path'\"; see the file's header)"
            )
        gin.finalize()
    except errors.ConfigError:
        raise
    except (ValueError, KeyError, SyntaxError, TypeError, OSError) as e:
        raise errors.ConfigError("gin: " + " ".join(str(e).split())) from e


def _quiet_gin_include_probe() -> None:
    """gin logs `ERROR ... Path not found: x.gin` while it probes the Python path for an
    `include` that the search path then finds: noise, not an error."""
    import logging as std_logging

    for logger in (std_logging.getLogger("absl"), std_logging.getLogger()):
        logger.addFilter(_gin_probe_filter)  # (added once: addFilter skips a duplicate)


def _gin_probe_filter(record) -> bool:
    return not (record.filename == "resource_reader.py" and "Path not found" in str(record.msg))


def _required_unset(config_str: str) -> list[str]:
    """Bindings and macros still bound to %gin.REQUIRED."""
    import gin
    from gin import config_parser

    out = []
    for st in config_parser.ConfigParser(config_str, gin.config.ParserDelegate(skip_unknown=True)):
        if isinstance(st, config_parser.BindingStatement) and repr(st.value) == "%gin.REQUIRED":
            name = (f"{st.scope}/" if st.scope else "") + st.selector
            out.append(f"{name}.{st.arg_name}" if st.arg_name else name)
    return out


def run_experiment(workdir: str, *, on_config_change: str = "refuse") -> list[dict]:
    """Calls the configured `rest_em.run` (its fingerprint: every gin binding), writes the
    config in effect once the workdir accepted it, prints the final table."""
    import gin

    from rest_em import em, fingerprint, partitioning

    main_process = partitioning.is_main_process()  # multi-host: process 0 writes
    paths = pathlib.Path(workdir)

    def on_start() -> None:
        if main_process:
            paths.mkdir(parents=True, exist_ok=True)
            (paths / "config.gin").write_text(gin.config_str())

    history = _CONFIGURED["run"](
        workdir=workdir,
        config=fingerprint.gin_bindings(gin.config_str()),
        on_config_change=on_config_change,
        on_start=on_start,
    )
    if main_process:
        (paths / "operative_config.gin").write_text(gin.operative_config_str())
        print(em.final_table(history))
    return history


def _fail(e: BaseException) -> None:
    """A user error: one line on stderr, exit 2 (the traceback only when asked for)."""
    if FLAGS["verbosity"].present or os.environ.get("REST_EM_TRACEBACK"):
        traceback.print_exception(e)
    message = re.sub(r"\s*In call to configurable .*$", "", " ".join(str(e).split()))  # gin's
    print("error: " + message, file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)


def main(argv: Sequence[str]) -> None:
    from rest_em import errors

    try:
        if len(argv) > 1:
            raise errors.ConfigError(f"unexpected arguments: {argv[1:]}")
        if not FLAGS.workdir:
            raise errors.ConfigError("--workdir is required: where the run's files go")
        if not FLAGS["verbosity"].present:  # library INFO logs (orbax, jax) drown progress bars
            logging.set_verbosity(logging.WARNING)
        from rest_em import partitioning, training

        if FLAGS.require_isolation:  # every code task of this process (programs.py)
            os.environ["REST_EM_REQUIRE_ISOLATION"] = "1"
        parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
        if FLAGS.distributed or FLAGS.coordinator_address:  # before any other JAX use
            partitioning.initialize_distributed(
                FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
            )
        training.install_preemption_handler()
        try:
            run_experiment(FLAGS.workdir, on_config_change=FLAGS.on_config_change)
        except training.Preempted as e:
            logging.warning("%s", e)
            sys.exit(PREEMPTED_EXIT_CODE)
    except errors.UserError as e:
        _fail(e)
    except Exception as e:  # gin wraps errors raised inside configurables
        cause = e
        while cause is not None and not isinstance(cause, errors.UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        _fail(cause)


def cli() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main, argv=rewrite_gin_args(sys.argv))


if __name__ == "__main__":
    cli()
