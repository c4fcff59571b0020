// The page's queue: one voice at a time, across every player, notebook and kernel of the page.
//
// Each player has a policy, from its Python `playback` trait ({policy, order}):
//   queue      (default) wait for the sessions started before it, then play;
//   interrupt  fade out (FADE_S) whatever is playing and speak now; queued ones still wait;
//   overlap    play at once, wait for nobody, hold nobody up (it never joins the queue).
// `order` is the kernel's wall clock (ms) when the player was made, just before its session
// starts: the queue's order, whichever model loads or view renders first in the page.
//
// The rules:
// - Joining. A queue or interrupt player joins when its session is under way (so its place is
//   held before its first audio) or when audio arrives that it plays by itself (a fresh
//   display). Members wait sorted by order, then by when they joined the page: one that
//   joins late still goes before later ones (after the one playing).
// - The turn. One member at a time holds the turn; those waiting show "queued" until their
//   first sample plays. When the holder's session is over and all its audio is scheduled, it
//   passes the turn on ("released"): the next member's first chunk is scheduled exactly where
//   that audio ends when both are on one clock (same sample rate: one AudioContext), or on
//   another clock the moment it has ended. A chunk's arrival-to-start latency counts from the
//   end of its player's wait.
// - Leaving. A member leaves when its audio has ended ("ended"), when Stop is pressed
//   ("stopped"), when its model closes ("closed"), when an interrupt cuts it ("interrupted"),
//   when a click plays it out of turn ("manual"), or when Python makes it an overlap player
//   ("overlap"): none of these rejoins. Members scheduled after one that leaves early and
//   not sounding yet are unscheduled and queued again in their order, so no silence is left
//   where the cut audio was.
// - Bounds: nothing waits forever. The holder gives up its turn when it has no view for
//   SKIP_MS ("skipped": never displayed; it rejoins in its order when a view appears), or when
//   others wait while it has nothing scheduled and received no audio for IDLE_MS ("idle": a
//   panel left alone, a stalled stream; new audio queues it again, at the back). A player
//   whose views are all gone (its output cleared, its cell deleted) goes quiet and leaves
//   ("orphaned"): audio its session still sends is kept, not played, and not queued, since
//   nothing on the page could stop it; a view shown again queues it again, in its order.
// - Interrupt. When an interrupt member's first audio is ready, every player playing is cut
//   (its gain fades out over FADE_S, then its nodes stop; a session still under way is
//   stopped in its kernel), members scheduled ahead but not sounding yet go back to waiting,
//   and the interrupter takes the turn and starts where the fade ends.
// - Clicks. Play, Replay or a click in the waveform or text of a waiting player plays it at
//   once (it leaves: "manual"); on the holder they act as usual. Pause pauses the clock, so
//   every player on it (and the queue behind them) waits.
//
// The queue lives in the page (page.js), shared by every copy of this module; it reaches its
// members only through the QueueMember methods marked "contract".

/** The policies a player can have (the Python trait's validator lists the same). */
const POLICIES = ["queue", "interrupt", "overlap"];
/** Seconds over which an interrupted player fades out: no click, and gone at once. */
/** The holder with no view gives up its turn after this long (an undisplayed player). */
const SKIP_MS = 5000;
/** The holder with nothing to play gives up its turn after this long while others wait. */
const IDLE_MS = 8000;
/** How a member that left for each reason joins again: in its order once it has a view, or
 * at the back once new audio comes. Other reasons never rejoin. */
const REJOIN = /** @type {Record<string, "view" | "audio">} */ ({
  skipped: "view",
  idle: "audio",
  orphaned: "view",
});

/**
 * @typedef {{
 *   where: "out" | "waiting" | "holder" | "released",
 *   reason: string,
 *   order: number,
 *   seq: number,
 *   joinedAt: number,
 *   turnAt: number,
 *   started: boolean,
 *   after: number,
 *   position: number,
 * }} Slot  a member's place, kept by the queue: `reason` why it left ("" before it joined);
 *   `seq` joins in the page so far when it joined; `joinedAt`, `turnAt` performance.now();
 *   `started` its run was let go; `after` the member whose end it was scheduled at (id);
 *   `position` members ahead of it when it joined
 */

