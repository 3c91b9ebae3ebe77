// Small DOM helpers shared by the views: building elements, showing errors, numbers.

/** `el("p", { class: "hint", text: "..." }, child, ...)`; `on<event>` props add listeners. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return node;
}

export const pngSource = (base64) => `data:image/png;base64,${base64}`;

/** The API's message, then its status, code and request id in small print. */
export function showError(node, error) {
  const facts = [error.status ? `HTTP ${error.status}` : "", error.code, error.requestId && `request ${error.requestId}`];
  node.replaceChildren(
    el("strong", { text: error.message || String(error) }),
    el("span", { class: "meta", text: facts.filter(Boolean).join(" · ") }),
  );
  node.hidden = false;
}

export function clearError(node) {
  node.hidden = true;
  node.replaceChildren();
}

const significant = new Intl.NumberFormat("en", { maximumSignificantDigits: 4 });
const grouped = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });

/** Integers grouped (5,000), other numbers to four significant digits (-85.21). */
export function formatNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  return Number.isInteger(value) || Math.abs(value) >= 1000 ? grouped.format(value) : significant.format(value);
}

/** "1st", "34th", "99.5th": a percentile as people say it. */
export function ordinal(value) {
  const rounded = value >= 99 && value < 100 ? Math.floor(value * 10) / 10 : Math.round(value);
  const whole = Math.floor(rounded);
  const suffix = rounded !== whole || (whole % 100 >= 11 && whole % 100 <= 13)
    ? "th"
    : ({ 1: "st", 2: "nd", 3: "rd" }[whole % 10] ?? "th");
  return `${rounded}${suffix}`;
}

/** Run `work(item, index)` for every item, at most `limit` at a time. */
export async function eachLimited(items, limit, work) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      await work(items[index], index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Read a file as a data: URL (what the JSON routes accept as an image). */
export function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
