// The model and version selector. It appears only when the service has a model
// repository (`GET /models`) with more than one ready model or version; otherwise, and
// on a service without the route, the page uses the top-level routes (the default model).
//
// /models lists each model with its versions; a ready version carries `metadata`, the
// same body as GET /model, so choosing one needs no further request.

import { request, useModelRoutes } from "./api.js";
import { el } from "./dom.js";

const NEWEST = "";

/** [{ name, isDefault, versions: [{ version, metadata }] newest first }], or null. */
export function catalogueOf(answer) {
  const models = answer?.models;
  if (!Array.isArray(models)) return null;
  return models
    .filter((model) => typeof model?.name === "string")
    .map((model) => ({
      name: model.name,
      isDefault: model.default === true,
      versions: (model.versions ?? [])
        .filter((entry) => entry?.state === "ready" && entry.metadata && Number.isInteger(entry.version))
        .sort((a, b) => b.version - a.version),
    }))
    .filter((model) => model.versions.length);
}

export function setupModels({ loadDefault, setModel }) {
  const picker = document.getElementById("model-picker");
  const modelSelect = document.getElementById("model-select");
  const versionSelect = document.getElementById("version-select");
  let catalogue = [];
  const chosenModel = () => catalogue.find((model) => model.name === modelSelect.value);

  const fillVersions = () => {
    versionSelect.replaceChildren(
      el("option", { value: NEWEST, text: "newest" }),
      ...chosenModel().versions.map(({ version }) => el("option", { value: String(version), text: `v${version}` })),
    );
  };
  const choose = () => {
    const model = chosenModel();
    const wanted = versionSelect.value;
    const entry = model.versions.find(({ version }) => String(version) === wanted) ?? model.versions[0];
    const name = encodeURIComponent(model.name);
    if (wanted !== NEWEST) useModelRoutes(`models/${name}/versions/${wanted}/`);
    else useModelRoutes(model.isDefault ? "" : `models/${name}/`); // the top-level routes serve it
    setModel(entry.metadata);
  };

  async function reload() {
    let answer = null;
    try {
      answer = await request("models");
    } catch (error) {
      if (error.status === 401) return; // the key dialog is open; it reloads when done
    }
    catalogue = catalogueOf(answer) ?? [];
    const choices = catalogue.reduce((sum, model) => sum + model.versions.length, 0);
    picker.hidden = choices < 2;
    if (picker.hidden) {
      useModelRoutes("");
      return loadDefault();
    }
    const previous = modelSelect.value;
    modelSelect.replaceChildren(...catalogue.map(({ name }) => el("option", { value: name, text: name })));
    const keep = catalogue.find(({ name }) => name === previous) ?? catalogue.find((model) => model.isDefault);
    if (keep) modelSelect.value = keep.name;
    fillVersions();
    return choose();
  }

  modelSelect.addEventListener("change", () => {
    fillVersions();
    choose();
  });
  versionSelect.addEventListener("change", choose);
  return { reload };
}
