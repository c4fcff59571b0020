// Capture: the microphone through getUserMedia (the browser's echo cancellation, noise
// suppression and gain control on), an AudioContext and the capture worklet. Failures come
// out as {name, message}: the browser's own error name, which the kernel turns into advice.

/** What getUserMedia is asked for: the browser's voice processing, one channel. */
const CONSTRAINTS = {
  audio: {
    echoCancellation: true,
    noiseSuppression: true,
    autoGainControl: true,
    channelCount: 1,
  },
  video: false,
};
/** An AudioContext that does not start running within this long is an error, not a wait. */
const RESUME_TIMEOUT_MS = 5000;

/**
 * @typedef {{ name: string, message: string }} CaptureError
 * @typedef {{ pcm: ArrayBuffer, rms: number, peak: number }} Frame
 */

/** @param {any} error @returns {CaptureError} */
function captureError(error) {
  const name = (error && error.name) || "Error";
  const message = (error && error.message) || String(error);
  return { name, message };
}

/**
 * Reject after `ms` unless `promise` settles first.
 * @template T @param {Promise<T>} promise @param {number} ms @param {string} what
 * @returns {Promise<T>}
 */
function within(promise, ms, what) {
  /** @type {ReturnType<typeof setTimeout>} */
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject({ name: "TimeoutError", message: `${what} took over ${ms} ms` }), ms);
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, late]).finally(() => clearTimeout(timer)));
}

/** One microphone capture: start() once, stop() once. */
class Capture {
  /**
   * @param {{ rate: number, frame: number }} format what the kernel wants: Hz, samples per frame
   * @param {{ frame: (f: Frame) => void, ended: () => void }} hooks
   */
  constructor(format, hooks) {
    this.format = format;
    this.hooks = hooks;
    /** @type {MediaStream | null} */
    this.stream = null;
    /** @type {AudioContext | null} */
    this.ctx = null;
    /** @type {AudioWorkletNode | null} */
    this.node = null;
    this.stopped = false;
  }

  /** @returns {Promise<{ rate: number, label: string, settings: Record<string, any> }>} */
  async start() {
    if (!window.isSecureContext) {
      throw { name: "InsecureContext", message: "the page is neither https nor localhost" };
    }
    const media = navigator.mediaDevices;
    if (!media || !media.getUserMedia || typeof AudioWorkletNode === "undefined") {
      throw { name: "NotSupportedError", message: "no getUserMedia or AudioWorklet in this browser" };
    }
    try {
      this.stream = await media.getUserMedia(CONSTRAINTS);
      if (this.stopped) throw { name: "AbortError", message: "stopped while starting" };
      const ctx = new AudioContext({ latencyHint: "interactive" });
      this.ctx = ctx;
      await ctx.audioWorklet.addModule(workletURL());
      const node = new AudioWorkletNode(ctx, WORKLET_NAME, {
        numberOfInputs: 1,
        numberOfOutputs: 0,
        channelCount: 1,
        channelCountMode: "explicit",
        channelInterpretation: "speakers",
        processorOptions: { rate: this.format.rate, frame: this.format.frame },
      });
      this.node = node;
      node.port.onmessage = (event) => this.hooks.frame(event.data);
      ctx.createMediaStreamSource(this.stream).connect(node);
      if (ctx.state !== "running") await within(ctx.resume(), RESUME_TIMEOUT_MS, "starting audio");
      const track = this.stream.getAudioTracks()[0];
      track.addEventListener("ended", () => {
        if (!this.stopped) this.hooks.ended();
      });
      const s = track.getSettings ? track.getSettings() : {};
      const settings = {
        echoCancellation: s.echoCancellation,
        noiseSuppression: s.noiseSuppression,
        autoGainControl: s.autoGainControl,
        sampleRate: s.sampleRate,
        channelCount: s.channelCount,
      };
      return { rate: ctx.sampleRate, label: track.label || "", settings };
    } catch (error) {
      this.stop();
      throw captureError(error);
    }
  }

  /** Release the microphone (its indicator goes off) and the audio context. */
  stop() {
    this.stopped = true;
    if (this.node) {
      this.node.port.postMessage("stop");
      this.node.port.onmessage = null;
      this.node.disconnect();
    }
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close().catch(() => {});
    this.node = null;
    this.stream = null;
    this.ctx = null;
  }
}
