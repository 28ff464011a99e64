"""Tool calling for a local model: describe tools, constrain the call, parse it back.

Framework-free: adapters turn their tool objects into :class:`ToolSpec` (an OpenAI-style
function: name, description, JSON-schema parameters) and their messages into chat-template
turns (``{"role", "content"}`` plus ``tool_calls`` on assistant turns and ``tool_call_id`` /
``name`` on ``tool`` turns).

**One call format**, the one Qwen2.5 / Hermes-style templates use::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Oslo"}}
    </tool_call>

Several calls (``parallel``) follow one another, one per line. :func:`render_prompt` shows the
tools through the model's own chat template when the template takes ``tools`` (it renders
them and the format itself); otherwise (SmolLM2's template drops ``tools``) a fallback system
text lists the tools as JSON and asks for this format, and earlier calls and results are
written as text turns (:data:`FALLBACK_TOOL_PROMPT`). :func:`tool_call_grammar` builds the
Lark grammar that forces the format and each tool's argument schema, so with the
``structured`` extra every call parses (:func:`parse_tool_calls`) with valid arguments.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from omnitrace_core.decoding import Grammar, close_objects
from omnitrace_core.errors import InvalidInputError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

#: How tools are described to a model whose chat template does not take ``tools``.
FALLBACK_TOOL_PROMPT = (
    "You can call these tools (JSON schemas):\n{tools}\n\n"
    "To call a tool, reply with only the following, taking the argument values from the user's "
    "message:\n"
    '<tool_call>\n{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}\n</tool_call>\n'
    "{parallel}Otherwise answer the user directly."
)

ToolChoice = Literal["auto", "required", "none"] | str
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CALL_CLOSE), re.S)


@dataclass(frozen=True)
class ToolSpec:
    """One callable tool: its name, what it does, and its arguments' JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidInputError(
                f"tool name {self.name!r} must be 1-128 letters, digits, '_', '.', ':' or '-'"
            )
        if not isinstance(self.parameters, dict) or self.parameters.get("type", "object") != "object":
            raise InvalidInputError(f"tool {self.name!r}: parameters must be a JSON schema of type 'object'")

    @classmethod
    def from_openai(cls, tool: dict[str, Any]) -> ToolSpec:
        """From ``{"type": "function", "function": {"name", "description", "parameters"}}``."""
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or "name" not in fn:
            raise InvalidInputError(f"not an OpenAI-style function tool: {tool!r}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        return cls(name=str(fn["name"]), description=str(fn.get("description") or ""), parameters=params)

    def openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class ToolCall:
    """A parsed call: tool name, arguments, and an id (made here: ``call_<12 hex>``)."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")

    def openai(self) -> dict[str, Any]:
        """OpenAI's shape: ``{"id", "type": "function", "function": {"name", "arguments"}}`` with
        the arguments as a JSON string (what OpenAI clients parse)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


def tool_source_id(name: str | None, call_id: Any) -> str:
    """The id a tool result is cited by: ``<tool name>:<call id>`` (the call id alone when the
    tool is unknown; ``tool`` when there is no call id either). Every adapter and the server
    name tool results this way, so a citation reads the same wherever the model ran."""
    if call_id is None:
        return name or "tool"
    return f"{name}:{call_id}" if name else str(call_id)


@dataclass(frozen=True)
class ParsedToolCalls:
    """A reply split into its text and its tool calls (``invalid``: blocks that did not parse)."""

    text: str
    calls: list[ToolCall]
    invalid: list[tuple[str, str]]  # (raw block, error)


def template_takes_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` argument."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates
        template = " ".join(str(t) for t in template.values())
    return "tools" in str(template)


def choice_name(tool_choice: Any) -> Any:
    """The tool choice with an OpenAI ``{"type": "function", "function": {"name": ...}}`` dict
    read as that function's name (other values pass through for :func:`resolve_choice`).

    Raises:
        InvalidInputError: a dict that names no function.
    """
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function") if tool_choice.get("type") == "function" else tool_choice
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return fn["name"]
        raise InvalidInputError(f"tool_choice dict must name a function: {tool_choice!r}")
    return tool_choice


def resolve_choice(tools: Sequence[ToolSpec], choice: Any) -> str:
    """``auto`` (the model decides), ``required`` (some tool), ``none``, or a tool's name.

    Accepts the common spellings: ``any`` / ``True`` -> ``required``, an OpenAI function dict
    -> its name (:func:`choice_name`).

    Raises:
        InvalidInputError: an unknown choice or tool name (the known names are listed).
    """
    choice = choice_name(choice)
    if choice is None or choice == "auto":
        return "auto"
    if choice in ("any", "required", True):
        return "required"
    if choice == "none" or choice is False:
        return "none"
    names = [t.name for t in tools]
    if isinstance(choice, str) and choice in names:
        return choice
    raise InvalidInputError(
        f"tool_choice {choice!r} is not 'auto', 'any', 'required', 'none' or a bound tool's name "
        f"({', '.join(names) or 'no tools bound'})"
    )


def _call_schema(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": close_objects(tool.parameters)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        # compact JSON: no free whitespace a model could loop on; unknown keywords ignored
        "x-guidance": {"whitespace_flexible": False, "lenient": True},
    }


def tool_call_grammar(tools: Sequence[ToolSpec], choice: str = "required", parallel: bool = True) -> Grammar:
    """A Lark grammar: one (or, with ``parallel``, several) well-formed calls of the allowed
    tools; with ``choice="auto"`` also any plain reply that does not start with ``<``.

    Raises:
        InvalidInputError: no tools, or ``choice="none"`` (nothing to constrain).
    """
    choice = resolve_choice(tools, choice)
    if choice == "none":
        raise InvalidInputError("tool_choice='none' needs no tool-call grammar")
    allowed = [t for t in tools if choice in ("auto", "required") or t.name == choice]
    if not allowed:
        raise InvalidInputError("no tools to call: bind at least one tool")
    rules = [f"tool_{k}: %json {json.dumps(_call_schema(t))}" for k, t in enumerate(allowed)]
    body = " | ".join(f"tool_{k}" for k in range(len(allowed)))
    # The tags are literals of their own: a tokenizer that has them as single tokens (Qwen2.5's
    # ``<tool_call>``) may then write them either way (decoding.bind_added_tokens).
    open_ = f'{json.dumps(TOOL_CALL_OPEN)} "\\n"'
    close = f'"\\n" {json.dumps(TOOL_CALL_CLOSE)}'
    lines = [
        "start: calls" + (" | TEXT" if choice == "auto" else ""),
        'calls: call ("\\n" call)*' if parallel else "calls: call",
        f"call: {open_} ({body}) {close}",
        *rules,
    ]
    if choice == "auto":
        lines.append(r"TEXT: /[^<](.|\n)*/")
    return Grammar.lark("\n".join(lines) + "\n")


def fallback_system_text(tools: Sequence[ToolSpec], parallel: bool = True) -> str:
    listing = "\n".join(json.dumps(t.openai()["function"], ensure_ascii=False) for t in tools)
    several = "To call several tools, write one such block per call, one per line.\n" if parallel else ""
    return FALLBACK_TOOL_PROMPT.format(tools=listing, parallel=several)


def _call_text(call: dict[str, Any]) -> str:
    args = call.get("arguments", call.get("args", {}))
    body = json.dumps({"name": call["name"], "arguments": args}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def render_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[ToolSpec] = (),
    parallel: bool = True,
) -> str:
    """The prompt text for a conversation, with tools shown the way this model can read them.

    ``messages``: ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``; an
    assistant turn may carry ``tool_calls`` (``[{"id", "name", "arguments"}]``), a tool turn
    ``tool_call_id`` and ``name``.
    """
    if not getattr(tokenizer, "chat_template", None):
        lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
        if tools:
            lines.insert(0, fallback_system_text(tools, parallel))
        return "\n".join(lines) + "\nassistant: "
    if tools and template_takes_tools(tokenizer):
        turns: list[dict[str, Any]] = []
        for m in messages:
            turn = dict(m)
            if m.get("tool_calls"):
                turn["tool_calls"] = [
                    {
                        "type": "function",
                        "id": c.get("id"),
                        "function": {"name": c["name"], "arguments": c.get("arguments", {})},
                    }
                    for c in m["tool_calls"]
                ]
            turns.append(turn)
        return str(
            tokenizer.apply_chat_template(
                turns, tools=[t.openai() for t in tools], tokenize=False, add_generation_prompt=True
            )
        )
    return str(
        tokenizer.apply_chat_template(
            _plain_turns(messages, tools, parallel), tokenize=False, add_generation_prompt=True
        )
    )


def _plain_turns(
    messages: Sequence[dict[str, Any]], tools: Sequence[ToolSpec], parallel: bool
) -> list[dict[str, str]]:
    """Turns for a template without tool support: calls and results written as text."""
    out: list[dict[str, str]] = []
    for m in messages:
        role, content = m["role"], str(m.get("content") or "")
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(_call_text(c) for c in m["tool_calls"])
            content = f"{content}\n{calls}".strip()
        elif role == "tool":
            who = m.get("name") or "tool"
            role, content = "user", f"Result of {who} (call {m.get('tool_call_id', '?')}):\n{content}"
        if out and out[-1]["role"] == role == "user":  # keep turns alternating
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    if tools:
        text = fallback_system_text(tools, parallel)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


_FENCED_RE = re.compile(r"^```(?:json)?\s*(\{.*\})\s*```$", re.DOTALL)


def _bare_call(text: str, names: Collection[str]) -> ToolCall | None:
    """A whole reply that is one JSON call of a bound tool, bare or in a ```json fence."""
    stripped = text.strip()
    fenced = _FENCED_RE.match(stripped)
    raw = fenced.group(1) if fenced else stripped
    if not (raw.startswith("{") and raw.endswith("}")):
        return None
    try:
        call = _call_from_json(raw)
    except (ValueError, KeyError, TypeError):
        return None
    return call if call.name in names else None


def _call_from_json(raw: str) -> ToolCall:
    """``{"name": ..., "arguments" | "parameters": {...} or its JSON text}`` as a call (raises
    ValueError, KeyError or TypeError naming what is wrong)."""
    data = json.loads(raw)
    name = data["name"]
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        args = json.loads(args)
    if not isinstance(name, str) or not isinstance(args, dict):
        raise ValueError("'name' must be a string and 'arguments' an object")
    return ToolCall(name=name, arguments=args)


def parse_tool_calls(text: str, names: Collection[str] = ()) -> ParsedToolCalls:
    """Split a reply into its text and its ``<tool_call>`` blocks (an identical repeated call
    counts once; a block the token limit cut is reported in ``invalid``).

    With ``names`` (the bound tools, for an unforced ``auto`` turn, where the grammar lets the
    model write text), a reply that is nothing but one JSON call of one of those tools, bare or
    in a ```json fence, is that call: Qwen2.5 writes its calls so when it may choose.
    """
    if names and TOOL_CALL_OPEN not in text and (call := _bare_call(text, names)) is not None:
        return ParsedToolCalls(text="", calls=[call], invalid=[])
    calls: list[ToolCall] = []
    invalid: list[tuple[str, str]] = []
    for match in _CALL_RE.finditer(text):
        raw = match.group(1)
        try:
            call = _call_from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            invalid.append((raw, f"{type(exc).__name__}: {exc}"))
            continue
        if any(c.name == call.name and c.arguments == call.arguments for c in calls):
            continue  # a small model may repeat the same call: it is made once
        calls.append(call)
    rest = _CALL_RE.sub("", text)
    if TOOL_CALL_OPEN in rest:  # an unterminated block (the token limit cut it)
        at = rest.index(TOOL_CALL_OPEN)
        invalid.append((rest[at:], "unterminated tool call (the token limit was reached)"))
        rest = rest[:at]
    elif rest.strip() and TOOL_CALL_OPEN.startswith(rest.strip()):  # cut inside the open tag
        invalid.append((rest.strip(), "unterminated tool call (the token limit was reached)"))
        rest = ""
    return ParsedToolCalls(text=rest.strip(), calls=calls, invalid=invalid)
