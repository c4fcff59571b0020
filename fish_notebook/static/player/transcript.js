// The transcript: the text sent, with a mark at each flush point, lit up as it is heard.
// With words in time (a session with timestamps) each word is its own clickable span and the
// word being heard is highlighted; without them the spoken part is estimated.
//
// The kernel sends the transcript already cut into parts (widget.transcript_parts, from the
// cue rules of cues.py, so none are written here): a string is words, null a flush point, and
// an object one of {cue: "[happy]"}, {break: "[break]"}, {speaker: "<|speaker:1|>", n: 1} or
// {skipped: "**"}. A cue or pause shows as a tag and is never lit as a word; a speaker tag
// shows nothing but colours that speaker's words; skipped markup (never spoken) is greyed.

/** Characters per second of speech, to place the highlight while the stream is live. */
const CHARS_PER_S = 14;
/** A word of the timeline is looked for this far (characters) past the previous one's end. */
const WORD_SEARCH = 120;
/** Speaker colours in player.css: [data-speaker="0"] .. [data-speaker="5"], then again. */
const SPEAKER_COLOURS = 6;
/** The kinds of the transcript's objects (the key holding the part's text). */
const PART_KINDS = ["cue", "break", "speaker", "skipped"];

/**
 * @typedef {{
 *   kind: "words" | "flush" | "cue" | "break" | "speaker" | "skipped",
 *   text: string,
 *   speaker: number,
 * }} Part  `speaker`: the speaker of the text from here on (-1 before any speaker tag)
 */

/**
 * The transcript trait as parts; anything malformed is left out.
 * @param {any[]} entries
 * @returns {Part[]}
 */
function partsOf(entries) {
  /** @type {Part[]} */
  const parts = [];
  let speaker = -1;
  for (const entry of entries) {
    if (entry === null) parts.push({ kind: "flush", text: "", speaker });
    else if (typeof entry === "string") parts.push({ kind: "words", text: entry, speaker });
    else if (entry && typeof entry === "object") {
      const kind = PART_KINDS.find((k) => typeof entry[k] === "string");
      if (!kind) continue;
      if (kind === "speaker" && Number.isInteger(entry.n) && entry.n >= 0) speaker = entry.n;
      parts.push({ kind: /** @type {Part["kind"]} */ (kind), text: entry[kind], speaker });
    }
  }
  return parts;
}

/** @param {Part} part @returns {number} characters of it sent to the server (cues are sent) */
function sentLength(part) {
  return part.kind === "skipped" || part.kind === "flush" ? 0 : part.text.length;
}

/** @returns {HTMLElement} the mark of a flush point in the transcript */
function flushMark() {
  const mark = document.createElement("span");
  mark.className = "fishnb-flush";
  mark.title = "flush point";
  return mark;
}

/**
 * What a part that is not words shows: a flush mark, a cue's or a pause's tag, greyed
 * skipped markup; nothing for a speaker tag (it colours the words after it).
 * @param {Part} part
 * @returns {HTMLElement | null}
 */
function markOf(part) {
  if (part.kind === "flush") return flushMark();
  if (part.kind === "speaker" || part.kind === "words") return null;
  const el = document.createElement("span");
  el.textContent = part.text;
  if (part.kind === "skipped") {
    el.className = "fishnb-skipped";
    el.title = "not spoken";
  } else {
    el.className = part.kind === "break" ? "fishnb-cue fishnb-break" : "fishnb-cue";
    el.title = part.kind === "break" ? "pause" : "delivery cue";
  }
  return el;
}

/**
 * A span of words, in its speaker's colour.
 * @param {string} text
 * @param {number} speaker
 * @param {string} [cls]
 */
function textSpan(text, speaker, cls = "") {
  const span = document.createElement("span");
  span.textContent = text;
  if (cls) span.className = cls;
  if (speaker >= 0) span.dataset.speaker = String(speaker % SPEAKER_COLOURS);
  return span;
}

/**
 * Where each word is in `text`: searched in order, each at most WORD_SEARCH characters past
 * the previous one, ignoring case and how much white space separates a word's parts.
 * @param {string} text
 * @param {Word[]} words
 * @returns {Array<[number, number]> | null} [start, end) per word, or null if one is missing
 */
