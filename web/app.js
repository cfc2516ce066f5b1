// wanfly browser client: config, flight WebSocket (docs/protocol.md), HUD, stats, recording, reconnects.
// Every way a flight can fail to start or end (a field the browser or the server refuses, an unreadable image, stop
// before the flight runs, a closed connection) ends in idle(): start works again and the message sits next to its
// field (#err-<field>) or under the buttons (#message).
import { Player } from "./player.js";
import { Input } from "./input.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
if (params.get("token")) localStorage.setItem("wanfly_token", params.get("token"));

const app = {
  config: null, ws: null, flying: false, wantFlight: false, seq: 0, chunks: new Map(),
  pending: new Map(),            // action index -> time its key went down, until a frame shows it
  latencies: [], retries: 0, retryTimer: null, upload: null, uploadError: null, lastMessage: null, chunkMs: null,
  queue: "-", stopping: false, startMessage: null, ready: null,
};
const FIELDS = ["prompt", "sample", "upload", "seed", "steps", "token"];   // each has an #err-<field> next to it
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"];
const MAX_SEED = 2 ** 31 - 1;
const MAX_RETRIES = 5;           // a lost flight reconnects this many times, then the page goes idle
window.wanfly = app;             // for debugging and the browser tests

const token = () => $("token").value || localStorage.getItem("wanfly_token") || "";
const withToken = (url) => (token() ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token())}` : url);
const setStatus = (text) => { $("status").textContent = text; };
const say = (text) => { $("message").textContent = text || ""; };

function fieldError(field, text) {
  $(`err-${field}`).textContent = text || "";
  $(`err-${field}`).hidden = !text;
  $(field).setAttribute("aria-invalid", text ? "true" : "false");
}

function clearErrors() {
  for (const field of FIELDS) fieldError(field, "");
  say("");
}

// A server error -> the field it names: "steps: must be at most 50, got 999" -> steps; a bad image -> the upload
// (or the sample when none is uploaded); a refused token -> token. null: no field (the message goes under start).
function errorField(message) {
  if (message.code === "bad_image" || message.code === "oversized") return app.upload ? "upload" : "sample";
  const name = message.message.split(/[:.\[ ]/)[0];
  if (name === "image") return app.upload ? "upload" : "sample";
  return FIELDS.includes(name) ? name : null;
}

// Back to where start works: no flight, no retry pending, the socket closed unless told to keep it (a flight the
// server ended still sends its recording on it).
function idle(status, keepSocket = false) {
  const ws = app.ws;
  app.ws = null;
  app.wantFlight = false;
  app.flying = false;
  app.stopping = false;
  clearTimeout(app.retryTimer);
  if (app.player) app.player.expecting = false;
  if (ws && !keepSocket && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  $("start").disabled = false;
  $("stop").disabled = true;
  $("focus-hint").hidden = true;
  setStatus(status);
}

async function init() {
  const response = await fetch("/api/config");
  const config = app.config = await response.json();
  const world = config.world;
  if (!config.ready || !world || !world.name) {
    setStatus("the model is loading...");
    setTimeout(init, 2000);
    return;
  }
  // The banner always names the world; untrained or controller-less worlds also say how to get the real model.
  const untrained = world.random_weights || !world.controller;
  $("banner").textContent = untrained
    ? `${world.weights}. Start the server with --model_dir and --artifacts for the real model.`
    : `World: ${world.weights}`;
  $("banner").textContent += world.decoder === "small"
    ? " Frames: the small distilled decoder." : " Frames: the Wan VAE decoder.";
  $("banner").classList.toggle("banner-info", !untrained);
  $("banner").hidden = false;
  $("world-notes").textContent = world.notes ? `What to expect: ${world.notes}` : "";
  $("world-notes").hidden = !world.notes;
  $("prompt").value = world.prompt;
  $("steps").value = "";                       // blank: the world's default
  $("steps").placeholder = `${world.steps} (the world's)`;
  $("steps").max = config.limits.max_steps;
  $("token-row").hidden = !config.token_required;
  $("token").value = localStorage.getItem("wanfly_token") || "";
  $("gradio-link").hidden = !config.gradio;
  for (const name of config.samples) $("sample").add(new Option(name, name));
  if (world.sample && config.samples.includes(world.sample)) $("sample").value = world.sample;
  $("sample").addEventListener("change", chooseSample);
  $("upload").addEventListener("change", readUpload);
  showPreview();
  app.player = new Player($("player"), { onFrame });
  app.player.configure(world.fps, world.width, world.height);
  app.input = new Input($("player"), config.bindings, config.actions.length, onInput);
  buildHud(config);
  $("start").disabled = false;
  $("start").addEventListener("click", () => {
    const start = startMessage();
    if (!start) { setStatus("not started: see the marked fields"); return; }
    app.retries = 0;
    app.startMessage = start;
    startFlight(null);
  });
  $("stop").addEventListener("click", stopFlight);
  $("player").addEventListener("focus", () => { $("focus-hint").hidden = true; });
  $("player").addEventListener("blur", () => { $("focus-hint").hidden = !app.flying; });
  setInterval(sendInput, 1000 / config.bindings.input_hz);
  setInterval(() => send({ type: "ping" }), 15000);
  // The playback position: a flight whose frames stop being played (a dead client, a hidden tab) pauses on the server.
  setInterval(() => { if (app.flying) send({ type: "played", frame: app.player.played }); }, 250);
  setInterval(updateStats, 250);
  // Guidance changes what a key does (hover + g x the key's effect), so a world that uses it says so.
  const guidance = world.action_guidance !== 1 ? `, action guidance ${world.action_guidance}` : "";
  const causal = world.generation === "causal" ? ", one causal stream per flight" : "";
  app.readyStatus = `ready: ${world.name}, ${world.width}x${world.height}, ${world.fps} fps${causal}${guidance}`;
  setStatus(app.readyStatus);
}

