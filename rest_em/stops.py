"""Stop sequences decided on the device, one gather per decode step.

A task says where a completion ends (a few-shot separator such as "\\nQuestion:",
HumanEval's "\\ndef"). Cutting only when scoring lets decoding run on to
`max_new_tokens` and the M-step train on the continuation, so the sampler itself stops
a row the step its text first contains a stop, even one spread over several tokens.

The stop strings (as UTF-8 bytes) become one byte automaton (Aho-Corasick: its state is
the longest suffix of the text so far that is a prefix of some stop; one absorbing
state, the last, means "a stop occurred"). Running each token's bytes through it from
every state gives a table `next_SxV[state, token]`; the sampler carries one state per
row. Legend: S automaton states, V vocabulary, R rows (prompts x samples).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def automaton(stops: Sequence[str]) -> np.ndarray:
    """`delta_Sx256[state, byte] -> state` for the stop strings; state 0 is the start,
    state S-1 the absorbing "matched" state."""
    patterns = [s.encode("utf-8") for s in stops]
    if not patterns or any(not p for p in patterns):
        raise ValueError(f"stop sequences must be non-empty strings, got {list(stops)!r}")
    trie: list[dict[int, int]] = [{}]
    final: set[int] = set()
    for pat in patterns:
        node = 0
        for byte in pat:
            if byte not in trie[node]:
                trie.append({})
                trie[node][byte] = len(trie) - 1
            node = trie[node][byte]
        final.add(node)
    # Breadth-first: each state's transitions from its failure state's (Aho-Corasick).
    n = len(trie)
    delta = np.zeros((n, 256), np.int64)
    matched = np.zeros(n, bool)
    order, fail = [0], {0: 0}
    for i in order:
        matched[i] |= i in final or (i != 0 and matched[fail[i]])
        for byte in range(256):
            child = trie[i].get(byte)
            if child is None:
                delta[i, byte] = delta[fail[i], byte] if i else 0
            else:
                delta[i, byte] = child
                fail[child] = delta[fail[i], byte] if i else 0
                order.append(child)
    # Collapse every matched state into one absorbing state, numbered last.
    keep = [i for i in range(n) if not matched[i]]
    index = np.full(n, len(keep), np.int64)
    index[keep] = np.arange(len(keep))
    out = np.full((len(keep) + 1, 256), len(keep), np.int64)
    out[: len(keep)] = index[delta[keep]]
    return out


def token_table(stops: Sequence[str], token_bytes: Sequence[bytes]) -> np.ndarray:
    """`next_SxV[state, token] -> state` (int32): the automaton run over each token's
    bytes, from every state (vectorised over tokens, one byte position at a time)."""
    delta = automaton(stops)
    s, v = delta.shape[0], len(token_bytes)
    lengths = np.array([len(b) for b in token_bytes], np.int64)
    width = int(lengths.max()) if v else 0
    bytes_VxL = np.zeros((v, width), np.int64)
    for i, b in enumerate(token_bytes):
        bytes_VxL[i, : len(b)] = np.frombuffer(b, np.uint8)
    state_SxV = np.broadcast_to(np.arange(s)[:, None], (s, v)).copy()
    for j in range(width):
        live = lengths > j
        state_SxV[:, live] = delta[state_SxV[:, live], bytes_VxL[live, j][None, :]]
    return state_SxV.astype(np.int32)


def cut(text: str, stops: Sequence[str]) -> str:
    """`text` up to (without) its first stop sequence; all of it if there is none."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text


def token_bytes(tokenizer) -> list[bytes]:
    """Each token id's text as UTF-8 bytes, as it appears inside a decoded sequence
    (special tokens: empty). The tokenizer's own `token_bytes` if it has one."""
    if hasattr(tokenizer, "token_bytes"):
        return list(tokenizer.token_bytes())
    return [tokenizer.decode([i]).encode("utf-8") for i in range(tokenizer.vocab_size)]


__all__ = ["automaton", "cut", "token_bytes", "token_table"]
