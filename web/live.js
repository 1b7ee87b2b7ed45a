// Live mode: the camera goes to the server over WebRTC; overlays, descriptions and answers come
// back over the session websocket (docs/protocol.md). Two ways to draw them (the "synced overlay"
// toggle, kept in localStorage): over the live local video, so the picture has no server round
// trip in it and the masks are a tracker step behind; or synced, each mask over the frame it was
// computed on (web/synced.js), the picture as late as the masks.
import { openSocket, RETRY } from "./client.js";
import { createBusyRetry } from "./live_busy.js";
import { createLiveRequests } from "./live_requests.js";
import { createFrameRing, syncSupported } from "./synced.js";

const SYNCED_KEY = "fmu.syncedOverlay";
// The session a tab left with objects (a reload), for the reloaded page to take them back: written
// as the page goes and taken once (a tab duplicated while live copies no id of a session it would
// take from its original).
const LEFT_KEY = "fmu.liveSessionLeft";

function takeLeftSession() {
  try {
    const id = sessionStorage.getItem(LEFT_KEY);
    sessionStorage.removeItem(LEFT_KEY);
    return id;
  } catch (e) { return null; }
}

function storedSynced() {
  try { return localStorage.getItem(SYNCED_KEY) === "1"; } catch (e) { return false; }
}

