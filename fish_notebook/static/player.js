// fish-notebook live player: the browser half of fish_notebook.widget.Player.
//
// Plain ES module for anywidget, no build step.
//
// One Store per widget model holds the audio received so far and the playback engine, so
// playback does not depend on any view: it starts when the first chunk arrives, survives a
// view being re-rendered, and serves every view of the same model. Views only draw.
//
// Audio arrives as custom messages with binary buffers:
//   {kind: "audio", seq, chars}           + 1 buffer    (live)
//   {kind: "recording", total, first}                    (answer to {kind: "replay-request"})
//   {kind: "replay", seqs, chars}         + n buffers   (answer to {kind: "replay-request", seqs})
//   {kind: "words", from, words}                        (live: words from index `from` on)
// The inventory also carries every word so far (`words`). A word is [text, start, end] in
// seconds on the recording's timeline (0 = the first sample of chunk 0): words arriving twice
// land on the same index, so live words and the inventory never duplicate or leave a hole.
// Chunks are kept by seq (duplicates dropped) and scheduled strictly in seq order, each one
// starting exactly where the previous one ends. The handler is registered in `initialize`
// (once per model, before any view renders) because messages sent before a handler exists
// are dropped; the replay-request fills whatever was missed.

/**
 * Seconds of audio queued before the first chunk starts: absorbs arrival jitter. Measured in
 * headless Chromium with chunks paced at 1x from a kernel thread (tests/browser/
 * test_player_feed.py): they strayed 5-22 ms from their pace, with stalls of 100 ms and more
 * only on a heavily loaded machine. 30 ms keeps a first chunk's arrival-to-start near 32 ms
 * (goal: 50) with no underrun at 1x or 2x; a longer stall costs one counted underrun, and the
 * doubling below.
 */
const JITTER_S = 0.03;
/** After an underrun the queue restarts deeper, doubling up to this (a stuttering source). */
const MAX_JITTER_S = 0.24;
/** A chunk due less than this far ahead of the audio clock counts as late (an underrun). */
const LATE_MARGIN_S = 0.003;
/** Samples per waveform bin. */
const BIN = 256;
/** How often the stats are published to the DOM while something changes... */
const STATS_MS = 250;
/** ...and to Python (a trait update goes through the kernel). */
const SYNC_MS = 1000;
/** Per-chunk detail (seqs, starts, gaps, latencies) is kept for this many chunks. */
const MAX_DETAIL = 1000;
/** A model with no view left stops its audio after this long (a re-render takes less). */
const ORPHAN_MS = 400;
/** Characters per second of speech, to place the highlight while the stream is live. */
const CHARS_PER_S = 14;
/** A word of the timeline is looked for this far (characters) past the previous one's end. */
const WORD_SEARCH = 120;
const TERMINAL = new Set(["finished", "failed", "stopped"]);

/**
 * @typedef {{
 *   get: (name: string) => any,
 *   set: (name: string, value: any) => void,
 *   save_changes: () => void,
 *   send: (content: any, callbacks?: any, buffers?: ArrayBuffer[]) => void,
 *   on: (name: string, cb: Function) => void,
 *   off: (name?: string | null, cb?: Function | null) => void,
 * }} Model
 *
 * @typedef {{
 *   seq: number,
 *   pcm: Int16Array,
 *   peaks: Float32Array,
 *   chars: number,
 *   arrivedAt: number,
 *   offset: number,
 * }} Chunk
 *
 * @typedef {{ start: number, offset: number, length: number, node: AudioBufferSourceNode }} Scheduled
 *
 * @typedef {[string, number, number]} Word  text, start and end in seconds on the timeline
 */

/** @type {Map<string, Store>} */
const stores = new Map();

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

/**
 * A WAV file (16-bit mono) from PCM chunks.
 * @param {Int16Array[]} parts
 * @param {number} rate
 * @returns {Blob}
 */
