"""Stop sequences: the byte automaton and its token table against a plain text search
(stops spanning several tokens included), `cut`, and the sampler stopping a row the
step its text first contains a stop, with the same tokens as without stops until then."""

import jax
import numpy as np
import pytest

from rest_em import model as model_lib
from rest_em import sampling, stops, tokenizers


def _first_stop(pieces, patterns):
    """Index of the token after which the text first contains a pattern (brute force)."""
    text = b""
    for i, piece in enumerate(pieces):
        text += piece
        if any(p in text for p in patterns):
            return i
    return None


@pytest.mark.parametrize("seed", range(5))
def test_token_table_agrees_with_a_text_search(seed):
    rng = np.random.default_rng(seed)
    alphabet = b"ab\nQ:"
    pick = [rng.choice(list(alphabet), size=rng.integers(1, 4)).tolist() for _ in range(40)]
    vocab = [b""] + [bytes(p) for p in pick]
    patterns = ["\nQ:", "aba", "b\nb"]
    table = stops.token_table(patterns, vocab)
    stopped = table.shape[0] - 1
    assert (table[stopped] == stopped).all()  # absorbing
    encoded = [p.encode() for p in patterns]
    found = 0
    for _ in range(300):
        ids = rng.integers(0, len(vocab), size=12)
        state, first = 0, None
        for i, t in enumerate(ids):
            state = table[state, t]
            if state == stopped and first is None:
                first = i
        assert first == _first_stop([vocab[t] for t in ids], encoded)
        found += first is not None
    assert 30 < found < 290  # both outcomes were exercised


def test_overlapping_and_nested_patterns():
    vocab = [bytes([c]) for c in b"abc"]
    table = stops.token_table(["abc", "bcb"], vocab)
    stopped = table.shape[0] - 1

    def run(text):
        state = 0
        for ch in text.encode():
            state = table[state, b"abc".index(ch)]
        return state == stopped

    assert run("aabc") and run("abcb") and run("xbcb".replace("x", "a"))
    assert not run("ababab") and not run("acbc")


def test_cut_and_bad_stops():
    assert stops.cut("x = 1\ndef g():\n", ["\ndef", "\nclass"]) == "x = 1"
    assert stops.cut("A: 4\nQuestion: next", ["\nQuestion:"]) == "A: 4"
    assert stops.cut("no stop here", ["\nQ"]) == "no stop here"
    with pytest.raises(ValueError, match="non-empty"):
        stops.automaton([""])


def test_byte_tokenizer_token_bytes_decode_as_the_tokenizer_does():
    tok = tokenizers.ByteTokenizer()
    pieces = tok.token_bytes()
    ids = tok.encode("héllo\nQuestion: 3")
    assert b"".join(pieces[i] for i in ids).decode() == tok.decode(ids)
    assert len(pieces) == tok.vocab_size and pieces[tok.eos_id] == b""


CFG = model_lib.ModelConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, max_seq_len=64)  # fmt: skip


def test_sampler_stops_at_the_first_stop_and_keeps_the_tokens():
    tok = tokenizers.ByteTokenizer()
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = sampling.SamplingConfig(max_new_tokens=24, num_samples=8, temperature=1.0, top_k=0,
                                  eos_id=tok.eos_id, pad_id=tok.pad_id)  # fmt: skip
    prompts = [tok.encode("Q: 1+2"), tok.encode("Q: 30")]
    kwargs = dict(model_cfg=CFG, cfg=cfg, key=jax.random.key(1))
    free = sampling.sample(params, prompts, **kwargs)
    # Stops made of two bytes that some samples produce: each spans two tokens.
    texts = [bytes(t - 3 for t in row[:n] if t >= 3) for row, n in
             zip(free.tokens_BxNxT.reshape(-1, 24), free.lengths_BxN.reshape(-1))]  # fmt: skip
    pairs = {t[k : k + 2] for t in texts[::3] for k in range(3, len(t) - 1)}
    encoded = sorted(p for p in pairs if max(p) < 128)[:3]  # ASCII: the same bytes in UTF-8
    assert encoded
    table = stops.token_table([p.decode() for p in encoded], tok.token_bytes())
    cut = sampling.sample(params, prompts, stop_table=table, **kwargs)
    pieces = tok.token_bytes()
    stopped_rows = 0
    for b in range(2):
        for j in range(8):
            n_free, n_cut = free.lengths_BxN[b, j], cut.lengths_BxN[b, j]
            row = free.tokens_BxNxT[b, j]
            first = _first_stop([pieces[t] for t in row[:n_free]], encoded)
            assert n_cut == (n_free if first is None else first + 1)
            np.testing.assert_array_equal(cut.tokens_BxNxT[b, j, :n_cut], row[:n_cut])
            assert (cut.tokens_BxNxT[b, j, n_cut:] == tok.pad_id).all()
            stopped_rows += first is not None
    assert stopped_rows > 0


