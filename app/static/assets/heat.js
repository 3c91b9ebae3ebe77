// The heat map layer laid over an input image; the view's opacity slider fades it.
//
// An /anomaly result carries `overlay` (a colour map already blended over the input)
// when the service makes one, and `heatmap` (grey, white = least likely, scaled per
// image) otherwise; the grey map is coloured here.

import { el, pngSource } from "./dom.js";

// the legend's ramp (ui.css `.ramp`), after Google's Turbo: blue -> cyan -> green ->
// yellow -> red. Alpha rises with the value too (as its square root, so that middling
// values still show), so the likely pixels leave the input visible.
const RAMP = [
  [0.0, [48, 18, 59]],
  [0.15, [70, 107, 227]],
  [0.3, [40, 187, 236]],
  [0.45, [49, 242, 153]],
  [0.6, [162, 252, 60]],
  [0.75, [250, 186, 57]],
  [0.9, [229, 78, 14]],
  [1.0, [190, 20, 10]],
];
function colour(value) {
  for (let i = 1; i < RAMP.length; i++) {
    const [to, high] = RAMP[i];
    const [from, low] = RAMP[i - 1];
    if (value <= to) {
      const t = (value - from) / (to - from);
      return low.map((channel, c) => Math.round(channel + t * (high[c] - channel)));
    }
  }
  return RAMP[RAMP.length - 1][1];
}

async function image(base64) {
  const picture = new Image();
  picture.src = pngSource(base64);
  await picture.decode();
  return picture;
}

async function colouredCanvas(heatmap) {
  const grey = await image(heatmap);
  const canvas = el("canvas", { class: "heat", width: grey.naturalWidth, height: grey.naturalHeight });
  const context = canvas.getContext("2d");
  context.drawImage(grey, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data; // RGBA
  for (let i = 0; i < data.length; i += 4) {
    const value = data[i] / 255;
    const [r, g, b] = colour(value);
    data.set([r, g, b, Math.round(255 * Math.sqrt(value))], i);
  }
  context.putImageData(pixels, 0, 0);
  canvas.classList.toggle("pixels", canvas.width < 128);
  canvas.setAttribute("aria-hidden", "true");
  return canvas;
}

/** The layer for one result, or null when it has no map. */
export async function heatLayer(result) {
  if (result.overlay) {
    const overlay = el("img", { class: "heat", src: pngSource(result.overlay), alt: "" });
    overlay.classList.toggle("pixels", (await image(result.overlay)).naturalWidth < 128);
    return overlay;
  }
  return result.heatmap ? colouredCanvas(result.heatmap) : null;
}
