"""The clickable score map: a raster of the AOI (one pixel per chip) with a few marks, pan/zoom and a colour bar.

Why not a pydeck map: deck.gl picks the clicked object by re-rendering every polygon offscreen; with
software WebGL (SwiftShader, as on VMs and remote desktops) that takes 0.4-0.9 s per press from ~900
polygons on, longer than deck.gl's click threshold, so clicks are dropped, and 150 K polygons are ~10 MB
of JSON per click. A pydeck `BitmapLayer` draws the raster cheaply, but Streamlit's pydeck selection
only carries the picked object (a bitmap has none), not the clicked coordinate; folium/streamlit-folium
loads Leaflet from a CDN, which an offline server cannot reach. So the map is a small Streamlit
custom component (`st.components.v2`, inline JS, no WebGL, nothing fetched): an <img> of the scores,
drawn nearest-neighbour, with the marks on top. A click sends where it landed on the image (fractions
across and down); `core.grid.ChipGrid` turns that into the grid coordinate and the chip under it.
"""

from __future__ import annotations

from typing import Callable

import streamlit as st

from core.grid import ChipGrid
from ui import maps

_HTML = """
<div class="eo-map">
  <div class="eo-frame">
    <div class="eo-stage"><img class="eo-img" alt="score map" draggable="false"/><div class="eo-marks"></div></div>
    <div class="eo-tools"><button class="eo-in" title="Zoom in">+</button><button class="eo-out" title="Zoom out">&minus;</button><button class="eo-reset" title="Fit the AOI">&#x2922;</button></div>
    <div class="eo-hover"></div>
  </div>
  <div class="eo-legend"><div class="eo-title"></div><div class="eo-bar"></div><div class="eo-ticks"></div><div class="eo-keys"></div></div>
</div>
"""

_CSS = """
.eo-map { font-family: var(--st-font, sans-serif); font-size: 13px; color: var(--st-text-color, #222); }
.eo-frame { position: relative; overflow: hidden; background: #f4f4f2; border: 1px solid #ddd; border-radius: 6px;
            cursor: crosshair; touch-action: none; user-select: none; }
.eo-stage { position: absolute; left: 0; top: 0; transform-origin: 0 0; }
.eo-img { position: absolute; left: 0; top: 0; width: 100%; height: 100%; image-rendering: pixelated; }
.eo-marks { position: absolute; left: 0; top: 0; width: 100%; height: 100%; pointer-events: none; }
.eo-mark { position: absolute; box-sizing: border-box; transform: translate(-50%, -50%); border-radius: 2px; }
.eo-mark.query { border: 3px solid rgb(0,174,239); box-shadow: 0 0 0 1px #fff; z-index: 3; }
.eo-mark.result { border: 2px solid rgb(20,20,20); box-shadow: 0 0 0 1px #fff; z-index: 2; }
.eo-mark.positive { border: 2px solid rgb(0,170,80); background: rgba(0,170,80,0.35); z-index: 2; }
.eo-mark.negative { border: 2px solid rgb(220,30,30); background: rgba(220,30,30,0.35); z-index: 2; }
.eo-mark.selected { border: 2px solid rgb(255,140,0); z-index: 2; }
.eo-mark.pending { border: 2px dashed rgb(255,0,255); z-index: 4; }
.eo-mark.label { border: 2px solid rgb(90,90,90); background: rgba(90,90,90,0.35); z-index: 2; }
.eo-mark.label span { display: none; }
.eo-mark.suggested { border: 2px dashed rgb(0,174,239); box-shadow: 0 0 0 1px #fff; z-index: 2; }
.eo-mark.clicked { border: 3px solid rgb(255,0,255); box-shadow: 0 0 0 1px #fff; z-index: 3; }
.eo-mark span { position: absolute; left: 100%; top: -4px; font-size: 10px; background: rgba(255,255,255,0.8); padding: 0 2px; }
.eo-tools { position: absolute; right: 8px; top: 8px; display: flex; flex-direction: column; gap: 4px; z-index: 5; }
.eo-tools button { width: 28px; height: 28px; border: 1px solid #bbb; background: #fff; border-radius: 4px; cursor: pointer; font-size: 16px; line-height: 1; }
.eo-hover { position: absolute; left: 8px; bottom: 6px; background: rgba(255,255,255,0.85); padding: 1px 6px; border-radius: 3px; z-index: 5; }
.eo-legend { margin-top: 6px; max-width: 420px; }
.eo-bar { height: 12px; border: 1px solid #bbb; border-radius: 2px; }
.eo-ticks { position: relative; height: 16px; }
.eo-ticks span { position: absolute; transform: translateX(-50%); font-size: 11px; white-space: nowrap; }
.eo-ticks span:first-child { transform: none; }
.eo-ticks span:last-child { transform: translateX(-100%); }
.eo-keys { font-size: 11px; margin-top: 2px; }
.eo-keys i { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 10px; vertical-align: -1px; box-sizing: border-box; }
"""

