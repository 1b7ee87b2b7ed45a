// The one client every mode talks to the server through: JSON requests, NDJSON event streams
// and websockets. Errors are Error objects whose message is the server's reason.

// The server's reason for an error status and its code: every HTTP error's body is
// {"code", "detail"} (docs/protocol.md, "HTTP errors").
async function refusal(r) {
  try {
    const body = await r.json();
    if (typeof body.detail === "string") return { message: body.detail, code: body.code || null };
  } catch (e) { /* not JSON: a proxy's own page */ }
  return { message: `the server answered ${r.status} ${r.statusText}`, code: null };
}

// A request; body is JSON, FormData or absent. Resolves to the Response; an error status throws
// an Error with the server's reason as message, and .status and .code.
export async function request(method, url, body, signal) {
  const init = { method, headers: {}, signal };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(url, init);
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new Error("the server cannot be reached; check that it is running and reload the page");
  }
  if (!r.ok) {
    const { message, code } = await refusal(r);
    const err = new Error(message);
    err.status = r.status;
    err.code = code;
    throw err;
  }
  return r;
}

export async function json(method, url, body) {
  return (await request(method, url, body)).json();
}

// POST and hand each NDJSON line's event to onEvent (the shared object events, docs/protocol.md).
// signal (optional): an AbortSignal that stops the stream (the server stops with it); onOpen
// (optional): called once the answer has begun (its status and headers are in).
export async function streamEvents(url, body, onEvent, signal, onOpen) {
  const r = await request("POST", url, body, signal);
  if (onOpen) onOpen();
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      // The browser's own words here are "network error" and the like.
      throw new Error("the connection to the server was lost before the answer ended");
    }
    const { value, done } = chunk;
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) onEvent(JSON.parse(line));
    }
  }
  if (buf.trim()) onEvent(JSON.parse(buf));
}

// A dropped connection (Live's session, a clip's socket) is tried again after min(5 s, 0.5 s per
// try), at most 30 times: about two minutes, long enough for a server restart that loads its model.
export const RETRY = { tries: 30, delayMs: (n) => Math.min(5000, 500 * n) };

// A websocket on this server's path; each JSON message goes to onMessage.
export function openSocket(path, { onMessage, onOpen, onClose }) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const sock = new WebSocket(`${scheme}//${location.host}${path}`);
  sock.addEventListener("message", (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch (err) { return; }
    onMessage(msg);
  });
  if (onOpen) sock.addEventListener("open", onOpen);
  if (onClose) sock.addEventListener("close", onClose);
  return sock;
}

// A handler that acts only while `stillShown()` holds: a request's events or answer count only
// while the page still shows the clip or image it was made for (the person may have opened
// another one, or another mode, meanwhile; the server keeps what it leaves, and going back loads
// that).
export const whileShown = (stillShown, handler) => (ev) => {
  if (stillShown()) handler(ev);
};

// A stream the person can stop (find-all, auto-refine): run() lasts until the stream ends or stop() aborts it.
export function stoppableStream() {
  let controller = null; // the newest run's
  let answering = false; // whether the newest run's answer has begun
  return {
    async run(url, body, onEvent) {
      const mine = new AbortController();
      controller = mine;
      answering = false;
      try {
        await streamEvents(url, body, onEvent, mine.signal, () => { if (controller === mine) answering = true; });
      } catch (e) {
        if (e.name !== "AbortError") throw e;
      } finally {
        // An older run that ends (another image's) leaves the newer one stoppable.
        if (controller === mine) controller = null;
      }
    },
    stop() {
      if (controller) controller.abort();
    },
    // Whether a run is under way and its answer has begun (the server runs it from then on).
    answering: () => controller != null && answering,
  };
}