/** The page's queue (one per page: see page.js). Methods take and return members. */
class PageQueue {
  constructor() {
    this.nextId = 1;
    this.joins = 0;
    /** @type {Set<any>} every player of the page, of any policy (an interrupt cuts any) */
    this.players = new Set();
    /** @type {any[]} members waiting for the turn, in (order, seq) order */
    this.waiting = [];
    /** @type {any} the member whose turn it is, or null */
    this.holder = null;
    /** @type {any[]} members that passed the turn on, oldest first, until their audio ends */
    this.released = [];
  }

  /** @param {any} m a new player @returns {void} */
  register(m) {
    m.id = this.nextId++;
    /** @type {Slot} */
    m.slot = { where: "out", reason: "", order: 0, seq: 0, joinedAt: 0, turnAt: 0 };
    Object.assign(m.slot, { started: false, after: 0, position: 0 });
    this.players.add(m);
  }

  /** @param {any} m a player whose model closed */
  unregister(m) {
    this.leave(m, "closed");
    this.players.delete(m);
  }

  /** @param {any} m @param {boolean} back join behind everyone (its order is then new) */
  join(m, back) {
    const slot = m.slot;
    if (slot.where !== "out") return;
    Object.assign(slot, { reason: "", seq: ++this.joins, joinedAt: performance.now() });
    Object.assign(slot, { started: false, after: 0 });
    slot.order = back ? this.backOrder() : m.order();
    // Joining late (its model loaded after a later one's), it goes before those not heard yet.
    this.displace((o) => o.slot.order > slot.order);
    this.insert(m);
    const sounding = this.released.filter((r) => r.ahead()).length;
    slot.position = (this.holder ? 1 : 0) + sounding + this.waiting.indexOf(m);
    this.advance();
  }

  /** @param {any} m @param {string} reason see the rules above */
  leave(m, reason) {
    const slot = m.slot;
    if (!slot || slot.where === "out") return;
    const early = slot.where === "released" && reason !== "ended";
    this.remove(m);
    slot.reason = reason;
    m.left(reason);
    if (early) this.displace((o) => o.slot.started);
    this.advance();
    if (this.holder && !this.holder.slot.started) this.holder.kick(); // it may wait for `m`'s end
  }

  /** The holder's session is over and all its audio is scheduled: the next one's turn. */
  release(/** @type {any} */ m) {
    if (this.holder !== m) return;
    this.holder = null;
    this.released.push(m);
    m.slot.where = "released";
    this.advance();
  }

  /**
   * Whether member `m` may schedule audio now (its scheduler asks before scheduling).
   * @param {any} m
   * @param {number} clockId the clock `m` plays on
   * @returns {Admission | null} null: not yet
   */
  admit(m, clockId) {
    const slot = m.slot;
    if (slot.where === "out" || slot.where === "released" || slot.started) return FREE_RUN;
    if (m.policy() === "interrupt") return this.interrupt(m, clockId);
    this.advance();
    if (this.holder !== m) return null;
    const prev = this.lastAhead();
    let at = 0;
    if (prev) {
      if (prev.clockId() !== clockId) return null; // another clock: start once it has ended
      at = prev.endTime();
      slot.after = prev.id;
    }
    slot.started = true;
    return { fresh: true, gapless: !!prev, at, since: slot.turnAt };
  }

  /**
   * Cut every player playing, send members scheduled ahead back to waiting, give `m` the turn.
   * @param {any} m
   * @param {number} clockId
   * @returns {Admission} `m` starts where the fades on its clock end
   */
  interrupt(m, clockId) {
    let at = 0;
    for (const p of [...this.players]) {
      const inQueue = p.slot.where !== "out";
      if (p === m || !p.playing() || (inQueue && !p.sounded())) continue;
      const cut = p.cut(m.id);
      if (cut.clockId === clockId) at = Math.max(at, cut.end);
      if (inQueue) this.remove(p);
      p.slot.reason = "interrupted";
      p.left("interrupted");
    }
    this.displace(() => true);
    this.remove(m);
    Object.assign(m.slot, { where: "holder", turnAt: performance.now(), started: true });
    this.holder = m;
    return { fresh: true, gapless: false, at, since: m.slot.turnAt };
  }

  /** The bounds (see the rules): called often by every player (its stats tick). */
  check() {
    for (const r of [...this.released]) if (!r.ahead()) this.leave(r, "ended");
    const h = this.holder;
    if (!h) return this.advance();
    const slot = h.slot;
    const now = performance.now();
    if (!slot.started && !h.hasView()) {
      if (now - slot.turnAt > SKIP_MS) this.leave(h, "skipped");
      return;
    }
    const quiet = !h.ahead() && !this.lastAhead() && this.waiting.length > 0;
    if (quiet && now - Math.max(slot.turnAt, h.lastAudioAt()) > IDLE_MS) this.leave(h, "idle");
  }