_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const root = parentElement.querySelector('.eo-map');
  const frame = root.querySelector('.eo-frame');
  const stage = root.querySelector('.eo-stage');
  const img = root.querySelector('.eo-img');
  const marksEl = root.querySelector('.eo-marks');
  const hover = root.querySelector('.eo-hover');
  const rows = data.rows, cols = data.cols;
  // Mark labels and legend keys can be user text (class names): escape before innerHTML.
  const esc = (s) => String(s).replace(/[&<>"']/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[ch]);
  frame.style.height = data.height + 'px';
  if (img.getAttribute('src') !== data.image) img.setAttribute('src', data.image);

  // The view (zoom k, offset tx/ty in CSS px) survives reruns; a new view_id (another AOI) refits.
  const fit = () => {
    const w = frame.clientWidth || 700, h = data.height;
    const cell = Math.min(w / (cols * data.aspect), h / rows);
    const sw = cols * data.aspect * cell, sh = rows * cell;
    return { sw, sh, k: 1, tx: (w - sw) / 2, ty: (h - sh) / 2 };
  };
  if (!root._view || root._view.id !== data.view_id || !root._view.sw) root._view = { id: data.view_id, ...fit() };
  const view = root._view;
  const apply = () => {
    stage.style.width = view.sw + 'px';
    stage.style.height = view.sh + 'px';
    stage.style.transform = `translate(${view.tx}px, ${view.ty}px) scale(${view.k})`;
  };
  apply();

  // Marks: at least 10 px wide, centred on their cell, so one chip of 150 K stays visible.
  const html = [];
  for (const m of data.marks) {
    const left = (m.c + 0.5) / cols * 100, top = (m.r + 0.5) / rows * 100;
    const size = `max(${10 / view.k}px, ${100 / cols}%)`;
    const hsize = `max(${10 / view.k}px, ${100 / rows}%)`;
    const label = m.label ? `<span>${esc(m.label)}</span>` : '';
    // An optional per-mark colour (e.g. a labelled chip's class) overrides the kind's border (and fill).
    const rgb = m.color ? m.color.join(',') : '';
    const colour = rgb ? `border-color:rgb(${rgb});` + (m.kind === 'label' ? `background:rgba(${rgb},0.35);` : '') : '';
    html.push(`<div class="eo-mark ${m.kind}" title="${esc(m.kind + ' ' + m.label)}" style="left:${left}%;top:${top}%;width:${size};height:${hsize};${colour}">${label}</div>`);
  }
  marksEl.innerHTML = html.join('');

  const zoomAt = (factor, cx, cy) => {
    const k = Math.min(Math.max(view.k * factor, 1), 256);
    const f = k / view.k;
    view.tx = cx - (cx - view.tx) * f;
    view.ty = cy - (cy - view.ty) * f;
    view.k = k;
    apply();
  };
  const local = (e) => { const b = frame.getBoundingClientRect(); return [e.clientX - b.left, e.clientY - b.top]; };
  const fraction = (e) => {
    const b = img.getBoundingClientRect();
    return [(e.clientX - b.left) / b.width, (e.clientY - b.top) / b.height];
  };
  frame.onwheel = (e) => { e.preventDefault(); const [x, y] = local(e); zoomAt(Math.exp(-e.deltaY * 0.0015), x, y); };
  root.querySelector('.eo-in').onclick = (e) => { e.stopPropagation(); zoomAt(2, frame.clientWidth / 2, data.height / 2); };
  root.querySelector('.eo-out').onclick = (e) => { e.stopPropagation(); zoomAt(0.5, frame.clientWidth / 2, data.height / 2); };
  root.querySelector('.eo-reset').onclick = (e) => { e.stopPropagation(); Object.assign(view, fit()); apply(); };
  root.querySelectorAll('.eo-tools button').forEach((b) => { b.onpointerdown = (e) => e.stopPropagation(); });

  // A press that barely moves is a click; otherwise it pans.
  let press = null;
  frame.onpointerdown = (e) => {
    if (e.button !== 0) return;
    press = { x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false };
    frame.setPointerCapture && frame.setPointerCapture(e.pointerId);
  };
  frame.onpointermove = (e) => {
    const [u, v] = fraction(e);
    if (u >= 0 && u < 1 && v >= 0 && v < 1) {
      hover.textContent = `row ${Math.floor(v * rows) + data.row0}, col ${Math.floor(u * cols) + data.col0}` + (data.clickable ? ' · click to ' + data.action : '');
    } else hover.textContent = '';
    if (!press) return;
    const dx = e.clientX - press.x, dy = e.clientY - press.y;
    if (Math.abs(dx) + Math.abs(dy) > 4) press.moved = true;
    if (press.moved) { view.tx = press.tx + dx; view.ty = press.ty + dy; apply(); }
  };
  frame.onpointerup = (e) => {
    const p = press; press = null;
    if (!p || p.moved || !data.clickable) return;
    const [u, v] = fraction(e);
    if (!(u >= 0 && u < 1 && v >= 0 && v < 1)) return;
    // Show where the click landed at once; the page redraws the marks when the answer comes.
    const mark = document.createElement('div');
    mark.className = 'eo-mark pending';
    mark.style.cssText = `left:${u * 100}%;top:${v * 100}%;width:${14 / view.k}px;height:${14 / view.k}px`;
    marksEl.appendChild(mark);
    setTriggerValue('click', { u, v });
  };

  const lg = data.legend;
  root.querySelector('.eo-title').textContent = lg.title + (lg.units ? ` (${lg.units})` : '');
  root.querySelector('.eo-bar').style.background = lg.gradient;
  root.querySelector('.eo-ticks').innerHTML = lg.ticks.map((t) => `<span style="left:${t.at * 100}%">${t.text}</span>`).join('');
  const keys = [`<i style="background:${lg.nan}"></i>n/a`];
  const kinds = new Set(data.marks.map((m) => m.kind));
  if (kinds.has('query')) keys.push('<i style="border:2px solid rgb(0,174,239)"></i>query');
  if (kinds.has('result')) keys.push('<i style="border:2px solid rgb(20,20,20)"></i>results');
  if (kinds.has('positive')) keys.push('<i style="background:rgb(0,170,80)"></i>positive');
  if (kinds.has('negative')) keys.push('<i style="background:rgb(220,30,30)"></i>negative');
  // Extra keys from the page (e.g. the classes of a label set): text, mark kind, optional colour.
  for (const k of (data.keys || [])) {
    const rgb = k.color ? k.color.join(',') : '90,90,90';
    const style = k.kind === 'suggested' ? 'border:2px dashed rgb(0,174,239)'
      : k.kind === 'clicked' ? 'border:2px solid rgb(255,0,255)'
      : `border:2px solid rgb(${rgb});background:rgba(${rgb},0.35)`;
    keys.push(`<i style="${style}"></i>${esc(k.text)}`);
  }
  if (kinds.has('selected')) keys.push('<i style="border:2px solid rgb(255,140,0)"></i>selected');
  root.querySelector('.eo-keys').innerHTML = keys.join('') + (data.note ? ` · ${data.note}` : '');
}
"""

_COMPONENT = st.components.v2.component("eo_raster_map", html=_HTML, css=_CSS, js=_JS)


def raster_map(
    grid: ChipGrid,
    image_url: str,
    legend: dict,
    marks: list[dict],
    *,
    key: str,
    aspect: float = 1.0,
    height: int = 520,
    on_click: Callable[[], None] | None = None,
    action: str = "search from that chip",
    note: str = "",
    view_id: str = "",
    keys: list[dict] | None = None,
) -> object:
    """Mount the score map; a click (when `on_click` is given) sets the trigger read by `clicked_position`;
    `keys`: extra legend keys ({"text", "kind", optional "color": [r, g, b]}), e.g. a label set's classes."""
    data = {
        "image": image_url, "rows": int(grid.shape[0]), "cols": int(grid.shape[1]), "row0": grid.row0,
        "col0": grid.col0, "aspect": float(aspect), "height": int(height), "marks": marks, "legend": legend,
        "clickable": on_click is not None, "action": action, "note": note, "view_id": view_id or key,
        "keys": keys or [],
    }
    kwargs = {"on_click_change": on_click} if on_click is not None else {}
    return _COMPONENT(key=key, data=data, height=height + 110, **kwargs)


def score_map(grid: ChipGrid, values, scale: maps.ColorScale, *, units: str, key: str, marks: list[dict] | None = None,
              height: int = 440, note: str = "") -> object:
    """A map of one value per chip that is only looked at (no click): the raster, marks and colour bar."""
    png = maps.score_png(grid, values, scale)
    return raster_map(grid, maps.png_data_url(png), maps.legend_spec(scale, units), marks or [], key=key,
                      aspect=maps.cell_aspect(grid), height=height, note=note)


def clicked_position(grid: ChipGrid, key: str) -> int | None:
    """Store position of the chip the last click landed on (read inside the click callback), or None.

    The click's place on the image becomes a lon/lat coordinate and the chip is looked up from it
    (`ChipGrid.chip_at`'s path); grids that are not regular in their CRS use the image's row/col cell.
    """
    value = st.session_state.get(key)
    click = value.get("click") if hasattr(value, "get") else None
    if not isinstance(click, dict):
        return None
    try:
        u, v = float(click["u"]), float(click["v"])
    except (KeyError, TypeError, ValueError):
        return None
    lonlat = grid.lonlat_at_fraction(u, v) if 0.0 <= u < 1.0 and 0.0 <= v < 1.0 else None
    if lonlat is None:
        return grid.position_at_fraction(u, v)
    return grid.position_at(*lonlat)
