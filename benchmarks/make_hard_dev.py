"""Build ``benchmarks/data/hard_dev.jsonl``: a dev set where word overlap does not find the source.

The shared dev set is extractive (every forced sentence repeats its source's words), so a word
match scores ~1.0 on it and says nothing about attribution by meaning. This script writes
teacher-forced rows in the same format (``../shared/bench/README.md``) whose response sentences
are labelled per sentence with gold sources and a ``kind``:

``extractive``
    Control: a clause of its source, copied (entity name and value as written).
``paraphrase``
    One fact of one source restated in other words. It shares at most a few content words
    with its source, and every shared word also occurs in another source of the row (a city,
    river or surname two sources have in common), so overlap narrows the choice to two
    sources but never singles out the right one; the rest (what the entity makes, holds or is
    famous for) is described, never named.
``meaning_only``
    Picks its source out by meaning alone: no content word in common with its source (the
    product / speciality / collection described in other words, numbers rounded and written
    in words, no names).
``multi_source``
    One sentence combining facts of two sources (a true comparison or a shared value), gold
    both; at least one of the two is referred to by meaning only.
``unsupported``
    A claim no source states, in the topic's own words (gold ``[]``, ``"unsupported": true``):
    a new fact about a named entity of the row, a sentence shaped like a source sentence about
    an entity no source names (with a city or river the sources do name), or a claim about
    the sources as a group.

Construction rules, all asserted while building (a violation raises, naming the row):

- entities, places and people are invented (syllable names), so a model cannot answer from
  memory; 4-6 sources per row, all of one domain (companies, towns, museums);
- gold sources are drawn uniformly over source positions (the small model's attention favours
  early sources, so gold must not sit early by construction);
- no carry-forward leak: a sentence's gold shares no source with the previous supported
  sentence's gold;
- the word-overlap rules above, checked with the same content-word tokeniser the lexical
  baseline uses (``omnitrace_core.evaluation.baselines.content_words``);
- every sentence ends with a full stop and holds no abbreviation or decimal point, so the
  core's sentence splitter returns exactly the labelled sentences.

Deterministic: templates plus ``random.Random(SEED)``; no model is involved.

Usage: ``python benchmarks/make_hard_dev.py [--out benchmarks/data/hard_dev.jsonl] [--rows 80]``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitrace_core.evaluation.baselines import content_words

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "data" / "hard_dev.jsonl"
SEED = 8
N_ROWS = 80

# Share of each kind among a row's sentences (sampled per sentence, then repaired per row).
KIND_WEIGHTS = {
    "extractive": 0.15,
    "paraphrase": 0.22,
    "meaning_only": 0.22,
    "multi_source": 0.20,
    "unsupported": 0.21,
}

# ---------------------------------------------------------------- invented vocabulary

_ONSETS = ["Val", "Vor", "Lun", "Quen", "Ist", "Tel", "Bri", "Cas", "Dor", "Mar", "Thel", "Kest", "Orv",
           "Pyr", "Zan", "Hal", "Brann", "Cor", "Eld", "Fen", "Gar", "Wes", "Ny", "Sel"]
_MIDDLES = ["a", "e", "i", "o", "u", "ar", "en", "is", "or", "ul", "eth"]
_CODAS = ["brook", "mar", "ton", "ia", "ex", "lon", "the", "vo", "dell", "rim", "sk", "wyn", "mouth", "gard"]

FIRST_NAMES = ["Bastian", "Halina", "Fiora", "Corin", "Amara", "Gideon", "Ilse", "Tobias", "Mireille",
               "Anselm", "Oksana", "Rafe", "Yelena", "Soren", "Priya", "Matthias"]
SURNAMES = ["Vasquez", "Lindqvist", "Tanaka", "Dvorak", "Castell", "Moreau", "Okafor", "Brandt", "Ferreira",
            "Halloran", "Nakamura", "Petrov", "Quist", "Renard"]
CITIES = ["Cedar Falls", "Harlow Bay", "Port Ashby", "Mistral Point", "Glenmoor", "Riverstead", "Dunmore",
          "Ashcombe", "Keldwick", "Brannock Vale", "Saltmere", "Orwick"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

# Thing the entity makes / is famous for / holds, and the same thing described in other words
# (no content word in common with the source sentence that names it).
PRODUCTS = {
    "water filters": "cartridges that purify drinking supplies",
    "drone motors": "engines for small unmanned aircraft",
    "solar batteries": "storage cells charged by sunlight",
    "hearing aids": "gadgets that amplify sound for listeners with weak ears",
    "ceramic tiles": "glazed clay squares for floors and walls",
    "bicycle frames": "the rigid skeletons of pedal-powered two-wheelers",
    "telescope lenses": "optics for stargazing instruments",
    "wind turbines": "towers that harvest electricity from moving air",
    "office chairs": "seating for desk staff",
    "medical gloves": "protective hand coverings for surgeons",
    "pressure cookers": "sealed pots that steam meals quickly",
    "ski bindings": "clamps that hold boots onto planks for snowy slopes",
}
SPECIALTIES = {
    "glassblowing workshops": "artisans who shape molten sand into vases",
    "cheese markets": "fairs where aged curds are traded",
    "salt pans": "shallow pools where seawater dries into crystals",
    "silk weaving": "turning cocoon threads into fine fabric",
    "clock makers": "craftsmen who build timepieces",
    "rose gardens": "beds of thorny, fragrant blooms",
    "boat yards": "places where hulls are built and repaired",
    "olive presses": "mills that crush small green fruit for cooking fat",
    "copper mines": "shafts dug for a reddish metal",
    "hot springs": "naturally heated bathing pools",
    "kite fliers": "people who launch paper shapes into the breeze",
    "bell foundries": "furnaces where chimes are cast in bronze",
}
COLLECTIONS = {
    "antique maps": "old charts of coastlines and continents",
    "mechanical toys": "wind-up playthings",
    "dinosaur fossils": "petrified bones of prehistoric reptiles",
    "woven tapestries": "large decorative wall hangings made on looms",
    "folk instruments": "traditional fiddles, pipes and drums",
    "meteorites": "rocks that fell from outer space",
    "porcelain vases": "fine white ceramic vessels",
    "vintage cameras": "old photographic equipment",
    "ship models": "miniature replicas of sailing vessels",
    "rare coins": "old currency pieces struck in metal",
    "botanical drawings": "sketches of flowers and leaves",
    "medieval armour": "steel suits worn by knights",
}

# ---------------------------------------------------------------- numbers in words

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def int_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000 ("four hundred and five")."""
    if n < 0 or n >= 1_000_000:
        raise ValueError(f"int_words handles 0..999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + int_words(rest))
    rest = n % 1000
    head = int_words(n // 1000) + " thousand"
    if rest == 0:
        return head
    return head + (" and " if rest < 100 else " ") + int_words(rest)


def approx_words(n: int) -> str:
    """``n`` rounded to two significant figures, in words ("about four hundred and ten")."""
    digits = len(str(n))
    step = 10 ** max(0, digits - 2)
    rounded = int(round(n / step) * step)
    qualifier = "about" if rounded != n else "exactly"
    return f"{qualifier} {int_words(rounded)}"


def decade_words(year: int) -> str:
    """The decade of ``year`` in words ("the nineteen-sixties"), never the digits."""
    decade = year // 10 * 10
    if 1900 <= decade < 1910:
        return "the first decade of the twentieth century"
    if 2000 <= decade < 2010:
        return "the first decade of this century"
    if decade >= 2010:
        return "the twenty-tens"
    century, tens = divmod(decade, 100)
    tens_word = {10: "tens", 20: "twenties", 30: "thirties", 40: "forties", 50: "fifties", 60: "sixties",
                 70: "seventies", 80: "eighties", 90: "nineties"}[tens] if tens else "hundreds"
    return f"the {_ONES[century]}-{tens_word}"


# ---------------------------------------------------------------- entities and sources


@dataclass
class Entity:
    """One invented entity of a row: its facts, its source text and its description."""

    domain: str
    name: str
    facts: dict[str, Any]
    thing: str  # product / speciality / collection, as the source names it
    described: str  # the same thing in other words
    shared_slot: str  # fact holding the value shared with other sources (city / river)
    person_slot: str  # fact holding the person (ceo / mayor / director)
    sid: str = ""
    text: str = ""
    keys: list[str] = field(default_factory=list)

    @property
    def surname(self) -> str:
        return str(self.facts[self.person_slot]).split()[-1]

    @property
    def place(self) -> str:
        return str(self.facts[self.shared_slot])

    @property
    def count(self) -> int:
        return int(self.facts["n"])


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        stem = rng.choice(_ONSETS) + rng.choice(_MIDDLES) + rng.choice(_CODAS)
        if stem not in taken and len(stem) >= 6:
            taken.add(stem)
            return stem


def _spread_counts(rng: random.Random, n: int, low: int, high: int) -> list[int]:
    """``n`` counts whose rounded word forms differ and any two differ by at least 30%."""
    out: list[int] = []
    while len(out) < n:
        c = int(10 ** rng.uniform(math.log10(low), math.log10(high)))  # log-uniform in [low, high]
        if all(max(c, o) / min(c, o) >= 1.3 for o in out):
            out.append(c)
    return out


def _spread_years(rng: random.Random, n: int) -> list[int]:
    """``n`` founding years at least 12 years (and a decade) apart."""
    out: list[int] = []
    while len(out) < n:
        y = rng.randint(1895, 2016)
        if all(abs(y - o) >= 12 and y // 10 != o // 10 for o in out):
            out.append(y)
    return out


def make_entities(rng: random.Random, domain: str, n: int, taken: set[str]) -> list[Entity]:
    """``n`` entities of one domain; places and surnames repeat in pairs so overlap is ambiguous."""
    place_pool_size = (n + 1) // 2
    surnames = rng.sample(SURNAMES, (n + 1) // 2)
    firsts = rng.sample(FIRST_NAMES, n)
    counts = _spread_counts(rng, n, *{"company": (120, 9800), "town": (1200, 95000),
                                      "museum": (3000, 400000)}[domain])
    years = _spread_years(rng, n)
    things = rng.sample(sorted({"company": PRODUCTS, "town": SPECIALTIES, "museum": COLLECTIONS}[domain]), n)
    if domain == "town":
        places = [_name(rng, taken) + " River" for _ in range(place_pool_size)]
    else:
        places = rng.sample(CITIES, place_pool_size)
    # Every place and surname is used by at least two entities when n allows it.
    place_of = [places[i % place_pool_size] for i in range(n)]
    surname_of = [surnames[i % len(surnames)] for i in range(n)]
    rng.shuffle(place_of)
    rng.shuffle(surname_of)
    months = rng.sample(MONTHS, n)
    out = []
    for i in range(n):
        stem = _name(rng, taken)
        person = f"{firsts[i]} {surname_of[i]}"
        thing = things[i]
        if domain == "company":
            name = f"{stem} {rng.choice(['Works', 'Labs', 'Industries', 'Systems'])}"
            facts = {"year": years[i], "city": place_of[i], "n": counts[i], "ceo": person}
            described, shared, person_slot = PRODUCTS[thing], "city", "ceo"
            text = (f"{name} was founded in {years[i]} in {place_of[i]}. The company makes {thing} and "
                    f"employs {counts[i]} people. Its chief executive is {person}.")
            keys = [name, str(years[i]), person, place_of[i], thing, str(counts[i])]
        elif domain == "town":
            name = stem + rng.choice(["field", "ville", " Harbor", " Crossing"])
            facts = {"n": counts[i], "river": place_of[i], "mayor": person, "month": months[i]}
            described, shared, person_slot = SPECIALTIES[thing], "river", "mayor"
            text = (f"{name} is a town of {counts[i]} residents on the {place_of[i]}. Its mayor is {person}, "
                    f"and it is known for its {thing}. Its lantern festival takes place every {months[i]}.")
            keys = [name, str(counts[i]), place_of[i], person, thing, months[i]]
        else:
            name = f"{stem} {rng.choice(['Museum', 'Gallery', 'Collection'])}"
            facts = {"year": years[i], "city": place_of[i], "n": counts[i], "director": person}
            described, shared, person_slot = COLLECTIONS[thing], "city", "director"
            text = (f"{name} opened in {years[i]} in {place_of[i]}. It holds a collection of {thing} and "
                    f"welcomes {counts[i]} visitors a year. Its director is {person}.")
            keys = [name, str(years[i]), place_of[i], thing, str(counts[i]), person]
        out.append(Entity(domain, name, facts, thing, described, shared, person_slot, text=text, keys=keys))
    return out


# ---------------------------------------------------------------- sentence templates

# Each template: (template id, needs, builder). ``needs`` says how many entities it takes and
# what they must share; the builder returns the sentence. ``{d}`` is the described thing.
Builder = Callable[[Sequence[Entity], random.Random], str | None]


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _extractive(domain: str) -> list[tuple[str, Builder]]:
    if domain == "company":
        return [
            ("ext/founded", lambda e, r: f"{e[0].name} was founded in {e[0].facts['year']} in {e[0].place}."),
            ("ext/makes", lambda e, r: f"{e[0].name} makes {e[0].thing} and employs {e[0].count} people."),
            ("ext/ceo", lambda e, r: f"The chief executive of {e[0].name} is {e[0].facts['ceo']}."),
        ]
    if domain == "town":
        return [
            ("ext/size", lambda e, r: f"{e[0].name} is a town of {e[0].count} residents on the {e[0].place}."),
            ("ext/mayor", lambda e, r: f"The mayor of {e[0].name} is {e[0].facts['mayor']}."),
            ("ext/festival", lambda e, r: f"The lantern festival of {e[0].name} takes place every "
                                          f"{e[0].facts['month']}."),
        ]
    return [
        ("ext/opened", lambda e, r: f"{e[0].name} opened in {e[0].facts['year']} in {e[0].place}."),
        ("ext/holds", lambda e, r: f"{e[0].name} holds a collection of {e[0].thing}."),
        ("ext/director", lambda e, r: f"The director of {e[0].name} is {e[0].facts['director']}."),
    ]


def _paraphrase(domain: str) -> list[tuple[str, str, Builder]]:
    """(template id, shared attribute: ``place`` / ``surname``, builder)."""
    if domain == "company":
        return [
            ("para/place-product", "place", lambda e, r: f"A firm based in {e[0].place} turns out {e[0].described}."),
            ("para/surname-product", "surname",
             lambda e, r: f"One firm with a chief named {e[0].surname} produces {e[0].described}."),
            ("para/place-staff", "place",
             lambda e, r: f"The {e[0].place} maker of {e[0].described} has a payroll of "
                          f"{approx_words(e[0].count)}."),
            ("para/surname-decade", "surname",
             lambda e, r: f"Since {decade_words(e[0].facts['year'])}, a firm whose boss is called "
                          f"{e[0].surname} has produced {e[0].described}."),
        ]
    if domain == "town":
        return [
            ("para/place-specialty", "place",
             lambda e, r: f"One of the communities along the {e[0].place} is famous for {e[0].described}."),
            ("para/surname-specialty", "surname",
             lambda e, r: f"The community whose leader is named {e[0].surname} is famous for "
                          f"{e[0].described}."),
            ("para/place-size", "place",
             lambda e, r: f"On the {e[0].place}, the community famous for {e[0].described} counts "
                          f"{approx_words(e[0].count)} inhabitants."),
        ]
    return [
        ("para/place-collection", "place",
         lambda e, r: f"A hall in {e[0].place} puts {e[0].described} on display."),
        ("para/surname-collection", "surname",
         lambda e, r: f"The institution run by someone named {e[0].surname} shows {e[0].described}."),
        ("para/place-guests", "place",
         lambda e, r: f"In {e[0].place}, the hall showing {e[0].described} draws {approx_words(e[0].count)} "
                      f"guests annually."),
    ]


def _meaning_only(domain: str) -> list[tuple[str, Builder]]:
    if domain == "company":
        return [
            ("mean/staff", lambda e, r: f"The producer of {e[0].described} has a staff of "
                                        f"{approx_words(e[0].count)}."),
            ("mean/decade", lambda e, r: f"The maker of {e[0].described} dates back to "
                                         f"{decade_words(e[0].facts['year'])}."),
            ("mean/thing", lambda e, r: _cap(f"{approx_words(e[0].count)} staff build {e[0].described}.")),
        ]
    if domain == "town":
        return [
            ("mean/size", lambda e, r: f"The community famous for {e[0].described} has "
                                       f"{approx_words(e[0].count)} inhabitants."),
            ("mean/thing", lambda e, r: f"A community of {approx_words(e[0].count)} is proud of "
                                        f"{e[0].described}."),
        ]
    return [
        ("mean/guests", lambda e, r: f"The hall displaying {e[0].described} draws "
                                     f"{approx_words(e[0].count)} guests annually."),
        ("mean/decade", lambda e, r: f"The exhibition of {e[0].described} has been open since "
                                     f"{decade_words(e[0].facts['year'])}."),
    ]


def _more(a: int, b: int, more: str, less: str) -> str:
    return more if a > b else less


def _multi(domain: str) -> list[tuple[str, str, Builder]]:
    """(template id, requirement: ``any`` / ``same_place``, builder over two entities)."""
    if domain == "company":
        return [
            ("multi/named-staff", "any",
             lambda e, r: f"{e[0].name} has a {_more(e[0].count, e[1].count, 'larger', 'smaller')} staff "
                          f"than the maker of {e[1].described}."),
            ("multi/age", "any",
             lambda e, r: f"The maker of {e[0].described} is "
                          f"{_more(e[1].facts['year'], e[0].facts['year'], 'older', 'younger')} than the "
                          f"producer of {e[1].described}."),
            ("multi/same-place", "same_place",
             lambda e, r: f"{e[0].name} and the producer of {e[1].described} share a home city."),
        ]
    if domain == "town":
        return [
            ("multi/named-size", "any",
             lambda e, r: f"{e[0].name} has {_more(e[0].count, e[1].count, 'more', 'fewer')} inhabitants than "
                          f"the community famous for {e[1].described}."),
            ("multi/size", "any",
             lambda e, r: f"The community famous for {e[0].described} is "
                          f"{_more(e[0].count, e[1].count, 'bigger', 'smaller')} than the one famous for "
                          f"{e[1].described}."),
            ("multi/same-place", "same_place",
             lambda e, r: f"{e[0].name} and the community famous for {e[1].described} lie on the same "
                          f"waterway."),
        ]
    return [
        ("multi/named-guests", "any",
         lambda e, r: f"{e[0].name} draws {_more(e[0].count, e[1].count, 'more', 'fewer')} guests than the "
                      f"hall displaying {e[1].described}."),
        ("multi/age", "any",
         lambda e, r: f"The hall displaying {e[0].described} is "
                      f"{_more(e[1].facts['year'], e[0].facts['year'], 'older', 'younger')} than the one "
                      f"showing {e[1].described}."),
        ("multi/same-place", "same_place",
         lambda e, r: f"{e[0].name} and the hall showing {e[1].described} stand in the same city."),
    ]


def _unsupported(domain: str, invented: str, row_place: str, rng: random.Random) -> list[tuple[str, Builder]]:
    """Claims no source states, in the topic's words; ``e[0]`` is any entity of the row."""
    if domain == "company":
        return [
            ("unsup/named", lambda e, r: f"{e[0].name} exports most of its output to buyers overseas."),
            ("unsup/named", lambda e, r: f"{e[0].name} was bought by a rival firm last year."),
            ("unsup/person", lambda e, r: f"{e[0].facts['ceo']} studied marine biology before taking charge."),
            ("unsup/shaped", lambda e, r: f"{invented} Works was founded in {rng.randint(1890, 2015)} in "
                                          f"{row_place}."),
            ("unsup/group", lambda e, r: "Two of these companies plan to merge next year."),
        ]
    if domain == "town":
        return [
            ("unsup/named", lambda e, r: f"{e[0].name} is twinned with a city across the sea."),
            ("unsup/named", lambda e, r: f"A marathon is run through {e[0].name} every spring."),
            ("unsup/person", lambda e, r: f"{e[0].facts['mayor']} previously worked as a ferry pilot."),
            ("unsup/shaped", lambda e, r: f"{invented}ville is a town of {rng.randint(1200, 95000)} residents "
                                          f"on the {row_place}."),
            ("unsup/group", lambda e, r: "None of these towns has a railway station."),
        ]
    return [
        ("unsup/named", lambda e, r: f"{e[0].name} charges no entry fee on Sundays."),
        ("unsup/named", lambda e, r: f"{e[0].name} was once a royal stable."),
        ("unsup/person", lambda e, r: f"{e[0].facts['director']} previously ran an opera house."),
        ("unsup/shaped", lambda e, r: f"{invented} Museum opened in {rng.randint(1890, 2015)} in {row_place}."),
        ("unsup/group", lambda e, r: "All of these museums share a single restoration workshop."),
    ]


# ---------------------------------------------------------------- checks


def _words(text: str) -> set[str]:
    return set(content_words(text))


def _source_words(e: Entity) -> set[str]:
    return _words(f"{e.name}. {e.text}")  # the lexical baseline reads title + text


def check_sentence(kind: str, text: str, gold: Sequence[Entity], row: Sequence[Entity], where: str) -> None:
    """Assert the word-overlap rule of ``kind``; the message names the row and the sentence."""
    words = _words(text)
    if not text.endswith(".") or "." in text[:-1]:
        raise AssertionError(f"{where}: sentence must hold exactly one full stop, at its end: {text!r}")
    if kind == "meaning_only":
        shared = words & _source_words(gold[0])
        if shared:
            raise AssertionError(f"{where}: meaning_only sentence shares {sorted(shared)} with its source: {text!r}")
    elif kind == "paraphrase":
        shared = words & _source_words(gold[0])
        others = [e for e in row if e is not gold[0]]
        if not shared or not any(shared <= (words & _source_words(o)) for o in others):
            raise AssertionError(
                f"{where}: paraphrase must share words with its source that another source also has "
                f"(shared {sorted(shared)}): {text!r}"
            )
    elif kind == "multi_source":
        described = gold[1]
        shared = _words(described.described) & _source_words(described)
        if shared:
            raise AssertionError(f"{where}: multi_source describes {described.name} with its own words {sorted(shared)}")


# ---------------------------------------------------------------- rows

QUESTIONS = {
    "company": "What do the sources say about these companies?",
    "town": "What do the sources say about these towns?",
    "museum": "What do the sources say about these museums?",
}


@dataclass
class Planned:
    kind: str
    template: str
    text: str
    gold: list[Entity]


def _pick_gold(rng: random.Random, ents: list[Entity], banned: set[str], k: int,
               ok: Callable[[list[Entity]], bool] = lambda g: True) -> list[Entity] | None:
    """``k`` distinct entities, uniform over positions, none in ``banned``, satisfying ``ok``."""
    allowed = [e for e in ents if e.sid not in banned]
    combos: list[list[Entity]] = []
    if k == 1:
        combos = [[e] for e in allowed if ok([e])]
    else:
        combos = [[a, b] for a in allowed for b in allowed if a is not b and ok([a, b])]
    return rng.choice(combos) if combos else None


def _sentence(rng: random.Random, kind: str, domain: str, ents: list[Entity], banned: set[str],
              taken: set[str]) -> Planned | None:
    if kind == "extractive":
        gold = _pick_gold(rng, ents, banned, 1)
        if gold is None:
            return None
        tid, build = rng.choice(_extractive(domain))
        return Planned(kind, tid, build(gold, rng) or "", gold)
    if kind == "paraphrase":
        tid, slot, build = rng.choice(_paraphrase(domain))

        def shares(g: list[Entity]) -> bool:
            value = g[0].place if slot == "place" else g[0].surname
            return any((o.place if slot == "place" else o.surname) == value for o in ents if o is not g[0])

        gold = _pick_gold(rng, ents, banned, 1, shares)
        return None if gold is None else Planned(kind, tid, build(gold, rng) or "", gold)
    if kind == "meaning_only":
        gold = _pick_gold(rng, ents, banned, 1)
        if gold is None:
            return None
        tid, build = rng.choice(_meaning_only(domain))
        return Planned(kind, tid, build(gold, rng) or "", gold)
    if kind == "multi_source":
        tid, need, build = rng.choice(_multi(domain))

        def fits(g: list[Entity]) -> bool:
            return need != "same_place" or g[0].place == g[1].place

        gold = _pick_gold(rng, ents, banned, 2, fits)
        return None if gold is None else Planned(kind, tid, build(gold, rng) or "", gold)
    invented = _name(rng, taken)
    row_place = rng.choice(ents).place
    tid, build = rng.choice(_unsupported(domain, invented, row_place, rng))
    return Planned(kind, tid, build([rng.choice(ents)], rng) or "", [])


def _kinds(rng: random.Random, n: int) -> list[str]:
    names, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    while True:
        kinds = rng.choices(names, weights, k=n)
        # Every row attributes at least two supported sentences and one not-extractive one.
        if sum(k != "unsupported" for k in kinds) >= 2 and any(k not in ("extractive", "unsupported")
                                                               for k in kinds):
            return kinds


def build_row(rng: random.Random, index: int, taken: set[str]) -> dict[str, Any]:
    """One teacher-forced row: shuffled sources, a response of 3-5 labelled sentences."""
    domain = ("company", "town", "museum")[index % 3]
    n_sources = rng.choice((4, 5, 5, 6))
    ents = make_entities(rng, domain, n_sources, taken)
    rng.shuffle(ents)
    for i, e in enumerate(ents, start=1):
        e.sid = f"doc{i}"
    row_id = f"hard-{domain}-{index}"
    for _attempt in range(200):
        kinds = _kinds(rng, rng.choice((3, 4, 4, 5)))
        planned: list[Planned] = []
        banned: set[str] = set()
        texts: set[str] = set()
        for kind in kinds:
            p = _sentence(rng, kind, domain, ents, banned, taken)
            if p is None or p.text in texts:
                break
            texts.add(p.text)
            planned.append(p)
            if p.gold:
                banned = {e.sid for e in p.gold}  # next supported sentence: disjoint gold
        if len(planned) == len(kinds):
            break
    else:
        raise RuntimeError(f"{row_id}: could not plan a response in 200 attempts")
    response = ""
    labelled = []
    for k, p in enumerate(planned):
        check_sentence(p.kind, p.text, p.gold, ents, f"{row_id} sentence {k}")
        if response:
            response += " "
        start = len(response)
        response += p.text
        item: dict[str, Any] = {
            "text": p.text,
            "start": start,
            "end": len(response),
            "gold_sources": [e.sid for e in p.gold],
            "kind": p.kind,
            "template": p.template,
        }
        if p.kind == "unsupported":
            item["unsupported"] = True
        labelled.append(item)
    return {
        "id": row_id,
        "task": "teacher_forced",
        "sources": [
            {"id": e.sid, "modality": "text", "title": e.name, "text": e.text, "keys": e.keys} for e in ents
        ],
        "question": QUESTIONS[domain],
        "response": response,
        "response_sentences": labelled,
    }


def build(n_rows: int = N_ROWS, seed: int = SEED) -> list[dict[str, Any]]:
    """Every row, deterministically from ``seed``."""
    rng = random.Random(seed)
    taken: set[str] = set()
    return [build_row(rng, i, taken) for i in range(n_rows)]


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts per kind, and where gold sources sit in their row (first, middle or last source).

    Under uniform positions the expected shares are 1/n first, 1/n last, (n-2)/n middle; the
    ``expected`` entry sums those over the gold labels, and ``mean_relative_position`` (0 = first
    source, 1 = last) should be near 0.5.
    """
    kinds: dict[str, int] = {}
    seen = {"first": 0, "middle": 0, "last": 0}
    expected = {"first": 0.0, "middle": 0.0, "last": 0.0}
    relative: list[float] = []
    for row in rows:
        n = len(row["sources"])
        order = {s["id"]: i for i, s in enumerate(row["sources"])}
        for s in row["response_sentences"]:
            kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
            for g in s["gold_sources"]:
                i = order[g]
                seen["first" if i == 0 else "last" if i == n - 1 else "middle"] += 1
                expected["first"] += 1 / n
                expected["last"] += 1 / n
                expected["middle"] += (n - 2) / n
                relative.append(i / (n - 1))
    return {
        "rows": len(rows),
        "sentences": sum(kinds.values()),
        "kinds": dict(sorted(kinds.items())),
        "gold_position": seen,
        "gold_position_expected_if_uniform": {k: round(v, 1) for k, v in expected.items()},
        "mean_relative_position": round(sum(relative) / len(relative), 3) if relative else None,
    }


def to_jsonl(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--rows", type=int, default=N_ROWS)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    rows = build(args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_jsonl(rows), encoding="utf-8")
    print(json.dumps({"out": str(args.out), **summary(rows)}))


if __name__ == "__main__":
    main()
