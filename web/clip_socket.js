// Clip mode's websocket (/api/clips/{id}/ws): the clip's pushes, its `hello` first (the clip as
// the server has it now). A connection the page did not close (a server restart, a network drop)
// is opened again by itself, with a backoff, and its hello brings the page up to date; one the
// page closes (another clip, another mode, a clip deleted) is not, nor one refused because the
// clip is gone (4404).
import { openSocket, RETRY } from "./client.js";

// shell: its status line and error; onMessage(msg): a message of the clip's socket; gone(id): the
// server has no clip `id` (any more).
export function createClipSocket({ shell, onMessage, gone }) {
  let sock = null; // the socket open or opening now, the page's own
  let retryTimer = null;
  let tries = 0;
  let generation = 0; // bumps whenever the page closes: a retry scheduled before stops

  function connect(clip) {
    const mine = openSocket(`/api/clips/${clip.id}/ws`, {
      onMessage: (msg) => {
        if (sock !== mine) return; // a socket closed since
        if (msg.type === "hello") tries = 0; // back in step: a later drop has every try again
        onMessage(msg);
      },
      onOpen: () => { if (sock === mine) shell.setStatus("connected", `clip: ${clip.filename}`); },
      onClose: (e) => {
        if (sock !== mine) return; // closed by the page: it said what comes next
        sock = null;
        // 4404: the clip went while this page was not connected (another tab, retention).
        if (e.code === 4404) gone(clip.id);
        else retry(clip, `disconnected (${e.code})${e.reason ? `: ${e.reason}` : ""}`);
      },
    });
    sock = mine;
  }

  function retry(clip, why) {
    tries += 1;
    if (tries > RETRY.tries) {
      const gaveUp = `could not reconnect to the server (${RETRY.tries} tries): reload the page once it runs again`;
      shell.setStatus("closed", gaveUp);
      shell.showError(gaveUp);
      return;
    }
    shell.setStatus("connecting", `reconnecting (${why}; try ${tries})…`);
    const gen = generation;
    retryTimer = setTimeout(() => {
      retryTimer = null;
      if (gen === generation) connect(clip);
    }, RETRY.delayMs(tries));
  }

  // Closed on purpose: no status, no retry (a pending one is dropped).
  function close() {
    generation += 1;
    clearTimeout(retryTimer);
    retryTimer = null;
    const old = sock;
    sock = null;
    if (old) old.close();
  }

  return {
    // Connect to clip {id, filename}, the page's only clip socket from now on.
    open(clip) {
      close();
      tries = 0;
      connect(clip);
    },
    close,
  };
}
