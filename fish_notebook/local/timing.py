"""Word times from a voice's phoneme alignment: which words each sentence's audio holds, and when.

Pure: no I/O, no clocks (it calls the ``phonemize`` function it is given). Two steps:

1. :func:`place_words` (before synthesis) finds, for each word of a piece of text, the
   phonemes that speak it among the phonemes the voice will speak (one list per sentence,
   as Piper splits them). espeak phonemizes a clause as a whole: it expands numbers
   (``1999`` -> three phoneme words), joins unstressed words (``was the`` -> ``wʌzðə``)
   and reduces vowels in context. So each word is phonemized on its own as well, and the
   two phoneme sequences are matched (:class:`difflib.SequenceMatcher`, stress and length
   marks ignored): a word gets the context phonemes matched to its own, even inside a
   joined phoneme word. Punctuation-only tokens (``—``, ``...``) join the word before.
2. :func:`time_words` (after synthesis) turns a sentence's per-phoneme sample counts into
   each word's start and end, in samples from the start of that sentence's audio.

Guarantees: words come out in text order, each in exactly one sentence, with
``0 <= start <= end <= audio samples`` and never overlapping the next word. A word's span
runs from its first phoneme (with a stress mark before it) to its last, including the
punctuation pause after it; the last word of a sentence also holds the silence that closes
the sentence (Piper's end marker), so the last word ends where the sentence's audio ends.
The pause at a word gap (Piper's ``" "`` phoneme) and the silence before the first word
belong to no word. A word that matches no phoneme gets an empty span where its neighbours
meet.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..text import WORD
from .engine import PhonemeSpan

__all__ = [
    "TextWord",
    "TimedWord",
    "WordPlace",
    "WordPlan",
    "cut_at_words",
    "estimated_spans",
    "place_words",
    "split_words",
    "time_words",
]

# Piper keeps espeak's clause terminators as phonemes; they are pauses, not sounds to match.
_PUNCTUATION = frozenset(",.;:!?")
# Marks that espeak places differently in context and alone (stress, length, linking glide).
_MARKS = frozenset("ˈˌːˑʲ")
_SPACE = " "


@dataclass(frozen=True)
class TextWord:
    """A word of the text, punctuation attached: ``text == source[start:end]``."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class WordPlace:
    """Where a word is spoken: phonemes ``[first, last)`` of sentence ``sentence``."""

    word: TextWord
    sentence: int
    first: int
    last: int


@dataclass(frozen=True)
class TimedWord:
    """A word and its samples ``[start, end)`` from the start of its sentence's audio."""

    word: TextWord
    start: int
    end: int


