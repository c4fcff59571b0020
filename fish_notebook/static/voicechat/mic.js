// The microphone of one widget model: starts and stops the capture as the `listen` trait says
// (the button, or chat.start() in Python), sends its frames to the kernel through its
// FrameSender (sending.js; always in hands-free mode, while the talk button is held in
// push-to-talk), keeps the level for the meter, and reports failures at once, in the widget
// and to the kernel.

/** Frames still sent after the talk button is released: the end of the last word. */
const TALK_TAIL_MS = 150;

/** Per-model microphone state; views draw it and forward clicks. */
class Microphone {
  /** @param {Model} model */
  constructor(model) {
    this.model = model;
    /** @type {Capture | null} */
    this.capture = null;
    /** @type {CaptureError | null} the browser's error, shown until the kernel's advice comes */
    this.pageError = null;
    this.talking = false;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.tailTimer = null;
    this.level = { db: -100, peak: -100 };
    /** @type {Views<ChatView>} with none left for ORPHAN_MS, the microphone goes off */
    this.views = new Views(() => this.apply());
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
    this.sender = new FrameSender(model, this.stats);
    this.out = new StatsOut(model);
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
    this.sender.flush(true); // what was heard before the button goes to the kernel, then the stop
    this.level = { db: -100, peak: -100 };
    this.setStatus("off");
    this.sender.sendAfterFrames({ kind: "mic-stopped" });
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
    if (this.sending) this.sender.push(f.pcm);
    for (const v of this.views) v.requestLevel();
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
        this.sender.sendAfterFrames({ kind: "talk", down: false });
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
    if (was) this.sender.sendAfterFrames({ kind: "talk", down: false });
  }

  // -- views and figures -------------------------------------------------------------------

  changed() {
    for (const v of this.views) v.requestDraw();
  }

  /** @param {ChatView} view */
  addView(view) {
    this.views.add(view);
    this.apply();
  }

  /** @param {ChatView} view */
  removeView(view) {
    this.views.delete(view); // the last one gone: off after ORPHAN_MS, unless one comes back
  }

  /** Every STATS_MS: the figures to the DOM, and to Python at most every SYNC_MS. */
  publish() {
    const sender = this.sender;
    const state = { seq: sender.seq, talking: this.talking, in_flight: sender.inFlight.size };
    const text = this.out.send({ ...this.stats, ...state });
    if (text) for (const v of this.views) v.root.dataset.stats = text;
  }

  dispose() {
    clearInterval(this.timer);
    this.views.cancel();
    this.model.off("change:listen", this.onListen);
    if (this.capture) this.capture.stop();
    this.capture = null;
    if (this.tailTimer) clearTimeout(this.tailTimer);
    this.sender.dispose();
  }
}
