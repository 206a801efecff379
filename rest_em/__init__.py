"""rest_em: ReST^EM self-training of language models in JAX/Flax.

The public API, one module per concept:
  model         Llama-family decoder (`ModelConfig`, `Transformer`, `forward`, `init_params`)
  partitioning  meshes and the one logical-axis rules table
  checkpoints   Hugging Face safetensors import/export, orbax save/restore
  sampling      the pure, jitted, sharded sampler (`SamplingConfig`, `sample`, `generate`)
"""

from rest_em.checkpoints import (
    config_from_hf,
    load_hf_checkpoint,
    restore_params,
    save_hf_checkpoint,
    save_params,
)
from rest_em.model import (
    ModelConfig,
    Transformer,
    abstract_params,
    forward,
    init_kv_cache,
    init_params,
    param_logical_axes,
    param_shardings,
)
from rest_em.partitioning import LOGICAL_AXIS_RULES, activation_sharding, make_mesh
from rest_em.sampling import SampleOutput, SamplingConfig, generate, make_sampler, sample

__version__ = "0.1.0"

__all__ = [
    "LOGICAL_AXIS_RULES",
    "ModelConfig",
    "SampleOutput",
    "SamplingConfig",
    "Transformer",
    "abstract_params",
    "activation_sharding",
    "config_from_hf",
    "forward",
    "generate",
    "init_kv_cache",
    "init_params",
    "load_hf_checkpoint",
    "make_mesh",
    "make_sampler",
    "param_logical_axes",
    "param_shardings",
    "restore_params",
    "sample",
    "save_hf_checkpoint",
    "save_params",
]
