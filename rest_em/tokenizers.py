"""Tokenizers: text <-> ids for prompts, completions and the sampler's EOS.

`ByteTokenizer` needs no files (the embedded task's tiny models); `HFTokenizer` reads a
Hugging Face `tokenizer.json` with the `tokenizers` library (imported lazily).
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Sequence
from typing import Protocol

from rest_em.errors import CheckpointError


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    bos_id: int | None
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted by 3: 0 = pad, 1 = EOS, 2 = unknown; no BOS. Vocabulary 259.

    The same ids as `seqio.ByteVocabulary`, so seqio pipelines and the loop agree.
    """

    pad_id, eos_id, unk_id = 0, 1, 2
    bos_id = None
    offset = 3
    vocab_size = 256 + offset

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def token_bytes(self) -> list[bytes]:
        """Each id's bytes inside a decoded text (rest_em.stops): special ids none."""
        return [b""] * self.offset + [bytes([i]) for i in range(256)]

    def decode(self, ids: Sequence[int]) -> str:
        """Stops at the first EOS; pad/BOS are dropped; invalid UTF-8 is replaced."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= self.offset:
                out.append(i - self.offset)
        return out.decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (in a checkpoint directory) via `tokenizers`."""

    def __init__(
        self,
        path: str | pathlib.Path,
        *,
        eos_token: str | None = None,
        pad_id: int | None = None,
        chat: bool = False,
    ):
        """chat: prompts are rendered by the checkpoint's chat template
        (`rest_em.chat_template`): EOS is the template's end-of-turn token (unless
        `eos_token` is given) and no BOS id is prepended (the template writes its BOS)."""
        import tokenizers  # lazy: only users of real checkpoints need it

        path = pathlib.Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.exists():
            raise CheckpointError(
                f"{file}: no tokenizer.json (a Hugging Face fast tokenizer "
                "file); the checkpoint directory is incomplete"
            )
        self._tok = tokenizers.Tokenizer.from_file(str(file))
        self.vocab_size = self._tok.get_vocab_size()
        config = _read_json(file.parent / "tokenizer_config.json")
        if chat and eos_token is None:
            from rest_em.chat_template import ChatTemplate

            eos_token = ChatTemplate.from_checkpoint(file.parent).end_of_turn
        eos_token = eos_token or config.get("eos_token")
        if isinstance(eos_token, dict):
            eos_token = eos_token.get("content")
        bos_token = config.get("bos_token")
        if isinstance(bos_token, dict):
            bos_token = bos_token.get("content")
        if eos_token is None or self._tok.token_to_id(eos_token) is None:
            raise CheckpointError(
                f"{file}: cannot find the EOS token ({eos_token!r}); pass eos_token="
            )
        self.eos_id = self._tok.token_to_id(eos_token)
        self.bos_id = self._tok.token_to_id(bos_token) if bos_token and not chat else None
        self.pad_id = self.eos_id if pad_id is None else pad_id

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def token_bytes(self) -> list[bytes]:
        """Each id's bytes inside a decoded text (rest_em.stops): byte-level BPE pieces
        (GPT-2, Llama 3, Qwen) through the byte alphabet; SentencePiece pieces (Llama 2,
        Mistral, Gemma) with "\u2581" as a space and "<0xNN>" byte fallbacks; special
        tokens none. (A SentencePiece decode drops the text's first space; a stop is
        then found one byte early at worst, never missed.)"""
        spec = json.loads(self._tok.to_str())
        decoder = spec.get("decoder") or {}
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders") or []}
        special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        alphabet = {c: b for b, c in _gpt2_bytes_to_unicode().items()}
        out = []
        for i in range(self.vocab_size):
            piece = self._tok.id_to_token(i)
            if piece is None or i in special:
                out.append(b"")
            elif "ByteLevel" in kinds:
                out.append(bytes(alphabet[c] for c in piece if c in alphabet))
            elif m := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece):
                out.append(bytes([int(m[1], 16)]))
            else:
                out.append(piece.replace("\u2581", " ").encode("utf-8"))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self._tok.decode(ids, skip_special_tokens=True)


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from bytes to the printable characters byte-level BPE pieces use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = [b for b in range(256) if b not in printable]
    return {
        **{b: chr(b) for b in printable},
        **{b: chr(256 + k) for k, b in enumerate(extra)},
    }


def _read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
