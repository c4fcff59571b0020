// Scheduling: Web Audio. Chunks are scheduled strictly in seq order, each one starting
// exactly where the previous one ends, behind a small jitter buffer; a chunk that comes too
// late counts as an underrun, and each chunk's arrival-to-start latency is measured. The
// playhead maps the audio clock back onto the recording. Before a run starts by itself, the
// scheduler asks its gate (the page's queue, queue.js) whether, and where, it may start.

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
 *
 * @typedef {{ fresh: boolean, gapless: boolean, at: number, since: number }} Admission  how
 *   a run may go on: `fresh` it begins now as a new run (the first chunk waited in a queue),
 *   at `at` on the audio clock at the earliest (0: as soon as the jitter buffer allows), and
 *   exactly there when `gapless` (it follows audio that ends then) and there is time; `since`
 *   performance.now() when the wait ended (latencies count from then)
 *
 * @typedef {{
 *   admit: () => Admission | null,
 *   began: (start: number, fresh: boolean) => void,
 *   ended: () => void,
 * }} RunGate  asked before chunks are scheduled (null: not yet); told when a run's first chunk
 *   is scheduled, and when the last chunk scheduled has played
 */

/** A run that goes on (or starts) as usual, held back by nobody. */
const FREE_RUN = Object.freeze({ fresh: false, gapless: false, at: 0, since: 0 });

/**
 * A player's way out: its own gain on the page's shared clock for the stream's rate (one
 * AudioContext per rate, see page.js), so its audio can be scheduled on the same clock as
 * every other player's at that rate, and faded out on its own.
 */
class AudioOut {
  /** @param {ClockUser} user the player, as the clock sees it */
  constructor(user) {
    this.user = user;
    /** @type {SharedClock | null} */
    this.clock = null;
    /** @type {GainNode | null} */
    this.gain = null;
    /** the rate the clock was asked for */
    this.rate = 0;
    /** where a fade out ends on the clock (0: none under way or done) */
    this.fadeEnd = 0;
  }

  /** @returns {AudioContext | null} the clock's context */
  get ctx() {
    return this.clock ? this.clock.ctx : null;
  }

  /** @returns {string} the context's state, "none" without one */
  get state() {
    return this.clock ? this.clock.ctx.state : "none";
  }

  /** @returns {boolean} whether the user paused the clock (every player on it waits) */
  get paused() {
    return !!this.clock && this.clock.paused;
  }

  /** @returns {number} the audio clock now, 0 without a context */
  now() {
    return this.clock ? this.clock.ctx.currentTime : 0;
  }

  /**
   * The context, taken (or taken again) at `rate` if needed.
   * @param {number} rate
   * @param {boolean} busy audio is scheduled on the current context: keep it, whatever its rate
   * @returns {AudioContext}
   */
  ensure(rate, busy) {
    const old = this.clock;
    if (old && old.ctx.state !== "closed" && (this.rate === rate || busy)) return old.ctx;
    // First audio, or the stream's rate changed before anything was scheduled (a WAV header
    // said so): go to the clock at the new rate, so chunks are not resampled and their edges
    // meet exactly.
    this.close();
    this.rate = rate;
    const clock = sharedPage().clocks.acquire(rate, this.user);
    this.clock = clock;
    this.gain = clock.ctx.createGain();
    this.gain.connect(clock.ctx.destination);
    clock.wake();
    return clock.ctx;
  }

  /** Audio is coming: run, unless the user paused. */
  wake() {
    if (this.clock) this.clock.wake();
  }

  /** The user's Play. */
  resume() {
    if (this.clock) this.clock.resume();
  }

  /** The user's Pause. */
  pause() {
    if (this.clock) this.clock.pause();
  }

  /** Nothing to play: the clock sleeps if no other player needs it. */
  sleep() {
    if (this.clock) this.clock.sleep();
  }

  /**
   * Fade to silence between two times on the clock (an interrupt).
   * @param {number} from @param {number} to
   */
  fade(from, to) {
    if (!this.gain) return;
    const gain = this.gain.gain;
    gain.cancelScheduledValues(from);
    gain.setValueAtTime(gain.value, from);
    gain.linearRampToValueAtTime(0, to);
    this.fadeEnd = to;
  }

