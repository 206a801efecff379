"""Tiny Hugging Face models for the tests (a helper module, not a test).

Imports neither jax nor rest_em, so a test module may set XLA_FLAGS before or after
importing it.
"""

import json
import pathlib

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
    """A tiny f32 HF causal LM (`family`: "Llama", "Qwen2", "Qwen3" or "Mistral"), in eval mode,
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


def write_tokenizer(directory: pathlib.Path, texts) -> int:
    """A byte-level BPE tokenizer.json + tokenizer_config.json; returns its vocab size."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # As Llama's tokenizer.json does: encode(..., add_special_tokens=True) prepends BOS.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    return tok.get_vocab_size()
