// Drawing: the waveform (played part, playhead), the clock and the metrics line.

/** Seconds the waveform spans at first while live; it doubles as the audio outgrows it. */
const WAVE_WINDOW_S = 5;

/** @param {number} s seconds @returns {string} m:ss.s */
function clock(s) {
  if (!Number.isFinite(s) || s < 0) s = 0;
  const m = Math.floor(s / 60);
  return `${m}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
}

/**
 * The session's metrics and the page's own figures, in one muted line.
 * @param {Record<string, any>} m the `metrics` trait
 * @param {{ chunks: number, rate: number, underruns: number }} page
 * @returns {string}
 */
function metricsLine(m, page) {
  const parts = [];
  if (typeof m.ttfa_s === "number") parts.push(`TTFA ${Math.round(m.ttfa_s * 1000)} ms`);
  const flushes = Array.isArray(m.ttfa_flush_s) ? m.ttfa_flush_s : [];
  if (flushes.length) parts.push(`flush → audio ${Math.round(flushes[flushes.length - 1] * 1000)} ms`);
  if (typeof m.rtf === "number") parts.push(`RTF ${m.rtf.toFixed(2)}`);
  if (page.chunks) parts.push(`${page.chunks} chunks`);
  if (page.chunks) parts.push(`${(page.rate / 1000).toFixed(page.rate % 1000 ? 1 : 0)} kHz`);
  if (page.underruns) parts.push(`${page.underruns} underrun${page.underruns > 1 ? "s" : ""}`);
  return parts.join(" · ");
}

/**
 * @typedef {{
 *   position: number,
 *   audio: number,
 *   growing: boolean,
 *   rate: number,
 *   playhead: boolean,
 * }} WaveFrame  seconds played and recorded; whether more audio may come (the time axis then
 *   grows in steps); the stream's rate; whether to draw the playhead
 */

/** The recording's waveform on a canvas, played part in the accent colour. */
class Waveform {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {HTMLElement} root where the colours are read (CSS variables)
   * @param {Recording} recording
   */
  constructor(canvas, root, recording) {
    this.canvas = canvas;
    this.root = root;
    this.recording = recording;
    /** seconds the time axis spans while live */
    this.window = WAVE_WINDOW_S;
  }

  /** @param {WaveFrame} frame */
  draw({ position, audio, growing, rate, playhead }) {
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
    g.clearRect(0, 0, width, height);
    // While live the time axis grows in steps, so the drawing does not shrink on every chunk.
    while (growing && audio > this.window) this.window *= 2;
    const span = growing ? Math.max(audio, this.window) : Math.max(audio, 1e-6);
    const styles = getComputedStyle(this.root);
    const played = styles.getPropertyValue("--fishnb-played").trim() || "#1a73e8";
    const rest = styles.getPropertyValue("--fishnb-wave").trim() || "#9aa0a6";
    const binsPerPx = (span * rate) / BIN / width;
    const bar = Math.max(1, Math.round(2 * dpr));
    const step = bar + Math.max(1, Math.round(dpr));
    const mid = height / 2;
    const playedPx = (position / span) * width;
    for (let x = 0; x < width; x += step) {
      const peak = this.peakOver(Math.floor(x * binsPerPx), Math.floor((x + step) * binsPerPx));
      if (peak < 0) break;
      const h = Math.max(dpr, Math.sqrt(peak) * (height - 2 * dpr));
      g.fillStyle = x < playedPx ? played : rest;
      g.fillRect(x, mid - h / 2, bar, h);
    }
    if (playhead) {
      g.fillStyle = played;
      g.fillRect(Math.min(width - dpr, playedPx), 0, Math.max(1, dpr), height);
    }
  }

  /**
   * @param {number} from first bin
   * @param {number} to bin past the last (at least one bin is read)
   * @returns {number} the highest peak of those bins, -1 when the first is past the end
   */
  peakOver(from, to) {
    let peak = -1;
    for (let bin = from; bin < Math.max(from + 1, to); bin++) {
      const v = this.binPeak(bin);
      if (v < 0) break;
      if (v > peak) peak = v;
    }
    return peak;
  }

  /** @param {number} bin @returns {number} the peak of a waveform bin, -1 past the end */
  binPeak(bin) {
    const rec = this.recording;
    const sample = bin * BIN;
    if (sample >= rec.samples) return -1;
    const c = rec.chunks[rec.chunkAt(sample)];
    return c.peaks[Math.floor((sample - c.offset) / BIN)] ?? 0;
  }

  /**
   * The moment of the recording under a click.
   * @param {number} clientX
   * @param {number} audio seconds recorded
   * @param {boolean} growing whether more audio may come (the axis spans the live window)
   * @returns {number} seconds
   */
  secondsAt(clientX, audio, growing) {
    const rect = this.canvas.getBoundingClientRect();
    const span = growing ? Math.max(audio, this.window) : audio;
    return ((clientX - rect.left) / rect.width) * span;
  }
}
