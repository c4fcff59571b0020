// Scheduling: Web Audio. Chunks are scheduled strictly in seq order, each one starting
// exactly where the previous one ends, behind a small jitter buffer; a chunk that comes too
// late counts as an underrun, and each chunk's arrival-to-start latency is measured. The
// playhead maps the audio clock back onto the recording.

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

/**
 * @typedef {{ start: number, offset: number, length: number, node: AudioBufferSourceNode }} Scheduled
 *   `start` on the audio clock; `offset` and `length` in samples of the recording
 *
 * @typedef {{ rate: () => number, isFinal: () => boolean }} StreamInfo  the stream's sample
 *   rate, and whether more audio may come
 */

/** The audio context (the audio clock) and its output, made at the stream's rate. */
class AudioOut {
  /** @param {() => void} onStateChange called when the context starts, suspends or closes */
  constructor(onStateChange) {
    this.onStateChange = onStateChange;
    /** @type {AudioContext | null} */
    this.ctx = null;
    /** @type {GainNode | null} */
    this.gain = null;
    /** the rate the context was asked for */
    this.rate = 0;
  }

  /** @returns {string} the context's state, "none" without one */
  get state() {
    return this.ctx ? this.ctx.state : "none";
  }

  /** @returns {number} the audio clock now, 0 without a context */
  now() {
    return this.ctx ? this.ctx.currentTime : 0;
  }

  /**
   * The context, made (or made again) at `rate` if needed.
   * @param {number} rate
   * @param {boolean} busy audio is scheduled on the current context: keep it, whatever its rate
   * @param {boolean} paused the user paused: a new context stays suspended
   * @returns {AudioContext}
   */
  ensure(rate, busy, paused) {
    const old = this.ctx;
    if (old && old.state !== "closed") {
      if (this.rate === rate || busy) return old;
      // The stream's rate changed before anything was scheduled (a WAV header said so):
      // start over at the new rate, so chunks are not resampled and their edges meet exactly.
      old.onstatechange = null;
      old.close().catch(() => {});
    }
    this.rate = rate;
    /** @type {AudioContext} */
    let ctx;
    try {
      // At the stream's own rate no buffer is resampled, so chunk edges meet sample-exactly.
      ctx = new AudioContext({ sampleRate: rate, latencyHint: "interactive" });
    } catch {
      ctx = new AudioContext({ latencyHint: "interactive" });
    }
    this.ctx = ctx;
    this.gain = ctx.createGain();
    this.gain.connect(ctx.destination);
    ctx.onstatechange = () => this.onStateChange();
    if (ctx.state === "suspended" && !paused) this.resume();
    return ctx;
  }

  resume() {
    if (this.ctx) this.ctx.resume().catch(() => {});
  }

  suspend() {
    if (this.ctx) this.ctx.suspend().catch(() => {});
  }

  close() {
    const ctx = this.ctx;
    this.ctx = null;
    this.gain = null;
    if (ctx && ctx.state !== "closed") ctx.close().catch(() => {});
  }
}

/** Arrival-to-start latency of the chunks scheduled as they arrive, in the stats. */
class Latencies {
  /** @param {Stats} stats */
  constructor(stats) {
    this.stats = stats;
    /** @type {Array<{ index: number, start: number, arrivedAt: number }>} see settle */
    this.unsettled = [];
  }

  /**
   * Record a chunk's arrival-to-start latency.
   * @param {AudioContext} ctx
   * @param {number} now the audio clock when it was scheduled
   * @param {number} start when it starts on the audio clock
   * @param {number} arrivedAt performance.now() when it arrived
   * @param {boolean} paused the user paused (the clock stands still on purpose)
   */
  record(ctx, now, start, arrivedAt, paused) {
    const s = this.stats;
    const latency = round((start - now) * 1000 + (performance.now() - arrivedAt), 2);
    s.data.max_latency_ms = Math.max(s.data.max_latency_ms, latency);
    const index = s.data.latencies_ms.length;
    s.detail("latencies_ms", latency);
    // A context that is not running yet (just made) has a clock standing still: measure
    // again once it runs, or the wait for it to start would be missed.
    if (ctx.state !== "running" && !paused && index < MAX_DETAIL) {
      this.unsettled.push({ index, start, arrivedAt });
    }
  }

  /**
   * Measure the chunks recorded before the context ran, now it runs.
   * @param {AudioContext | null} ctx
   * @returns {boolean} whether a figure changed
   */
  settle(ctx) {
    if (!ctx || ctx.state !== "running" || !this.unsettled.length) return false;
    const s = this.stats.data;
    for (const { index, start, arrivedAt } of this.unsettled) {
      const latency = round((start - ctx.currentTime) * 1000 + (performance.now() - arrivedAt), 2);
      s.latencies_ms[index] = latency;
      s.max_latency_ms = Math.max(s.max_latency_ms, latency);
    }
    this.unsettled = [];
    return true;
  }
}

/** Plays a Recording on an AudioOut: gapless, in order, from any point; keeps the playhead. */
class Scheduler {
  /**
   * @param {Recording} recording
   * @param {AudioOut} out
   * @param {Stats} stats
   * @param {StreamInfo} stream
   */
  constructor(recording, out, stats, stream) {
    this.recording = recording;
    this.out = out;
    this.stats = stats;
    this.stream = stream;
    /** @type {Scheduled[]} */
    this.scheduled = [];
    /** a view was rendered: until then the player stays silent (its views are the controls) */
    this.audible = false;
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
    this.latencies = new Latencies(stats);
    /** the last playhead position computed, seconds: kept while nothing is scheduled */
    this.lastPosition = 0;
  }