// The start message from the fields, checked as the server will check them; null (with each problem shown next to
// its field) when one is wrong. A blank steps box is the world's default, a blank seed a random one.
function startMessage() {
  clearErrors();
  const limits = app.config.limits;
  let ok = true;
  const bad = (field, text) => { fieldError(field, text); ok = false; };
  const prompt = $("prompt").value;
  if (prompt.length > limits.max_prompt_chars) {
    bad("prompt", `prompt: ${prompt.length} characters, more than ${limits.max_prompt_chars}`);
  }
  const steps = wholeNumber("steps");
  if (Number.isNaN(steps) || (steps !== null && (steps < 1 || steps > limits.max_steps))) {
    bad("steps", `steps: a whole number from 1 to ${limits.max_steps} (blank: the world's ${app.config.world.steps})`);
  }
  const seed = wholeNumber("seed");
  if (Number.isNaN(seed) || (seed !== null && seed > MAX_SEED)) {
    bad("seed", `seed: a whole number from 0 to ${MAX_SEED} (blank: a random one)`);
  }
  if (app.uploadError) bad("upload", app.uploadError);
  if (!ok) return null;
  const start = { type: "start", prompt, image: app.upload || null };
  if (!start.image) start.sample = $("sample").value;
  if (steps !== null) start.steps = steps;
  if (seed !== null) start.seed = seed;
  return start;
}

// A number box -> null (blank), its whole number, or NaN (anything else: "-5", "1.5", text the box cannot parse).
function wholeNumber(id) {
  const box = $(id);
  if (box.validity.badInput) return NaN;
  const text = box.value.trim();
  if (text === "") return null;
  return /^\d+$/.test(text) ? Number(text) : NaN;
}

function showPreview() {
  $("preview").src = app.upload || `samples/${$("sample").value}.png`;
}

function chooseSample() {
  // picking a sample drops an uploaded (or refused) file: the sample is what the flight starts from
  $("upload").value = "";
  app.upload = app.uploadError = null;
  fieldError("upload", "");
  fieldError("sample", "");
  showPreview();
}

async function readUpload() {
  app.upload = app.uploadError = null;
  fieldError("upload", "");
  const file = $("upload").files[0];
  if (file) {
    app.uploadError = `${file.name}: still being read; try again in a moment`;   // a start meanwhile waits
    app.uploadError = await imageProblem(file);
    if (app.uploadError) fieldError("upload", app.uploadError);
    else app.upload = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }
  showPreview();
}

// Why a chosen file cannot be a first frame (its type, size, first bytes, or it does not decode); null if it can.
async function imageProblem(file) {
  const limit = app.config.limits.max_upload_bytes;
  if (!IMAGE_TYPES.includes(file.type)) return `${file.name}: not a PNG, JPEG or WebP file`;
  if (file.size > limit) return `${file.name}: ${file.size} bytes, more than the limit of ${limit}`;
  const b = new Uint8Array(await file.slice(0, 12).arrayBuffer());
  const ascii = (from, to) => String.fromCharCode(...b.slice(from, to));
  const png = b[0] === 0x89 && ascii(1, 4) === "PNG";
  const jpeg = b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;
  const webp = ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP";
  if (!png && !jpeg && !webp) return `${file.name}: its contents are not a PNG, JPEG or WebP image`;
  try {
    (await createImageBitmap(file)).close();
  } catch {
    return `${file.name}: the image cannot be decoded`;
  }
  return null;
}

