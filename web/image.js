// Image mode: upload or drop a PNG / JPEG / WebP; the server encodes it once, then every click is
// a decoder-only mask; "Find:" draws boxes and masks; a new object is described at once when the
// server has a VLM; describe (with verdict) and chat as in every mode. The library lists the
// images kept (across restarts); opening one restores its objects, masks, descriptions and chat.
import { json, request } from "./client.js";
import { acceptFiles } from "./drop.js";
import { itemActions, itemStreams, newestRequest } from "./item.js";
import { createLibrary } from "./library.js";
import { el } from "./dom.js";

// iOS Safari draws no canvas past 16,777,216 pixels. The working copy (4 MP by default) is below
// it, but --image-working-pixels may ask for more.
const MAX_CANVAS_PIXELS = 16_777_216;

export function createImageMode(shell) {
  const { store, stage } = shell;
  const canvas = document.querySelector("#image-canvas");
  const stageEl = document.querySelector("#stage");
  const tools = document.querySelector("#image-tools");

  const input = el("input", { type: "file", accept: "image/png,image/jpeg,image/webp", "data-testid": "image-input", id: "image-file" });
  const label = el("label", { for: "image-file", class: "clip-upload" }, "Upload image");
  const info = el("span", { "data-testid": "image-info", class: "clip-frame" }, "or drop an image on the stage");
  tools.append(label, input, info);

  let image = null; // the server's image object
  let activeMode = false;
  const results = new Map(); // id -> {id, rle, box, presence_probability, present}: what is drawn
  const streams = itemStreams(shell, () => activeMode); // web/item.js
  const { refining, finding } = streams;
  let uploading = null; // the name of the file being uploaded and encoded, until it shows
  // Each request to show an image (upload, open, the reload on coming back) takes the next
  // number, and its answer shows only while that is the newest: an answer that comes late does
  // not replace the image opened after it.
  const showing = newestRequest();
  // Bumps whenever the objects or their descriptions change on this page (a click, a find, a
  // remove, a verdict): a reload asked before such a change would take it away again.
  let edits = 0;
  store.onChange(() => {
    edits += 1;
  });

  function redraw() {
    if (!image || !activeMode) return;
    stage.draw([...results.values()], { width: image.width, height: image.height });
  }

  async function upload(file) {
    shell.clearError();
    const allowed = ["image/png", "image/jpeg", "image/webp"];
    // A clip given here (as the server says of one it is sent: streamer/image/decode.py), said
    // before a video of any size is uploaded only to be refused.
    if (file.type.startsWith("video/")) {
      shell.showError(`${file.name} is a video, not an image: clips go in the Clip mode (the Clip tab above), or upload one frame of it as a PNG, JPEG or WebP image`);
      return;
    }
    if (file.type && !allowed.includes(file.type)) {
      shell.showError(`${file.name} is ${file.type}: upload a PNG, JPEG or WebP image`);
      return;
    }
    info.textContent = `Uploading ${file.name}…`;
    uploading = file.name;
    const ticket = showing.next();
    showLoaded();
    const form = new FormData();
    form.append("file", file, file.name);
    let body;
    try {
      body = await (await request("POST", "/api/images", form)).json();
    } catch (e) {
      if (showing.isNewest(ticket)) {
        // Else an image opened or uploaded since is shown (or on its way): its line stays.
        uploading = null;
        showLoaded();
        info.textContent = "upload refused";
      }
      shell.showError(e.message);
      return;
    }
    await load(body, ticket);
    if (uploading === file.name && !showing.isNewest(ticket)) {
      // Something opened after it shows instead: the upload is over all the same (it is listed).
      doneUploading();
      showLoaded();
    }
    library.refresh();
  }

  // Show an image (just uploaded, or opened from the library with its objects and chat), the
  // answer to request `ticket` (see showing). The same image again (the reload on coming back)
  // keeps the object selected. unchanged(): whether the answer still holds once the picture is
  // decoded (the reload's: no edit on the page meanwhile); false when it did not show it.
  async function load(body, ticket, unchanged = () => true) {
    if (!showing.isNewest(ticket)) return true;
    // Draw the server's decoded copy (EXIF orientation applied), so clicks map to its pixels.
    const img = new Image();
    img.src = body.image_url;
    try {
      await img.decode();
    } catch (e) {
      if (!showing.isNewest(ticket)) return true;
      uploading = null;
      showLoaded();
      info.textContent = "the image could not be shown";
      shell.showError(`the browser could not draw the server's copy of the image (${(e && e.message) || e}); open it again from the library`);
      return true;
    }
    if (!showing.isNewest(ticket)) return true;
    if (!unchanged()) return false;
    doneUploading();
    if (image && image.id !== body.id) streams.stop(true);
    const reselect = image && image.id === body.id ? store.selected() : null; // a reload keeps it
    // The stage is the server's copy at its own size: the working copy of a larger image, as
    // sharp as anything the server sees, and a 24 MP photo costs what its 4 MP copy does. Clicks
    // and masks are in the image's own pixels (stage.toFrame, stage.draw's frame size).
    const fit = Math.min(1, Math.sqrt(MAX_CANVAS_PIXELS / (img.naturalWidth * img.naturalHeight)));
    canvas.width = Math.max(1, Math.floor(img.naturalWidth * fit));
    canvas.height = Math.max(1, Math.floor(img.naturalHeight * fit));
    canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
    image = body;
    results.clear();
    info.textContent = imageLine(body);
    for (const o of body.objects) {
      const { rle, box, presence_probability, present } = o;
      results.set(o.id, { id: o.id, rle, box, presence_probability, present });
    }
    // The object list and the stage are the shown mode's: an upload that ends while Clip or Live
    // is shown leaves theirs alone (coming back to Image takes the image's objects back).
    if (activeMode) {
      store.clear();
      stage.clear();
      store.restore(body.objects); // descriptions, verdicts and chat as the server keeps them
      if (reselect != null && store.has(reselect)) store.select(reselect);
      showLoaded();
      redraw();
    }
    canvas.dataset.imageId = body.id;
    return true;
  }

  const library = createLibrary(shell, "image", {
    async open(id) {
      shell.clearError();
      const ticket = showing.next(id);
      await load(await json("GET", `/api/images/${id}`), ticket);
    },
    closed(id) {
      showing.drop(id); // its open or reload, if one is on its way, shows it no more
      if (image && image.id === id) {
        streams.stop(true);
        image = null;
        results.clear();
        if (activeMode) {
          // The list and the stage are the shown mode's: left alone while Clip or Live is shown.
          store.clear();
          stage.clear();
        }
        canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
        delete canvas.dataset.imageId;
        info.textContent = "or drop an image on the stage";
        showLoaded();
      }
    },
  });

  acceptFiles(input, stageEl, { active: () => activeMode, upload });

  // The status says what is loaded (not "idle" with an image on the stage).
  function showLoaded() {
    if (!activeMode) return; // the status line is the shown mode's
    if (uploading) shell.setStatus("connecting", `uploading ${uploading}: it is encoded once, then every click is quick`);
    else if (image) shell.setStatus("connected", `image: ${image.filename || image.id} · ${image.width}x${image.height}`);
    else shell.setStatus("idle", "no image: upload or drop one");
  }

  // Said to a click or a request made while a file uploads; it goes once the upload is over.
  const stillUploading = (name) => `${name} is still uploading and being encoded: click again once it shows`;
  function doneUploading() {
    if (uploading) shell.withdrawError(stillUploading(uploading));
    uploading = null;
  }

  // The info line for an image shown and no click yet: its size and the encode's time.
  const imageLine = (im) => `${im.width}x${im.height} · encoded in ${im.encode_ms.toFixed(0)} ms`;

  function requireImage() {
    if (uploading) throw new Error(stillUploading(uploading));
    if (!image) throw new Error("upload or drop an image first");
  }

  // An object as the server answers it: {id, label, source, description, verdict, rle, box, ...}.
  function keep(o) {
    const { rle, box, presence_probability, present } = o;
    results.set(o.id, { id: o.id, rle, box, presence_probability, present });
    store.upsert({ id: o.id, label: o.label, source: o.source, description: o.description, verdict: o.verdict, find_check: o.find_check });
  }
  // A found object (find_result's entry) shows the box the model grounded, with SAM's mask in it.
  const keepFound = (o) => keep({ ...o.result, box: o.box, label: o.label, source: "find", find_check: o.check });

  const actions = itemActions({ kind: "images", current: () => image, isActive: () => activeMode, require: requireImage, store });
  const { objectUrl, shownNow, onThisItem: onThisImage } = actions;
  const describe = (id) => actions.describe(id);
  // Once objects are gone: their masks leave the stage (id null: every object's), and with the
  // last of them the line says the image again, not a mask's time.
  function forgotten(id) {
    if (id == null) results.clear();
    else results.delete(id);
    image.objects = id == null ? [] : image.objects.filter((o) => o.id !== id);
    if (!results.size) info.textContent = imageLine(image);
    redraw();
  }

  // The image's objects the page has not heard of (a find-all stopped after making some), added
  // to the list and the stage; the rest of the page (selection, answers streaming) as it is.
  async function addMadeMeanwhile(shown) {
    const body = await json("GET", `/api/images/${image.id}`);
    if (!shown()) return;
    for (const o of body.objects) {
      if (results.has(o.id) || store.has(o.id)) continue;
      keep(o);
      image.objects = [...image.objects, o];
    }
    redraw();
  }

  // Coming back to Image: the server keeps the image's objects, descriptions and chat (found ones
  // too): take them back from it, as Clip's hello does, rather than from what this page last saw.
  // An answer that left the server before a click made here meanwhile would take that click's
  // object off the list and the stage: it is asked again.
  async function reload() {
    const ticket = showing.next(image.id);
    for (;;) {
      const seen = edits;
      const body = await json("GET", `/api/images/${image.id}`);
      if (!showing.isNewest(ticket) || !activeMode) return;
      // A click answered while the picture decoded: asked again, as before it.
      if (seen === edits && (await load(body, ticket, () => seen === edits))) return;
    }
  }

  return {
    activate() {
      activeMode = true;
      library.refresh();
      showLoaded();
      redraw();
      if (image) reload().catch((e) => shell.showError(e.message));
    },
    shownItem: () => (image ? image.id : null),
    deactivate() {
      activeMode = false;
      streams.stop(false); // the shell tells agent.js
    },
    async click(x, y, negative, objectId) {
      requireImage();
      const at = stage.toFrame(x, y, image); // the server speaks the image's own pixels
      const body = await actions.clickAnswer(
        json("POST", `/api/images/${image.id}/clicks`, { ...at, negative, object_id: objectId }),
        objectId,
        (made) => made.object.id,
      );
      if (!body) return;
      keep(body.object);
      image.objects = [...image.objects.filter((o) => o.id !== body.object.id), body.object];
      info.textContent = `mask in ${body.decode_ms.toFixed(0)} ms (decoder only; encode was ${body.encode_ms.toFixed(0)} ms)`;
      redraw();
      if (objectId == null) {
        store.select(body.object.id);
        if (body.describe) await describe(body.object.id); // the server's rule, as in every mode
      }
    },
    async find(phrase) {
      await actions.find({ phrase, all_candidates: shell.allCandidates() }, (body) => {
        for (const o of body.objects) keepFound(o);
        store.apply(body);
        redraw();
      });
    },
    describe,
    // The VLM's clicks stream in; each carries the object's new mask.
    async autoRefine(id, maxSteps) {
      requireImage();
      const onEvent = (ev) => {
        if (ev.type === "refine_click" && ev.result) {
          const o = image.objects.find((x) => x.id === id);
          keep({ ...(o || {}), ...store.get(id), ...ev.result, id });
          redraw();
        }
        store.apply(ev);
      };
      await refining.run(objectUrl(id, "auto_refine"), { max_steps: maxSteps }, onThisImage(onEvent));
    },
    stopRefine: (id) => actions.stopRefine(id, refining),
    // Find all / count: progress streams in; the accepted regions come with their masks.
    async findAll(phrase) {
      requireImage();
      const shown = shownNow();
      let answered = false;
      const onEvent = (ev) => {
        if (ev.type === "find_result") {
          answered = true;
          for (const o of ev.objects) keepFound(o);
          redraw();
        }
        store.apply(ev);
      };
      await finding.run(`/api/images/${image.id}/find_all`, { phrase }, onThisImage(onEvent));
      // Stopped before its result (Stop): the objects it made so far are kept on the server,
      // and their masks come only with the image (Clip's socket says so by itself).
      if (!answered && shown()) addMadeMeanwhile(shown).catch((e) => shell.showError(e.message));
    },
    stopFind: () => finding.stop(),
    chat: (id, question) => actions.chat(id, question),
    reset: () => actions.reset(() => forgotten(null)),
    remove: (id) => actions.remove(id, forgotten),
  };
}