  /** Full volume again for a run starting at `start`, after a fade. */
  unmute(/** @type {number} */ start) {
    if (!this.gain || !this.fadeEnd) return;
    const at = Math.min(start, Math.max(this.now(), this.fadeEnd));
    this.gain.gain.cancelScheduledValues(at);
    this.gain.gain.setValueAtTime(1, at);
    this.fadeEnd = 0;
  }

  /** Let go of the clock (closed when no player holds it). */
  close() {
    const clock = this.clock;
    this.clock = null;
    if (this.gain) this.gain.disconnect();
    this.gain = null;
    this.fadeEnd = 0;
    if (clock) sharedPage().clocks.release(clock, this.user);
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
    /** whether the user pressed Stop (or an interrupt cut it): chunks in flight are not played */
    this.stopped = false;
    /** next seq to schedule, and where it starts on the audio clock */
    this.nextSeq = 0;
    this.nextTime = 0;
    /** the current jitter buffer, seconds */
    this.jitter = JITTER_S;
    this.latencies = new Latencies(stats);
    /** the last playhead position computed, seconds: kept while nothing is scheduled */
    this.lastPosition = 0;
    /** @type {RunGate | null} asked before chunks are scheduled (the page's queue) */
    this.gate = null;
    /** @type {Admission | null} a fresh run let go by the gate, until its first chunk */
    this.admitted = null;
    /** performance.now() when the gate let the run go: latencies count from then at the earliest */
    this.heldUntil = 0;
    /** the seq the run let go by the gate began with (see rewind) */
    this.runSeq = 0;
  }

  /** @returns {AudioContext} the context, at the stream's rate unless audio is scheduled */
  context() {
    const ctx = this.out.ensure(this.stream.rate(), this.scheduled.length > 0);
    this.stats.data.ctx_sample_rate = ctx.sampleRate;
    return ctx;
  }

  /** Schedule chunks as they come from now on (unless the user stopped). */
  follow() {
    this.following = this.following || !this.stopped;
  }

  /**
   * Schedule every chunk that is available, in order, when the gate lets them go.
   * @param {boolean} onArrival whether the chunks are scheduled as they become available
   *   (their arrival-to-start latency is recorded), not replayed
   */
  pump(onArrival = false) {
    const rec = this.recording;
    if (!this.following || !this.audible || this.nextSeq >= rec.contiguous) return;
    const admission = this.gate ? this.gate.admit() : FREE_RUN;
    if (!admission) return;
    if (admission.fresh) {
      this.admitted = admission;
      this.heldUntil = admission.since;
      this.runSeq = this.nextSeq;
    }
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
    this.out.wake();
    const rate = this.stream.rate();
    const now = ctx.currentTime;
    const admitted = this.admitted;
    const first = this.scheduled.length === 0 || admitted !== null;
    const length = chunk.pcm.length - skip;
    if (length <= 0) return;
    const start = this.startTime(now, first, admitted);
    if (first) this.out.unmute(start);
    const node = this.sourceNode(ctx, chunk.pcm.subarray(skip), rate);
    node.start(start);
    const gap = first ? 0 : round(start - this.nextTime);
    const s = this.stats;
    s.data.scheduled += 1;
    s.data.max_gap = Math.max(s.data.max_gap, gap);
    s.detail("gaps", gap);
    s.detail("scheduled_seqs", chunk.seq);
    s.detail("starts", round(start));
    const from = Math.max(chunk.arrivedAt, this.heldUntil);
    if (onArrival) this.latencies.record(ctx, now, start, from, this.out.paused);
    this.scheduled.push({ start, offset: chunk.offset + skip, length, node });
    this.nextTime = start + length / rate;
    if (first) {
      this.admitted = null;
      if (this.gate) this.gate.began(start, admitted !== null);
    }
  }

