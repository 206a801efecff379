"""Chat templates against transformers' `apply_chat_template`: text and token ids for
saved tokenizers of three template families (ChatML / Qwen, Llama 3, Gemma), the
end-of-turn token the sampler stops at, and the sandbox."""

import json

import jinja2
import pytest

from hf_testing import CHAT_FAMILIES, chat_ids, write_chat_tokenizer
from rest_em import chat_template, errors, estep
from rest_em.tasks import arithmetic
from rest_em.tokenizers import HFTokenizer


@pytest.mark.parametrize("jinja_file", [False, True])
@pytest.mark.parametrize("family", list(CHAT_FAMILIES))
def test_prompts_equal_transformers_text_and_ids(family, jinja_file, tmp_path):
    hf = write_chat_tokenizer(tmp_path, family, jinja_file=jinja_file)
    template = chat_template.ChatTemplate.from_checkpoint(tmp_path)
    ours = HFTokenizer(tmp_path, chat=True)
    system = None if family == "gemma" else "Answer with the final number after ####."
    for sys_prompt in {None, system}:
        messages = ([{"role": "system", "content": sys_prompt}] if sys_prompt else []) + [
            {"role": "user", "content": "Q: 3+4+1-2\n"}
        ]
        want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text = chat_template.chat_prompt(template, "Q: 3+4+1-2\n", system=sys_prompt)
        assert text == want
        want_ids = chat_ids(hf, messages)
        assert ours.encode(text) == want_ids
    # Through a task: the E-step's prompt ids are transformers' (BOS once, from the template).
    task = chat_template.chat_task(arithmetic.make_task(num_train=8), template, system=system)
    problem = task.load("train")[0]
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": arithmetic.make_task().prompt(problem)}
    ]
    want_ids = chat_ids(hf, messages)
    assert estep.prompt_ids(task, ours, problem) == want_ids
    plain = arithmetic.make_task()
    assert task.hint_prompt(problem) == chat_template.chat_prompt(
        template, plain.hint_prompt(problem), system=system
    )
    # The reply follows the generation prompt and ends at the end-of-turn token: EOS.
    end = CHAT_FAMILIES[family][4]
    assert template.end_of_turn == end and ours.eos_id == hf.convert_tokens_to_ids(end)
    assert ours.bos_id is None and HFTokenizer(tmp_path).eos_id == hf.eos_token_id
    reply = [*messages, {"role": "assistant", "content": "3+4=7\n7+1=8\n8-2=6\n#### 6"}]
    full = hf.apply_chat_template(reply, tokenize=False)
    prompt = chat_template.chat_prompt(template, messages[-1]["content"], system=system)
    assert full.startswith(prompt + "3+4=7\n7+1=8\n8-2=6\n#### 6" + end)


def test_template_errors_are_the_templates_and_the_sandbox_holds(tmp_path):
    write_chat_tokenizer(tmp_path, "gemma")
    gemma = chat_template.ChatTemplate.from_checkpoint(tmp_path)
    with pytest.raises(jinja2.TemplateError, match="System role not supported"):
        chat_template.chat_prompt(gemma, "hi", system="be brief")
    escape = chat_template.ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        escape.render([{"role": "user", "content": "x"}])
    assert (
        chat_template.ChatTemplate("{{ messages | tojson }}").render(
            [{"role": "user", "content": "<é>"}]
        )
        == '[{"role": "user", "content": "<é>"}]'
    )  # transformers' tojson: no HTML escaping


def test_a_checkpoint_without_a_template_is_named(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(errors.CheckpointError, match="no chat template"):
        chat_template.ChatTemplate.from_checkpoint(tmp_path)
    named = [{"name": "default", "template": "{{ 'a' }}"}, {"name": "tool_use", "template": "b"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert chat_template.ChatTemplate.from_checkpoint(tmp_path).source == "{{ 'a' }}"
    assert chat_template.ChatTemplate.from_checkpoint(tmp_path, "tool_use").source == "b"
    with pytest.raises(errors.CheckpointError, match="no chat template named 'rag'"):
        chat_template.ChatTemplate.from_checkpoint(tmp_path, "rag")
    plain = chat_template.ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(errors.CheckpointError, match="no special token"):
        _ = plain.end_of_turn
