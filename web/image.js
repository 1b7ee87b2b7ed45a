// Image mode: upload or drop a PNG / JPEG / WebP; the server encodes it once, then every click is
// a decoder-only mask; "Find:" draws boxes and masks; describe (with verdict) and chat.
"use strict";

(function () {
  const { api, describeInto, chatInto, el } = window.FMUModes;
  const canvas = document.querySelector("#image-canvas");
  const stage = document.querySelector("#stage");
  const tools = document.querySelector("#image-tools");

  const input = el("input", { type: "file", accept: "image/png,image/jpeg,image/webp", "data-testid": "image-input", id: "image-file" });
  const label = el("label", { for: "image-file", class: "clip-upload" }, "Upload image");
  const info = el("span", { "data-testid": "image-info", class: "clip-frame" }, "or drop an image on the stage");
  tools.append(label, input, info);

  let image = null; // the server's image object
  let activeMode = false;
  const objects = new Map(); // id -> {id, rle, box, score, present, label}
  const histories = new Map();

  function redraw() {
    if (!image || !activeMode) return;
    FMU.drawOverlay([...objects.values()], { width: image.width, height: image.height });
    FMU.setObjects([...objects.values()].map((o) => ({ id: o.id, label: o.label })));
  }

  async function upload(file) {
    FMU.clearError();
    const allowed = ["image/png", "image/jpeg", "image/webp"];
    if (file.type && !allowed.includes(file.type)) {
      FMU.showError(`${file.name} is ${file.type}: upload a PNG, JPEG or WebP image`);
      return;
    }
    info.textContent = `Uploading ${file.name}…`;
    const form = new FormData();
    form.append("file", file, file.name);
    let body;
    try {
      body = await (await api("POST", "/api/images", form)).json();
    } catch (e) {
      info.textContent = "upload refused";
      FMU.showError(e.message);
      return;
    }
    // Draw the server's decoded copy (EXIF orientation applied), so clicks map to its pixels.
    const img = new Image();
    img.src = body.image_url;
    await img.decode();
    canvas.width = body.width;
    canvas.height = body.height;
    canvas.getContext("2d").drawImage(img, 0, 0);
    image = body;
    objects.clear();
    histories.clear();
    FMU.clearOverlay();
    FMU.setObjects([]);
    info.textContent = `${body.width}x${body.height} · encoded in ${body.encode_ms.toFixed(0)} ms`;
    canvas.dataset.imageId = body.id;
  }

  input.addEventListener("change", () => {
    if (input.files && input.files[0]) upload(input.files[0]);
    input.value = "";
  });
  stage.addEventListener("dragover", (e) => {
    if (!activeMode) return;
    e.preventDefault();
    stage.classList.add("drop-target");
  });
  stage.addEventListener("dragleave", () => stage.classList.remove("drop-target"));
  stage.addEventListener("drop", (e) => {
    if (!activeMode) return;
    e.preventDefault();
    stage.classList.remove("drop-target");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) upload(file);
  });

  function requireImage() {
    if (!image) throw new Error("upload or drop an image first");
  }

  function keep(o, fallbackLabel) {
    const prev = objects.get(o.id);
    // A found object shows the box the model grounded (what "Find:" answered), with SAM's mask in it.
    const box = o.found_box || (prev && prev.found_box && !o.rle ? prev.found_box : o.box);
    objects.set(o.id, { ...o, box, label: o.label || (prev && prev.label) || fallbackLabel || `object ${o.id}` });
  }

  FMU.registerMode("image", {
    activate() {
      activeMode = true;
      redraw();
    },
    deactivate() {
      activeMode = false;
    },
    async click(x, y, negative, selectedId) {
      requireImage();
      FMU.clearError();
      const r = await api("POST", `/api/images/${image.id}/clicks`, { x, y, negative, object_id: selectedId });
      const body = await r.json();
      keep(body.object);
      info.textContent = `mask in ${body.decode_ms.toFixed(0)} ms (decoder only; encode was ${body.encode_ms.toFixed(0)} ms)`;
      redraw();
      FMU.selectObject(body.object.id);
    },
    async find(phrase) {
      requireImage();
      FMU.clearError();
      const body = await (await api("POST", `/api/images/${image.id}/find`, { phrase })).json();
      if (!body.objects.length) FMU.showError(`nothing matching "${phrase}" was found`);
      for (const o of body.objects) keep({ ...o.result, found_box: o.box, label: o.label }, phrase);
      redraw();
    },
    async describe(id) {
      requireImage();
      await describeInto(`/api/images/${image.id}/objects/${id}/describe`, id, (ev) => {
        const o = objects.get(id);
        if (o) o.label = ev.description.slice(0, 40);
        redraw();
      });
    },
    async chat(id, question) {
      requireImage();
      if (!histories.has(id)) histories.set(id, []);
      await chatInto(`/api/images/${image.id}/objects/${id}/chat`, id, question, histories.get(id));
    },
    async remove(id) {
      requireImage();
      await api("DELETE", `/api/images/${image.id}/objects/${id}`);
      objects.delete(id);
      redraw();
    },
  });
})();
