// fish-notebook live player: the browser half of fish_notebook.widget.Player.
//
// Plain JavaScript for anywidget, with no build step. widget.py joins the files of this folder,
// in the order it lists them, into the one ES module that anywidget loads, after those of
// ../shared/ (what the voice chat's module shares: a model's views, its published figures).
// They share one scope, so there are no imports, and only the last file (main.js) has
// `export default`.
// Each file does one job:
//   common.js      what every job shares: the model's type, rounding, the vocabularies
//   page.js        what every player of the page shares: one AudioContext per rate, the queue
//   queue.js       one voice at a time in the page: the queue's rules and each player's place
//   receiving.js   comm messages in, kept as one recording per model (by sequence number)
//   scheduling.js  Web Audio: jitter buffer, gapless scheduling, underruns, the playhead
//   stats.js       what the page did, published to the DOM and to Python
//   drawing.js     the waveform, the clock and the metrics line
//   transcript.js  the text with its flush marks and the word being heard
//   controls.js    the buttons, declared as one table
//   view.js        one rendering of a player
//   player.js      the per-model player that ties the jobs together
//   voice.js       the voice chat's answer: barge-in fade, first sample, end of playback
//   main.js        anywidget's entry points

/** Seconds over which an interrupted answer fades out (the queue's interrupt, a barge-in). */
const FADE_S = 0.015;

/**
 * @typedef {{
 *   get: (name: string) => any,
 *   set: (name: string, value: any) => void,
 *   save_changes: () => void,
 *   send: (content: any, callbacks?: any, buffers?: ArrayBuffer[]) => void,
 *   on: (name: string, cb: Function) => void,
 *   off: (name?: string | null, cb?: Function | null) => void,
 * }} Model
 */

/** @param {number} x @param {number} digits */
const round = (x, digits = 6) => Number(x.toFixed(digits));

/**
 * The vocabularies Python declares once (the widget's `vocab` trait, from
 * session.SESSION_STATES): `states` lists every status in order, the first being the player's
 * own before any session; `final_states` are those after which no more audio comes. Read on
 * every use, so a changed trait applies at once. No state name is written in this code.
 */
class Vocab {
  /** @param {Model} model */
  constructor(model) {
    this.model = model;
  }

  /** @returns {{ states: string[], finalStates: string[] }} */
  get lists() {
    const vocab = this.model.get("vocab") || {};
    return {
      states: Array.isArray(vocab.states) ? vocab.states : [],
      finalStates: Array.isArray(vocab.final_states) ? vocab.final_states : [],
    };
  }

  /** @param {string} status @returns {boolean} whether no more audio comes */
  isFinal(status) {
    return this.lists.finalStates.includes(status);
  }

  /** @param {string} status @returns {boolean} whether a session is under way (past the first state, not final) */
  isActive(status) {
    const { states, finalStates } = this.lists;
    return states.indexOf(status) > 0 && !finalStates.includes(status);
  }
}