function wavBlob(parts, rate) {
  const bytes = parts.reduce((n, p) => n + p.byteLength, 0);
  const head = new DataView(new ArrayBuffer(44));
  const ascii = (/** @type {number} */ at, /** @type {string} */ s) => {
    for (let i = 0; i < s.length; i++) head.setUint8(at + i, s.charCodeAt(i));
  };
  ascii(0, "RIFF");
  head.setUint32(4, 36 + bytes, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  head.setUint32(16, 16, true);
  head.setUint16(20, 1, true);
  head.setUint16(22, 1, true);
  head.setUint32(24, rate, true);
  head.setUint32(28, rate * 2, true);
  head.setUint16(32, 2, true);
  head.setUint16(34, 16, true);
  ascii(36, "data");
  head.setUint32(40, bytes, true);
  // Int16Array is little-endian on every platform browsers run on.
  return new Blob([head.buffer, ...parts.map((p) => p.slice().buffer)], { type: "audio/wav" });
}

/** @param {number} s */
function clock(s) {
  if (!Number.isFinite(s) || s < 0) s = 0;
  const m = Math.floor(s / 60);
  return `${m}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
}

/** @param {number} x @param {number} digits */
const round = (x, digits = 6) => Number(x.toFixed(digits));

/** Per-model state: the recording, the playback engine and the stats. */
class Store {
  /** @param {Model} model */
  constructor(model) {
    this.model = model;
    /** @type {Chunk[]} sparse until filled, indexed by seq */
    this.chunks = [];
    /** number of chunks present from seq 0 without a hole */
    this.contiguous = 0;
    /** samples in the contiguous chunks */
    this.samples = 0;
    /** @type {Word[]} words in time, sparse until filled, indexed by position in the timeline */
    this.words = [];
    /** number of words present from index 0 without a hole */
    this.wordCount = 0;
    /** the rate the audio context was asked for */
    this.ctxRate = 0;
    /** @type {Array<{ index: number, start: number, arrivedAt: number }>} see settleLatencies */
    this.unsettled = [];
    /** @type {Set<View>} */
    this.views = new Set();
    /** @type {AudioContext | null} */
    this.ctx = null;
    /** @type {GainNode | null} */
    this.gain = null;
    /** @type {Scheduled[]} */
    this.scheduled = [];
    /** whether newly available chunks are scheduled as they come */
    this.following = false;
    /** whether the user paused (the context is suspended on purpose) */
    this.paused = false;
    /** whether the user pressed Stop: chunks still in flight are kept, not played */
    this.stopped = false;
    /** next seq to schedule, and where it starts on the audio clock */
    this.nextSeq = 0;
    this.nextTime = 0;
    /** the current jitter buffer, seconds */
    this.jitter = JITTER_S;
    /** the kernel answered a replay-request: it is alive */
    this.live = false;
    /** a view of this model was rendered at least once */
    this.rendered = false;
    /** @type {HTMLStyleElement | null} hides the static <audio> fallback while live */
    this.hideFallback = null;
    this.stats = {
      chunks_received: 0,
      seqs_received: /** @type {number[]} */ ([]),
      duplicates: 0,
      replays: 0,
      scheduled_seqs: /** @type {number[]} */ ([]),
      starts: /** @type {number[]} */ ([]),
      gaps: /** @type {number[]} */ ([]),
      latencies_ms: /** @type {number[]} */ ([]),
      underrun_late_ms: /** @type {number[]} */ ([]),
      arrivals_ms: /** @type {number[]} */ ([]),
      underruns: 0,
      scheduled: 0,
      max_gap: 0,
      max_latency_ms: 0,
      runs: 0,
      ctx_state: "none",
      ctx_time: 0,
      ctx_sample_rate: 0,
      samples: 0,
      rate: 0,
      audio_s: 0,
      position_s: 0,
      playing: false,
      views: 0,
      status: "idle",
      chunk_count: 0,
    };
    this.statsDirty = true;
    this.lastPublished = "";
    this.lastSynced = "";
    this.lastSyncedAt = 0;
    this.timer = setInterval(() => this.tick(), STATS_MS);
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.orphanTimer = null;
    this.onMessage = this.onMessage.bind(this);
    this.onStatus = this.onStatus.bind(this);
    model.on("msg:custom", this.onMessage);
    model.on("change:status", this.onStatus);
  }

  get rate() {
    return this.model.get("sample_rate") || 44100;
  }

  get status() {
    return this.model.get("status") || "idle";
  }

  // -- receiving -----------------------------------------------------------------------------

  /**
   * @param {any} msg
   * @param {Array<DataView | ArrayBuffer>} buffers
   */
  onMessage(msg, buffers) {
    if (!msg || typeof msg !== "object") return;
    const now = performance.now();
    if (msg.kind === "audio" && buffers && buffers.length === 1) {
      this.add(msg.seq, buffers[0], msg.chars ?? 0, now);
      this.following = this.following || !this.stopped;
    } else if (msg.kind === "recording") {
      // The kernel's inventory (answer to our replay-request): ask for what is missing.
      this.markLive();
      if (Array.isArray(msg.words)) this.addWords(0, msg.words);
      const missing = [];
      for (let seq = 0; seq < msg.total; seq++) if (!this.chunks[seq]) missing.push(seq);
      if (missing.length) this.model.send({ kind: "replay-request", seqs: missing });
      this.stats.replays += 1;
      // A fresh display plays what it missed; a reloaded page of a finished session waits
      // for Play, so reopening a notebook is silent.
      if (msg.first || !TERMINAL.has(this.status)) this.following = this.following || !this.stopped;
    } else if (msg.kind === "replay") {
      const seqs = /** @type {number[]} */ (msg.seqs || []);
      seqs.forEach((seq, i) => this.add(seq, buffers[i], (msg.chars || [])[i] ?? 0, now));
    } else if (msg.kind === "words" && Array.isArray(msg.words)) {
      this.addWords(msg.from, msg.words);
      this.changed();
      return;
    } else {
      return;
    }
    this.pump(true);
    this.changed();
  }

  /**
   * @param {number} seq
   * @param {DataView | ArrayBuffer} buffer
   * @param {number} chars
   * @param {number} now
   */
  add(seq, buffer, chars, now) {
    if (!Number.isInteger(seq) || seq < 0 || !buffer) return;
    if (this.chunks[seq]) {
      this.stats.duplicates += 1;
      return;
    }
    const pcm = toInt16(buffer);
    this.chunks[seq] = { seq, pcm, peaks: peaksOf(pcm), chars, arrivedAt: now, offset: 0 };
    this.stats.chunks_received += 1;
    this.detail("seqs_received", seq);
    this.detail("arrivals_ms", round(performance.timeOrigin + now, 1));
    while (this.chunks[this.contiguous]) {
      const chunk = this.chunks[this.contiguous];
      chunk.offset = this.samples;
      this.samples += chunk.pcm.length;
      this.contiguous += 1;
    }
  }

  /**
   * Put `list` at indices `from`, `from + 1`, ...; words already there are kept.
   * @param {number} from
   * @param {any[]} list
   */
  addWords(from, list) {
    if (!Number.isInteger(from) || from < 0) return;
    list.forEach((word, i) => {
      const ok = Array.isArray(word) && typeof word[0] === "string" && Number.isFinite(word[1]) && Number.isFinite(word[2]);
      if (ok && !this.words[from + i]) this.words[from + i] = /** @type {Word} */ ([word[0], word[1], word[2]]);
    });
    while (this.words[this.wordCount]) this.wordCount += 1;
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

  onStatus() {
    if (!TERMINAL.has(this.status)) this.ensureContext();
    this.changed();
  }

  // -- playback ------------------------------------------------------------------------------

  /** @returns {AudioContext} */
  ensureContext() {
    const old = this.ctx;
    if (old && old.state !== "closed") {
      if (this.ctxRate === this.rate || this.scheduled.length) return old;
      // The stream's rate changed before anything was scheduled (a WAV header said so):
      // start over at the new rate, so chunks are not resampled and their edges meet exactly.
      old.onstatechange = null;
      old.close().catch(() => {});
    }
    this.ctxRate = this.rate;
    /** @type {AudioContext} */
    let ctx;
    try {
      // At the stream's own rate no buffer is resampled, so chunk edges meet sample-exactly.
      ctx = new AudioContext({ sampleRate: this.rate, latencyHint: "interactive" });
    } catch {
      ctx = new AudioContext({ latencyHint: "interactive" });
    }
    this.ctx = ctx;
    this.gain = ctx.createGain();
    this.gain.connect(ctx.destination);
    ctx.onstatechange = () => {
      this.settleLatencies();
      this.changed();
    };
    if (ctx.state === "suspended" && !this.paused) ctx.resume().catch(() => {});
    this.stats.ctx_sample_rate = ctx.sampleRate;
    return ctx;
  }

  /**
   * Schedule every chunk that is available, in order.
   * @param {boolean} onArrival whether the chunks are scheduled as they become available
   *   (their arrival-to-start latency is recorded), not replayed
   */
  pump(onArrival = false) {
    // A model whose widget was never displayed stays silent (its views would be the controls).
    if (!this.following || !this.rendered) return;
    while (this.nextSeq < this.contiguous) {
      this.schedule(this.chunks[this.nextSeq], 0, onArrival);
      this.nextSeq += 1;
    }
  }

  /**
   * Start `chunk` exactly where the previous one ends, or, when that moment has passed (the
   * stream fell behind), a jitter buffer from now, counting an underrun. Never overlaps.
   * @param {Chunk} chunk
   * @param {number} skip samples of the chunk to skip (seeking)
   * @param {boolean} onArrival
   */
  schedule(chunk, skip, onArrival) {
    const ctx = this.ensureContext();
    if (ctx.state === "suspended" && !this.paused) ctx.resume().catch(() => {});
    const rate = this.rate;
    const now = ctx.currentTime;
    const first = this.scheduled.length === 0;
    let start = this.nextTime;
    if (first) {
      this.jitter = JITTER_S;
      start = now + this.jitter;
      this.stats.runs += 1;
    } else if (start < now + LATE_MARGIN_S) {
      this.jitter = Math.min(MAX_JITTER_S, this.jitter * 2);
      this.stats.underruns += 1;
      this.detail("underrun_late_ms", round((now - start) * 1000, 1));
      start = now + this.jitter;
    }
    const length = chunk.pcm.length - skip;
    if (length <= 0) return;
    const buffer = ctx.createBuffer(1, length, rate);
    const data = new Float32Array(length);
    for (let i = 0; i < length; i++) data[i] = chunk.pcm[skip + i] / 32768;
    buffer.copyToChannel(data, 0);
    const node = ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(/** @type {GainNode} */ (this.gain));
    node.start(start);
    node.onended = () => {
      const i = this.scheduled.findIndex((s) => s.node === node);
      if (i >= 0 && i < this.scheduled.length - 1) this.scheduled.splice(i, 1);
      node.disconnect();
    };
    const gap = first ? 0 : round(start - this.nextTime);
    this.stats.scheduled += 1;
    this.stats.max_gap = Math.max(this.stats.max_gap, gap);
    this.detail("gaps", gap);
    this.detail("scheduled_seqs", chunk.seq);
    this.detail("starts", round(start));
    if (onArrival) {
      const latency = round((start - now) * 1000 + (performance.now() - chunk.arrivedAt), 2);
      this.stats.max_latency_ms = Math.max(this.stats.max_latency_ms, latency);
      const index = this.stats.latencies_ms.length;
      this.detail("latencies_ms", latency);
      // A context that is not running yet (just made) has a clock standing still: measure
      // again once it runs, or the wait for it to start would be missed.
      if (ctx.state !== "running" && !this.paused && index < MAX_DETAIL) {
        this.unsettled.push({ index, start, arrivedAt: chunk.arrivedAt });
      }
    }
    this.scheduled.push({ start, offset: chunk.offset + skip, length, node });
    this.nextTime = start + length / rate;
  }

  /** Measure the arrival-to-start of chunks scheduled before the context ran, now it runs. */
  settleLatencies() {
    const ctx = this.ctx;
    if (!ctx || ctx.state !== "running" || !this.unsettled.length) return;
    for (const { index, start, arrivedAt } of this.unsettled) {
      const latency = round((start - ctx.currentTime) * 1000 + (performance.now() - arrivedAt), 2);
      this.stats.latencies_ms[index] = latency;
      this.stats.max_latency_ms = Math.max(this.stats.max_latency_ms, latency);
    }
    this.unsettled = [];
    this.changed();
  }

  /**
   * Append to a per-chunk detail list of the stats, up to MAX_DETAIL entries.
   * @param {"seqs_received" | "arrivals_ms" | "gaps" | "scheduled_seqs" | "starts" | "latencies_ms" | "underrun_late_ms"} name
   * @param {number} value
   */
  detail(name, value) {
    const list = this.stats[name];
    if (list.length < MAX_DETAIL) list.push(value);
  }

  /** Silence everything scheduled and forget the run. */
  halt() {
    for (const s of this.scheduled) {
      s.node.onended = null;
      try {
        s.node.stop();
      } catch {
        /* never started */
      }
      s.node.disconnect();
    }
    this.scheduled = [];
    this.following = false;
    this.nextSeq = this.contiguous;
  }

  /**
   * Play the recording from `seconds`, then keep following the stream.
   * @param {number} seconds
   */
  playFrom(seconds = 0) {
    this.halt();
    this.paused = false;
    this.stopped = false;
    const ctx = this.ensureContext();
    if (ctx.state === "suspended") ctx.resume().catch(() => {});
    const target = Math.max(0, Math.round(seconds * this.rate));
    let seq = 0;
    while (seq < this.contiguous) {
      const c = this.chunks[seq];
      if (c.offset + c.pcm.length > target) break;
      seq += 1;
    }
    this.following = true;
    this.nextSeq = seq;
    if (seq < this.contiguous) {
      this.schedule(this.chunks[seq], Math.max(0, target - this.chunks[seq].offset), false);
      this.nextSeq = seq + 1;
    }
    this.pump(false);
    this.changed();
  }

  togglePause() {
    const ctx = this.ctx;
    if (this.isPlaying() && ctx) {
      if (this.paused || ctx.state === "suspended") {
        this.paused = false;
        ctx.resume().catch(() => {});
      } else {
        this.paused = true;
        ctx.suspend().catch(() => {});
      }
    } else {
      this.playFrom(0);
    }
    this.changed();
  }

  stop() {
    this.model.send({ kind: "stop" });
    this.stopped = true;
    this.halt();
    this.changed();
  }

  /** Whether a run is in progress: audio is scheduled ahead, or more is expected. */
  isPlaying() {
    if (!this.ctx || this.scheduled.length === 0) return false;
    if (this.following && !TERMINAL.has(this.status)) return true;
    return this.ctx.currentTime < this.nextTime;
  }

  /**
   * Seconds into the recording that are playing now (0 when nothing ran yet): chunk k
   * scheduled at start_k maps audio-clock time t to S_k / rate + (t - start_k).
   * @param {number} [at] the audio clock reading to map (default: read it now)
   */
  position(at) {
    const ctx = this.ctx;
    if (!ctx || this.scheduled.length === 0) return this.lastPosition || 0;
    const t = at ?? ctx.currentTime;
    let pos = this.scheduled[0].offset;
    for (const s of this.scheduled) {
      if (s.start > t) break;
      pos = s.offset + Math.min(s.length, (t - s.start) * this.rate);
    }
    this.lastPosition = pos / this.rate;
    return this.lastPosition;
  }

  /**
   * How many characters of the transcript have been spoken at `seconds` (approximate: linear
   * over the whole recording once it is complete, a speaking rate capped by the text sent
   * before the playing chunk arrived while it is live).
   * @param {number} seconds
   * @param {number} totalChars
   */
  spokenChars(seconds, totalChars) {
    const audio = this.samples / this.rate;
    if (audio <= 0 || seconds <= 0) return 0;
    if (TERMINAL.has(this.status)) return Math.round((totalChars * Math.min(seconds, audio)) / audio);
    let cap = totalChars;
    const sample = seconds * this.rate;
    for (let seq = 0; seq < this.contiguous; seq++) {
      const c = this.chunks[seq];
      if (c.offset <= sample) cap = c.chars || cap;
      else break;
    }
    return Math.min(Math.round(seconds * CHARS_PER_S), cap, totalChars);
  }

  download() {
    const parts = [];
    for (let seq = 0; seq < this.contiguous; seq++) parts.push(this.chunks[seq].pcm);
    const url = URL.createObjectURL(wavBlob(parts, this.rate));
    const a = document.createElement("a");
    a.href = url;
    a.download = "speech.wav";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // -- views and stats -----------------------------------------------------------------------

  changed() {
    this.statsDirty = true;
    for (const v of this.views) v.requestDraw();
  }

  /** @param {View} view */
  addView(view) {
    this.views.add(view);
    if (this.orphanTimer) clearTimeout(this.orphanTimer);
    this.orphanTimer = null;
    if (!this.rendered) {
      this.rendered = true;
      // Start the audio clock now if audio is expected: a context takes tens of ms to run,
      // which the first chunk would otherwise wait for.
      if (!TERMINAL.has(this.status)) this.ensureContext();
      this.pump(true); // chunks that arrived before the first view: their wait counts
    }
    this.changed();
  }

  /** @param {View} view */
  removeView(view) {
    this.views.delete(view);
    if (this.views.size === 0 && !this.orphanTimer) {
      // No view left (output cleared, cell deleted): go quiet, unless a view comes back soon
      // (an output that is re-rendered removes its view and adds a new one).
      this.orphanTimer = setTimeout(() => {
        this.orphanTimer = null;
        if (this.views.size === 0) this.closeAudio();
      }, ORPHAN_MS);
    }
  }

  closeAudio() {
    this.halt();
    const ctx = this.ctx;
    this.ctx = null;
    this.gain = null;
    if (ctx && ctx.state !== "closed") ctx.close().catch(() => {});
    this.changed();
  }

  tick() {
    const ctx = this.ctx;
    const s = this.stats;
    // Nothing left to play and nothing expected: let the audio thread sleep.
    if (ctx && ctx.state === "running" && !this.isPlaying() && TERMINAL.has(this.status)) {
      ctx.suspend().catch(() => {});
    }
    this.settleLatencies();
    s.ctx_state = ctx ? ctx.state : "none";
    s.ctx_time = ctx ? round(ctx.currentTime) : 0;
    s.samples = this.samples;
    s.rate = this.rate;
    s.audio_s = round(this.samples / this.rate, 4);
    s.position_s = round(this.position(), 4);
    s.playing = this.isPlaying();
    s.views = this.views.size;
    s.status = this.status;
    s.chunk_count = this.model.get("chunk_count") || 0;
    const text = JSON.stringify(s);
    if (text === this.lastPublished) {
      this.sync(false); // a change published to the DOM may still be due for Python
      return;
    }
    this.lastPublished = text;
    for (const v of this.views) v.root.dataset.stats = text;
    this.sync(false);
  }

  /** Copy the stats to the Python trait, at most once per SYNC_MS unless `force`. */
  sync(force = true) {
    const text = this.lastPublished;
    const now = performance.now();
    if (!text || text === this.lastSynced || (!force && now - this.lastSyncedAt < SYNC_MS)) return;
    this.lastSynced = text;
    this.lastSyncedAt = now;
    this.model.set("stats", JSON.parse(text));
    this.model.save_changes();
  }

  dispose() {
    clearInterval(this.timer);
    if (this.orphanTimer) clearTimeout(this.orphanTimer);
    this.model.off("msg:custom", this.onMessage);
    this.model.off("change:status", this.onStatus);
    this.closeAudio();
    if (this.hideFallback) this.hideFallback.remove();
  }
}

/** One rendering of a player. */
class View {
  /**
   * @param {Store} store
   * @param {Model} model
   * @param {HTMLElement} el
   */
  constructor(store, model, el) {
    this.store = store;
    this.model = model;
    this.root = document.createElement("div");
    this.root.className = "fishnb-player";
    this.root.innerHTML = `
      <div class="fishnb-bar">
        <button type="button" class="fishnb-btn fishnb-main" data-action="play" title="Play / Pause"></button>
        <span class="fishnb-state"></span>
        <span class="fishnb-time"></span>
        <span class="fishnb-grow"></span>
        <button type="button" class="fishnb-btn" data-action="replay" title="Play again from the start">Replay</button>
        <button type="button" class="fishnb-btn" data-action="flush" title="Speak the buffered text now">Flush</button>
        <button type="button" class="fishnb-btn" data-action="stop" title="End the session">Stop</button>
        <button type="button" class="fishnb-btn" data-action="download" title="Save as WAV">WAV</button>
      </div>
      <canvas class="fishnb-wave" title="Click to play from here"></canvas>
      <div class="fishnb-text"></div>
      <div class="fishnb-error"></div>
      <div class="fishnb-metrics"></div>`;
    el.appendChild(this.root);
    const q = (/** @type {string} */ sel) => /** @type {HTMLElement} */ (this.root.querySelector(sel));
    this.canvas = /** @type {HTMLCanvasElement} */ (q("canvas"));
    this.stateEl = q(".fishnb-state");
    this.timeEl = q(".fishnb-time");
    this.metricsEl = q(".fishnb-metrics");
    this.textEl = q(".fishnb-text");
    this.errorEl = q(".fishnb-error");
    this.buttons = {
      play: /** @type {HTMLButtonElement} */ (q('[data-action="play"]')),
      replay: /** @type {HTMLButtonElement} */ (q('[data-action="replay"]')),
      flush: /** @type {HTMLButtonElement} */ (q('[data-action="flush"]')),
      stop: /** @type {HTMLButtonElement} */ (q('[data-action="stop"]')),
      download: /** @type {HTMLButtonElement} */ (q('[data-action="download"]')),
    };
    this.onClick = this.onClick.bind(this);
    this.root.addEventListener("click", this.onClick);
    this.requestDraw = this.requestDraw.bind(this);
    this.onTraits = () => {
      this.textKey = "";
      this.requestDraw();
    };
    for (const name of ["status", "error", "transcript", "metrics"]) {
      model.on(`change:${name}`, this.onTraits);
    }
    this.frame = 0;
    this.textKey = "";
    /** @type {HTMLElement[][]} the span(s) of each word in time, by word index */
    this.wordEls = [];
    /** @type {HTMLElement[][]} the text before word j (and after the last word, at n) */
    this.gapEls = [];
    /** what the words show: how many have started, and the one being heard */
    this.heard = -1;
    this.current = -1;
    // What the transcript's highlight follows, read now (for tests and tools: the audio
    // clock, and the position in the recording it maps to through the scheduled chunks).
    // The text element's data-clock is the reading its highlight was drawn with.
    /** @type {any} */ (this.root).fishnbClock = () => {
      const at = store.ctx ? store.ctx.currentTime : 0;
      return { ctx_time: at, ctx_state: store.ctx ? store.ctx.state : "none", position_s: store.position(at) };
    };
    this.waveWindow = 5;
    this.resize = new ResizeObserver(() => this.requestDraw());
    this.resize.observe(this.canvas);
    if (store.lastPublished) this.root.dataset.stats = store.lastPublished;
    store.addView(this);
    this.requestDraw();
  }

  /** @param {MouseEvent} event */
  onClick(event) {
    const target = /** @type {HTMLElement} */ (event.target);
    const store = this.store;
    if (target === this.canvas) {
      const rect = this.canvas.getBoundingClientRect();
      const audio = store.samples / store.rate;
      const span = TERMINAL.has(store.status) ? audio : Math.max(audio, this.waveWindow);
      store.playFrom(((event.clientX - rect.left) / rect.width) * span);
      return;
    }
    const word = /** @type {HTMLElement | null} */ (target.closest(".fishnb-word"));
    if (word && this.root.contains(word)) {
      const w = store.words[Number(word.dataset.w)];
      if (w) store.playFrom(w[1]);
      return;
    }
    const button = target.closest("button");
    if (!button || button.disabled) return;
    const action = button.dataset.action;
    if (action === "play") store.togglePause();
    else if (action === "replay") store.playFrom(0);
    else if (action === "flush") this.model.send({ kind: "flush" });
    else if (action === "stop") store.stop();
    else if (action === "download") store.download();
  }

  requestDraw() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = 0;
    const store = this.store;
    const status = store.status;
    const live = !TERMINAL.has(status);
    const playing = store.isPlaying();
    // One reading of the audio clock for everything drawn, published with the highlight.
    const clockAt = store.ctx ? store.ctx.currentTime : 0;
    const position = store.position(clockAt);
    this.textEl.dataset.clock = String(clockAt);
    const audio = store.samples / store.rate;
    const hasAudio = store.contiguous > 0;

    this.stateEl.textContent = status;
    this.stateEl.dataset.state = status;
    const b = this.buttons;
    const sounding = playing && !store.paused && !!store.ctx && store.ctx.state === "running";
    b.play.textContent = sounding ? "❚❚" : "▶";
    b.play.setAttribute("aria-label", sounding ? "Pause" : "Play");
    b.play.disabled = !hasAudio;
    b.replay.disabled = !hasAudio;
    b.download.disabled = !hasAudio;
    b.flush.disabled = !(status === "streaming" || status === "connecting");
    b.stop.disabled = !(status === "streaming" || status === "connecting");
    this.timeEl.textContent = `${clock(position)} / ${clock(audio)}`;
    this.metricsEl.textContent = formatMetrics(this.model.get("metrics") || {}, store);
    const error = this.model.get("error") || "";
    this.errorEl.textContent = error;
    this.errorEl.hidden = !error;
    const ctx = store.ctx;
    this.root.classList.toggle("fishnb-blocked", !!ctx && ctx.state === "suspended" && !store.paused && playing);

    this.drawWave(position, audio, live);
    this.drawText(position);
    if (playing) this.requestDraw();
  }

  /**
   * @param {number} position seconds
   * @param {number} audio seconds recorded
   * @param {boolean} live
   */
  drawWave(position, audio, live) {
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
    g.clearRect(0, 0, width, height);
    // While live the time axis grows in steps, so the drawing does not shrink on every chunk.
    while (live && audio > this.waveWindow) this.waveWindow *= 2;
    const span = live ? Math.max(audio, this.waveWindow) : Math.max(audio, 1e-6);
    const store = this.store;
    const styles = getComputedStyle(this.root);
    const played = styles.getPropertyValue("--fishnb-played").trim() || "#1a73e8";
    const rest = styles.getPropertyValue("--fishnb-wave").trim() || "#9aa0a6";
    const binsPerPx = (span * store.rate) / BIN / width;
    const bar = Math.max(1, Math.round(2 * dpr));
    const step = bar + Math.max(1, Math.round(dpr));
    const mid = height / 2;
    const playedPx = (position / span) * width;
    for (let x = 0; x < width; x += step) {
      const from = Math.floor(x * binsPerPx);
      const to = Math.max(from + 1, Math.floor((x + step) * binsPerPx));
      let peak = -1;
      for (let bin = from; bin < to; bin++) {
        const v = this.binPeak(bin);
        if (v < 0) break;
        if (v > peak) peak = v;
      }
      if (peak < 0) break;
      const h = Math.max(dpr, Math.sqrt(peak) * (height - 2 * dpr));
      g.fillStyle = x < playedPx ? played : rest;
      g.fillRect(x, mid - h / 2, bar, h);
    }
    if (store.scheduled.length) {
      g.fillStyle = played;
      g.fillRect(Math.min(width - dpr, playedPx), 0, Math.max(1, dpr), height);
    }
  }

  /** @param {number} bin @returns {number} the peak of a waveform bin, -1 past the end */
  binPeak(bin) {
    const store = this.store;
    const sample = bin * BIN;
    if (sample >= store.samples) return -1;
    // Chunks are usually several bins long: remember where the last lookup ended.
    let seq = this.lastSeq && store.chunks[this.lastSeq] && store.chunks[this.lastSeq].offset <= sample ? this.lastSeq : 0;
    while (seq + 1 < store.contiguous && store.chunks[seq + 1].offset <= sample) seq += 1;
    this.lastSeq = seq;
    const c = store.chunks[seq];
    return c.peaks[Math.floor((sample - c.offset) / BIN)] ?? 0;
  }

  /** @param {number} position seconds */
  drawText(position) {
    const pieces = /** @type {Array<string | null>} */ (this.model.get("transcript") || []);
    const total = pieces.reduce((n, p) => n + (p ? p.length : 0), 0);
    const store = this.store;
    if (store.wordCount > 0) {
      // Words in time: the exact word being heard, instead of an estimate.
      const key = `words:${pieces.length}:${total}:${store.wordCount}`;
      if (key !== this.textKey) {
        this.textKey = key;
        this.buildWords(pieces);
      }
      this.markWords(position);
      return;
    }
    this.textEl.classList.remove("fishnb-timed");
    const spoken = this.store.spokenChars(position, total);
    const key = `${pieces.length}:${total}:${spoken}`;
    if (key === this.textKey) return;
    this.textKey = key;
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
    this.textEl.replaceChildren(frag);
    this.textEl.hidden = pieces.length === 0;
  }

  /**
   * Draw the transcript with each word in time as its own clickable span. Words are found in
   * the text sent (so flush points and text not spoken yet stay where they are); when some
   * word is not there (a server that rewrote the text), the words alone are shown.
   * @param {Array<string | null>} pieces
   */
  buildWords(pieces) {
    const words = this.store.words.slice(0, this.store.wordCount);
    let text = "";
    /** @type {number[]} */
    let flushes = [];
    for (const piece of pieces) {
      if (piece === null) flushes.push(text.length);
      else text += piece;
    }
    let ranges = matchWords(text, words);
    if (!ranges) {
      text = "";
      flushes = [];
      ranges = words.map(([w]) => {
        if (text) text += " ";
        text += w;
        return /** @type {[number, number]} */ ([text.length - w.length, text.length]);
      });
    }
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
    this.textEl.replaceChildren(frag);
    this.textEl.classList.add("fishnb-timed");
    this.textEl.title = "Click a word to play from there";
    this.textEl.hidden = false;
    this.heard = -1;
    this.current = -2; // forces markWords to paint
  }

  /**
   * Light up the words heard by `position` and the one being heard.
   * @param {number} position seconds
   */
  markWords(position) {
    const { heard, current } = this.store.wordsAt(position);
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
    this.textEl.dataset.word = String(current);
    // Keep the word being heard in sight inside the transcript box (never scroll the page).
    const el = current >= 0 ? this.wordEls[current][0] : null;
    const box = this.textEl;
    if (el && (el.offsetTop < box.scrollTop || el.offsetTop + el.offsetHeight > box.scrollTop + box.clientHeight)) {
      box.scrollTop = Math.max(0, el.offsetTop - box.clientHeight / 3);
    }
  }

  dispose() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.resize.disconnect();
    for (const name of ["status", "error", "transcript", "metrics"]) {
      this.model.off(`change:${name}`, this.onTraits);
    }
    this.root.removeEventListener("click", this.onClick);
    this.store.removeView(this);
    this.root.remove();
  }
}

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
 * The session's metrics and the page's own figures, in one muted line.
 * @param {Record<string, any>} m
 * @param {Store} store
 * @returns {string}
 */
function formatMetrics(m, store) {
  const parts = [];
  if (typeof m.ttfa_s === "number") parts.push(`TTFA ${Math.round(m.ttfa_s * 1000)} ms`);
  const flushes = Array.isArray(m.ttfa_flush_s) ? m.ttfa_flush_s : [];
  if (flushes.length) parts.push(`flush → audio ${Math.round(flushes[flushes.length - 1] * 1000)} ms`);
  if (typeof m.rtf === "number") parts.push(`RTF ${m.rtf.toFixed(2)}`);
  if (store.contiguous) parts.push(`${store.contiguous} chunks`);
  if (store.contiguous) parts.push(`${(store.rate / 1000).toFixed(store.rate % 1000 ? 1 : 0)} kHz`);
  if (store.stats.underruns) parts.push(`${store.stats.underruns} underrun${store.stats.underruns > 1 ? "s" : ""}`);
  return parts.join(" · ");
}

export default {
  /** @param {{ model: Model }} context */
  initialize({ model }) {
    const id = model.get("player_id") || "default";
    const old = stores.get(id);
    if (old) old.dispose();
    const store = new Store(model);
    stores.set(id, store);
    // Ask for everything recorded so far: covers chunks sent before this handler existed
    // and pages that were reloaded. Duplicates are dropped by seq.
    model.send({ kind: "replay-request" });
    return () => {
      store.dispose();
      if (stores.get(id) === store) stores.delete(id);
    };
  },

  /** @param {{ model: Model, el: HTMLElement }} context */
  render({ model, el }) {
    const store = stores.get(model.get("player_id") || "default");
    if (!store) {
      el.textContent = "fish-notebook player: not initialized";
      return;
    }
    const view = new View(store, model, el);
    return () => view.dispose();
  },
};
