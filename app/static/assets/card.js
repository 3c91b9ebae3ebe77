// The model card: what /model says, as sections people read rather than raw JSON. Known
// fields get names and units; any field this page does not know yet is still listed.

import { calibrationChart, withUnit } from "./chart.js";
import { el, formatNumber, ordinal } from "./dom.js";

const METRIC_NAMES = {
  val_nelbo: "Validation negative ELBO (nats per image)",
  val_iwae_nll: "Validation IWAE −log p(x) (nats per image)",
  best_val_nelbo_1_sample: "Best validation negative ELBO, 1 draw (nats)",
  test_nelbo: "Test negative ELBO (nats per image)",
  iwae_samples: "IWAE samples",
  val_images: "Validation images",
  train_images: "Training images",
  best_epoch: "Best epoch",
  epochs_trained: "Epochs trained",
  train_images_per_second: "Training speed (images/s)",
};
const LIMIT_NAMES = {
  max_images: "Images per request",
  max_pixels: "Pixels per image",
  max_body_bytes: "Body size (bytes)",
  max_samples: "Samples per request",
  max_steps: "Interpolation steps",
  max_batch_size: "Rows per forward pass",
  latent_abs_max: "Largest |latent value|",
};
const WHEN = { dateStyle: "medium", timeStyle: "short" };
const CALIBRATION_SHOWN = new Set([
  "levels", "quantiles", "threshold", "threshold_level", "score", "score_samples", "count", "method",
  "false_alarm_rate", "expected_false_alarm_rate", "false_alarm_interval", "false_alarm_interval_level",
]);

const humanise = (name) => name.replaceAll("_", " ").replace(/^./, (first) => first.toUpperCase());

function show(value) {
  if (typeof value === "number") return formatNumber(value);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (value === null || value === undefined) return "—";
  if (Array.isArray(value) && value.every((item) => typeof item !== "object")) return value.map(show).join(", ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function facts(entries) {
  return el("dl", { class: "facts" }, entries.flatMap(([term, value]) => [
    el("dt", { text: term }),
    el("dd", {}, value instanceof Node ? value : show(value)),
  ]));
}

function section(title, ...content) {
  return el("section", { class: "card-section" }, el("h2", { text: title }), ...content);
}

const named = (values, names) => Object.entries(values ?? {}).map(([key, value]) => [names[key] ?? humanise(key), value]);

function overview(model) {
  const { channels, height, width } = model.image ?? {};
  const colours = { 1: "greyscale", 3: "RGB" }[channels] ?? `${channels} channels`;
  return section("Overview", facts([
    ["Name", model.name],
    ["Architecture", model.architecture],
    ["Likelihood", model.likelihood],
    ["Image", `${width} × ${height}, ${colours}`],
    ["Latent size", model.latent_dim],
    ["Device", model.device],
    ["Created", model.created_at ? new Date(model.created_at).toLocaleString(undefined, WHEN) : undefined],
    ["Artifact format", model.format_version],
    ["PyTorch", model.torch_version],
    ["Training data", el("code", { class: "fingerprint", title: "sha256 of the training images and labels", text: model.data_fingerprint ?? "—" })],
  ]));
}

const percent = (fraction) => `${formatNumber(100 * fraction)}%`;

// split-conformal calibrations promise a false-alarm rate; older (quantile) ones do not
function falseAlarms(c) {
  const rows = [["Method", { "split-conformal": "split conformal", quantile: "quantile of validation scores" }[c.method] ?? c.method]];
  if (c.false_alarm_rate != null) rows.push(["Requested false-alarm rate", percent(c.false_alarm_rate)]);
  if (c.expected_false_alarm_rate != null) rows.push(["Expected false-alarm rate", percent(c.expected_false_alarm_rate)]);
  if (c.false_alarm_interval) {
    const [low, high] = c.false_alarm_interval;
    const share = c.false_alarm_interval_level == null ? "" : ` for ${percent(c.false_alarm_interval_level)} of calibration sets`;
    rows.push(["False-alarm interval", `${percent(low)} to ${percent(high)}${share}`]);
  }
  return c.method ? rows : [];
}

function calibration(model) {
  const c = model.calibration;
  if (!c?.quantiles?.length) return section("Calibration", el("p", { class: "hint", text: "This model has no calibration." }));
  const extra = Object.entries(c).filter(([key]) => !CALIBRATION_SHOWN.has(key));
  const about = c.method === "split-conformal"
    ? `Scores (${c.score}) of ${formatNumber(c.count)} normal images that neither training nor model selection saw. The threshold flags a new normal image with probability at most ${percent(c.false_alarm_rate ?? 1 - c.threshold_level)}.`
    : `Scores (${c.score}) of ${formatNumber(c.count)} held-out normal images. Above the threshold, at their ${ordinal(100 * c.threshold_level)} percentile, an image is flagged.`;
  return section(
    "Calibration",
    el("p", { text: about }),
    calibrationChart(c, { width: 520, height: 150 }),
    facts([
      ["Score", c.score],
      ["Noise draws per score", c.score_samples],
      ["Calibration images", c.count],
      ["Threshold", withUnit(c, c.threshold)],
      ["Threshold level", `${ordinal(100 * c.threshold_level)} percentile`],
      ...falseAlarms(c),
      ...named(Object.fromEntries(extra), {}),
    ]),
  );
}

function preprocessing({ color_mode: mode, resize, pixel_range: range, scale, ...rest } = {}) {
  const steps = scale > 0 && Math.abs(1 / scale - Math.round(1 / scale)) < 1e-6 ? `1/${Math.round(1 / scale)}` : show(scale);
  return [
    ["Colour mode", { L: "L (greyscale)", RGB: "RGB" }[mode] ?? mode],
    ["Resize", resize],
    ["Pixel range", Array.isArray(range) ? `${range[0]} to ${range[1]}` : range],
    ["Scale", `${steps} per 8-bit level`],
    ...named(rest, {}),
  ];
}

function training(model) {
  const rows = Object.entries(model.training ?? {}).map(([key, value]) => [key, value]);
  return section("Training", el("details", {}, el("summary", { text: `Configuration (${rows.length} settings)` }), facts(rows)));
}

/** Fill `container` with the card of `model` (a /model answer). */
export function renderCard(container, model) {
  const known = new Set(["name", "format_version", "architecture", "likelihood", "image", "latent_dim", "preprocessing", "calibration", "metrics", "training", "data_fingerprint", "torch_version", "created_at", "device", "limits"]);
  const other = Object.entries(model).filter(([key]) => !known.has(key));
  const sections = [
    overview(model),
    calibration(model),
    section("Metrics", facts(named(model.metrics, METRIC_NAMES))),
    section("Preprocessing", facts(preprocessing(model.preprocessing))),
    section("Limits", facts(named(model.limits, LIMIT_NAMES))),
    training(model),
  ];
  if (other.length) sections.push(section("Other", facts(named(Object.fromEntries(other), {}))));
  container.replaceChildren(...sections);
}