function buildHud(config) {
  const arrows = { ArrowLeft: "\u2190", ArrowRight: "\u2192", ArrowUp: "\u2191", ArrowDown: "\u2193" };
  const keys = new Map(config.bindings.keyboard.map((k) => [k.index, arrows[k.code] || k.code.replace(/^Key/, "")]));
  $("hud").innerHTML = config.actions.map((name, i) => `
    <div class="hud-action" data-action="${i}" data-active="0">
      <div class="name"><span>${name}</span><span class="key">${keys.get(i) || ""}</span></div>
      <div class="bar"><i></i></div>
      <div class="srv" data-active="0">server -</div>
    </div>`).join("");
  const help = config.bindings.keyboard.map((k) => `<li><b>${k.code}</b> ${k.action}</li>`);
  help.push(`<li>gamepad: left stick move, right stick yaw/pitch (dead zone ${config.bindings.gamepad.dead_zone})</li>`);
  $("help").innerHTML = help.join("");
}

function onInput(state, before) {
  const now = performance.now();
  state.flags.forEach((flag, i) => {
    const row = document.querySelector(`.hud-action[data-action="${i}"]`);
    row.dataset.active = String(flag);
    row.querySelector(".bar > i").style.width = `${Math.round(state.mags[i] * 100)}%`;
    if (flag && !before.flags[i]) app.pending.set(i, now); else if (!flag) app.pending.delete(i);
  });
  sendInput();
}

function sendInput() {
  if (!app.flying || !app.input) return;
  const { flags, mags } = app.input.state();
  send({ type: "input", seq: app.seq++, t: performance.now(), flags, mags });
}

function send(message) {
  if (app.ws && app.ws.readyState === WebSocket.OPEN) app.ws.send(JSON.stringify(message));
}

// Opens the flight's socket and sends the start message (a reconnect: from the last frame shown, ``image``).
function startFlight(image) {
  clearTimeout(app.retryTimer);
  say("");
  $("recording").hidden = true;
  app.wantFlight = true;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = app.ws = new WebSocket(withToken(`${scheme}://${location.host}/ws`));
  ws.binaryType = "arraybuffer";
  ws.retry = app.retries > 0;
  if ($("token").value) localStorage.setItem("wanfly_token", $("token").value);
  ws.onopen = () => {
    ws.opened = true;
    const start = { ...app.startMessage };
    if (image) { start.image = image; delete start.sample; }
    send(start);
    setStatus("starting...");
  };
  ws.onmessage = (event) => (typeof event.data === "string" ? onMessage(ws, JSON.parse(event.data)) :
    ws === app.ws && onFrameData(event.data));
  ws.onclose = (event) => onClose(ws, event);
  $("start").disabled = true;
  $("stop").disabled = false;
}

function stopFlight() {
  if (!app.flying) {   // not started yet (or between reconnects): nothing to record, nothing to tell the server
    idle("stopped before the flight started");
    return;
  }
  app.wantFlight = false;
  app.stopping = true;
  send({ type: "stop" });
  app.flying = false;
  app.player.expecting = false;
  $("stop").disabled = true;
  $("focus-hint").hidden = true;
  setStatus("stopping: preparing the recording...");
}

function onMessage(ws, message) {
  if (ws !== app.ws) {   // a flight that has ended: only its recording is still of use
    if (message.type === "recording") { if (!app.wantFlight) showRecording(message); ws.close(1000); }
    return;
  }
  app.lastMessage = message;
  if (message.type === "ready") {
    app.ready = message;
    ws.gotReady = true;
    app.session = message.session;
    app.flying = true;
    app.retries = 0;
    app.seq = 0;
    app.chunks.clear();
    app.player.reset();
    app.player.configure(message.fps, message.width, message.height);
    app.player.expecting = true;
    app.queue = 0;
    setStatus(`flying (session ${message.session}, seed ${message.seed})`);
    $("player").focus();
    sendInput();
  } else if (message.type === "queue") {
    app.queue = message.position;
    setStatus(message.position ? `waiting for a turn: position ${message.position}` : "your turn: flying");
  } else if (message.type === "chunk") {
    app.chunks.set(message.index, message);
    app.chunkMs = message.gen_ms;
    const last = message.actions[message.actions.length - 1];
    document.querySelectorAll(".hud-action").forEach((row, i) => {
      const srv = row.querySelector(".srv");
      srv.dataset.active = String(last[0][i]);
      srv.textContent = last[0][i] ? `server ${last[1][i].toPrecision(3)}` : "server -";
    });
  } else if (message.type === "recording") {
    showRecording(message);
  } else if (message.type === "error") {
    onError(ws, message);
  }
}

