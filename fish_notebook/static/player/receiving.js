// Receiving: the kernel's comm messages, kept as one recording per widget model.
//
// Audio arrives as custom messages with binary buffers:
//   {kind: "audio", seq, chars}           + 1 buffer    (live)
//   {kind: "recording", total, first}                    (answer to {kind: "replay-request"})
//   {kind: "replay", seqs, chars}         + n buffers   (answer to {kind: "replay-request", seqs})
//   {kind: "words", from, words}                        (live: the words from index `from` on)
// The inventory also carries every word so far (`words`, from 0). A word is [text, start, end]
// in seconds on the recording's timeline (0 = the first sample of chunk 0). Every words message
// REPLACES the words from its `from` on (the server revises the words of the chunk it is
// rendering): a revised word takes the place of the old one, never a second place. The kernel
// sends the inventory and the live messages in the order the changes happened.
// Chunks are kept by seq (duplicates dropped). The handler is registered in anywidget's
// `initialize` (once per model, before any view renders) because messages sent before a
// handler exists are dropped; the replay-request fills whatever was missed, and views that
// open late draw from the recording. The handler runs while a kernel cell blocks.

/** Samples per waveform bin (a chunk's peaks are measured once, when it arrives). */
const BIN = 256;

/**
 * @typedef {{
 *   seq: number,
 *   pcm: Int16Array,
 *   peaks: Float32Array,
 *   chars: number,
 *   arrivedAt: number,
 *   offset: number,
 * }} Chunk  `chars`: characters of text sent before it; `offset`: its first sample in the
 *   recording (set once every chunk before it is here)
 *
 * @typedef {[string, number, number]} Word  text, start and end in seconds on the timeline
 *
 * @typedef {{
 *   chunks: (follow: boolean) => void,
 *   words: () => void,
 *   isFinal: () => boolean,
 * }} ReceiverHooks  what the player does when chunks (to be followed or not) or words arrive
 */

/**
 * Copy a comm buffer into an Int16Array (little-endian, whole samples).
 * @param {DataView | ArrayBuffer | ArrayBufferView} buffer
 * @returns {Int16Array}
 */
function toInt16(buffer) {
  const view =
    buffer instanceof DataView
      ? buffer
      : ArrayBuffer.isView(buffer)
        ? new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength)
        : new DataView(buffer);
  const out = new Int16Array(view.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true);
  return out;
}

/**
 * @param {Int16Array} pcm
 * @returns {Float32Array} peak |amplitude| per BIN samples, 0..1
 */
function peaksOf(pcm) {
  const out = new Float32Array(Math.ceil(pcm.length / BIN));
  for (let b = 0; b < out.length; b++) {
    let peak = 0;
    const end = Math.min(pcm.length, (b + 1) * BIN);
    for (let i = b * BIN; i < end; i++) {
      const v = pcm[i] < 0 ? -pcm[i] : pcm[i];
      if (v > peak) peak = v;
    }
    out[b] = peak / 32768;
  }
  return out;
}

/** The audio and words received so far, indexed by sequence number and word index. */
class Recording {
  constructor() {
    /** @type {Chunk[]} sparse until filled, indexed by seq */
    this.chunks = [];
    /** number of chunks present from seq 0 without a hole */
    this.contiguous = 0;
    /** samples in the contiguous chunks */
    this.samples = 0;
    /** @type {Word[]} sparse until filled, indexed by position in the timeline */
    this.words = [];
    /** number of words present from index 0 without a hole */
    this.wordCount = 0;
    /** counts the changes to the words, so a view redraws a revision of the same length */
    this.wordsRevision = 0;
  }

  /** @param {number} seq */
  has(seq) {
    return !!this.chunks[seq];
  }

  /**
   * Keep a chunk that is not here yet (the caller checked `has`).
   * @param {number} seq
   * @param {Int16Array} pcm
   * @param {number} chars
   * @param {number} arrivedAt performance.now() when it arrived
   */
  add(seq, pcm, chars, arrivedAt) {
    this.chunks[seq] = { seq, pcm, peaks: peaksOf(pcm), chars, arrivedAt, offset: 0 };
    while (this.chunks[this.contiguous]) {
      const chunk = this.chunks[this.contiguous];
      chunk.offset = this.samples;
      this.samples += chunk.pcm.length;
      this.contiguous += 1;
    }
  }

  /** @param {number} total chunks the kernel has @returns {number[]} the seqs missing here */
  missing(total) {
    const out = [];
    for (let seq = 0; seq < total; seq++) if (!this.chunks[seq]) out.push(seq);
    return out;
  }

