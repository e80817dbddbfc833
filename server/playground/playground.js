// The trdq-server playground: plain DOM code served by the app itself (no build step,
// no dependency, nothing fetched from elsewhere). It talks to the same public API as any
// client: GET /info, POST /generate/image, POST /jobs/video and the job's event stream.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "trdq-playground-api-key";
const playground = { imagePrecisions: [], videoPrecisions: [], defaultQuant: null };

// --- talking to the server ---------------------------------------------------------

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// fetch with the key; a non-2xx reply throws an Error carrying the server's message.
async function api(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body.error) message = `${response.status} ${body.error.type}: ${body.error.message}`;
    } catch (_notJson) { /* keep the status line */ }
    throw new Error(message);
  }
  return response;
}

function postJson(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
}

// The job's server-sent events, read with fetch so the Authorization header goes along
// (EventSource cannot send headers). Calls onStatus(event, status) for each event and
// resolves with the final status.
async function followJobEvents(jobId, onStatus) {
  const response = await api(`/jobs/${jobId}/events`, { headers: { Accept: "text/event-stream" } });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return last;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (!data) continue; // a keep-alive comment
      last = JSON.parse(data);
      onStatus(event, last);
      if (event === "end") return last;
    }
  }
}

// --- page state ----------------------------------------------------------------------

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setBusy(busy) {
  for (const id of ["generate", "compare", "video"]) $(id).disabled = busy;
  if (!busy) {
    $("generate").disabled = $("compare").disabled = playground.imagePrecisions.length === 0;
    $("video").disabled = playground.videoPrecisions.length === 0;
  }
}

function precisionsOf(info, task) {
  const names = info.models.filter((m) => m.task === task).map((m) => m.quant);
  const unique = [...new Set(names)];
  // The server's default first, as TRDQ_QUANT lists it.
  return unique.sort((a, b) => (b === info.default_quant) - (a === info.default_quant));
}

async function loadInfo() {
  document.body.dataset.ready = "false";
  try {
    const info = await (await api("/info")).json();
    playground.defaultQuant = info.default_quant;
    playground.imagePrecisions = precisionsOf(info, "image");
    playground.videoPrecisions = precisionsOf(info, "video");
    const select = $("quant");
    select.replaceChildren(...playground.imagePrecisions.map((quant) => new Option(quant, quant)));
    const models = [...new Set(info.models.map((m) => `${m.name} (${m.task})`))];
    $("server-info").textContent = `${models.join(", ") || "no models loaded yet"} · ` +
      `precisions: ${playground.imagePrecisions.join(", ") || "none"} · device ${info.device}` +
      (info.ready ? "" : " · warming up");
    setStatus(info.ready ? "" : "the server is still loading its models");
  } catch (error) {
    playground.imagePrecisions = [];
    playground.videoPrecisions = [];
    $("server-info").textContent = "not connected";
    const needsKey = error.message.startsWith("401");
    setStatus(needsKey ? "this server needs its API key: enter it above" : error.message, true);
  }
  setBusy(false);
  document.body.dataset.ready = "true";
}

function numberField(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

function chosenSeed() {
  const seed = numberField("seed");
  return seed === null ? Math.floor(Math.random() * 2 ** 31) : seed;
}

function generationBody(seed, quant) {
  return {
    prompt: $("prompt").value,
    num_inference_steps: numberField("steps"),
    guidance_scale: numberField("guidance"),
    seed,
    quant,
  };
}

// --- images ---------------------------------------------------------------------------

function addResultCard(quant) {
  const card = document.createElement("figure");
  card.className = "result";
  card.dataset.quant = quant;
  card.dataset.state = "pending";
  const image = document.createElement("img");
  image.alt = `generated with ${quant}`;
  const caption = document.createElement("figcaption");
  caption.innerHTML = '<span class="quant"></span> <span class="latency">waiting…</span>';
  caption.querySelector(".quant").textContent = quant;
  card.append(image, caption);
  $("results").append(card);
  return card;
}

async function generateInto(card, seed) {
  const quant = card.dataset.quant;
  card.querySelector(".latency").textContent = "generating…";
  const started = performance.now();
  try {
    const body = { ...generationBody(seed, quant), width: numberField("width"),
                   height: numberField("height") };
    const reply = await (await postJson("/generate/image", body)).json();
    const seconds = (performance.now() - started) / 1000;
    const image = card.querySelector("img");
    image.src = `data:image/${reply.format};base64,${reply.images[0].b64}`;
    image.title = `${reply.model} · ${reply.width}x${reply.height} · seed ${reply.images[0].seed}`;
    card.dataset.latency = seconds.toFixed(3);
    card.querySelector(".latency").textContent =
      `${seconds.toFixed(2)} s (server ${reply.timings.total_s.toFixed(2)} s) · seed ${reply.images[0].seed}`;
    card.dataset.state = "done";
  } catch (error) {
    card.classList.add("failed");
    card.dataset.state = "failed";
    card.querySelector(".latency").textContent = error.message;
    throw error;
  }
}

async function runImages(precisions) {
  setBusy(true);
  $("results").replaceChildren();
  const seed = chosenSeed();
  const cards = precisions.map(addResultCard);
  setStatus(precisions.length > 1
    ? `comparing ${precisions.join(", ")} with seed ${seed}…` : `generating with seed ${seed}…`);
  try {
    // One after another, so each latency is that precision's alone.
    for (const card of cards) await generateInto(card, seed);
    setStatus(`done: seed ${seed}`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    setBusy(false);
  }
}

// --- video ----------------------------------------------------------------------------

function showProgress(status) {
  const progress = $("video-progress");
  const { step, total } = status.progress;
  progress.max = Math.max(total, 1);
  progress.value = step;
  const seen = progress.dataset.stepsSeen ? progress.dataset.stepsSeen.split(",") : [];
  seen.push(String(step));
  progress.dataset.stepsSeen = seen.join(",");
  $("video-progress-text").textContent = `${status.state} · step ${step} of ${total}`;
}

async function runVideo() {
  setBusy(true);
  const player = $("video-player");
  const progress = $("video-progress");
  progress.value = 0;
  progress.dataset.stepsSeen = "";
  player.hidden = true;
  const seed = chosenSeed();
  const quant = $("quant").value;
  const body = {
    ...generationBody(seed, playground.videoPrecisions.includes(quant) ? quant : null),
    num_frames: numberField("frames"),
    fps: numberField("fps"),
  };
  try {
    setStatus(`video job queued with seed ${seed}…`);
    const job = await (await postJson("/jobs/video", body)).json();
    const final = await followJobEvents(job.id, (_event, status) => showProgress(status));
    if (!final || final.state !== "succeeded") {
      const reason = final && final.error ? final.error.message : "the event stream ended early";
      throw new Error(`video job ${final ? final.state : "lost"}: ${reason}`);
    }
    const blob = await (await api(final.result_url, { headers: { Accept: "video/mp4" } })).blob();
    if (player.src) URL.revokeObjectURL(player.src);
    player.src = URL.createObjectURL(blob);
    player.hidden = false;
    await player.play().catch(() => { /* autoplay refused: the controls are there */ });
    setStatus(`video done: seed ${seed}, ${body.num_frames} frames`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    setBusy(false);
  }
}

// --- wiring ---------------------------------------------------------------------------

$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  runImages([$("quant").value]);
});
$("compare").addEventListener("click", () => runImages(playground.imagePrecisions));
$("video").addEventListener("click", runVideo);
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  loadInfo();
});
$("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
loadInfo();
