// Live's wait for room: the server runs at most --max-sessions live sessions at once. A tab refused
// for want of room tries again by itself every few seconds for a while, saying so in the status,
// with a button beside it to try at once (and, once it has stopped trying, to try again).
const EVERY_S = 8;
const TRIES = 40; // about five minutes; then it waits for the button

// statusEl: the header's status, which the button follows.
export function createBusyRetry({ shell, statusEl }) {
  const button = document.createElement("button");
  button.type = "button";
  button.id = "live-retry";
  button.setAttribute("data-testid", "live-retry");
  button.hidden = true;
  statusEl.after(button);
  let timer = null;
  let tries = 0;
  let retry = null; // what tries again (a new offer)

  function cancel() {
    clearTimeout(timer);
    timer = null;
    button.hidden = true;
  }

  button.addEventListener("click", () => {
    if (tries > TRIES) tries = 0; // stopped trying: the person starts it over
    cancel();
    if (retry) retry();
  });

  return {
    // The server had no room (its reason, `why`): try again with `again()` in a while. Whether
    // it is the first refusal of this wait.
    refused(why, again) {
      cancel();
      retry = again;
      tries += 1;
      button.hidden = false;
      if (tries > TRIES) {
        button.textContent = "Try again";
        shell.setStatus("busy", `busy: no room for another live session (stopped trying after ${TRIES} tries)`, why);
        return false;
      }
      button.textContent = "Try now";
      shell.setStatus("busy", `busy: no room for another live session · trying again every ${EVERY_S} s (try ${tries} of ${TRIES})`, why);
      timer = setTimeout(() => {
        timer = null;
        button.hidden = true;
        again();
      }, EVERY_S * 1000);
      return tries === 1;
    },
    // Stop the wait under way (a new start, or Live left), counting the tries so far.
    halt: cancel,
    // Stop waiting (Live was left); the tries start over next time.
    cancel() {
      cancel();
      tries = 0;
    },
    // Connected: whether it had been waiting for room.
    connected() {
      const waited = tries > 0;
      tries = 0;
      cancel();
      return waited;
    },
  };
}
