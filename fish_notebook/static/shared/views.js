// What the player and the voice chat share (widget.py joins this folder's files first into
// each widget's module): a model's views, and letting go once the last one is gone.

/** A model with no view left lets go after this long (a re-render takes less). */
const ORPHAN_MS = 400;

/**
 * The views of one widget model. Once the last one is removed and none comes back within
 * ORPHAN_MS, `orphaned` runs: the output was cleared or its cell deleted. A re-rendered
 * output removes its view and adds a new one, which keeps the model going.
 * @template V
 */
class Views {
  /** @param {() => void} orphaned what the model does with no view left (go quiet) */
  constructor(orphaned) {
    /** @type {Set<V>} */
    this.set = new Set();
    this.orphaned = orphaned;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.timer = null;
  }

  /** @returns {number} how many views there are */
  get size() {
    return this.set.size;
  }

  [Symbol.iterator]() {
    return this.set.values();
  }

  /** @param {V} view */
  add(view) {
    this.set.add(view);
    this.cancel();
  }

  /** @param {V} view */
  delete(view) {
    this.set.delete(view);
    if (this.set.size === 0 && !this.timer) {
      this.timer = setTimeout(() => {
        this.timer = null;
        if (this.set.size === 0) this.orphaned();
      }, ORPHAN_MS);
    }
  }

  /** No more waiting for a view to come back (one came, or the model is disposed). */
  cancel() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
