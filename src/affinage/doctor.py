"""``affinage doctor MODEL DATA``: check the chat template, the loss mask and the data before training.

Most failed fine-tunes that "train fine" have a template problem nobody looked at: the end-of-turn
token is never trained (the model never stops), the prompt is trained along with the answer, the
beginning-of-sequence token is doubled, answers are cut to nothing by ``max_length``, or the template
saved with the checkpoint is not the one used in training. The doctor renders a few examples with
the trained tokens highlighted and runs every check with a verdict and a fix.

Template checks use probe conversations built here (system + two user/assistant turns), so they need
only the tokenizer; data checks run on the first rows of the given files. Training recipes call
:func:`preflight` at start-up, which runs the template checks and the checks the data report allows,
and refuses to start on a fatal problem with the doctor's message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from affinage.data.formats import Example, Message
from affinage.data.tokenize import (
    DROP_NO_TRAINABLE,
    DROP_TRUNCATED,
    IGNORE_INDEX,
    NOTE_LAST_TURN_ONLY,
    TokenizedExample,
    render_chat,
    tokenize_example,
    with_system_prompt,
)
from affinage.errors import AffinageError, ConfigError, DataError

Status = Literal["ok", "info", "warn", "fatal"]
_ICONS = {"ok": "[green]✔ ok[/]", "info": "[blue]ℹ info[/]", "warn": "[yellow]⚠ warn[/]", "fatal": "[bold red]✘ fatal[/]"}

PROBE_SYSTEM = "You are the support assistant of a computing centre."
PROBE: list[Message] = [
    {"role": "user", "content": "How do I check my storage quota?"},
    {"role": "assistant", "content": "Run the quota command on a login node."},
    {"role": "user", "content": "And the file count?"},
    {"role": "assistant", "content": "The same command shows the number of files."},
]
"""Two turns, so that prefix stability and the masking of the second answer are both exercised."""


@dataclass
class Check:
    name: str
    status: Status
    message: str
    fix: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    examples: list[tuple[str, Any, TokenizedExample]] = field(default_factory=list)
    """``(where, rendered text, tokenized example)`` of the examples to show with their mask."""

    def add(self, name: str, status: Status, message: str, fix: str = "") -> Check:
        check = Check(name, status, message, fix)
        self.checks.append(check)
        return check

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def fatal(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fatal"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    @property
    def verdict(self) -> str:
        if self.fatal:
            return f"NOT READY: {len(self.fatal)} fatal problem(s) must be fixed before training"
        if self.warnings:
            return f"READY, with {len(self.warnings)} warning(s) worth reading"
        return "READY: the template and the data look right"

    def message(self) -> str:
        """The fatal problems and their fixes as one message (what a recipe refuses to start with)."""
        lines = [f"the doctor found {len(self.fatal)} fatal problem(s):"]
        for c in self.fatal:
            lines.append(f"  - {c.name}: {c.message}" + (f" Fix: {c.fix}" if c.fix else ""))
        lines.append("Run `affinage doctor MODEL DATA` to see the loss mask and every check.")
        return "\n".join(lines)

    def print(self, console: Any = None, tokenizer: Any = None) -> None:
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        if tokenizer is not None:
            for where, text, example in self.examples:
                console.print(render_mask(tokenizer, text, example, where))
            if self.examples:
                console.print("[black on green] trained [/] [dim]not trained[/]  (↵ marks a newline)\n")
        table = Table(title="Doctor", title_justify="left", show_lines=True)
        table.add_column("", no_wrap=True)
        table.add_column("check", no_wrap=True)
        table.add_column("finding", ratio=3)
        table.add_column("fix", ratio=2)
        for c in self.checks:
            table.add_row(_ICONS[c.status], c.name, c.message, c.fix)
        console.print(table)
        colour = "red" if self.fatal else "yellow" if self.warnings else "green"
        console.print(f"[bold {colour}]verdict: {self.verdict}[/]")


# ----------------------------------------------------------------------------------------------
# Template checks (tokenizer only)
# ----------------------------------------------------------------------------------------------


def check_template(
    tokenizer: Any,
    report: DoctorReport | None = None,
    *,
    max_length: int = 1024,
    train_on_prompt: bool = False,
    system_prompt: str | None = None,
    template_name: str | None = None,
) -> DoctorReport:
    """Run every check that needs only the tokenizer, on the probe conversations."""
    report = report or DoctorReport()
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        report.add(
            "chat template", "fatal", "the tokenizer has no chat template, so conversations cannot be rendered.",
            "set model.chat_template to a named template (chatml, llama3, mistral, zephyr) or a Jinja string; "
            "or use text-format data",
        )
        return report
    report.add("chat template", "ok", _template_origin(template, template_name))
    if "{% generation %}" in template or "{%- generation %}" in template:
        report.add("generation tags", "ok", "the template marks answers with {% generation %} tags.")
    else:
        report.add(
            "generation tags", "info",
            "the template has no {% generation %} tags: affinage locates answers by rendering prefixes of each "
            "conversation (checked below); tools that rely on return_assistant_tokens_mask (TRL's "
            "assistant_only_loss) would train on nothing or fail with this template.",
        )
    if tokenizer.eos_token_id is None:
        report.add("eos token", "fatal", "the tokenizer has no eos token: answers cannot end.",
                   "set eos_token in the tokenizer_config.json of the model")
        return report

    messages = with_system_prompt(PROBE, system_prompt)
    try:
        full = render_chat(tokenizer, messages, where="probe conversation")
    except AffinageError as exc:
        report.add("renders", "fatal", f"the template fails on a plain two-turn conversation: {exc}",
                   "use another template (model.chat_template)")
        return report
    _check_prefix_stable(tokenizer, messages, full, report)
    if report.get("prefix-stable").status != "fatal":  # type: ignore[union-attr]
        result = tokenize_example(tokenizer, Example(messages=messages), max_length=10**9,
                                  train_on_prompt=train_on_prompt, where="probe conversation")
        if isinstance(result, str):
            report.add("assistant mask", "fatal", f"the probe conversation has {result}.",
                       "check the chat template: it must render the assistant's answers")
        else:
            _check_mask(tokenizer, messages, full, result, report, train_on_prompt, "probe conversation")
            _check_end_of_turn(tokenizer, messages, full, result, report)
            _check_padding(tokenizer, result, report)
            _check_bos(tokenizer, full, [result], report)
    _check_system(tokenizer, report)
    return report


def _template_origin(template: str, name: str | None) -> str:
    from affinage.models.templates import NAMED_TEMPLATES

    for known, source in NAMED_TEMPLATES.items():
        if template == source:
            return f"the named template '{known}' is used."
    if name:
        return f"the template given as model.chat_template ({name[:40]}) is used."
    return "the tokenizer's own chat template is used."


def _check_prefix_stable(tokenizer: Any, messages: list[Message], full: str, report: DoctorReport) -> None:
    broken = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        try:
            before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            after = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        except Exception as exc:  # a template may raise on a conversation that ends with a user turn
            broken.append(f"turn {i}: rendering the first messages fails ({exc})")
            continue
        if not full.startswith(before):
            broken.append(f"turn {i}: the generation prompt is not a prefix of the whole conversation")
        elif not full.startswith(after):
            broken.append(f"turn {i}: the conversation up to this answer is not a prefix of the whole")
    if not broken:
        report.add("prefix-stable", "ok", "rendering the first turns gives the start of the whole conversation, "
                   "so every answer of a multi-turn conversation is located and trained.")
        return
    last_ok = not any(b.startswith(f"turn {len(messages) - 1}:") for b in broken)
    report.add(
        "prefix-stable", "warn" if last_ok else "fatal",
        "the template is not prefix-stable (" + "; ".join(broken) + "). "
        + (f"Only the final answer of multi-turn conversations is trained ({NOTE_LAST_TURN_ONLY})."
           if last_ok else "The answers cannot be located for the loss mask."),
        "use a prefix-stable template (model.chat_template=chatml, or the model's own), or split multi-turn "
        "conversations into one row per answer; data.train_on_prompt=true also works but trains the prompts",
    )


def _trained_chars(tokenizer: Any, full: str, example: TokenizedExample) -> list[bool] | None:
    """Per character of ``full``: whether a trained token covers it (None without offset mappings)."""
    try:
        offsets = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return None
    if len(offsets) < len(example.labels):
        return None
    mask = [False] * len(full)
    for (start, end), label in zip(offsets, example.labels, strict=False):
        if label != IGNORE_INDEX:
            for c in range(start, end):
                mask[c] = True
    return mask


def _message_spans(full: str, messages: list[Message]) -> list[tuple[int, int] | None]:
    """Character span of each message's content in the rendering (None when the template changed it)."""
    spans: list[tuple[int, int] | None] = []
    pos = 0
    for m in messages:
        content = m["content"].strip()
        at = full.find(content, pos) if content else -1
        if at < 0:
            spans.append(None)
            continue
        spans.append((at, at + len(content)))
        pos = at + len(content)
    return spans