  /** @param {any} m @returns {boolean} whether `m` waits for another member's audio */
  waits(m) {
    const slot = m.slot;
    if (slot.where === "waiting") return true;
    if (slot.where === "out" || m.sounded()) return false;
    // Its turn came: it waits while the audio before it plays (scheduled after it, or not yet).
    return slot.started ? slot.after !== 0 : slot.where === "holder" && !!this.lastAhead();
  }

  // -- bookkeeping ---------------------------------------------------------------------------

  /** Give the turn to the first one waiting, if nobody holds it. */
  advance() {
    while (!this.holder && this.waiting.length) {
      const m = this.waiting.shift();
      this.holder = m;
      Object.assign(m.slot, { where: "holder", turnAt: performance.now() });
      m.kick();
    }
  }

  /**
   * Members `which` picks among those scheduled ahead and not heard yet (and the holder, if it
   * has not been heard) are unscheduled and wait again, in their order.
   * @param {(m: any) => boolean} which
   */
  displace(which) {
    const back = this.released.filter((r) => r.ahead() && !r.sounded() && which(r));
    const h = this.holder;
    if (h && !h.sounded() && which(h)) back.push(h);
    for (const m of back) {
      this.remove(m);
      if (m.slot.started) m.rewind();
      Object.assign(m.slot, { started: false, after: 0 });
      this.insert(m);
    }
  }

  /** @returns {any} the last member that passed the turn on and still has audio ahead */
  lastAhead() {
    for (let i = this.released.length - 1; i >= 0; i--) if (this.released[i].ahead()) return this.released[i];
    return null;
  }

  /** @returns {number} an order after every member's */
  backOrder() {
    const all = [...this.waiting, ...this.released, ...(this.holder ? [this.holder] : [])];
    return all.reduce((most, m) => Math.max(most, m.slot.order + 0.001), Date.now());
  }

  /** @param {any} m */
  insert(m) {
    m.slot.where = "waiting";
    const { order, seq } = m.slot;
    const before = (/** @type {any} */ o) =>
      o.slot.order > order || (o.slot.order === order && o.slot.seq > seq);
    const i = this.waiting.findIndex(before);
    this.waiting.splice(i < 0 ? this.waiting.length : i, 0, m);
  }

  /** @param {any} m */
  remove(m) {
    if (this.holder === m) this.holder = null;
    this.waiting = this.waiting.filter((o) => o !== m);
    this.released = this.released.filter((o) => o !== m);
    m.slot.where = "out";
  }
}

/**
 * One player's place in the page's queue: what the queue may ask of the player (the methods
 * marked "contract", called by the page's queue, which may come from another copy of this
 * module), the gate its scheduler asks before a run (see RunGate), and the figures it
 * publishes (stats.queue).
 */
class QueueMember {
  /** @param {Player} player */
  constructor(player) {
    this.player = player;
    this.queue = sharedPage().queue;
    this.id = 0;
    /** @type {Slot} set by register */
    this.slot = /** @type {any} */ (null);
    this.queue.register(this);
    /** the queued run's first sample and end (seconds on `clock`), see began and freeze */
    /** @type {number | null} */
    this.firstStart = null;
    /** @type {SharedClock | null} */
    this.clock = null;
    /** whether `lastEnd` follows the scheduler (the queued run goes on) */
    this.tracking = false;
    /** @type {number | null} */
    this.lastEnd = null;
    /** @type {{ at: number, planned: number, by: number } | null} an interrupt's cut */
    this.cutInfo = null;
    /** whether it ever showed "queued" */
    this.wasQueued = false;
    this.rewinds = 0;
    player.scheduler.gate = this;
  }

  /** @returns {{ policy?: string, order?: number }} the Python `playback` trait */
  get playback() {
    return this.player.model.get("playback") || {};
  }

  // -- contract: what the page's queue calls -----------------------------------------------

  /** @returns {string} the policy (one of POLICIES) */
  policy() {
    const policy = this.playback.policy;
    return POLICIES.includes(policy ?? "") ? /** @type {string} */ (policy) : "queue";
  }

  /** @returns {number} its place: the kernel's clock when the player was made, in ms */
  order() {
    const order = this.playback.order;
    return Number.isFinite(order) ? /** @type {number} */ (order) : Date.now();
  }

