// The heat map layer laid over an input image; the view's opacity slider fades it.
//
// /anomaly draws the map itself, at the upload's size: `overlay` is its colour scale laid
// over the upload (app/heatmaps.py owns the scale; the legend in ui.css follows it), and
// `heatmap` the grey map alone, shown when a result has no overlay.

import { el, pngSource } from "./dom.js";

const SCALES = {
  absolute: "yellow: at or above the threshold",
  relative: "scaled within this image",
};

/** The layer for one result, or null when it has no map. */
export async function heatLayer(result) {
  const map = result.overlay ?? result.heatmap;
  if (!map) return null;
  const layer = el("img", { class: "heat", src: pngSource(map), alt: "" });
  await layer.decode();
  layer.classList.toggle("pixels", layer.naturalWidth < 128);
  return layer;
}

/** What the colours mean for this result, in a few words (or "" when unknown). */
export const scaleNote = (result) => SCALES[result.heatmap_scale] ?? "";