def _mask_problems(tokenizer: Any, messages: list[Message], full: str, example: TokenizedExample,
                   train_on_prompt: bool) -> tuple[list[str], list[str]] | None:
    """``(untrained answers, trained prompt turns)`` as descriptions; None when offsets are unavailable."""
    mask = _trained_chars(tokenizer, full, example)
    if mask is None:
        return None
    spans = _message_spans(full, messages)
    last_only = example.note == NOTE_LAST_TURN_ONLY
    last_answer = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    missing, leaked = [], []
    for i, (m, span) in enumerate(zip(messages, spans, strict=True)):
        if span is None:
            continue
        chars = [mask[c] for c in range(*span) if not full[c].isspace()]
        if not chars:
            continue
        trained = sum(chars) / len(chars)
        if m["role"] == "assistant" and (i == last_answer or not last_only) and trained < 0.99:
            missing.append(f"answer {i} is {100 * trained:.0f}% trained")
        elif m["role"] != "assistant" and not train_on_prompt and trained > 0:
            leaked.append(f"{m['role']} turn {i} is {100 * trained:.0f}% trained")
    return missing, leaked


def _check_mask(tokenizer, messages, full, example, report, train_on_prompt, where) -> None:
    problems = _mask_problems(tokenizer, messages, full, example, train_on_prompt)
    if problems is None:
        report.add("assistant mask", "info", "the tokenizer gives no character offsets (a slow tokenizer), so the "
                   "mask could not be checked character by character.")
        return
    missing, leaked = problems
    if missing or leaked:
        report.add(
            "assistant mask", "fatal",
            f"in the {where}: " + "; ".join(missing + leaked) + ". The loss would "
            + ("miss answers" if missing else "") + (" and " if missing and leaked else "")
            + ("train on the prompt" if leaked else "") + ".",
            "use a template whose rendering of each answer is unchanged in longer conversations "
            "(model.chat_template=chatml), and report the template",
        )
    elif train_on_prompt:
        report.add("assistant mask", "info", "data.train_on_prompt=true: every token, prompt included, is trained.")
    else:
        report.add("assistant mask", "ok", "the mask covers every assistant answer and no system or user token, "
                   "in both turns of the probe conversation.")


