// The page's one way to the service: its public API, at URLs relative to the page (so a
// path prefix in front of the service keeps working), with the tab's API key. Every
// failure becomes an ApiError that carries the API's own message.

const KEY_STORE = "vae-serve.api-key";

export class ApiError extends Error {
  constructor(status, message, { code = "", requestId = "" } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

// sessionStorage: the key lives as long as the tab, never on disk past it
export const apiKey = {
  get: () => sessionStorage.getItem(KEY_STORE) ?? "",
  set: (key) => sessionStorage.setItem(KEY_STORE, key),
  clear: () => sessionStorage.removeItem(KEY_STORE),
};

const unauthorizedListeners = [];

/** `listener(error)` runs on every 401, wherever it came from. */
export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

// "" serves the default model through the top-level routes; a model repository
// (`GET /models`) adds "models/<name>/" or "models/<name>/versions/<v>/"
let modelRoutes = "";

export function useModelRoutes(prefix) {
  modelRoutes = prefix;
}

export async function request(path, { json, form } = {}) {
  const init = { method: json === undefined && form === undefined ? "GET" : "POST", headers: {} };
  const key = apiKey.get();
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(new URL(`../${path}`, document.baseURI), init);
  } catch (error) {
    throw new ApiError(0, `The service did not answer (${error.message}).`);
  }
  const body = await readBody(response);
  if (response.ok) return body;
  const error = errorOf(response, body);
  if (error.status === 401) unauthorizedListeners.forEach((listener) => listener(error));
  throw error;
}

/** POST to one of the model's verbs: encode, decode, sample, interpolate, anomaly. */
export function verb(name, options) {
  return request(`${modelRoutes}${name}`, options);
}

/** A multipart body: `files` for each file, plus the options as form fields. */
export function filesForm(files, options = {}) {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  for (const [name, value] of Object.entries(options)) form.append(name, String(value));
  return form;
}

async function readBody(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function errorOf(response, body) {
  const detail = body?.error;
  if (detail && typeof detail === "object" && detail.message) {
    return new ApiError(response.status, detail.message, {
      code: detail.code,
      requestId: detail.request_id,
    });
  }
  if (typeof detail === "string") return new ApiError(response.status, detail);
  const text = typeof body === "string" ? body.trim().slice(0, 200) : "";
  const status = `${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, text ? `${status}: ${text}` : status);
}