  /** @returns {AudioContext} the context, at the stream's rate unless audio is scheduled */
  context() {
    const ctx = this.out.ensure(this.stream.rate(), this.scheduled.length > 0, this.paused);
    this.stats.data.ctx_sample_rate = ctx.sampleRate;
    return ctx;
  }

  /** Schedule chunks as they come from now on (unless the user stopped). */
  follow() {
    this.following = this.following || !this.stopped;
  }

  /**
   * Schedule every chunk that is available, in order.
   * @param {boolean} onArrival whether the chunks are scheduled as they become available
   *   (their arrival-to-start latency is recorded), not replayed
   */
  pump(onArrival = false) {
    if (!this.following || !this.audible) return;
    const rec = this.recording;
    while (this.nextSeq < rec.contiguous) {
      this.schedule(rec.chunks[this.nextSeq], 0, onArrival);
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
    const ctx = this.context();
    if (ctx.state === "suspended" && !this.paused) this.out.resume();
    const rate = this.stream.rate();
    const now = ctx.currentTime;
    const first = this.scheduled.length === 0;
    const start = this.startTime(now, first);
    const length = chunk.pcm.length - skip;
    if (length <= 0) return;
    const node = this.sourceNode(ctx, chunk.pcm.subarray(skip), rate);
    node.start(start);
    const gap = first ? 0 : round(start - this.nextTime);
    const s = this.stats;
    s.data.scheduled += 1;
    s.data.max_gap = Math.max(s.data.max_gap, gap);
    s.detail("gaps", gap);
    s.detail("scheduled_seqs", chunk.seq);
    s.detail("starts", round(start));
    if (onArrival) this.latencies.record(ctx, now, start, chunk.arrivedAt, this.paused);
    this.scheduled.push({ start, offset: chunk.offset + skip, length, node });
    this.nextTime = start + length / rate;
  }

  /**
   * Where the next chunk starts: where the previous one ends, unless a run begins or the
   * stream fell behind (an underrun: the jitter buffer doubles).
   * @param {number} now the audio clock
   * @param {boolean} first nothing is scheduled: a new run
   */
  startTime(now, first) {
    if (first) {
      this.jitter = JITTER_S;
      this.stats.data.runs += 1;
      return now + this.jitter;
    }
    const start = this.nextTime;
    if (start >= now + LATE_MARGIN_S) return start;
    this.jitter = Math.min(MAX_JITTER_S, this.jitter * 2);
    this.stats.data.underruns += 1;
    this.stats.detail("underrun_late_ms", round((now - start) * 1000, 1));
    return now + this.jitter;
  }

  /**
   * A source node playing `pcm`, connected to the output; it forgets itself when done.
   * @param {AudioContext} ctx
   * @param {Int16Array} pcm
   * @param {number} rate
   */
  sourceNode(ctx, pcm, rate) {
    const buffer = ctx.createBuffer(1, pcm.length, rate);
    const data = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
    buffer.copyToChannel(data, 0);
    const node = ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(/** @type {GainNode} */ (this.out.gain));
    node.onended = () => {
      // The last one stays: it tells where the run ended.
      const i = this.scheduled.findIndex((s) => s.node === node);
      if (i >= 0 && i < this.scheduled.length - 1) this.scheduled.splice(i, 1);
      node.disconnect();
    };
    return node;
  }

  /** @returns {boolean} whether a latency figure changed (see Latencies.settle) */
  settleLatencies() {
    return this.latencies.settle(this.out.ctx);
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
    this.nextSeq = this.recording.contiguous;
  }

  /**
   * Play the recording from `seconds`, then keep following the stream.
   * @param {number} seconds
   */
  playFrom(seconds = 0) {
    this.halt();
    this.paused = false;
    this.stopped = false;
    const ctx = this.context();
    if (ctx.state === "suspended") this.out.resume();
    const rec = this.recording;
    const target = Math.max(0, Math.round(seconds * this.stream.rate()));
    const seq = rec.chunkAt(target);
    this.following = true;
    this.nextSeq = seq;
    if (seq < rec.contiguous) {
      this.schedule(rec.chunks[seq], Math.max(0, target - rec.chunks[seq].offset), false);
      this.nextSeq = seq + 1;
    }
    this.pump(false);
  }

  togglePause() {
    const ctx = this.out.ctx;
    if (!this.isPlaying() || !ctx) {
      this.playFrom(0);
    } else if (this.paused || ctx.state === "suspended") {
      this.paused = false;
      this.out.resume();
    } else {
      this.paused = true;
      this.out.suspend();
    }
  }

  /** The user pressed Stop: silence, and leave chunks still in flight unplayed. */
  stop() {
    this.stopped = true;
    this.halt();
  }

  /** Whether a run is in progress: audio is scheduled ahead, or more is expected. */
  isPlaying() {
    const ctx = this.out.ctx;
    if (!ctx || this.scheduled.length === 0) return false;
    if (this.following && !this.stream.isFinal()) return true;
    return ctx.currentTime < this.nextTime;
  }

  /**
   * Seconds into the recording that are playing now (0 when nothing ran yet): chunk k
   * scheduled at start_k maps audio-clock time t to S_k / rate + (t - start_k).
   * @param {number} [at] the audio clock reading to map (default: read it now)
   */
  position(at) {
    const ctx = this.out.ctx;
    if (!ctx || this.scheduled.length === 0) return this.lastPosition;
    const rate = this.stream.rate();
    const t = at ?? ctx.currentTime;
    let pos = this.scheduled[0].offset;
    for (const s of this.scheduled) {
      if (s.start > t) break;
      pos = s.offset + Math.min(s.length, (t - s.start) * rate);
    }
    this.lastPosition = pos / rate;
    return this.lastPosition;
  }
}
