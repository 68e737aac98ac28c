// The steering playground: plain JavaScript, talking only to this server's API (same origin).
// State lives in the DOM controls; every request is built from them by `settings()`.
"use strict";

const KEY_STORE = "steering.apiKey";
const $ = (id) => document.getElementById(id);
const state = { model: null, vectors: [], rows: [] };
// The server's per-request modes (st.steer's); ablate and affine_ablate take no coef.
const MODES = ["add", "ablate", "clamp", "angular", "affine_add", "affine_ablate"];
const COEF_FREE = ["ablate", "affine_ablate"];

// ------------------------------------------------------------------ API calls

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.param = err.param || null;
    this.code = err.code || null;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(method, path, body) {
  let response;
  try {
    response = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (exc) {
    throw new ApiError(0, { error: { message: `cannot reach the server: ${exc.message}` } });
  }
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return response;
}

// POST with stream: true; calls onText(delta) per chunk; resolves when [DONE] arrives.
async function stream(path, body, onText) {
  const response = await api("POST", path, { ...body, stream: true });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk);
        for (const choice of chunk.choices || []) {
          const text = choice.delta ? choice.delta.content : choice.text;
          if (text) onText(text);
        }
      }
    }
  }
  throw new ApiError(0, { error: { message: "the stream ended before [DONE]" } });
}

// ------------------------------------------------------------------ errors next to their controls

