"""Tool calling for ``OmniTraceLLM``: LlamaIndex tools and messages <-> the core's tools module.

- :func:`tool_specs` turns LlamaIndex tools (``BaseTool``: ``FunctionTool``,
  ``QueryEngineTool``...) or OpenAI-style dicts into core
  :class:`~omnitrace_core.tools.ToolSpec` objects.
- :func:`tool_choice_name` reads ``tool_required`` / ``tool_choice`` (``"auto"``,
  ``"required"`` / ``"any"``, ``"none"``, a tool's name, an OpenAI ``{"type": "function",
  "function": {"name": ...}}`` dict) into the core's choice.
- :func:`message_tool_calls` reads the calls an assistant message made: ``ToolCallBlock``s
  (what LlamaIndex's agents keep in memory) or OpenAI-style ``additional_kwargs["tool_calls"]``.
- :func:`conversation_turns` writes messages as chat-template turns with those calls and the
  ``tool`` results, so the model sees what it called and what came back.
- :func:`tool_result_name` names a ``tool`` message's tool (from the message, else from the
  call with the same id), for the source id ``<tool name>:<call id>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock

from omnitrace_core import InvalidInputError
from omnitrace_core.tools import ParsedToolCalls, ToolSpec, choice_name, resolve_choice


def tool_specs(tools: Sequence[Any] | None) -> list[ToolSpec]:
    """Core tool specs for LlamaIndex tools (``tool.metadata.to_openai_tool()``), OpenAI-style
    dicts or ``ToolSpec``s.

    Raises:
        InvalidInputError: an object that is none of these (its type is named).
    """
    specs: list[ToolSpec] = []
    for tool in tools or []:
        if isinstance(tool, ToolSpec):
            specs.append(tool)
        elif isinstance(tool, dict):
            specs.append(ToolSpec.from_openai(tool))
        elif hasattr(getattr(tool, "metadata", None), "to_openai_tool"):
            specs.append(ToolSpec.from_openai(tool.metadata.to_openai_tool(skip_length_check=True)))
        else:
            raise InvalidInputError(
                f"not a tool: {type(tool).__name__} (pass LlamaIndex tools, e.g. FunctionTool, "
                "or OpenAI-style function dicts)"
            )
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInputError(f"two tools share a name: {', '.join(duplicates)}")
    return specs


def tool_choice_name(specs: Sequence[ToolSpec], tool_required: bool, tool_choice: Any) -> str:
    """The core choice (``auto`` / ``required`` / ``none`` / a tool name) for ``tool_required``
    and an explicit ``tool_choice`` (which wins when given).

    Raises:
        InvalidInputError: an unknown choice or tool name (the bound tools are listed).
    """
    tool_choice = choice_name(tool_choice)
    if tool_choice is None:
        tool_choice = "required" if tool_required else "auto"
    return resolve_choice(specs, tool_choice)


def message_tool_calls(message: ChatMessage) -> list[dict[str, Any]]:
    """``[{"id", "name", "arguments"}]`` for the calls an assistant message made."""
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, ToolCallBlock):
            args = block.tool_kwargs
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError:
                    args = {"input": args}
            calls.append({"id": block.tool_call_id, "name": block.tool_name, "arguments": args})
    for raw in message.additional_kwargs.get("tool_calls") or []:
        data = raw if isinstance(raw, dict) else getattr(raw, "model_dump", lambda: {})()
        fn = data.get("function") or {}
        name = fn.get("name") or data.get("tool_name")
        if not name or any(c["id"] == data.get("id") and c["name"] == name for c in calls):
            continue
        raw_args: Any = fn.get("arguments", data.get("tool_kwargs", {}))
        if isinstance(raw_args, str):
            try:
                raw_args = json.loads(raw_args) if raw_args.strip() else {}
            except json.JSONDecodeError:
                raw_args = {"input": raw_args}
        calls.append({"id": data.get("id") or data.get("tool_id"), "name": str(name), "arguments": raw_args})
    return calls


def tool_result_name(message: ChatMessage, calls_by_id: dict[str, str]) -> str | None:
    """The tool a ``tool`` message answers: ``additional_kwargs["name"]`` / ``["tool_name"]``,
    else the name of the earlier call with its ``tool_call_id``."""
    kw = message.additional_kwargs
    name = kw.get("name") or kw.get("tool_name")
    if name:
        return str(name)
    call_id = kw.get("tool_call_id")
    return calls_by_id.get(str(call_id)) if call_id is not None else None


def _text(message: ChatMessage) -> str:
    return "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock) and b.text.strip())


def conversation_turns(messages: Sequence[ChatMessage], system: str | None = None) -> list[dict[str, Any]]:
    """Chat-template turns (:func:`omnitrace_core.tools.render_prompt`) with tool calls and
    ``tool`` results; system messages (and ``system``) become one first system turn.

    Raises:
        InvalidInputError: no user text and no tool result to answer.
    """
    systems = [system] if system else []
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for message in messages:
        role = message.role
        if role == MessageRole.SYSTEM:
            if _text(message):
                systems.append(_text(message))
        elif role == MessageRole.TOOL:
            call_id = message.additional_kwargs.get("tool_call_id")
            turns.append(
                {
                    "role": "tool",
                    "content": _text(message),
                    "tool_call_id": call_id,
                    "name": tool_result_name(message, names) or "tool",
                }
            )
        elif role == MessageRole.ASSISTANT and (calls := message_tool_calls(message)):
            names.update({str(c["id"]): c["name"] for c in calls if c["id"] is not None})
            turns.append({"role": "assistant", "content": _text(message), "tool_calls": calls})
        else:
            turns.append(
                {"role": "assistant" if role == MessageRole.ASSISTANT else "user", "content": _text(message)}
            )
    if systems:
        turns.insert(0, {"role": "system", "content": "\n".join(systems)})
    if not any(t["role"] in ("user", "tool") and t["content"] for t in turns):
        raise InvalidInputError("the messages hold no user text or tool result: nothing to answer")
    return turns


def tool_call_blocks(parsed: ParsedToolCalls) -> list[ToolCallBlock]:
    """One ``ToolCallBlock`` per parsed call (id ``call_<12 hex>``, arguments as a dict)."""
    return [
        ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=dict(c.arguments))
        for c in parsed.calls
    ]
