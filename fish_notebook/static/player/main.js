// anywidget's entry points. `initialize` runs once per model, before any view renders: the
// player (and its message handler) is made there, so no chunk is lost while views come and go.

/** @type {Map<string, Player>} one per widget model, by the model's player_id */
const players = new Map();

export default {
  /** @param {{ model: Model }} context */
  initialize({ model }) {
    const id = model.get("player_id") || "default";
    const old = players.get(id);
    if (old) old.dispose();
    const player = new Player(model);
    players.set(id, player);
    const voice = new VoiceAnswer(player); // the voice chat's fade and reports (voice.js)
    return () => {
      voice.dispose();
      player.dispose();
      if (players.get(id) === player) players.delete(id);
    };
  },

  /** @param {{ model: Model, el: HTMLElement }} context */
  render({ model, el }) {
    const player = players.get(model.get("player_id") || "default");
    if (!player) {
      el.textContent = "fish-notebook player: not initialized";
      return () => el.replaceChildren();
    }
    const view = new View(player, el);
    return () => view.dispose();
  },
};
