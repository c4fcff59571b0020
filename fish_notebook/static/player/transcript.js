// The transcript: the text sent, with a mark at each flush point, lit up as it is heard.
// With words in time (a session with timestamps) each word is its own clickable span and the
// word being heard is highlighted; without them the spoken part is estimated.

/** Characters per second of speech, to place the highlight while the stream is live. */
const CHARS_PER_S = 14;
/** A word of the timeline is looked for this far (characters) past the previous one's end. */
const WORD_SEARCH = 120;

/** @returns {HTMLElement} the mark of a flush point in the transcript */
function flushMark() {
  const mark = document.createElement("span");
  mark.className = "fishnb-flush";
  mark.title = "flush point";
  return mark;
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
 * What to show for words in time: the text sent with its flush points and each word's place
 * in it, or, when some word is not there (a server that rewrote the text), the words alone.
 * @param {Array<string | null>} pieces
 * @param {Word[]} words
 * @returns {{ text: string, flushes: number[], ranges: Array<[number, number]> }}
 */
function layoutWords(pieces, words) {
  let text = "";
  /** @type {number[]} */
  const flushes = [];
  for (const piece of pieces) {
    if (piece === null) flushes.push(text.length);
    else text += piece;
  }
  const ranges = matchWords(text, words);
  if (ranges) return { text, flushes, ranges };
  let alone = "";
  const placed = words.map(([w]) => {
    if (alone) alone += " ";
    alone += w;
    return /** @type {[number, number]} */ ([alone.length - w.length, alone.length]);
  });
  return { text: alone, flushes: [], ranges: placed };
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
   * @param {Array<string | null>} pieces the `transcript` trait (null = a flush point)
   * @param {number} position seconds heard
   * @param {{ rate: number, final: boolean }} stream
   */
  draw(pieces, position, stream) {
    const total = pieces.reduce((n, p) => n + (p ? p.length : 0), 0);
    const count = this.recording.wordCount;
    if (count > 0) {
      // Words in time: the exact word being heard, instead of an estimate.
      const key = `words:${pieces.length}:${total}:${count}`;
      if (key !== this.key) {
        this.key = key;
        this.buildWords(pieces);
      }
      this.markWords(position);
      return;
    }
    this.el.classList.remove("fishnb-timed");
    const spoken = this.spokenChars(position, total, stream);
    const key = `${pieces.length}:${total}:${spoken}`;
    if (key === this.key) return;
    this.key = key;
    this.drawEstimate(pieces, spoken);
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
   * @param {Array<string | null>} pieces
   * @param {number} spoken characters
   */
  drawEstimate(pieces, spoken) {
    const frag = document.createDocumentFragment();
    let at = 0;
    const span = (/** @type {string} */ cls, /** @type {string} */ text) => {
      const s = document.createElement("span");
      s.className = cls;
      s.textContent = text;
      frag.appendChild(s);
    };
    for (const piece of pieces) {
      if (piece === null) {
        frag.appendChild(flushMark());
        continue;
      }
      const cut = Math.max(0, Math.min(piece.length, spoken - at));
      if (cut > 0) span("fishnb-spoken", piece.slice(0, cut));
      if (cut < piece.length) span("fishnb-pending", piece.slice(cut));
      at += piece.length;
    }
    this.el.replaceChildren(frag);
    this.el.hidden = pieces.length === 0;
  }

  /**
   * Draw the transcript with each word in time as its own clickable span. Words are found in
   * the text sent, so flush points and text not spoken yet stay where they are.
   * @param {Array<string | null>} pieces
   */
  buildWords(pieces) {
    const words = this.recording.words.slice(0, this.recording.wordCount);
    const { text, flushes, ranges } = layoutWords(pieces, words);
    const frag = document.createDocumentFragment();
    this.wordEls = words.map(() => []);
    this.gapEls = Array.from({ length: words.length + 1 }, () => []);
    let at = 0;
    let fi = 0;
    /** @param {number} to @param {number} word index, or -1 for text between words @param {number} gap */
    const emit = (to, word, gap) => {
      while (at <= to) {
        const cut = fi < flushes.length && flushes[fi] < to ? flushes[fi] : to;
        if (cut > at) {
          const span = document.createElement("span");
          span.textContent = text.slice(at, cut);
          if (word >= 0) {
            span.className = "fishnb-word";
            span.dataset.w = String(word);
            this.wordEls[word].push(span);
          } else {
            this.gapEls[gap].push(span);
          }
          frag.appendChild(span);
          at = cut;
        }
        if (cut === to) return;
        frag.appendChild(flushMark());
        fi += 1;
      }
    };
    ranges.forEach(([a, b], i) => {
      emit(a, -1, i);
      emit(b, i, i);
    });
    emit(text.length, -1, words.length);
    for (; fi < flushes.length; fi++) frag.appendChild(flushMark());
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
