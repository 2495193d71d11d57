// The slice viewer's frontend: a Streamlit component written against Streamlit's iframe
// protocol directly (what streamlit-component-lib wraps), so it needs no npm build and no CDN.
//
//   frame → Streamlit: {isStreamlitMessage: true, type: "streamlit:componentReady", apiVersion: 1}
//                      {isStreamlitMessage: true, type: "streamlit:setComponentValue", value, dataType: "json"}
//                      {isStreamlitMessage: true, type: "streamlit:setFrameHeight", height}
//   Streamlit → frame: {type: "streamlit:render", args, dfs, disabled, theme}
//
// Everything a reader does many times a second happens here, without a server round trip:
// scrolling (wheel, arrows, PgUp/PgDn, Home/End), window/level while dragging (an SVG filter
// on the 8-bit slices), showing or hiding the outline and heatmap. Python hears of it once it
// settles: the slice 150 ms after scrolling stops, the window on release, a preset at once.
"use strict";

(function () {
  const SLICE_DEBOUNCE_MS = 150;
  const $ = (id) => document.getElementById(id);
  const stage = $("stage");
  const base = $("base");
  const overlay = $("overlay");
  const funcs = ["R", "G", "B"].map((c) => document.querySelector("feFunc" + c));

  const state = {
    args: null,          // the latest render's args
    n: 0,
    index: 1,            // 1-based slice on screen
    level: 40, width: 80, // the window on screen
    preset: null,
    shown: null,         // {key, level, width, images: [HTMLImageElement]}: decoded slices
    loadingKey: null,
    outline: [],         // decoded outline layers (null where a slice has none)
    outlineKey: null,
    heat: null,          // {slice, image, label, probability}
    heatKey: null,
    showOutline: true,
    showHeat: true,
    drag: null,
    timer: null,
    counter: 0,
    sessionId: Math.random().toString(36).slice(2, 10),
    lastSent: null,      // seq of the last value sent to Python
    wheelAt: null,       // performance.now() of the wheel/key event being drawn
    latencies: [],       // input → drawn (ms), for the browser test
  };
  window.__sliceViewer = state; // read by the browser tests; nothing in the page uses it

  function post(type, extra) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type }, extra), "*");
  }

  function send(event) {
    state.counter += 1;
    const seq = state.sessionId + "-" + state.counter;
    state.lastSent = seq;
    post("streamlit:setComponentValue", {
      dataType: "json",
      value: {
        seq, event, slice: state.index,
        level: Math.round(state.level), width: Math.max(1, Math.round(state.width)),
        preset: state.preset,
      },
    });
  }

  function setHeight() {
    const h = Math.ceil(document.body.getBoundingClientRect().height);
    if (h !== state.lastHeight) {
      state.lastHeight = h;
      post("streamlit:setFrameHeight", { height: h });
    }
  }

  function decodeAll(srcs) {
    return Promise.all(srcs.map((src) => {
      if (!src) return Promise.resolve(null);
      const img = new Image();
      img.src = src;
      return img.decode().then(() => img, () => null);
    }));
  }

  // ---- drawing -------------------------------------------------------------------------

  function sizeStage() {
    const a = state.args;
    if (!a) return;
    const w = stage.clientWidth || document.body.clientWidth;
    stage.style.height = Math.round(w * a.rows / a.cols) + "px";
    for (const c of [base, overlay]) {
      if (c.width !== a.cols || c.height !== a.rows) { c.width = a.cols; c.height = a.rows; }
    }
    drawScale();
    setHeight();
  }

  function applyFilter() {
    // The slices on screen were windowed at (L0, W0); show them at (L, W): x' = x·W0/W + (lo0 − lo)/W.
    const s = state.shown;
    if (!s) return;
    const slope = s.width / state.width;
    const intercept = ((s.level - s.width / 2) - (state.level - state.width / 2)) / state.width;
    for (const f of funcs) {
      f.setAttribute("slope", String(slope));
      f.setAttribute("intercept", String(intercept));
    }
  }

  function draw() {
    const a = state.args;
    if (!a || !state.shown) return;
    const i = state.index - 1;
    const ctx = base.getContext("2d");
    const img = state.shown.images[i];
    if (img) ctx.drawImage(img, 0, 0);
    const octx = overlay.getContext("2d");
    octx.clearRect(0, 0, overlay.width, overlay.height);
    const outline = state.outline[i];
    if (state.showOutline && outline) octx.drawImage(outline, 0, 0);
    const heat = state.heat;
    const heatHere = heat && heat.image && heat.slice === state.index;
    if (state.showHeat && heatHere) octx.drawImage(heat.image, 0, 0);
    applyFilter();

    const z = a.z[i];
    $("tl").textContent = `Slice ${state.index} / ${state.n}` +
      (z === null || z === undefined ? "" : `\nz = ${z.toFixed(1)} mm`);
    const named = (a.presets || []).find(
      (p) => p.level === Math.round(state.level) && p.width === Math.round(state.width));
    const name = named ? ` (${named.name})` : "";
    $("bl").textContent = `W ${Math.round(state.width)} L ${Math.round(state.level)}${name}`;
    $("tr").textContent = state.showHeat && heatHere
      ? `Grad-CAM '${heat.label}'\nP = ${heat.probability.toFixed(3)} on this slice` : "";
    $("loading").style.display = "none";
    stage.dataset.slice = String(state.index);
    stage.dataset.level = String(Math.round(state.level));
    stage.dataset.width = String(Math.round(state.width));
    $("outline-btn").setAttribute("aria-pressed", String(state.showOutline && !!a.outline_key));
    $("heat-btn").setAttribute("aria-pressed", String(state.showHeat && !!a.heatmap));
    if (state.wheelAt !== null) {
      const t0 = state.wheelAt;
      state.wheelAt = null;
      // The next animation frame, then a task after it: about when that frame was painted.
      requestAnimationFrame(() => setTimeout(() => {
        state.latencies.push(performance.now() - t0);
      }, 0));
    }
  }

  function drawMarkers() {
    const m = state.args.markers;
    for (const edge of ["top", "bottom", "left", "right"]) {
      $("mk-" + edge).textContent = m ? m[edge] : "";
    }
    $("br").textContent = m ? "" : (state.args.orientation_note || "orientation not recorded");
  }

  function drawScale() {
    const a = state.args;
    const box = $("scale");
    if (!a || !a.pixel_spacing) {
      box.style.display = "none";
      return;
    }
    const mmPerPx = a.pixel_spacing[1]; // between columns: the horizontal spacing
    const shownPx = stage.clientWidth / a.cols; // screen px per image column
    if (!shownPx) return;
    // The longest round length that fits in a quarter of the image.
    const maxMm = (stage.clientWidth / 4) / shownPx * mmPerPx;
    const steps = [1, 2, 5, 10, 20, 25, 50, 100, 200];
    let mm = steps[0];
    for (const s of steps) if (s <= maxMm) mm = s;
    box.style.display = "";
    box.querySelector(".rule").style.width = Math.round(mm / mmPerPx * shownPx) + "px";
    box.querySelector("span").textContent = `${mm} mm`;
    box.dataset.mm = String(mm);
  }

  // ---- render messages from Python -----------------------------------------------------

  function onRender(args) {
    const first = state.args === null;
    state.args = args;
    state.n = args.n;
    // Python's slice, window and preset are adopted when they answer the last thing sent
    // from here (or nothing was): a render that crosses a newer scroll never pulls it back.
    const inSync = state.lastSent === null || args.applied_seq === state.lastSent;
    if (first || (inSync && state.timer === null && !state.drag)) {
      state.index = Math.min(Math.max(args.index, 1), state.n);
      state.level = args.level;
      state.width = args.width;
      state.preset = args.preset;
    }
    drawMarkers();
    sizeStage();

    // Python sends a set of images once; later renders carry its key only. A frame that does
    // not hold that set (it was just mounted again) asks for it, once per key.
    const missing = (key, srcs) => {
      if (srcs) return false;
      if (state.askedFor !== key) { state.askedFor = key; send("resend"); }
      return true;
    };
    if (args.images_key !== state.loadingKey && !missing(args.images_key, args.images)) {
      const key = args.images_key;
      state.loadingKey = key;
      const level = args.level, width = args.width;
      decodeAll(args.images).then((images) => {
        if (state.loadingKey !== key) return; // superseded by a newer window
        state.shown = { key, level, width, images };
        draw();
      });
    }
    const outlineKey = args.outline_key || null;
    if (outlineKey !== state.outlineKey && !(outlineKey && missing(outlineKey, args.outline))) {
      state.outlineKey = outlineKey;
      if (!outlineKey) { state.outline = []; }
      else {
        decodeAll(args.outline).then((layers) => {
          if (state.outlineKey === outlineKey) { state.outline = layers; draw(); }
        });
      }
    }
    const h = args.heatmap;
    const heatKey = h ? `${h.slice}|${h.label}|${h.key}` : null;
    if (heatKey !== state.heatKey) {
      state.heatKey = heatKey;
      if (!h) { state.heat = null; }
      else {
        decodeAll([h.src]).then(([image]) => {
          if (state.heatKey === heatKey) {
            state.heat = { slice: h.slice, label: h.label, probability: h.probability, image };
            draw();
          }
        });
      }
    }
    $("outline-btn").disabled = !args.outline_key;
    $("heat-btn").disabled = !args.heatmap;
    draw();
  }

  // ---- input ---------------------------------------------------------------------------

  function goTo(k) {
    const next = Math.min(Math.max(k, 1), state.n);
    if (next === state.index) return;
    state.index = next;
    draw();
    clearTimeout(state.timer);
    state.timer = setTimeout(() => { state.timer = null; send("slice"); }, SLICE_DEBOUNCE_MS);
  }

  function applyPreset(p) {
    state.preset = p.name;
    state.level = p.level;
    state.width = p.width;
    draw();
    send("preset");
  }

  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    if (!state.args || e.deltaY === 0) return;
    state.wheelAt = performance.now();
    goTo(state.index + (e.deltaY > 0 ? 1 : -1));
  }, { passive: false });

  document.addEventListener("keydown", (e) => {
    if (!state.args || e.ctrlKey || e.metaKey || e.altKey) return;
    const page = Math.max(1, Math.round(state.n / 10));
    const moves = {
      ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: page, PageUp: -page,
    };
    if (e.key in moves) {
      state.wheelAt = performance.now();
      goTo(state.index + moves[e.key]);
    } else if (e.key === "Home") {
      goTo(1);
    } else if (e.key === "End") {
      goTo(state.n);
    } else if (e.key === "o" || e.key === "O") {
      toggleOutline();
    } else if (e.key === "h" || e.key === "H") {
      toggleHeat();
    } else {
      const preset = (state.args.presets || []).find((p) => p.hotkey === e.key);
      if (!preset) return;
      applyPreset(preset);
    }
    e.preventDefault();
  });

  stage.addEventListener("contextmenu", (e) => e.preventDefault());
  stage.addEventListener("mousedown", (e) => {
    stage.focus();
    if (!state.args || !(e.button === 2 || (e.button === 0 && e.shiftKey))) return;
    e.preventDefault();
    state.drag = { x: e.clientX, y: e.clientY, level: state.level, width: state.width };
  });
  window.addEventListener("mousemove", (e) => {
    const d = state.drag;
    if (!d) return;
    // As OHIF: right/left widens/narrows the window, down/up raises/lowers the level; the
    // step grows with the width, so brain (80 HU) and bone (2800 HU) both feel the same.
    const step = Math.max(1, d.width / 200);
    state.width = Math.max(1, Math.min(4000, d.width + (e.clientX - d.x) * step));
    state.level = Math.max(-1000, Math.min(3000, d.level + (e.clientY - d.y) * step));
    draw();
  });
  window.addEventListener("mouseup", () => {
    const d = state.drag;
    if (!d) return;
    state.drag = null;
    if (Math.round(d.level) !== Math.round(state.level) ||
        Math.round(d.width) !== Math.round(state.width)) {
      send("window");
    }
  });

  function toggleOutline() {
    if (!state.args.outline_key) return;
    state.showOutline = !state.showOutline;
    draw();
  }
  function toggleHeat() {
    if (!state.args.heatmap) return;
    state.showHeat = !state.showHeat;
    draw();
  }
  $("outline-btn").addEventListener("click", toggleOutline);
  $("heat-btn").addEventListener("click", toggleHeat);

  window.addEventListener("resize", () => { sizeStage(); draw(); });
  window.addEventListener("message", (e) => {
    const data = e.data;
    if (e.source === window.parent && data && data.type === "streamlit:render") {
      onRender(data.args);
    }
  });
  post("streamlit:componentReady", { apiVersion: 1 });
})();
