"""Seeded synthetic data for `lmgauge eval context`: long conversations with needles, and a
document corpus whose questions have their evidence in known places. Same seed, same data.

A conversation introduces facts about the user (home city, job, dog's name, ...), repeats some,
updates some ("I moved from Lyon to Oslo"), retracts one ("I sold my Volvo; I don't own a car
anymore"), adds to a multi-valued one ("I'm also allergic to pollen"), mentions other people's
values as distractors ("My friend lives in Oslo": not the user's city) and asks about the
user's facts much later; in between it is small talk (questions, and some statements) whose
canned answers never mention a fact's value. Every user message carries its ground truth (the
facts it states, with their operation and subject), so extraction can be scored too.

Seeds 0-999 are the test set (`lmgauge eval context` defaults to seed 0); prompts and the slot
vocabulary may be tuned only on seeds >= 1000 (TUNING_SEEDS), which say the facts in other words
(TUNING_PHRASINGS), so the figures are not fitted to the test's sentences.

The corpus is a folder of Markdown service descriptions, Python modules and meeting notes about
fictional services. Every service has the same sections (storage, security, deployment, ...),
so the other services are distractors; each question's answer sits in one section of one file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

TurnKind = Literal["filler", "state", "repeat", "update", "retract", "add", "distractor", "question"]
TUNING_SEEDS = range(1000, 2000)  # what prompt or vocabulary tuning may look at; never reported


@dataclass(frozen=True)
class SlotSpec:
    key: str
    kind: str  # fact | preference | decision
    values: tuple[str, ...]
    state: tuple[str, ...]  # templates with {v}
    question: tuple[str, ...]
    update: tuple[str, ...] = ()  # templates with {old} and {v}; empty: never changes
    repeat: tuple[str, ...] = ()
    retract: tuple[str, ...] = ()  # templates with {old}: no longer true, no new value
    add: tuple[str, ...] = ()  # multi-valued: templates with {v} adding a value to the others
    distractor: tuple[tuple[str, str], ...] = ()  # (someone else, template with {v}): not the user's value


SLOTS: tuple[SlotSpec, ...] = (
    SlotSpec(
        "home city",
        "fact",
        ("Lyon", "Oslo", "Porto", "Tallinn", "Kyoto", "Quito", "Dublin", "Perth", "Graz", "Bergen"),
        ("By the way, I live in {v}.", "I'm based in {v} these days."),
        ("Which city do I live in now?", "Remind me, where do I live?"),
        ("Big news: I moved from {old} to {v} last month.", "We relocated from {old} to {v}."),
        ("It's raining again here in {v}.",),
        distractor=(("friend", "My friend lives in {v}."), ("sister", "My sister just moved to {v}.")),
    ),
    SlotSpec(
        "job",
        "fact",
        ("nurse", "pilot", "architect", "baker", "librarian", "electrician", "translator", "geologist"),
        ("I work as a {v}.", "I'm a {v} by profession."),
        ("What is my job?", "What do I do for a living?"),
        ("I changed careers: I'm a {v} now, no longer a {old}.",),
        ("Long shift today, being a {v} is tiring.",),
        distractor=(("brother", "My brother works as a {v}."),),
    ),
    SlotSpec(
        "dog name",
        "fact",
        ("Rex", "Biscuit", "Pepper", "Mochi", "Ziggy", "Bruno", "Nala"),
        ("My dog is called {v}.", "I have a dog named {v}."),
        ("What is my dog's name?", "Do you remember what my dog is called?"),
        (),
        ("{v} chewed my slippers again.",),
        retract=("Sadly {old} died last month; I no longer have a dog.",),
        distractor=(("friend", "My friend's dog is called {v}."),),
    ),
    SlotSpec(
        "sister name",
        "fact",
        ("Clara", "Ingrid", "Marta", "Yuki", "Sofia", "Amara"),
        ("My sister's name is {v}.", "I have a sister called {v}."),
        ("What is my sister's name?",),
        (),
        (),
    ),
    SlotSpec(
        "car",
        "fact",
        ("Volvo", "Skoda", "Toyota", "Fiat", "Subaru", "Renault", "Mazda"),
        ("I drive a {v}.", "My car is a {v}."),
        ("What car do I drive?", "Which brand is my car?"),
        ("I sold the {old} and bought a {v}.",),
        (),
        retract=("I sold my {old}; I don't own a car anymore.",),
        distractor=(("neighbour", "My neighbour drives a {v}."),),
    ),
    SlotSpec(
        "morning drink",
        "preference",
        ("green tea", "black coffee", "oat latte", "hot chocolate", "chai", "espresso"),
        ("I always start my day with {v}.", "In the morning I prefer {v}."),
        ("What do I like to drink in the morning?",),
        ("I've switched from {old} to {v} in the mornings.",),
        (),
        distractor=(("colleague", "My colleague always drinks {v}."),),
    ),
    SlotSpec(
        "project review day",
        "decision",
        ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
        ("Let's hold the project review on {v}.", "We decided the project review will be on {v}."),
        ("On which day is the project review?", "When is the project review?"),
        ("Let's move the project review from {old} to {v}.",),
        (),
    ),
    SlotSpec(
        "instrument",
        "fact",
        ("cello", "banjo", "piano", "clarinet", "ukulele", "trumpet"),
        ("I play the {v} in a local band.", "I've been learning the {v}."),
        ("Which instrument do I play?",),
        ("I gave up the {old}; I play the {v} now.",),
        (),
    ),
    SlotSpec(
        "allergy",
        "fact",
        ("peanuts", "shellfish", "pollen", "penicillin", "sesame"),
        ("I'm allergic to {v}.",),
        ("What am I allergic to?",),
        (),
        (),
        add=("I found out I'm also allergic to {v}.",),
    ),
    SlotSpec(
        "language learning",
        "decision",
        ("Portuguese", "Japanese", "Finnish", "Swahili", "Korean", "Greek"),
        ("I've decided to learn {v} this year.",),
        ("Which language did I decide to learn?",),
        ("I dropped {old}; I'm learning {v} instead.",),
        (),
    ),
    SlotSpec(
        "employer",
        "fact",
        ("Nordlys Labs", "Acme Foods", "Bluefin Robotics", "Quarry Bank", "Tern Logistics"),
        ("I work at {v}.", "My employer is {v}."),
        ("Which company do I work for?",),
        ("I left {old} and joined {v}.",),
        (),
        distractor=(("partner", "My partner works at {v}."),),
    ),
    SlotSpec(
        "diet",
        "preference",
        ("vegetarian", "vegan", "pescatarian", "gluten-free"),
        ("I'm {v}, just so you know.",),
        ("What is my diet?",),
        ("I'm not {old} anymore, I'm {v} now.",),
        (),
    ),
    SlotSpec(
        "hobby",
        "preference",
        ("hiking", "chess", "pottery", "climbing", "gardening", "birdwatching"),
        ("In my free time I enjoy {v}.",),
        ("What are my hobbies?",),
        (),
        (),
        add=("I've also taken up {v} recently.",),
    ),
)
MULTI = {"allergy", "hobby"}  # multi-valued slots: an addition keeps the other values

# The tuning seeds say the same facts in other words. Prompts, rules and vocabularies fitted to the
# tuning seeds' sentences would otherwise be fitted to the test seeds' too (until 2026-12-03 both
# used SLOTS' templates, and the extractor's rules were tuned on them). Which slots change, and how,
# is the same: a slot without updates here has none in SLOTS either.
TUNING_PHRASINGS: dict[str, dict[str, Any]] = {
    "home city": dict(
        state=("I've lived in {v} for a few years now.", "Home for me is {v}."),
        question=("Where am I living at the moment?", "What city is home for me?"),
        update=(
            "I'm writing from {v} now; I left {old} in the spring.",
            "After years in {old} I finally moved to {v}.",
        ),
        repeat=("The trams in {v} are late again.",),
        distractor=(("cousin", "My cousin lives in {v}."), ("boss", "My boss is flying back home to {v} tonight.")),
    ),
    "job": dict(
        state=("I earn my living as a {v}.", "My job? I'm a {v}."),
        question=("What's my profession?", "What kind of work do I do?"),
        update=("I quit being a {old} and retrained as a {v}.", "No more {old} work for me: I'm a {v} these days."),
        repeat=("Another long day at work as a {v}.",),
        distractor=(("roommate", "My roommate is a {v}."),),
    ),
    "dog name": dict(
        state=("Our dog's name is {v}.", "I adopted a puppy and named him {v}."),
        question=("What did I name my dog?",),
        repeat=("Took {v} to the park this morning.",),
        retract=(
            "{old} passed away last week, so I don't have a dog anymore.",
            "We rehomed {old}; there's no dog at home now.",
        ),
        distractor=(("neighbour", "My neighbour's dog is named {v}."),),
    ),
    "sister name": dict(
        state=("{v} is my sister.", "My older sister is {v}."),
        question=("What's my sister called?",),
    ),
    "car": dict(
        state=("I get around in a {v}.", "I own a {v}."),
        question=("What make is my car?", "What do I drive these days?"),
        update=("Traded in my {old} for a {v} yesterday.", "My {old} was stolen, so now I drive a {v}."),
        retract=("I got rid of the {old} and I'm car-free now.",),
        distractor=(("boss", "My boss drives a {v}."),),
    ),
    "morning drink": dict(
        state=("My mornings begin with a cup of {v}.", "First thing every morning I have {v}."),
        question=("What's my usual morning drink?",),
        update=(
            "These days I have {v} in the morning instead of {old}.",
            "I stopped having {old} in the mornings; it's {v} now.",
        ),
        distractor=(("roommate", "My roommate can't start the day without {v}."),),
    ),
    "project review day": dict(
        state=("The project review is scheduled for {v}.", "We'll do the project review every {v}."),
        question=("Which day did we pick for the project review?",),
        update=(
            "The project review moved to {v}; {old} didn't work for the team.",
            "Change of plan: project review on {v} instead of {old}.",
        ),
    ),
    "instrument": dict(
        state=("I've played the {v} since I was a kid.", "I take {v} lessons every week."),
        question=("What instrument do I play?",),
        update=("I switched from the {old} to the {v}.", "I sold my {old} and started learning the {v}."),
    ),
    "allergy": dict(
        state=("I have an allergy to {v}.", "I react badly to {v}; I'm allergic."),
        question=("Which allergies do I have?",),
        add=("Turns out I'm allergic to {v} as well.", "My doctor says I have a {v} allergy too."),
    ),
    "language learning": dict(
        state=("This year I'm going to learn {v}.", "I signed up for a {v} course."),
        question=("What language am I learning?",),
        update=("I switched my course from {old} to {v}.", "I gave up on {old} and started {v}."),
    ),
    "employer": dict(
        state=("I'm employed by {v}.", "I've been with {v} for two years."),
        question=("Who is my employer?",),
        update=("I resigned from {old}; I start at {v} next week.", "{v} hired me away from {old}."),
        distractor=(("wife", "My wife is employed at {v}."),),
    ),
    "diet": dict(
        state=("I eat a {v} diet.", "I've been {v} for years."),
        question=("What diet do I follow?",),
        update=("I went from {old} to {v} this month.", "I used to be {old}, but I've become {v}."),
    ),
    "hobby": dict(
        state=("I love {v} on weekends.", "My favourite pastime is {v}."),
        question=("What do I do for fun?",),
        add=("Lately I've gotten into {v} too.", "I started {v} as well."),
    ),
}


def phrased_for(spec: SlotSpec, seed: int) -> SlotSpec:
    """The slot as a seed says it: the tuning seeds in their own words (TUNING_PHRASINGS)."""
    return replace(spec, **TUNING_PHRASINGS[spec.key]) if seed in TUNING_SEEDS else spec


FILLER: tuple[tuple[str, str], ...] = (
    (
        "Can you explain how tides work?",
        "Tides are caused mainly by the Moon's gravity pulling on the oceans. The side of the Earth facing the "
        "Moon bulges, and so does the opposite side, which gives most coasts two high tides a day.",
    ),
    (
        "What is a good recipe for pancakes?",
        "Mix one cup of flour, one egg, a cup of milk, a spoon of sugar and a pinch of salt. Rest the batter for "
        "ten minutes, then cook small ladles in a hot buttered pan until bubbles form, and flip.",
    ),
    (
        "How does recursion work in programming?",
        "A recursive function calls itself on a smaller version of the problem until it reaches a base case "
        "that it can answer directly; the answers are then combined on the way back up.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen. It happens in "
        "the chloroplasts, where chlorophyll captures the light energy.",
    ),
    (
        "Why is the sky blue?",
        "Sunlight is scattered by the molecules of the air, and short blue wavelengths are scattered much more "
        "than red ones, so blue light reaches our eyes from every direction of the sky.",
    ),
    (
        "Any tips for sleeping better?",
        "Keep a regular schedule, avoid screens for an hour before bed, keep the bedroom cool and dark, and "
        "limit caffeine after lunch. A short wind-down routine helps too.",
    ),
    (
        "How do vaccines work?",
        "A vaccine shows the immune system a harmless piece or copy of a germ, so it learns to recognise it; "
        "if the real germ arrives later, the body responds quickly.",
    ),
    (
        "What's the difference between weather and climate?",
        "Weather is what the atmosphere does over hours or days; climate is the long-term pattern of weather "
        "in a region, usually averaged over thirty years or more.",
    ),
    (
        "Can you suggest a short stretching routine?",
        "Try one minute each of neck rolls, shoulder circles, a standing forward fold, a hip flexor lunge on "
        "each side and a gentle spinal twist. Breathe slowly throughout.",
    ),
    (
        "How do I keep basil alive indoors?",
        "Give it at least six hours of light, water when the top of the soil is dry, and pinch off the flower "
        "buds so the plant keeps producing leaves.",
    ),
    (
        "What is a black hole?",
        "A black hole is a region where gravity is so strong that nothing, not even light, can escape. It forms "
        "when a very massive star collapses at the end of its life.",
    ),
    (
        "How do I make a good cup of tea?",
        "Use freshly boiled water, warm the pot, and steep for three to five minutes depending on the leaves; "
        "remove the leaves so it does not turn bitter.",
    ),
    (
        "Explain what an API is.",
        "An API is a contract that lets one program ask another for data or actions through well-defined "
        "requests and responses, without knowing how the other program works inside.",
    ),
    (
        "Why do leaves change colour in autumn?",
        "As days shorten, trees stop making chlorophyll, the green fades, and yellow and orange pigments that "
        "were there all along become visible; some trees also make red pigments.",
    ),
    (
        "How can I save money on groceries?",
        "Plan meals for the week, shop with a list, buy staples in bulk, compare unit prices, and cook larger "
        "batches that can be frozen for later.",
    ),
    (
        "What causes thunder?",
        "Lightning heats the air around it to tens of thousands of degrees in an instant; the air expands "
        "explosively and the shock wave is what we hear as thunder.",
    ),
    (
        "How does a bicycle stay upright?",
        "Mostly through steering: when a bike leans, the rider and the geometry of the fork turn the front "
        "wheel into the lean, which brings the wheels back under the rider.",
    ),
    (
        "Give me an idea for a weekend project.",
        "Build a small bird feeder from scrap wood: it takes an afternoon, needs only a saw, a drill and some "
        "screws, and you get visitors to watch for months.",
    ),
    (
        "What is compound interest?",
        "Compound interest is interest earned on both the original amount and the interest already added, so "
        "savings grow faster over time, like a snowball rolling downhill.",
    ),
    (
        "How do noise-cancelling headphones work?",
        "Microphones pick up the ambient sound and the headphones play the same wave inverted; the two cancel "
        "out, which works best for steady low-frequency noise.",
    ),
    (
        "What should I read to learn about history?",
        "Start with a broad survey such as a world history overview, then pick one period that interests you "
        "and read a well-reviewed narrative book about it.",
    ),
    (
        "How do I start running?",
        "Begin with walk-run intervals three times a week, for example one minute running and two walking, "
        "and add a little running time each week. Rest days matter.",
    ),
)

# Small talk that states something, but none of the facts asked about.
STATEMENTS: tuple[tuple[str, str], ...] = (
    (
        "I watched a documentary about octopuses yesterday.",
        "Octopuses are remarkable: they can change colour in a fraction of a second and solve simple puzzles.",
    ),
    ("Work has been really busy this week.", "That sounds tiring. Try to keep some time for yourself this weekend."),
    ("I finally fixed the leaking tap in the kitchen.", "Well done! A new washer is often all it takes."),
    ("The weekend was quiet, I mostly read.", "A quiet weekend with a good book is a fine way to recharge."),
    ("I think I'll go for a walk later.", "Good idea, a walk is great for clearing the head."),
    ("My neighbour's garden looks amazing this spring.", "Spring gardens can be spectacular, especially with tulips."),
    ("I tried a new bakery downtown and liked it.", "Nice find! Local bakeries often have the best bread."),
    ("I need to remember to call the bank tomorrow.", "A reminder on your phone can help you not forget it."),
)

ACKS = (
    "Thanks for telling me, I'll keep that in mind.",
    "Good to know!",
    "Noted, thank you.",
    "Got it. Anything else I can help with?",
    "Understood.",
)


@dataclass
class Fact:
    kind: str
    key: str
    value: str
    op: str = "add"  # add | update | delete
    subject: str = "user"


@dataclass
class SynthTurn:
    user: str
    assistant: str  # canned answer (for questions: the reference answer, the model's is scored)
    kind: TurnKind
    slot: str | None = None
    value: str | None = None  # the value stated, or the current value asked for
    old: list[str] = field(default_factory=list)  # earlier values of the slot (stale answers)
    facts: list[Fact] = field(default_factory=list)  # ground truth memories in this message
    others: list[str] = field(default_factory=list)  # questions: other people's values (distractors)
    values: list[str] = field(default_factory=list)  # questions: every current value (multi-valued)


@dataclass
class SynthConversation:
    seed: int
    turns: list[SynthTurn]

    @property
    def questions(self) -> list[tuple[int, SynthTurn]]:
        return [(i + 1, t) for i, t in enumerate(self.turns) if t.kind == "question"]

    def current_values(self, upto: int) -> dict[str, list[str]]:
        """Each of the user's slots' current values as of turn `upto` (1-based, inclusive)."""
        out: dict[str, list[str]] = {}
        for t in self.turns[:upto]:
            for f in t.facts:
                if f.subject != "user":
                    continue
                if f.op == "delete":
                    out[f.key] = [v for v in out.get(f.key, []) if v != f.value]
                elif f.key in MULTI and t.kind in ("add", "state", "repeat"):
                    out[f.key] = list(dict.fromkeys(out.get(f.key, []) + [f.value]))
                else:
                    out[f.key] = [f.value]
        return {k: v for k, v in out.items() if v}


def conversation(
    seed: int,
    turns: int = 100,
    slots: int = 10,
    updates: int = 5,
    retractions: int = 1,
    additions: int = 1,
    distractors: int = 2,
) -> SynthConversation:
    """A conversation of `turns` user turns: facts stated in the first third, repeated now and
    then; in the middle third `updates` of them changed, `retractions` withdrawn, `additions`
    to multi-valued ones, and `distractors` (someone else's value for a slot); all the user's
    facts still true asked about in the last part."""
    if turns < 12:
        raise ValueError("a synthetic conversation needs at least 12 turns")
    rng = random.Random(seed)
    specs = [phrased_for(s, seed) for s in rng.sample(SLOTS, min(slots, len(SLOTS)))]
    updatable = [s for s in specs if s.update]
    to_update = set(s.key for s in rng.sample(updatable, min(updates, len(updatable))))
    retractable = [s for s in specs if s.retract and s.key not in to_update]
    to_retract = set(s.key for s in rng.sample(retractable, min(retractions, len(retractable))))
    addable = [s for s in specs if s.add]
    to_add = set(s.key for s in rng.sample(addable, min(additions, len(addable))))
    confusable = [s for s in specs if s.distractor and s.key not in to_retract]
    to_distract = set(s.key for s in rng.sample(confusable, min(distractors, len(confusable))))

    plan: dict[int, SynthTurn] = {}
    free = lambda lo, hi: [i for i in range(lo, hi) if i not in plan]  # noqa: E731  a short factory, read where it is used
    first_third, two_thirds, ask_from = max(turns // 3, len(specs)), max(2 * turns // 3, 2), int(turns * 0.7)
    state_at = sorted(rng.sample(free(0, first_third), len(specs)))
    rng.shuffle(specs)
    others: dict[str, list[str]] = {}
    for spec, i in zip(specs, state_at, strict=True):
        values = list(spec.values)
        rng.shuffle(values)
        v = values[0]
        plan[i] = SynthTurn(
            rng.choice(spec.state).format(v=v),
            rng.choice(ACKS),
            "state",
            spec.key,
            v,
            facts=[Fact(spec.kind, spec.key, v)],
        )
        history = [v]
        middle = free(max(i + 3, first_third), two_thirds)
        if spec.key in to_update and middle:
            j = rng.choice(middle)
            new = values[1]
            plan[j] = SynthTurn(
                rng.choice(spec.update).format(old=v, v=new),
                rng.choice(ACKS),
                "update",
                spec.key,
                new,
                old=[v],
                facts=[Fact(spec.kind, spec.key, new, "update")],
            )
            history.append(new)
        elif spec.key in to_retract and middle:
            j = rng.choice(middle)
            plan[j] = SynthTurn(
                rng.choice(spec.retract).format(old=v),
                rng.choice(ACKS),
                "retract",
                spec.key,
                None,
                old=[v],
                facts=[Fact(spec.kind, spec.key, v, "delete")],
            )
            history.append("")
        elif spec.key in to_add and middle:
            j = rng.choice(middle)
            plan[j] = SynthTurn(
                rng.choice(spec.add).format(v=values[1]),
                rng.choice(ACKS),
                "add",
                spec.key,
                values[1],
                facts=[Fact(spec.kind, spec.key, values[1])],
            )
        if spec.key in to_distract:
            later = free(i + 1, ask_from)
            if later:
                j = rng.choice(later)
                who, template = rng.choice(spec.distractor)
                other = values[-1]  # never one of the user's values (those are values[0] and [1])
                plan[j] = SynthTurn(
                    template.format(v=other),
                    rng.choice(ACKS),
                    "distractor",
                    spec.key,
                    other,
                    facts=[Fact(spec.kind, spec.key, other, "add", who)],
                )
                others[spec.key] = [other]
        if spec.repeat and history[-1] and rng.random() < 0.6:
            last = max(k for k, t in plan.items() if t.slot == spec.key and t.kind != "distractor")
            slots_free = free(last + 2, ask_from)
            if slots_free:
                j = rng.choice(slots_free)
                plan[j] = SynthTurn(
                    rng.choice(spec.repeat).format(v=history[-1]),
                    rng.choice(ACKS),
                    "repeat",
                    spec.key,
                    history[-1],
                    facts=[Fact(spec.kind, spec.key, history[-1])],
                )
    # Ask about every slot the user still has (a retracted one has no current value to ask for).
    asked = [s for s in specs if s.key not in to_retract]
    ask_at = sorted(rng.sample(free(ask_from, turns), min(len(asked), len(free(ask_from, turns)))))
    rng.shuffle(asked)
    for spec, i in zip(asked, ask_at, strict=False):
        said = SynthConversation(seed, [plan[k] for k in sorted(plan) if k < i])
        current = said.current_values(len(said.turns)).get(spec.key, [])
        if not current:
            continue
        stated = [f.value for t in said.turns for f in t.facts if f.key == spec.key and f.subject == "user"]
        olds = sorted({v for v in stated if v not in current})
        plan[i] = SynthTurn(
            rng.choice(spec.question),
            ", ".join(current) + ".",
            "question",
            spec.key,
            ", ".join(current),
            old=olds,
            others=others.get(spec.key, []),
            values=current,
        )
    out = []
    for i in range(turns):
        if i in plan:
            out.append(plan[i])
        else:  # a quarter of the small talk are statements, the rest questions
            pool = STATEMENTS if rng.random() < 0.25 else FILLER
            q, a = pool[rng.randrange(len(pool))]
            out.append(SynthTurn(q, a, "filler"))
    return SynthConversation(seed, out)


# --- documents ---------------------------------------------------------------------------------

SERVICE_NAMES = (
    "Falcon",
    "Heron",
    "Marlin",
    "Quokka",
    "Ibis",
    "Puffin",
    "Lynx",
    "Otter",
    "Kestrel",
    "Walrus",
    "Gecko",
    "Bison",
    "Osprey",
    "Narwhal",
    "Tapir",
    "Wombat",
    "Condor",
    "Jackal",
    "Mantis",
    "Pelican",
    "Raven",
    "Badger",
    "Cobra",
    "Dingo",
)
DATABASES = ("PostgreSQL 15", "MySQL 8", "Cassandra", "MongoDB", "CockroachDB", "SQLite", "Redis", "ClickHouse")
REGIONS = ("Frankfurt", "Dublin", "Singapore", "Virginia", "Sao Paulo", "Tokyo", "Sydney", "Montreal", "Stockholm")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
CHANNELS = ("#ops-alerts", "#pager-duty", "#incident-room", "#oncall-core", "#sre-warroom", "#alarms")
PEOPLE = (
    "Ada Byrne",
    "Tomas Kral",
    "Mei Tanaka",
    "Ravi Iyer",
    "Lena Vogel",
    "Omar Haddad",
    "Sara Lindqvist",
    "Jon Okafor",
    "Nina Petrova",
    "Luis Ortega",
    "Hana Novak",
    "Eli Cohen",
)
LANGS = ("Go", "Rust", "Python", "Kotlin", "TypeScript", "Elixir", "Java", "C#")

PADDING = (
    "The team reviews this part of the system every quarter and records decisions in the changelog.",
    "Changes here go through the usual review process, with at least one approval from the owners.",
    "Historical context and older designs are kept in the archive folder for reference.",
    "Load tests are run before every major release to confirm that the numbers still hold.",
    "Questions about this section can be raised in the weekly engineering sync.",
    "The configuration lives next to the code and is versioned with it.",
)


@dataclass
class DocQuestion:
    question: str
    path: str
    evidence: str  # a sentence that occurs in exactly one chunk
    answer: str


@dataclass
class Corpus:
    root: Path
    files: list[str]
    questions: list[DocQuestion]


def _pad(rng: random.Random, n: int) -> str:
    return " ".join(rng.sample(PADDING, n))


def corpus(root: str | Path, seed: int = 0, services: int = 16, questions: int = 40) -> Corpus:
    """Write a synthetic document folder under `root` and return its questions."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = rng.sample(SERVICE_NAMES, min(services, len(SERVICE_NAMES)))
    pool: list[DocQuestion] = []
    files: list[str] = []
    for name in names:
        db, region = rng.choice(DATABASES), rng.choice(REGIONS)
        rotate, day, channel = rng.choice((7, 14, 30, 45, 60, 90)), rng.choice(DAYS), rng.choice(CHANNELS)
        owner, lang, port = rng.choice(PEOPLE), rng.choice(LANGS), rng.randrange(3000, 9999)
        retention = rng.choice((7, 30, 90, 180, 365))
        facts = {
            "storage": f"{name} stores its data in a {db} cluster hosted in {region}.",
            "retention": f"Records older than {retention} days are deleted by the {name} cleanup job.",
            "security": f"The API keys of {name} are rotated every {rotate} days.",
            "deploy": f"{name} is deployed to production every {day} after the smoke tests pass.",
            "alerts": f"Alerts from {name} are posted to the {channel} channel.",
            "owner": f"{name} is owned by {owner}, who approves its architecture changes.",
            "lang": f"{name} is written in {lang} and listens on port {port}.",
        }
        path = f"services/{name.lower()}.md"
        text = (
            f"# {name} service\n\n{name} is one of the internal services of the platform. {_pad(rng, 2)}\n\n"
            f"## Storage\n\n{facts['storage']} {_pad(rng, 2)}\n\n{facts['retention']} {_pad(rng, 1)}\n\n"
            f"## Security\n\n{facts['security']} {_pad(rng, 2)}\n\n"
            f"## Deployment\n\n{facts['deploy']} {_pad(rng, 2)}\n\n"
            f"## Monitoring\n\n{facts['alerts']} {_pad(rng, 2)}\n\n"
            f"## Ownership\n\n{facts['owner']} {_pad(rng, 1)}\n"
        )
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
        files.append(path)
        code_path = f"src/{name.lower()}_config.py"
        code = (
            f'"""Runtime settings of the {name} service."""\n\nimport os\n\n\n'
            f'def listen_port() -> int:\n    """{facts["lang"]}"""\n'
            f'    return int(os.environ.get("{name.upper()}_PORT", {port}))\n\n\n'
            f'def retention_days() -> int:\n    """How long {name} keeps records before the cleanup job."""\n'
            f"    return {retention}\n"
        )
        (root / code_path).parent.mkdir(parents=True, exist_ok=True)
        (root / code_path).write_text(code)
        files.append(code_path)
        pool += [
            DocQuestion(
                rng.choice((f"Where does {name} store its data?", f"Which database does {name} use?")),
                path,
                facts["storage"],
                db,
            ),
            DocQuestion(
                rng.choice(
                    (f"How often are the API keys of {name} rotated?", f"What is the key rotation period for {name}?")
                ),
                path,
                facts["security"],
                str(rotate),
            ),
            DocQuestion(
                rng.choice((f"On which day is {name} released to production?", f"When does {name} get deployed?")),
                path,
                facts["deploy"],
                day,
            ),
            DocQuestion(
                rng.choice((f"Where do {name} alerts go?", f"Which channel receives {name} notifications?")),
                path,
                facts["alerts"],
                channel,
            ),
            DocQuestion(
                rng.choice((f"Who owns {name}?", f"Who approves architecture changes to {name}?")),
                path,
                facts["owner"],
                owner,
            ),
            DocQuestion(
                rng.choice((f"Which port does {name} listen on?", f"What programming language is {name} written in?")),
                code_path,
                facts["lang"],
                lang,
            ),
            DocQuestion(
                rng.choice((f"How long does {name} keep records?", f"When are old {name} records deleted?")),
                path,
                facts["retention"],
                str(retention),
            ),
        ]
    notes = ["# Meeting notes\n"]
    for i in range(6):
        notes.append(f"\n## Week {i + 1}\n\n{_pad(rng, 3)} Action items were assigned to the owners.\n")
    (root / "notes.md").write_text("".join(notes))
    files.append("notes.md")
    rng.shuffle(pool)
    return Corpus(root, files, pool[:questions])
