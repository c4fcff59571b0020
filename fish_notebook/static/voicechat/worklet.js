// The capture worklet: runs on the audio thread, takes the microphone at the context's rate
// (44.1 or 48 kHz, mono after the node's down-mix), low-passes and resamples it to the
// kernel's rate with a windowed-sinc interpolator, and posts frames of 16-bit PCM with their
// level. Shipped inside the widget as a Blob URL: nothing is fetched from anywhere.

const WORKLET_NAME = "fishnb-capture";

const WORKLET_SOURCE = `
const HALF = 12;          // taps on each side of an output sample, at the output's rate
const CUTOFF = 0.45;      // of the output rate: 7.2 kHz at 16 kHz, under its Nyquist
const STEPS = 64;         // table entries per input sample

class FishnbCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions;
    this.ratio = sampleRate / o.rate;            // input samples per output sample
    this.frame = o.frame;                        // output samples per posted frame
    this.half = Math.ceil(HALF * Math.max(1, this.ratio));
    this.fc = (CUTOFF * o.rate) / sampleRate;    // cutoff in cycles per input sample
    this.table = this.makeTable();
    this.hist = new Float32Array(8192);          // input history; hist[0] is sample histStart
    this.histStart = 0;
    this.histLen = 0;
    this.pos = 0;                                // next output position, in input samples
    this.out = new Int16Array(this.frame);
    this.n = 0;
    this.sum2 = 0;
    this.peak = 0;
    this.running = true;
    this.port.onmessage = (e) => { if (e.data === "stop") this.running = false; };
  }

  makeTable() {                                 // the low-pass sinc (Blackman window), tabled
    const table = new Float32Array(this.half * STEPS + 2);
    for (let k = 0; k < table.length; k++) {
      const t = k / STEPS;
      if (t >= this.half) break;
      const x = 2 * this.fc * t;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = 0.42 + 0.5 * Math.cos((Math.PI * t) / this.half) + 0.08 * Math.cos((2 * Math.PI * t) / this.half);
      table[k] = sinc * w;
    }
    return table;
  }

  kernel(t) {
    const at = Math.abs(t) * STEPS;
    const k = Math.floor(at);
    if (k >= this.table.length - 1) return 0;
    return this.table[k] + (this.table[k + 1] - this.table[k]) * (at - k);
  }

  append(input) {
    if (this.histLen + input.length > this.hist.length) {
      const keep = Math.max(0, Math.floor(this.pos) - this.half - this.histStart);
      this.hist.copyWithin(0, keep, this.histLen);
      this.histLen -= keep;
      this.histStart += keep;
      if (this.histLen + input.length > this.hist.length) {
        const bigger = new Float32Array(2 * (this.histLen + input.length));
        bigger.set(this.hist.subarray(0, this.histLen));
        this.hist = bigger;
      }
    }
    this.hist.set(input, this.histLen);
    this.histLen += input.length;
  }

  sampleAt(p) {
    const first = Math.ceil(p - this.half);
    const last = Math.floor(p + this.half);
    let sum = 0;
    let weights = 0;
    for (let i = first; i <= last; i++) {
      const j = i - this.histStart;
      const w = this.kernel(p - i);
      weights += w;
      if (j >= 0 && j < this.histLen) sum += this.hist[j] * w;
    }
    return weights > 0 ? sum / weights : 0;
  }

  emit(value) {
    const v = Math.max(-1, Math.min(1, value));
    this.out[this.n++] = Math.round(v * 32767);
    this.sum2 += v * v;
    const a = Math.abs(v);
    if (a > this.peak) this.peak = a;
    if (this.n === this.frame) {
      const rms = Math.sqrt(this.sum2 / this.frame);
      const pcm = this.out.buffer;
      this.port.postMessage({ pcm, rms, peak: this.peak }, [pcm]);
      this.out = new Int16Array(this.frame);
      this.n = 0;
      this.sum2 = 0;
      this.peak = 0;
    }
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (input && input.length) {
      this.append(input);
      const end = this.histStart + this.histLen;
      while (this.pos + this.half < end) {
        this.emit(this.sampleAt(this.pos));
        this.pos += this.ratio;
      }
    }
    return this.running;
  }
}

registerProcessor("${WORKLET_NAME}", FishnbCapture);
`;

/** @type {string | null} one Blob URL per page for the worklet's code */
let workletUrl = null;

/** @returns {string} the worklet's module, as a Blob URL made once */
function workletURL() {
  if (!workletUrl) {
    const blob = new Blob([WORKLET_SOURCE], { type: "text/javascript" });
    workletUrl = URL.createObjectURL(blob);
  }
  return workletUrl;
}