export function createLiveMode(shell) {
  const { store, stage } = shell;
  const video = document.getElementById("live-video");
  const stageEl = document.getElementById("stage");
  const overlayCanvas = document.getElementById("overlay");
  const busy = createBusyRetry({ shell, statusEl: document.getElementById("status") });
  const syncedFrame = document.getElementById("synced-frame");
  const syncedToggle = document.getElementById("synced-toggle");
  let synced = syncSupported() && storedSynced();
  let ring = null; // synced mode's kept frames (web/synced.js)
  let shownLateMs = null; // synced mode: how far behind the live camera the painted frame is

  let pc = null;
  let sender = null; // the video sender: the synced toggle swaps its track on the same connection
  let ws = null;
  let stream = null;
  let generation = 0; // bumps on every activate/deactivate so late callbacks from an old session stop
  let frameSize = null; // the frame size the server sees (may differ from the local video)
  let textLimits = null; // the server's (capabilities.text_limits)
  let helloSeen = false;
  let latestOverlay = null;
  let drawScheduled = false;
  let lastStatus = null;
  // Reconnect: the session id the server gave us (its objects come back with a new offer that
  // names it, within the server's idle timeout), the retry timer, and whether the server ended
  // the session on purpose (a fatal error), when there is nothing to go back to.
  let sessionId = null;
  let restoring = false; // a resume was answered: its objects come back with the first frame
  // The session whose objects the server parks when this connection goes, for the next one to
  // take back: this one, when it has objects or a resume's are still on their way (the server
  // parks only objects; a resume of a session with none is refused, and says so).
  const parkedFrom = () => (sessionId && (store.all().length || restoring) ? sessionId : null);
  let retryTimer = null;
  let retries = 0;
  let endedOnPurpose = false;
  // A session the server ended on a bug of its own keeps its objects there, and the next start
  // of Live in this tab takes them back (not a reconnect by itself: a bug met again would end
  // each new session the same way).
  let leftOnError = null;

  function send(msg) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      shell.showError("not connected to the server yet; wait for the status to say connected");
      return false;
    }
    ws.send(JSON.stringify(msg));
    return true;
  }

  // Local video pixels -> the server's frame pixels (the browser may send a scaled-down stream).
  const toFrame = (x, y) => (frameSize ? stage.toFrame(x, y, frameSize) : { x, y });

  // Live video: overlays are drawn on the next video frame the page shows; the local camera
  // element has no RTP timestamp to match the overlay's frame against, so the newest overlay wins
  // and trails a moving object by what the status line reports as step time.
  // Synced: the overlay names the frame it was computed on (frame_id); that kept frame is painted
  // with its masks, on the next animation frame. An overlay whose frame has left the ring (a
  // tracker slower than the ring is long) is skipped: the last synced picture stays.
  function scheduleDraw() {
    if (drawScheduled) return;
    drawScheduled = true;
    const draw = () => {
      drawScheduled = false;
      if (!latestOverlay) return;
      if (ring) {
        const kept = ring.frame(latestOverlay.frame_id);
        if (!kept) return;
        paintSynced(kept, latestOverlay);
      }
      stage.draw(latestOverlay.objects, latestOverlay.frame_size);
      overlayCanvas.dataset.frameIndex = String(latestOverlay.frame_index); // tests, benchmarks
    };
    if (!ring && video.requestVideoFrameCallback && !video.paused) video.requestVideoFrameCallback(draw);
    else requestAnimationFrame(draw);
  }

  function paintSynced(kept, overlay) {
    const src = kept.canvas;
    if (syncedFrame.width !== src.width || syncedFrame.height !== src.height) {
      syncedFrame.width = src.width;
      syncedFrame.height = src.height;
    }
    syncedFrame.getContext("2d").drawImage(src, 0, 0);
    syncedFrame.hidden = false;
    syncedFrame.dataset.frameId = String(overlay.frame_id);
    syncedFrame.dataset.frameIndex = String(overlay.frame_index);
    shownLateMs = performance.now() - kept.shownAt;
  }

  function updateStatus() {
    if (!pc) return;
    const connected = helloSeen && pc.connectionState === "connected" && ws && ws.readyState === WebSocket.OPEN;
    if (!connected) {
      shell.setStatus("connecting", `connecting (${pc.connectionState})`);
      return;
    }
    let text = "connected";
    // Figures only once an overlay came back: before it, a click has no frame to land on.
    if (!frameSize) text = "connected · waiting for the first tracked frame";
    else if (lastStatus) {
      const step = lastStatus.step_ms == null ? "–" : `${Math.round(lastStatus.step_ms)} ms`;
      text = `connected · ${lastStatus.fps.toFixed(1)} fps · dropped ${lastStatus.frames_dropped} · step ${step}`;
      if (ring && shownLateMs != null) text += ` · synced, ${Math.round(shownLateMs)} ms late`;
    }
    shell.setStatus("connected", text, lastStatus ?
      "fps: frames the tracker processed per second · dropped: camera frames skipped to stay live " +
      "(the tracker takes the newest frame when it is free) · step: time of one tracker step" +
      (ring ? " · synced: the picture shown is the frame the masks were computed on, this much " +
        "behind the camera" : "") : "");
  }

  function onMessage(msg) {
    if (msg.type === "objects" && msg.restored) restoring = false;
    if (store.apply(msg)) {
      if (msg.type === "error" && msg.fatal) {
        endedOnPurpose = true;
        leftOnError = msg.code === "internal" ? parkedFrom() : null;
        const again = leftOnError ? "take your objects back" : "start again";
        shell.setStatus("closed", `closed: ${msg.message} (go to Clip or Image and back to Live to ${again})`);
      }
      return;
    }
    switch (msg.type) {
      case "hello":
        helloSeen = true;
        retries = 0;
        if (busy.connected()) shell.clearError(); // the "no room" that it waited out
        shell.setDescriptions(msg.descriptions, msg.descriptions_off_reason);
        updateStatus();
        break;
      case "overlay":
        if (!frameSize) {
          frameSize = msg.frame_size;
          updateStatus();
        }
        frameSize = msg.frame_size;
        latestOverlay = msg;
        scheduleDraw();
        break;
      case "status":
        lastStatus = msg;
        if (msg.descriptions !== (shell.descriptionsOff() == null)) {
          shell.setDescriptions(msg.descriptions, msg.descriptions_off_reason);
        }
        updateStatus();
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

  // The connection dropped: start again with the old session named, so its objects come back.
  function reconnect(why) {
    if (endedOnPurpose) return;
    const resumeFrom = parkedFrom();
    stop(resumeFrom ? 4000 : 1000); // 4000: the server parks the objects for the session that resumes it
    store.connectionLost(); // a description under way went with the old session
    retries += 1;
    shell.setStatus("connecting", `reconnecting (${why}; try ${retries})…`);
    const gen = generation;
    retryTimer = setTimeout(() => {
      retryTimer = null;
      if (gen !== generation) return;
      start(resumeFrom).catch((e) => {
        if (gen !== generation - 1 && gen !== generation) return;
        if (retries < RETRY.tries) reconnect(String((e && e.message) || e));
        else shell.showError(String((e && e.message) || e));
      });
    }, RETRY.delayMs(retries));
  }

  // resumeId: the session whose objects to take back (a reconnect; afterReload: the session this
  // tab left with a reload).
  async function start(resumeId = null, afterReload = false) {
    const gen = ++generation;
    try {
      await connect(gen, resumeId, afterReload);
    } catch (e) {
      // Left (or started again) meanwhile: its failure, a refusal or a call on the connection
      // stop() closed, is not news for the mode shown now.
      if (gen === generation) throw e;
    }
  }

  // No camera: the error says why, and so does the black stage once the error is dismissed.
  function noCamera(status, why) {
    shell.setStatus("error", status);
    stageEl.dataset.noCamera = why;
    return new Error(why);
  }

  async function connect(gen, resumeId, afterReload) {
    endedOnPurpose = false;
    delete stageEl.dataset.noCamera;
    shell.setStatus("connecting", "starting the camera");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw noCamera("no camera access",
        `this browser gives a page its camera only on localhost or over HTTPS: open http://localhost:${location.port || 80} ` +
        "on the machine that runs the service, or start it with --ssl-certfile/--ssl-keyfile (README: A phone on the LAN). " +
        "Clip and Image work here as they are."
      );
    }
    let camera;
    try {
      camera = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (e) {
      if (gen !== generation) return; // Live was left while the browser asked: not this tab's news
      throw noCamera("no camera", `could not open the camera (${e.name}): allow camera access and reload, or use Clip or Image, which need no camera`);
    }
    // The STUN/TURN servers (--ice-servers) for a peer behind NAT; the text limits Live keeps to.
    const caps = await shell.capabilities().catch(() => ({}));
    // Left (or started again) while the browser answered: this camera is no one's, and the
    // page's `stream` may be a newer start's, not to be touched.
    if (gen !== generation) { for (const t of camera.getTracks()) t.stop(); return; }
    stream = camera;
    textLimits = caps.text_limits || null;
    video.srcObject = stream;
    video.play().catch(() => {});

    pc = new RTCPeerConnection({ iceServers: caps.ice_servers || [] });
    const conn = pc;
    if (synced) ring = createFrameRing(video);
    const track = ring ? ring.track : stream.getVideoTracks()[0];
    sender = conn.addTrack(track);
    // Keep the server's frames the size the person sees; lower the frame rate instead.
    try {
      const params = sender.getParameters();
      params.degradationPreference = "maintain-resolution";
      sender.setParameters(params).catch(() => {});
    } catch (e) { /* optional */ }
    conn.addEventListener("connectionstatechange", () => {
      if (gen !== generation) return;
      if (conn.connectionState === "failed" || conn.connectionState === "closed") {
        reconnect(`connection ${conn.connectionState}`);
      } else {
        updateStatus();
      }
    });
    await conn.setLocalDescription(await conn.createOffer());
    await waitForIce(conn);
    if (gen !== generation) return;
    shell.setStatus("connecting", "connecting to the server");
    const offer = { sdp: conn.localDescription.sdp, type: conn.localDescription.type };
    if (resumeId) offer.resume = resumeId;
    if (ring) offer.frame_ids = true;
    let resp;
    try {
      resp = await fetch("/api/live/offer", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(offer),
      });
    } catch (e) {
      if (gen !== generation) return; // left meanwhile: no reconnect (it would turn the camera on)
      if (resumeId) { reconnect("the server cannot be reached"); return; }
      throw new Error("the server cannot be reached; check that it is running and reload the page");
    }
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (gen !== generation) return;
    if (resp.status === 503 && body && body.code === "busy") {
      // No room now: no session, so no camera either, and it tries again by itself.
      stop();
      const again = () => start(resumeId, afterReload).catch((e) => shell.showError(String((e && e.message) || e)));
      if (busy.refused(body.detail, again)) shell.showError(body.detail); // once, not every try
      return;
    }
    if (!resp.ok) {
      shell.setStatus(resp.status === 503 ? "busy" : "error", body && body.code === "busy" ? "busy" : "not connected");
      throw new Error((body && body.detail) || `the server refused the connection (HTTP ${resp.status})`);
    }
    if (gen !== generation) return;
    sessionId = body.session_id;
    restoring = !!(resumeId && body.resumed);
    if (resumeId && !body.resumed) {
      store.setObjects([]);
      const what = afterReload ? "reloaded, but the server no longer had this tab's objects" : "reconnected, but the server no longer had this session's objects";
      shell.showError(`${what} (it keeps them for its idle timeout): click them again`);
    }
    await conn.setRemoteDescription({ sdp: body.sdp, type: body.type });
    if (gen !== generation) return;
    ws = openSocket(body.websocket, {
      onMessage: (msg) => { if (gen === generation) onMessage(msg); },
      onOpen: updateStatus,
      onClose: (e) => {
        if (gen !== generation) return;
        if (e.code === 1009) endedOnPurpose = false; // a message too big: the objects wait for a resume
        if (endedOnPurpose) {
          // The server ended it for good (its fatal error said why, in the status): the camera
          // and the peer connection go too; another visit to Live starts a new session.
          stop();
          return;
        }
        const why = e.reason ? `: ${e.reason}` : "";
        reconnect(`disconnected (${e.code})${why}`);
      },
    });
  }

  function stopStream() {
    if (stream) for (const t of stream.getTracks()) t.stop();
    stream = null;
  }

  // closeCode 1000 ends the session for good; another keeps its objects for a resume.
  function stop(closeCode = 1000) {
    generation++;
    if (retryTimer) clearTimeout(retryTimer);
    retryTimer = null;
    busy.halt();
    if (ws) ws.close(closeCode, closeCode === 1000 ? "page left live mode" : "page starts again");
    if (pc) pc.close();
    ws = null;
    pc = null;
    sender = null;
    if (ring) ring.stop();
    ring = null;
    shownLateMs = null;
    syncedFrame.hidden = true;
    stopStream();
    video.srcObject = null;
    helloSeen = false;
    frameSize = null;
    latestOverlay = null;
    lastStatus = null;
  }

  // A reload (or a tab closed) leaves a session with objects as a dropped connection does: the
  // server keeps them a while, and the reloaded page takes them back (activate).
  window.addEventListener("pagehide", () => {
    const leaving = pc ? parkedFrom() : null;
    if (leaving) {
      try { sessionStorage.setItem(LEFT_KEY, leaving); } catch (e) { /* private mode */ }
    }
    stop(leaving ? 4000 : 1000);
  });

  syncedToggle.checked = synced;
  if (!syncSupported()) {
    syncedToggle.disabled = true;
    syncedToggle.parentElement.title = "this browser cannot keep the frames it sends (no requestVideoFrameCallback or canvas captureStream)";
  }
  // Switching swaps the track the connection sends and tells the server (frame_ids): the session,
  // its objects and the tracker's memory of them go on. Before the session's websocket is open
  // the offer may already have said the other way: then the session starts again, resumed.
  syncedToggle.addEventListener("change", async () => {
    synced = syncedToggle.checked;
    try { localStorage.setItem(SYNCED_KEY, synced ? "1" : "0"); } catch (e) { /* private mode */ }
    if (!pc) return;
    if (!sender || !stream || !ws || ws.readyState !== WebSocket.OPEN) {
      const resumeFrom = parkedFrom();
      stop(resumeFrom ? 4000 : 1000);
      stage.clear();
      start(resumeFrom).catch((e) => shell.showError(String((e && e.message) || e)));
      return;
    }
    const gen = generation;
    const old = ring;
    ring = synced ? createFrameRing(video) : null;
    try {
      await sender.replaceTrack(ring ? ring.track : stream.getVideoTracks()[0]);
    } catch (e) {
      if (gen !== generation) { if (old) old.stop(); return; } // stopped meanwhile
      shell.showError(`could not switch the synced overlay: ${(e && e.message) || e}`);
      if (ring) ring.stop();
      ring = old;
      syncedToggle.checked = synced = !!old;
      return;
    }
    if (old) old.stop();
    if (gen !== generation) return; // stopped meanwhile (and the new ring with it)
    send({ type: "frame_ids", on: !!ring });
    shownLateMs = null;
    if (!ring) syncedFrame.hidden = true;
    updateStatus();
  });

  return {
    ...createLiveRequests({ send, store, allCandidates: () => shell.allCandidates(), limits: () => textLimits }),
    activate() {
      const left = takeLeftSession();
      const afterError = leftOnError;
      leftOnError = null;
      start(left || afterError, !!left).catch((e) => shell.showError(String((e && e.message) || e)));
    },
    deactivate() {
      stop();
      busy.cancel();
      sessionId = null;
      retries = 0;
      stage.clear();
    },
    click(x, y, negative, objectId) {
      if (!frameSize) throw new Error("no video has reached the server yet; wait a moment and click again");
      const p = toFrame(x, y);
      send({ type: "click", x: p.x, y: p.y, positive: !negative, object_id: objectId });
    },
  };
}
