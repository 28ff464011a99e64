"""A LangGraph agent loop with a retrieval tool whose final answer must pass a grounding check.

Graph: ``plan -> tools -> answer -> check -> (answer again | END)``.

- ``plan`` is ChatOmniTrace with the retrieval tool bound (``bind_tools``): the model writes
  the tool call and its query itself, decoded under the tool-call grammar so it always parses
  into ``AIMessage.tool_calls``.
- ``tools`` is LangGraph's ``ToolNode`` running ``search_corpus`` (a retriever tool returning
  ``content_and_artifact``: the ``Document``s travel in the ``ToolMessage`` artifact).
- ``answer`` is ChatOmniTrace: it reads the ``ToolMessage``'s documents as its sources (tagged
  with the tool name and call id) and cites each sentence with the tool result it came from.
- ``check`` runs :class:`GroundingCheck`; an answer with unsupported sentences goes back to
  ``answer`` with a follow-up naming them, at most ``--retries`` times.

Finally it checks a draft with one invented sentence (teacher-forced attribution of a given
text) in ``raise`` mode, to show an unsupported sentence being caught.

Run: ``python examples/langchain_agent.py [--question TEXT] [--max-tokens N] [--retries N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from omnitrace_integrations.langchain import (
    ChatOmniTrace,
    GroundingCheck,
    UngroundedAnswerError,
    render_cited_answer,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from langchain_rag import build_retriever

DEFAULT_QUESTION = "How many people live in Casethepel Harbor, and who is its mayor?"
INVENTED = "Casethepel Harbor is also famous for its glass museum."


class AgentState(MessagesState):
    attempts: int
    verdict: dict[str, Any]


def build_agent(llm: ChatOmniTrace, retries: int = 1, k: int = 2) -> Any:
    """Compile the graph (see the module docstring)."""
    retriever = build_retriever(k=k)

    @tool(response_format="content_and_artifact")
    def search_corpus(query: str) -> tuple[str, list[Document]]:
        """Search the corpus for passages about the query."""
        docs = retriever.invoke(query)
        return "\n\n".join(d.page_content for d in docs), docs

    check = GroundingCheck(mode="annotate")

    # The model writes the tool call itself (its query); the grammar makes the call parse.
    # ``tool_choice="any"``: a 135M model rarely decides on its own to search, so this agent's
    # first step is always a search; which query is the model's. A stronger model can use "auto".
    planner = llm.bind_tools([search_corpus], tool_choice="any", parallel_tool_calls=False)

    def plan(state: AgentState) -> dict[str, Any]:
        message = planner.invoke(state["messages"], max_tokens=48)
        return {"messages": [message], "attempts": 0}

    def answer(state: AgentState) -> dict[str, Any]:
        message = llm.invoke(state["messages"])
        return {"messages": [message], "attempts": state.get("attempts", 0) + 1}

    def grade(state: AgentState) -> dict[str, Any]:
        checked = check.invoke(state["messages"][-1])
        return {"messages": [checked], "verdict": checked.response_metadata["grounding"]}

    def route(state: AgentState) -> str:
        if state["verdict"]["grounded"] or state["attempts"] > retries:
            return END
        return "retry"

    def retry(state: AgentState) -> dict[str, Any]:
        unsupported = [
            s["text"] for s in state["verdict"]["sentences"] if s["label"] == "unsupported"
        ]
        listing = "\n".join(f"- {t}" for t in unsupported)
        follow = HumanMessage(
            "These sentences are not supported by the search results:\n"
            f"{listing}\nAnswer again using only the search results."
        )
        return {"messages": [follow]}

    graph = StateGraph(AgentState)
    graph.add_node("plan", plan)
    graph.add_node("tools", ToolNode([search_corpus]))
    graph.add_node("answer", answer)
    graph.add_node("check", grade)
    graph.add_node("retry", retry)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "tools")
    graph.add_edge("tools", "answer")
    graph.add_edge("answer", "check")
    graph.add_conditional_edges("check", route, {END: END, "retry": "retry"})
    graph.add_edge("retry", "answer")
    return graph.compile()


def tool_sources(messages: list[BaseMessage]) -> list[Document]:
    """The documents the retrieval tool returned (the answer's sources)."""
    docs: list[Document] = []
    for m in messages:
        if isinstance(m, ToolMessage) and isinstance(m.artifact, list):
            docs.extend(d for d in m.artifact if isinstance(d, Document))
    return docs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--retries", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    llm = ChatOmniTrace(max_tokens=args.max_tokens)
    agent = build_agent(llm, retries=args.retries)
    state = agent.invoke({"messages": [HumanMessage(args.question)]})
    final: AIMessage = state["messages"][-1]
    calls = [c for m in state["messages"] if isinstance(m, AIMessage) for c in m.tool_calls]
    print(f"Q: {args.question}\n")
    for call in calls:
        print(f"The model called {call['name']}({call['args']}) [{call['id']}]")
    print(render_cited_answer(final))
    verdict = final.response_metadata["grounding"]
    print(f"\nAttempts: {state['attempts']}, grounded: {verdict['grounded']}")
    for s in verdict["sentences"]:
        print(f"  [{s['label']:<11}] score {s['score']:.2f}  {s['text']}")

    # A draft from elsewhere with one invented sentence: attribute it, then check strictly.
    docs = tool_sources(state["messages"])
    supported = docs[0].page_content.split(". ")[0].rstrip(".") + "."
    draft = f"{supported} {INVENTED}"
    drafted = llm.attribute_message(args.question, draft, sources=docs)
    caught: list[str] = []
    try:
        GroundingCheck(mode="raise").invoke(drafted)
        print("\nDraft passed the grounding check.")
    except UngroundedAnswerError as err:
        caught = err.sentences
        print(f"\nDraft: {draft}\nCaught: {err}")
    return {"state": state, "final": final, "draft": draft, "caught": caught, "tool_calls": calls}


if __name__ == "__main__":
    main()
