"""`make demo` until the EM loop lands: sample from a Llama-config model on this machine.

Builds a random-initialised Llama-shaped model (or imports a Hugging Face checkpoint
with --hf_checkpoint), samples `num_samples` continuations for a batch of prompts of
different lengths with the paper's E-step settings (top-k 40, temperature 0.7), and
prints throughput per batch size. Everything runs on CPU in about a minute.

  python -m rest_em.demo [--hf_checkpoint=DIR] [--batch_sizes=1,16,64] [--max_new_tokens=64]
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags
from tqdm import tqdm

from rest_em import checkpoints, model, sampling

_HF = flags.DEFINE_string("hf_checkpoint", None, "Hugging Face checkpoint dir (safetensors).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "16", "64"], "Prompt batch sizes.")
_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens generated per sample.")
_SAMPLES = flags.DEFINE_integer("num_samples", 4, "Samples per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")

DEMO_CONFIG = model.ModelConfig(
    vocab_size=32000, hidden_size=256, intermediate_size=768, num_layers=8, num_heads=8,
    num_kv_heads=4, max_seq_len=512)


def main(argv: list[str]) -> None:
    del argv
    if _HF.value:
        cfg, params = checkpoints.load_hf_checkpoint(_HF.value)
    else:
        cfg = DEMO_CONFIG
        params = model.init_params(cfg, jax.random.key(0))
    print(f"model: {model.count_params(params) / 1e6:.1f}M parameters, {cfg.num_layers} layers, "
          f"vocab {cfg.vocab_size}, on {jax.devices()[0].platform}")
    rng = np.random.default_rng(0)
    scfg = sampling.SamplingConfig(max_new_tokens=_NEW.value, num_samples=_SAMPLES.value,
                                   temperature=0.7, top_k=40, eos_id=None)
    rows = []
    for batch in tqdm([int(b) for b in _BATCHES.value], desc="batch sizes"):
        prompts = [rng.integers(1, cfg.vocab_size, int(rng.integers(8, 33))).tolist()
                   for _ in range(batch)]
        key = jax.random.key(_SEED.value)
        t0 = time.perf_counter()
        sampling.sample(params, prompts, model_cfg=cfg, cfg=scfg, key=key)  # compiles
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = sampling.sample(params, prompts, model_cfg=cfg, cfg=scfg, key=key)
        seconds = time.perf_counter() - t0
        tokens = int(out.lengths_BxN.sum())
        rows.append((batch, batch * _SAMPLES.value, tokens, compile_s, seconds, tokens / seconds))
    print("\n| prompts | rows | tokens | compile s | sample s | tokens/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.2f} | {r[5]:.0f} |")
    print("\nfirst sample of prompt 0:", out.tokens_BxNxT[0, 0, :16].tolist(), "...")


if __name__ == "__main__":
    app.run(main)
