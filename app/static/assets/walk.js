// Walk: /interpolate between two ends, each an uploaded image or a random latent drawn by
// /sample from a seed (so a walk can be repeated), shown one step at a time on a slider
// and as a row of the whole path.

import { verb } from "./api.js";
import { clearError, dataUrl, el, pngSource, showError } from "./dom.js";

export function setupWalk(session) {
  const form = document.getElementById("walk-form");
  const error = document.getElementById("walk-error");
  const walker = document.getElementById("walker");
  const frame = document.getElementById("walk-frame");
  const slider = document.getElementById("walk-slider");
  const position = document.getElementById("walk-position");
  const path = document.getElementById("walk-path");
  const steps = document.getElementById("walk-steps");
  const ends = [...form.querySelectorAll("fieldset.end")].map((fieldset) => setupEnd(fieldset, error));
  let frames = [];
  let walked = false;
  let latest = 0; // only the newest walk's answer is shown

  const show = (index) => {
    slider.value = String(index);
    frame.src = pngSource(frames[index]);
    frame.alt = `Step ${index + 1} of ${frames.length}`;
    const t = frames.length > 1 ? index / (frames.length - 1) : 0;
    position.textContent = `${index + 1} of ${frames.length} · t = ${t.toFixed(2)}`;
    path.querySelectorAll("button").forEach((button, i) => button.setAttribute("aria-pressed", String(i === index)));
  };

  async function walk() {
    const ticket = ++latest;
    clearError(error);
    form.setAttribute("aria-busy", "true");
    try {
      const [start, end] = await Promise.all(ends.map((end) => end.endpoint()));
      const method = document.getElementById("walk-method").value;
      const body = { start, end, steps: Number(steps.value), method };
      const { images } = await verb("interpolate", { json: body });
      if (ticket !== latest) return;
      frames = images;
      walked = true;
      slider.max = String(frames.length - 1);
      path.replaceChildren(...frames.map((image, i) => el("li", {},
        el("button", { type: "button", class: "thumb", "aria-label": `Show step ${i + 1}`, onclick: () => show(i) },
          el("img", { class: "pixels", src: pngSource(image), alt: "" })))));
      walker.hidden = false;
      show(0);
    } catch (failure) {
      if (ticket === latest) showError(error, failure);
    } finally {
      if (ticket === latest) form.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    walk();
  });
  slider.addEventListener("input", () => show(Number(slider.value)));
  session.onModel((model) => {
    steps.max = String(model.limits?.max_steps ?? steps.max);
    ends.forEach((end) => end.forget());
    walked = false;
    walker.hidden = true;
    path.replaceChildren();
  });
  return {
    activate() {
      if (!walked && session.model) walk();
    },
  };
}

// One end of the walk: its radio choice, seed or file, and a preview of where it starts.
function setupEnd(fieldset, error) {
  const preview = fieldset.querySelector(".end-preview");
  const seed = fieldset.querySelector(".seed");
  const file = fieldset.querySelector(".file");
  const kind = () => fieldset.querySelector("input[type=radio]:checked").value;
  const pick = (value) => {
    fieldset.querySelector(`input[type=radio][value=${value}]`).checked = true;
  };
  let drawn = null; // the last random latent: { seed, latent, image }
  let objectUrl = "";

  const setPreview = (source, alt) => {
    preview.src = source;
    preview.alt = alt;
  };
  async function randomLatent() {
    const wanted = Number(seed.value);
    if (drawn?.seed !== wanted) {
      const sample = await verb("sample", { json: { n: 1, seed: wanted } });
      drawn = { seed: wanted, latent: sample.latents[0], image: pngSource(sample.images[0]) };
    }
    setPreview(drawn.image, `Random latent, seed ${wanted}`);
    return { latent: drawn.latent };
  }
  async function endpoint() {
    if (kind() === "latent") return randomLatent();
    if (!file.files.length) throw new Error(`Choose an image for the ${fieldset.dataset.end}, or pick a random latent.`);
    return { image: await dataUrl(file.files[0]) };
  }

  file.addEventListener("change", () => {
    URL.revokeObjectURL(objectUrl);
    objectUrl = file.files.length ? URL.createObjectURL(file.files[0]) : "";
    if (!objectUrl) return;
    pick("image");
    setPreview(objectUrl, file.files[0].name);
  });
  seed.addEventListener("input", () => pick("latent"));
  fieldset.addEventListener("change", (event) => {
    if (event.target.type !== "radio") return;
    clearError(error);
    if (kind() === "image" && objectUrl) setPreview(objectUrl, file.files[0]?.name ?? "");
    if (kind() === "latent" && drawn) setPreview(drawn.image, `Random latent, seed ${drawn.seed}`);
  });
  return { endpoint, forget: () => { drawn = null; } };
}
