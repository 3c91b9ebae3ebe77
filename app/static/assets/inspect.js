// Inspect: score uploads with /anomaly, and show each one's input with its heat map, its
// reconstruction (/encode, then /decode of the posterior mean), the verdict, and where the
// score falls on the calibration distribution.

import { filesForm, verb } from "./api.js";
import { calibrationChart, withUnit } from "./chart.js";
import { eachLimited, el, pngSource, showError } from "./dom.js";
import { heatLayer, scaleNote } from "./heat.js";

// Uploads in flight at once. Each is its own request, so one bad file fails alone; the
// server batches concurrent requests into one forward pass anyway.
const PARALLEL = 4;

export function setupInspect(session) {
  const view = document.getElementById("inspect");
  const results = document.getElementById("results");
  const status = document.getElementById("inspect-status");
  const order = document.getElementById("order");
  const input = document.getElementById("inspect-files");
  const drop = document.getElementById("drop");
  const items = [];

  const summarise = () => {
    const done = items.filter((item) => item.result);
    const pending = items.filter((item) => !item.result && !item.failed).length;
    const flagged = done.filter((item) => item.result.is_anomaly).length;
    const failed = items.filter((item) => item.failed).length;
    const parts = [`${done.length} of ${items.length} scored`, `${flagged} flagged`];
    if (failed) parts.push(`${failed} failed`);
    status.textContent = items.length ? parts.join(" · ") + (pending ? " …" : "") : "";
  };
  const arrange = () => {
    const sorted = order.value === "upload" ? [...items] : [...items].sort(byConcern);
    results.replaceChildren(...sorted.map((item) => item.node));
  };

  async function inspectAll(files) {
    const fresh = [...files].map((file, i) => newItem(file, items.length + i));
    items.push(...fresh);
    arrange();
    summarise();
    await eachLimited(fresh, PARALLEL, async (item) => {
      await inspect(item, session.model?.calibration);
      arrange();
      summarise();
    });
  }

  input.addEventListener("change", () => {
    inspectAll(input.files);
    input.value = ""; // choosing the same file again scores it again
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    inspectAll(event.dataTransfer.files);
  });
  order.addEventListener("change", arrange);
  document.getElementById("opacity").addEventListener("input", (event) => {
    view.style.setProperty("--heat-opacity", event.target.value);
  });
  const clear = () => {
    items.splice(0).forEach((item) => URL.revokeObjectURL(item.source));
    arrange();
    summarise();
  };
  document.getElementById("inspect-clear").addEventListener("click", clear);
  session.onModel(clear); // scores of another model are not comparable
}

// flagged first, then by score, highest first; waiting and failed uploads last
function byConcern(a, b) {
  const rank = (item) => (item.result ? (item.result.is_anomaly ? 0 : 1) : item.failed ? 3 : 2);
  return rank(a) - rank(b) || (b.result?.score ?? 0) - (a.result?.score ?? 0) || a.index - b.index;
}

function newItem(file, index) {
  const source = URL.createObjectURL(file);
  const original = el("img", { class: "input", src: source, alt: `Upload ${file.name}` });
  const layered = el("div", { class: "layered" }, original);
  const caption = el("figcaption", { text: "Input and heat map" });
  const reconstruction = el("div", { class: "reconstruction" }, el("p", { class: "hint", text: "…" }));
  const verdict = el("div", { class: "verdict" }, el("h2", { class: "name", text: file.name }), el("p", { class: "hint", text: "Scoring…" }));
  const node = el(
    "li",
    { class: "result pending", "aria-busy": "true" },
    el("div", { class: "pictures" },
      el("figure", {}, layered, caption),
      el("figure", {}, reconstruction, el("figcaption", { text: "Reconstruction" }))),
    verdict,
  );
  original.addEventListener("load", () => original.classList.toggle("pixels", original.naturalWidth < 128), { once: true });
  return { file, index, source, node, layered, caption, reconstruction, verdict, result: null, failed: false };
}

async function inspect(item, calibration) {
  const [scored, rebuilt] = await Promise.allSettled([
    verb("anomaly", { form: filesForm([item.file], { heatmap: true }) }),
    reconstruct(item.file),
  ]);
  if (scored.status === "fulfilled") {
    item.result = scored.value.results[0];
    const heat = await heatLayer(item.result);
    if (heat) item.layered.append(heat);
    if (scaleNote(item.result)) item.caption.append(el("span", { class: "scale", text: scaleNote(item.result) }));
    renderVerdict(item, calibration);
  } else {
    item.failed = true;
    renderFailure(item, scored.reason);
  }
  const reconstruction = rebuilt.status === "fulfilled"
    ? el("img", { class: "pixels", src: pngSource(rebuilt.value), alt: `Reconstruction of ${item.file.name}` })
    : el("p", { class: "hint", text: item.failed ? "none" : `none: ${rebuilt.reason.message}` });
  item.reconstruction.replaceChildren(reconstruction);
  item.node.classList.remove("pending");
  item.node.removeAttribute("aria-busy");
}

async function reconstruct(file) {
  const { mu } = await verb("encode", { form: filesForm([file]) });
  const { images } = await verb("decode", { json: { latents: mu } });
  return images[0];
}

function renderVerdict(item, calibration) {
  const { score, threshold, is_anomaly: flagged, percentile, conversions = [] } = item.result;
  item.node.classList.add(flagged ? "flagged" : "normal");
  const parts = [
    el("h2", { class: "name", text: item.file.name }),
    el("p", { class: `badge ${flagged ? "anomalous" : "ok"}`, text: flagged ? "Anomaly" : "Normal" }),
    el("dl", { class: "facts" },
      el("dt", { text: "Score" }), el("dd", { text: withUnit(calibration, score) }),
      el("dt", { text: "Threshold" }), el("dd", { text: withUnit(calibration, threshold) }),
      el("dt", { text: "Rank" }), el("dd", { text: rank(percentile) })),
  ];
  if (calibration) parts.push(calibrationChart(calibration, { score }));
  if (conversions.length) parts.push(el("p", { class: "hint", text: `Converted: ${conversions.join("; ")}` }));
  item.verdict.replaceChildren(...parts);
}

// the percentile as a sentence: where this image stands among the normal ones
function rank(percentile) {
  if (percentile >= 100) return "above every normal image";
  if (percentile <= 0) return "below every normal image";
  const digits = percentile < 1 || percentile > 99 ? 1 : 0;
  return `above ${percentile.toFixed(digits)}% of normal images`;
}

function renderFailure(item, error) {
  const message = el("div", { class: "alert", role: "alert" });
  showError(message, error);
  item.verdict.replaceChildren(el("h2", { class: "name", text: item.file.name }), message);
}
