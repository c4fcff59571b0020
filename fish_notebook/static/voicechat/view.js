// A view: one rendering of the voice chat's panel. It draws the microphone's state, the
// level, the loop's state, the error and the turns, and forwards clicks; the microphone
// itself lives in the per-model Microphone, so a view can come and go while it listens.

/** The model traits a view draws (a change redraws it). */
const VIEW_TRAITS = ["listen", "mic", "mode", "state", "error", "turns", "vocab"];
/** The meter spans this many dB below full scale. */
const METER_FLOOR_DB = -60;

/** What the microphone button says, by the microphone's state. */
const MIC_BUTTON = {
  off: "Start microphone",
  starting: "Starting…",
  on: "Stop microphone",
  error: "Try the microphone again",
};

class ChatView {
  /** @param {Microphone} mic @param {HTMLElement} el */
  constructor(mic, el) {
    this.mic = mic;
    this.model = mic.model;
    this.root = document.createElement("div");
    this.root.className = "fishnb-chat";
    this.root.innerHTML = `
      <div class="fishnb-chat-bar">
        <button class="fishnb-chat-mic" data-action="mic" type="button"></button>
        <select class="fishnb-chat-mode" data-action="mode" title="How your turn is taken"></select>
        <button class="fishnb-chat-talk" data-action="talk" type="button">Hold to talk</button>
        <span class="fishnb-chat-meter" title="Microphone level"><span class="fishnb-chat-level"></span></span>
        <span class="fishnb-chat-state"></span>
      </div>
      <div class="fishnb-chat-error" role="alert" hidden></div>
      <ol class="fishnb-chat-turns" hidden></ol>`;
    const q = (/** @type {string} */ sel) => /** @type {HTMLElement} */ (this.root.querySelector(sel));
    this.micButton = /** @type {HTMLButtonElement} */ (q(".fishnb-chat-mic"));
    this.modeSelect = /** @type {HTMLSelectElement} */ (q(".fishnb-chat-mode"));
    this.talkButton = /** @type {HTMLButtonElement} */ (q(".fishnb-chat-talk"));
    this.levelEl = q(".fishnb-chat-level");
    this.stateEl = q(".fishnb-chat-state");
    this.errorEl = q(".fishnb-chat-error");
    this.turns = new TurnsView(q(".fishnb-chat-turns"));
    this.modesKey = "";
    el.appendChild(this.root);

    this.frame = 0;
    this.levelFrame = 0;
    this.requestDraw = this.requestDraw.bind(this);
    for (const name of VIEW_TRAITS) this.model.on(`change:${name}`, this.requestDraw);
    this.listen();
    if (mic.out.published) this.root.dataset.stats = mic.out.published;
    mic.addView(this);
    this.requestDraw();
  }

  /** The controls' events. */
  listen() {
    const model = this.model;
    this.micButton.addEventListener("click", () => {
      model.set("listen", !model.get("listen"));
      model.save_changes();
    });
    this.modeSelect.addEventListener("change", () => {
      model.set("mode", this.modeSelect.value);
      model.save_changes();
    });
    const talk = this.talkButton;
    const down = (/** @type {Event} */ e) => {
      e.preventDefault();
      this.mic.talk(true);
    };
    const up = () => this.mic.talk(false);
    talk.addEventListener("pointerdown", down);
    for (const name of ["pointerup", "pointercancel", "pointerleave"]) talk.addEventListener(name, up);
    talk.addEventListener("keydown", (e) => {
      if ((e.key === " " || e.key === "Enter") && !e.repeat) down(e);
    });
    talk.addEventListener("keyup", (e) => {
      if (e.key === " " || e.key === "Enter") up();
    });
  }

  requestDraw() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  requestLevel() {
    if (!this.levelFrame) this.levelFrame = requestAnimationFrame(() => this.drawLevel());
  }

  draw() {
    this.frame = 0;
    const model = this.model;
    const vocab = vocabOf(model);
    const status = /** @type {keyof typeof MIC_BUTTON} */ (model.get("mic") || "off");
    this.root.dataset.mic = status;
    this.micButton.textContent = MIC_BUTTON[status] || MIC_BUTTON.off;
    this.micButton.disabled = status === "starting";
    this.micButton.toggleAttribute("data-on", status === "on");

    const modesKey = JSON.stringify(vocab.modes);
    if (modesKey !== this.modesKey) {
      this.modesKey = modesKey;
      this.modeSelect.replaceChildren(
        ...Object.entries(vocab.modes).map(([value, label]) => new Option(label, value)),
      );
    }
    this.modeSelect.value = model.get("mode");
    const push = this.mic.pushToTalk;
    this.talkButton.hidden = !push;
    this.talkButton.disabled = status !== "on";
    this.talkButton.toggleAttribute("data-talking", this.mic.talking);

    const state = model.get("state") || "";
    const busy = state !== Object.keys(vocab.states)[0]; // past the first state: listening
    this.stateEl.textContent = status === "on" || busy ? vocab.states[state] || state : "";
    this.stateEl.dataset.state = state;

    const page = this.mic.pageError;
    const error = model.get("error") || (page ? `Microphone: ${page.name}: ${page.message}` : "");
    this.errorEl.textContent = error;
    this.errorEl.hidden = !error;
    this.turns.draw(model.get("turns") || []);
    this.drawLevel();
  }

  drawLevel() {
    this.levelFrame = 0;
    const { db } = this.mic.level;
    const on = !!this.mic.capture;
    const share = on ? Math.max(0, Math.min(1, 1 - db / METER_FLOOR_DB)) : 0;
    this.levelEl.style.width = `${Math.round(share * 100)}%`;
    this.levelEl.toggleAttribute("data-sending", on && this.mic.sending);
    this.root.dataset.level = String(on ? db : -100);
  }

  dispose() {
    if (this.frame) cancelAnimationFrame(this.frame);
    if (this.levelFrame) cancelAnimationFrame(this.levelFrame);
    for (const name of VIEW_TRAITS) this.model.off(`change:${name}`, this.requestDraw);
    this.mic.removeView(this);
    this.root.remove();
  }
}
