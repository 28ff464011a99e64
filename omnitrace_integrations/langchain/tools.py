"""Tool calling and structured output for ``ChatOmniTrace``: LangChain objects <-> the core's tools.

- :func:`tool_specs` turns bound tools (``convert_to_openai_tool`` dicts) into core
  :class:`~omnitrace_core.tools.ToolSpec` objects; :func:`choice_name` reads every spelling of
  ``tool_choice`` LangChain users pass (``"auto"``, ``"any"``, ``"required"``, ``"none"``, a
  name, ``True``, an OpenAI ``{"type": "function", "function": {"name": ...}}`` dict).
- :func:`conversation_turns` writes messages as chat-template turns, keeping ``AIMessage``
  tool calls and ``ToolMessage`` results, so the model sees what it called and what came back.
- :func:`tool_call_message_fields` parses a constrained reply into ``tool_calls`` /
  ``invalid_tool_calls`` for an ``AIMessage``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.messages.tool import invalid_tool_call, tool_call

from omnitrace_core import InvalidInputError
from omnitrace_core.tools import ParsedToolCalls, ToolSpec, choice_name, parse_tool_calls

__all__ = [
    "choice_name",
    "conversation_turns",
    "tool_call_chunks",
    "tool_call_message_fields",
    "tool_specs",
]

_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def tool_specs(tools: Sequence[dict[str, Any]] | None) -> list[ToolSpec]:
    return [ToolSpec.from_openai(t) for t in tools or []]


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") in ("text", "text-plain"):
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def _tool_result_text(message: ToolMessage) -> str:
    artifact = message.artifact
    if isinstance(artifact, Document):
        artifact = [artifact]
    if isinstance(artifact, list) and artifact and all(isinstance(d, Document) for d in artifact):
        return "\n\n".join(d.page_content for d in artifact)
    text = _text(message)
    if getattr(message, "status", "success") == "error":
        text = f"Error: {text}"
    return text


def conversation_turns(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Chat-template turns, tool calls and tool results included (system messages first, joined)."""
    systems: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            if _text(message).strip():
                systems.append(_text(message).strip())
        elif isinstance(message, ToolMessage):
            turns.append(
                {
                    "role": "tool",
                    "content": _tool_result_text(message),
                    "tool_call_id": message.tool_call_id,
                    "name": message.name or "tool",
                }
            )
        elif isinstance(message, AIMessage) and message.tool_calls:
            turns.append(
                {
                    "role": "assistant",
                    "content": _text(message),
                    "tool_calls": [
                        {"id": c.get("id"), "name": c["name"], "arguments": c.get("args", {})}
                        for c in message.tool_calls
                    ],
                }
            )
        else:
            role = _ROLES.get(message.type, "user")
            turns.append({"role": role, "content": _text(message)})
    if systems:
        turns.insert(0, {"role": "system", "content": "\n".join(systems)})
    if not any(t["role"] in ("user", "tool") for t in turns):
        raise InvalidInputError("no question: the messages contain no human text or tool result to answer")
    return turns


def tool_call_message_fields(text: str, names: Sequence[str] = ()) -> tuple[ParsedToolCalls, dict[str, Any]]:
    """``tool_calls`` and ``invalid_tool_calls`` for an ``AIMessage`` from a reply's text
    (``names``: the bound tools, whose bare JSON calls an ``auto`` turn may write)."""
    parsed = parse_tool_calls(text, names)
    fields: dict[str, Any] = {
        "tool_calls": [tool_call(name=c.name, args=c.arguments, id=c.id) for c in parsed.calls],
        "invalid_tool_calls": [
            invalid_tool_call(name=None, args=raw, id=None, error=error) for raw, error in parsed.invalid
        ],
    }
    return parsed, fields


def tool_call_chunks(parsed: ParsedToolCalls) -> list[dict[str, Any]]:
    """The parsed calls as ``tool_call_chunks`` (one whole call per chunk) for streaming."""
    return [
        {
            "type": "tool_call_chunk",
            "name": c.name,
            "args": json.dumps(c.arguments, ensure_ascii=False),
            "id": c.id,
            "index": k,
        }
        for k, c in enumerate(parsed.calls)
    ]