def test_sampler_without_stop_table_is_unchanged():
    """A table that can never match changes nothing (the no-stop path is the old one)."""
    tok = tokenizers.ByteTokenizer()
    params = model_lib.init_params(CFG, jax.random.key(0))
    cfg = sampling.SamplingConfig(max_new_tokens=12, num_samples=4, temperature=1.0,
                                  eos_id=tok.eos_id, pad_id=tok.pad_id)  # fmt: skip
    kwargs = dict(model_cfg=CFG, cfg=cfg, key=jax.random.key(3))
    prompts = [tok.encode("Q: 7")]
    a = sampling.sample(params, prompts, **kwargs)
    never = stops.token_table(["\x00\x00\x00\x00"], [b"\x01"] * 3 + [b"x"] * 256)
    b = sampling.sample(params, prompts, stop_table=never, **kwargs)
    np.testing.assert_array_equal(a.tokens_BxNxT, b.tokens_BxNxT)
    np.testing.assert_array_equal(a.lengths_BxN, b.lengths_BxN)
    np.testing.assert_allclose(a.logprobs_BxNxT, b.logprobs_BxNxT)


def test_estep_stores_completions_cut_at_the_task_stop():
    """generate_and_score with a task's stop sequences: each completion is the free-running
    one cut before its first stop, and is scored as such."""
    import dataclasses

    from rest_em import estep
    from rest_em.tasks import arithmetic

    tok = tokenizers.ByteTokenizer()
    params = model_lib.init_params(CFG, jax.random.key(0))
    task = arithmetic.make_task(num_train=4, num_sft=4, num_val=2, num_test=2)
    problems = task.load("train")[:3]
    cfg = sampling.SamplingConfig(max_new_tokens=16, num_samples=4, temperature=1.0, top_k=0,
                                  eos_id=tok.eos_id, pad_id=tok.pad_id)  # fmt: skip
    kwargs = dict(tokenizer=tok, model_cfg=CFG, sampling_cfg=cfg, key=jax.random.key(2),
                  chunk_size=8)  # fmt: skip
    free = estep.generate_and_score(params, problems, task=task, **kwargs)
    texts = [c for s in free for c in s.completions]
    pairs = {t[k : k + 2] for t in texts for k in range(1, len(t) - 1)}
    stop = sorted(p for p in pairs if p.isascii() and p.isprintable())[0]
    stopping = dataclasses.replace(task, stop_sequences=(stop,))
    cut = estep.generate_and_score(params, problems, task=stopping, **kwargs)
    for f, c, p in zip(free, cut, problems):
        assert c.completions == [stops.cut(t, (stop,)) for t in f.completions]
        assert list(c.statuses) == list(task.score(c.completions, [p] * len(c.completions)))
    assert any(stop in t for t in texts)


def test_sentencepiece_token_bytes_concatenate_to_the_decoded_text(tmp_path):
    """A Llama-2-style tokenizer.json (Metaspace pieces with "\u2581", <0xNN> byte
    fallback, a decoder that strips the first space): token_bytes joined give the decoded
    text (after that first space), and the stop table finds a stop spanning pieces."""
    import json

    import tokenizers as hf_lib
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    tok = hf_lib.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", "merged_with_next")
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    text = "Question: how many eggs?\nAnswer: 16 - 3 = 13 eggs. #### 13\n" * 20
    tok.train_from_iterator([text, "def f(x):\n    return x + 1\n"], trainer=trainer)
    # As in Llama 2's tokenizer.json: the 256 <0xNN> pieces are vocabulary, ids 3-258.
    trained = json.loads(tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok.model = models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    hf = tokenizers.HFTokenizer(tmp_path)
    pieces = hf.token_bytes()
    assert pieces[hf.eos_id] == b"" and pieces[3 + 0x41] == b"A"  # <0x41>
    sample = "Answer: 16 eggs, é ü 日本\nQuestion: next"
    ids = hf.encode(sample)
    assert any(3 <= i < 3 + 256 for i in ids)  # the non-ASCII text used byte fallback
    joined = b"".join(pieces[i] for i in ids).decode()
    assert joined.removeprefix(" ") == hf.decode(ids) == sample
    rng = np.random.default_rng(0)
    plain = [i for i in range(3 + 256, hf.vocab_size)]  # no byte pieces: always valid text
    for _ in range(20):
        ids = [plain[j] for j in rng.integers(0, len(plain), size=25)]
        joined = b"".join(pieces[i] for i in ids).decode()
        assert joined.removeprefix(" ") == hf.decode(ids)
    table = stops.token_table(["\nQuestion:"], pieces)
    state = 0
    for i in hf.encode(sample):
        state = table[state, i]
    assert state == table.shape[0] - 1
