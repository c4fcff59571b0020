// The microphone's frames on their way to the kernel: one message per frame while the kernel
// keeps up, batched while it does not, always in order, and what must follow them (the
// talk button's release, the stop) sent only once every frame before it was.

/**
 * Frames waiting for the kernel go in one message once fewer than this many messages are
 * unanswered. Each comm message costs the kernel two status messages back to the page; at 50
 * messages a second a loaded machine's frontend fell seconds behind (measured: execute replies
 * 10-60 s late while the frames themselves arrived in time), so the page sends a frame as it
 * comes only while the kernel keeps up, and batches them when it does not.
 */
const MAX_IN_FLIGHT = 2;
/** A message whose "idle" status has not come back after this long counts as answered. */
const ACK_TIMEOUT_MS = 1000;
/** At most this many frames go in one message (half a second of 20 ms frames). */
const MAX_BATCH = 25;

/**
 * @typedef {{ frames_sent: number, bytes_sent: number, messages_sent: number, largest_batch: number }} SendFigures
 */

/** One model's frames to the kernel, numbered from 0 (`seq`), and the figures of sending them. */
class FrameSender {
  /** @param {Model} model @param {SendFigures} figures counted here (the microphone's stats) */
  constructor(model, figures) {
    this.model = model;
    this.figures = figures;
    this.seq = 0;
    /** @type {ArrayBuffer[]} frames not sent yet */
    this.pending = [];
    /** @type {Map<number, ReturnType<typeof setTimeout>>} messages unanswered, by first seq */
    this.inFlight = new Map();
    /** @type {Array<() => void>} what goes once every pending frame was sent */
    this.afterFrames = [];
  }

  /** @param {ArrayBuffer} pcm one frame, sent as soon as the kernel may have it */
  push(pcm) {
    this.pending.push(pcm);
    this.flush();
  }

  /**
   * Send the pending frames, as many messages as the kernel may have unanswered (all of them
   * when `force`), then what waited for them.
   * @param {boolean} force
   */
  flush(force = false) {
    while (this.pending.length && (force || this.inFlight.size < MAX_IN_FLIGHT)) {
      this.sendBatch(this.pending.splice(0, MAX_BATCH));
    }
    if (!this.pending.length) {
      const after = this.afterFrames;
      this.afterFrames = [];
      for (const action of after) action();
    }
  }

  /** @param {ArrayBuffer[]} frames sent as one message: {kind: "mic", seq, frames} + PCM */
  sendBatch(frames) {
    const bytes = frames.reduce((n, f) => n + f.byteLength, 0);
    const pcm = new Uint8Array(bytes);
    let at = 0;
    for (const f of frames) {
      pcm.set(new Uint8Array(f), at);
      at += f.byteLength;
    }
    const seq = this.seq;
    const answered = () => {
      const timer = this.inFlight.get(seq);
      if (timer === undefined) return;
      clearTimeout(timer);
      this.inFlight.delete(seq);
      this.flush();
    };
    const callbacks = {
      iopub: { status: (/** @type {any} */ msg) => msg.content.execution_state === "idle" && answered() },
    };
    this.inFlight.set(seq, setTimeout(answered, ACK_TIMEOUT_MS));
    this.model.send({ kind: "mic", seq, frames: frames.length }, callbacks, [pcm.buffer]);
    this.seq += frames.length;
    const s = this.figures;
    s.frames_sent += frames.length;
    s.bytes_sent += bytes;
    s.messages_sent += 1;
    s.largest_batch = Math.max(s.largest_batch, frames.length);
  }

  /** Send `content` once every frame before it was sent (messages keep their order). */
  sendAfterFrames(/** @type {any} */ content) {
    this.afterFrames.push(() => this.model.send(content));
    this.flush();
  }

  dispose() {
    for (const timer of this.inFlight.values()) clearTimeout(timer);
    this.inFlight.clear();
  }
}
