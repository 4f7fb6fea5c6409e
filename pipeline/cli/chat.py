"""`python -m pipeline.chat [overrides]`: talk to a model in the terminal, with streaming output.

Takes the same overrides as `python -m pipeline` (runtime.model=…, generation.temperature=…,
session.system_prompt=…), resolves, plans and loads through the same stages (with backend=openai: asks the server, which
answers every turn, streamed), then reads lines.
Slash commands: /system <text> (or /system alone to drop it), /clear, /retry, /save [path],
/image <path> and /audio <path> (attach a file to your next message; a multimodal model only),
/exit (or end of input). Every turn is a record in `<run dir>/transcript.jsonl`, like a
dataset run's, and the conversation is saved to `<run dir>/conversation.json` after each turn.
"""

from __future__ import annotations

import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, TextIO

from pipeline.client import PromptResponse, RuntimeClient
from pipeline.core.errors import EXIT_USAGE, BackendUnavailable, UserError, describe_config_exception
from pipeline.core.files import write_json
from pipeline.core.folder_names import CONFIG_FILE, CONVERSATION_FILE, PLAN_FILE, TRANSCRIPT_FILE
from pipeline.core.records import MediaPart
from pipeline.core.redact import redact
from pipeline.core.transcript import TranscriptWriter

HELP = "commands: /system <text>, /clear, /retry, /save [path], /image <path>, /audio <path>, /exit"
PROMPT = "you> "


class TerminalSink:
    """Prints text as it arrives."""

    streams_text = True

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def on_text(self, row: int, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def on_complete(self, row: int, text: str) -> None:
        self.out.write("\n")
        self.out.flush()

    def on_tool(self, name: str, arguments: dict, result: str, ok: bool) -> None:
        shown = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
        self.out.write(f"(tool {name}({shown}) {'->' if ok else 'error:'} {result})\nmodel> ")
        self.out.flush()


def chat(client: RuntimeClient, run_dir: Path, lines: TextIO, out: TextIO) -> int:
    """The read-answer loop; returns the number of model turns."""
    session = client.session(system_prompt=client.config.session.system_prompt,
                             autosave_path=run_dir / CONVERSATION_FILE)
    sink, turns = TerminalSink(out), 0
    attached: list[MediaPart] = []  # /image and /audio parts waiting for the next message
    with TranscriptWriter(run_dir / TRANSCRIPT_FILE) as writer:
        while True:
            out.write(PROMPT)
            out.flush()
            line = lines.readline()
            if not line or line.strip() == "/exit":
                break
            text = line.rstrip("\n")
            command, _, argument = text.partition(" ")
            try:
                if command == "/system":
                    session.set_system(argument.strip() or None)
                    out.write(f"(system prompt {'set' if argument.strip() else 'removed'})\n")
                elif command == "/clear":
                    session.clear()
                    out.write("(conversation cleared)\n")
                elif command == "/save":
                    out.write(f"(saved to {session.save(argument.strip() or None)})\n")
                elif command == "/retry":
                    out.write("model> ")
                    _record(writer, session.retry(sink), turns)
                    turns += 1
                elif command in ("/image", "/audio"):
                    attached.append(_attach(client, command[1:], argument.strip()))
                    part = attached[-1]
                    size = f"{part.width}x{part.height}" if part.kind == "image" else f"{part.seconds} s"
                    out.write(f"({part.kind} {part.path} attached, {size}: it goes with your next message)\n")
                elif command.startswith("/"):
                    out.write(f"(unknown command {command}; {HELP})\n")
                elif text.strip():
                    out.write("model> ")
                    media, attached = attached, []
                    _record(writer, session.send(text, sink, media), turns)
                    turns += 1
            except (UserError, ValueError) as error:
                out.write(f"(error: {error})\n")
            except BackendUnavailable as error:  # the conversation is kept: the next line may find the server back
                out.write(f"(error: {error}; nothing was added to the conversation)\n")
            out.flush()
    return turns


def _attach(client: RuntimeClient, kind: str, path: str) -> MediaPart:
    """A file the user named, checked (readable, decodable, within dataset.max_media_mb) and of a
    kind the model takes."""
    if not path:
        raise UserError(f"/{kind} needs a path: /{kind} <path>")
    model = client.resolve()
    if kind not in model.modalities:
        raise UserError(f"model {model.reference!r} takes {' and '.join(model.modalities)} only, not {kind}")
    images, audio = ([path], []) if kind == "image" else ([], [path])
    (part,) = client.media_parts(images, audio)
    return part


def _record(writer: TranscriptWriter, response: PromptResponse, turn: int) -> None:
    """Write the turn's records (tool steps included) as turn `turn` of the conversation "chat"."""
    writer.write_batch([replace(r, sample_id=f"chat#{turn}", conversation_id="chat", turn=turn, batch=turn)
                        for r in response.records])


def main(argv: Optional[list[str]] = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    try:
        client = RuntimeClient.from_overrides(overrides)
    except UserError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # Hydra's and OmegaConf's composition errors
        print(f"config error: {describe_config_exception(error)}", file=sys.stderr)
        return EXIT_USAGE
    run_dir = Path("runs") / time.strftime("%Y-%m-%d") / (time.strftime("%H-%M-%S_chat-") + secrets.token_hex(3))
    try:
        plan = client.plan()
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / CONFIG_FILE, redact(client.config.to_dict()))
        write_json(run_dir / PLAN_FILE, plan.to_dict())
        if plan.model.endpoint:  # served: its masked address
            print(f"talking to {plan.model.reference} at {plan.model.endpoint}…", file=sys.stderr)
        else:
            print(f"loading {plan.model.reference} on {plan.device} ({plan.dtype})…", file=sys.stderr)
        client.load()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{HELP}; transcript in {run_dir}", file=sys.stderr)
    try:
        chat(client, run_dir, sys.stdin, sys.stdout)
    except KeyboardInterrupt:
        print("\n(interrupted; the transcript keeps every finished turn)", file=sys.stderr)
        return 130
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
