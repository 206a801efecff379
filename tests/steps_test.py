"""Step splitting (exact text, both modes, max_steps), prefixes, and steps -> token spans
for a byte tokenizer and a merging (BPE-like) tokenizer."""

import pytest

from rest_em import steps
from rest_em.tokenizers import ByteTokenizer

TEXTS = [
    "41+7=48\n48-19=29\n#### 29",
    "\n\na\n\n  \nb\n",
    "x",
    "  \n",
    "We have 3.5 apples. Then we eat one! Is it 2? Yes.\nSo 2.5 remain.  \n\n#### 2.5",
    'He said "stop." Then left.\r\nDone',
    "é ü. 日本.\n語",
]


@pytest.mark.parametrize("mode", steps.MODES)
@pytest.mark.parametrize("text", TEXTS)
def test_steps_keep_the_exact_text(text, mode):
    s = steps.split_steps(text, mode=mode)
    assert "".join(s) == text
    assert all(x for x in s)
    assert all(x.strip() for x in s) or len(s) == 1  # no whitespace-only step
    for m in (1, 2, 3):
        capped = steps.split_steps(text, mode=mode, max_steps=m)
        assert "".join(capped) == text and len(capped) == min(m, len(s))
        assert capped[: m - 1] == s[: m - 1]


def test_newline_mode():
    assert steps.split_steps("41+7=48\n48-19=29\n#### 29") == ["41+7=48\n", "48-19=29\n", "#### 29"]
    # Blank lines join the step before them; leading blank lines the first step.
    assert steps.split_steps("\n\na\n\n  \nb\n") == ["\n\na\n\n  \n", "b\n"]
    assert steps.split_steps("") == []
    assert steps.split_steps("a\nb\nc\nd\n", max_steps=2) == ["a\n", "b\nc\nd\n"]


def test_sentence_mode():
    text = "We have 3.5 apples. Then we eat one! Is it 2? Yes.\nSo 2.5 remain.  \n\n#### 2.5"
    assert steps.split_steps(text, mode="sentence") == [
        "We have 3.5 apples. ",
        "Then we eat one! ",
        "Is it 2? ",
        "Yes.\n",
        "So 2.5 remain.  \n\n",
        "#### 2.5",
    ]
    assert steps.split_steps('He said "stop." Then left.', mode="sentence") == [
        'He said "stop." ',
        "Then left.",
    ]


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        steps.split_steps("a", mode="words")
    with pytest.raises(ValueError, match="max_steps"):
        steps.split_steps("a", max_steps=0)


def test_prefixes():
    assert steps.prefixes(["a\n", "b\n", "c"]) == ["", "a\n", "a\nb\n", "a\nb\nc"]
    assert steps.prefixes([]) == [""]


@pytest.mark.parametrize("text", [t for t in TEXTS if t])
def test_token_spans_with_bytes(text):
    tok = ByteTokenizer()
    for mode in steps.MODES:
        s = steps.split_steps(text, mode=mode)
        ids = tok.encode(text)
        spans = steps.token_spans(s, ids, tok.decode)
        assert spans[0][0] == 0 and spans[-1][1] == len(ids)
        for (_, b), (c, _) in zip(spans, spans[1:]):
            assert b == c
        for step, (a, b) in zip(s, spans):
            # Bytes map one to one, so each step's tokens decode to the step exactly.
            assert tok.decode(ids[a:b]) == step


class MergingTokenizer:
    """Greedy longest match over a small vocabulary with multi-character tokens that
    straddle step boundaries ("\\nB" glues a newline to the next line's first letter,
    " Th" a sentence's trailing space to the next sentence)."""

    vocab = ["\nB", " Th", "en", "ab", "\n", ".", " ", "A", "B", "T", "h", "e", "n", "a", "b"]

    def encode(self, text):
        ids, i = [], 0
        while i < len(text):
            j = max(
                (v for v in range(len(self.vocab)) if text.startswith(self.vocab[v], i)),
                key=lambda v: len(self.vocab[v]),
            )
            ids.append(j)
            i += len(self.vocab[j])
        return ids

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


def test_token_spans_assign_a_straddling_token_to_the_step_of_its_last_character():
    tok = MergingTokenizer()
    text = "ab\nBa. Then.\nab"
    s = steps.split_steps(text, mode="sentence")
    assert s == ["ab\n", "Ba. ", "Then.\n", "ab"]
    ids = tok.encode(text)
    assert [tok.vocab[i] for i in ids] == ["ab", "\nB", "a", ".", " Th", "en", ".", "\n", "ab"]
    spans = steps.token_spans(s, ids, tok.decode)
    # "\nB" ends in step 2, " Th" in step 3: step 1 keeps only "ab".
    assert spans == [(0, 1), (1, 4), (4, 8), (8, 9)]


def test_token_spans_empty_span_and_errors():
    tok = MergingTokenizer()
    # Step 1 is "\n" alone, swallowed by the token "\nB" that ends in step 2.
    s = ["\n", "Ba"]
    ids = tok.encode("".join(s))
    assert steps.token_spans(s, ids, tok.decode) == [(0, 0), (0, 2)]
    with pytest.raises(ValueError, match="round-trip"):
        steps.token_spans(["ab"], [0, 0], tok.decode)
