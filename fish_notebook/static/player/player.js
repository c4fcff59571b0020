// The player of one widget model: ties receiving, scheduling, stats and views together, and
// does what the buttons ask. Playback does not depend on any view: it starts when the first
// chunk arrives (once a view was rendered), survives a view being re-rendered, and serves
// every view of the same model.

/** A model with no view left stops its audio after this long (a re-render takes less). */
const ORPHAN_MS = 400;

/** Per-model state: the recording, the playback and the stats. */
class Player {
  /** @param {Model} model */
  constructor(model) {
    this.model = model;
    this.vocab = new Vocab(model);
    this.stats = new Stats(model);
    this.recording = new Recording();
    this.out = new AudioOut(() => {
      this.scheduler.settleLatencies();
      this.changed();
    });
    this.scheduler = new Scheduler(this.recording, this.out, this.stats, {
      rate: () => this.rate,
      isFinal: () => this.final,
    });
    /** @type {Set<View>} */
    this.views = new Set();
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.orphanTimer = null;
    this.timer = setInterval(() => this.tick(), STATS_MS);
    this.onStatus = this.onStatus.bind(this);
    model.on("change:status", this.onStatus);
    this.receiver = new Receiver(model, this.recording, this.stats, {
      chunks: (follow) => {
        if (follow) this.scheduler.follow();
        this.scheduler.pump(true);
        this.changed();
      },
      words: () => this.changed(),
      isFinal: () => this.final,
    });
    // Covers chunks sent before the handler existed, and pages that were reloaded.
    this.receiver.requestRecording();
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
    const sched = this.scheduler;
    const playing = sched.isPlaying();
    const allowed = playing && !sched.paused;
    return {
      status,
      final: this.vocab.isFinal(status),
      active: this.vocab.isActive(status),
      hasAudio: this.recording.contiguous > 0,
      playing,
      sounding: allowed && this.out.state === "running",
      blocked: allowed && this.out.state === "suspended",
    };
  }

  onStatus() {
    // Start the audio clock when audio is expected (a context takes tens of ms to run).
    if (!this.final) this.scheduler.context();
    this.changed();
  }

  // -- what the buttons and clicks do ------------------------------------------------------

  /** @param {number} seconds */
  playFrom(seconds) {
    this.scheduler.playFrom(seconds);
    this.changed();
  }

  togglePause() {
    this.scheduler.togglePause();
    this.changed();
  }

  flush() {
    this.model.send({ kind: "flush" });
  }

  stop() {
    this.model.send({ kind: "stop" });
    this.scheduler.stop();
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
    if (this.orphanTimer) clearTimeout(this.orphanTimer);
    this.orphanTimer = null;
    if (!this.scheduler.audible) {
      // A model whose widget was never displayed stays silent; its first view lets it play.
      this.scheduler.audible = true;
      if (!this.final) this.scheduler.context();
      this.scheduler.pump(true); // chunks that arrived before the first view: their wait counts
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
    this.scheduler.halt();
    this.out.close();
    this.changed();
  }

  /** Every STATS_MS: let an idle audio thread sleep, and publish the stats. */
  tick() {
    const out = this.out;
    const sched = this.scheduler;
    if (out.state === "running" && !sched.isPlaying() && this.final) out.suspend();
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
    const text = this.stats.publish();
    if (text) for (const v of this.views) v.root.dataset.stats = text;
  }

  dispose() {
    clearInterval(this.timer);
    if (this.orphanTimer) clearTimeout(this.orphanTimer);
    this.receiver.dispose();
    this.model.off("change:status", this.onStatus);
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
