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
    """A tiny f32 HF causal LM (`family`: "Llama", "Qwen2", "Qwen3", "Mistral", "Gemma",
    "Gemma2" or "Gemma3"), in eval mode,
    with every parameter randomised so that a swapped or dropped tensor shows: norm
    scales around 1, all other weights and biases ~ N(0, 0.1^2).

    `overrides` replace fields of `SMALL` or add other config fields.
    """
    # Gemma 3's text-only model has a config class of its own (Gemma3Config is the VLM's).
    config_cls = getattr(
        transformers, {"Gemma3": "Gemma3TextConfig"}.get(family, f"{family}Config")
    )
    model_cls = getattr(transformers, f"{family}ForCausalLM")
    config = config_cls(**{**SMALL, **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    hf = model_cls(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn_like(p)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.1 * noise)
    return hf


def _byte_bpe(texts, special_tokens):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `texts` (vocabulary 400), the
    special tokens first, in order."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def write_tokenizer(directory: pathlib.Path, texts) -> int:
    """A byte-level BPE tokenizer.json + tokenizer_config.json; returns its vocab size."""
    from tokenizers import processors

    tok = _byte_bpe(texts, ["<unk>", "<s>", "</s>"])
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


# --- chat templates (instruct checkpoints) ---------------------------------------

CHATML = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
CHAT_FAMILIES = {
    # name: (template, special tokens, bos, eos, end of turn)
    "chatml": (
        CHATML,
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        None,
        "<|endoftext|>",
        "<|im_end|>",
    ),
    "llama3": (
        LLAMA3,
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|eot_id|>",
    ),
    "gemma": (
        GEMMA,
        ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        "<bos>",
        "<eos>",
        "<end_of_turn>",
    ),
}
TEXTS = ["What is 3 + 4 + 1 - 2?", "41 plus 7 is 48\n#### 48", "Q: 5*3-2\nA:"] * 20


def chat_ids(hf_tok, messages, **kwargs) -> list[int]:
    """transformers' `apply_chat_template(tokenize=True)` ids (transformers 5 returns a
    BatchEncoding, older versions a list), the generation prompt added by default."""
    kwargs.setdefault("add_generation_prompt", True)
    out = hf_tok.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def write_chat_tokenizer(path, family: str, texts=TEXTS, *, jinja_file: bool = False):
    """A byte-level BPE tokenizer with a chat-template family's special tokens and
    template (`CHAT_FAMILIES`), saved by transformers (so the files are the ones
    transformers itself reads: the template in tokenizer_config.json, or in
    chat_template.jinja with `jinja_file`); returns transformers' tokenizer of it."""
    template, special, bos, eos, _ = CHAT_FAMILIES[family]
    tok = _byte_bpe(texts, special)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, chat_template=template
    )
    fast.save_pretrained(path)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    jinja = path / "chat_template.jinja"
    if jinja_file and not jinja.exists():
        jinja.write_text(config.pop("chat_template"))
    elif not jinja_file and jinja.exists():  # the template inside tokenizer_config.json
        config["chat_template"] = jinja.read_text()
        jinja.unlink()
    config_file.write_text(json.dumps(config))
    return transformers.AutoTokenizer.from_pretrained(path)