  /**
   * Where the next chunk starts: where the previous one ends, unless a run begins (where the
   * gate says, or a jitter buffer from now) or the stream fell behind (an underrun: the
   * jitter buffer doubles).
   * @param {number} now the audio clock
   * @param {boolean} first a new run
   * @param {Admission | null} admitted how the gate let a new run go
   */
  startTime(now, first, admitted) {
    if (first) {
      this.jitter = JITTER_S;
      this.stats.data.runs += 1;
      return runStart(now, admitted);
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
    const node = bufferSource(ctx, pcm, rate, /** @type {GainNode} */ (this.out.gain));
    node.onended = () => {
      // The last one stays: it tells where the run ended.
      const i = this.scheduled.findIndex((s) => s.node === node);
      const last = i >= 0 && i === this.scheduled.length - 1;
      if (i >= 0 && !last) this.scheduled.splice(i, 1);
      node.disconnect();
      if (last && this.gate) this.gate.ended();
    };
    return node;
  }

  /** @returns {boolean} whether a latency figure changed (see Latencies.settle) */
  settleLatencies() {
    return this.latencies.settle(this.out.ctx);
  }

  /**
   * Silence what is scheduled (at once, or at `at` on the audio clock) and forget the run.
   * @param {number} [at]
   */
  halt(at) {
    for (const s of this.scheduled) {
      const node = s.node;
      node.onended = () => node.disconnect();
      try {
        node.stop(at); // a node due to start after `at` never plays
      } catch {
        /* never started */
      }
      if (at === undefined) node.disconnect();
    }
    this.scheduled = [];
    this.following = false;
    this.admitted = null;
    this.nextSeq = this.recording.contiguous;
  }

  /**
   * An interrupt: fade out over `fade` seconds from now, then stop, as Stop does (chunks
   * still to come are not played).
   * @param {number} fade
   * @returns {{ at: number, end: number, planned: number }} on the audio clock: when it was
   *   cut, when its sound ends, when it would have ended
   */
  cut(fade) {
    const at = this.out.now();
    const planned = this.nextTime;
    const end = Math.max(at, Math.min(planned, at + fade));
    this.position(at);
    this.out.fade(at, end);
    this.stopped = true;
    this.halt(end);
    return { at, end, planned };
  }

  /** Unschedule the run the gate let go, which has not sounded yet: the gate holds it again. */
  rewind() {
    const seq = this.runSeq;
    this.halt();
    this.following = true;
    this.nextSeq = seq;
  }

  /**
   * Play the recording from `seconds`, then keep following the stream.
   * @param {number} seconds
   */
  playFrom(seconds = 0) {
    this.halt();
    this.stopped = false;
    const ctx = this.context();
    if (ctx.state === "suspended" || this.out.paused) this.out.resume();
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
    this.lastPosition = playheadAt(this.scheduled, at ?? ctx.currentTime, this.stream.rate());
    return this.lastPosition;
  }
}

/**
 * Where a new run starts: a jitter buffer from now, or where the gate says (exactly there when
 * it follows audio that ends then and there is still time).
 * @param {number} now the audio clock
 * @param {Admission | null} admitted
 * @returns {number}
 */
function runStart(now, admitted) {
  const soonest = now + JITTER_S;
  if (!admitted || !admitted.at) return soonest;
  if (admitted.gapless && admitted.at >= now + LATE_MARGIN_S) return admitted.at;
  return Math.max(admitted.at, soonest);
}

/**
 * A node that plays `pcm` (16-bit) at `rate` into `destination`.
 * @param {AudioContext} ctx
 * @param {Int16Array} pcm
 * @param {number} rate
 * @param {AudioNode} destination
 * @returns {AudioBufferSourceNode}
 */
function bufferSource(ctx, pcm, rate, destination) {
  const buffer = ctx.createBuffer(1, pcm.length, rate);
  const data = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
  buffer.copyToChannel(data, 0);
  const node = ctx.createBufferSource();
  node.buffer = buffer;
  node.connect(destination);
  return node;
}

/**
 * Seconds into the recording heard at audio-clock time `t`.
 * @param {Scheduled[]} scheduled in start order, not empty
 * @param {number} t
 * @param {number} rate
 */
function playheadAt(scheduled, t, rate) {
  let pos = scheduled[0].offset;
  for (const s of scheduled) {
    if (s.start > t) break;
    pos = s.offset + Math.min(s.length, (t - s.start) * rate);
  }
  return pos / rate;
}
