"""Greedy decoding of an imported checkpoint equals Hugging Face `generate(do_sample=False)`."""

import jax
import numpy as np
import pytest
import torch

from hf_testing import make_hf_model
from rest_em import checkpoints, sampling

PROMPTS = [[5, 9, 17, 3, 44, 2, 8, 61], [7, 7, 30], [100, 1, 2, 3, 4, 5], [12]]
PAD = 0
NEW = 16


def _hf_model(family: str):
    extra = {"head_dim": 16} if family == "Qwen3" else {}  # Qwen3Config defaults it to 128
    if family.startswith("Gemma"):  # a window on some layers, shorter than the decode
        extra = dict(head_dim=16, sliding_window=6, query_pre_attn_scalar=16)
    return make_hf_model(family, hidden_size=64, num_hidden_layers=3, pad_token_id=PAD, **extra)


def _hf_greedy(model, eos):
    width = max(map(len, PROMPTS))
    ids = torch.full((len(PROMPTS), width), PAD)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(PROMPTS):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=NEW,
            eos_token_id=eos,
            pad_token_id=PAD,
        )
    return out[:, width:].numpy()


@pytest.mark.parametrize("family", ["Llama", "Qwen2", "Qwen3", "Gemma2", "Gemma3"])
def test_greedy_equals_transformers_generate(family, tmp_path):
    hf = _hf_model(family)
    hf.save_pretrained(tmp_path)
    cfg, params = checkpoints.load_hf_checkpoint(tmp_path)

    def ours(eos):
        scfg = sampling.SamplingConfig(max_new_tokens=NEW, temperature=0.0, eos_id=eos, pad_id=PAD)
        return sampling.sample(params, PROMPTS, model_cfg=cfg, cfg=scfg, key=jax.random.key(0))

    # Without EOS: every row runs the full length.
    want = _hf_greedy(hf, eos=None)
    got = ours(None)
    assert want.shape == (len(PROMPTS), NEW)
    np.testing.assert_array_equal(got.tokens_BxNxT[:, 0], want)
    assert len(np.unique(want)) > 8, "degenerate test model: greedy output is too repetitive"

    # With an EOS that row 1 emits mid-way: rows stop there and are padded, like HF's.
    eos = int(want[1, NEW // 2])
    want = _hf_greedy(hf, eos=eos)
    got = ours(eos)
    steps = want.shape[1]
    assert int(got.num_steps) == steps
    np.testing.assert_array_equal(got.tokens_BxNxT[:, 0, :steps], want)
    assert (got.tokens_BxNxT[:, 0, steps:] == PAD).all()
    for i in range(len(PROMPTS)):
        row = want[i].tolist()
        assert got.lengths_BxN[i, 0] == (row.index(eos) + 1 if eos in row else NEW)
