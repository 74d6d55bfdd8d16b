"""Terminal chat: type a message, watch the answer appear token by token.

The conversation is kept as a list of messages and rendered whole with the chat template at every
turn. Input comes from ``input()`` (through rich's console), so a script can pipe lines into it.
Commands: ``/reset`` forgets the conversation, ``/system TEXT`` sets the system prompt (an empty
TEXT removes it), ``/exit`` leaves; Ctrl-D or Ctrl-C at the prompt leave too, and Ctrl-C during an
answer stops that answer.
"""

from __future__ import annotations

from typing import Any

from affinage.errors import ModelError
from affinage.generation.sampling import GenerationOptions, Message, stream_chat

HELP = "commands: /reset (new conversation), /system TEXT (set the system prompt), /exit"


def run_chat(
    model: Any,
    tokenizer: Any,
    *,
    system_prompt: str | None = None,
    options: GenerationOptions | None = None,
    console: Any = None,
    guard: Any = None,
) -> list[Message]:
    """Run the chat loop until the user leaves; return the last conversation (system turn included).

    With a :class:`~affinage.safety.guard.Guard`, each message is moderated before an answer is
    generated (a refusal in the user's language replaces it), the safety system prompt is added when
    there is no other, and with output moderation the answer is checked whole before it is shown
    (so it does not stream).
    """
    from rich.console import Console
    from rich.markup import escape

    options = options or GenerationOptions()
    options.validate()
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "the tokenizer has no chat template, so a conversation cannot be rendered; "
            "pass one (e.g. --chat-template chatml) or use a chat (instruct) model"
        )
    console = console or Console(highlight=False)
    history: list[Message] = []
    console.print(f"[dim]{HELP}[/]")

    def conversation() -> list[Message]:
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return system + history

    while True:
        try:
            line = console.input("[bold green]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, argument = text.partition(" ")
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                history.clear()
                console.print("[dim]conversation reset[/]")
            elif command == "/system":
                system_prompt = argument.strip() or None
                state = f"set to: {escape(system_prompt)}" if system_prompt else "removed"
                console.print(f"[dim]system prompt {state}[/]")
            elif command == "/help":
                console.print(f"[dim]{HELP}[/]")
            else:
                console.print(f"[yellow]unknown command {escape(command)}[/]; {HELP}")
            continue

        history.append({"role": "user", "content": text})
        console.print("[bold cyan]assistant>[/] ", end="")
        pieces: list[str] = []
        messages = conversation()
        if guard is not None:
            verdict = guard.check_input(messages)
            if not verdict.allowed:
                console.print(verdict.refusal, markup=False, highlight=False, soft_wrap=True)
                history.append({"role": "assistant", "content": verdict.refusal})
                continue
            messages = guard.apply_system_prompt(messages)
        buffered = guard is not None and guard.cfg.enabled and guard.cfg.output.enabled
        try:
            for piece in stream_chat(model, tokenizer, messages, options):
                pieces.append(piece)
                if not buffered:
                    console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
            if buffered:
                answer = "".join(pieces).strip()
                verdict = guard.check_output(conversation(), answer)
                pieces = [answer if verdict.allowed else verdict.refusal]
                console.print(pieces[0], end="", markup=False, highlight=False, soft_wrap=True)
        except KeyboardInterrupt:
            # The answer is incomplete: forget this exchange rather than build on half an answer.
            history.pop()
            console.print("\n[dim]answer interrupted[/]")
            continue
        console.print()
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
    return conversation()