function clearErrors() {
  for (const el of document.querySelectorAll(".error")) {
    el.textContent = "";
    if (el.classList.contains("banner")) el.hidden = true;
  }
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function showAt(errorId, message, control) {
  const el = $(errorId);
  el.textContent = message;
  el.hidden = false;
  if (control) control.setAttribute("aria-invalid", "true");
}

// Where the server's `param` points in the page; `termRows[i]` is the row of steering[i].
function placeError(err, termRows, fallbackId, overrides = {}) {
  if (err.status === 401) {
    showKeyForm(err.message);
    return;
  }
  const param = err.param || "";
  if (overrides[param]) return showAt(overrides[param][0], err.message, overrides[param][1]);
  const term = /^steering\[(\d+)\](?:\.(\w+))?/.exec(param);
  if (term && termRows[Number(term[1])]) {
    const row = termRows[Number(term[1])];
    const field = term[2] || "vector";
    const target = overrides[`term.${field}`] && termRows[Number(term[1])].swept ? overrides[`term.${field}`] : null;
    if (target) return showAt(target[0], err.message, target[1]);
    return showAt(row.errorId, err.message, row.controls[field] || row.controls.enable);
  }
  const fields = {
    prompt: ["err-prompt", $("prompt")], messages: ["err-prompt", $("prompt")],
    max_tokens: ["err-max-tokens", $("max-tokens")], max_completion_tokens: ["err-max-tokens", $("max-tokens")],
    temperature: ["err-temperature", $("temperature")], top_p: ["err-top-p", $("top-p")], seed: ["err-seed", $("seed")],
    steering: ["err-steering", null],
  };
  const base = param.split(/[.[]/)[0];
  if (fields[base]) return showAt(fields[base][0], err.message, fields[base][1]);
  showAt(fallbackId, err.message, null);
}

// ------------------------------------------------------------------ API key

function showKeyForm(message) {
  $("key-form").hidden = false;
  $("err-key").textContent = message || "";
  $("api-key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
  $("api-key").value = "";
  $("key-form").hidden = true;
  load();
});

// ------------------------------------------------------------------ vectors

function fmt(x) {
  return Number.isInteger(x) ? String(x) : String(Number(x.toPrecision(4)));
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function vectorRow(vector, index) {
  const id = `v${index}`;
  const norms = vector.layers.map((l) => `${l}: ${fmt(vector.norms[String(l)])}`).join(", ");
  const meta = vector.metadata || {};
  const enable = el("input", { type: "checkbox", id: `${id}-enable`, class: "enable" });
  const range = el("input", { type: "range", id: `${id}-range`, min: "-10", max: "10", step: "0.1", value: "0",
                              "aria-label": `${vector.id} coefficient slider` });
  const coef = el("input", { type: "number", id: `${id}-coef`, step: "0.1", value: "0", "aria-describedby": `${id}-err` });
  const layerBoxes = vector.layers.map((layer) =>
    el("input", { type: "checkbox", id: `${id}-layer-${layer}`, value: String(layer), checked: "" }));
  const positions = el("select", { id: `${id}-positions` },
    ...["all", "prompt", "generated"].map((p) => el("option", { value: p, text: p })));
  const mode = el("select", { id: `${id}-mode` }, ...MODES.map((m) => el("option", { value: m, text: m })));
  const layersSet = el("fieldset", { class: "inline layers", id: `${id}-layers` }, el("legend", { text: "layers" }),
    ...vector.layers.map((layer, i) => el("label", {}, layerBoxes[i], ` ${layer}`)));
  const details = el("details", {}, el("summary", { text: "metadata" }),
    el("pre", { class: "meta", text: JSON.stringify(meta, null, 1) }));
  const box = el("fieldset", { class: "vector", "data-vector": vector.id },
    el("legend", {}, el("label", { for: enable.id }, enable, ` ${vector.id}`)),
    el("p", { class: "muted", text: `site ${vector.site} · norms ${norms}` + (meta.method ? ` · ${meta.method}` : "") }),
    el("div", { class: "coef" }, el("label", { for: coef.id, text: "coef" }), range, coef),
    layersSet,
    el("div", { class: "inline" }, el("label", { for: positions.id, text: "apply to" }), positions,
       el("label", { for: mode.id, text: "mode" }), mode),
    details,
    el("p", { class: "error", id: `${id}-err`, role: "alert" }));
  // The slider and the number box show one value; touching either turns the vector on.
  range.addEventListener("input", () => { coef.value = range.value; enable.checked = true; refresh(); });
  coef.addEventListener("input", () => { range.value = coef.value; enable.checked = true; refresh(); });
  mode.addEventListener("change", () => { coef.disabled = range.disabled = COEF_FREE.includes(mode.value); refresh(); });
  for (const input of [enable, positions, ...layerBoxes]) input.addEventListener("change", refresh);
  return { name: vector.id, vector, box, errorId: `${id}-err`, controls: { enable, coef, layers: layersSet, positions, mode, vector: enable, range }, layerBoxes };
}

function termOf(row, coef) {
  const term = { vector: row.name };
  const mode = row.controls.mode.value;
  if (mode !== "add") term.mode = mode;
  if (!COEF_FREE.includes(mode)) term.coef = coef === undefined ? Number(row.controls.coef.value) : coef;
  const chosen = row.layerBoxes.filter((b) => b.checked).map((b) => Number(b.value));
  if (chosen.length !== row.layerBoxes.length) term.layers = chosen;
  if (row.controls.positions.value !== "all") term.apply_to = row.controls.positions.value;
  return term;
}

function fillSelect(select, values, labels) {
  const keep = select.value;
  select.replaceChildren(...values.map((v, i) => el("option", { value: String(v), text: labels ? labels[i] : String(v) })));
  if (values.map(String).includes(keep)) select.value = keep;
}

function showVectors(vectors, broken) {
  state.vectors = vectors;
  state.rows = vectors.map(vectorRow);
  $("vector-list").replaceChildren(...state.rows.map((r) => r.box));
  const note = vectors.length ? `${vectors.length} vector${vectors.length > 1 ? "s" : ""}: enable one or more, set coefficients, generate.`
                              : "This server has no vectors (start it with vectors=<folder>).";
  $("vectors-note").textContent = note + (broken.length ? ` Unusable files: ${broken.map((b) => `${b.name} (${b.error})`).join("; ")}` : "");
  const names = vectors.map((v) => v.id);
  fillSelect($("sweep-vector"), names);
  fillSelect($("read-vector"), names);
  updateReadLayers();
}

function updateReadLayers() {
  const vector = state.vectors.find((v) => v.id === $("read-vector").value);
  fillSelect($("read-layer"), vector ? vector.layers : []);
}
$("read-vector").addEventListener("change", updateReadLayers);

// ------------------------------------------------------------------ settings -> request bodies

function settings() {
  const chat = document.querySelector('input[name="format"]:checked').value === "chat";
  const body = { model: state.model };
  const text = $("prompt").value;
  if (chat) body.messages = [{ role: "user", content: text }];
  else body.prompt = text;
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  if (num("max-tokens") !== null) body.max_tokens = num("max-tokens");
  if (num("temperature") !== null) body.temperature = num("temperature");
  if (num("top-p") !== null && num("top-p") !== 1) body.top_p = num("top-p");
  if (num("seed") !== null) body.seed = num("seed");
  const termRows = state.rows.filter((r) => r.controls.enable.checked);
  return { chat, path: chat ? "/v1/chat/completions" : "/v1/completions", body, terms: termRows.map((r) => termOf(r)), termRows };
}

function withSteering(body, terms) {
  return terms.length ? { ...body, steering: terms } : { ...body };
}

// ------------------------------------------------------------------ generate: both panes, streamed

async function fill(outId, errId, path, body, termRows) {
  const out = $(outId);
  out.textContent = "";
  out.classList.add("busy");
  try {
    await stream(path, body, (text) => { out.textContent += text; });
  } catch (err) {
    placeError(err, termRows, errId);
  } finally {
    out.classList.remove("busy");
  }
}

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const s = settings();
  const button = $("generate");
  button.disabled = true;
  try {
    await Promise.all([
      fill("out-plain", "err-plain", s.path, s.body, []),
      fill("out-steered", "err-steered", s.path, withSteering(s.body, s.terms), s.termRows),
    ]);
  } finally {
    button.disabled = false;
    button.dataset.runs = String(Number(button.dataset.runs || 0) + 1);  // finished rounds (tests wait on it)
  }
});

// ------------------------------------------------------------------ sweep strip

function sweepCoefs(c, steps) {
  if (steps < 2) return [c];
  return Array.from({ length: steps }, (_, i) => Number((-c + (2 * c * i) / (steps - 1)).toFixed(4)));
}

$("sweep-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const s = settings();
  const row = state.rows.find((r) => r.name === $("sweep-vector").value);
  if (!row) return showAt("err-sweep-vector", "choose a vector to sweep", $("sweep-vector"));
  const c = Math.abs(Number($("sweep-max").value));
  const steps = Number($("sweep-steps").value);
  if (!Number.isInteger(steps) || steps < 2 || steps > 9) return showAt("err-sweep-steps", "give 2 to 9 coefficients", $("sweep-steps"));
  const others = s.termRows.filter((r) => r !== row);
  const rows = [...others, { ...row, swept: true }];
  const cells = sweepCoefs(c, steps).map((coef) => {
    const text = el("p", { class: "completion busy" });
    const li = el("li", { "data-coef": String(coef) }, el("span", { class: "coef-label", text: `coef ${fmt(coef)}` }), text);
    return { coef, li, text };
  });
  $("sweep-strip").replaceChildren(...cells.map((cell) => cell.li));
  $("sweep").disabled = true;
  const overrides = { "term.coef": ["err-sweep-max", $("sweep-max")] };
  try {
    await Promise.all(cells.map(async (cell) => {
      const term = { ...termOf(row, cell.coef) };
      delete term.mode;
      term.coef = cell.coef;
      const body = withSteering(s.body, [...others.map((r) => termOf(r)), term]);
      try {
        const reply = await (await api("POST", s.path, body)).json();
        const choice = reply.choices[0];
        cell.text.textContent = choice.message ? choice.message.content : choice.text;
      } catch (err) {
        cell.text.textContent = "—";
        placeError(err, rows, "err-sweep", overrides);
      } finally {
        cell.text.classList.remove("busy");
      }
    }));
  } finally {
    $("sweep").disabled = false;
  }
});

