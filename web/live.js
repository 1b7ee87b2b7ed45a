// Live mode: the camera goes to the server over WebRTC; overlays, descriptions and answers come
// back over the session websocket (docs/protocol.md). The page draws overlays over its own local
// video, so what the person sees has no server round trip in it.
"use strict";

(function () {
  const FMU = window.FMU;
  const video = document.getElementById("live-video");

  let pc = null;
  let ws = null;
  let stream = null;
  let generation = 0; // bumps on every activate/deactivate so late callbacks from an old session stop
  let frameSize = null; // the frame size the server sees (may differ from the local video)
  let helloSeen = false;
  let latestOverlay = null;
  let drawScheduled = false;
  let lastStatus = null;
  const attempts = new Map(); // objectId -> the description attempt whose tokens are showing

  function send(msg) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      FMU.showError("not connected to the server yet; wait for the status to say connected");
      return false;
    }
    ws.send(JSON.stringify(msg));
    return true;
  }

  // Local video pixels -> the server's frame pixels (the browser may send a scaled-down stream).
  function toFrame(x, y) {
    const local = FMU.mediaSize();
    if (!frameSize || !local.width) return { x, y };
    return { x: (x * frameSize.width) / local.width, y: (y * frameSize.height) / local.height };
  }

  // Overlays are drawn on the next video frame the page shows. The local camera element has no
  // RTP timestamp to match the overlay's frame timestamp against, so the newest overlay wins;
  // the lag it carries is what the status line reports as step time.
  function scheduleDraw() {
    if (drawScheduled) return;
    drawScheduled = true;
    const draw = () => {
      drawScheduled = false;
      if (latestOverlay) FMU.drawOverlay(latestOverlay.objects, latestOverlay.frame_size);
    };
    if (video.requestVideoFrameCallback && !video.paused) video.requestVideoFrameCallback(draw);
    else requestAnimationFrame(draw);
  }

  function updateStatus() {
    if (!pc) return;
    const connected = helloSeen && pc.connectionState === "connected" && ws && ws.readyState === WebSocket.OPEN;
    if (!connected) {
      FMU.setStatus("connecting", `connecting (${pc.connectionState})`);
      return;
    }
    let text = "connected";
    if (lastStatus) {
      const step = lastStatus.step_ms == null ? "–" : `${Math.round(lastStatus.step_ms)} ms`;
      text = `connected · ${lastStatus.fps.toFixed(1)} fps · dropped ${lastStatus.frames_dropped} · step ${step}`;
    }
    FMU.setStatus("connected", text);
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "hello":
        helloSeen = true;
        if (!msg.descriptions) FMU.answer.note(msg.descriptions_off_reason || "descriptions are off");
        updateStatus();
        break;
      case "overlay":
        frameSize = msg.frame_size;
        latestOverlay = msg;
        scheduleDraw();
        break;
      case "objects":
        FMU.setObjects(msg.objects);
        if (msg.added != null) FMU.selectObject(msg.added);
        break;
      case "description_start":
        FMU.answer.reset(msg.object_id);
        break;
      case "description_token": {
        // A new attempt (the previous description missed the object) starts the text over.
        if (attempts.get(msg.object_id) !== msg.attempt) {
          attempts.set(msg.object_id, msg.attempt);
          FMU.answer.setText("", msg.object_id);
        }
        FMU.answer.append(msg.text, msg.object_id);
        break;
      }
      case "verdict":
        attempts.delete(msg.object_id);
        FMU.answer.setText(msg.description, msg.object_id);
        FMU.answer.setVerdict(msg.verdict, msg.iou, msg.attempts, msg.object_id);
        break;
      case "chat_token":
        FMU.answer.chat("assistant", msg.text, msg.object_id);
        break;
      case "chat_done":
        FMU.answer.chatDone(msg.object_id);
        break;
      case "find_result":
        if (!msg.objects.length) FMU.showError(msg.message || `nothing found for "${msg.phrase}"`);
        else if (msg.message) FMU.showError(msg.message);
        break;
      case "status":
        lastStatus = msg;
        if (!msg.descriptions && msg.descriptions_off_reason) FMU.answer.note(msg.descriptions_off_reason);
        updateStatus();
        break;
      case "error":
        if (msg.code === "vlm_off") FMU.answer.note(msg.message);
        else FMU.showError(msg.message);
        if (msg.fatal) FMU.setStatus("closed", "closed: " + msg.message);
        break;
      default:
        break;
    }
  }

  async function waitForIce(conn) {
    // Non-trickle ICE (aiortc answers once): send the offer with every candidate in it.
    if (conn.iceGatheringState === "complete") return;
    await new Promise((resolve) => {
      const done = () => {
        if (conn.iceGatheringState === "complete") {
          conn.removeEventListener("icegatheringstatechange", done);
          resolve();
        }
      };
      conn.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, 3000); // host candidates are enough on a LAN; do not hang on STUN
    });
  }

  async function start() {
    const gen = ++generation;
    FMU.setStatus("connecting", "starting the camera");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser gives no camera access here (a page over plain http needs localhost)");
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (e) {
      FMU.setStatus("error", "no camera");
      throw new Error(`could not open the camera (${e.name}): allow camera access and reload`);
    }
    if (gen !== generation) { stopStream(); return; }
    video.srcObject = stream;
    video.play().catch(() => {});

    pc = new RTCPeerConnection({ iceServers: [] });
    const conn = pc;
    for (const track of stream.getVideoTracks()) {
      const sender = conn.addTrack(track, stream);
      // Keep the server's frames the size the person sees; lower the frame rate instead.
      try {
        const params = sender.getParameters();
        params.degradationPreference = "maintain-resolution";
        sender.setParameters(params).catch(() => {});
      } catch (e) { /* optional */ }
    }
    conn.addEventListener("connectionstatechange", () => {
      if (gen !== generation) return;
      if (conn.connectionState === "failed" || conn.connectionState === "closed") {
        FMU.setStatus("closed", `connection ${conn.connectionState}; reload to reconnect`);
      } else {
        updateStatus();
      }
    });
    await conn.setLocalDescription(await conn.createOffer());
    await waitForIce(conn);
    if (gen !== generation) return;
    FMU.setStatus("connecting", "connecting to the server");
    const resp = await fetch("/api/live/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: conn.localDescription.sdp, type: conn.localDescription.type }),
    });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      FMU.setStatus(resp.status === 503 ? "busy" : "error", body && body.error === "busy" ? "busy" : "not connected");
      throw new Error((body && body.message) || `the server refused the connection (HTTP ${resp.status})`);
    }
    if (gen !== generation) return;
    await conn.setRemoteDescription({ sdp: body.sdp, type: body.type });
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${scheme}//${location.host}${body.websocket}`);
    const sock = ws;
    sock.addEventListener("message", (e) => {
      if (gen !== generation) return;
      let msg;
      try { msg = JSON.parse(e.data); } catch (err) { return; }
      onMessage(msg);
    });
    sock.addEventListener("open", updateStatus);
    sock.addEventListener("close", (e) => {
      if (gen !== generation) return;
      const why = e.reason ? `: ${e.reason}` : "";
      FMU.setStatus("closed", `disconnected (${e.code})${why}; reload to reconnect`);
    });
  }

  function stopStream() {
    if (stream) for (const t of stream.getTracks()) t.stop();
    stream = null;
  }

  function stop() {
    generation++;
    if (ws) ws.close(1000, "page left live mode");
    if (pc) pc.close();
    ws = null;
    pc = null;
    stopStream();
    video.srcObject = null;
    helloSeen = false;
    frameSize = null;
    latestOverlay = null;
    lastStatus = null;
  }

  FMU.registerMode("live", {
    activate() {
      start().catch((e) => FMU.showError(String(e && e.message || e)));
    },
    deactivate() {
      stop();
      FMU.clearOverlay();
    },
    click(x, y, negative, selectedObjectId) {
      if (!frameSize) {
        FMU.showError("no video has reached the server yet; wait a moment and click again");
        return;
      }
      const p = toFrame(x, y);
      FMU.clearError();
      send({ type: "click", x: p.x, y: p.y, positive: !negative, object_id: selectedObjectId });
    },
    find(phrase) {
      FMU.clearError();
      send({ type: "find", phrase });
    },
    describe(objectId) {
      send({ type: "describe", object_id: objectId });
    },
    chat(objectId, question) {
      if (send({ type: "chat", object_id: objectId, question })) FMU.answer.chat("user", question, objectId);
    },
    remove(objectId) {
      send({ type: "remove", object_id: objectId });
    },
    reset() {
      send({ type: "reset" });
    },
  });

  document.getElementById("live-reset").addEventListener("click", () => {
    FMU.clearError();
    send({ type: "reset" });
  });

  window.addEventListener("pagehide", stop);
})();
