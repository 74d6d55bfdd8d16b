"""Named chat templates for base models that ship without one.

A chat template is the Jinja program that turns a list of ``{"role", "content"}`` messages into the
text the model is trained on (and prompted with). Instruct models carry their own; base models do
not, so ``model.chat_template`` may name one of these or give a Jinja string.

Every assistant turn is wrapped in ``{% generation %}...{% endgeneration %}`` so that
``tokenizer.apply_chat_template(..., return_assistant_tokens_mask=True)`` can mark the tokens the
loss is taken on; the tags render nothing.

The markers (``<|im_start|>``, ``<|eot_id|>``, ``[INST]``...) are single tokens only when the
tokenizer knows them; otherwise they are tokenised as ordinary text, which trains fine but means the
end of a turn is a string, not the tokenizer's eos token. ``zephyr`` and ``mistral`` end turns with
the tokenizer's own ``eos_token`` and so suit any base model.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from affinage.errors import ModelError

# ChatML (OpenAI, Qwen, SmolLM2): <|im_start|>role\ncontent<|im_end|>\n
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama 3 instruct: <|begin_of_text|> then <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Mistral instruct: <s>[INST] user [/INST] answer</s>[INST] ... ; a system message is prepended to
# the first user turn (Mistral has no system role).
MISTRAL = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = none %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}{{ '[INST] ' + system + '\n\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ raise_exception('mistral template: roles must be system, user or assistant') }}"
    "{% endif %}"
    "{% endfor %}"
)

# Zephyr: <|system|>\ncontent</s>\n<|user|>\ncontent</s>\n<|assistant|>\ncontent</s>\n
ZEPHYR = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

NAMED_TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "llama3": LLAMA3,
    "mistral": MISTRAL,
    "zephyr": ZEPHYR,
}


def is_jinja(text: str) -> bool:
    return "{%" in text or "{{" in text


def get_template(name_or_jinja: str) -> str:
    """Return the Jinja source for a template name, a ``.jinja`` file, or a Jinja string as is."""
    text = name_or_jinja.strip()
    if is_jinja(text):
        return name_or_jinja
    key = text.lower()
    if key in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[key]
    if key.endswith(".jinja"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelError(f"model.chat_template: the file {path} does not exist")
        return path.read_text(encoding="utf-8")
    close = difflib.get_close_matches(key, list(NAMED_TEMPLATES), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ModelError(
        f"model.chat_template: unknown template '{name_or_jinja}'.{hint} Use one of "
        f"{', '.join(NAMED_TEMPLATES)}, a path to a .jinja file, or a Jinja string containing '{{%'."
    )
