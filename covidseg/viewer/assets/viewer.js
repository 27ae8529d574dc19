// covidseg case viewer: the index (sortable table of cases) and the case view (slices,
// overlay, lung outline, lesion strip). Data comes from the page's JSON block; images lie
// beside the page. No network, no libraries: it runs from file://.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("covidseg-data").textContent);
  var app = document.getElementById("app");

  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (attrs[k] !== null && attrs[k] !== undefined && attrs[k] !== false) node.setAttribute(k, attrs[k]);
    });
    for (var i = 2; i < arguments.length; i++) if (arguments[i]) node.appendChild(arguments[i]);
    return node;
  }

  function fmt(v, kind) {
    if (v === null || v === undefined || v === "") return "\u2013";
    var digits = { num0: 0, num1: 1, num2: 2, num3: 3 }[kind];
    return digits === undefined ? String(v) : Number(v).toFixed(digits);
  }

  function gradeClass(g) {
    return g ? "grade grade-" + String(g).replace(/[^0-9]/g, "") : "";
  }

  function header(extra) {
    return el("header", {}, el("h1", { text: data.title }), data.subtitle ? el("p", { class: "sub", text: data.subtitle }) : null, extra || null);
  }

  // -- index --------------------------------------------------------------------------------
  function renderIndex() {
    var columns = data.columns;
    var state = { key: null, dir: 1 };
    var table = el("table", { id: "cases", class: "cases" });
    var headRow = el("tr", {}, el("th", { class: "thumb-col", text: "most involved slice" }));
    columns.forEach(function (c) {
      var th = el("th", { "data-key": c.key, class: c.kind === "text" ? "" : "num", tabindex: "0", title: "sort by " + c.label, text: c.label });
      th.addEventListener("click", function () { sortBy(c.key); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortBy(c.key); });
      headRow.appendChild(th);
    });
    var tbody = el("tbody");
    table.appendChild(el("thead", {}, headRow));
    table.appendChild(tbody);

    var trs = data.rows.map(function (r) {
      var tr = el("tr", { "data-case": r.name, class: r.status === "ok" ? "" : "failed" });
      var thumb = r.thumb ? el("a", { href: r.href }, el("img", { src: r.thumb, alt: r.name, loading: "lazy", class: "thumb" })) : el("span", { class: "nothumb", text: "\u2013" });
      tr.appendChild(el("td", { class: "thumb-col" }, thumb));
      columns.forEach(function (c) {
        var v = r[c.key];
        var td = el("td", { class: c.kind === "text" ? "" : "num", "data-key": c.key });
        if (c.key === "name" && r.href) td.appendChild(el("a", { href: r.href, text: v }));
        else if (c.key === "grade" || c.key === "truth_grade") td.appendChild(el("span", { class: gradeClass(v), text: fmt(v, c.kind) }));
        else td.textContent = fmt(v, c.kind);
        if (c.key === "name" && r.source) td.title = r.source;
        tr.appendChild(td);
      });
      tr._row = r;
      return tr;
    });
    trs.forEach(function (tr) { tbody.appendChild(tr); });

    function sortBy(key) {
      state.dir = state.key === key ? -state.dir : 1;
      state.key = key;
      var kind = columns.filter(function (c) { return c.key === key; })[0].kind;
      var sorted = trs.slice().sort(function (a, b) {
        var x = a._row[key], y = b._row[key];
        var xm = x === null || x === undefined || x === "", ym = y === null || y === undefined || y === "";
        if (xm || ym) return xm - ym; // missing values last, either direction
        var d = kind === "text" ? String(x).localeCompare(String(y), undefined, { numeric: true }) : x - y;
        return d * state.dir;
      });
      sorted.forEach(function (tr) { tbody.appendChild(tr); });
      headRow.querySelectorAll("th[data-key]").forEach(function (th) {
        th.removeAttribute("aria-sort");
        if (th.getAttribute("data-key") === key) th.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
      });
    }

    var failed = data.rows.filter(function (r) { return r.status !== "ok"; }).length;
    var note = data.rows.length + " case" + (data.rows.length === 1 ? "" : "s") + (failed ? ", " + failed + " failed" : "") + ". Click a column to sort, a case to open it.";
    app.appendChild(header(el("p", { class: "sub", text: note })));
    app.appendChild(el("div", { class: "table-wrap" }, table));
  }

  // -- case view ------------------------------------------------------------------------------
  function renderCase() {
    var c = data["case"], row = data.row, n = c.slices.length, h = c.cell[0], w = c.cell[1];
    var nav = el("nav", {},
      el("a", { href: data.index, id: "to-index", text: "\u2190 all cases" }),
      data.prev ? el("a", { href: data.prev, id: "prev-case", text: "\u2039 previous case" }) : null,
      data.next ? el("a", { href: data.next, id: "next-case", text: "next case \u203a" }) : null);
    var facts = el("dl", { class: "facts" });
    data.columns.forEach(function (col) {
      if (col.key === "name" || row[col.key] === null || row[col.key] === undefined) return;
      facts.appendChild(el("div", {}, el("dt", { text: col.label }), el("dd", { class: col.key.indexOf("grade") >= 0 ? gradeClass(row[col.key]) : "", text: fmt(row[col.key], col.kind) })));
    });
    app.appendChild(nav);
    app.appendChild(el("header", {}, el("h1", { text: row.name }), el("p", { class: "sub", text: data.title + (data.subtitle ? " \u00b7 " + data.subtitle : "") }), facts));

    var canvas = el("canvas", { id: "slice", width: w, height: h, tabindex: "0", "aria-label": "slice image" });
    var scale = Math.min(512 / w, 512 / h, 8);
    canvas.style.width = Math.round(w * scale) + "px";
    canvas.style.height = Math.round(h * scale) + "px";
    var ctx = canvas.getContext("2d");
    var slider = el("input", { id: "slider", type: "range", min: 0, max: n - 1, step: 1, value: c.start, "aria-label": "slice" });
    var label = el("span", { id: "slice-label" });
    var showLesion = el("input", { id: "show-lesion", type: "checkbox", checked: "checked" });
    var opacity = el("input", { id: "opacity", type: "range", min: 0, max: 100, value: 55, "aria-label": "overlay opacity" });
    var showLungs = data.lungs ? el("input", { id: "show-lungs", type: "checkbox", checked: "checked" }) : null;
    var legend = data.truth
      ? [["tp", "both (true positive)"], ["fp", "prediction only (false positive)"], ["fn", "truth only (false negative)"]]
      : data.classes ? [["ggo", "predicted ground-glass"], ["cons", "predicted consolidation"]] : [["fp", "predicted lesion"]];
    if (data.lungs) legend.push(["lung", "predicted lung outline"]);
    var legendEl = el("ul", { class: "legend" });
    legend.forEach(function (l) { legendEl.appendChild(el("li", {}, el("span", { class: "swatch " + l[0] }), document.createTextNode(l[1]))); });
    var strip = el("canvas", { id: "strip", width: 1000, height: 60, title: "lesion area per slice; click to jump" });
    var info = el("p", { id: "slice-info", class: "sub" });
    var error = el("p", { id: "error", class: "error", hidden: "hidden" });

    var controls = el("div", { class: "controls" },
      el("div", { class: "row" }, el("label", { for: "slider", text: "slice" }), slider, label),
      el("div", { class: "row" }, el("label", {}, showLesion, document.createTextNode(" lesion overlay")), el("label", { for: "opacity", text: "opacity" }), opacity),
      showLungs ? el("div", { class: "row" }, el("label", {}, showLungs, document.createTextNode(" lung outline"))) : null,
      legendEl, info,
      el("p", { class: "hint", text: "Mouse wheel over the image, arrow keys or the slider move through the slices; O toggles the overlay." }));
    app.appendChild(el("section", { class: "viewer" }, el("div", { class: "stage" }, canvas), controls));
    app.appendChild(el("section", { class: "strip-wrap" }, el("h2", { text: "lesion area per slice" + (data.truth ? " (red: predicted, green: truth)" : "") + " \u2014 click to jump" }), strip));
    app.appendChild(error);

    var ct = new Array(n), ov = new Array(n), cur = -1;
    function path(prefix, i, ext) { return c.folder + "/" + prefix + "_" + ("000" + i).slice(-4) + "." + ext; }
    function failed(src) {
      console.error("covidseg viewer: cannot load " + src);
      error.hidden = false;
      error.textContent = "Missing image: " + src;
    }
    function load(i) {
      if (ct[i]) return;
      ct[i] = new Image();
      ov[i] = new Image();
      [ct[i], ov[i]].forEach(function (img) {
        img.onload = function () { if (i === cur) draw(); };
        img.onerror = function () { failed(img.getAttribute("src")); };
      });
      ct[i].src = path("ct", i, "jpg");
      ov[i].src = path("ov", i, "png");
    }
    function ready(img) { return img && img.complete && img.naturalWidth > 0; }
    function draw() {
      ctx.clearRect(0, 0, w, h);
      if (!ready(ct[cur])) return;
      ctx.globalAlpha = 1;
      ctx.drawImage(ct[cur], 0, 0, w, h);
      if (ready(ov[cur])) {
        if (showLesion.checked) {
          ctx.globalAlpha = opacity.value / 100;
          ctx.drawImage(ov[cur], 0, 0, w, h, 0, 0, w, h);
        }
        if (showLungs && showLungs.checked) {
          ctx.globalAlpha = 0.9;
          ctx.drawImage(ov[cur], 0, h, w, h, 0, 0, w, h);
        }
        canvas.setAttribute("data-drawn", String(cur));
      }
      ctx.globalAlpha = 1;
    }
    var peak = 1;
    c.slices.forEach(function (s) { peak = Math.max(peak, s.lesion_pixels, s.truth_pixels || 0); });
    function drawStrip() {
      var sc = strip.getContext("2d"), W = strip.width, H = strip.height, bw = W / n;
      sc.clearRect(0, 0, W, H);
      sc.fillStyle = "#1b1f24";
      sc.fillRect(0, 0, W, H);
      c.slices.forEach(function (s, i) {
        var ph = (H - 6) * s.lesion_pixels / peak;
        sc.fillStyle = "#ff4d4d";
        sc.fillRect(i * bw, H - ph, Math.max(bw - (bw > 3 ? 1 : 0), 1), ph);
        if (s.truth_pixels !== undefined) {
          var th = (H - 6) * s.truth_pixels / peak;
          sc.fillStyle = "#4dff4d";
          sc.fillRect(i * bw, H - th - 1, Math.max(bw - (bw > 3 ? 1 : 0), 1), 2);
        }
      });
      sc.fillStyle = "rgba(255,255,255,0.85)";
      sc.fillRect(Math.floor((cur + 0.5) * bw) - 1, 0, 2, H);
    }
    function setSlice(i) {
      i = Math.max(0, Math.min(n - 1, Math.round(i)));
      if (i === cur) return;
      cur = i;
      load(i);
      slider.value = i;
      canvas.setAttribute("data-slice", String(i));
      canvas.removeAttribute("data-drawn");
      var s = c.slices[i];
      label.textContent = (i + 1) + " / " + n;
      info.textContent = s.label + ": lesion " + s.lesion_pixels + " px" +
        (s.ggo_pixels !== undefined ? " (ground-glass " + s.ggo_pixels + ", consolidation " + s.consolidation_pixels + ")" : "") +
        (s.truth_pixels !== undefined ? ", truth " + s.truth_pixels + " px" : "") +
        (data.lungs ? ", lung " + s.lung_pixels + " px" : "");
      draw();
      drawStrip();
      [i + 1, i - 1, i + 2].forEach(function (j) { if (j >= 0 && j < n) load(j); });
    }
    slider.addEventListener("input", function () { setSlice(Number(slider.value)); });
    showLesion.addEventListener("change", draw);
    opacity.addEventListener("input", draw);
    if (showLungs) showLungs.addEventListener("change", draw);
    canvas.addEventListener("wheel", function (e) { e.preventDefault(); setSlice(cur + (e.deltaY > 0 ? 1 : -1)); }, { passive: false });
    document.addEventListener("keydown", function (e) {
      if (e.target && e.target.tagName === "INPUT" && e.target.type === "range" && e.target !== slider) return;
      var step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1, PageDown: 10, PageUp: -10 }[e.key];
      if (step !== undefined) { e.preventDefault(); setSlice(cur + step); }
      else if (e.key === "Home") setSlice(0);
      else if (e.key === "End") setSlice(n - 1);
      else if (e.key === "o" || e.key === "O") { showLesion.checked = !showLesion.checked; draw(); }
    });
    strip.addEventListener("click", function (e) {
      var r = strip.getBoundingClientRect();
      setSlice(Math.floor((e.clientX - r.left) / r.width * n));
    });
    setSlice(c.start);
    // then the rest of the case in the background, nearest first, so scrolling is smooth
    var order = [];
    for (var d = 1; d < n; d++) { if (c.start + d < n) order.push(c.start + d); if (c.start - d >= 0) order.push(c.start - d); }
    (function next() {
      var batch = order.splice(0, 8);
      batch.forEach(load);
      if (order.length) setTimeout(next, 30);
    })();
  }

  if (data.page === "index") renderIndex();
  else renderCase();
})();
