// Controls: the player's buttons, declared once in BUTTONS. A button is one entry there (and
// its test in tests/browser/test_player_buttons.py): the bar, its enabled states, its labels
// and its click all come from the entry.

/**
 * What a button can depend on, read once per drawing (see Player.state).
 * @typedef {{
 *   status: string,
 *   final: boolean,
 *   active: boolean,
 *   queued: boolean,
 *   hasAudio: boolean,
 *   playing: boolean,
 *   sounding: boolean,
 *   blocked: boolean,
 * }} PlayerState  `status`: one of the vocab's states; `final`: no more audio comes;
 *   `active`: a session is under way (it takes Flush and Stop); `queued`: it waits for its
 *   turn in the page's queue (Play plays it now); `hasAudio`: chunk 0 is here;
 *   `playing`: a run is in progress; `sounding`: and its audio comes out now; `blocked`: a run
 *   waits for the browser to allow audio (a click)
 *
 * @typedef {{
 *   action: string,
 *   label: string | ((state: PlayerState) => string),
 *   icon?: (state: PlayerState) => string,
 *   title: string,
 *   main?: boolean,
 *   enabledWhen: (state: PlayerState) => boolean,
 *   run: (player: Player) => void,
 * }} ButtonSpec  `action`: the button's data-action; `label`: what it says (its accessible
 *   name); `icon`: shown instead of the label, which then becomes its aria-label; `title`:
 *   its tooltip; `main`: the round button before the status (the others end the bar);
 *   `enabledWhen`: whether it can be clicked; `run`: what a click does
 */

/** @type {ButtonSpec[]} in the order they appear */
const BUTTONS = [
  {
    action: "play",
    label: (s) => (s.sounding ? "Pause" : "Play"),
    icon: (s) => (s.sounding ? "❚❚" : "▶"),
    title: "Play / Pause",
    main: true,
    enabledWhen: (s) => s.hasAudio,
    run: (player) => player.togglePause(),
  },
  {
    action: "replay",
    label: "Replay",
    title: "Play again from the start",
    enabledWhen: (s) => s.hasAudio,
    run: (player) => player.playFrom(0),
  },
  {
    action: "flush",
    label: "Flush",
    title: "Speak the buffered text now",
    enabledWhen: (s) => s.active,
    run: (player) => player.flush(),
  },
  {
    action: "stop",
    label: "Stop",
    title: "End the session",
    enabledWhen: (s) => s.active,
    run: (player) => player.stop(),
  },
  {
    action: "download",
    label: "WAV",
    title: "Save as WAV",
    enabledWhen: (s) => s.hasAudio,
    run: (player) => player.download(),
  },
];

/** The buttons of one view, made from a table of ButtonSpec. */
class Controls {
  /**
   * @param {ButtonSpec[]} table
   * @param {Player} player what the buttons act on
   */
  constructor(table, player) {
    this.player = player;
    /** @type {Array<{ spec: ButtonSpec, el: HTMLButtonElement }>} */
    this.buttons = table.map((spec) => {
      const el = document.createElement("button");
      el.type = "button";
      el.className = spec.main ? "fishnb-btn fishnb-main" : "fishnb-btn";
      el.dataset.action = spec.action;
      el.title = spec.title;
      el.disabled = true;
      return { spec, el };
    });
  }

  /** @returns {HTMLButtonElement[]} the main buttons, drawn before the status */
  get lead() {
    return this.buttons.filter((b) => b.spec.main).map((b) => b.el);
  }

  /** @returns {HTMLButtonElement[]} the other buttons, drawn at the end of the bar */
  get tail() {
    return this.buttons.filter((b) => !b.spec.main).map((b) => b.el);
  }

  /** @param {PlayerState} state */
  update(state) {
    for (const { spec, el } of this.buttons) {
      el.disabled = !spec.enabledWhen(state);
      const label = typeof spec.label === "function" ? spec.label(state) : spec.label;
      const text = spec.icon ? spec.icon(state) : label;
      if (el.textContent !== text) el.textContent = text;
      if (spec.icon && el.getAttribute("aria-label") !== label) el.setAttribute("aria-label", label);
    }
  }

  /**
   * Run the button a click landed on, if any and enabled.
   * @param {HTMLElement} target
   * @returns {boolean} whether a button of this view took the click
   */
  click(target) {
    const button = this.buttons.find(({ el }) => el.contains(target));
    if (!button) return false;
    if (!button.el.disabled) button.spec.run(this.player);
    return true;
  }
}
