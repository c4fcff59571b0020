// The microphone of one widget model: starts and stops the capture as the `listen` trait says
// (the button, or chat.start() in Python), sends its frames to the kernel (always in
// hands-free mode; while the talk button is held in push-to-talk), keeps the level for the
// meter, and reports failures at once, in the widget and to the kernel.

/** A model with no view left stops its microphone after this long (a re-render takes less). */
const ORPHAN_MS = 400;
/** Frames still sent after the talk button is released: the end of the last word. */
const TALK_TAIL_MS = 150;
/**
 * Frames waiting for the kernel go in one message once fewer than this many messages are
 * unanswered. Each comm message costs the kernel two status messages back to the page; at 50
 * messages a second a loaded machine's frontend fell seconds behind (measured: execute replies
 * 10-60 s late while the frames themselves arrived in time), so the page sends a frame as it
 * comes only while the kernel keeps up, and batches them when it does not.
 */
const MAX_IN_FLIGHT = 2;
/** A message whose "idle" status has not come back after this long counts as answered. */
const ACK_TIMEOUT_MS = 1000;
/** At most this many frames go in one message (half a second of 20 ms frames). */
const MAX_BATCH = 25;
/** How often the figures are published to the DOM (data-stats)... */
const STATS_MS = 250;
/** ...and to Python (a trait update goes through the kernel). */
const SYNC_MS = 1000;

/** Per-model microphone state; views draw it and forward clicks. */
class Microphone {
  /** @param {Model} model */
  constructor(model) {
    this.model = model;
    /** @type {Capture | null} */
    this.capture = null;
    this.seq = 0;
    /** @type {ArrayBuffer[]} frames not sent yet */
    this.pending = [];
    /** @type {Map<number, ReturnType<typeof setTimeout>>} messages unanswered, by first seq */
    this.inFlight = new Map();
    /** @type {Array<() => void>} what goes once every pending frame was sent */
    this.afterFrames = [];
    /** @type {CaptureError | null} the browser's error, shown until the kernel's advice comes */
    this.pageError = null;
    this.talking = false;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.tailTimer = null;
    this.level = { db: -100, peak: -100 };
    /** @type {Set<ChatView>} */
    this.views = new Set();
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.orphanTimer = null;
    this.stats = {
      status: "off",
      frames_sent: 0,
      bytes_sent: 0,
      messages_sent: 0,
      largest_batch: 0,
      capture_rate: 0,
      label: "",
      settings: /** @type {Record<string, any>} */ ({}),
      level_db: -100,
      loudest_db: -100,
      starts: 0,
      talks: 0,
      error: /** @type {CaptureError | null} */ (null),
    };
    this.published = "";
    this.synced = "";
    this.syncedAt = 0;
    this.onListen = () => this.apply();
    model.on("change:listen", this.onListen);
    this.timer = setInterval(() => this.publish(), STATS_MS);
    model.send({ kind: "page" });
  }

  /** @returns {boolean} frames go only while the talk button is held */
  get pushToTalk() {
    return this.model.get("mode") === vocabOf(this.model).push;
  }

  /** @returns {boolean} frames go to the kernel now */
  get sending() {
    return !this.pushToTalk || this.talking || this.tailTimer !== null;
  }

  /** Start or stop the capture as the `listen` trait and the views say. */
  apply() {
    const want = !!this.model.get("listen") && this.views.size > 0;
    if (want && !this.capture) this.start();
    else if (!want && this.capture) this.stop();
  }

  async start() {
    const rate = this.model.get("sample_rate") || 16000;
    const frame = Math.round((rate * (this.model.get("frame_ms") || 20)) / 1000);
    const capture = new Capture(
      { rate, frame },
      {
        frame: (f) => this.onFrame(f, capture),
        ended: () => this.fail({ name: "Ended", message: "the microphone's track ended" }),
      },
    );
    this.capture = capture;
    this.pageError = null;
    this.stats.error = null;
    this.setStatus("starting");
    try {
      const info = await capture.start();
      if (this.capture !== capture) return; // stopped meanwhile
      this.stats.capture_rate = info.rate;
      this.stats.label = info.label;
      this.stats.settings = info.settings;
      this.stats.starts += 1;
      this.setStatus("on");
      this.model.send({ kind: "mic-started", ...info });
    } catch (error) {
      if (this.capture === capture) this.fail(/** @type {CaptureError} */ (error));
    }
  }

  /** @param {CaptureError} error */
  fail(error) {
    if (this.capture) this.capture.stop();
    this.capture = null;
    this.endTalk();
    this.pageError = error;
    this.stats.error = error;
    this.setStatus("error");
    this.model.set("listen", false);
    this.model.save_changes();
    this.model.send({ kind: "mic-error", name: error.name, message: error.message });
  }

  stop() {
    if (this.capture) this.capture.stop();
    this.capture = null;
    this.endTalk();
    this.flush(true); // what was heard before the button goes to the kernel, then the stop
    this.level = { db: -100, peak: -100 };
    this.setStatus("off");
    this.sendAfterFrames({ kind: "mic-stopped" });
  }

  /** @param {string} status */
  setStatus(status) {
    this.stats.status = status;
    this.model.set("mic", status);
    this.model.save_changes();
    this.changed();
  }