// ------------------------------------------------------------------ reading view

function colour(p, scale) {
  const t = Math.max(-1, Math.min(1, scale ? p / scale : 0));
  const light = 100 - 45 * Math.abs(t);
  return t >= 0 ? `hsl(8, 85%, ${light}%)` : `hsl(214, 85%, ${light}%)`;
}

$("read-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const s = settings();
  const steered = $("read-source").value === "steered";
  const body = { model: state.model, vector: $("read-vector").value, layer: Number($("read-layer").value),
                 completion: $(steered ? "out-steered" : "out-plain").textContent };
  if (s.chat) body.messages = s.body.messages;
  else body.prompt = s.body.prompt;
  if (steered && s.terms.length) body.steering = s.terms;
  const overrides = { vector: ["err-read-vector", $("read-vector")], layer: ["err-read-layer", $("read-layer")],
                      completion: ["err-read-source", $("read-source")] };
  $("read").disabled = true;
  try {
    const reading = await (await api("POST", "/v1/steering/read", body)).json();
    drawReading(reading);
  } catch (err) {
    placeError(err, steered ? s.termRows : [], "err-read", overrides);
  } finally {
    $("read").disabled = false;
  }
});

// Colour scale: centred on 0 or on the median of these tokens; full colour at the 95th percentile of
// |projection - centre|, so one outlier (an attention-sink token such as BOS) does not wash out the rest.
function readingScale(values, centreOn) {
  const sorted = [...values].sort((a, b) => a - b);
  const centre = centreOn === "median" && sorted.length ? sorted[Math.floor((sorted.length - 1) / 2)] : 0;
  const deviations = values.map((v) => Math.abs(v - centre)).sort((a, b) => a - b);
  const scale = deviations.length ? deviations[Math.floor(0.95 * (deviations.length - 1))] : 0;
  return { centre, scale: Math.max(scale, 1e-12) };
}

