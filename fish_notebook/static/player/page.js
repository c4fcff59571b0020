// The page: what every player in the page shares, whichever copy of this module made it.
//
// Each widget model may load its own copy of this module (anywidget imports each model's ES
// module on its own), and the players of several notebooks and kernels can live in one page.
// What they share hangs on globalThis under a Symbol.for key: the first copy to run makes it,
// and every copy uses it through its methods only (no instanceof, no module variable). The
// key names the version of that contract: a copy with another version gets a page of its own
// (its players then neither queue behind nor share a clock with this version's).
//
// Shared: one AudioContext per sample rate (a SharedClock), so the players at one rate run on
// one audio clock (one player's audio can start exactly where another's ends, one click that
// allows audio allows it for all, and the page runs one audio thread instead of one per
// cell); and the page's queue (queue.js).

const PAGE_KEY = Symbol.for("fish-notebook.player.page.v1");

/**
 * @typedef {{ busy: () => boolean, onStateChange: () => void }} ClockUser  a player on a
 *   clock: whether it plays or expects audio (then the clock stays awake), and what it does
 *   when the context starts, suspends or closes
 *
 * @typedef {{ clocks: ClockPool, queue: PageQueue }} Page  the page's shared state
 */

/** @returns {Page} the page's shared state, made by the first copy of this module that asks */
function sharedPage() {
  const g = /** @type {any} */ (globalThis);
  if (!g[PAGE_KEY]) g[PAGE_KEY] = { clocks: new ClockPool(), queue: new PageQueue() };
  return g[PAGE_KEY];
}

/** One AudioContext, shared by the players of the page at one sample rate. */
class SharedClock {
  /** @param {number} id unique in the page @param {number} rate Hz asked for */
  constructor(id, rate) {
    this.id = id;
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
    /** @type {Set<ClockUser>} */
    this.users = new Set();
    /** the user paused (Pause): the clock stays suspended until a Play */
    this.paused = false;
    /** @type {number | null} wall ms minus clock ms, taken once per run (see wallMs) */
    this.offset = null;
    ctx.onstatechange = () => {
      this.offset = null;
      for (const user of this.users) user.onStateChange();
    };
  }

  /** Run, unless the user paused: audio is coming. */
  wake() {
    if (this.ctx.state === "suspended" && !this.paused) this.ctx.resume().catch(() => {});
  }

  /** The user's Play: run, whoever paused. */
  resume() {
    this.paused = false;
    this.ctx.resume().catch(() => {});
  }

  /** The user's Pause: every player on this clock stands still. */
  pause() {
    this.paused = true;
    this.ctx.suspend().catch(() => {});
  }

  /** Let an idle audio thread sleep: only when no player on the clock plays or expects audio. */
  sleep() {
    if (this.ctx.state !== "running") return;
    for (const user of this.users) if (user.busy()) return;
    this.ctx.suspend().catch(() => {});
  }

  /**
   * A time on this clock as a wall time: ms since the epoch on the page's performance clock
   * (performance.timeOrigin + performance.now()), comparable across clocks to a few ms. The
   * mapping is taken once per run of the context (the clock stands still while suspended),
   * so times on one clock keep their exact differences.
   * @param {number} t seconds on this clock
   * @returns {number}
   */
  wallMs(t) {
    let offset = this.offset;
    if (offset === null) {
      offset = performance.timeOrigin + performance.now() - this.ctx.currentTime * 1000;
      if (this.ctx.state === "running" && this.ctx.currentTime > 0) this.offset = offset;
    }
    return round(offset + t * 1000, 3);
  }
}

/** The page's clocks, one per sample rate, each closed when its last player lets go. */
class ClockPool {
  constructor() {
    /** @type {Map<number, SharedClock>} */
    this.byRate = new Map();
    this.nextId = 1;
  }

  /**
   * The clock for `rate`, made if needed; `user` holds it until release.
   * @param {number} rate
   * @param {ClockUser} user
   * @returns {SharedClock}
   */
  acquire(rate, user) {
    let clock = this.byRate.get(rate);
    if (!clock || clock.ctx.state === "closed") {
      clock = new SharedClock(this.nextId++, rate);
      this.byRate.set(rate, clock);
    }
    clock.users.add(user);
    return clock;
  }

  /** @param {SharedClock} clock @param {ClockUser} user */
  release(clock, user) {
    clock.users.delete(user);
    if (clock.users.size > 0) return;
    if (this.byRate.get(clock.rate) === clock) this.byRate.delete(clock.rate);
    clock.ctx.onstatechange = null;
    if (clock.ctx.state !== "closed") clock.ctx.close().catch(() => {});
  }
}
