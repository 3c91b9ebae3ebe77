// The page: views chosen by the URL's #fragment, the API key dialog, and the model that
// every view works with (from /model; a selector when the service has several models).

import { apiKey, onUnauthorized, request } from "./api.js";
import { renderCard } from "./card.js";
import { clearError, el, showError } from "./dom.js";
import { setupInspect } from "./inspect.js";
import { setupModels } from "./models.js";
import { setupSample } from "./sample.js";
import { setupWalk } from "./walk.js";

const VIEWS = ["inspect", "walk", "sample", "model"];
const serviceError = document.getElementById("service-error");

// What the views share: the model being served, and who wants to hear when it changes.
const session = {
  model: null,
  listeners: [],
  onModel(listener) {
    this.listeners.push(listener);
  },
  setModel(model) {
    this.model = model;
    this.listeners.forEach((listener) => listener(model));
  },
};

const views = {
  inspect: setupInspect(session),
  walk: setupWalk(session),
  sample: setupSample(session),
};

function currentView() {
  const name = location.hash.slice(1);
  return VIEWS.includes(name) ? name : "inspect";
}

function showView() {
  const name = currentView();
  for (const view of VIEWS) document.getElementById(view).hidden = view !== name;
  for (const link of document.querySelectorAll("nav.tabs a")) {
    if (link.hash === `#${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  views[name]?.activate?.();
}

async function loadDefaultModel() {
  clearError(serviceError);
  try {
    session.setModel(await request("model"));
  } catch (error) {
    if (error.status === 401) return; // the key dialog is open
    showError(serviceError, error);
    serviceError.append(el("button", { type: "button", text: "Try again", onclick: () => models.reload() }));
  }
}

session.onModel((model) => {
  document.getElementById("model-name").textContent = `${model.name} · ${model.image.width}×${model.image.height} · latent ${model.latent_dim}`;
  renderCard(document.getElementById("card"), model);
  views[currentView()]?.activate?.();
});

function setupKeyDialog(onKey) {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  const message = document.getElementById("key-message");
  const button = document.getElementById("key-button");
  const labelButton = () => {
    button.textContent = apiKey.get() ? "API key: set" : "API key";
  };
  const open = (error) => {
    if (error) showError(message, error);
    else clearError(message);
    input.value = apiKey.get();
    if (!dialog.open) dialog.showModal();
    input.focus();
  };
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!/^[\x21-\x7e]+$/.test(key)) {
      showError(message, new Error("A key is printable ASCII without spaces."));
      return;
    }
    apiKey.set(key);
    labelButton();
    dialog.close();
    onKey();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    apiKey.clear();
    input.value = "";
    labelButton();
  });
  document.getElementById("key-cancel").addEventListener("click", () => dialog.close());
  button.addEventListener("click", () => open());
  onUnauthorized(open);
  labelButton();
}

const models = setupModels({ loadDefault: loadDefaultModel, setModel: (model) => session.setModel(model) });
setupKeyDialog(() => models.reload());
window.addEventListener("hashchange", showView);
showView();
models.reload();
