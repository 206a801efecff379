"""rest_em: ReST^EM self-training of language models in JAX/Flax.

The public API, one module per step of the algorithm (imported lazily: `import rest_em`
costs nothing until a name is used, and the reward checkers never pull in JAX):
  model         Llama-family decoder (`ModelConfig`, `Transformer`, `forward`, `init_params`)
  partitioning  meshes and the one logical-axis rules table
  checkpoints   Hugging Face safetensors import/export, orbax save/restore
  sampling      the pure, jitted, sharded sampler (E-step)
  stops         stop sequences as a token automaton the sampler runs on device
  rewards       `rewards.math` answer checker, `rewards.code` sandboxed test runner
  filtering     reward filter, per-problem cap, dedup -> the M-step dataset
  losses        weighted NLL (per-example and per-token weights)
  training      train state, pure train_step, `fit` (the M-step), `fit_dpo`
  lora          low-rank adapters: frozen base, fresh adapters per M-step, merged weights
  evaluation    greedy pass@1, unbiased pass@k, maj@k, per-level breakdowns
  estep         E-step: sample and score into resumable shards (the `SOURCES` table)
  mstep         M-step: the objectives table (positives, per-step negatives, DPO)
  em            the outer loop, Algorithm 1, resumable (`EMConfig`, `run`)
  workdir       every path of a run; `unit`: skip, or compute and commit atomically
  fingerprint   what determines a run's results; a rerun of another config is refused
  errors        user errors (`ConfigError`, `DataError`, ...): one line, exit 2
  tasks         problems, the embedded arithmetic task, GSM8K / MATH from JSONL
  tokenizers    byte-level and Hugging Face tokenizers
  chat_template an instruct checkpoint's own chat template, rendered as transformers does
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "checkpoints": [
        "config_from_hf",
        "load_hf_checkpoint",
        "restore_params",
        "save_hf_checkpoint",
        "save_params",
    ],
    "model": [
        "ModelConfig",
        "Transformer",
        "abstract_params",
        "forward",
        "init_kv_cache",
        "init_params",
        "param_logical_axes",
        "param_shardings",
    ],
    "partitioning": ["LOGICAL_AXIS_RULES", "activation_sharding", "make_mesh"],
    "sampling": ["SampleOutput", "SamplingConfig", "generate", "make_sampler", "sample"],
    "losses": ["weighted_nll", "advantage_weights", "sequence_logprobs", "step_dpo_loss"],
    "steps": ["split_steps", "token_spans"],
    "step_values": ["estimate_q", "first_pit", "step_dpo_pairs", "step_negatives_dataset"],
    "filtering": ["Sample", "select", "select_with_stats"],
    "training": [
        "FitConfig",
        "OptimizerConfig",
        "PairBatch",
        "Preempted",
        "TrainBatch",
        "TrainState",
        "TrainingDiverged",
        "fit",
        "fit_dpo",
        "init_train_state",
        "install_preemption_handler",
        "make_batch",
        "make_optimizer",
        "make_train_step",
        "request_preemption",
        "train_state_shardings",
        "train_step",
    ],
    "evaluation": ["evaluate", "pass_at_k", "maj_at_k", "summarize"],
    "estep": ["Policy", "Scored", "generate_and_score", "prompt_ids"],
    "mstep": ["OBJECTIVES", "StepNegativesConfig"],
    "em": ["EMConfig", "Teacher", "final_params", "load_history"],
    "workdir": ["IterationPaths", "RunPaths"],
    "errors": ["CheckpointError", "ConfigError", "DataError", "UserError", "WorkdirConflict"],
    "rewards.status": ["Status"],
    "tasks": ["Problem", "Task"],
    "tokenizers": ["ByteTokenizer", "HFTokenizer"],
    "chat_template": ["ChatTemplate", "chat_prompt", "chat_task"],
    "lora": ["LoraConfig", "init_adapters", "load_peft", "merge", "save_peft"],
}
_NAME_TO_MODULE = {name: mod for mod, names in _EXPORTS.items() for name in names}
_SUBMODULES = {m for m in _EXPORTS if "." not in m} | {
    "experiment",
    "fingerprint",
    "metrics",
    "rewards",
    "stops",
}

__all__ = sorted(_NAME_TO_MODULE) + sorted(_SUBMODULES)


def __getattr__(name: str):
    if name in _NAME_TO_MODULE:
        value = getattr(importlib.import_module(f"rest_em.{_NAME_TO_MODULE[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"rest_em.{name}")
    else:
        raise AttributeError(f"module 'rest_em' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
