"""One experiment = a task, a tokenizer, a model, a base model and the EM config.

Plain functions with keyword-only arguments; `rest_em.main` makes them gin-configurable
(gin stays at the edges). Base models come from `sft_base` (train a model from scratch
on the task's reference solutions: the embedded default) or `hf_base` (a Hugging Face
checkpoint directory).
"""

from __future__ import annotations

import functools
import logging
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import tqdm

from rest_em import checkpoints, em, errors, estep, partitioning, training
from rest_em import model as model_lib
from rest_em.tasks.problems import Task
from rest_em.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer

log = logging.getLogger(__name__)

BaseFn = Callable[[Task, Tokenizer, model_lib.ModelConfig, Any], Any]


def sft_base(
    task: Task,
    tokenizer: Tokenizer,
    model_cfg: model_lib.ModelConfig,
    mesh=None,
    *,
    fit: training.FitConfig = training.FitConfig(),
    split: str = "sft",
    seed: int = 0,
    max_new_tokens: int = 64,
) -> Any:
    """A base model trained from random init on `split`'s reference solutions.

    With `fit.stop_at`, greedy pass@1 on the task's val split (completions of at most
    `max_new_tokens`) is measured every `fit.eval_every` steps and training stops once it
    reaches `fit.stop_at`: a base of a chosen strength, whatever the seed or the CPU's
    float order make of a fixed schedule (else the best of the schedule on val)."""
    problems = [p for p in task.load(split) if p.solution]
    if not problems:
        raise errors.ConfigError(f"task {task.name!r}: split {split!r} has no reference solutions")
    eval_fn = None
    if fit.stop_at is not None:
        eval_fn = em.val_reward(
            task.load("val"),
            task=task,
            tokenizer=tokenizer,
            model_cfg=model_cfg,
            cfg=em.EMConfig(max_new_tokens=max_new_tokens),
            mesh=mesh,
            key=jax.random.key(seed),
        )
    params = model_lib.init_params(model_cfg, jax.random.key(seed), mesh)
    result = training.fit(
        params,
        [estep.prompt_ids(task, tokenizer, p) for p in problems],
        [tokenizer.encode(task.target(p)) + [tokenizer.eos_id] for p in problems],
        model_cfg=model_cfg,
        cfg=fit,
        seed=seed,
        eval_fn=eval_fn,
        mesh=mesh,
        pad_id=tokenizer.pad_id,
        desc="base model SFT",
    )
    if eval_fn is not None:
        steps = training.total_steps(fit, len(problems))
        tqdm.tqdm.write(
            f"base model: val greedy pass@1 {result.best_reward:.3f} at step "
            f"{result.best_step} of {steps} (stop_at={fit.stop_at})"
        )
    return result.params


def hf_base(
    task: Task,
    tokenizer: Tokenizer,
    model_cfg: model_lib.ModelConfig,
    mesh=None,
    *,
    checkpoint_dir: str,
) -> Any:
    """The params of a Hugging Face safetensors checkpoint directory."""
    del task, tokenizer
    cfg, params = checkpoints.load_hf_checkpoint(
        checkpoint_dir, mesh=mesh, dtype=model_cfg.param_dtype
    )
    if cfg.num_layers != model_cfg.num_layers or cfg.hidden_size != model_cfg.hidden_size:
        raise errors.CheckpointError(
            f"{checkpoint_dir}: the checkpoint's architecture does not match the "
            "configured model (use hf_model_config with the same checkpoint_dir)"
        )
    return params


def byte_tokenizer() -> Tokenizer:
    return ByteTokenizer()


def hf_tokenizer(
    *, checkpoint_dir: str, eos_token: str | None = None, chat: bool = False
) -> Tokenizer:
    """A checkpoint's tokenizer; chat=True for an instruct checkpoint prompted through its
    chat template (EOS = its end-of-turn token, BOS from the template)."""
    return HFTokenizer(checkpoint_dir, eos_token=eos_token, chat=chat)


def chat_task(
    *, task: Task, checkpoint_dir: str, system: str | None = None, template_name: str = "default"
) -> Task:
    """`task` prompted through the checkpoint's own chat template (one user turn)."""
    from rest_em import chat_template

    template = chat_template.ChatTemplate.from_checkpoint(checkpoint_dir, template_name)
    return chat_template.chat_task(task, template, system=system)


def hf_model_config(
    *, checkpoint_dir: str, dtype: str = "float32", param_dtype: str | None = None
) -> model_lib.ModelConfig:
    """The ModelConfig read from a checkpoint's config.json."""
    overrides = {"dtype": dtype}
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
    return checkpoints.config_from_hf(pathlib.Path(checkpoint_dir), **overrides)


def run(
    *,
    workdir: str,
    task: Task,
    tokenizer: Tokenizer,
    model: model_lib.ModelConfig,
    base: Callable[..., Any],
    em_config: em.EMConfig,
    mesh_shape: tuple[int, ...] | None = None,
    teacher_workdir: str | None = None,
    teacher_model: model_lib.ModelConfig | None = None,
    config: Mapping[str, Any] | None = None,
    on_config_change: str = "refuse",
    on_start: Callable[[], None] | None = None,
    transfer_tasks: Sequence[Task] = (),
) -> list[dict]:
    """Runs (or resumes) the experiment in `workdir`; returns per-iteration metrics.

    `base(task, tokenizer, model_cfg, mesh)` builds the base params (called once: the
    result is saved in the workdir). `mesh_shape` (data, fsdp, tensor) shards sampling
    and training over all devices (every process's, multi-host; -1 = the rest); None
    runs on the default device, or with several processes data-parallel, (-1, 1, 1).
    Distillation: `teacher_workdir` is a finished run (of model `teacher_model`, default
    `model`) whose last model generates the E-step samples that train this run's
    (student) model. `config`, `on_config_change`, `on_start`: as `em.run`'s (the
    launcher passes its gin bindings as the workdir's fingerprint). `transfer_tasks`:
    other tasks evaluated each iteration (their "test" split; metrics `<name>/test/...`).
    """
    if model.vocab_size < tokenizer.vocab_size:
        raise errors.ConfigError(
            f"the model's vocab_size={model.vocab_size} is smaller than the "
            f"tokenizer's {tokenizer.vocab_size}"
        )
    if not mesh_shape and partitioning.is_multiprocess():
        mesh_shape = (-1, 1, 1)
    mesh = partitioning.make_mesh(*mesh_shape) if mesh_shape else None
    teacher = None
    if teacher_workdir is not None:
        teacher_cfg = teacher_model or model
        teacher = em.Teacher(teacher_cfg, em.final_params(teacher_workdir, teacher_cfg, mesh))
    elif teacher_model is not None:
        raise errors.ConfigError("teacher_model is set but teacher_workdir is not")
    return em.run(
        task=task,
        tokenizer=tokenizer,
        model_cfg=model,
        make_base_params=functools.partial(base, task, tokenizer, model, mesh),
        workdir=workdir,
        cfg=em_config,
        mesh=mesh,
        teacher=teacher,
        config=config,
        on_config_change=on_config_change,
        on_start=on_start,
        transfer_tasks=transfer_tasks,
    )
