// Stats: what the page received, scheduled and played, published as JSON in the player
// element's `data-stats` attribute (tests and tools read it) and in the model's `stats` trait.
// `queue` holds what the page's queue did with the player (QueueMember.stats): its policy,
// order, place and wait, and where its queued run's first sample starts and its last ends,
// in seconds on its clock (`clock`: one id per AudioContext of the page) and in wall ms
// (performance.timeOrigin + performance.now(), comparable across clocks).

/** Per-chunk detail (seqs, starts, gaps, latencies) is kept for this many chunks. */
const MAX_DETAIL = 1000;

/**
 * @typedef {"seqs_received" | "arrivals_ms" | "gaps" | "scheduled_seqs" | "starts" | "latencies_ms" | "underrun_late_ms"} DetailName
 */

/** One player's figures (published as StatsOut says: STATS_MS, SYNC_MS). */
class Stats extends StatsOut {
  /** @param {Model} model */
  constructor(model) {
    super(model);
    this.data = {
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
      status: "",
      chunk_count: 0,
      queue: /** @type {object} */ ({}),
    };
  }

  /**
   * Append to a per-chunk detail list, up to MAX_DETAIL entries.
   * @param {DetailName} name
   * @param {number} value
   */
  detail(name, value) {
    const list = this.data[name];
    if (list.length < MAX_DETAIL) list.push(value);
  }

  /** @returns {string | null} the figures' JSON for the DOM when it changed since the last call */
  publish() {
    return this.send(this.data);
  }
}
