"""Build ``grounding_dev.jsonl``: forced responses mixing supported and unsupported sentences.

How it is made (deterministic, seed 0): from every ``teacher_forced`` row of the shared dev
set (``../shared/bench/dev.jsonl``), keep its sources and build a new forced response of
three or four sentences in shuffled order (two variants per row):

- ``extractive``: the row's first forced sentence (repeats the source's words);
- ``paraphrase``: one fact of another source restated in other words (only the entity,
  person, place and number survive, e.g. "Fiora Moreau leads Casethepel Harbor.");
- ``unsupported`` (one or two): a claim no source makes, about an entity the sources name
  (e.g. "Casethepel Harbor is known for its glass museum."), so it cannot be caught by
  "mentions no known entity"; gold ``[]`` and ``"unsupported": true``.

Usage: ``python tests/langchain/data/make_grounding_dev.py [SHARED_DEV] [OUT]``.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

TOWN = re.compile(
    r"^(?P<name>.+?) is a town of (?P<n>\d+) residents on the (?P<river>.+?)\. Its mayor is (?P<mayor>.+?), "
    r"and its lantern festival takes place every (?P<month>\w+)\.$"
)
COMPANY = re.compile(
    r"^(?P<name>.+?) was founded in (?P<year>\d+) in (?P<city>.+?)\. The company makes (?P<product>.+?) "
    r"and employs (?P<n>\d+) people\. Its chief executive is (?P<ceo>.+?)\.$"
)

TOWN_PARAPHRASES = [
    "{name} is led by {mayor}.",
    "Roughly {n} people call {name} home.",
    "Every {month}, {name} celebrates with lanterns.",
    "{name} lies beside the {river}.",
]
COMPANY_PARAPHRASES = [
    "{ceo} runs {name}.",
    "{name} has a workforce of {n}.",
    "{name} has existed since {year}.",
    "{name} is headquartered in {city}.",
    "{name} builds {product}.",
]
TOWN_UNSUPPORTED = [
    "{name} is known for its glass museum.",
    "{name} hosts a jazz competition each spring.",
    "Most residents of {name} work in shipbuilding.",
    "A cable car connects {name} to the nearby mountains.",
    "{mayor} previously worked as a pilot.",
]
COMPANY_UNSUPPORTED = [
    "{name} was bought by a rival firm last year.",
    "{name} exports mostly to Brazil and Chile.",
    "{ceo} studied marine biology before joining.",
    "Its shares doubled in value after a merger.",
    "{name} recently opened a research lab in Oslo.",
]


def _facts(source: dict) -> tuple[str, dict[str, str]] | None:
    for kind, pattern in (("town", TOWN), ("company", COMPANY)):
        m = pattern.match(source["text"].strip())
        if m:
            return kind, m.groupdict()
    return None


def build(shared_dev: Path) -> list[dict]:
    rng = random.Random(0)
    rows = [json.loads(line) for line in shared_dev.read_text().splitlines() if line.strip()]
    out: list[dict] = []
    for variant, row in [(v, r) for v in (0, 1) for r in rows]:
        if row["task"] != "teacher_forced":
            continue
        parsed = [(s, _facts(s)) for s in row["sources"]]
        usable = [(s, f) for s, f in parsed if f is not None]
        first = row["response_sentences"][0]
        cited = set(first["gold_sources"])
        others = [(s, f) for s, f in usable if s["id"] not in cited]
        if not others:
            continue
        sentences: list[dict] = [
            {"text": first["text"], "gold_sources": first["gold_sources"], "kind": "extractive"}
        ]
        src, (kind, facts) = rng.choice(others)
        template = rng.choice(TOWN_PARAPHRASES if kind == "town" else COMPANY_PARAPHRASES)
        sentences.append(
            {"text": template.format(**facts), "gold_sources": [src["id"]], "kind": "paraphrase"}
        )
        for _ in range(rng.choice((1, 1, 2))):
            src, (kind, facts) = rng.choice(usable)
            pool = TOWN_UNSUPPORTED if kind == "town" else COMPANY_UNSUPPORTED
            text = rng.choice(pool).format(**facts)
            if any(text == s["text"] for s in sentences):
                continue
            sentences.append(
                {"text": text, "gold_sources": [], "kind": "unsupported", "unsupported": True}
            )
        rng.shuffle(sentences)
        response = ""
        for s in sentences:
            if response:
                response += " "
            s["start"] = len(response)
            response += s["text"]
            s["end"] = len(response)
        out.append(
            {
                "id": row["id"].replace("dev-forced", "dev-grounding") + f"-{variant}",
                "task": "teacher_forced",
                "sources": row["sources"],
                "question": row["question"],
                "response": response,
                "response_sentences": [
                    {
                        k: s[k]
                        for k in ("text", "start", "end", "gold_sources", "kind", "unsupported")
                        if k in s
                    }
                    for s in sentences
                ],
            }
        )
    return out


def main() -> None:
    here = Path(__file__).resolve()
    shared = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else here.parents[3].parent / "shared" / "bench" / "dev.jsonl"
    )
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else here.with_name("grounding_dev.jsonl")
    rows = build(shared)
    target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = sum(len(r["response_sentences"]) for r in rows)
    u = sum(1 for r in rows for s in r["response_sentences"] if s.get("unsupported"))
    print(f"wrote {len(rows)} rows, {n} sentences ({u} unsupported) to {target}")


if __name__ == "__main__":
    main()
