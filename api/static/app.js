// shopsearch web page: plain JavaScript, no external resources (works offline).
"use strict";

(function () {
  const DEFAULT_PAGE_SIZE = 24;
  const SOURCES = [
    ["bm25", "BM25"],
    ["text", "Text vector"],
    ["text_image", "Text → image"],
    ["image", "Image vector"],
  ];

  const state = {
    query: "",
    photo: null, // File
    photoUrl: null,
    filters: { category: null, brands: [], price_min: null, price_max: null },
    offset: 0,
    k: DEFAULT_PAGE_SIZE,
    explain: false,
    exact: false, // "search instead for": the query as typed, no spelling correction
  };
  let requestSeq = 0;

  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("search-form"), q: $("q"), photo: $("photo"), chip: $("photo-chip"), preview: $("photo-preview"),
    photoClear: $("photo-clear"), fileIcon: $("photo-file"), status: $("status"), error: $("error"), grid: $("grid"),
    prev: $("prev"), next: $("next"), pageInfo: $("page-info"), scores: $("show-scores"),
    catList: $("facet-category"), brandList: $("facet-brand"), priceList: $("facet-price"),
    priceForm: $("price-form"), priceMin: $("price-min"), priceMax: $("price-max"),
    active: $("active-filters"), clearFilters: $("clear-filters"), overlay: $("drop-overlay"),
    filtersPanel: $("filters-panel"), filterCount: $("filter-count"),
    main: $("results"),
  };

  // ------------------------------------------------------------------ helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  const money = new Intl.NumberFormat(undefined, { style: "currency", currency: "USD" });
  function fmtPrice(p) { return p === null || p === undefined ? "" : money.format(p); }
  function fmtNum(x) { return Math.abs(x) >= 100 ? x.toFixed(1) : Math.abs(x) >= 1 ? x.toFixed(2) : x.toFixed(4); }
  function fmtMs(ms) { return ms >= 100 ? ms.toFixed(0) : ms.toFixed(1); }

  function apiFilters() {
    const f = {};
    if (state.filters.category) f.category = state.filters.category;
    if (state.filters.brands.length) f.brands = state.filters.brands;
    if (state.filters.price_min !== null) f.price_min = state.filters.price_min;
    if (state.filters.price_max !== null) f.price_max = state.filters.price_max;
    return f;
  }

  function showError(message, status) {
    els.error.replaceChildren(el("strong", { text: status ? `Error ${status}:` : "Error:" }), message);
    els.error.hidden = false;
  }
  function clearError() { els.error.hidden = true; els.error.textContent = ""; }

  // ------------------------------------------------------------------ URL state (text queries only)
  function saveUrl() {
    const p = new URLSearchParams();
    if (state.query) p.set("q", state.query);
    if (state.filters.category) p.set("category", state.filters.category);
    for (const b of state.filters.brands) p.append("brand", b);
    if (state.filters.price_min !== null) p.set("price_min", state.filters.price_min);
    if (state.filters.price_max !== null) p.set("price_max", state.filters.price_max);
    if (state.offset) p.set("offset", state.offset);
    if (state.k !== DEFAULT_PAGE_SIZE) p.set("k", state.k);
    if (state.explain) p.set("scores", "1");
    const qs = p.toString();
    history.replaceState(null, "", qs ? `?${qs}` : location.pathname);
  }
  function loadUrl() {
    const p = new URLSearchParams(location.search);
    state.query = p.get("q") || "";
    state.filters.category = p.get("category");
    state.filters.brands = p.getAll("brand");
    const num = (v) => (v === null || v === "" || isNaN(Number(v)) ? null : Number(v));
    state.filters.price_min = num(p.get("price_min"));
    state.filters.price_max = num(p.get("price_max"));
    state.offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
    const k = parseInt(p.get("k") || "", 10);
    state.k = k >= 1 && k <= 100 ? k : DEFAULT_PAGE_SIZE;
    state.explain = p.get("scores") === "1";
    els.q.value = state.query;
    els.scores.checked = state.explain;
  }

  // ------------------------------------------------------------------ search
  async function search() {
    const seq = ++requestSeq;
    clearError();
    document.body.classList.add("loading");
    els.main.setAttribute("aria-busy", "true");
    let resp;
    try {
      if (state.photo) {
        const fd = new FormData();
        fd.append("image", state.photo, state.photo.name || "photo");
        if (state.query) fd.append("query", state.query);
        fd.append("k", state.k);
        fd.append("offset", state.offset);
        fd.append("filters", JSON.stringify(apiFilters()));
        fd.append("explain", state.explain ? "true" : "false");
        if (state.exact) fd.append("spell_correction", "false");
        resp = await fetch("search/image", { method: "POST", body: fd });
      } else {
        resp = await fetch("search", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({
            query: state.query || null, k: state.k, offset: state.offset,
            filters: apiFilters(), explain: state.explain,
            spell_correction: state.exact ? false : null,
          }),
        });
      }
      let data = null;
      try { data = await resp.json(); } catch (_) { data = null; }
      if (seq !== requestSeq) return; // a newer search superseded this one
      if (!resp.ok) {
        const msg = data && data.error ? data.error.message : `${resp.status} ${resp.statusText}`;
        showError(msg, resp.status);
        renderEmpty("No results: fix the problem above and search again.");
        els.status.textContent = "";
        updatePager(0);
        return;
      }
      render(data);
    } catch (err) {
      if (seq !== requestSeq) return;
      showError(`the server could not be reached (${err.message})`);
    } finally {
      if (seq === requestSeq) {
        document.body.classList.remove("loading");
        els.main.removeAttribute("aria-busy");
      }
    }
  }

  function newSearch() {
    state.offset = 0;
    saveUrl();
    search();
  }

  // ------------------------------------------------------------------ rendering
  function render(data) {
    const n = data.results.length;
    const from = n ? data.offset + 1 : 0;
    const what = state.photo ? (state.query ? "photo + text" : "photo") : state.query ? `“${state.query}”` : "all products";
    els.status.replaceChildren(
      el("strong", { text: `${data.total.toLocaleString()} result${data.total === 1 ? "" : "s"}` }),
      ` in ${fmtMs(data.took_ms)} ms`,
      n ? ` · showing ${from}–${data.offset + n} for ${what}` : ` for ${what}`,
    );
    if (data.corrected_query) {
      const typed = state.query;
      els.status.append(
        el("span", { class: "did-you-mean" },
          " · showing results for ", el("strong", { text: data.corrected_query }), " · ",
          el("a", {
            href: "#", class: "search-exact", text: `search instead for “${typed}”`,
            onclick: (ev) => { ev.preventDefault(); state.exact = true; state.offset = 0; search(); },
          })),
      );
    }
    if (data.did_you_mean) { // common words searched as typed; the catalog's spelling is offered
      const meant = data.did_you_mean;
      els.status.append(
        el("span", { class: "did-you-mean" },
          " · did you mean ",
          el("a", {
            href: "#", class: "search-suggestion", text: meant,
            onclick: (ev) => { ev.preventDefault(); els.q.value = meant; state.query = meant; state.exact = false; newSearch(); },
          }), "?"),
      );
    }
    els.status.dataset.total = data.total;
    if (!n) renderEmpty(data.total ? "No more results on this page." : "Nothing matched. Try fewer words or remove a filter.");
    else els.grid.replaceChildren(...data.results.map(card));
    renderFacets(data.facets || {});
    renderActive();
    updatePager(data.total);
  }

  function renderEmpty(text) {
    els.grid.replaceChildren(el("li", { class: "empty", text }));
  }

  function card(r) {
    const media = r.image_url
      ? el("img", { src: r.image_url, alt: r.title || r.id, loading: "lazy", decoding: "async" })
      : el("span", { class: "no-image", text: "No image" });
    const body = el("div", { class: "card-body" },
      r.brand ? el("div", { class: "card-brand", text: r.brand }) : null,
      el("h3", { class: "card-title", text: r.title || r.id, title: r.title || r.id }),
      r.category ? el("div", { class: "card-category", text: r.category }) : null,
      el("div", { class: "card-price", text: fmtPrice(r.price) }),
      r.explain ? scores(r.explain) : null,
    );
    return el("li", { class: "card", "data-id": r.id }, el("div", { class: "card-media" }, media), body);
  }

  function scores(explain) {
    const dl = el("dl", { class: "scores", "aria-label": "Ranking scores" });
    for (const [key, label] of SOURCES) {
      const s = explain[key];
      if (!s || typeof s !== "object") continue;
      dl.append(
        el("dt", { text: label }),
        el("dd", { class: "rank", text: `#${s.rank}` }),
        el("dd", { class: `score score-${key}`, text: fmtNum(s.score) }),
      );
    }
    if (typeof explain.fused === "number") {
      dl.append(el("dt", { class: "fused", text: "Fused" }), el("dd", {}), el("dd", { class: "fused score-fused", text: fmtNum(explain.fused) }));
    }
    return dl;
  }

  function facetButton(label, count, pressed, onclick, depth) {
    const btn = el("button", { type: "button", class: "facet-btn", "aria-pressed": pressed ? "true" : "false", onclick },
      el("span", { class: "name", text: label, title: label }),
      el("span", { class: "count", text: String(count) }));
    if (depth) btn.style.paddingLeft = `${8 + depth * 14}px`; // CSSOM: allowed by the page's CSP
    return el("li", {}, btn);
  }

  function renderFacets(facets) {
    // categories: every level of the path; indent children under their parents
    const cats = Object.entries(facets.category || {}).sort((a, b) => a[0].localeCompare(b[0]));
    els.catList.replaceChildren(...(cats.length ? cats.map(([path, count]) => {
      const parts = path.split(" > ");
      const selected = state.filters.category === path;
      return facetButton(parts[parts.length - 1], count, selected, () => {
        state.filters.category = selected ? null : path;
        newSearch();
      }, parts.length - 1);
    }) : [el("li", { class: "facet-empty", text: "No categories" })]));

    const brands = Object.entries(facets.brand || {});
    for (const b of state.filters.brands) if (!brands.some(([name]) => name === b)) brands.push([b, 0]);
    els.brandList.replaceChildren(...(brands.length ? brands.map(([name, count]) => {
      const selected = state.filters.brands.includes(name);
      return facetButton(name, count, selected, () => {
        state.filters.brands = selected ? state.filters.brands.filter((b) => b !== name) : [...state.filters.brands, name];
        newSearch();
      });
    }) : [el("li", { class: "facet-empty", text: "No brands" })]));

    const buckets = facets.price || [];
    els.priceList.replaceChildren(...buckets.map((b) => {
      const label = b.max === null ? `${fmtPrice(b.min)} and up` : `${fmtPrice(b.min)} – ${fmtPrice(b.max)}`;
      const selected = state.filters.price_min === b.min && state.filters.price_max === b.max;
      return facetButton(label, b.count, selected, () => {
        state.filters.price_min = selected ? null : b.min;
        state.filters.price_max = selected ? null : b.max;
        syncPriceInputs();
        newSearch();
      });
    }));
  }

  function syncPriceInputs() {
    els.priceMin.value = state.filters.price_min ?? "";
    els.priceMax.value = state.filters.price_max ?? "";
  }

  function renderActive() {
    const pills = [];
    const pill = (text, onclick) => el("button", { type: "button", class: "pill", onclick, "aria-label": `Remove filter ${text}` },
      text, el("span", { "aria-hidden": "true", text: "×" }));
    if (state.filters.category) pills.push(pill(state.filters.category, () => { state.filters.category = null; newSearch(); }));
    for (const b of state.filters.brands) {
      pills.push(pill(b, () => { state.filters.brands = state.filters.brands.filter((x) => x !== b); newSearch(); }));
    }
    if (state.filters.price_min !== null || state.filters.price_max !== null) {
      const lo = state.filters.price_min !== null ? fmtPrice(state.filters.price_min) : "any";
      const hi = state.filters.price_max !== null ? fmtPrice(state.filters.price_max) : "any";
      pills.push(pill(`Price ${lo} – ${hi}`, () => {
        state.filters.price_min = state.filters.price_max = null; syncPriceInputs(); newSearch();
      }));
    }
    els.active.replaceChildren(...pills);
    els.clearFilters.hidden = pills.length === 0;
    els.filterCount.textContent = pills.length ? `(${pills.length})` : "";
  }

  function updatePager(total) {
    const page = Math.floor(state.offset / state.k) + 1;
    const pages = Math.max(1, Math.ceil(total / state.k));
    els.prev.disabled = state.offset <= 0;
    els.next.disabled = state.offset + state.k >= total;
    els.pageInfo.textContent = total ? `Page ${page} of ${pages}` : "";
    els.prev.parentElement.hidden = total <= state.k && state.offset === 0;
  }

  // ------------------------------------------------------------------ photo
  function setPhoto(file) {
    if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
    state.photo = file;
    state.photoUrl = file ? URL.createObjectURL(file) : null;
    els.chip.hidden = !file;
    const label = file ? `Photo being searched: ${file.name || "pasted image"}` : "";
    els.chip.title = file ? file.name || "pasted image" : "";
    if (file && file.type.startsWith("image/")) {
      els.preview.src = state.photoUrl;
      els.preview.alt = label;
      showPreview(true);
    } else {
      els.preview.removeAttribute("src");
      showPreview(false);
      els.fileIcon.setAttribute("aria-label", label);
      if (!file) els.photo.value = "";
    }
  }
  function showPreview(asImage) {
    els.preview.hidden = !asImage;
    els.fileIcon.hidden = asImage;
  }

  // ------------------------------------------------------------------ events
  els.form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (els.q.value.trim() !== state.query) state.exact = false; // a new query is corrected again
    state.query = els.q.value.trim();
    newSearch();
  });
  els.photo.addEventListener("change", () => {
    const file = els.photo.files && els.photo.files[0];
    if (!file) return;
    setPhoto(file);
    if (els.q.value.trim() !== state.query) state.exact = false; // a new query is corrected again
    state.query = els.q.value.trim();
    newSearch();
  });
  els.preview.addEventListener("error", () => { if (state.photo) showPreview(false); }); // e.g. a text file named .jpg
  els.photoClear.addEventListener("click", () => {
    setPhoto(null);
    els.q.focus();
    newSearch();
  });
  els.scores.addEventListener("change", () => {
    state.explain = els.scores.checked;
    saveUrl();
    search();
  });
  els.prev.addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - state.k);
    saveUrl(); search(); els.main.focus(); window.scrollTo(0, 0);
  });
  els.next.addEventListener("click", () => {
    state.offset += state.k;
    saveUrl(); search(); els.main.focus(); window.scrollTo(0, 0);
  });
  els.priceForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const num = (v) => (v === "" ? null : Number(v));
    state.filters.price_min = num(els.priceMin.value);
    state.filters.price_max = num(els.priceMax.value);
    newSearch();
  });
  els.clearFilters.addEventListener("click", () => {
    state.filters = { category: null, brands: [], price_min: null, price_max: null };
    syncPriceInputs();
    newSearch();
  });

  // drag and drop anywhere on the page; paste an image from the clipboard
  let dragDepth = 0;
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  window.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth += 1;
    els.overlay.hidden = false;
    els.form.classList.add("dragging");
  });
  window.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) { els.overlay.hidden = true; els.form.classList.remove("dragging"); }
  });
  window.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    els.overlay.hidden = true;
    els.form.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (file) { setPhoto(file); state.query = els.q.value.trim(); newSearch(); }
  });
  window.addEventListener("paste", (e) => {
    const file = Array.from((e.clipboardData && e.clipboardData.files) || []).find((f) => f.type.startsWith("image/"));
    if (file) { e.preventDefault(); setPhoto(file); state.query = els.q.value.trim(); newSearch(); }
  });

  // small screens: filters start folded so the results come first
  if (window.matchMedia("(max-width: 820px)").matches) els.filtersPanel.open = false;
  loadUrl();
  syncPriceInputs();
  search();
})();