function matchWords(text, words) {
  /** @type {Array<[number, number]>} */
  const ranges = [];
  let cursor = 0;
  for (const [word] of words) {
    const needle = word.trim();
    if (!needle) {
      ranges.push([cursor, cursor]);
      continue;
    }
    const pattern = needle
      .split(/\s+/)
      .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
      .join("\\s+");
    const nearby = text.slice(cursor, cursor + WORD_SEARCH + needle.length * 2);
    const found = new RegExp(pattern, "i").exec(nearby);
    if (!found || found.index > WORD_SEARCH) return null;
    ranges.push([cursor + found.index, cursor + found.index + found[0].length]);
    cursor += found.index + found[0].length;
  }
  return ranges;
}

/**
 * What to show for words in time: the words of the transcript as one text, the other parts
 * anchored where they fall in it, and each word's place in the text; or, when some word is not
 * there (a server that rewrote the text), the words alone.
 * @param {Part[]} parts
 * @param {Word[]} words
 * @returns {{ text: string, marks: Array<{ at: number, part: Part }>, ranges: Array<[number, number]> }}
 */
function layoutWords(parts, words) {
  let text = "";
  /** @type {Array<{ at: number, part: Part }>} */
  const marks = [];
  for (const part of parts) {
    if (part.kind === "words") text += part.text;
    else marks.push({ at: text.length, part });
  }
  const ranges = matchWords(text, words);
  if (ranges) return { text, marks, ranges };
  let alone = "";
  const placed = words.map(([w]) => {
    if (alone) alone += " ";
    alone += w;
    return /** @type {[number, number]} */ ([alone.length - w.length, alone.length]);
  });
  return { text: alone, marks: [], ranges: placed };
}

/** Draws the transcript into one element, redrawing only what changed. */
class Transcript {
  /**
   * @param {HTMLElement} el
   * @param {Recording} recording
   */
  constructor(el, recording) {
    this.el = el;
    this.recording = recording;
    /** what the element shows, to skip redrawing the same ("" forces a redraw) */
    this.key = "";
    /** @type {HTMLElement[][]} the span(s) of each word in time, by word index */
    this.wordEls = [];
    /** @type {HTMLElement[][]} the text before word j (and after the last word, at n) */
    this.gapEls = [];
    /** what the words show: how many have started, and the one being heard */
    this.heard = -1;
    this.current = -1;
  }

  /**
   * @param {any[]} entries the `transcript` trait (see the top of this file)
   * @param {number} position seconds heard
   * @param {{ rate: number, final: boolean }} stream
   */
  draw(entries, position, stream) {
    const parts = partsOf(entries);
    const total = parts.reduce((n, p) => n + sentLength(p), 0);
    const count = this.recording.wordCount;
    if (count > 0) {
      // Words in time: the exact word being heard, instead of an estimate.
      const key = `words:${parts.length}:${total}:${count}:${this.recording.wordsRevision}`;
      if (key !== this.key) {
        this.key = key;
        this.buildWords(parts);
      }
      this.markWords(position);
      return;
    }
    this.el.classList.remove("fishnb-timed");
    const spoken = this.spokenChars(position, total, stream);
    const key = `${parts.length}:${total}:${spoken}`;
    if (key === this.key) return;
    this.key = key;
    this.drawEstimate(parts, spoken);
  }

  /**
   * How many characters of the transcript have been spoken at `seconds` (approximate: linear
   * over the whole recording once it is complete, a speaking rate capped by the text sent
   * before the playing chunk arrived while it is live).
   * @param {number} seconds
   * @param {number} totalChars
   * @param {{ rate: number, final: boolean }} stream
   */
  spokenChars(seconds, totalChars, { rate, final }) {
    const audio = this.recording.samples / rate;
    if (audio <= 0 || seconds <= 0) return 0;
    if (final) return Math.round((totalChars * Math.min(seconds, audio)) / audio);
    const cap = this.recording.charsSentBy(seconds * rate, totalChars);
    return Math.min(Math.round(seconds * CHARS_PER_S), cap, totalChars);
  }