  /** @param {Frame} f @param {Capture} capture */
  onFrame(f, capture) {
    if (capture !== this.capture) return;
    const db = dbfs(f.rms);
    this.level = { db, peak: dbfs(f.peak) };
    this.stats.level_db = db;
    this.stats.loudest_db = Math.max(this.stats.loudest_db, db);
    if (this.sending) {
      this.pending.push(f.pcm);
      this.flush();
    }
    for (const v of this.views) v.requestLevel();
  }

  /**
   * Send the pending frames, as many messages as the kernel may have unanswered (all of them
   * when `force`), then what waited for them.
   * @param {boolean} force
   */
  flush(force = false) {
    while (this.pending.length && (force || this.inFlight.size < MAX_IN_FLIGHT)) {
      this.sendBatch(this.pending.splice(0, MAX_BATCH));
    }
    if (!this.pending.length) {
      const after = this.afterFrames;
      this.afterFrames = [];
      for (const action of after) action();
    }
  }

  /** @param {ArrayBuffer[]} frames sent as one message: {kind: "mic", seq, frames} + PCM */
  sendBatch(frames) {
    const bytes = frames.reduce((n, f) => n + f.byteLength, 0);
    const pcm = new Uint8Array(bytes);
    let at = 0;
    for (const f of frames) {
      pcm.set(new Uint8Array(f), at);
      at += f.byteLength;
    }
    const seq = this.seq;
    const answered = () => {
      const timer = this.inFlight.get(seq);
      if (timer === undefined) return;
      clearTimeout(timer);
      this.inFlight.delete(seq);
      this.flush();
    };
    const callbacks = {
      iopub: { status: (/** @type {any} */ msg) => msg.content.execution_state === "idle" && answered() },
    };
    this.inFlight.set(seq, setTimeout(answered, ACK_TIMEOUT_MS));
    this.model.send({ kind: "mic", seq, frames: frames.length }, callbacks, [pcm.buffer]);
    this.seq += frames.length;
    const s = this.stats;
    s.frames_sent += frames.length;
    s.bytes_sent += bytes;
    s.messages_sent += 1;
    s.largest_batch = Math.max(s.largest_batch, frames.length);
  }

  /** Send `content` once every frame before it was sent (messages keep their order). */
  sendAfterFrames(/** @type {any} */ content) {
    this.afterFrames.push(() => this.model.send(content));
    this.flush();
  }

  /** Push-to-talk: the button went down or up. @param {boolean} down */
  talk(down) {
    if (!this.pushToTalk || !this.capture) return;
    if (down && !this.talking) {
      if (this.tailTimer) clearTimeout(this.tailTimer);
      this.tailTimer = null;
      this.talking = true;
      this.stats.talks += 1;
      this.model.send({ kind: "talk", down: true });
    } else if (!down && this.talking) {
      this.talking = false;
      this.tailTimer = setTimeout(() => {
        this.tailTimer = null;
        this.sendAfterFrames({ kind: "talk", down: false });
      }, TALK_TAIL_MS);
    }
    this.changed();
  }

  /** A talk in progress ends now (the microphone went off). */
  endTalk() {
    const was = this.talking || this.tailTimer !== null;
    if (this.tailTimer) clearTimeout(this.tailTimer);
    this.tailTimer = null;
    this.talking = false;
    if (was) this.sendAfterFrames({ kind: "talk", down: false });
  }

  // -- views and figures -------------------------------------------------------------------

  changed() {
    for (const v of this.views) v.requestDraw();
  }

  /** @param {ChatView} view */
  addView(view) {
    this.views.add(view);
    if (this.orphanTimer) clearTimeout(this.orphanTimer);
    this.orphanTimer = null;
    this.apply();
  }

  /** @param {ChatView} view */
  removeView(view) {
    this.views.delete(view);
    if (this.views.size === 0 && !this.orphanTimer) {
      // No view left (output cleared, cell deleted): the microphone goes off, unless a view
      // comes back soon (a re-rendered output removes its view and adds a new one).
      this.orphanTimer = setTimeout(() => {
        this.orphanTimer = null;
        this.apply();
      }, ORPHAN_MS);
    }
  }

  /** Every STATS_MS: the figures to the DOM, and to Python at most every SYNC_MS. */
  publish() {
    const state = { seq: this.seq, talking: this.talking, in_flight: this.inFlight.size };
    const text = JSON.stringify({ ...this.stats, ...state });
    if (text !== this.published) {
      this.published = text;
      for (const v of this.views) v.root.dataset.stats = text;
    }
    const now = performance.now();
    if (text !== this.synced && now - this.syncedAt >= SYNC_MS) {
      this.synced = text;
      this.syncedAt = now;
      this.model.set("stats", JSON.parse(text));
      this.model.save_changes();
    }
  }

  dispose() {
    clearInterval(this.timer);
    if (this.orphanTimer) clearTimeout(this.orphanTimer);
    this.model.off("change:listen", this.onListen);
    if (this.capture) this.capture.stop();
    this.capture = null;
    if (this.tailTimer) clearTimeout(this.tailTimer);
    for (const timer of this.inFlight.values()) clearTimeout(timer);
    this.inFlight.clear();
  }
}
