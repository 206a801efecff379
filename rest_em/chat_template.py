"""Instruct checkpoints' own prompt format: the `chat_template` a checkpoint ships,
rendered with jinja2 the way transformers' `apply_chat_template` renders it, so the model
is prompted in rest_em with exactly the text it was tuned on.

The template is untrusted code from a model hub: it runs in jinja2's immutable sandbox
(as in transformers), with the same helpers (`raise_exception`, `tojson`,
`strftime_now`) and the tokenizer's special tokens (`bos_token`, `eos_token`, ...) as
variables. `chat_task` turns any task's prompt into one user turn (plus an optional
system turn) followed by the assistant's generation prompt; the completion then ends at
the template's end-of-turn token (`ChatTemplate.end_of_turn`, found by rendering a
reply), which the tokenizer must use as its EOS; `HFTokenizer(path, chat=True)` does,
and adds no BOS of its own (the template writes it).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from rest_em.errors import CheckpointError
from rest_em.tasks.problems import Problem, Task

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")
_REPLY = "\x00rest_em reply\x00"  # a reply no template alters, to find what follows it


@functools.lru_cache(maxsize=16)
def _compile(source: str):
    """The template in transformers' environment: sandboxed, trim_blocks, lstrip_blocks;
    compiled once per template text (a task renders it for every problem)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; transformers' does not.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A chat template and the special tokens it sees (`{"bos_token": "<s>", ...}`)."""

    source: str
    special_tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)
    added_tokens: tuple[str, ...] = ()  # the tokenizer's special tokens (end-of-turn search)

    @classmethod
    def from_checkpoint(cls, path: str | pathlib.Path, name: str = "default") -> ChatTemplate:
        """The template of a checkpoint directory: `chat_template.jinja` if present (newer
        transformers save it there), else tokenizer_config.json's `chat_template` (a
        string, or a list of `{name, template}` of which `name` is taken)."""
        path = pathlib.Path(path)
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        source = config.get("chat_template")
        if (path / "chat_template.jinja").exists():
            source = (path / "chat_template.jinja").read_text()
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source}
            if name not in named:
                raise CheckpointError(
                    f"{config_file}: no chat template named {name!r}; it has {sorted(named)}"
                )
            source = named[name]
        if not source:
            raise CheckpointError(
                f"{path}: no chat template (neither chat_template.jinja nor a chat_template "
                "in tokenizer_config.json); a base (non-instruct) checkpoint has none: use "
                "the task's plain prompts"
            )
        special = {}
        for key in _SPECIAL:
            value = config.get(key)
            if isinstance(value, Mapping):
                value = value.get("content")
            if isinstance(value, str):
                special[key] = value
        added = tuple(
            t["content"]
            for t in (config.get("added_tokens_decoder") or {}).values()
            if isinstance(t, Mapping) and t.get("special") and "content" in t
        )
        tokenizer_file = path / "tokenizer.json"
        if not added and tokenizer_file.exists():
            spec = json.loads(tokenizer_file.read_text())
            added = tuple(t["content"] for t in spec.get("added_tokens", []) if t.get("special"))
        return cls(source, special, added)

    def render(
        self, messages: Sequence[Message], *, add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """The conversation as text (transformers' `apply_chat_template(tokenize=False)`)."""
        template = _compile(self.source)
        return template.render(
            messages=[dict(m) for m in messages],
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens, **kwargs},
        )

    @property
    def end_of_turn(self) -> str:
        """The token that ends an assistant turn: the first special token the template
        writes after a reply (Qwen's `<|im_end|>`, Llama 3's `<|eot_id|>`, Gemma's
        `<end_of_turn>`); the sampler stops there."""
        convo = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _REPLY}]
        text = self.render(convo, add_generation_prompt=False)
        after = text.split(_REPLY, 1)[1].lstrip() if _REPLY in text else ""
        candidates = sorted({*self.added_tokens, *self.special_tokens.values()}, key=len)
        for token in reversed(candidates):  # the longest match first
            if token and after.startswith(token):
                return token
        raise CheckpointError(
            f"the chat template writes {after[:40]!r} after a reply, which starts with no "
            "special token of the tokenizer; pass the end-of-turn token as eos_token"
        )


def chat_prompt(template: ChatTemplate, prompt: str, *, system: str | None = None) -> str:
    """One user turn (after an optional system turn) and the assistant's generation
    prompt, BOS text included where the template writes it: encoded by a chat tokenizer
    (`HFTokenizer(..., chat=True)`, which adds no BOS of its own), the ids equal
    transformers' `apply_chat_template(tokenize=True)`."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return template.render(messages, add_generation_prompt=True)


def chat_task(task: Task, template: ChatTemplate, *, system: str | None = None) -> Task:
    """`task` asked through `template`: its prompt (and hint prompt, for STaR) becomes a
    user turn; targets, scoring and splits are unchanged."""

    def prompt(p: Problem) -> str:
        return chat_prompt(template, task.prompt(p), system=system)

    hint = None
    if task.hint_prompt is not None:
        hint_fn = task.hint_prompt

        def hint(p: Problem) -> str:
            return chat_prompt(template, hint_fn(p), system=system)

    return dataclasses.replace(task, prompt=prompt, hint_prompt=hint)


__all__ = ["ChatTemplate", "chat_prompt", "chat_task"]
