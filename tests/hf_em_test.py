"""GSM8K through an imported Hugging Face checkpoint: gsm8k.gin end to end.

A tiny random `LlamaForCausalLM` saved with `save_pretrained` (safetensors) plus a real
byte-level BPE `tokenizer.json` trained offline with `tokenizers` on GSM8K text, run
through the launcher for one ReST^EM iteration. A random model solves nothing, so this
also covers the loop's zero-positive path (the M-step keeps its starting model).
"""

import gzip
import json
import subprocess
import sys

import pytest

from helpers import REPO, env

GSM8K = REPO / "tests" / "testdata" / "gsm8k_test.jsonl.gz"
NUM_TRAIN, NUM_TEST, NUM_SHOTS, VAL_SIZE, NUM_SAMPLES = 40, 16, 1, 4, 2


def _rows():
    with gzip.open(GSM8K, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f][: NUM_TRAIN + NUM_TEST]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Llama checkpoint dir whose vocabulary is the tokenizer's."""
    import hf_testing

    directory = tmp_path_factory.mktemp("hf_llama")
    rows = _rows()
    vocab = hf_testing.write_tokenizer(
        directory, [r["question"] + "\n" + r["answer"] for r in rows]
    )
    bos, eos = 1, 2  # the special tokens' ids, in training order
    hf = hf_testing.make_hf_model(
        "Llama", vocab_size=vocab, max_position_embeddings=1024, bos_token_id=bos, eos_token_id=eos
    )
    hf.save_pretrained(directory, safe_serialization=True)
    assert list(directory.glob("*.safetensors"))
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gsm8k")
    rows = _rows()
    train, test = directory / "train.jsonl", directory / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:NUM_TRAIN]))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[NUM_TRAIN:]))
    return train, test


def test_tokenizer_round_trips_and_finds_special_tokens(checkpoint):
    from rest_em import experiment

    tok = experiment.hf_tokenizer(checkpoint_dir=str(checkpoint))
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.pad_id == tok.eos_id
    text = "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n#### 18"
    ids = tok.encode(text)
    assert tok.bos_id not in ids and tok.eos_id not in ids  # no special tokens from encode
    assert tok.decode(ids) == text
    assert tok.decode(ids + [tok.eos_id] + ids) == text  # decoding stops at EOS
    cfg = experiment.hf_model_config(checkpoint_dir=str(checkpoint))
    assert cfg.vocab_size == tok.vocab_size


def test_token_bytes_concatenate_to_the_decoded_text(checkpoint):
    """The stop automaton sees each token as its bytes inside a decoded text (byte-level
    BPE pieces mapped back through GPT-2's byte alphabet)."""
    import numpy as np

    from rest_em import experiment, stops

    tok = experiment.hf_tokenizer(checkpoint_dir=str(checkpoint))
    pieces = tok.token_bytes()
    assert len(pieces) == tok.vocab_size and pieces[tok.eos_id] == pieces[tok.bos_id] == b""
    text = "Janet's ducks lay 16 eggs.\nQuestion: é? #### 18"
    ids = tok.encode(text)
    assert b"".join(pieces[i] for i in ids).decode() == text
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = [int(i) for i in rng.integers(3, tok.vocab_size, size=30)]
        joined = b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
        assert joined == tok.decode(ids)
    table = stops.token_table(["\nQuestion:"], pieces)
    state = 0
    for i in tok.encode("A: 4\nQuestion: next"):
        state = table[state, i]
    assert state == table.shape[0] - 1


def test_gsm8k_scoring_marks_reference_solutions_correct(checkpoint, data):
    from rest_em import em, experiment
    from rest_em.tasks import jsonl_tasks

    train, test = data
    task = jsonl_tasks.gsm8k_task(
        train_file=str(train), test_file=str(test), num_shots=NUM_SHOTS, val_size=VAL_SIZE
    )
    tok = experiment.hf_tokenizer(checkpoint_dir=str(checkpoint))
    probs = task.load("test")
    assert len(probs) == NUM_TEST
    # The completion the sampler would produce for a perfect model: the reference, decoded
    # from its token ids, possibly rambling on into a next question.
    refs = [tok.decode(tok.encode(task.target(p))) for p in probs]
    assert task.score(refs, probs) == ["correct"] * len(probs)
    assert task.score([r + "\nQuestion: what is 1+1?\nAnswer: #### 2" for r in refs], probs) == [
        "correct"
    ] * len(probs)
    wrong = [f"The answer is\n#### {int(p.answer) + 1}" for p in probs]
    assert task.score(wrong, probs) == ["incorrect"] * len(probs)
    assert task.extract(refs[0]) == probs[0].answer
    # Prompt + reference completion tokenize to the few-shot prefix's style: one space
    # after "Answer:", and the prompt starts with BOS.
    ids = em.prompt_ids(task, tok, probs[0])
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.decode(ids[1:] + tok.encode(task.target(probs[0]))).endswith(
        "Answer: " + probs[0].solution.strip()
    )


