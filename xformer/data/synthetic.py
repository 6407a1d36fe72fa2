"""A synthetic language pair with the phenomena that make translation hard, generated in code.

Source: an English fragment. Target: "Zentish", an invented language whose words are generated
from syllables by a seeded RNG. The translation is a deterministic function of the source, so a
model can reach BLEU 100, yet learning it takes what real translation takes:

  * word order that depends on the clause: main clauses are verb-second (a fronted time adverb
    inverts verb and subject, as in German); subordinate clauses are verb-final;
  * adjectives follow the noun, in mirrored order ("big red dog" -> "dog red big");
  * agreement: determiners and adjectives agree with the noun's gender (m/f) and number, verbs
    with the subject's person and number, and determiners mark case (subject, object, after a
    preposition);
  * numbers 1..99 spelled out in both languages, composed the other way round
    (twenty one -> "one and twenty"), with no determiner before a number;
  * subordinate clauses (because / although / while / when), chained in the long split.

`generate(split)` yields (source, target) string pairs; splits are disjoint by construction
(a pair belongs to the split its source's hash selects), and `test_long` holds sentences longer
than any in training.
"""

from __future__ import annotations

import functools
import hashlib
import random
from typing import Iterator

SEED = 20170612  # The paper's arXiv date; any constant works, changing it changes the dataset.

NOUNS = """dog cat bird horse cow fish frog mouse rabbit tiger lion bear wolf fox goat sheep duck
owl snake whale farmer teacher doctor baker sailor painter singer dancer writer student king
queen child girl boy soldier driver pilot nurse judge poet clown thief guard hunter miner monk
tailor cook waiter lawyer banker apple book ball box chair table door window house tree flower
stone river mountain road bridge boat car train ship city village garden field forest lake
island castle tower church school shop market letter song story picture cake bread cheese lamp
clock key coin ring hat coat shoe bottle cup plate knife spoon basket candle drum flag map
mirror""".split()
ADJECTIVES = """big small red blue green old young happy sad tall short fast slow quiet loud
bright dark warm cold heavy light rich poor clever brave kind proud angry calm strong weak
clean dirty empty full round sharp soft hard sweet bitter strange famous lazy busy gentle wild
tiny huge""".split()
VERBS = """see like love help visit paint follow carry push pull watch find call touch kick wash
cook open close clean fix draw kiss greet thank answer ask join miss need want show count order
climb cross fill hunt lift mark move pack paint reach save share start test""".split()
VERBS = list(dict.fromkeys(VERBS))  # Drop repeats, keep order.
PRONOUNS = {"i": "1sg", "you": "2sg", "he": "3sg", "she": "3sg", "we": "1pl", "they": "3pl"}
CONJUNCTIONS = ["because", "although", "while", "when"]
PREPOSITIONS = ["with", "near", "behind", "under"]
ADVERBS = {"yesterday": "past", "today": "present", "tomorrow": "future"}
UNITS = "one two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()

_ADJ_SUFFIX = {("m", "sg"): "o", ("f", "sg"): "a", ("m", "pl"): "i", ("f", "pl"): "e"}
_NOUN_PLURAL = {"m": "en", "f": "ar"}
# Determiners by case, gender and number ("pl" ignores gender), definite only; "a" -> "un"/"una".
_DET = {
    "subj": {"m": "lo", "f": "la", "pl": "lu"},
    "obj": {"m": "lon", "f": "lan", "pl": "lun"},
    "prep": {"m": "del", "f": "dela", "pl": "delu"},
}
_INDEF = {"m": "un", "f": "una"}
_TENSE_INFIX = {"present": "", "past": "ta", "future": "ra"}
_PERSON_SUFFIX = {"1sg": "o", "2sg": "as", "3sg": "a", "1pl": "amo", "3pl": "an"}
_TGT_PRONOUNS = {"i": "mi", "you": "tu", "he": "lui", "she": "lei", "we": "noi", "they": "loro"}


def _lexicon() -> dict[str, str]:
  """Source word -> target stem: distinct pseudo-words from a seeded RNG."""
  rng = random.Random(SEED)
  onsets = "b d f g k l m n p r s t v z br dr gr kr pl st tr".split()
  vowels = "a e i o u".split()
  used = set(_TGT_PRONOUNS.values()) | {w for d in _DET.values() for w in d.values()}
  lexicon = {}
  words = (NOUNS + ADJECTIVES + VERBS + CONJUNCTIONS + PREPOSITIONS + list(ADVERBS) + UNITS +
           TEENS + TENS)
  for word in words:
    while True:
      stem = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.choice([2, 2, 3])))
      if word in NOUNS or word in VERBS or word in ADJECTIVES:
        stem += rng.choice("klmnrst")  # Consonant-final stems take the suffixes cleanly.
      if stem not in used:
        used.add(stem)
        lexicon[word] = stem
        break
  return lexicon