def split_words(text: str) -> list[TextWord]:
    """The words of ``text``: whitespace-separated runs, and each CJK character alone."""
    return [TextWord(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def _sounds(phonemes: Sequence[str]) -> list[str]:
    return [p for p in phonemes if _is_sound(p)]


def _is_sound(phoneme: str) -> bool:
    return phoneme != _SPACE and phoneme not in _PUNCTUATION and not set(phoneme) <= _MARKS


def place_words(
    text: str,
    sentences: Sequence[Sequence[str]],
    phonemize: Callable[[str], Sequence[str]],
) -> list[WordPlace]:
    """Find each word of ``text`` among ``sentences`` (the phonemes the voice will speak).

    ``phonemize(word)`` gives a word's phonemes when spoken alone (all sentences joined).
    Returns one place per word, punctuation-only tokens merged into the word before them.
    """
    words = _merge_silent(text, split_words(text), phonemize)
    if not words:
        return []
    own: list[str] = []  # each word's phonemes spoken alone, flattened
    own_word: list[int] = []  # the word each of those belongs to
    for index, (_, sounds) in enumerate(words):
        own.extend(sounds)
        own_word.extend([index] * len(sounds))
    spoken: list[tuple[int, int]] = []  # (sentence, position) of each sound in context
    for s, phonemes in enumerate(sentences):
        spoken.extend((s, j) for j, p in enumerate(phonemes) if _is_sound(p))
    spoken_sounds = [sentences[s][j] for s, j in spoken]

    owner = _match(own, own_word, spoken_sounds)
    owners = _owners_by_position(sentences, spoken, owner)
    return _places([w for w, _ in words], sentences, owners)


def _merge_silent(
    text: str, words: list[TextWord], phonemize: Callable[[str], Sequence[str]]
) -> list[tuple[TextWord, list[str]]]:
    """Each word with its own sounds; a token without sounds joins the word before it
    (or, at the start, the first word after it)."""

    def join(a: TextWord, b: TextWord) -> TextWord:
        return TextWord(text[a.start : b.end], a.start, b.end)

    merged: list[tuple[TextWord, list[str]]] = []
    pending: TextWord | None = None  # silent tokens before the first sounding word
    for word in words:
        sounds = _sounds(phonemize(word.text))
        if not sounds:
            if merged:
                merged[-1] = (join(merged[-1][0], word), merged[-1][1])
            else:
                pending = word if pending is None else join(pending, word)
            continue
        if pending is not None:
            word, pending = join(pending, word), None
        merged.append((word, sounds))
    if pending is not None:  # nothing in the text has a sound: one silent word
        merged.append((pending, []))
    return merged


def _match(own: list[str], own_word: list[int], spoken: list[str]) -> list[int | None]:
    """For each spoken sound, the word whose own phonemes it matched (None: unmatched)."""
    owner: list[int | None] = [None] * len(spoken)
    matcher = difflib.SequenceMatcher(None, own, spoken, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(j2 - j1):
                owner[j1 + k] = own_word[i1 + k]
        elif tag == "replace":  # sounds that differ in context: share them out in order
            for k in range(j2 - j1):
                owner[j1 + k] = own_word[i1 + k * (i2 - i1) // (j2 - j1)]
    return owner


def _owners_by_position(
    sentences: Sequence[Sequence[str]],
    spoken: list[tuple[int, int]],
    owner: list[int | None],
) -> list[list[int | None]]:
    """The word owning every phoneme of every sentence; None for word gaps.

    Unmatched sounds and marks go to the word of their phoneme word (the run between two
    spaces): a stress mark to the sound after it, anything else to the sound before it.
    Owners never decrease along the text.
    """
    owners: list[list[int | None]] = [[None] * len(p) for p in sentences]
    for (s, j), who in zip(spoken, owner, strict=True):
        owners[s][j] = who
    last_owner: int | None = None
    for s, phonemes in enumerate(sentences):
        row = owners[s]
        for start, end in _phoneme_words(phonemes):
            if all(row[j] is None for j in range(start, end)):  # nothing matched: word before
                for j in range(start, end):
                    row[j] = last_owner
                continue
            filled = [
                row[j] if row[j] is not None else _nearest(row, j, start, end, phonemes[j])
                for j in range(start, end)
            ]
            for j, who in zip(range(start, end), filled, strict=True):
                if who is not None:  # keep the order even where the matcher crossed over
                    last_owner = who if last_owner is None else max(last_owner, who)
                row[j] = last_owner
    return owners


def _phoneme_words(phonemes: Sequence[str]) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of phonemes between spaces."""
    runs: list[tuple[int, int]] = []
    start = None
    for j, p in enumerate(phonemes):
        if p == _SPACE:
            if start is not None:
                runs.append((start, j))
                start = None
        elif start is None:
            start = j
    if start is not None:
        runs.append((start, len(phonemes)))
    return runs


def _nearest(row: list[int | None], j: int, start: int, end: int, phoneme: str) -> int | None:
    forward = phoneme in ("ˈ", "ˌ")  # a stress mark belongs to the sound after it
    before = next((row[k] for k in range(j - 1, start - 1, -1) if row[k] is not None), None)
    after = next((row[k] for k in range(j + 1, end) if row[k] is not None), None)
    if forward:
        return after if after is not None else before
    return before if before is not None else after


def _places(
    words: list[TextWord],
    sentences: Sequence[Sequence[str]],
    owners: list[list[int | None]],
) -> list[WordPlace]:
    found: dict[int, tuple[int, int, int]] = {}  # word -> (sentence, first, last)
    for s, row in enumerate(owners):
        for j, who in enumerate(row):
            if who is None:
                continue
            place = found.get(who)
            if place is None:
                found[who] = (s, j, j + 1)
            elif place[0] == s:  # a word split over two sentences keeps its first part
                found[who] = (s, place[1], j + 1)
    places: list[WordPlace] = []
    for index, word in enumerate(words):
        place = found.get(index)
        if place is None:  # spoken nowhere we could see: an empty span where neighbours meet
            if places:
                before = places[-1]
                place = (before.sentence, before.last, before.last)
            else:
                after = next((found[k] for k in range(index + 1, len(words)) if k in found), None)
                place = (after[0], after[1], after[1]) if after else (0, 0, 0)
        places.append(WordPlace(word, *place))
    return places


class WordPlan:
    """The words of one piece of text, placed on the sentences a voice will speak.

    Build it before synthesis (``sentences`` from :meth:`Voice.phonemize`, ``phonemize``
    :meth:`Voice.phonemize_word`); then :meth:`timed` gives each synthesized sentence's
    words and :meth:`content` the text a run of them covers.
    """

    def __init__(
        self,
        text: str,
        sentences: Sequence[Sequence[str]],
        phonemize: Callable[[str], Sequence[str]],
    ) -> None:
        self.text = text
        self.sentences = [tuple(s) for s in sentences]
        self.places = place_words(text, self.sentences, phonemize)

    def __repr__(self) -> str:
        return f"WordPlan(<{len(self.places)} words in {len(self.sentences)} sentences>)"

    def timed(
        self,
        index: int,
        phonemes: Sequence[str],
        spans: Sequence[PhonemeSpan] | None,
        samples: int,
    ) -> list[TimedWord] | None:
        """The words of sentence ``index``, timed by its alignment ``spans``.

        ``spans`` None (a voice without alignment): every phoneme gets an equal share, an
        estimate. None when the sentence spoken is not the one planned (no words known).
        """
        if index >= len(self.sentences) or tuple(phonemes) != self.sentences[index]:
            return None
        if spans is None:
            spans = estimated_spans(len(phonemes), samples)
        return time_words([p for p in self.places if p.sentence == index], spans, samples)

    def content(self, words: Sequence[TimedWord]) -> str:
        """The text from the first of ``words`` to the last, as written ("" for none)."""
        return self.text[words[0].word.start : words[-1].word.end] if words else ""


def estimated_spans(phonemes: int, samples: int) -> list[PhonemeSpan]:
    """Alignment-shaped spans giving each phoneme an equal share of ``samples``."""
    share = samples // max(1, phonemes)
    spans = [PhonemeSpan("^", 0)] + [PhonemeSpan("", share)] * phonemes
    return [*spans, PhonemeSpan("$", samples - share * phonemes)]


def time_words(
    places: Sequence[WordPlace], spans: Sequence[PhonemeSpan], samples: int
) -> list[TimedWord]:
    """Sample times of the words of one sentence from its alignment.

    ``spans`` are Piper's: the start marker, one span per phoneme of the sentence, the end
    marker. ``samples`` is the sentence's audio length; times are clipped to it.
    """
    edges = [0]  # edges[j]: where phoneme j starts (after the start marker)
    for span in spans:
        edges.append(edges[-1] + span.samples)
    edges = edges[1:]  # skip the start marker: edges[j] is now the start of phoneme j

    def at(j: int) -> int:
        return min(edges[min(j, len(edges) - 1)], samples)

    timed = [TimedWord(p.word, at(p.first), at(p.last)) for p in places]
    if timed and places[-1].first < places[-1].last:  # the closing silence: the last word's
        timed[-1] = TimedWord(timed[-1].word, timed[-1].start, samples)
    return timed


def cut_at_words(
    words: Sequence[TimedWord], samples: int, max_samples: int, hard_max_samples: int
) -> list[tuple[int, int, list[TimedWord]]]:
    """Split a sentence's audio into parts ``(start, end, words)`` that hold whole words.

    A part ends where its last word ends (the last part at ``samples``) and holds as many
    words as fit in ``max_samples``, at least one. Only a part longer than
    ``hard_max_samples`` (one very long word) is cut inside a word: each slice then holds
    the words that start in it, their ends clipped to it. Parts cover ``[0, samples)`` in
    order, and every word is in exactly one part.
    """
    parts: list[tuple[int, int, list[TimedWord]]] = []
    start = 0
    current: list[TimedWord] = []
    for word in words:
        if current and word.end - start > max_samples:
            end = current[-1].end
            parts.append((start, end, current))
            start, current = end, []
        current.append(word)
    parts.append((start, samples, current))
    sliced: list[tuple[int, int, list[TimedWord]]] = []
    for start, end, held in parts:
        if end - start <= hard_max_samples:
            sliced.append((start, end, held))
            continue
        edges = [*range(start, end, max(1, hard_max_samples)), end]
        for a, b in itertools.pairwise(edges):
            count = len(held) if b == end else sum(1 for w in held if w.start < b)
            inside, held = held[:count], held[count:]  # words are in order of their start
            sliced.append((a, b, [TimedWord(w.word, w.start, min(w.end, b)) for w in inside]))
    return [part for part in sliced if part[1] > part[0] or part[2]]