def _run_gin(gin_file, checkpoint, data, workdir, **bindings):
    """One tiny ReST^EM iteration of a GSM8K config through the launcher; returns the
    finished process and the run's metrics rows."""
    train, test = data
    overrides = {
        "CHECKPOINT": f"'{checkpoint}'",
        "TRAIN_FILE": f"'{train}'",
        "TEST_FILE": f"'{test}'",
        "gsm8k_task.val_size": VAL_SIZE,
        "EMConfig.num_iterations": 1,
        "EMConfig.num_samples": NUM_SAMPLES,
        "EMConfig.max_new_tokens": 16,
        "EMConfig.chunk_size": 8,
        "EMConfig.eval_num_samples": 2,
        "EMConfig.eval_ks": "(1, 2)",
        "EMConfig.train_eval_size": 8,
        "FitConfig.batch_size": 4,
        "FitConfig.micro_batches": 1,
        "FitConfig.num_steps": 2,
        "FitConfig.eval_every": 2,
        "FitConfig.max_length": 512,
        **bindings,
    }
    cmd = [
        sys.executable,
        "-m",
        "rest_em.main",
        f"--gin_file={gin_file}",
        f"--workdir={workdir}",
        *(f"--gin.{k}={v}" for k, v in overrides.items()),
    ]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-6000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return proc, rows


def test_gsm8k_gin_end_to_end(checkpoint, data, tmp_path):
    workdir = tmp_path / "run"
    proc, rows = _run_gin(
        "gsm8k.gin", checkpoint, data, workdir, **{"gsm8k_task.num_shots": NUM_SHOTS}
    )
    assert [r["iteration"] for r in rows] == [0, 1]
    num_train_used = NUM_TRAIN - NUM_SHOTS - VAL_SIZE
    for r in rows:
        for key in (
            "train/greedy_pass@1",
            "test/greedy_pass@1",
            "test/pass@1",
            "test/pass@2",
            "test/maj@2",
        ):
            assert 0.0 <= r[key] <= 1.0, key
    it1 = rows[1]
    assert it1["num_problems"] == num_train_used
    assert it1["num_samples"] == num_train_used * NUM_SAMPLES
    assert 0 <= it1["num_selected"] <= it1["num_correct"] <= it1["num_samples"]
    manifest = json.loads((workdir / "iter_001/samples/manifest.json").read_text())
    assert manifest["num_problems"] == num_train_used
    samples = [
        json.loads(line)
        for shard in sorted((workdir / "iter_001/samples").glob("shard_*.jsonl"))
        for line in shard.read_text().splitlines()
    ]
    assert len(samples) == num_train_used * NUM_SAMPLES
    assert all(s["status"] in ("correct", "incorrect", "no_answer") for s in samples)
    assert "test/greedy_pass@1" in proc.stdout  # the final table
    # A random model solves nothing: the zero-positive path keeps the starting model.
    assert it1["num_correct"] == it1["num_selected"] == it1["num_train_steps"] == 0
    assert "no correct samples" in proc.stderr


