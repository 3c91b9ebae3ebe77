// The model and version selector. It appears only when the service has a model
// repository (`GET /models`) holding more than one model or version; otherwise, and on a
// service without the route, the page uses the top-level routes (the default model).

import { request, useModelRoutes } from "./api.js";
import { el } from "./dom.js";

const NEWEST = "";

/** [{ name, versions: [number] }] from a /models answer, or null if it has none. */
export function catalogueOf(answer) {
  const models = Array.isArray(answer) ? answer : answer?.models;
  if (!Array.isArray(models)) return null;
  return models
    .filter((model) => typeof model?.name === "string")
    .map((model) => ({
      name: model.name,
      versions: (model.versions ?? [])
        .filter((version) => (version.state ?? "ready") === "ready")
        .map((version) => Number(version.version ?? version))
        .filter(Number.isInteger)
        .sort((a, b) => b - a),
    }));
}

export function setupModels(loadModel) {
  const picker = document.getElementById("model-picker");
  const modelSelect = document.getElementById("model-select");
  const versionSelect = document.getElementById("version-select");
  let catalogue = [];

  const fillVersions = () => {
    const model = catalogue.find((entry) => entry.name === modelSelect.value);
    versionSelect.replaceChildren(
      el("option", { value: NEWEST, text: "newest" }),
      ...(model?.versions ?? []).map((version) => el("option", { value: String(version), text: `v${version}` })),
    );
  };
  const choose = () => {
    const name = encodeURIComponent(modelSelect.value);
    const version = versionSelect.value;
    const base = version === NEWEST ? `models/${name}` : `models/${name}/versions/${version}`;
    useModelRoutes(`${base}/`);
    return loadModel(base);
  };

  async function reload() {
    let answer = null;
    try {
      answer = await request("models");
    } catch (error) {
      if (error.status === 401) return; // the key dialog is open; it reloads when done
    }
    catalogue = catalogueOf(answer) ?? [];
    const choices = catalogue.reduce((sum, model) => sum + Math.max(1, model.versions.length), 0);
    picker.hidden = choices < 2;
    if (picker.hidden) {
      useModelRoutes("");
      return loadModel("model");
    }
    const chosen = modelSelect.value;
    modelSelect.replaceChildren(...catalogue.map((model) => el("option", { value: model.name, text: model.name })));
    if (catalogue.some((model) => model.name === chosen)) modelSelect.value = chosen;
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
