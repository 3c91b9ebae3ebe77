// The calibration distribution as a small SVG histogram, with the threshold and
// (optionally) one image's score marked.
//
// /model gives the calibration as quantiles: `quantiles[i]` is the score below which a
// fraction `levels[i]` of the normal calibration images fall. Between two quantiles the
// distribution is taken as uniform (the CDF is piecewise linear), so each bin's height is
// the rise of that CDF across the bin.

import { formatNumber } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const BINS = 36;

function svg(tag, attributes = {}, text = "") {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

/** `value` with the score's unit: nats, except for an anomaly map's peak (no unit). */
export function withUnit(calibration, value) {
  return calibration?.score === "map" ? formatNumber(value) : `${formatNumber(value)} nats`;
}

/** The fraction of calibration scores at or below `x`. */
export function cdf({ levels, quantiles }, x) {
  if (x <= quantiles[0]) return levels[0];
  for (let i = 1; i < quantiles.length; i++) {
    if (x <= quantiles[i]) {
      const span = quantiles[i] - quantiles[i - 1];
      const fraction = span > 0 ? (x - quantiles[i - 1]) / span : 1;
      return levels[i - 1] + fraction * (levels[i] - levels[i - 1]);
    }
  }
  return levels[levels.length - 1];
}

function histogram(calibration, low, high) {
  const width = (high - low) / BINS;
  return Array.from({ length: BINS }, (_, i) => {
    const from = low + i * width;
    return cdf(calibration, from + width) - cdf(calibration, from);
  });
}

/**
 * An <svg> of the calibration histogram. `score` (optional) is marked, clamped to the
 * edge with an arrow when it lies outside the calibration's range.
 */
export function calibrationChart(calibration, { score, width = 360, height = 110 } = {}) {
  const { quantiles, threshold } = calibration;
  const pad = { left: 6, right: 6, top: 18, bottom: 20 };
  let low = Math.min(quantiles[0], threshold);
  let high = Math.max(quantiles[quantiles.length - 1], threshold);
  if (high - low <= 0) [low, high] = [low - 1, high + 1];
  const plot = { width: width - pad.left - pad.right, height: height - pad.top - pad.bottom };
  const x = (value) => pad.left + ((value - low) / (high - low)) * plot.width;
  const baseline = pad.top + plot.height;

  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  chart.append(svg("rect", {
    class: "flag-zone", x: x(threshold), y: pad.top, width: Math.max(0, x(high) - x(threshold)), height: plot.height,
  }));
  const bins = histogram(calibration, low, high);
  const tallest = Math.max(...bins) || 1;
  const binWidth = plot.width / BINS;
  bins.forEach((mass, i) => {
    const barHeight = (mass / tallest) * plot.height;
    chart.append(svg("rect", {
      class: "bar", x: pad.left + i * binWidth + 0.5, y: baseline - barHeight, width: Math.max(0, binWidth - 1), height: barHeight,
    }));
  });
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: baseline, y2: baseline }));
  chart.append(svg("text", { class: "tick", x: pad.left, y: height - 5 }, formatNumber(low)));
  chart.append(svg("text", { class: "tick", x: width - pad.right, y: height - 5, "text-anchor": "end" }, withUnit(calibration, high)));

  const thresholdX = x(threshold);
  chart.append(svg("line", { class: "threshold", x1: thresholdX, x2: thresholdX, y1: pad.top - 4, y2: baseline }));
  chart.append(svg("text", {
    class: "label", x: thresholdX - 3, y: pad.top - 7, "text-anchor": "end",
  }, "threshold"));

  let label = `Calibration scores of ${calibration.count ?? "the"} normal images, from ${formatNumber(low)} to ${withUnit(calibration, high)}; threshold ${formatNumber(threshold)}`;
  if (Number.isFinite(score)) {
    chart.append(...scoreMarker(score, x, { low, high, top: pad.top, baseline, width, pad }));
    chart.classList.add(score > threshold ? "flagged" : "normal");
    label += `; this image ${formatNumber(score)}`;
  }
  chart.setAttribute("aria-label", label);
  return chart;
}

function scoreMarker(score, x, { low, high, top, baseline, width, pad }) {
  const outside = score > high ? "right" : score < low ? "left" : "";
  const at = x(Math.min(high, Math.max(low, score)));
  const text = `${outside === "left" ? "◀ " : ""}${formatNumber(score)}${outside === "right" ? " ▶" : ""}`;
  const anchor = at > width / 2 ? "end" : "start";
  const nudge = anchor === "end" ? -4 : 4;
  return [
    svg("line", { class: "score", x1: at, x2: at, y1: top, y2: baseline }),
    svg("text", {
      class: "label score-label", x: Math.min(width - pad.right, Math.max(pad.left, at + nudge)), y: top + 10, "text-anchor": anchor,
    }, text),
  ];
}
