// The object actions of a kept item, Clip's clip or Image's image, written once: its objects'
// URLs, whether the page still shows the item a request was made for, streaming an object's
// events, describe, chat, reset and remove. Each mode adds only what is its own (Clip: the frame
// in the bodies, its jobs; Image: its masks and redraw).
import { json, request, stoppableStream, streamEvents, whileShown } from "./client.js";

// Auto-refine and Find all run for the item shown: they stop when it goes (another item, it
// deleted, another mode), and agent.js hears of it through the shell (changed: the shown item
// did; isActive(): the mode is the one shown).
export function itemStreams(shell, isActive) {
  const refining = stoppableStream();
  const finding = stoppableStream();
  return {
    refining,
    finding,
    stop(changed) {
      refining.stop();
      finding.stop();
      if (changed && isActive()) shell.itemChanged();
    },
  };
}

// Requests to show an item (an upload, an open from the library, the reload on coming back)
// overlap: each takes the next ticket, and its answer shows only while that ticket is the newest,
// so an answer that comes late never replaces the item asked for after it.
export function newestRequest() {
  let newest = 0;
  let newestFor = null; // the item id the newest request is for (null: not known yet, an upload)
  return {
    next: (id = null) => { newestFor = id; return ++newest; }, // the ticket of a request made now
    isNewest: (ticket) => ticket === newest,
    // Item `id` went: an answer on its way for it shows it no more (an upload's, for a new
    // item, still shows).
    drop: (id) => { if (newestFor === id) newest += 1; },
  };
}

// A request made for the item shown then (`shown`: its shownNow()): its answer, or null once
// that item is no longer shown. Its refusal is thrown only while it is: one for an item the
// person has left is not the page's to say over another.
export async function whileStillShown(shown, pending) {
  try {
    const answer = await pending;
    return shown() ? answer : null;
  } catch (e) {
    if (shown()) throw e;
    return null;
  }
}

// kind: the API's collection ("clips", "images"); current(): the item shown now, or null;
// isActive(): whether its mode is the one shown; require(): throws the mode's reason when no
// item can be acted on; store: the shell's object store.
export function itemActions({ kind, current, isActive, require, store }) {
  const itemUrl = () => `/api/${kind}/${current().id}`;

  // This item's object URL (refused with the mode's reason until an item is shown).
  function objectUrl(id, what) {
    require();
    return `${itemUrl()}/objects/${id}${what ? `/${what}` : ""}`;
  }

  // Whether the page still shows, in this mode, the item shown now (client.js whileShown).
  function shownNow() {
    const id = current().id;
    return () => isActive() && current() != null && current().id === id;
  }

  const onThisItem = (handler) => whileShown(shownNow(), handler);
  const stream = (url, body) => streamEvents(url, body, onThisItem(store.apply));

  return {
    objectUrl,
    shownNow,
    onThisItem,
    // A click's answer (`pending`: its request, on object `objectId`, null for a new one), or
    // null once the item is no longer shown, or once the click is moot: the person removed its
    // object since it went (Remove, Clear objects; not while that is on its way and the answer
    // has the object's new mask), or, for a new one, pressed Clear objects.
    // The server then had the click first, and the object went with the rest (the late answer
    // listed it again, and its description was refused); or the remove came first: a
    // refinement is refused ("no object 1", not said), and the object a new click made
    // (madeId: its id in the answer) is removed now, so the server keeps none the page does not
    // list (a 404: the clear had it).
    async clickAnswer(pending, objectId, madeId) {
      const at = store.clears();
      const moot = () => (objectId == null ? store.clears() !== at : store.forgotten(objectId));
      let body;
      try {
        body = await whileStillShown(shownNow(), pending);
      } catch (e) {
        if (!moot()) throw e;
        return null;
      }
      if (!body || !moot()) return body;
      // A refinement answered while its object's Remove is on its way: the object, still listed,
      // takes its mask (the server's), and goes with the Remove, or keeps it if that is refused.
      if (objectId != null && store.has(objectId)) return body;
      if (objectId == null) {
        await whileStillShown(shownNow(), request("DELETE", objectUrl(madeId(body)))).catch((e) => {
          if (e.status !== 404) throw e;
        });
      }
      return null;
    },
    // A checked Find on this item (body: the phrase and what the mode adds); its answer goes to
    // `onAnswer` while the item is shown. Its refusal too: one for an item no longer shown is not
    // the page's to say over another (the Find box went idle with the change: finding.js).
    async find(body, onAnswer) {
      require();
      const shown = shownNow();
      const answer = await whileStillShown(shown, json("POST", `${itemUrl()}/find`, body));
      if (!answer) return;
      onAnswer(answer);
      // The first object found is selected, as Live's `objects` message (`added`) selects it.
      if (answer.objects.length) store.select(answer.objects[0].object_id);
    },
    // body: what the mode adds (Clip: the frame to describe on).
    describe(id, body) {
      const url = objectUrl(id, "describe"); // refused first with no item
      return store.describing(id, () => stream(url, body), shownNow());
    },
    // body: what the mode adds to the question (Clip: the time on screen).
    async chat(id, question, body) {
      const url = objectUrl(id, "chat");
      store.asked(id, question);
      return store.questioning(id, () => stream(url, { question, ...body }), shownNow());
    },
    // after(): the mode's own part, once the server has forgotten every object (if still shown).
    async reset(after) {
      require();
      const body = await whileStillShown(shownNow(), json("DELETE", `${itemUrl()}/objects`));
      if (!body) return;
      store.apply(body);
      after();
    },
    // Stop the object's auto-refine (`refining`: its stream, itemStreams). Once its answer has
    // begun the server runs it (http/claim.py) and stops it: the stream ends with its
    // refine_done, `stopped`, counting the clicks it applied, as Live's does. Before (the request
    // on its way, waiting its VLM turn, reading its frame), or refused (it has just ended), or the
    // server out of reach: the stream is closed, which stops it as well. Resolves to whether the
    // server's refine_done ends it.
    async stopRefine(id, refining) {
      if (refining.answering()) {
        try {
          await request("POST", objectUrl(id, "stop_refine"));
          return true;
        } catch (e) { /* closed below */ }
      }
      refining.stop();
      return false;
    },
    // after(id): the mode's own part, once the server has forgotten the object (if still shown).
    async remove(id, after) {
      const url = objectUrl(id);
      if (!(await whileStillShown(shownNow(), request("DELETE", url)))) return;
      store.setObjects(store.all().filter((o) => o.id !== id));
      after(id);
    },
  };
}
