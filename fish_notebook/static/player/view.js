// A view: one rendering of a player in an output. It only draws and forwards clicks; the
// audio lives in the per-model Player, so a view can come and go while it plays.

/** The model traits a view draws (a change redraws it). */
const VIEW_TRAITS = ["status", "error", "transcript", "metrics", "vocab"];

/** One rendering of a player. */
class View {
  /**
   * @param {Player} player
   * @param {HTMLElement} el
   */
  constructor(player, el) {
    this.player = player;
    this.model = player.model;
    this.root = document.createElement("div");
    this.root.className = "fishnb-player";
    this.root.innerHTML = `
      <div class="fishnb-bar">
        <span class="fishnb-state"></span>
        <span class="fishnb-time"></span>
        <span class="fishnb-grow"></span>
      </div>
      <canvas class="fishnb-wave" title="Click to play from here"></canvas>
      <div class="fishnb-text"></div>
      <div class="fishnb-error"></div>
      <div class="fishnb-metrics"></div>`;
    const q = (/** @type {string} */ sel) => /** @type {HTMLElement} */ (this.root.querySelector(sel));
    this.stateEl = q(".fishnb-state");
    this.timeEl = q(".fishnb-time");
    this.metricsEl = q(".fishnb-metrics");
    this.errorEl = q(".fishnb-error");
    this.controls = new Controls(BUTTONS, player);
    const bar = q(".fishnb-bar");
    bar.prepend(...this.controls.lead);
    bar.append(...this.controls.tail);
    const canvas = /** @type {HTMLCanvasElement} */ (q("canvas"));
    this.waveform = new Waveform(canvas, this.root, player.recording);
    this.transcript = new Transcript(q(".fishnb-text"), player.recording);
    el.appendChild(this.root);

    this.frame = 0;
    this.requestDraw = this.requestDraw.bind(this);
    this.onClick = this.onClick.bind(this);
    this.root.addEventListener("click", this.onClick);
    this.onTraits = () => {
      this.transcript.key = "";
      this.requestDraw();
    };
    for (const name of VIEW_TRAITS) this.model.on(`change:${name}`, this.onTraits);
    // What the transcript's highlight follows, read now (for tests and tools: the audio
    // clock, and the position in the recording it maps to through the scheduled chunks).
    // The text element's data-clock is the reading its highlight was drawn with.
    /** @type {any} */ (this.root).fishnbClock = () => {
      const at = player.out.now();
      return { ctx_time: at, ctx_state: player.out.state, position_s: player.scheduler.position(at) };
    };
    this.resize = new ResizeObserver(() => this.requestDraw());
    this.resize.observe(canvas);
    if (player.stats.published) this.root.dataset.stats = player.stats.published;
    player.addView(this);
    this.requestDraw();
  }

  /** @param {MouseEvent} event */
  onClick(event) {
    const target = /** @type {HTMLElement} */ (event.target);
    const player = this.player;
    if (target === this.waveform.canvas) {
      const growing = !player.state().final;
      player.playFrom(this.waveform.secondsAt(event.clientX, player.seconds, growing));
      return;
    }
    const word = this.transcript.wordAt(target);
    if (word) {
      player.playFrom(word[1]);
      return;
    }
    this.controls.click(target);
  }

  requestDraw() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = 0;
    const player = this.player;
    const state = player.state();
    // One reading of the audio clock for everything drawn, published with the highlight.
    const clockAt = player.out.now();
    const position = player.scheduler.position(clockAt);
    this.transcript.el.dataset.clock = String(clockAt);
    const audio = player.seconds;

    // Waiting for its turn in the page's queue shows "queued" instead of the session's state.
    const shown = state.queued ? "queued" : state.status;
    this.stateEl.textContent = shown;
    this.stateEl.dataset.state = shown;
    this.stateEl.toggleAttribute("data-active", state.active);
    this.controls.update(state);
    this.timeEl.textContent = `${clock(position)} / ${clock(audio)}`;
    const page = { chunks: player.recording.contiguous, rate: player.rate, underruns: player.stats.data.underruns };
    this.metricsEl.textContent = metricsLine(this.model.get("metrics") || {}, page);
    const error = this.model.get("error") || "";
    this.errorEl.textContent = error;
    this.errorEl.hidden = !error;
    this.root.classList.toggle("fishnb-blocked", state.blocked);

    const playhead = player.scheduler.scheduled.length > 0;
    this.waveform.draw({ position, audio, growing: !state.final, rate: player.rate, playhead });
    const pieces = /** @type {Array<string | null>} */ (this.model.get("transcript") || []);
    this.transcript.draw(pieces, position, { rate: player.rate, final: state.final });
    if (state.playing) this.requestDraw();
  }

  dispose() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.resize.disconnect();
    for (const name of VIEW_TRAITS) this.model.off(`change:${name}`, this.onTraits);
    this.root.removeEventListener("click", this.onClick);
    this.player.removeView(this);
    this.root.remove();
  }
}