def _check_end_of_turn(tokenizer: Any, messages: list[Message], full: str, example: TokenizedExample,
                       report: DoctorReport) -> None:
    """After each answer, the trained tokens must include the token generation stops at (eos)."""
    try:
        offsets = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        offsets = None
    spans = _message_spans(full, messages)
    eos = tokenizer.eos_token_id
    turn_ends: list[str] = []
    answers_checked = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or spans[i] is None or offsets is None:
            continue
        end = spans[i][1]  # type: ignore[index]
        next_start = next((s[0] for s in spans[i + 1 :] if s is not None), len(full))
        after = [t for t, (s, _) in enumerate(offsets) if end <= s < next_start]
        trained = [example.input_ids[t] for t in after if example.labels[t] != IGNORE_INDEX]
        answers_checked += 1
        if eos in trained:
            continue
        special = set(tokenizer.all_special_ids or [])
        trained_special = [t for t in trained if t in special]
        turn_ends.append(tokenizer.decode(trained_special[-1:]) if trained_special else "")
    if offsets is None:
        report.add("eos trained", "info", "no character offsets: the end of each answer could not be checked.")
    elif answers_checked == 0:
        report.add("eos trained", "warn", "the answers of the probe conversation could not be found in the rendering.")
    elif not turn_ends:
        report.add("eos trained", "ok", f"the eos token {tokenizer.eos_token!r} is trained at the end of every answer, "
                   "so the model learns to stop.")
    elif all(turn_ends):
        report.add(
            "eos trained", "warn",
            f"answers end with {turn_ends[0]!r}, which is trained, but the tokenizer's eos is {tokenizer.eos_token!r}: "
            "generation stops only if the model's generation_config lists that token as an eos.",
            f"make sure generation_config.eos_token_id includes the id of {turn_ends[0]!r} (affinage's save_final "
            "writes the tokenizer's eos), or set the tokenizer's eos_token to it",
        )
    else:
        report.add(
            "eos trained", "fatal",
            "no end-of-turn or eos token is trained after the answers: the model never learns to stop and "
            "will run on until max_new_tokens.",
            "use a template that closes each assistant turn with the eos token (e.g. zephyr or mistral write "
            "eos_token; chatml needs eos = <|im_end|>)",
        )


