"""The ``generate`` and ``chat`` verbs: load a model, then answer one prompt, a file of prompts, or chat.

The command-line layer (``affinage.cli``) parses the flags into plain values and a
:class:`GenerationOptions`, and calls these functions. A bad input file fails before the model loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from affinage.errors import ConfigError, DataError
from affinage.generation.sampling import GenerationOptions, Prompt, generate

PROMPT_FORMAT = (
    'each row needs "prompt" (a string) or "messages" (a list of {"role": ..., "content": ...}), '
    'e.g. {"prompt": "How do I reset my password?"}'
)


def load_model_and_tokenizer(
    model_name: str, dtype: str = "auto", chat_template: str | None = None
) -> tuple[Any, Any]:
    """Load the tokenizer and the model (an alias, a local directory, a ``.gguf`` file or a hub id)."""
    from affinage.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_name, chat_template=chat_template)
    model = load_model(model_name, dtype=dtype)
    return model, tokenizer


def row_prompt(row: dict[str, Any], where: str) -> Prompt:
    """The prompt of one input row: its "prompt" string, or its "messages" less a trailing assistant turn."""
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f'{where}: "messages" must be a non-empty list of messages; {PROMPT_FORMAT}')
        for j, m in enumerate(messages):
            if not (
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            ):
                raise DataError(
                    f'{where}: message {j} must be an object with string "role" and "content", '
                    f"got {json.dumps(m, ensure_ascii=False, default=str)[:120]}"
                )
        if messages[-1]["role"] == "assistant":
            # A reference answer: the model writes its own in its place.
            messages = messages[:-1]
        if not messages or messages[-1]["role"] == "system":
            raise DataError(f'{where}: "messages" holds no user turn to answer')
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(
                f'{where}: "prompt" must be a non-empty string, got {type(prompt).__name__} {prompt!r:.80}'
            )
        return prompt
    keys = ", ".join(row) or "none"
    raise DataError(f'{where}: no "prompt" or "messages" (keys found: {keys}); {PROMPT_FORMAT}')


def read_prompts(path: str | Path) -> tuple[list[dict[str, Any]], list[Prompt]]:
    """Read every row of ``path`` and its prompt; a bad row raises :class:`DataError` naming it."""
    from affinage.data.io import read_rows

    rows: list[dict[str, Any]] = []
    prompts: list[Prompt] = []
    for number, row in read_rows(path):
        prompts.append(row_prompt(row, f"{path}, row {number}"))
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no rows; {PROMPT_FORMAT}")
    return rows, prompts


def generate_command(
    model_name: str,
    prompt: str | None,
    input_path: str | None,
    output_path: str | None,
    options: GenerationOptions,
    system_prompt: str | None = None,
    batch_size: int = 16,
    dtype: str = "auto",
    chat_template: str | None = None,
    guard_config: str | None = None,
) -> list[str]:
    """Answer one prompt (printed) or every row of a data file (written as JSONL with "completion").

    Without ``output_path`` the answers of a file go to standard output as JSONL. Returns the answers.
    With ``guard_config`` (a guard YAML file, see :mod:`affinage.safety.guard`) prompts and answers
    are moderated; each row then also carries the guard's verdicts under "guard".
    """
    options.validate()
    if (prompt is None) == (input_path is None):
        raise ConfigError(
            "give either a prompt or an input file (--input prompts.jsonl), not both and not neither"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if (
        input_path is not None
        and output_path is not None
        and Path(output_path).resolve() == Path(input_path).resolve()
    ):
        raise ConfigError(f"the output file {output_path} is the input file; choose another output path")

    rows: list[dict[str, Any]]
    if prompt is not None:
        rows, prompts = [{"prompt": prompt}], [prompt]
    else:
        rows, prompts = read_prompts(input_path)  # before the model loads: a bad row fails fast

    guard_cfg = None
    if guard_config is not None:
        from affinage.safety.guard import load_guard_config

        guard_cfg = load_guard_config(guard_config)  # a bad guard file fails before the model loads
    model, tokenizer = load_model_and_tokenizer(model_name, dtype, chat_template)
    if guard_cfg is not None:
        from affinage.safety.guard import Guard

        guarded = Guard.from_config(guard_cfg, model=model, tokenizer=tokenizer).generate(
            model, tokenizer, prompts, options, batch_size=batch_size, system_prompt=system_prompt,
            progress=prompt is None,
        )
        answers = [g.text for g in guarded]
        out_rows = [
            {**row, "completion": g.text,
             "guard": {"input": g.input.as_dict(), "output": g.output.as_dict() if g.output else None}}
            for row, g in zip(rows, guarded, strict=True)
        ]
    else:
        answers = generate(
            model,
            tokenizer,
            prompts,
            options,
            batch_size=batch_size,
            system_prompt=system_prompt,
            progress=prompt is None,
        )
        out_rows = [{**row, "completion": answer} for row, answer in zip(rows, answers, strict=True)]

    if prompt is not None:
        print(answers[0])
    if output_path is not None:
        from rich.console import Console

        from affinage.data.io import write_jsonl

        n = write_jsonl(output_path, out_rows)
        Console(stderr=True).print(f"wrote {n} completion{'s' * (n != 1)} to {output_path}")
    elif prompt is None:
        for row in out_rows:
            print(json.dumps(row, ensure_ascii=False, default=str))
    return answers


def chat_command(
    model_name: str,
    system_prompt: str | None,
    options: GenerationOptions,
    dtype: str = "auto",
    chat_template: str | None = None,
    guard_config: str | None = None,
) -> None:
    """Load the model and chat with it in the terminal (moderated by a guard YAML file if given)."""
    from affinage.serving.chat import run_chat

    options.validate()
    guard_cfg = None
    if guard_config is not None:
        from affinage.safety.guard import load_guard_config

        guard_cfg = load_guard_config(guard_config)
    model, tokenizer = load_model_and_tokenizer(model_name, dtype, chat_template)
    guard = None
    if guard_cfg is not None:
        from affinage.safety.guard import Guard

        guard = Guard.from_config(guard_cfg, model=model, tokenizer=tokenizer)
    run_chat(model, tokenizer, system_prompt=system_prompt, options=options, guard=guard)
