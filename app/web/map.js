// A world map in plain SVG, drawn from the country outlines the server ships
// (/api/countries.geojson): no tiles, no scripts from the internet. Equirectangular
// projection (x = lon, y = -lat, one unit per degree), zoomed by moving the viewBox; a fitted
// view squeezes x by cos(latitude of its centre), so France at 47°N is not 1.5 times too wide.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

class WorldMap {
  constructor(svg) {
    this.svg = svg;
    this.layers = {};
    for (const g of svg.querySelectorAll("g[id]")) this.layers[g.id] = g;
    this.view = { x: -180, y: -90, w: 360, h: 180 };
    this.k = 1; // x scale of the projection: cos(standard parallel)
    this.sized = []; // [ellipse, pixels]: marks keep their size on screen whatever the zoom
    this.countries = new Map();
    this.apply();
    this.enablePanZoom();
    new ResizeObserver(() => this.apply()).observe(svg);
  }

  async load(fetchJSON) {
    if (this.countries.size) return;
    const geo = await fetchJSON("/api/countries.geojson");
    const land = this.layers.land;
    for (const f of geo.features) {
      const d = f.geometry.coordinates
        .map((poly) => poly.map((ring) => "M" + ring.map(([lon, lat]) => `${lon},${-lat}`).join("L") + "Z").join(""))
        .join("");
      const path = svgEl("path", { d, "data-iso2": f.properties.iso2 }, land);
      svgEl("title", {}, path).textContent = f.properties.name;
      this.countries.set(f.properties.iso2, path);
    }
    this.svg.dataset.countries = String(geo.features.length);
  }

  // ---- view -------------------------------------------------------------------------------
  pxPerUnit() {
    const r = this.svg.getBoundingClientRect();
    return Math.min(r.width / this.view.w, r.height / this.view.h) || 1;
  }

  apply() {
    const v = this.view;
    this.svg.setAttribute("viewBox", `${v.x} ${v.y} ${v.w} ${v.h}`);
    const unit = 1 / this.pxPerUnit();
    for (const [el, px] of this.sized) {
      el.setAttribute("rx", (px * unit) / this.k);
      el.setAttribute("ry", px * unit);
    }
  }

  zoom(factor, cx, cy) {
    const v = this.view;
    cx = cx ?? v.x + v.w / 2;
    cy = cy ?? v.y + v.h / 2;
    const w = Math.min(360, Math.max(0.05, v.w / factor));
    const h = w / 2;
    this.view = { x: cx - ((cx - v.x) * w) / v.w, y: cy - ((cy - v.y) * h) / v.h, w, h };
    this.apply();
  }

  setProjection(k) {
    this.k = k;
    this.layers.world.setAttribute("transform", `scale(${k},1)`);
  }

  fit(points, minSpanDeg = 10) {
    if (!points.length) return;
    const lats = points.map((p) => p.lat);
    this.setProjection(Math.max(0.35, Math.cos(((Math.min(...lats) + Math.max(...lats)) / 2) * Math.PI / 180)));
    const xs = points.map((p) => p.lon * this.k), ys = points.map((p) => -p.lat);
    let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    const r = this.svg.getBoundingClientRect();
    const aspect = r.width && r.height ? r.width / r.height : 2;
    let w = Math.max(x1 - x0, minSpanDeg) * 1.5, h = Math.max(y1 - y0, minSpanDeg / 2) * 1.5;
    if (w / h < aspect) w = h * aspect; else h = w / aspect;
    w = Math.min(w, 360 * Math.max(1, aspect / 2));
    h = w / aspect;
    this.view = { x: (x0 + x1) / 2 - w / 2, y: (y0 + y1) / 2 - h / 2, w, h };
    this.apply();
  }

  toMap(clientX, clientY) {
    const pt = new DOMPoint(clientX, clientY).matrixTransform(this.svg.getScreenCTM().inverse());
    return { x: pt.x, y: pt.y };
  }

  enablePanZoom() {
    const svg = this.svg;
    svg.addEventListener("wheel", (e) => {
      e.preventDefault();
      const p = this.toMap(e.clientX, e.clientY);
      this.zoom(e.deltaY < 0 ? 1.25 : 0.8, p.x, p.y);
    }, { passive: false });
    let drag = null;
    svg.addEventListener("pointerdown", (e) => {
      if (e.target.classList.contains("candidate")) return;
      drag = { start: this.toMap(e.clientX, e.clientY), view: { ...this.view } };
      svg.setPointerCapture(e.pointerId);
      svg.classList.add("dragging");
    });
    svg.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const p = this.toMap(e.clientX, e.clientY);
      this.view.x -= p.x - drag.start.x;
      this.view.y -= p.y - drag.start.y;
      this.apply();
    });
    const end = () => { drag = null; svg.classList.remove("dragging"); };
    svg.addEventListener("pointerup", end);
    svg.addEventListener("pointercancel", end);
  }

  // ---- layers -----------------------------------------------------------------------------
  clear() {
    for (const name of ["submaps", "truth-line", "prior-layer", "candidates", "marks"]) this.layers[name].replaceChildren();
    for (const path of this.countries.values()) path.classList.remove("searched", "answer-country");
    this.sized = [];
  }

  dot(layer, p, px, cls, title) {
    const c = svgEl("ellipse", { cx: p.lon, cy: -p.lat, class: cls }, this.layers[layer]);
    this.sized.push([c, px]);
    this.apply();
    if (title) svgEl("title", {}, c).textContent = title;
    return c;
  }

  // An uncertainty circle of radius km, drawn as an ellipse in degrees (wider towards the poles).
  circle(layer, p, km, cls) {
    const ry = km / 111.2, rx = ry / Math.max(0.05, Math.cos((p.lat * Math.PI) / 180));
    return svgEl("ellipse", { cx: p.lon, cy: -p.lat, rx, ry, class: cls }, this.layers[layer]);
  }

  shadeCountry(iso2, cls) {
    const path = this.countries.get(iso2);
    if (path) path.classList.add(cls);
    return Boolean(path);
  }

  line(layer, a, b) {
    return svgEl("line", { x1: a.lon, y1: -a.lat, x2: b.lon, y2: -b.lat }, this.layers[layer]);
  }
}

window.WorldMap = WorldMap;