def _check_padding(tokenizer: Any, example: TokenizedExample, report: DoctorReport) -> None:
    from affinage.data.collate import collate_padded

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is None:
        report.add("pad token", "warn", "the tokenizer has no pad token.",
                   "affinage's load_tokenizer sets pad = eos; do the same when using this tokenizer elsewhere")
        return
    short = TokenizedExample(example.input_ids[: max(2, len(example) // 2)], example.labels[: max(2, len(example) // 2)])
    batch = collate_padded([example, short], pad_token_id=pad)
    labels = batch["labels"][0, : len(example)].tolist()
    eos_trained = sum(1 for t, lab in zip(example.input_ids, example.labels, strict=True) if t == eos and lab != IGNORE_INDEX)
    eos_kept = sum(1 for t, lab in zip(example.input_ids, labels, strict=True) if t == eos and lab != IGNORE_INDEX)
    padded = batch["labels"][1, len(short) :]
    if pad != eos:
        report.add("pad token", "ok", f"pad {tokenizer.pad_token!r} differs from eos.")
    elif eos_kept == eos_trained and bool((padded == IGNORE_INDEX).all()):
        report.add(
            "pad token", "info",
            f"pad == eos ({tokenizer.eos_token!r}). Padding is masked by position, so the {eos_trained} eos token(s) "
            "closing the answers keep their labels (checked on a padded batch). A collator that masks labels by "
            "pad id would silently stop training the end of each answer.",
        )
    else:
        report.add("pad token", "fatal", "pad == eos and padding removed trained eos labels.",
                   "mask padding by the attention mask, not by comparing ids with pad_token_id")


def _starts_with_bos(ids: list[int], bos: int) -> int:
    n = 0
    while n < len(ids) and ids[n] == bos:
        n += 1
    return n


def _check_bos(tokenizer: Any, full: str, examples: list[TokenizedExample], report: DoctorReport,
               where: str = "the probe conversation", name: str = "bos token") -> None:
    bos, token = tokenizer.bos_token_id, tokenizer.bos_token
    if bos is None:
        report.add(name, "ok", "the tokenizer has no beginning-of-sequence token.")
        return
    doubled = [i for i, ex in enumerate(examples) if _starts_with_bos(ex.input_ids, bos) >= 2]
    if doubled:
        report.add(
            name, "fatal",
            f"{len(doubled)} example(s) of {where} start with {token!r} twice: the model sees a sequence start it "
            "never saw in pre-training.",
            "remove the BOS text from the data (pre-rendered chats in a 'text' column carry their own BOS: use the "
            "messages format instead) or from the chat template",
        )
        return
    plain_with = tokenizer("hi", add_special_tokens=True)["input_ids"]
    adds_bos = bool(plain_with) and plain_with[0] == bos
    writes_bos = bool(token) and full.startswith(token)
    if adds_bos and writes_bos:
        report.add(
            "bos token", "warn",
            f"the template writes {token!r} and the tokenizer adds another when a text is encoded with special tokens "
            "(the default of tokenizer(text)). affinage encodes rendered chats without special tokens, so training "
            "has one BOS; a tool that re-tokenises the rendered chat with defaults gets two.",
            "when serving or evaluating elsewhere, encode the rendered chat with add_special_tokens=False",
        )
    elif adds_bos and not writes_bos:
        report.add(
            "bos token", "warn",
            f"the tokenizer starts plain text with {token!r} (the model was pre-trained with it) but the chat template "
            "does not write it, so conversations are trained without BOS.",
            "use a template that starts with {{ bos_token }} (the llama3 and mistral named templates do)",
        )
    else:
        report.add("bos token", "ok", f"one {token!r} at most at the start of each sequence." if writes_bos
                   else "the template writes no BOS and the tokenizer adds none: nothing is doubled.")


def _check_system(tokenizer: Any, report: DoctorReport) -> None:
    marker = "SYSTEM-PROBE-7f3a"
    conversation = [{"role": "system", "content": marker}, *PROBE[:2]]
    try:
        with_system = tokenizer.apply_chat_template(conversation, tokenize=False)
        without = tokenizer.apply_chat_template(PROBE[:2], tokenize=False)
    except Exception as exc:
        report.add("system prompt", "warn", f"the template rejects a system message ({exc}).",
                   "merge the system text into the first user message, or use a template with a system role")
        return
    if marker not in with_system:
        report.add("system prompt", "warn", "the template silently drops system messages.",
                   "merge the system text into the first user message, or use a template with a system role")
        return
    # A template that adds its own system prompt when there is none renders more around the same
    # messages without a system turn than with one (whose content is the short marker).
    if len(without) >= len(with_system) - len(marker):
        report.add(
            "system prompt", "info",
            "the template inserts its own default system prompt into conversations that have none; it is part "
            "of every prompt (not trained) and of every generation.",
            "set data.system_prompt to choose it, or keep the default consciously",
        )
    else:
        report.add("system prompt", "ok", "system messages are rendered; none is added when absent.")


# ----------------------------------------------------------------------------------------------
# Data checks
# ----------------------------------------------------------------------------------------------


def check_data(
    tokenizer: Any,
    examples: list[tuple[str, Example]],
    report: DoctorReport | None = None,
    *,
    max_length: int = 1024,
    train_on_prompt: bool = False,
    system_prompt: str | None = None,
    show: int = 2,
) -> DoctorReport:
    """Tokenise ``(where, example)`` pairs as training would and check what comes out."""
    report = report or DoctorReport()
    if not examples:
        report.add("data", "fatal", "no rows to check.", "give a data file with at least one row")
        return report
    dropped: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    tokens = trained = cut = longest = 0
    kept: list[TokenizedExample] = []
    mask_problems: list[str] = []
    specials: list[str] = []
    system_rows = 0
    special_strings = [s for s in (getattr(tokenizer, "all_special_tokens", None) or []) if len(s) > 1]
    for where, example in examples:
        contents = [m["content"] for m in example.messages] if example.messages is not None else [example.text or ""]
        hits = [s for s in special_strings if any(s in c for c in contents)]
        if hits:
            specials.append(f"{where} ({', '.join(sorted(set(hits)))})")
        if example.messages is not None and example.messages[0]["role"] == "system":
            system_rows += 1
        try:
            full_result = tokenize_example(tokenizer, example, max_length=10**9, train_on_prompt=train_on_prompt,
                                           system_prompt=system_prompt, where=where)
            result = tokenize_example(tokenizer, example, max_length=max_length, train_on_prompt=train_on_prompt,
                                      system_prompt=system_prompt, where=where)
        except AffinageError as exc:
            report.add("data", "fatal", str(exc))
            return report
        if isinstance(result, str):
            dropped[result] += 1
            continue
        if isinstance(full_result, TokenizedExample):
            longest = max(longest, len(full_result))
            if len(full_result) > max_length:
                cut += 1
        if result.note:
            notes[result.note] += 1
        kept.append(result)
        tokens += len(result)
        trained += result.num_trainable
        if example.messages is not None and isinstance(full_result, TokenizedExample) and len(mask_problems) < 3:
            messages = with_system_prompt(example.messages, system_prompt)
            full = render_chat(tokenizer, messages, where=where)
            problems = _mask_problems(tokenizer, messages, full, full_result, train_on_prompt)
            if problems and (problems[0] or problems[1]):
                mask_problems.append(f"{where}: " + "; ".join(problems[0] + problems[1]))
        if len(report.examples) < show:
            text = (render_chat(tokenizer, with_system_prompt(example.messages, system_prompt), where=where)
                    if example.messages is not None else None)
            report.examples.append((where, text, result))

    n = len(examples)
    truncated_away = dropped[DROP_TRUNCATED]
    if truncated_away == n:
        report.add("truncation", "fatal", f"all {n} rows lose every answer token at max_length={max_length}.",
                   "raise data.max_length, or shorten the prompts")
    elif truncated_away or cut:
        share = (truncated_away + cut) / n
        report.add(
            "truncation", "warn" if share > 0.05 or truncated_away else "info",
            f"at max_length={max_length}: {truncated_away} of {n} rows lose every answer token (dropped) and "
            f"{cut} more are cut short (their answers end early, without the end-of-turn token).",
            f"raise data.max_length (the longest checked row has {longest} tokens) or filter long "
            "rows with `affinage data curate` (step length, max_tokens)",
        )
    else:
        report.add("truncation", "ok", f"no row of the {n} checked is longer than max_length={max_length}.")
    if dropped[DROP_NO_TRAINABLE]:
        report.add("trainable tokens", "warn", f"{dropped[DROP_NO_TRAINABLE]} of {n} rows have no trainable token.",
                   "check those rows: an assistant answer may be empty")
    if kept:
        share = trained / max(tokens, 1)
        status: Status = "ok"
        message = f"{trained:,} of {tokens:,} tokens are trained ({100 * share:.1f}%) over {len(kept)} rows."
        if not train_on_prompt and share > 0.95:
            status, message = "warn", message + " Almost everything is trained: is the prompt masked?"
        elif share < 0.02:
            status, message = "warn", message + " Very little is trained: the answers are tiny next to the prompts."
        report.add("trained share", status, message)
        if _has_doubled_bos(tokenizer, kept):
            _check_bos(tokenizer, "", kept, report, where="the data", name="bos in data")
    if notes:
        for note, count in notes.items():
            report.add("multi-turn", "warn", f"{count} of {n} rows: {note}.",
                       "use a prefix-stable template (model.chat_template=chatml) to train every answer")
    if mask_problems:
        report.add("mask on data", "fatal", "; ".join(mask_problems), "check the chat template (see assistant mask)")
    if specials:
        report.add(
            "special tokens in text", "warn",
            f"{len(specials)} row(s) contain special-token strings in their text, which the tokenizer turns into "
            f"control tokens (the mask and the turn structure break there): {'; '.join(specials[:3])}.",
            "remove or escape them in the data",
        )
    system_check = report.get("system prompt")
    if system_rows and system_check is not None and system_check.status == "warn":
        system_check.message += f" {system_rows} checked row(s) have a system message."
    return report


def _has_doubled_bos(tokenizer: Any, examples: list[TokenizedExample]) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and any(_starts_with_bos(ex.input_ids, bos) >= 2 for ex in examples)


# ----------------------------------------------------------------------------------------------
# The checkpoint's template
# ----------------------------------------------------------------------------------------------


def check_saved_template(model_dir: str | Path, report: DoctorReport) -> None:
    """In a run's ``final/`` folder: is the saved template the one training used (``../config.yaml``)?"""
    model_dir = Path(model_dir)
    config_path = model_dir.parent / "config.yaml"
    if not (model_dir.is_dir() and config_path.is_file()):
        return
    from affinage.config import config_class_for, load_config
    from affinage.models.loading import load_tokenizer
    from affinage.models.templates import get_template

    try:
        cfg = load_config(config_class_for(config_path), config_path)
        model_cfg = cfg.model
        if model_cfg.chat_template:
            trained_with = get_template(model_cfg.chat_template)
        else:
            trained_with = load_tokenizer(model_cfg.name, revision=model_cfg.revision,
                                          trust_remote_code=model_cfg.trust_remote_code).chat_template
        saved = load_tokenizer(str(model_dir)).chat_template
    except (AffinageError, AttributeError, OSError) as exc:
        report.add("saved template", "info", f"could not compare with the training config {config_path}: {exc}")
        return
    if saved == trained_with:
        report.add("saved template", "ok", f"the template saved in {model_dir} is the one training used ({config_path}).")
    else:
        report.add(
            "saved template", "fatal",
            f"the template saved in {model_dir} differs from the one training used (per {config_path}): the model "
            "will be prompted in a format it was not trained on.",
            f"copy the training template into {model_dir}/tokenizer_config.json (or chat_template.jinja), or "
            "re-save the model with affinage's save_final",
        )


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def doctor(
    model: str,
    data: list[str],
    *,
    chat_template: str | None = None,
    max_length: int = 1024,
    train_on_prompt: bool = False,
    system_prompt: str | None = None,
    data_format: str = "auto",
    max_rows: int = 200,
    show: int = 2,
) -> tuple[DoctorReport, Any]:
    """Every check for ``model``'s tokenizer on the first ``max_rows`` rows of ``data``: ``(report, tokenizer)``."""
    from affinage.data.formats import detect_format, to_example
    from affinage.data.io import read_rows
    from affinage.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model, chat_template=chat_template)
    examples: list[tuple[str, Example]] = []
    for path in data:
        fmt = None if data_format == "auto" else data_format
        for number, row in read_rows(path):
            if len(examples) >= max_rows:
                break
            where = f"{path}, row {number}"
            fmt = fmt or detect_format(row, where)
            examples.append((where, to_example(row, fmt, where)))
    report = DoctorReport()
    if examples and all(ex.messages is None for _, ex in examples):
        report.add("chat template", "ok", "text-format data: no chat template is needed; every token is trained.")
    else:
        check_template(tokenizer, report, max_length=max_length, train_on_prompt=train_on_prompt,
                       system_prompt=system_prompt, template_name=chat_template)
    check_saved_template(model, report)
    if data and report.get("chat template").status != "fatal":  # type: ignore[union-attr]
        check_data(tokenizer, examples, report, max_length=max_length, train_on_prompt=train_on_prompt,
                   system_prompt=system_prompt, show=show)
    return report, tokenizer


def preflight(tokenizer: Any, data_cfg: Any, data: Any = None, console: Any = None) -> DoctorReport:
    """The doctor's checks at a recipe's start-up; raise :class:`DataError` with its message on a fatal problem.

    ``data_cfg`` is the stage's :class:`~affinage.config.DataConfig`; ``data`` the loaded
    :class:`~affinage.data.sft.SFTData` (its tokenised examples are checked for doubled BOS).
    The template is checked only when the data holds conversations (text data needs none).
    """
    report = DoctorReport()
    files = getattr(getattr(data, "report", None), "files", None)
    chat_data = files is None or any(f.format != "text" for f in files)
    if chat_data and getattr(tokenizer, "chat_template", None):
        check_template(tokenizer, report, max_length=data_cfg.max_length, train_on_prompt=data_cfg.train_on_prompt,
                       system_prompt=data_cfg.system_prompt)
    if data is not None and getattr(data, "train", None) and _has_doubled_bos(tokenizer, data.train):
        _check_bos(tokenizer, "", data.train, report, where="the training data", name="bos in data")
    if report.fatal:
        raise DataError(report.message())
    if console is not None:
        for c in report.warnings:
            console.print(f"[yellow]doctor: {c.name}: {c.message}[/]" + (f" Fix: {c.fix}" if c.fix else ""))
    return report


# ----------------------------------------------------------------------------------------------
# Showing the mask
# ----------------------------------------------------------------------------------------------


def render_mask(tokenizer: Any, text: str | None, example: TokenizedExample, where: str):
    """A rich Text of the example with trained tokens highlighted."""
    from rich.text import Text

    out = Text()
    trained = example.num_trainable
    out.append(f"{where}: {len(example)} tokens, {trained} trained ({100 * trained / max(len(example), 1):.0f}%)\n",
               style="bold")
    pieces: list[str] | None = None
    if text is not None:
        try:
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            pieces = [text[s:e] for s, e in offsets[: len(example)]]
        except (NotImplementedError, ValueError, TypeError, KeyError):
            pieces = None
    if pieces is None or len(pieces) != len(example):
        pieces = [tokenizer.decode([t]) for t in example.input_ids]
    for piece, label in zip(pieces, example.labels, strict=True):
        shown = piece.replace("\n", "↵\n")
        out.append(shown, style="black on green" if label != IGNORE_INDEX else "dim")
    out.append("\n")
    return out


def check_config_model(stage_config: Any) -> tuple[str, list[str], dict[str, Any]]:
    """``(model, data files, options)`` from a stage config that has ``model`` and ``data`` sections."""
    model = getattr(stage_config, "model", None)
    data = getattr(stage_config, "data", None)
    if model is None or data is None:
        raise ConfigError("the doctor reads configs with model and data sections (sft, dpo...)")
    options = {
        "chat_template": model.chat_template,
        "max_length": data.max_length,
        "train_on_prompt": getattr(data, "train_on_prompt", False),
        "system_prompt": getattr(data, "system_prompt", None),
        "data_format": getattr(data, "format", "auto"),
    }
    return model.name, list(data.train), options
