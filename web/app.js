// wanfly browser client: config, flight WebSocket (docs/protocol.md), HUD, stats, recording, reconnects.
import { Player } from "./player.js";
import { Input } from "./input.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
if (params.get("token")) localStorage.setItem("wanfly_token", params.get("token"));

const app = {
  config: null, ws: null, flying: false, wantFlight: false, seq: 0, chunks: new Map(),
  pending: new Map(),            // action index -> time its key went down, until a frame shows it
  latencies: [], retries: 0, retryTimer: null, upload: null, lastMessage: null, chunkMs: null, queue: "-",
};
window.wanfly = app;             // for debugging and the browser tests

const token = () => $("token").value || localStorage.getItem("wanfly_token") || "";
const withToken = (url) => (token() ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token())}` : url);
const setStatus = (text) => { $("status").textContent = text; };
const say = (text) => { $("message").textContent = text || ""; };

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
  $("banner").classList.toggle("banner-info", !untrained);
  $("banner").hidden = false;
  $("prompt").value = world.prompt;
  $("steps").value = world.steps;
  $("steps").max = config.limits.max_steps;
  $("token-row").hidden = !config.token_required;
  $("token").value = localStorage.getItem("wanfly_token") || "";
  $("gradio-link").hidden = !config.gradio;
  for (const name of config.samples) $("sample").add(new Option(name, name));
  if (world.sample && config.samples.includes(world.sample)) $("sample").value = world.sample;
  $("sample").addEventListener("change", showPreview);
  $("upload").addEventListener("change", readUpload);
  showPreview();
  app.player = new Player($("player"), { onFrame });
  app.player.configure(world.fps, world.width, world.height);
  app.input = new Input($("player"), config.bindings, config.actions.length, onInput);
  buildHud(config);
  $("start").disabled = false;
  $("start").addEventListener("click", () => { app.retries = 0; startFlight(null); });
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
  setStatus(`ready: ${world.name}, ${world.width}x${world.height}, ${world.fps} fps${causal}${guidance}`);
}

function showPreview() {
  $("preview").src = app.upload || `samples/${$("sample").value}.png`;
}

function readUpload() {
  const file = $("upload").files[0];
  if (!file) { app.upload = null; showPreview(); return; }
  if (file.size > app.config.limits.max_upload_bytes) { say(`image too large (max ${app.config.limits.max_upload_bytes} bytes)`); return; }
  const reader = new FileReader();
  reader.onload = () => { app.upload = reader.result; showPreview(); };
  reader.readAsDataURL(file);
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
    const seed = $("seed").value === "" ? undefined : Number($("seed").value);
    const start = { type: "start", prompt: $("prompt").value, image: image || app.upload || null, steps: Number($("steps").value) };
    if (!start.image) start.sample = $("sample").value;
    if (seed !== undefined) start.seed = seed;
    send(start);
    setStatus("starting...");
  };
  ws.onmessage = (event) => (typeof event.data === "string" ? onMessage(JSON.parse(event.data)) : onFrameData(event.data));
  ws.onclose = (event) => onClose(ws, event);
  $("start").disabled = true;
  $("stop").disabled = false;
}

function stopFlight() {
  app.wantFlight = false;
  send({ type: "stop" });
  app.flying = false;
  app.player.expecting = false;
  $("stop").disabled = true;
  setStatus("stopping: preparing the recording...");
}

function onMessage(message) {
  app.lastMessage = message;
  if (message.type === "ready") {
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
    say(`${message.code}: ${message.message}`);
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
  setStatus("stopped");
  $("start").disabled = false;
  if (!message.video) { $("recording").hidden = true; return; }
  $("recording").innerHTML = `recording (${message.frames} frames): <a id="rec-video" href="${withToken(message.video)}" download>video .mp4</a>` +
    `<a id="rec-actions" href="${withToken(message.actions)}" download>actions .json</a>`;
  $("recording").hidden = false;
  if (app.ws) app.ws.close(1000);
}

function onClose(ws, event) {
  if (ws !== app.ws) return;
  app.flying = false;
  app.player.expecting = false;
  $("stop").disabled = true;
  if (!app.wantFlight) { $("start").disabled = false; return; }
  if (event.code === 1008 || (!ws.opened && !ws.retry)) {   // a refused handshake shows up as 1006
    app.wantFlight = false;
    $("start").disabled = false;
    setStatus("not connected");
    say(app.config.token_required ? "the server refused the connection: check the token" :
      "could not connect (the server refused the handshake or is down)");
    return;
  }
  const delay = Math.min(15000, 1000 * 2 ** app.retries++);
  const why = event.code === 1013 ? "server full" : "connection lost";
  setStatus(`${why}: reconnecting in ${Math.round(delay / 1000)} s`);
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
