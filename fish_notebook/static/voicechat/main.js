// anywidget's entry points. `initialize` runs once per model, before any view renders: the
// microphone lives there, so a re-rendered output does not drop it.

/** @type {Map<string, Microphone>} one per widget model, by the model's panel_id */
const microphones = new Map();

export default {
  /** @param {{ model: Model }} context */
  initialize({ model }) {
    const id = model.get("panel_id") || "default";
    const old = microphones.get(id);
    if (old) old.dispose();
    const mic = new Microphone(model);
    microphones.set(id, mic);
    return () => {
      mic.dispose();
      if (microphones.get(id) === mic) microphones.delete(id);
    };
  },

  /** @param {{ model: Model, el: HTMLElement }} context */
  render({ model, el }) {
    const mic = microphones.get(model.get("panel_id") || "default");
    if (!mic) {
      el.textContent = "fish-notebook voice chat: not initialized";
      return () => el.replaceChildren();
    }
    const view = new ChatView(mic, el);
    return () => view.dispose();
  },
};
