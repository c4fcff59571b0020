// The player of one widget model: ties receiving, scheduling, the page's queue, stats and
// views together, and does what the buttons ask. Playback does not depend on any view: it
// starts when the first chunk arrives (once a view was rendered and its turn in the page's
// queue came), survives a view being re-rendered, and serves every view of the same model.

/** Per-model state: the recording, the playback and the stats. */
class Player {
  /** @param {Model} model */
  constructor(model) {
    this.model = model;
    this.vocab = new Vocab(model);
    this.stats = new Stats(model);
    this.recording = new Recording();
    this.out = new AudioOut({
      busy: () => this.scheduler.isPlaying() || !this.final,
      onStateChange: () => {
        this.scheduler.settleLatencies();
        this.changed();
      },
    });
    this.scheduler = new Scheduler(this.recording, this.out, this.stats, {
      rate: () => this.rate,
      isFinal: () => this.final,
    });
    this.member = new QueueMember(this);
    /** @type {Views<View>} with none left for ORPHAN_MS, it goes quiet */
    this.views = new Views(() => this.closeAudio());
    /** whether the pill showed "queued" at the last tick */
    this.wasQueued = false;
    this.timer = setInterval(() => this.tick(), STATS_MS);
    this.onStatus = this.onStatus.bind(this);
    model.on("change:status", this.onStatus);
    this.onPlayback = () => this.member.policyChanged();
    model.on("change:playback", this.onPlayback);
    this.receiver = new Receiver(model, this.recording, this.stats, {
      chunks: (follow) => {
        if (follow) {
          this.scheduler.follow();
          this.member.want();
        }
        this.scheduler.pump(true);
        this.member.update();
        this.changed();
      },
      words: () => this.changed(),
      isFinal: () => this.final,
    });
    // Covers chunks sent before the handler existed, and pages that were reloaded.
    this.receiver.requestRecording();
    this.member.want(); // a session already under way when the model loaded takes its place
  }

  /** @returns {number} Hz of the stream */
  get rate() {
    return this.model.get("sample_rate") || 44100;
  }

  /** @returns {string} the session's status, one of the vocab's states */
  get status() {
    return this.model.get("status") ?? "";
  }

  /** @returns {boolean} whether no more audio comes */
  get final() {
    return this.vocab.isFinal(this.status);
  }

  /** @returns {number} seconds recorded (without a hole) */
  get seconds() {
    return this.recording.samples / this.rate;
  }

  /** @returns {PlayerState} */
  state() {
    const status = this.status;
    const queued = this.member.queued();
    const playing = !queued && this.scheduler.isPlaying();
    const allowed = playing && !this.out.paused;
    return {
      status,
      final: this.vocab.isFinal(status),
      active: this.vocab.isActive(status),
      queued,
      hasAudio: this.recording.contiguous > 0,
      playing,
      sounding: allowed && this.out.state === "running",
      blocked: allowed && this.out.state === "suspended",
    };
  }

  onStatus() {
    // Start the audio clock when audio is expected (a context takes tens of ms to run).
    if (!this.final) this.scheduler.context();
    this.member.want(); // a session under way takes its place in the page's queue at once
    this.member.update();
    this.changed();
  }

  // -- what the buttons and clicks do ------------------------------------------------------

  /**
   * A click plays from `seconds` (a waiting player leaves the queue: it plays now).
   * @param {number} seconds
   */
  playFrom(seconds) {
    this.member.manual();
    this.scheduler.playFrom(seconds);
    this.changed();
  }

  /** Play, or pause the clock (every player on it waits), or go on. */
  togglePause() {
    const sched = this.scheduler;
    const ctx = this.out.ctx;
    if (this.member.queued() || !sched.isPlaying() || !ctx) {
      this.playFrom(0);
      return;
    }
    if (this.out.paused || ctx.state === "suspended") this.out.resume();
    else this.out.pause();
    this.changed();
  }

  flush() {
    this.model.send({ kind: "flush" });
  }

  stop() {
    // Where the listener was: the kernel keeps what was heard (session.heard).
    this.model.send({ kind: "stop", playhead: this.scheduler.position() });
    this.scheduler.stop();
    this.member.leave("stopped");
    this.changed();
  }

  download() {
    const url = URL.createObjectURL(wavBlob(this.recording.pcm(), this.rate));
    const a = document.createElement("a");
    a.href = url;
    a.download = "speech.wav";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // -- views and stats ---------------------------------------------------------------------

  changed() {
    for (const v of this.views) v.requestDraw();
  }

  /** @param {View} view */
  addView(view) {
    this.views.add(view);
    if (!this.scheduler.audible) {
      // A model never displayed, or with no view left, stays silent; a view lets it play.
      this.scheduler.audible = true;
      if (!this.final) this.scheduler.context();
    }
    this.member.want(); // a player skipped for want of a view takes its place again
    this.scheduler.pump(true); // chunks that arrived before the first view: their wait counts
    this.member.update();
    this.changed();
  }

  /** @param {View} view */
  removeView(view) {
    this.views.delete(view); // the last one gone: quiet after ORPHAN_MS, unless one comes back
  }

  /** No view left: silent until one is shown again (nothing on the page could stop it). */
  closeAudio() {
    this.member.leave("orphaned");
    this.scheduler.halt();
    this.scheduler.audible = false;
    this.out.close();
    this.changed();
  }

  /** Every STATS_MS: the queue's bounds, let an idle audio thread sleep, publish the stats. */
  tick() {
    const out = this.out;
    const sched = this.scheduler;
    this.member.tick();
    const queued = this.member.queued();
    if (queued !== this.wasQueued) this.changed(); // its first sample played: the pill changes
    this.wasQueued = queued;
    out.sleep();
    if (sched.settleLatencies()) this.changed();
    const s = this.stats.data;
    s.ctx_state = out.state;
    s.ctx_time = out.ctx ? round(out.ctx.currentTime) : 0;
    s.samples = this.recording.samples;
    s.rate = this.rate;
    s.audio_s = round(this.seconds, 4);
    s.position_s = round(sched.position(), 4);
    s.playing = sched.isPlaying();
    s.views = this.views.size;
    s.status = this.status;
    s.chunk_count = this.model.get("chunk_count") || 0;
    s.queue = this.member.stats();
    const text = this.stats.publish();
    if (text) for (const v of this.views) v.root.dataset.stats = text;
  }

  dispose() {
    clearInterval(this.timer);
    this.views.cancel();
    this.receiver.dispose();
    this.model.off("change:status", this.onStatus);
    this.model.off("change:playback", this.onPlayback);
    this.member.dispose();
    this.closeAudio();
  }
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
