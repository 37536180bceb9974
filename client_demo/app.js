// emolive demo client: no build step, no dependencies.
// Hooks for tests live on window.emolive (state, startMic, startFile, stop, grabFrame, capture*).
"use strict";

const $ = (id) => document.getElementById(id);
const WS_RATE = 16000;          // PCM16 mono rate the page sends on the WebSocket
const CHUNK = WS_RATE / 50;     // 20 ms
const LEAD_MS = 100;            // how far ahead of real time the sender may run

const state = {
  status: "idle", session: null, pc: null, ws: null, mic: null, sender: null, ended: null,
  t0: 0, framesPresented: 0, framesDecoded: 0, framesDropped: 0, fps: 0,
  latencyMs: null, serverDropped: 0, events: [], captures: [], captureTimer: null, statsTimer: null,
  marks: {},  // performance.now() of each start-up step, for the overlay and for tests
};

function mark(name) { state.marks[name] = performance.now(); }

function setStatus(text, kind = "ok") {
  state.status = text;
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind === "error" ? "error" : text.split(" ")[0];
}

// A server started with an API key wants it on every call but a session's own (those take
// the session's token): the page asks for it on the first 401 and keeps it for this tab.
const API_KEY = "emolive-api-key";

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.session && path.startsWith("/v1/sessions/")) headers.Authorization = `Bearer ${state.session.token}`;
  else if (sessionStorage.getItem(API_KEY)) headers["X-API-Key"] = sessionStorage.getItem(API_KEY);
  if (options.json !== undefined) { headers["Content-Type"] = "application/json"; options.body = JSON.stringify(options.json); }
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 204) return null;
  if ([401, 403].includes(response.status) && !headers.Authorization) $("api-key-field").hidden = false;
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// -- avatars --------------------------------------------------------------------------

async function loadAvatars(select) {
  const { avatars } = await api("/v1/avatars");
  const list = $("avatar-select");
  list.innerHTML = "";
  for (const a of avatars) {
    const option = document.createElement("option");
    option.value = a.id;
    option.textContent = a.builtin ? `${a.id} (bundled)` : `${a.name} (${a.id})`;
    list.appendChild(option);
  }
  if (select) list.value = select;
}

async function uploadAvatar(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  $("avatar-status").textContent = "registering…";
  try {
    const info = await api("/v1/avatars", { method: "POST", body: form });
    await loadAvatars(info.id);
    $("avatar-status").textContent = `registered ${info.id}`;
    return info;
  } catch (error) {
    $("avatar-status").textContent = error.message;
    throw error;
  }
}

// -- session, WebSocket, peer ----------------------------------------------------------

async function createSession(mode) {
  state.ended = null;
  state.session = await api("/v1/sessions", { method: "POST", json: {
    avatar_id: $("avatar-select").value || "default", mode,
    head_motion: parseFloat($("head-motion").value), expressiveness: parseFloat($("expressiveness").value),
  } });
  return state.session;
}

function logEvent(message) {
  state.events.push(message);
  const item = document.createElement("li");
  item.textContent = JSON.stringify(message);
  const list = $("events");
  list.appendChild(item);
  while (list.children.length > 50) list.removeChild(list.firstChild);
  list.scrollTop = list.scrollHeight;
}

