// Live's requests about objects, as messages on the session's websocket (docs/protocol.md). A
// request that cannot go (the page reconnects) is refused at once, thrown, so the control that
// asked waits for no answer that will not come; so is a phrase or a question past the server's
// limit, in the server's own words: the page says it at once, and one past the websocket's size
// limit would end the session.

// Refuse `text`, field `field` of a `type` message, when past the server's limit for it
// (capabilities.text_limits, from streamer/objects/requests.py: Phrase, Question), in characters
// as Python counts them (code points), of the text as sent (the shell and the Find box trim it),
// and as the server's protocol.py says it of a message it refuses (field_error: "chat.question:
// String should have at most ...").
function withinLimit(limits, type, field, text) {
  const max = limits ? limits[field] : null;
  if (max == null) return; // no limit known: the server judges (createLiveRequests says why that is safe)
  if ([...text].length > max) throw new Error(`${type}.${field}: String should have at most ${max} characters`);
}

const NOT_CONNECTED = "not connected to the server yet";

// send(msg): false when the websocket is not open (said already); store: the object store;
// allCandidates(): Find's "keep all candidates" option; limits(): the server's text limits
// (capabilities.text_limits), or null while none are known. Live opens its websocket only once
// the capabilities have answered (live.js start), so until then nothing is sent at all (refused
// as not connected), and no text is refused for a limit the page does not know. Only if asking
// for them failed (the page says so) do texts go unchecked: the server refuses one too long in
// the same words and the session goes on; one past the websocket's own limit
// (--max-ws-message-bytes) would close it, and the page reconnects with its objects
// (docs/protocol.md). Refusing texts on a guess instead would refuse ones the server takes.
export function createLiveRequests({ send, store, allCandidates, limits }) {
  return {
    find(phrase) {
      withinLimit(limits(), "find", "phrase", phrase);
      // Thrown, so the Find shows no answer coming that will not.
      if (!send({ type: "find", phrase, all_candidates: allCandidates() })) throw new Error(`${NOT_CONNECTED}: find again once the status says connected`);
    },
    describe(objectId) {
      // Thrown, as chat and find: the verdict line's "press Describe" holds once connected.
      if (!send({ type: "describe", object_id: objectId })) throw new Error(`${NOT_CONNECTED}: describe again once the status says connected`);
      store.requested(objectId);
    },
    chat(objectId, question) {
      withinLimit(limits(), "chat", "question", question);
      // Thrown, so the question stays in the box to ask again once connected.
      if (!send({ type: "chat", object_id: objectId, question })) throw new Error(`${NOT_CONNECTED}: ask again once the status says connected`);
      store.asked(objectId, question);
    },
    remove(objectId) {
      // Thrown: the shell takes back what it did at once (the object is no longer selected).
      if (!send({ type: "remove", object_id: objectId })) throw new Error(`${NOT_CONNECTED}: remove it again once the status says connected`);
    },
    reset() {
      if (!send({ type: "reset" })) throw new Error(`${NOT_CONNECTED}: clear them again once the status says connected`);
    },
    autoRefine(objectId, maxSteps) {
      // Thrown, as find-all: agent.js shows Auto-refine again, not a run that never started.
      if (!send({ type: "auto_refine", object_id: objectId, max_steps: maxSteps })) throw new Error(`${NOT_CONNECTED}: auto-refine again once the status says connected`);
    },
    stopRefine(objectId) {
      send({ type: "stop_refine", object_id: objectId });
    },
    // Find all / count on the newest frame: progress and the count come back as events.
    findAll(phrase) {
      withinLimit(limits(), "find_all", "phrase", phrase);
      // Thrown, as Clip and Image do, so the find-all controls go back to idle.
      if (!send({ type: "find_all", phrase })) throw new Error(NOT_CONNECTED);
    },
    stopFind() {
      send({ type: "stop_find" });
    },
  };
}