  hasView() {
    return this.player.scheduler.audible && this.player.views.size > 0;
  }

  /** @returns {number} performance.now() when its last chunk arrived (0: none yet) */
  lastAudioAt() {
    const rec = this.player.recording;
    return rec.contiguous ? rec.chunks[rec.contiguous - 1].arrivedAt : 0;
  }

  /** @returns {boolean} whether audio it scheduled has yet to play */
  ahead() {
    const s = this.player.scheduler;
    return s.scheduled.length > 0 && this.player.out.now() < s.nextTime;
  }

  /** @returns {boolean} whether its queued run has begun to be heard */
  sounded() {
    return this.firstStart !== null && this.player.out.now() >= this.firstStart;
  }

  /** @returns {boolean} whether a run is in progress (audio ahead, or more expected) */
  playing() {
    return this.player.scheduler.isPlaying();
  }

  /** @returns {number} the id of its clock (0: none) */
  clockId() {
    return this.player.out.clock ? this.player.out.clock.id : 0;
  }

  /** @returns {number} where its scheduled audio ends, on its clock */
  endTime() {
    return this.player.scheduler.nextTime;
  }

  /** Its turn may have come, or what it waited for ended: play what it can. */
  kick() {
    this.player.scheduler.pump(true);
    this.update();
    this.player.changed();
  }

  /**
   * An interrupt: fade out and stop now (a session under way is stopped in its kernel).
   * @param {number} by the interrupter's id
   * @returns {{ clockId: number, end: number }} where the sound ends
   */
  cut(by) {
    const p = this.player;
    const clockId = this.clockId();
    const playhead = p.scheduler.position();
    const { at, end, planned } = p.scheduler.cut(FADE_S);
    if (this.tracking) this.lastEnd = end;
    this.tracking = false;
    this.cutInfo = { at, planned, by };
    if (p.vocab.isActive(p.status)) p.model.send({ kind: "stop", playhead });
    return { clockId, end };
  }

  /** Its run was scheduled ahead and has not sounded: unschedule it, it waits again. */
  rewind() {
    this.player.scheduler.rewind();
    this.firstStart = null;
    this.tracking = false;
    this.rewinds += 1;
  }

  /** @param {string} _reason it is out of the queue */
  left(_reason) {
    this.freeze();
    this.player.changed();
  }

  // -- gate: what the scheduler asks (RunGate) ---------------------------------------------

  /** @returns {Admission | null} how the next run may start (null: not yet) */
  admit() {
    const slot = this.slot;
    if (slot.where === "out" || slot.where === "released" || slot.started) return FREE_RUN;
    this.player.scheduler.context(); // the clock of the stream's rate: the queue compares them
    const clock = this.player.out.clock;
    const admission = this.queue.admit(this, this.clockId());
    if (!admission || !admission.at || !clock) return admission;
    // The wait ends where the audio it waited for ends (read as Latencies reads the clock).
    const ends = performance.now() + (admission.at - clock.ctx.currentTime) * 1000;
    return { ...admission, since: Math.max(admission.since, ends) };
  }

  /** @param {number} start a run's first chunk starts then @param {boolean} fresh let go by the queue */
  began(start, fresh) {
    if (!fresh && this.firstStart !== null) {
      this.freeze(); // a replay: the figures stay those of the queued run
      return;
    }
    this.firstStart = start;
    this.clock = this.player.out.clock;
    this.queued();
    this.tracking = true;
    this.lastEnd = null;
    this.cutInfo = null;
  }

  /** The last chunk scheduled has ended. */
  ended() {
    this.update();
    this.player.changed();
  }

  // -- what the player tells ---------------------------------------------------------------

  /** Join the queue if the player has something to play by itself (see the rules). */
  want() {
    const slot = this.slot;
    if (slot.where !== "out" || this.policy() === "overlap") return;
    const rejoin = REJOIN[slot.reason];
    if (slot.reason && !rejoin) return;
    const p = this.player;
    const s = p.scheduler;
    if (s.stopped) return;
    const pending = s.following && p.recording.contiguous > s.nextSeq;
    if (!pending && !p.vocab.isActive(p.status)) return;
    if ((rejoin === "view" && !this.hasView()) || (rejoin === "audio" && !pending)) return;
    this.queue.join(this, rejoin === "audio");
    this.queued(); // noted even if its wait ends before the next drawing
  }

