// The voice chat's side of a player (fish_notebook.voicechat): the answer it plays is cut at
// once when the user talks over it, and the kernel learns when its audio started and ended.
//   kernel -> page  {kind: "fade"}                      barge-in: fade out over FADE_S, then stop
//   page -> kernel  {kind: "stopped", playhead, fade_ms, took_ms}
//                                                       silent now; `playhead`: seconds of the
//                                                       answer's audio played (0 = its first sample)
//   page -> kernel  {kind: "first-sample", ahead_ms}    its first sample was scheduled, to start
//                                                       `ahead_ms` later (the jitter buffer)
//   page -> kernel  {kind: "ended"}                     it played to its end
// Every player sends the last two once; the Python Player ignores kinds it does not use.

/** Seconds over which a barged-in answer fades to silence: no click, and gone at once. */
/** How often the first sample and the end are looked for (a queued run starts on a timer). */
const VOICE_CHECK_MS = 50;

/** Watches one player for the voice chat, and fades it out when asked. */
class VoiceAnswer {
  /** @param {Player} player */
  constructor(player) {
    this.player = player;
    this.model = player.model;
    this.firstSent = false;
    this.endSent = false;
    this.stopped = false;
    this.onMessage = this.onMessage.bind(this);
    // Registered after the player's receiver: a chunk is scheduled before this looks at it.
    this.model.on("msg:custom", this.onMessage);
    /** @type {ReturnType<typeof setInterval> | null} */
    this.timer = setInterval(() => this.check(), VOICE_CHECK_MS);
  }

  /** @param {any} msg */
  onMessage(msg) {
    if (msg && msg.kind === "fade") this.fade();
    else this.check();
  }

  /** Report the first scheduled sample and the end of playback, once each. */
  check() {
    const player = this.player;
    const stats = player.stats.data;
    if (!this.firstSent && stats.scheduled > 0) {
      this.firstSent = true;
      const ahead = stats.starts.length ? (stats.starts[0] - player.out.now()) * 1000 : 0;
      this.model.send({ kind: "first-sample", ahead_ms: round(Math.max(0, ahead), 2) });
    }
    const over = player.final && !player.scheduler.isPlaying();
    if (this.firstSent && !this.endSent && !this.stopped && over) {
      this.endSent = true;
      this.model.send({ kind: "ended" });
    }
    const nothingComing = player.final && player.recording.contiguous === 0;
    if (this.endSent || this.stopped || nothingComing) this.quiet();
  }

  /** Fade out now and stop (chunks still to come are not played); tell the kernel where. */
  fade() {
    const started = performance.now();
    const player = this.player;
    const sched = /** @type {any} */ (player.scheduler);
    const out = /** @type {any} */ (player.out);
    const at = out.now();
    const playhead = sched.scheduled.length ? sched.position(at) : sched.lastPosition;
    if (typeof sched.cut === "function") {
      sched.cut(FADE_S); // the page-wide queue's scheduler fades on its own gain
      if (player.member && typeof player.member.leave === "function") player.member.leave("stopped");
    } else {
      this.rampDown(at, playhead);
    }
    this.stopped = true;
    this.quiet();
    this.model.send({
      kind: "stopped",
      playhead: round(playhead, 4),
      fade_ms: FADE_S * 1000,
      took_ms: round(performance.now() - started, 2),
    });
    player.changed();
  }

  /**
   * Ramp the player's gain to 0 over FADE_S from `at`, stop scheduling at once, and stop the
   * nodes once silent (then full gain again, for a replay). The playhead stays at `playhead`.
   * @param {number} at the audio clock now
   * @param {number} playhead seconds of the recording playing at `at`
   */
  rampDown(at, playhead) {
    const sched = this.player.scheduler;
    const out = this.player.out;
    sched.stopped = true;
    sched.following = false;
    const ctx = out.ctx;
    const gain = out.gain ? out.gain.gain : null;
    if (!ctx || !gain || !sched.scheduled.length) {
      sched.stop();
      return;
    }
    gain.cancelScheduledValues(at);
    gain.setValueAtTime(gain.value, at);
    gain.linearRampToValueAtTime(0, at + FADE_S);
    setTimeout(() => {
      sched.stop();
      sched.lastPosition = playhead; // not where the silent tail of the fade got to
      gain.cancelScheduledValues(0);
      gain.setValueAtTime(1, ctx.currentTime);
    }, FADE_S * 1000 + 20);
  }

  quiet() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  dispose() {
    this.quiet();
    this.model.off("msg:custom", this.onMessage);
  }
}
