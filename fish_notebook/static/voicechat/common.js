// fish-notebook voice chat: the browser half of fish_notebook.voicechat.MicrophonePanel.
//
// Plain JavaScript for anywidget, with no build step: voicechat.py joins the files of this
// folder, in the order it lists them, into the one ES module anywidget loads, after those of
// ../shared/ (what the player's module shares: a model's views, its published figures). They
// share one scope; only the last file (main.js) has `export default`. Each file does one job:
//   common.js    what every job shares: the model's type, rounding, the vocabularies
//   worklet.js   the AudioWorklet that turns the microphone into 16 kHz 16-bit mono frames
//   capture.js   getUserMedia and the audio graph; browser errors named for the kernel
//   sending.js   frames to the kernel in order, batched while it lags
//   mic.js       the per-model microphone: capture -> frames sent, modes, push-to-talk, level
//   turns.js     the conversation drawn as turns, with their metrics
//   view.js      one rendering: the bar (buttons, meter, state), the error, the turns
//   main.js      anywidget's entry points
//
// Messages to the kernel (the traits carry everything else):
//   {kind: "page"}                              this page is here (answers wait for its playback)
//   {kind: "mic", seq, frames}  + 1 buffer      `frames` frames (from number `seq` on) of 16-bit
//                                               LE mono PCM at `sample_rate`, one after another
//   {kind: "mic-started", rate, label, settings}
//   {kind: "mic-error", name, message}          capture failed: the browser's error name
//   {kind: "mic-stopped"}                       the user (or the kernel) turned it off
//   {kind: "talk", down}                        push-to-talk pressed / released

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
const round = (x, digits = 4) => Number(x.toFixed(digits));

/** A level in dBFS from an RMS of samples in -1..1 (-100 for silence). */
const dbfs = (/** @type {number} */ rms) => (rms > 1e-5 ? round(20 * Math.log10(rms), 1) : -100);

/**
 * What Python declares once (the `vocab` trait): the loop's states with their labels, the
 * modes with theirs, and the microphone's states. No name of them is written in this code
 * except the microphone's own (this file reports them).
 * @param {Model} model
 * @returns {{ states: Record<string, string>, modes: Record<string, string>, push: string }}
 */
function vocabOf(model) {
  const vocab = model.get("vocab") || {};
  return {
    states: vocab.states || {},
    modes: vocab.modes || {},
    push: vocab.push_to_talk || "",
  };
}