function openSocket(want) {
  const { session_id, token } = state.session;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/v1/sessions/${session_id}/ws?token=${encodeURIComponent(token)}`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  return new Promise((resolve, reject) => {
    ws.onopen = () => ws.send(JSON.stringify({ type: "start", sample_rate: WS_RATE, want }));
    ws.onerror = () => reject(new Error("WebSocket failed"));
    ws.onclose = () => {
      // A session that ended said why in its "closed" message, which stays on the status line.
      if (state.ws === ws && state.status !== "idle" && !state.ended) setStatus("disconnected", "error");
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      const message = JSON.parse(event.data);
      if (message.type === "started") resolve(message);
      if (message.type === "closed") sessionEnded(message);
      if (message.type !== "motion") logEvent(message);
    };
  });
}

function sessionEnded({ reason, failure }) {
  // Stop stays enabled: it releases the microphone and the peer connection.
  state.ended = { reason, failure };
  stopStats();
  $("interrupt").disabled = true;
  setStatus(failure ? `session failed (${failure}): ${reason}` : `session ended: ${reason}`, failure ? "error" : "ok");
}

function iceGatheringDone(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

async function connectPeer(micTrack) {
  // The server names the STUN/TURN servers (with TURN credentials) for this session.
  const pc = new RTCPeerConnection({ iceServers: state.session.ice_servers || [] });
  state.pc = pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  if (micTrack) pc.addTransceiver(micTrack, { direction: "sendrecv" });
  else pc.addTransceiver("audio", { direction: "recvonly" });
  const remote = new MediaStream();
  pc.ontrack = (event) => {
    remote.addTrack(event.track);
    $("video").srcObject = remote;
  };
  const connected = new Promise((resolve, reject) => {
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "connected") { mark("connected"); setStatus("streaming"); resolve(); }
      if (pc.connectionState === "failed") {
        const reason = "WebRTC connection failed: no network route between this browser and the server " +
          "(a server on another machine needs reachable UDP or a TURN server, EMOLIVE_ICE_SERVERS)";
        if (!state.ended) setStatus(reason, "error");
        reject(new Error(reason));
      }
    };
  });
  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringDone(pc);
  mark("gathered");
  const answer = await api(`/v1/sessions/${state.session.session_id}/offer`, {
    method: "POST", json: { sdp: pc.localDescription.sdp, type: "offer" } });
  mark("answer");
  await pc.setRemoteDescription(answer);
  return connected;
}

// -- modes ----------------------------------------------------------------------------

async function startMic() {
  await stop();
  setStatus("starting");
  state.marks = {};
  mark("start");
  try {
    // Ask for the microphone and create the session at the same time.
    const [stream] = await Promise.all([
      navigator.mediaDevices.getUserMedia({ audio: true, video: false }).then((s) => { mark("microphone"); return s; }),
      createSession("puppet").then(() => mark("session")),
    ]);
    state.mic = stream;
    state.t0 = state.marks.microphone;
    await openSocket(["events"]);
    mark("websocket");
    await connectPeer(stream.getAudioTracks()[0]);
    startStats();
    setButtons(true);
  } catch (error) {
    if (!state.ended) setStatus(`error: ${error.message}`, "error");
    throw error;
  }
}

async function decodeTo16k(arrayBuffer) {
  const context = new AudioContext();
  const decoded = await context.decodeAudioData(arrayBuffer);
  context.close();
  const offline = new OfflineAudioContext(1, Math.ceil(decoded.duration * WS_RATE), WS_RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;           // multi-channel input is down-mixed to the mono destination
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  const floats = rendered.getChannelData(0);
  const pcm = new Int16Array(floats.length);
  for (let i = 0; i < floats.length; i++) {
    const v = Math.max(-1, Math.min(1, floats[i]));
    pcm[i] = v < 0 ? v * 32768 : v * 32767;
  }
  return pcm;
}

function streamPcm(pcm) {
  // Send 20 ms chunks in real time (a little ahead, so the server never starves), then end the turn.
  return new Promise((resolve) => {
    const start = performance.now();
    let sent = 0;
    const timer = setInterval(() => {
      const ws = state.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) { clearInterval(timer); resolve(false); return; }
      const due = Math.min(pcm.length, Math.floor(((performance.now() - start + LEAD_MS) / 1000) * WS_RATE));
      while (sent < due) {
        const end = Math.min(sent + CHUNK, pcm.length);
        ws.send(pcm.slice(sent, end).buffer);
        sent = end;
      }
      if (sent >= pcm.length) {
        ws.send(JSON.stringify({ type: "end_of_turn" }));
        clearInterval(timer);
        state.sender = null;
        resolve(true);
      }
    }, 10);
    state.sender = timer;
  });
}

async function startFile(arrayBuffer) {
  await stop();
  setStatus("starting");
  try {
    state.marks = {};
    mark("start");
    const pcm = await decodeTo16k(arrayBuffer);
    await createSession("tts");
    mark("session");
    await openSocket(["events"]);
    mark("websocket");
    await connectPeer(null);
    startStats();
    setButtons(true);
    state.t0 = performance.now();
    return await streamPcm(pcm);
  } catch (error) {
    if (!state.ended) setStatus(`error: ${error.message}`, "error");
    throw error;
  }
}

function interrupt() {
  if (state.sender) { clearInterval(state.sender); state.sender = null; }
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify({ type: "interrupt" }));
}

async function stop() {
  if (state.sender) { clearInterval(state.sender); state.sender = null; }
  stopStats();
  const session = state.session;
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  if (state.pc) { state.pc.close(); state.pc = null; }
  if (state.mic) { state.mic.getTracks().forEach((t) => t.stop()); state.mic = null; }
  if (session) {
    await api(`/v1/sessions/${session.session_id}`, { method: "DELETE", keepalive: true }).catch(() => {});
    state.session = null;
  }
  setButtons(false);
  setStatus("idle");
}

function startupMs() {
  const m = state.marks;
  return m.firstFrame && m.start ? m.firstFrame - m.start : null;
}

function setButtons(running) {
  $("stop").disabled = !running;
  $("interrupt").disabled = !running;
}

// -- stats ----------------------------------------------------------------------------

function startStats() {
  stopStats();
  state.statsTimer = setInterval(updateStats, 1000);
}

function stopStats() {
  if (state.statsTimer) clearInterval(state.statsTimer);
  state.statsTimer = null;
}

async function updateStats() {
  const pc = state.pc;
  if (!pc) return;
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      state.framesDecoded = s.framesDecoded || 0;
      state.framesDropped = s.framesDropped || 0;
      state.fps = s.framesPerSecond || 0;
      if (s.jitterBufferEmittedCount) {
        $("stats-jitter").textContent = (1000 * s.jitterBufferDelay / s.jitterBufferEmittedCount).toFixed(0);
      }
    }
  });
  if (state.session) {
    try {
      const info = await api(`/v1/sessions/${state.session.session_id}`);
      state.latencyMs = info.latency_ms;
      state.serverDropped = info.frames_dropped;
    } catch (_) { /* the session may just have closed */ }
  }
  $("stats-fps").textContent = state.fps.toFixed(1);
  $("stats-frames").textContent = String(state.framesDecoded);
  $("stats-dropped").textContent = String(state.framesDropped + state.serverDropped);
  $("stats-latency").textContent = state.latencyMs == null ? "–" : state.latencyMs.toFixed(0);
  const startup = startupMs();
  $("stats-startup").textContent = startup == null ? "–" : startup.toFixed(0);
}

function countPresented() {
  const video = $("video");
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  const tick = (_now, metadata) => {
    if (!state.marks.firstFrame) mark("firstFrame");
    state.framesPresented = metadata.presentedFrames;
    video.requestVideoFrameCallback(tick);
  };
  video.requestVideoFrameCallback(tick);
}

// -- frame grabs (tests, screenshots) -------------------------------------------------

function grabFrame(type = "image/png", quality = 0.92) {
  const video = $("video");
  if (!video.videoWidth) return null;
  const canvas = $("grab");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return canvas.toDataURL(type, quality);
}

function captureEvery(intervalMs, type = "image/jpeg", quality = 0.92) {
  captureStop();
  state.captures = [];
  state.captureTimer = setInterval(() => {
    const data = grabFrame(type, quality);
    if (data) state.captures.push({ t: performance.now() - state.t0, data });
  }, intervalMs);
}

function captureStop() {
  if (state.captureTimer) clearInterval(state.captureTimer);
  state.captureTimer = null;
  return state.captures.length;
}

// -- wiring ---------------------------------------------------------------------------

$("api-key").addEventListener("change", (e) => {
  sessionStorage.setItem(API_KEY, e.target.value.trim());
  loadAvatars().then(() => { setStatus("idle"); document.body.dataset.ready = "1"; })
    .catch((error) => setStatus(`cannot list avatars: ${error.message}`, "error"));
});
$("avatar-upload").addEventListener("change", (e) => { if (e.target.files[0]) uploadAvatar(e.target.files[0]).catch(() => {}); });
$("audio-file").addEventListener("change", (e) => { $("start-file").disabled = !e.target.files[0]; });
$("start-mic").addEventListener("click", () => startMic().catch(() => {}));
$("start-file").addEventListener("click", async () => {
  const file = $("audio-file").files[0];
  if (file) startFile(await file.arrayBuffer()).catch(() => {});
});
$("interrupt").addEventListener("click", interrupt);
$("stop").addEventListener("click", () => stop());
window.addEventListener("pagehide", () => { stop(); });
countPresented();
loadAvatars().then(() => { document.body.dataset.ready = "1"; })
  .catch((error) => setStatus(`cannot list avatars: ${error.message}`, "error"));

window.emolive = { state, startupMs, startMic, startFile, stop, interrupt, uploadAvatar, loadAvatars, grabFrame, captureEvery, captureStop };