  /**
   * @param {Part[]} parts
   * @param {number} spoken characters (of those sent: cues count, skipped markup does not)
   */
  drawEstimate(parts, spoken) {
    const frag = document.createDocumentFragment();
    let at = 0;
    for (const part of parts) {
      if (part.kind === "words") {
        const cut = Math.max(0, Math.min(part.text.length, spoken - at));
        if (cut > 0) frag.appendChild(textSpan(part.text.slice(0, cut), part.speaker, "fishnb-spoken"));
        if (cut < part.text.length) frag.appendChild(textSpan(part.text.slice(cut), part.speaker, "fishnb-pending"));
      } else {
        const mark = markOf(part);
        if (mark) frag.appendChild(mark);
      }
      at += sentLength(part);
    }
    this.el.replaceChildren(frag);
    this.el.hidden = parts.length === 0;
  }

  /**
   * Draw the transcript with each word in time as its own clickable span. Words are found in
   * the words of the transcript, so flush points, cues, skipped markup and text not spoken yet
   * stay where they are.
   * @param {Part[]} parts
   */
  buildWords(parts) {
    const words = this.recording.words.slice(0, this.recording.wordCount);
    const { text, marks, ranges } = layoutWords(parts, words);
    const frag = document.createDocumentFragment();
    this.wordEls = words.map(() => []);
    this.gapEls = Array.from({ length: words.length + 1 }, () => []);
    let at = 0;
    let mi = 0;
    let speaker = -1;
    const passMark = () => {
      const { part } = marks[mi++];
      speaker = part.speaker;
      const mark = markOf(part);
      if (mark) frag.appendChild(mark);
    };
    /** @param {number} to @param {number} word index, or -1 for text between words @param {number} gap */
    const emit = (to, word, gap) => {
      for (;;) {
        const markFirst = mi < marks.length && marks[mi].at < to;
        const cut = markFirst ? marks[mi].at : to;
        if (cut > at) {
          const span = textSpan(text.slice(at, cut), speaker);
          if (word >= 0) {
            span.classList.add("fishnb-word");
            span.dataset.w = String(word);
            this.wordEls[word].push(span);
          } else {
            this.gapEls[gap].push(span);
          }
          frag.appendChild(span);
          at = cut;
        }
        if (!markFirst) return;
        passMark();
      }
    };
    ranges.forEach(([a, b], i) => {
      emit(a, -1, i);
      emit(b, i, i);
    });
    emit(text.length, -1, words.length);
    while (mi < marks.length) passMark();
    this.el.replaceChildren(frag);
    this.el.classList.add("fishnb-timed");
    this.el.title = "Click a word to play from there";
    this.el.hidden = false;
    this.heard = -1;
    this.current = -2; // forces markWords to paint
  }

  /**
   * Light up the words heard by `position` and the one being heard.
   * @param {number} position seconds
   */
  markWords(position) {
    const { heard, current } = this.recording.wordsAt(position);
    if (heard === this.heard && current === this.current) return;
    this.wordEls.forEach((spans, i) => {
      for (const span of spans) {
        span.classList.toggle("fishnb-spoken", i < heard);
        span.classList.toggle("fishnb-current", i === current);
      }
    });
    this.gapEls.forEach((spans, j) => {
      for (const span of spans) span.classList.toggle("fishnb-spoken", j < heard);
    });
    this.heard = heard;
    this.current = current;
    this.el.dataset.word = String(current);
    // Keep the word being heard in sight inside the transcript box (never scroll the page).
    const el = current >= 0 ? this.wordEls[current][0] : null;
    const box = this.el;
    if (el && (el.offsetTop < box.scrollTop || el.offsetTop + el.offsetHeight > box.scrollTop + box.clientHeight)) {
      box.scrollTop = Math.max(0, el.offsetTop - box.clientHeight / 3);
    }
  }

  /**
   * The word in time a click landed on, if any.
   * @param {HTMLElement} target
   * @returns {Word | null}
   */
  wordAt(target) {
    const span = /** @type {HTMLElement | null} */ (target.closest(".fishnb-word"));
    if (!span || !this.el.contains(span)) return null;
    return this.recording.words[Number(span.dataset.w)] || null;
  }
}