function onError(ws, message) {
  const text = `${message.code}: ${message.message}`;
  const field = errorField(message);
  if (field) fieldError(field, text); else say(text);
  if (message.code === "generation_failed") {   // the server ended the flight; its recording follows on this socket
    idle("the flight stopped: generation failed", true);
  } else if (message.code === "not_started" || app.stopping) {
    idle("stopped");
  } else if (!app.flying && app.wantFlight) {   // the start was refused
    if (message.code === "busy" && ws.retry) return;   // a reconnect: the close (1013) schedules the next try
    idle(field ? "not started: see the marked field" : "not started");
  }
}

function onFrameData(buffer) {
  const view = new DataView(buffer);
  app.player.push(view.getUint32(0), view.getUint32(4), new Uint8Array(buffer, 8));
}

function onFrame(chunkIndex, frameIndex) {
  const chunk = app.chunks.get(chunkIndex);
  if (!chunk || frameIndex !== chunk.first_frame) return;   // check once per chunk, at its first frame
  const now = performance.now();
  for (const [i, downAt] of app.pending) {
    if (chunk.actions.some((step) => step[0][i] === 1)) {
      app.latencies.push(Math.round(now - downAt));
      app.pending.delete(i);
    }
  }
  for (const old of app.chunks.keys()) if (old < chunkIndex - 4) app.chunks.delete(old);
}

function showRecording(message) {
  if (app.ws && !app.wantFlight) idle("stopped");
  if (!message.video) { $("recording").hidden = true; return; }
  $("recording").innerHTML = `recording (${message.frames} frames): <a id="rec-video" href="${withToken(message.video)}" download>video .mp4</a>` +
    `<a id="rec-actions" href="${withToken(message.actions)}" download>actions .json</a>`;
  $("recording").hidden = false;
}

function onClose(ws, event) {
  if (ws !== app.ws) return;
  const reason = `code ${event.code}${event.reason ? `: ${event.reason}` : ""}`;
  if (!app.wantFlight) {   // stopping, and the socket closed before the recording came
    idle("stopped");
    say(`the connection closed before the recording was ready (${reason})`);
    return;
  }
  if (event.code === 1008 || (!ws.opened && !ws.retry)) {   // a refused handshake shows up as 1006
    idle("not connected");
    if (app.config.token_required) fieldError("token", "the server refused the connection: check the token");
    else say("could not connect (the server refused the handshake or is down)");
    return;
  }
  if (!ws.gotReady && !ws.retry) {   // the server closed before the flight started
    idle("not started");
    say(`the connection closed before the flight started (${reason})`);
    return;
  }
  if (app.retries >= MAX_RETRIES) {
    idle("not connected");
    say(`the connection was lost ${MAX_RETRIES + 1} times (${reason}); press start to fly again`);
    return;
  }
  app.flying = false;
  app.player.expecting = false;
  $("focus-hint").hidden = true;
  $("stop").disabled = false;   // stop cancels the reconnect
  const delay = Math.min(15000, 1000 * 2 ** app.retries++);
  const why = event.code === 1013 ? "server full" : "connection lost";
  setStatus(`${why}: reconnecting in ${Math.round(delay / 1000)} s (stop cancels)`);
  let snapshot = null;
  if (app.player.shown > 0) snapshot = $("player").toDataURL("image/png");   // continue from the last frame shown
  app.retryTimer = setTimeout(() => startFlight(snapshot), delay);
}

function updateStats() {
  if (!app.player) return;
  $("stat-fps").textContent = app.player.displayFps;
  $("stat-chunk").textContent = app.chunkMs === null ? "-" : Math.round(app.chunkMs);
  $("stat-queue").textContent = app.queue;
  $("stat-stalls").textContent = app.player.stalls;
  $("stat-frames").textContent = app.player.shown;
  $("stat-buffer").textContent = app.player.buffered;
  const recent = app.latencies.slice(-5);
  $("stat-latency").textContent = recent.length ? Math.round(recent.reduce((a, b) => a + b, 0) / recent.length) : "-";
}

init().catch((error) => { setStatus("error"); say(String(error)); });
