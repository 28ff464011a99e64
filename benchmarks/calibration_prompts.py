"""Calibration prompts for ``omnitrace calibrate`` (learned head weights), not from any eval set.

Its OWN generator and seed, not derived from any evaluation set: ten domains (research
vessels, invented animal species, mountains, restaurants, space probes, orchestras, board
games, bridges, novels, sports clubs), none of which is the dev / hard sets' companies,
towns or museums; entity and person names come from syllable and name lists of this file
only. Each prompt holds 3-6 short passages about invented entities of one or two domains
plus a question. Each prompt carries a ``response_mode``:

- ``generated``: the response is produced later by the model itself (greedy, 48 tokens,
  ``omnitrace calibrate``);
- ``synth``: a response synthesised here from facts of the passages (extractive restatements,
  paraphrases with other wording, two-source comparisons, and sentences no passage supports).

No gold citations are written: the training targets come only from source ablations on the
model (``omnitrace calibrate``). The synthesised sentences carry a ``kind`` tag for diagnostics only.

    python benchmarks/calibration_prompts.py --n 140 --seed 7301 --out benchmarks/data/calibration_prompts.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# ------------------------------------------------------------------ names (own lists)

_ONSETS = ["Ter", "Pim", "Bru", "Ska", "Olm", "Dra", "Fen", "Gor", "Hul", "Jas", "Kel", "Lum",
           "Mor", "Nat", "Pra", "Rud", "Sab", "Tov", "Ulr", "Wix", "Yar", "Zem", "Cre", "Ebb"]
_MIDS = ["a", "e", "i", "o", "u", "ae", "io", "ar", "el", "un", "ist", "om", "ev"]
_CODAS = ["mok", "zel", "nix", "dor", "vash", "tum", "ric", "belle", "quist", "rand", "wyth",
          "sk", "mont", "lis", "pard", "gan", "thorn", "ley", "vik", "ost"]
_FIRST = ["Anneke", "Bruno", "Carys", "Dmitri", "Esme", "Florin", "Greta", "Hamish", "Ines",
          "Jarek", "Kalani", "Leontine", "Matteo", "Nadia", "Oswin", "Priya", "Quentin", "Rosalind",
          "Stellan", "Thea", "Ugo", "Vesna", "Wendell", "Ximena", "Yusuf", "Zofia"]
_LAST = ["Achterberg", "Balogun", "Castellanos", "Dunleavy", "Eriksen", "Fairweather", "Gallo",
         "Haraldsen", "Iwasaki", "Jovanovic", "Kowalczyk", "Lachance", "Mbeki", "Nakagawa",
         "Oyelaran", "Pellegrini", "Quarshie", "Rautio", "Szabo", "Thorvald", "Umarov", "Vance",
         "Wojcik", "Yilmaz", "Zapata"]
_PLACES = ["Kestrel Cove", "Ambermoor", "Lowfen Quay", "Ostrava Gate", "Pinehollow", "Ravensgill",
           "Saltcombe", "Thistledown", "Umbra Point", "Westerlyn", "Greyharbour", "Coldspring",
           "Marrowdale", "Sunfold", "Brackenridge", "Halvard Sound"]


def _word(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_MIDS) + rng.choice(_CODAS)


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


# ------------------------------------------------------------------ domains
# Each domain: a name maker, attribute samplers, passage phrasings (several per fact),
# paraphrase phrasings (different words for the same fact), question templates, and a
# numeric attribute for comparisons.


def _ship(rng):
    return {
        "name": f"RV {_word(rng)}",
        "year": rng.randint(1961, 2019),
        "port": rng.choice(_PLACES),
        "length": rng.randint(38, 112),
        "captain": _person(rng),
        "topic": rng.choice(["deep-sea corals", "plankton blooms", "ocean currents",
                             "whale migration", "seafloor volcanoes", "sea ice"]),
    }


def _species(rng):
    kind = rng.choice(["frog", "beetle", "finch", "bat", "lizard", "moth", "shrew"])
    return {
        "name": f"{_word(rng)} {kind}",
        "kind": kind,
        "habitat": rng.choice(["cloud forests", "salt marshes", "limestone caves",
                               "alpine meadows", "mangrove swamps", "river gorges"]),
        "weight": rng.randint(3, 480),
        "finder": _person(rng),
        "year": rng.randint(1890, 2021),
        "diet": rng.choice(["ants", "nectar", "fallen fruit", "snails", "seeds", "mosquitoes"]),
    }


def _mountain(rng):
    return {
        "name": f"Mount {_word(rng)}",
        "height": rng.randint(1800, 7900),
        "range": f"{_word(rng)} Range",
        "climber": _person(rng),
        "year": rng.randint(1850, 1999),
        "village": rng.choice(_PLACES),
    }


def _restaurant(rng):
    return {
        "name": f"{_word(rng)} Kitchen",
        "chef": _person(rng),
        "place": rng.choice(_PLACES),
        "dish": rng.choice(["smoked trout dumplings", "saffron barley stew", "chestnut pancakes",
                            "lemon squid risotto", "fig and goat cheese tart", "black garlic noodles"]),
        "seats": rng.randint(18, 140),
        "year": rng.randint(1978, 2022),
    }


def _probe(rng):
    return {
        "name": f"{_word(rng)} probe",
        "year": rng.randint(1972, 2024),
        "target": rng.choice(["Jupiter's moon Europa", "the asteroid belt", "Saturn's rings",
                              "a comet's tail", "the Sun's corona", "Neptune"]),
        "agency": f"{_word(rng)} Space Agency",
        "mass": rng.randint(120, 5400),
        "instrument": rng.choice(["a dust counter", "an infrared camera", "a magnetometer",
                                  "a radar sounder", "a mass spectrometer"]),
    }


def _orchestra(rng):
    return {
        "name": f"{_word(rng)} Chamber Orchestra",
        "year": rng.randint(1901, 2015),
        "conductor": _person(rng),
        "place": rng.choice(_PLACES),
        "members": rng.randint(12, 95),
        "repertoire": rng.choice(["baroque dance suites", "film scores", "folk song arrangements",
                                  "contemporary minimalism", "romantic symphonies"]),
    }


def _game(rng):
    return {
        "name": _word(rng),
        "designer": _person(rng),
        "year": rng.randint(1979, 2023),
        "players": rng.choice(["two", "two to four", "three to six", "up to five", "one to four"]),
        "theme": rng.choice(["trading spices", "building canals", "taming dragons",
                             "running a lighthouse", "exploring sunken cities"]),
        "minutes": rng.choice([20, 30, 45, 60, 90, 120, 150]),
    }


def _bridge(rng):
    return {
        "name": f"{_word(rng)} Bridge",
        "span": rng.randint(60, 1900),
        "year": rng.randint(1870, 2020),
        "engineer": _person(rng),
        "river": f"River {_word(rng)}",
        "material": rng.choice(["steel", "granite", "reinforced concrete", "timber", "cast iron"]),
    }


def _novel(rng):
    return {
        "name": f"The {_word(rng)} Letters",
        "author": _person(rng),
        "year": rng.randint(1880, 2023),
        "hero": _person(rng).split()[0],
        "setting": rng.choice(["a drowned city", "a lighthouse island", "a desert railway",
                               "a mountain monastery", "a floating market"]),
        "pages": rng.randint(140, 920),
    }


def _club(rng):
    return {
        "name": f"{_word(rng)} Rovers",
        "sport": rng.choice(["hockey", "rugby", "volleyball", "water polo", "handball", "curling"]),
        "ground": f"{_word(rng)} Park",
        "coach": _person(rng),
        "year": rng.randint(1880, 2010),
        "titles": rng.randint(0, 23),
    }


# fact phrasings: (key, [passage phrasings], [paraphrase phrasings]); {n} = entity name
DOMAINS = {
    "ship": dict(
        make=_ship, noun="research vessels", num="length",
        facts=[
            ("year", ["{n} was launched in {year}."], ["{n} first put to sea in {year}."]),
            ("port", ["Its home port is {port}.", "{n} is based in {port}."],
             ["{n} returns to {port} between voyages."]),
            ("length", ["The ship is {length} metres long."], ["{n} measures {length} metres from bow to stern."]),
            ("captain", ["Its captain is {captain}.", "{captain} commands the ship."],
             ["{n} sails under the command of {captain}."]),
            ("topic", ["Scientists aboard study {topic}.", "Its main mission is research on {topic}."],
             ["Researchers on {n} investigate {topic}."]),
        ],
        questions=["When was {n} launched?", "Who is the captain of {n}?", "What does {n} study?"],
        compare="{a} is longer than {b}.",
    ),
    "species": dict(
        make=_species, noun="animal species", num="weight",
        facts=[
            ("habitat", ["The {n} lives in {habitat}.", "It is found only in {habitat}."],
             ["Its home is {habitat}."]),
            ("weight", ["An adult {n} weighs about {weight} grams."],
             ["Adults of the {n} reach roughly {weight} grams."]),
            ("finder", ["It was first described by {finder} in {year}."],
             ["{finder} named the {n} in {year}."]),
            ("diet", ["The {n} feeds mainly on {diet}.", "Its diet consists of {diet}."],
             ["The {n} eats mostly {diet}."]),
        ],
        questions=["What does the {n} eat?", "Where does the {n} live?", "Who described the {n}?"],
        compare="The {a} is heavier than the {b}.",
    ),
    "mountain": dict(
        make=_mountain, noun="mountains", num="height",
        facts=[
            ("height", ["{n} rises to {height} metres.", "The summit of {n} is {height} metres high."],
             ["{n} stands {height} metres tall."]),
            ("range", ["It belongs to the {range}."], ["{n} is part of the {range}."]),
            ("climber", ["{climber} made the first ascent in {year}."],
             ["{n} was first climbed by {climber} in {year}."]),
            ("village", ["Most climbers start from the village of {village}."],
             ["Expeditions to {n} usually set out from {village}."]),
        ],
        questions=["How high is {n}?", "Who first climbed {n}?", "Which range is {n} in?"],
        compare="{a} is higher than {b}.",
    ),
    "restaurant": dict(
        make=_restaurant, noun="restaurants", num="seats",
        facts=[
            ("chef", ["{n} is run by chef {chef}.", "Its head chef is {chef}."],
             ["{chef} cooks at {n}."]),
            ("place", ["The restaurant is in {place}.", "{n} opened its doors in {place} in {year}."],
             ["Diners find {n} in {place}."]),
            ("dish", ["Its signature dish is {dish}.", "Regulars come for the {dish}."],
             ["{n} is best known for its {dish}."]),
            ("seats", ["The dining room has {seats} seats."], ["{n} can seat {seats} guests."]),
        ],
        questions=["Who is the chef at {n}?", "What is {n} known for?", "How many seats does {n} have?"],
        compare="{a} has more seats than {b}.",
    ),
    "probe": dict(
        make=_probe, noun="space probes", num="mass",
        facts=[
            ("year", ["The {n} was launched in {year}."], ["The {n} left Earth in {year}."]),
            ("target", ["It was sent to study {target}.", "Its destination is {target}."],
             ["The {n} explores {target}."]),
            ("agency", ["The {agency} built the {n}."], ["The {n} is a mission of the {agency}."]),
            ("mass", ["The spacecraft has a mass of {mass} kilograms."], ["The {n} weighs {mass} kilograms."]),
            ("instrument", ["Among its instruments is {instrument}."], ["The {n} carries {instrument}."]),
        ],
        questions=["Where was the {n} sent?", "When was the {n} launched?", "Who built the {n}?"],
        compare="The {a} is heavier than the {b}.",
    ),
    "orchestra": dict(
        make=_orchestra, noun="orchestras", num="members",
        facts=[
            ("year", ["The {n} was formed in {year}."], ["The {n} gave its first concert in {year}."]),
            ("conductor", ["Its conductor is {conductor}."], ["{conductor} leads the {n}."]),
            ("place", ["The ensemble is based in {place}."], ["The {n} performs mostly in {place}."]),
            ("members", ["It has {members} musicians."], ["The {n} counts {members} players."]),
            ("repertoire", ["It is known for {repertoire}."], ["The {n} specialises in {repertoire}."]),
        ],
        questions=["Who conducts the {n}?", "How many musicians play in the {n}?", "What does the {n} play?"],
        compare="The {a} has more musicians than the {b}.",
    ),
    "game": dict(
        make=_game, noun="board games", num="minutes",
        facts=[
            ("designer", ["{n} is a board game designed by {designer}."], ["{designer} created the game {n}."]),
            ("year", ["It was published in {year}."], ["{n} came out in {year}."]),
            ("players", ["It is played by {players} players."], ["{n} supports {players} players."]),
            ("theme", ["Players compete at {theme}.", "The game is about {theme}."],
             ["In {n}, the goal is {theme}."]),
            ("minutes", ["A game lasts about {minutes} minutes."], ["A round of {n} takes roughly {minutes} minutes."]),
        ],
        questions=["Who designed {n}?", "How long does a game of {n} take?", "What is {n} about?"],
        compare="{a} takes longer to play than {b}.",
    ),
    "bridge": dict(
        make=_bridge, noun="bridges", num="span",
        facts=[
            ("river", ["The {n} crosses the {river}."], ["The {n} spans the {river}."]),
            ("span", ["Its main span is {span} metres."], ["The {n} stretches {span} metres between its piers."]),
            ("year", ["It opened in {year}."], ["Traffic first crossed the {n} in {year}."]),
            ("engineer", ["It was designed by the engineer {engineer}."], ["{engineer} engineered the {n}."]),
            ("material", ["It is built of {material}."], ["The {n} is made from {material}."]),
        ],
        questions=["Which river does the {n} cross?", "Who designed the {n}?", "When did the {n} open?"],
        compare="The {a} is longer than the {b}.",
    ),
    "novel": dict(
        make=_novel, noun="novels", num="pages",
        facts=[
            ("author", ["{n} is a novel by {author}."], ["{author} wrote {n}."]),
            ("year", ["It appeared in {year}."], ["{n} was first printed in {year}."]),
            ("hero", ["Its hero is a young courier named {hero}."], ["{n} follows a courier called {hero}."]),
            ("setting", ["The story is set in {setting}."], ["{n} takes place in {setting}."]),
            ("pages", ["The book runs to {pages} pages."], ["{n} is {pages} pages long."]),
        ],
        questions=["Who wrote {n}?", "Where is {n} set?", "Who is the hero of {n}?"],
        compare="{a} is a longer book than {b}.",
    ),
    "club": dict(
        make=_club, noun="sports clubs", num="titles",
        facts=[
            ("sport", ["{n} is a {sport} club founded in {year}."], ["{n} plays {sport}."]),
            ("ground", ["Home matches are played at {ground}."], ["{n} hosts its games at {ground}."]),
            ("coach", ["The head coach is {coach}."], ["{coach} coaches {n}."]),
            ("titles", ["The club has won {titles} league titles."], ["{n} has {titles} championships to its name."]),
        ],
        questions=["Who coaches {n}?", "Where does {n} play?", "What sport does {n} play?"],
        compare="{a} has won more titles than {b}.",
    ),
}

_FILLERS = [
    "Local newspapers have written about it several times.",
    "Visitors often mention it in travel diaries.",
    "Little else is recorded about its early years.",
    "It appears in a regional almanac.",
    "Its records are kept in a small archive.",
]

_UNSUPPORTED = [
    "{n} received a national award last spring.",
    "{n} is expected to change owners next year.",
    "A documentary about {n} is currently in production.",
    "{n} was briefly closed because of a flood.",
    "A statue honouring {n} stands near the harbour.",
]

_OPEN_QUESTIONS = [
    "What do the sources say? Answer in two or three sentences.",
    "Summarise the sources briefly.",
    "Give a few facts from the sources.",
    "Describe two of the {noun} mentioned in the sources.",
    "Write one sentence about each source.",
]


def _fill(tpl: str, ent: dict) -> str:
    return tpl.format(n=ent["name"], **{k: v for k, v in ent.items() if k != "name"})


def _passage(rng: random.Random, domain: dict, ent: dict) -> tuple[str, list[tuple[str, str]]]:
    """A passage (2-5 sentences) and the facts (key, phrasing) it states."""
    facts = list(domain["facts"])
    rng.shuffle(facts)
    k = rng.randint(2, min(len(facts), 4))
    # the first sentence names the entity: a fact with a phrasing that holds {n}
    first = next(f for f in facts if any("{n}" in p for p in f[1]))
    chosen = [first, *[f for f in facts if f is not first][: k - 1]]
    sentences, used = [], []
    for i, (key, phr, _para) in enumerate(chosen):
        tpl = rng.choice([p for p in phr if "{n}" in p]) if i == 0 else rng.choice(phr)
        sentences.append(_fill(tpl, ent))
        used.append((key, tpl))
    if rng.random() < 0.3:
        sentences.insert(rng.randint(1, len(sentences)), rng.choice(_FILLERS))
    return " ".join(sentences), used


def make_prompt(rng: random.Random, idx: int) -> dict:
    n_src = rng.randint(3, 6)
    dnames = rng.sample(sorted(DOMAINS), 2)
    mixed = rng.random() < 0.3
    sources, ents = [], []
    for i in range(n_src):
        dn = dnames[i % 2] if mixed else dnames[0]
        dom = DOMAINS[dn]
        ent = dom["make"](rng)
        text, used = _passage(rng, dom, ent)
        src = {"id": f"doc{i + 1}", "text": text}
        if rng.random() < 0.7:
            src["title"] = ent["name"] if not ent["name"].startswith("The ") else ent["name"][4:]
        sources.append(src)
        ents.append({"domain": dn, "entity": ent, "used": used})
    # question
    r = rng.random()
    if r < 0.45:
        j = rng.randrange(n_src)
        dom = DOMAINS[ents[j]["domain"]]
        q = rng.choice(dom["questions"]).format(n=ents[j]["entity"]["name"])
        q += rng.choice(["", " Answer in one sentence.", " Answer briefly."])
        qtype = "single"
    elif r < 0.65:
        a, b = rng.sample(range(n_src), 2)
        q = (f"Tell me about {ents[a]['entity']['name']} and {ents[b]['entity']['name']}. "
             "Use one sentence for each.")
        qtype = "pair"
    else:
        q = rng.choice(_OPEN_QUESTIONS).format(noun=DOMAINS[dnames[0]]["noun"])
        qtype = "open"
    mode = "generated" if rng.random() < 0.5 else "synth"
    row = {"id": f"calib-{idx}", "sources": sources, "question": q, "qtype": qtype,
           "domains": dnames if mixed else dnames[:1], "response_mode": mode}
    if mode == "synth":
        row["response"], row["synth_kinds"] = synth_response(rng, ents)
    return row


def synth_response(rng: random.Random, ents: list[dict]) -> tuple[str, list[str]]:
    """2-4 sentences: extractive, paraphrase, comparison, or unsupported (kind tags only)."""
    out, kinds = [], []
    n = rng.randint(2, 4)
    for _ in range(n):
        r = rng.random()
        j = rng.randrange(len(ents))
        e, dom = ents[j], DOMAINS[ents[j]["domain"]]
        if r < 0.3:  # extractive: one of its passage facts, stated with the entity name
            _key, tpl = rng.choice(e["used"])
            s = _fill(tpl, e["entity"])  # as in the passage (may start with "It")
            kinds.append("extractive")
        elif r < 0.65:  # paraphrase of a stated fact
            key, _ = rng.choice(e["used"])
            para = next(ps for k, _, ps in dom["facts"] if k == key)
            s = _fill(rng.choice(para), e["entity"])
            kinds.append("paraphrase")
        elif r < 0.85:  # comparison of two same-domain entities on their numeric attribute
            num = dom["num"]
            stated = lambda x, num=num: any(k == num for k, _ in x["used"])  # noqa: E731
            same = [i for i, x in enumerate(ents)
                    if x["domain"] == e["domain"] and i != j and stated(x) and stated(e)]
            if not same:
                key, _ = rng.choice(e["used"])
                s = _fill(rng.choice(next(ps for k, _, ps in dom["facts"] if k == key)), e["entity"])
                kinds.append("paraphrase")
            else:
                o = ents[rng.choice(same)]
                a, b = (e, o) if e["entity"][num] >= o["entity"][num] else (o, e)
                s = dom["compare"].format(a=a["entity"]["name"], b=b["entity"]["name"])
                kinds.append("compare")
        else:  # unsupported: a claim no passage makes
            s = rng.choice(_UNSUPPORTED).format(n=e["entity"]["name"])
            kinds.append("unsupported")
        s = s[0].upper() + s[1:]
        out.append(s)
    return " ".join(out), kinds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=140)
    ap.add_argument("--seed", type=int, default=7301)
    ap.add_argument("--out", default=str(Path(__file__).parent / "data" / "calibration_prompts.jsonl"))
    a = ap.parse_args()
    rng = random.Random(a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        for i in range(a.n):
            f.write(json.dumps(make_prompt(rng, i)) + "\n")
    print(f"wrote {a.n} prompts to {a.out}")


if __name__ == "__main__":
    main()
