// Sample: a grid from /sample. The seed the service used is always shown (it draws one
// when the field is empty), so any grid can be made again.

import { verb } from "./api.js";
import { clearError, el, pngSource, showError } from "./dom.js";

export function setupSample(session) {
  const form = document.getElementById("sample-form");
  const count = document.getElementById("sample-n");
  const seed = document.getElementById("sample-seed");
  const temperature = document.getElementById("sample-temperature");
  const temperatureValue = document.getElementById("sample-temperature-value");
  const error = document.getElementById("sample-error");
  const info = document.getElementById("sample-info");
  const grid = document.getElementById("sample-grid");
  let sampled = false;
  let latest = 0; // only the newest request's answer is shown

  async function sample() {
    const ticket = ++latest;
    clearError(error);
    form.setAttribute("aria-busy", "true");
    const body = { n: Number(count.value), temperature: Number(temperature.value) };
    if (seed.value !== "") body.seed = Number(seed.value);
    try {
      const answer = await verb("sample", { json: body });
      if (ticket !== latest) return;
      sampled = true;
      grid.replaceChildren(...answer.images.map((image, i) => el("li", {},
        el("img", { class: "pixels", src: pngSource(image), alt: `Sample ${i + 1} of ${answer.images.length}` }))));
      info.replaceChildren(
        "Seed ", el("code", { id: "sample-used-seed", text: String(answer.seed) }),
        ` · temperature ${body.temperature.toFixed(2)} · ${answer.images.length} images`,
      );
    } catch (failure) {
      if (ticket === latest) showError(error, failure);
    } finally {
      if (ticket === latest) form.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sample();
  });
  document.getElementById("sample-new").addEventListener("click", () => {
    seed.value = "";
    sample();
  });
  temperature.addEventListener("input", () => {
    temperatureValue.textContent = Number(temperature.value).toFixed(2);
  });
  session.onModel((model) => {
    count.max = String(model.limits?.max_samples ?? count.max);
    sampled = false;
    grid.replaceChildren();
    info.replaceChildren();
  });
  return {
    activate() {
      if (!sampled && session.model) sample();
    },
  };
}
