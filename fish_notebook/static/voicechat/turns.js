// The conversation as turns, from the `turns` trait (Python builds each entry):
//   {user, agent, heard, unheard, interrupted, done, error, metrics: [[label, seconds], ...]}
// `heard` is what the user heard of the answer; `unheard` the rest of what the agent wrote
// (shown struck through when the answer was cut). The answer being spoken is in the player
// below the turns, where its words light up as they are heard.

/**
 * @typedef {{
 *   user: string, agent: string, heard: string, unheard: string, interrupted: boolean,
 *   done: boolean, error: string, metrics: Array<[string, number]>,
 * }} Turn
 */

/**
 * @param {string} tag @param {string} className @param {string} [text]
 * @returns {HTMLElement}
 */
function element(tag, className, text) {
  const el = document.createElement(tag);
  el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** @param {Array<[string, number]>} metrics @returns {string} */
function metricsText(metrics) {
  return metrics
    .filter(([, seconds]) => Number.isFinite(seconds))
    .map(([label, seconds]) => `${label} ${seconds.toFixed(2)} s`)
    .join(" · ");
}

/** @param {Turn} turn @returns {HTMLElement} */
function turnItem(turn) {
  const li = element("li", "fishnb-chat-turn");
  li.toggleAttribute("data-interrupted", !!turn.interrupted);
  li.toggleAttribute("data-done", !!turn.done);
  if (turn.user) {
    const you = element("div", "fishnb-chat-user");
    you.append(element("span", "fishnb-chat-who", "You"), element("span", "fishnb-chat-said", turn.user));
    li.append(you);
  }
  if (turn.user || turn.heard) {
    const agent = element("div", "fishnb-chat-agent");
    agent.append(element("span", "fishnb-chat-who", turn.agent || "Agent"));
    const said = element("span", "fishnb-chat-said", turn.done ? turn.heard : "…");
    agent.append(said);
    if (turn.interrupted) {
      said.append(" ", element("span", "fishnb-chat-cut", "interrupted"));
      if (turn.unheard) agent.append(element("span", "fishnb-chat-unheard", turn.unheard));
    }
    li.append(agent);
  }
  if (turn.error) li.append(element("div", "fishnb-chat-turn-error", turn.error));
  const metrics = metricsText(turn.metrics || []);
  if (metrics) li.append(element("div", "fishnb-chat-metrics", metrics));
  return li;
}

/** Draws the turns into a list element, again only when they changed. */
class TurnsView {
  /** @param {HTMLElement} list */
  constructor(list) {
    this.list = list;
    this.key = "";
  }

  /** @param {Turn[]} turns */
  draw(turns) {
    const key = JSON.stringify(turns);
    if (key === this.key) return;
    this.key = key;
    this.list.replaceChildren(...turns.map(turnItem));
    this.list.hidden = turns.length === 0;
  }
}
