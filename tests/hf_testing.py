"""Tiny Hugging Face models for the tests (a helper module, not a test).

Imports neither jax nor rest_em, so a test module may set XLA_FLAGS before or after
importing it.
"""

import torch
import transformers

# A tiny Llama-family shape in which every dimension splits over a 2x2x2 mesh.
SMALL = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def make_hf_model(
    family: str = "Llama", seed: int = 0, **overrides
) -> transformers.PreTrainedModel:
    """A tiny f32 HF causal LM (`family` is "Llama", "Qwen2" or "Mistral"), in eval mode,
    with every parameter randomised so that a swapped or dropped tensor shows: norm
    scales around 1, all other weights and biases ~ N(0, 0.1^2).

    `overrides` replace fields of `SMALL` or add other config fields.
    """
    config_cls = getattr(transformers, f"{family}Config")
    model_cls = getattr(transformers, f"{family}ForCausalLM")
    config = config_cls(**{**SMALL, **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    hf = model_cls(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn_like(p)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.1 * noise)
    return hf