def test_m_step_on_hf_tokenized_samples(checkpoint, data, tmp_path):
    """The positive path a random model never reaches: a checker that accepts every
    sample, so the M-step trains on decoded-then-re-encoded HF-tokenized completions.
    Some 1-shot prompts (~500 tokens with this small vocabulary) plus their sample exceed
    max_length=512: those are dropped and counted, not a crash in the middle of fit()."""
    import dataclasses
    import functools

    from rest_em import em, experiment, training
    from rest_em.tasks import jsonl_tasks

    train, test = data
    task = jsonl_tasks.gsm8k_task(
        train_file=str(train), test_file=str(test), num_shots=NUM_SHOTS, val_size=VAL_SIZE
    )
    task = dataclasses.replace(task, score=lambda comps, probs: ["correct"] * len(comps))
    cfg = em.EMConfig(
        num_iterations=1,
        num_samples=NUM_SAMPLES,
        max_new_tokens=16,
        chunk_size=8,
        eval_num_samples=2,
        eval_ks=(1, 2),
        train_eval_size=8,
        max_per_problem=1,
        fit=training.FitConfig(batch_size=4, num_steps=2, eval_every=2, max_length=512),
    )
    tok = experiment.hf_tokenizer(checkpoint_dir=str(checkpoint))
    history = experiment.run(
        workdir=str(tmp_path),
        task=task,
        tokenizer=tok,
        model=experiment.hf_model_config(checkpoint_dir=str(checkpoint)),
        base=functools.partial(experiment.hf_base, checkpoint_dir=str(checkpoint)),
        em_config=cfg,
    )
    num_train_used = NUM_TRAIN - NUM_SHOTS - VAL_SIZE
    it1 = history[1]
    assert it1["num_correct"] == it1["num_samples"] == num_train_used * NUM_SAMPLES
    assert it1["num_selected"] == it1["num_problems_solved"] == num_train_used
    assert it1["num_train_steps"] == 2 and it1["val/greedy_pass@1"] == 1.0
    by_id = {p.problem_id: p for p in task.load("train")}
    selected = [json.loads(line) for line in (tmp_path / "iter_001/selected.jsonl").open()]
    assert all(s["prompt"] == task.prompt(by_id[s["problem_id"]]) for s in selected)
    sizes = [
        len(em.prompt_ids(task, tok, by_id[s["problem_id"]])) + len(tok.encode(s["completion"])) + 1
        for s in selected
    ]
    too_long = sum(n > 512 + 1 for n in sizes)
    assert 0 < too_long < len(selected) and it1["num_too_long"] == too_long
    assert all(history[i]["test/greedy_pass@1"] == 1.0 for i in (0, 1))


@pytest.mark.parametrize(
    "family, chat, system",
    [
        ("Llama", "chatml", "Solve it."),
        # Gemma's template refuses a system turn: the config's is turned off by gin.
        ("Gemma2", "gemma", None),
    ],
)
def test_gsm8k_instruct_gin_end_to_end(data, tmp_path, family, chat, system):
    """gsm8k_instruct.gin on a tiny random instruct checkpoint (a Llama with ChatML's
    template, a Gemma 2 with Gemma's): prompts are the template's user turn (ids equal
    transformers'), the tokenizer's EOS (where samples stop) is the template's end of
    turn, and one iteration runs through the launcher."""
    import hf_testing
    from rest_em import estep, experiment
    from rest_em.tasks import jsonl_tasks

    checkpoint = tmp_path / "instruct"
    rows = _rows()
    hf_tok = hf_testing.write_chat_tokenizer(
        checkpoint, chat, [r["question"] + "\n" + r["answer"] for r in rows]
    )
    end_of_turn = hf_testing.CHAT_FAMILIES[chat][-1]
    hf = hf_testing.make_hf_model(
        family,
        vocab_size=len(hf_tok),
        max_position_embeddings=1024,
        eos_token_id=hf_tok.convert_tokens_to_ids(end_of_turn),
    )
    hf.save_pretrained(checkpoint, safe_serialization=True)
    train, test = data
    task = experiment.chat_task(
        task=jsonl_tasks.gsm8k_task(
            train_file=str(train), test_file=str(test), num_shots=0, val_size=VAL_SIZE
        ),
        checkpoint_dir=str(checkpoint),
        system=system,
    )
    tok = experiment.hf_tokenizer(checkpoint_dir=str(checkpoint), chat=True)
    assert tok.eos_id == hf_tok.convert_tokens_to_ids(end_of_turn) and tok.bos_id is None
    problem = task.load("test")[0]
    plain = jsonl_tasks.gsm8k_task(
        train_file=str(train), test_file=str(test), num_shots=0, val_size=VAL_SIZE
    )
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": plain.prompt(problem)})
    want = hf_testing.chat_ids(hf_tok, messages)
    assert estep.prompt_ids(task, tok, problem) == want

    bindings = {} if system is not None else {"chat_task.system": None}
    _, rows = _run_gin("gsm8k_instruct.gin", checkpoint, data, tmp_path / "run", **bindings)
    assert [r["iteration"] for r in rows] == [0, 1]
    num_train_used = NUM_TRAIN - VAL_SIZE  # zero-shot: no exemplars taken from train
    assert rows[1]["num_samples"] == num_train_used * NUM_SAMPLES
