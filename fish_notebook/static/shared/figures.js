// What the player and the voice chat share: a model's figures, published as JSON in its views'
// `data-stats` attribute (tests and tools read it) and in the model's `stats` trait.

/** How often the figures are published to the DOM while something changes... */
const STATS_MS = 250;
/** ...and to Python (a trait update goes through the kernel). */
const SYNC_MS = 1000;

/** Where a model's figures go, and when they last went there. */
class StatsOut {
  /** @param {Model} model */
  constructor(model) {
    this.model = model;
    /** the JSON last published to the DOM ("" before the first time) */
    this.published = "";
    this.synced = "";
    this.syncedAt = 0;
  }

  /**
   * Serialize the figures, and copy them to Python when due.
   * @param {object} figures
   * @returns {string | null} the JSON for the DOM when it changed since the last call
   */
  send(figures) {
    const text = JSON.stringify(figures);
    const changed = text !== this.published;
    this.published = text;
    this.sync(); // a change published to the DOM may still be due for Python
    return changed ? text : null;
  }

  /** Copy the published figures to the Python trait, at most once per SYNC_MS. */
  sync() {
    const text = this.published;
    const now = performance.now();
    if (!text || text === this.synced || now - this.syncedAt < SYNC_MS) return;
    this.synced = text;
    this.syncedAt = now;
    this.model.set("stats", JSON.parse(text));
    this.model.save_changes();
  }
}