  /**
   * The contiguous chunk that holds `sample` (the first whose end is past it; zero-length
   * chunks are skipped), or `contiguous` when `sample` is past the end.
   * @param {number} sample
   */
  chunkAt(sample) {
    let lo = 0;
    let hi = this.contiguous;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const c = this.chunks[mid];
      if (c.offset + c.pcm.length > sample) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /**
   * Characters of text that had been sent when the chunk playing at `sample` arrived.
   * @param {number} sample
   * @param {number} fallback what to answer when no chunk says
   */
  charsSentBy(sample, fallback) {
    let cap = fallback;
    for (let seq = 0; seq < this.contiguous; seq++) {
      const c = this.chunks[seq];
      if (c.offset <= sample) cap = c.chars || cap;
      else break;
    }
    return cap;
  }

  /** @returns {Int16Array[]} the contiguous chunks' PCM, in order */
  pcm() {
    const parts = [];
    for (let seq = 0; seq < this.contiguous; seq++) parts.push(this.chunks[seq].pcm);
    return parts;
  }

  /**
   * The words from index `from` on are now `list`: they replace whatever was there, and any
   * word after them goes (the kernel sends the whole tail). A malformed word ends the list.
   * @param {number} from
   * @param {any[]} list
   */
  replaceWords(from, list) {
    if (!Number.isInteger(from) || from < 0) return;
    const ok = (/** @type {any} */ w) =>
      Array.isArray(w) && typeof w[0] === "string" && Number.isFinite(w[1]) && Number.isFinite(w[2]);
    const bad = list.findIndex((w) => !ok(w));
    const valid = bad < 0 ? list : list.slice(0, bad);
    this.words.length = Math.max(from, 0);
    valid.forEach((w, i) => {
      this.words[from + i] = /** @type {Word} */ ([w[0], w[1], w[2]]);
    });
    this.wordCount = Math.min(this.wordCount, from);
    while (this.words[this.wordCount]) this.wordCount += 1;
    this.wordsRevision += 1;
  }

  /**
   * Which words are heard at `seconds` of the recording.
   * @param {number} seconds
   * @returns {{ heard: number, current: number }} how many words have started, and the word
   *   being heard (its [start, end) holds `seconds`), -1 between words
   */
  wordsAt(seconds) {
    let lo = 0;
    let hi = this.wordCount;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.words[mid][1] <= seconds) lo = mid + 1;
      else hi = mid;
    }
    const last = lo - 1;
    const current = last >= 0 && seconds < this.words[last][2] ? last : -1;
    return { heard: lo, current };
  }
}

/** Takes the kernel's messages into a Recording, asks for what it missed, counts it all. */
class Receiver {
  /**
   * Registers the message handler at once: call it from anywidget's `initialize`.
   * @param {Model} model
   * @param {Recording} recording
   * @param {Stats} stats
   * @param {ReceiverHooks} hooks
   */
  constructor(model, recording, stats, hooks) {
    this.model = model;
    this.recording = recording;
    this.stats = stats;
    this.hooks = hooks;
    /** the kernel answered a replay-request: it is alive */
    this.live = false;
    /** @type {HTMLStyleElement | null} hides the static <audio> fallback while live */
    this.hideFallback = null;
    this.onMessage = this.onMessage.bind(this);
    model.on("msg:custom", this.onMessage);
  }

  /** Ask for everything recorded so far: chunks sent before the handler existed, or a reload. */
  requestRecording() {
    this.model.send({ kind: "replay-request" });
  }

  /**
   * @param {any} msg
   * @param {Array<DataView | ArrayBuffer>} buffers
   */
  onMessage(msg, buffers) {
    if (!msg || typeof msg !== "object") return;
    const now = performance.now();
    if (msg.kind === "audio" && buffers && buffers.length === 1) {
      this.take(msg.seq, buffers[0], msg.chars ?? 0, now);
      this.hooks.chunks(true);
    } else if (msg.kind === "recording") {
      // The kernel's inventory (answer to our replay-request): ask for what is missing.
      this.markLive();
      // Every word so far (none when the kernel left `words` out).
      this.recording.replaceWords(0, Array.isArray(msg.words) ? msg.words : []);
      const missing = this.recording.missing(msg.total);
      if (missing.length) this.model.send({ kind: "replay-request", seqs: missing });
      this.stats.data.replays += 1;
      // A fresh display plays what it missed; a reloaded page of a finished session waits
      // for Play, so reopening a notebook is silent.
      this.hooks.chunks(!!msg.first || !this.hooks.isFinal());
    } else if (msg.kind === "replay") {
      const seqs = /** @type {number[]} */ (msg.seqs || []);
      seqs.forEach((seq, i) => this.take(seq, buffers[i], (msg.chars || [])[i] ?? 0, now));
      this.hooks.chunks(false);
    } else if (msg.kind === "words" && Array.isArray(msg.words)) {
      this.recording.replaceWords(msg.from, msg.words);
      this.hooks.words();
    }
  }

  /**
   * @param {number} seq
   * @param {DataView | ArrayBuffer | undefined} buffer
   * @param {number} chars
   * @param {number} now
   */
  take(seq, buffer, chars, now) {
    if (!Number.isInteger(seq) || seq < 0 || !buffer) return;
    const s = this.stats;
    if (this.recording.has(seq)) {
      s.data.duplicates += 1;
      return;
    }
    this.recording.add(seq, toInt16(buffer), chars, now);
    s.data.chunks_received += 1;
    s.detail("seqs_received", seq);
    s.detail("arrivals_ms", round(performance.timeOrigin + now, 1));
  }

  /** The kernel answered: hide the static fallback of this player (it would play twice). */
  markLive() {
    if (this.live) return;
    this.live = true;
    const id = this.model.get("player_id");
    if (!id) return;
    const style = document.createElement("style");
    style.textContent = `.fishnb-fallback[data-fishnb-player="${CSS.escape(id)}"]{display:none}`;
    document.head.appendChild(style);
    this.hideFallback = style;
  }

  dispose() {
    this.model.off("msg:custom", this.onMessage);
    if (this.hideFallback) this.hideFallback.remove();
  }
}