function drawReading(reading) {
  state.reading = reading;
  const { centre, scale } = readingScale(reading.tokens.map((t) => t.projection), $("read-centre").value);
  const spans = reading.tokens.map((token, i) => {
    const span = el("span", { class: `tok part-${token.part}`, "data-projection": String(token.projection), "data-index": String(i),
                              title: `${JSON.stringify(token.text)} · projection ${token.projection.toFixed(4)}` });
    span.textContent = token.text;
    span.style.backgroundColor = colour(token.projection - centre, scale);
    return span;
  });
  $("read-tokens").replaceChildren(...spans);
  $("read-scale").textContent = `${reading.vector} at layer ${reading.layer} (${reading.site}): ${reading.prompt_tokens} prompt + ` +
    `${reading.completion_tokens} completion tokens (underlined); white = ${fmt(centre)}, full colour = ${fmt(centre)} ± ${fmt(scale)} ` +
    "(95th percentile; beyond it, clipped).";
}
$("read-centre").addEventListener("change", () => { if (state.reading) drawReading(state.reading); });

// ------------------------------------------------------------------ copy as

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function py(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => py(v, indent)).join(", ")}]`;
  return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${py(v, indent)}`).join(", ")}}`;
}

function hydraString(text) {
  return `"${text.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

function copyTexts() {
  const s = settings();
  const body = withSteering(s.body, s.terms);
  const origin = window.location.origin;
  const keyed = Boolean(sessionStorage.getItem(KEY_STORE));
  const curl = [`curl ${origin}${s.path} \\`, "  -H 'Content-Type: application/json' \\"];
  if (keyed) curl.push('  -H "Authorization: Bearer $STEERING_API_KEY" \\');
  curl.push(`  -d ${shellQuote(JSON.stringify(body))}`);

  const lines = [...(keyed ? ["import os", ""] : []), "from openai import OpenAI", "",
    `client = OpenAI(base_url=${py(origin + "/v1")}, api_key=${keyed ? 'os.environ["STEERING_API_KEY"]' : '"unused"'})`,
    `reply = client.${s.chat ? "chat.completions" : "completions"}.create(`];
  for (const [k, v] of Object.entries(s.body)) lines.push(`    ${k}=${py(v)},`);
  if (s.terms.length) lines.push(`    extra_body={"steering": ${py(s.terms)}},`);
  lines.push(")", `print(reply.choices[0].${s.chat ? "message.content" : "text"})`);

  const cli = [];
  const args = [`model=${state.model}`];
  if (s.terms.length) {
    const term = s.terms[0];
    if (s.terms.length > 1) cli.push(`# steering generate applies one vector: the first enabled (${term.vector}) is shown`);
    cli.push("# vector= is the file of that name in the server's vectors folder");
    args.push(`vector=vectors/${term.vector}.safetensors`);
    if (term.mode) args.push(`mode=${term.mode}`);
    if (term.coef !== undefined) args.push(`coef=${term.coef}`);
    if (term.layers) args.push(`layers=[${term.layers.join(",")}]`);
    if (term.apply_to) args.push(`apply_to=${term.apply_to}`);
    args.push("compare=true");
  }
  args.push(`chat=${s.chat}`);
  if (s.body.max_tokens !== undefined) args.push(`max_new_tokens=${s.body.max_tokens}`);
  if (s.body.temperature) {
    args.push("do_sample=true", `temperature=${s.body.temperature}`);
    if (s.body.top_p !== undefined) args.push(`top_p=${s.body.top_p}`);
    if (s.body.seed !== undefined) args.push(`seed=${s.body.seed}`);
  }
  args.push(`prompt=${hydraString($("prompt").value)}`);
  cli.push(`steering generate ${args.map((a) => (/^[\w=.,[\]/-]+$/.test(a) ? a : shellQuote(a))).join(" ")}`);
  return { "copy-curl": curl.join("\n"), "copy-python": lines.join("\n"), "copy-cli": cli.join("\n") };
}

function refresh() {
  if (!state.model) return;
  for (const [id, text] of Object.entries(copyTexts())) $(id).textContent = text;
}

for (const button of document.querySelectorAll("button.copy")) {
  button.addEventListener("click", async () => {
    refresh();
    const text = $(button.dataset.target).textContent;
    try {
      await navigator.clipboard.writeText(text);
      $("copy-status").textContent = "Copied.";
    } catch {
      $("copy-status").textContent = "The browser refused the clipboard; select the text instead.";
    }
  });
}
$("generate-form").addEventListener("input", refresh);
$("generate-form").addEventListener("change", refresh);

// ------------------------------------------------------------------ start

async function load() {
  clearErrors();
  try {
    const models = await (await api("GET", "/v1/models")).json();
    state.model = models.data[0].id;
    $("model-line").textContent = `model ${state.model} · context ${models.data[0].max_model_len} tokens`;
    const vectors = await (await api("GET", "/v1/vectors")).json();
    showVectors(vectors.data, vectors.errors || []);
    refresh();
    document.body.dataset.ready = "true";
  } catch (err) {
    $("model-line").textContent = "not connected";
    if (err.status === 401) showKeyForm(err.message);
    else showAt("err-global", err.message, null);
    document.body.dataset.ready = "error";
  }
}

load();