LEXICON = _lexicon()
GENDER = {n: ("m", "f")[int(hashlib.md5(n.encode()).hexdigest(), 16) % 2] for n in NOUNS}


_IRREGULAR_PLURALS = {"child": "children", "mouse": "mice", "sheep": "sheep", "fish": "fish",
                      "knife": "knives", "thief": "thieves", "wolf": "wolves"}


def _plural(noun: str) -> str:
  if noun in _IRREGULAR_PLURALS:
    return _IRREGULAR_PLURALS[noun]
  if noun.endswith(("s", "sh", "ch", "x")):
    return noun + "es"
  if noun.endswith("y") and noun[-2] not in "aeiou":
    return noun[:-1] + "ies"
  return noun + "s"


def _verb_form(verb: str, tense: str, person: str) -> str:
  if tense == "future":
    return f"will {verb}"
  if tense == "past":
    if verb.endswith("e"):
      return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
      return verb[:-1] + "ied"
    return verb + "ed"
  if person != "3sg":
    return verb
  if verb.endswith(("s", "sh", "ch", "x")):
    return verb + "es"
  return verb + "s"


def _number(n: int) -> tuple[str, str]:
  """n in 2..99 spelled out: English (tens first) and Zentish (units 'e' tens)."""
  if n < 10:
    return UNITS[n - 1], LEXICON[UNITS[n - 1]]
  if n < 20:
    return TEENS[n - 10], LEXICON[TEENS[n - 10]]
  tens, units = TENS[n // 10 - 2], n % 10
  if units == 0:
    return tens, LEXICON[tens]
  return f"{tens} {UNITS[units - 1]}", f"{LEXICON[UNITS[units - 1]]} e {LEXICON[tens]}"


def _noun_phrase(rng: random.Random, case: str, max_adj: int,
                 allow_pp: bool) -> tuple[str, str, str]:
  """Returns (source, target, person) of a noun phrase in `case`."""
  noun = rng.choice(NOUNS)
  gender = GENDER[noun]
  adjs = rng.sample(ADJECTIVES, rng.randint(0, max_adj))
  kind = rng.choices(["def", "indef", "num", "plural"], [4, 2, 2, 2])[0]
  number = "sg" if kind in ("def", "indef") else "pl"
  src_noun = noun if number == "sg" else _plural(noun)
  tgt_noun = LEXICON[noun] + ("" if number == "sg" else _NOUN_PLURAL[gender])
  tgt_adjs = [LEXICON[a] + _ADJ_SUFFIX[(gender, number)] for a in reversed(adjs)]
  if kind == "num":
    src_num, tgt_num = _number(rng.randint(2, 99))
    src = [src_num] + adjs + [src_noun]
    tgt = [tgt_num, tgt_noun] + tgt_adjs
  else:
    src_det = {"def": "the", "indef": "a", "plural": "the"}[kind]
    if src_det == "a" and (adjs or [noun])[0][0] in "aeiou":
      src_det = "an"
    tgt_det = _INDEF[gender] if kind == "indef" else _DET[case]["pl" if number == "pl" else gender]
    src = [src_det] + adjs + [src_noun]
    tgt = [tgt_det, tgt_noun] + tgt_adjs
  if allow_pp and rng.random() < 0.25:
    prep = rng.choice(PREPOSITIONS)
    p_src, p_tgt, _ = _noun_phrase(rng, "prep", max_adj=1, allow_pp=False)
    src += [prep, p_src]
    tgt += [LEXICON[prep], p_tgt]
  return " ".join(src), " ".join(tgt), "3sg" if number == "sg" else "3pl"


def _subject(rng: random.Random, max_adj: int) -> tuple[str, str, str]:
  if rng.random() < 0.3:
    pronoun = rng.choice(list(PRONOUNS))
    return pronoun, _TGT_PRONOUNS[pronoun], PRONOUNS[pronoun]
  return _noun_phrase(rng, "subj", max_adj, allow_pp=False)


def _clause(rng: random.Random, tense: str, max_adj: int, subordinate: bool) -> tuple[str, str]:
  subj_src, subj_tgt, person = _subject(rng, max_adj)
  obj_src, obj_tgt, _ = _noun_phrase(rng, "obj", max_adj, allow_pp=True)
  verb = rng.choice(VERBS)
  verb_src = _verb_form(verb, tense, person)
  verb_tgt = LEXICON[verb] + _TENSE_INFIX[tense] + _PERSON_SUFFIX[person]
  src = f"{subj_src} {verb_src} {obj_src}"
  if subordinate:  # Verb-final.
    return src, f"{subj_tgt} {obj_tgt} {verb_tgt}"
  return src, f"{subj_tgt} {verb_tgt} {obj_tgt}"


def sentence(rng: random.Random, num_subordinate: int, max_adj: int = 2) -> tuple[str, str]:
  """One (source, target) pair with `num_subordinate` chained subordinate clauses."""
  adverb = rng.choice(list(ADVERBS)) if rng.random() < 0.35 else None
  tense = ADVERBS[adverb] if adverb else rng.choice(list(_TENSE_INFIX))
  src, tgt = _clause(rng, tense, max_adj, subordinate=False)
  if adverb:  # Source: adverb at the end. Target: adverb first, verb second, subject third.
    words = tgt.split()
    v = next(i for i, word in enumerate(words) if word in _VERB_FORMS)  # The verb follows the subject.
    tgt = " ".join([LEXICON[adverb], words[v]] + words[:v] + words[v + 1:])
    src = f"{src} {adverb}"
  for _ in range(num_subordinate):
    conj = rng.choice(CONJUNCTIONS)
    s_src, s_tgt = _clause(rng, rng.choice(list(_TENSE_INFIX)), max_adj, subordinate=True)
    src += f" , {conj} {s_src}"
    tgt += f" , {LEXICON[conj]} {s_tgt}"
  return src + " .", tgt + " ."


_VERB_FORMS = {LEXICON[v] + t + p for v in VERBS for t in _TENSE_INFIX.values()
               for p in _PERSON_SUFFIX.values()}


def split_of(source: str) -> str:
  """The split a source sentence belongs to: 2% test, 2% validation, the rest train."""
  bucket = int(hashlib.md5(source.encode()).hexdigest(), 16) % 100
  return "test" if bucket < 2 else "validation" if bucket < 4 else "train"


TRAIN_MAX_SUBORDINATE = 1
SIZES = {"train": 100_000, "validation": 2_000, "test": 2_000, "test_long": 1_000}


def generate(split: str) -> Iterator[tuple[str, str]]:
  """Yields SIZES[split] distinct (source, target) pairs of `split`, deterministically."""
  if split not in SIZES:
    raise ValueError(f"Unknown split {split!r}; valid: {list(SIZES)}.")
  if split == "test_long":
    yield from _long_pairs()
  else:
    yield from _short_pairs()[split]


@functools.lru_cache(maxsize=1)
def _short_pairs() -> dict[str, list[tuple[str, str]]]:
  """One pass of the seeded stream, dealt into train / validation / test by source hash."""
  rng = random.Random(SEED)
  pairs: dict[str, list[tuple[str, str]]] = {"train": [], "validation": [], "test": []}
  seen = set()
  while any(len(v) < SIZES[k] for k, v in pairs.items()):
    src, tgt = sentence(rng, num_subordinate=rng.choice([0, 0, TRAIN_MAX_SUBORDINATE]))
    split = split_of(src)
    if src not in seen and len(pairs[split]) < SIZES[split]:
      seen.add(src)
      pairs[split].append((src, tgt))
  return pairs


def _long_pairs() -> Iterator[tuple[str, str]]:
  rng = random.Random(SEED + 1)
  bound = max_train_words()
  seen = set()
  while len(seen) < SIZES["test_long"]:
    src, tgt = sentence(rng, num_subordinate=rng.randint(2, 3))
    if len(src.split()) > bound and src not in seen:
      seen.add(src)
      yield src, tgt


def max_train_words() -> int:
  """An upper bound on source words of any training sentence (longest possible train shape)."""
  # Main clause + one subordinate clause, every noun phrase at its longest: a number
  # (2 words) + 2 adjectives + noun, the object with a prepositional phrase (prep + number +
  # 1 adjective + noun), a "will" future, the adverb, the comma and conjunction, the full stop.
  longest_np = 2 + 2 + 1
  longest_obj = longest_np + 1 + (2 + 1 + 1)
  clause = longest_np + 2 + longest_obj
  return clause + 1 + 2 + clause + 1