  /** Pass the turn on, or leave, when the session's audio is all scheduled or played. */
  update() {
    const slot = this.slot;
    const p = this.player;
    const total = p.model.get("chunk_count") || 0;
    const nothing = p.final && total === 0;
    if (slot.where === "released" && !this.ahead()) this.queue.leave(this, "ended");
    else if (slot.where === "holder" && slot.started && p.final && this.complete(total)) {
      this.queue.release(this);
    }
    else if (slot.where !== "out" && !slot.started && nothing) this.queue.leave(this, "ended");
  }

  /** @param {number} total chunks the kernel sent @returns {boolean} all scheduled */
  complete(total) {
    const s = this.player.scheduler;
    return s.nextSeq >= total && this.player.recording.contiguous >= total;
  }

  /** A click plays it: a waiting player plays at once, out of the queue. */
  manual() {
    const slot = this.slot;
    const waiting = slot.where === "waiting" || (slot.where === "holder" && !slot.started);
    if (waiting) this.queue.leave(this, "manual");
    this.freeze();
  }

  /** @param {string} reason it leaves by itself (stopped, closed, orphaned) */
  leave(reason) {
    this.freeze();
    this.queue.leave(this, reason);
  }

  /** The player's model closed. */
  dispose() {
    this.freeze();
    this.queue.unregister(this);
  }

  /** The Python trait changed: an overlap player waits no more; others may act now. */
  policyChanged() {
    if (this.policy() === "overlap" && this.slot.where === "waiting") this.queue.leave(this, "overlap");
    this.want();
    this.kick();
  }

  /** The queue's bounds, and what this player passes on (called by the stats tick). */
  tick() {
    this.queue.check();
    this.update();
  }

  /** @returns {boolean} whether its pill shows "queued": a queue player waiting for its turn */
  queued() {
    const queued = this.policy() === "queue" && this.queue.waits(this);
    this.wasQueued = this.wasQueued || queued;
    return queued;
  }

  /** Stop following the scheduler: the queued run's end is known (or it was cut short). */
  freeze() {
    if (!this.tracking) return;
    this.tracking = false;
    const heard = Math.max(this.player.out.now(), this.firstStart ?? 0);
    this.lastEnd = Math.min(this.player.scheduler.nextTime, heard);
  }

  /** @returns {object} the figures published as stats.queue (see memberFigures) */
  stats() {
    return memberFigures(this);
  }
}

/**
 * What the queue did with a player, for stats.queue: its id, policy, order, where it is in the
 * queue or why it left, members ahead when it joined, whether it showed "queued", the member
 * it followed (`after`), when it joined and got its turn (wall ms), and its queued run: first
 * sample and end (seconds on clock `clock`, and wall ms), and an interrupt's cut. `wait_ms`
 * runs from joining (a session joins once under way) to its first sample: the queue's wait
 * and, for a session that had no audio yet, the time to its first audio.
 * @param {QueueMember} m
 * @returns {object}
 */
function memberFigures(m) {
  const slot = m.slot;
  const clock = m.clock;
  const end = m.tracking ? m.player.scheduler.nextTime : m.lastEnd;
  const sec = (/** @type {number | null} */ t) => (t === null ? null : round(t));
  const wall = (/** @type {number | null} */ t) => (t === null || !clock ? null : clock.wallMs(t));
  const perf = (/** @type {number} */ t) => (t ? round(performance.timeOrigin + t, 3) : null);
  const firstMs = wall(m.firstStart);
  const joinedMs = perf(slot.joinedAt);
  const cut = m.cutInfo;
  return {
    id: m.id,
    policy: m.policy(),
    order: slot.order || m.order(),
    state: slot.where,
    reason: slot.reason,
    position: slot.position,
    queued: m.wasQueued,
    after: slot.after,
    joined_ms: joinedMs,
    turn_ms: perf(slot.turnAt),
    wait_ms: firstMs !== null && joinedMs !== null ? round(firstMs - joinedMs, 3) : null,
    clock: clock ? clock.id : 0,
    first_start: sec(m.firstStart),
    first_start_ms: firstMs,
    last_end: sec(end),
    last_end_ms: wall(end),
    cut_at: cut ? round(cut.at) : null,
    cut_ms: cut ? wall(cut.at) : null,
    planned_end: cut ? round(cut.planned) : null,
    cut_by: cut ? cut.by : 0,
    rewinds: m.rewinds,
  };
}
