// meshemu view: a run (or plan) on a 3D globe or a 2D map, step by step, with its flows.
//
// One THREE.Points object holds every node, one THREE.LineSegments buffer every link up at
// the current step (rewritten in place per step, drawRange = links up), a second one the
// flows' paths. Everything comes from the server that served this page (/api/..., /lib/...).
// window.meshemuState says what is drawn (tests and benchmarks read it); window.meshemu
// drives the page (goto, selectNode, selectLink, screenPos, setMode, bench).
import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';
import uPlot from 'uplot';

const R_KM = 6371.0;
const KIND_COLOR = {
  sat: '#8fb8e8', compute: '#ff4d4d', station: '#3ddc84', user: '#c08cff', datacenter: '#ffa03a',
  pop: '#d2a679', server: '#cccccc',
};
const KIND_SIZE = { sat: 3.2, compute: 9, station: 9, user: 8, datacenter: 9, pop: 8, server: 7 };
const LINK_COLOR = { isl: '#3f7fbf', gsl: '#3ddc84', trl: '#d2a679', '?': '#999999' };
const UNKNOWN_RATE_COLOR = '#ff9f1c';
const SCALE = ['#3b4cc0', '#7cb8f0', '#f6d55c', '#ed553b'];
const PALETTE = ['#e6194b', '#3cb44b', '#ffe119', '#4363d8', '#f58231', '#911eb4', '#46f0f0',
  '#f032e6', '#bcf60c', '#fabebe', '#008080', '#e6beff', '#9a6324', '#fffac8', '#aaffc3'];

const state = {
  ready: false, mode: '3d', step: -1, t_s: null, drawnLinks: 0, drawnSegments: 0,
  drawnNodes: 0, drawnPaths: 0, selectedNode: null, selectedLink: null, nodeInfo: null,
  linkInfo: null, live: null, renders: 0, renderMs: [], stepMs: [], frameTimes: [],
  errors: [], flows: 0, chartPoints: { tp: 0, lat: 0 }, flowStats: null,
};
window.meshemuState = state;
window.addEventListener('error', (e) => state.errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => state.errors.push(String(e.reason)));

const $ = (id) => document.getElementById(id);
async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
  return r.json();
}
const col = (hex) => new THREE.Color(hex);
// colours made once: a step's buffers are rewritten without allocating per link
const SCALE_COLORS = SCALE.map((c) => new THREE.Color(c));
const scratch = new THREE.Color();
function scaleColor(x, out = new THREE.Color()) { // x in [0, 1] -> a colour of SCALE
  x = Math.min(Math.max(x, 0), 1) * (SCALE.length - 1);
  const i = Math.min(Math.floor(x), SCALE.length - 2);
  return out.copy(SCALE_COLORS[i]).lerp(SCALE_COLORS[i + 1], x - i);
}

// ------------------------------------------------------------------------ data
let meta = null;
let flows = { flows: [], measured_to_s: null, has_fib: false };
let maxMbps = 0;
const stepCache = new Map();
const pending = new Map();
function loadStep(k) {
  if (stepCache.has(k)) return Promise.resolve(stepCache.get(k));
  if (pending.has(k)) return pending.get(k);
  const p = getJSON(`/api/step/${k}`).then((d) => {
    stepCache.set(k, d); pending.delete(k); return d;
  });
  pending.set(k, p);
  return p;
}
const utilCache = new Map();
async function loadUtil(k) {
  if (!utilCache.has(k) || meta.live) utilCache.set(k, await getJSON(`/api/util/${k}`));
  return utilCache.get(k);
}

// ------------------------------------------------------------------------ scene
const canvas = $('canvas');
// no multisampling: WebGL often runs on the CPU (SwiftShader, headless), where it costs most
const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
renderer.setClearColor('#05070b');
const scene = new THREE.Scene();
const cam3 = new THREE.PerspectiveCamera(40, 1, 0.01, 100);
cam3.position.set(1.2, 1.9, 3.3);
const cam2 = new THREE.OrthographicCamera(-2.1, 2.1, 1.1, -1.1, -10, 10);
cam2.position.set(0, 0, 5);
const ctl3 = new OrbitControls(cam3, canvas);
ctl3.minDistance = 1.25; ctl3.maxDistance = 12; ctl3.rotateSpeed = 0.6;
const ctl2 = new OrbitControls(cam2, canvas);
ctl2.enableRotate = false; ctl2.screenSpacePanning = true; ctl2.enabled = false;
ctl2.minZoom = 0.8; ctl2.maxZoom = 40;
for (const c of [ctl3, ctl2]) c.addEventListener('change', () => requestRender());
const camera = () => (state.mode === '3d' ? cam3 : cam2);

const globe = new THREE.Mesh(new THREE.SphereGeometry(1, 128, 64),
  new THREE.MeshBasicMaterial({ color: '#0b2540' }));
const flat = new THREE.Mesh(new THREE.PlaneGeometry(4, 2),
  new THREE.MeshBasicMaterial({ color: '#0b2540' }));
flat.visible = false;
scene.add(globe, flat);

let N = 0; let L = 0;
let nodePos; let nodeCol; let nodeSize; let points;
let linkPos; let linkCol; let linkGeo; let linkSegs; let segLink;
let pathPos; let pathCol; let pathGeo; let pathSegs;
let selPos; let selCol; let selGeo; let selSegs; let marker;
let labels = [];

function makeEarthTexture(topo) {
  const W = 2048; const H = 1024;
  const c = document.createElement('canvas'); c.width = W; c.height = H;
  const g = c.getContext('2d');
  g.fillStyle = '#0b2540'; g.fillRect(0, 0, W, H);
  g.strokeStyle = '#1b3b60'; g.lineWidth = 1;
  for (let lon = -180; lon <= 180; lon += 30) {
    g.beginPath(); g.moveTo((lon + 180) / 360 * W, 0); g.lineTo((lon + 180) / 360 * W, H); g.stroke();
  }
  for (let lat = -60; lat <= 60; lat += 30) {
    g.beginPath(); g.moveTo(0, (90 - lat) / 180 * H); g.lineTo(W, (90 - lat) / 180 * H); g.stroke();
  }
  // Natural Earth rings may cross the antimeridian: unwrap their longitudes, draw each
  // three times (shifted by -360, 0, +360 deg) and close a ring around a pole through it
  const land = topojson.feature(topo, topo.objects.land);
  const geoms = land.type === 'FeatureCollection' ? land.features.map((f) => f.geometry) : [land.geometry];
  const rings = [];
  for (const geom of geoms) {
    const polys = geom.type === 'Polygon' ? [geom.coordinates] : geom.coordinates;
    for (const poly of polys) {
      for (const ring of poly) {
        const pts = []; let prev = null;
        for (const [lon0, lat] of ring) {
          let lon = lon0;
          if (prev != null) { while (lon - prev > 180) lon -= 360; while (lon - prev < -180) lon += 360; }
          pts.push([lon, lat]); prev = lon;
        }
        const span = pts[pts.length - 1][0] - pts[0][0];
        rings.push({ pts, polar: Math.abs(span) > 180 });
      }
    }
  }
  const X = (lon) => (lon + 180) / 360 * W; const Y = (lat) => (90 - lat) / 180 * H;
  g.fillStyle = '#2a4a35';
  g.beginPath();
  for (const { pts, polar } of rings) {
    for (const sh of [-360, 0, 360]) {
      pts.forEach(([lon, lat], i) => (i ? g.lineTo(X(lon + sh), Y(lat)) : g.moveTo(X(lon + sh), Y(lat))));
      if (polar) {
        const pole = pts.reduce((a, p) => a + p[1], 0) < 0 ? -90 : 90;
        g.lineTo(X(pts[pts.length - 1][0] + sh), Y(pole)); g.lineTo(X(pts[0][0] + sh), Y(pole));
      }
      g.closePath();
    }
  }
  g.fill('nonzero');
  g.strokeStyle = '#9cc3a4'; g.lineWidth = 1.3;
  for (const { pts } of rings) {
    for (const sh of [-360, 0, 360]) {
      g.beginPath();
      pts.forEach(([lon, lat], i) => (i ? g.lineTo(X(lon + sh), Y(lat)) : g.moveTo(X(lon + sh), Y(lat))));
      g.stroke();
    }
  }
  const tex = new THREE.CanvasTexture(c);
  tex.colorSpace = THREE.SRGBColorSpace;
  return tex;
}

function buildObjects() {
  N = meta.nodes.name.length; L = meta.links.a.length;
  nodePos = new Float32Array(N * 3); nodeCol = new Float32Array(N * 3); nodeSize = new Float32Array(N);
  meta.nodes.kind.forEach((k, i) => {
    const c = col(KIND_COLOR[k] || '#ffffff'); c.toArray(nodeCol, i * 3);
    nodeSize[i] = KIND_SIZE[k] || 5;
  });
  const ng = new THREE.BufferGeometry();
  ng.setAttribute('position', new THREE.BufferAttribute(nodePos, 3).setUsage(THREE.DynamicDrawUsage));
  ng.setAttribute('color', new THREE.BufferAttribute(nodeCol, 3));
  ng.setAttribute('size', new THREE.BufferAttribute(nodeSize, 1));
  const pm = new THREE.ShaderMaterial({
    uniforms: { uScale: { value: renderer.getPixelRatio() } },
    vertexShader: `attribute float size; attribute vec3 color; varying vec3 vColor; uniform float uScale;
      void main() { vColor = color; gl_PointSize = size * uScale;
        gl_Position = projectionMatrix * modelViewMatrix * vec4(position, 1.0); }`,
    fragmentShader: `varying vec3 vColor;
      void main() { vec2 c = gl_PointCoord - 0.5; float r = dot(c, c); if (r > 0.25) discard;
        gl_FragColor = vec4(vColor * (r > 0.16 ? 0.6 : 1.0), 1.0); }`,
  });
  points = new THREE.Points(ng, pm);
  points.renderOrder = 3;
  const cap = Math.max(1, 2 * L); // a link split at the antimeridian (2D) is two segments
  linkPos = new Float32Array(cap * 6); linkCol = new Float32Array(cap * 6); segLink = new Int32Array(cap);
  linkGeo = new THREE.BufferGeometry();
  linkGeo.setAttribute('position', new THREE.BufferAttribute(linkPos, 3).setUsage(THREE.DynamicDrawUsage));
  linkGeo.setAttribute('color', new THREE.BufferAttribute(linkCol, 3).setUsage(THREE.DynamicDrawUsage));
  linkSegs = new THREE.LineSegments(linkGeo, new THREE.LineBasicMaterial({
    vertexColors: true, transparent: true, opacity: 0.7 }));
  linkSegs.frustumCulled = false;
  const pcap = 4096;
  pathPos = new Float32Array(pcap * 6); pathCol = new Float32Array(pcap * 6);
  pathGeo = new THREE.BufferGeometry();
  pathGeo.setAttribute('position', new THREE.BufferAttribute(pathPos, 3).setUsage(THREE.DynamicDrawUsage));
  pathGeo.setAttribute('color', new THREE.BufferAttribute(pathCol, 3).setUsage(THREE.DynamicDrawUsage));
  pathSegs = new THREE.LineSegments(pathGeo, new THREE.LineBasicMaterial({ vertexColors: true }));
  pathSegs.frustumCulled = false; pathSegs.renderOrder = 2;
  selPos = new Float32Array(256 * 6); selCol = new Float32Array(256 * 6);
  selGeo = new THREE.BufferGeometry();
  selGeo.setAttribute('position', new THREE.BufferAttribute(selPos, 3).setUsage(THREE.DynamicDrawUsage));
  selSegs = new THREE.LineSegments(selGeo, new THREE.LineBasicMaterial({ color: '#ffff66' }));
  selSegs.frustumCulled = false; selSegs.renderOrder = 4;
  const mg = new THREE.BufferGeometry();
  mg.setAttribute('position', new THREE.BufferAttribute(new Float32Array(3), 3));
  marker = new THREE.Points(mg, new THREE.PointsMaterial({ color: '#ffff66', size: 16, sizeAttenuation: false,
    transparent: true, opacity: 0.55, depthTest: false }));
  marker.visible = false; marker.renderOrder = 5;
  scene.add(linkSegs, pathSegs, selSegs, points, marker);
  const box = $('labels');
  labels = [];
  meta.nodes.kind.forEach((k, i) => {
    if (k === 'sat' || (k === 'compute' && N > 300)) return;
    const el = document.createElement('div'); el.textContent = meta.nodes.name[i];
    box.appendChild(el); labels.push([i, el]);
  });
}

// positions of the current step, in the current mode
let cur = null; // the step's data
function place(d) {
  const flatMode = state.mode === '2d';
  for (let i = 0; i < N; i++) {
    const lat = d.lat[i] * Math.PI / 180; const lon = d.lon[i] * Math.PI / 180;
    if (flatMode) {
      nodePos[i * 3] = d.lon[i] / 90; nodePos[i * 3 + 1] = d.lat[i] / 90;
      nodePos[i * 3 + 2] = meta.nodes.kind[i] === 'sat' ? 0.01 : 0.03;
    } else {
      const r = 1 + Math.max(d.alt[i], 0) / R_KM + (d.alt[i] < 100 ? 0.004 : 0);
      nodePos[i * 3] = r * Math.cos(lat) * Math.cos(lon);
      nodePos[i * 3 + 1] = r * Math.sin(lat);
      nodePos[i * 3 + 2] = -r * Math.cos(lat) * Math.sin(lon);
    }
  }
  points.geometry.attributes.position.needsUpdate = true;
  points.geometry.computeBoundingSphere();
  state.drawnNodes = N;
}

// one segment a-b into (pos, colArr) at segment index s; returns segments written
function segment(pos, colArr, s, a, b, c, lift, d) {
  const w = (k, i) => {
    if (state.mode === '3d') {
      pos[k] = nodePos[i * 3] * lift; pos[k + 1] = nodePos[i * 3 + 1] * lift; pos[k + 2] = nodePos[i * 3 + 2] * lift;
    } else {
      pos[k] = nodePos[i * 3]; pos[k + 1] = nodePos[i * 3 + 1]; pos[k + 2] = 0.02 * lift;
    }
  };
  const put = (k, x, y, z) => { pos[k] = x; pos[k + 1] = y; pos[k + 2] = z; };
  if (state.mode === '2d' && Math.abs(d.lon[a] - d.lon[b]) > 180) { // across the antimeridian
    const la = d.lon[a]; const lb = d.lon[b] + (d.lon[b] < la ? 360 : -360);
    const edge = la > 0 ? 180 : -180; const f = (edge - la) / (lb - la);
    const latx = (d.lat[a] + f * (d.lat[b] - d.lat[a])) / 90; const z = 0.02 * lift;
    w(s * 6, a); put(s * 6 + 3, edge / 90, latx, z);
    put(s * 6 + 6, -edge / 90, latx, z); w(s * 6 + 9, b);
    for (let j = 0; j < 4; j++) c.toArray(colArr, s * 6 + j * 3);
    return 2;
  }
  w(s * 6, a); w(s * 6 + 3, b);
  c.toArray(colArr, s * 6); c.toArray(colArr, s * 6 + 3);
  return 1;
}

const LINK_COLORS = Object.fromEntries(Object.entries(LINK_COLOR).map(([k, c]) => [k, new THREE.Color(c)]));
const NO_UTIL_COLOR = new THREE.Color('#2a3440');
const SELECT_COLOR = new THREE.Color('#ffff66');
let linkColorMode = 'kind';
let util = null;
function fillLinks(d) {
  let s = 0;
  const kc = LINK_COLORS;
  for (const lid of d.up) {
    const a = meta.links.a[lid]; const b = meta.links.b[lid];
    let c = kc[meta.links.kind[lid]] || kc['?'];
    if (linkColorMode === 'util' && util) {
      const u = util.util[lid];
      c = u == null ? NO_UTIL_COLOR : scaleColor(u, scratch);
    }
    const n = segment(linkPos, linkCol, s, a, b, c, 1.0, d);
    for (let j = 0; j < n; j++) segLink[s + j] = lid;
    s += n;
  }
  linkGeo.setDrawRange(0, s * 2);
  linkGeo.attributes.position.needsUpdate = true; linkGeo.attributes.color.needsUpdate = true;
  state.drawnLinks = d.up.length; state.drawnSegments = s;
}

// the flows' paths at time t (plans: the endpoint paths of paths.csv)
const hiddenFlows = new Set();
function pathsAt(d) {
  const out = [];
  if (flows.flows.length) {
    flows.flows.forEach((f, j) => {
      if (hiddenFlows.has(f.flow_id)) return;
      let p = null;
      for (let i = 0; i < f.path_t_s.length; i++) if (f.path_t_s[i] <= d.t_s + 1e-9) p = f.paths[i];
      if (!p || p.length < 2) return;
      let mbps = null;
      const ti = f.throughput.t_s.findIndex((x) => Math.abs(x - d.t_s) < 1e-6);
      if (ti >= 0) mbps = f.throughput.mbps[ti];
      out.push({ id: f.flow_id, nodes: p, mbps, j });
    });
  } else {
    for (const p of d.paths) {
      if (meta.nodes.name[p.src] > meta.nodes.name[p.dst] || p.nodes.length < 2) continue;
      out.push({ id: `${p.src}-${p.dst}`, nodes: p.nodes, mbps: null });
    }
  }
  return out;
}
function fillPaths(d) {
  let s = 0; const cap = pathPos.length / 6 - 2;
  const paths = pathsAt(d);
  for (const p of paths) {
    const c = p.mbps == null ? col(UNKNOWN_RATE_COLOR) : scaleColor(maxMbps > 0 ? p.mbps / maxMbps : 0);
    for (let i = 0; i + 1 < p.nodes.length && s < cap; i++) s += segment(pathPos, pathCol, s, p.nodes[i], p.nodes[i + 1], c, 1.004, d);
  }
  pathGeo.setDrawRange(0, s * 2);
  pathGeo.attributes.position.needsUpdate = true; pathGeo.attributes.color.needsUpdate = true;
  state.drawnPaths = paths.length;
}
function fillSelection(d) {
  let s = 0;
  marker.visible = false;
  if (state.selectedNode != null) {
    const i = state.selectedNode;
    for (const lid of d.up) {
      if ((meta.links.a[lid] === i || meta.links.b[lid] === i) && s < 120) s += segment(selPos, selCol, s, meta.links.a[lid], meta.links.b[lid], SELECT_COLOR, 1.002, d);
    }
    marker.geometry.attributes.position.array.set(nodePos.subarray(i * 3, i * 3 + 3));
    marker.geometry.attributes.position.needsUpdate = true; marker.visible = true;
  } else if (state.selectedLink != null && d.up.includes(state.selectedLink)) {
    const lid = state.selectedLink;
    s += segment(selPos, selCol, s, meta.links.a[lid], meta.links.b[lid], SELECT_COLOR, 1.002, d);
  }
  selGeo.setDrawRange(0, s * 2); selGeo.attributes.position.needsUpdate = true;
}

function applyStep(d) {
  const t0 = performance.now();
  cur = d; state.step = d.k; state.t_s = d.t_s;
  place(d); fillLinks(d); fillPaths(d); fillSelection(d);
  state.stepMs.push(performance.now() - t0);
  if (state.stepMs.length > 1000) state.stepMs.shift();
  $('slider').value = d.k;
  $('time').textContent = `t = ${d.t_s.toFixed(1)} s  (step ${d.k}/${meta.steps.length - 1})`;
  updateStatus();
  cursorCharts();
  refreshInfo();
  requestRender();
}

// ------------------------------------------------------------------------ render
let renderQueued = false;
let continuous = false;
function requestRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(frame);
}
function resize() {
  const v = $('view'); const w = v.clientWidth; const h = v.clientHeight;
  if (canvas.width !== Math.floor(w * renderer.getPixelRatio()) || canvas.height !== Math.floor(h * renderer.getPixelRatio())) {
    renderer.setSize(w, h, false);
    cam3.aspect = w / h; cam3.updateProjectionMatrix();
    const a = w / h; const hh = Math.max(1.1, 2.1 / a);
    cam2.left = -hh * a; cam2.right = hh * a; cam2.top = hh; cam2.bottom = -hh; cam2.updateProjectionMatrix();
  }
}
const benchSync = new URLSearchParams(location.search).has('bench');
const pix = new Uint8Array(4);
function frame(now) {
  renderQueued = false;
  resize();
  if (continuous && state.mode === '3d') { ctl3.autoRotate = true; ctl3.autoRotateSpeed = 4; ctl3.update(); }
  const t0 = performance.now();
  renderer.render(scene, camera());
  if (benchSync) { const gl = renderer.getContext(); gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pix); }
  const ms = performance.now() - t0;
  state.renders++; state.renderMs.push(ms); if (state.renderMs.length > 1000) state.renderMs.shift();
  state.frameTimes.push(now); if (state.frameTimes.length > 2000) state.frameTimes.shift();
  placeLabels();
  if (continuous) requestRender();
}
const labelTmp = new THREE.Vector3();
function placeLabels() {
  const v = $('view'); const w = v.clientWidth; const h = v.clientHeight;
  const cp = camera().position; const tmp = labelTmp;
  for (const [i, el] of labels) {
    tmp.fromArray(nodePos, i * 3);
    const visible = state.mode === '2d' || tmp.dot(cp) > 1.0;
    tmp.project(camera());
    if (!visible || Math.abs(tmp.x) > 1 || Math.abs(tmp.y) > 1) { el.style.display = 'none'; continue; }
    el.style.display = ''; el.style.left = `${(tmp.x + 1) / 2 * w}px`; el.style.top = `${(1 - tmp.y) / 2 * h}px`;
  }
}
window.addEventListener('resize', () => { requestRender(); resizeCharts(); });

// ------------------------------------------------------------------------ time
let playing = false; let speed = 2; let seq = 0; let loading = false;
function maxStep() {
  if (!meta) return 0;
  if (meta.live) return Math.max(state.live?.step ?? 0, 0);
  return meta.steps.length - 1;
}
async function goto(k) {
  k = Math.max(0, Math.min(k, maxStep()));
  const my = ++seq; loading = true;
  try {
    const d = await loadStep(k);
    if (linkColorMode === 'util') util = await loadUtil(k);
    if (my === seq) applyStep(d);
    for (let j = 1; j <= 4; j++) if (k + j <= maxStep()) loadStep(k + j);
  } finally { if (my === seq) loading = false; }
  return state.step;
}
let lastAdvance = 0;
function tick(now) {
  if (!playing) return;
  if (!loading && now - lastAdvance >= 1000 / speed) {
    if (state.step >= maxStep()) { if (!meta.live) setPlaying(false); } else { lastAdvance = now; goto(state.step + 1); }
  }
  requestAnimationFrame(tick);
}
function setPlaying(on) {
  playing = on; $('play').innerHTML = on ? '&#10074;&#10074; pause' : '&#9654; play';
  if (on) { if (state.step >= maxStep() && !meta.live) goto(0); requestAnimationFrame(tick); }
}
$('play').onclick = () => setPlaying(!playing);
$('speed').onchange = (e) => { speed = Number(e.target.value); };
$('slider').oninput = (e) => { setPlaying(false); if (meta.live) $('follow').checked = false; goto(Number(e.target.value)); };
document.addEventListener('keydown', (e) => { if (e.code === 'Space' && e.target === document.body) { e.preventDefault(); setPlaying(!playing); } });
$('linkcolor').onchange = (e) => { linkColorMode = e.target.value; legend(); goto(state.step); };

function setMode(m) {
  state.mode = m;
  globe.visible = m === '3d'; flat.visible = m === '2d';
  ctl3.enabled = m === '3d'; ctl2.enabled = m === '2d';
  $('mode').textContent = m === '3d' ? '2D map' : '3D globe';
  if (cur) applyStep(cur);
  requestRender();
}
$('mode').onclick = () => setMode(state.mode === '3d' ? '2d' : '3d');

// ------------------------------------------------------------------------ picking
const ray = new THREE.Raycaster();
let down = null;
canvas.addEventListener('pointerdown', (e) => { down = [e.clientX, e.clientY]; });
canvas.addEventListener('pointerup', (e) => {
  if (down && Math.hypot(e.clientX - down[0], e.clientY - down[1]) < 5) pick(e.clientX, e.clientY);
  down = null;
});
function pick(cx, cy) {
  const r = canvas.getBoundingClientRect();
  const ndc = new THREE.Vector2((cx - r.left) / r.width * 2 - 1, -((cy - r.top) / r.height) * 2 + 1);
  const cam = camera();
  cam.updateMatrixWorld();
  ray.setFromCamera(ndc, cam);
  const span = state.mode === '3d' ? cam.position.length() * 0.012 : 0.02 / cam.zoom;
  ray.params.Points.threshold = span; ray.params.Line.threshold = span * 0.5;
  const wall = state.mode === '3d' ? (ray.intersectObject(globe)[0]?.distance ?? Infinity) : Infinity;
  // nodes: the nearest drawn one in screen pixels, within its radius plus a margin
  const v = new THREE.Vector3(); const cp = cam.position;
  let best = -1; let bestPx = Infinity;
  for (let i = 0; i < N; i++) {
    v.fromArray(nodePos, i * 3);
    if (state.mode === '3d' && v.dot(cp) <= v.lengthSq()) continue; // behind the globe
    v.project(cam);
    const px = Math.hypot((v.x + 1) / 2 * r.width + r.left - cx, (1 - v.y) / 2 * r.height + r.top - cy);
    if (px < nodeSize[i] / 2 + 5 && px < bestPx) { best = i; bestPx = px; }
  }
  if (best >= 0) { selectNode(best); return; }
  const lh = ray.intersectObject(linkSegs).filter((h) => h.distance < wall + 1e-3);
  if (lh.length) { selectLink(segLink[Math.floor(lh[0].index / 2)]); return; }
  clearSelection();
}
function clearSelection() {
  state.selectedNode = null; state.selectedLink = null; state.nodeInfo = null; state.linkInfo = null;
  $('info').innerHTML = '<h2>Select</h2><p class="hint">Click a satellite, ground node or link on the globe.</p>';
  if (cur) { fillSelection(cur); requestRender(); }
}
function selectNode(i) {
  state.selectedNode = i; state.selectedLink = null; state.nodeInfo = null;
  if (cur) { fillSelection(cur); requestRender(); }
  return refreshInfo(true);
}
function selectLink(lid) {
  state.selectedLink = lid; state.selectedNode = null; state.linkInfo = null;
  if (cur) { fillSelection(cur); requestRender(); }
  return refreshInfo(true);
}

// ------------------------------------------------------------------------ side panel
const name = (i) => (i == null || i < 0 ? '-' : meta.nodes.name[i]);
const nodeLink = (i) => `<a data-node="${i}">${name(i)}</a>`;
const fmt = (x, d = 2) => (x == null ? '-' : Number(x).toFixed(d));
let infoBusy = false; let infoAgain = false;
async function refreshInfo(now = false) {
  if (state.selectedNode == null && state.selectedLink == null) return;
  if (infoBusy && !now) { infoAgain = true; return; }
  infoBusy = true;
  try {
    if (state.selectedNode != null) await showNode(state.selectedNode);
    else await showLink(state.selectedLink);
  } finally { infoBusy = false; }
  if (infoAgain) { infoAgain = false; refreshInfo(); }
}
async function showNode(i) {
  const d = await getJSON(`/api/node/${i}?k=${Math.max(state.step, 0)}`);
  if (state.selectedNode !== i) return;
  state.nodeInfo = d;
  let h = `<h2>${d.name} <span class="hint">(${d.kind}, node ${d.id})</span></h2>`;
  h += `<p class="hint">at t = ${fmt(d.t_s, 1)} s (step ${d.k})</p>`;
  h += `<h2>Links up (${d.links.length})</h2><table id="node-links"><tr><th>peer</th><th>kind</th><th>delay ms</th><th>Mbit/s</th></tr>`;
  for (const l of d.links) h += `<tr><td>${nodeLink(l.peer)}</td><td><a data-link="${l.link}">${l.kind}</a></td><td>${fmt(l.delay_ms, 3)}</td><td>${fmt(l.rate_mbps, 0)}</td></tr>`;
  h += '</table>';
  h += `<h2>Routes toward the endpoints</h2><table id="node-routes"><tr><th>to</th><th>next hop</th><th>hops</th></tr>`;
  for (const r of d.routes) {
    h += `<tr data-dest="${name(r.dest)}" data-next="${r.next_hop == null ? '' : name(r.next_hop)}"><td>${nodeLink(r.dest)}</td><td>${r.next_hop == null ? '<span class="hint">not on a recorded path</span>' : nodeLink(r.next_hop)}</td><td>${r.hops ?? '-'}</td></tr>`;
  }
  h += '</table><p class="hint">From paths.csv: the rest of a recorded endpoint path through this node.</p>';
  if (d.fib) {
    h += `<h2>FIB (daemon routing, fib.csv)</h2><table id="node-fib"><tr><th>to</th><th>next hops</th><th>since s</th></tr>`;
    for (const f of d.fib) h += `<tr data-dest="${name(f.dest)}" data-next="${f.next_hops.map(name).join('|')}"><td>${nodeLink(f.dest)}</td><td>${f.next_hops.map(nodeLink).join(', ') || '<span class="hint">no route</span>'}</td><td>${fmt(f.since_t_s, 3)}</td></tr>`;
    h += '</table>';
  }
  $('info').innerHTML = h;
}
let linkCharts = [];
async function showLink(lid) {
  let d = state.linkInfo;
  if (!d || d.id !== lid || meta.live) d = await getJSON(`/api/link/${lid}`);
  if (state.selectedLink !== lid) return;
  const fresh = !state.linkInfo || state.linkInfo.id !== lid || meta.live;
  state.linkInfo = d;
  const k = Math.max(state.step, 0);
  if (fresh) {
    let h = `<h2>${nodeLink(d.a)} - ${nodeLink(d.b)} <span class="hint">(${d.kind}, link ${d.id})</span></h2>`;
    h += '<p id="link-now"></p>';
    h += '<div class="mini"><h3>delay (ms) and rate (Mbit/s) over time</h3><div id="lc-delay"></div></div>';
    const dirs = Object.keys(d.counters);
    h += `<div class="mini"><h3>shaper counters: Mbit/s carried, frames dropped per step</h3><div id="lc-count"></div></div>`;
    if (!dirs.some((x) => d.counters[x].t_s.length)) h += '<p class="hint">no counters: no traffic crossed this link (or this is a plan)</p>';
    const qdirs = Object.keys(d.queue || {});
    h += qdirs.length ? '<div class="mini"><h3>queue: frames in the drop-tail queue at each step\'s end</h3><div id="lc-queue"></div></div>'
      : '<p class="hint" id="lc-noqueue">no queue figures: the netem shaper does not report them (or this is a plan)</p>';
    $('info').innerHTML = h;
    linkCharts.forEach((c) => c.destroy()); linkCharts = [];
    const w = $('side').clientWidth - 30;
    linkCharts.push(new uPlot({ width: w, height: 130, cursor: { show: false }, legend: { show: true },
      scales: { x: { time: false }, r: {} },
      axes: [{ stroke: '#8b949e' }, { stroke: '#8b949e' }, { scale: 'r', side: 1, stroke: '#8b949e', grid: { show: false } }],
      series: [{}, { label: 'delay ms', stroke: '#79c0ff' }, { label: 'Mbit/s', stroke: '#3ddc84', scale: 'r' }],
      plugins: [cursorPlugin()] }, [d.t_s, d.delay_ms, d.rate_mbps], $('lc-delay')));
    const xs = meta.steps; const idx = new Map(xs.map((t, i) => [t.toFixed(6), i]));
    const series = [{}]; const data = [xs];
    dirs.forEach((dir, j) => {
      const c = d.counters[dir]; const mb = new Array(xs.length).fill(null); const dr = new Array(xs.length).fill(null);
      c.t_s.forEach((t, i) => { const x = idx.get(t.toFixed(6)); if (x != null) { mb[x] = c.bytes[i] * 8 / (meta.step_s / meta.time_scale) / 1e6; dr[x] = c.dropped[i]; } });
      series.push({ label: `${dir} Mbit/s`, stroke: PALETTE[j * 2] }, { label: `${dir} drops`, stroke: PALETTE[j * 2 + 1], scale: 'r', dash: [4, 3] });
      data.push(mb, dr);
    });
    linkCharts.push(new uPlot({ width: w, height: 130, cursor: { show: false }, scales: { x: { time: false }, r: {} },
      axes: [{ stroke: '#8b949e' }, { stroke: '#8b949e' }, { scale: 'r', side: 1, stroke: '#8b949e', grid: { show: false } }],
      series, plugins: [cursorPlugin()] }, data, $('lc-count')));
    if (qdirs.length) {
      linkCharts.push(new uPlot({ width: w, height: 110, cursor: { show: false }, scales: { x: { time: false } },
        axes: [{ stroke: '#8b949e' }, { stroke: '#8b949e' }],
        series: [{}, ...qdirs.map((dir, j) => ({ label: `${dir} frames`, stroke: PALETTE[j * 2], width: 1.4 }))],
        plugins: [cursorPlugin()] }, [meta.steps, ...qdirs.map((dir) => d.queue[dir])], $('lc-queue')));
    }
  }
  const el = $('link-now');
  if (el) {
    const q = Object.entries(d.queue || {}).filter(([, v]) => v[k] != null).map(([dir, v]) => `${dir} ${v[k]}`);
    el.textContent = (d.delay_ms[k] == null ? `down at step ${k}`
      : `at step ${k}: delay ${fmt(d.delay_ms[k], 3)} ms, rate ${fmt(d.rate_mbps[k], 0)} Mbit/s`)
      + (q.length ? `; queue (frames) ${q.join(', ')}` : '');
  }
  linkCharts.forEach((c) => c.redraw(false, false));
}
$('side').addEventListener('click', (e) => {
  const n = e.target.closest('[data-node]'); if (n) { selectNode(Number(n.dataset.node)); return; }
  const l = e.target.closest('[data-link]'); if (l) selectLink(Number(l.dataset.link));
});

// ------------------------------------------------------------------------ charts
let charts = [];
function cursorPlugin(changes = false) {
  return { hooks: { draw: [(u) => {
    const g = u.ctx; const { top, height } = u.bbox;
    if (changes) {
      g.save(); g.setLineDash([4, 4]); g.lineWidth = 1.5;
      flows.flows.forEach((f, j) => {
        if (hiddenFlows.has(f.flow_id)) return;
        g.strokeStyle = PALETTE[j % PALETTE.length];
        for (const t of f.route_changes_t_s) {
          const x = u.valToPos(t, 'x', true); g.beginPath(); g.moveTo(x, top); g.lineTo(x, top + height); g.stroke();
        }
      });
      g.restore();
    }
    if (state.t_s != null) {
      const x = u.valToPos(state.t_s, 'x', true);
      g.save(); g.strokeStyle = '#ff5555'; g.lineWidth = 2; g.beginPath(); g.moveTo(x, top); g.lineTo(x, top + height); g.stroke(); g.restore();
    }
  }] } };
}
function seriesOn(f, which) {
  const xs = meta.steps; const idx = new Map(xs.map((t, i) => [t.toFixed(6), i]));
  const out = new Array(xs.length).fill(null);
  const s = which === 'tp' ? f.throughput : f.latency;
  const v = which === 'tp' ? s.mbps : s.owd_ms;
  s.t_s.forEach((t, i) => { const x = idx.get(t.toFixed(6)); if (x != null) out[x] = v[i]; });
  return out;
}
const chartHeight = () => Math.max(120, $('charts').clientHeight - 28);
// the charts' data: x = the step times, one series per flow (null where not measured)
function chartData(which) {
  return [meta.steps, ...flows.flows.map((f) => seriesOn(f, which))];
}
const countPoints = (data) => data.slice(1).reduce((n, a) => n + a.filter((x) => x != null).length, 0);
let chartKey = '';
function buildCharts() {
  charts.forEach((c) => c.destroy()); charts = [];
  const fl = flows.flows;
  const planned = fl.length && fl.every((f) => f.kind === 'planned path');
  $('lat-title').textContent = planned ? 'planned one-way path delay per endpoint pair (ms), route changes dashed'
    : 'one-way delay per flow (ms, mean per step), route changes dashed';
  for (const [which, el] of [['tp', 'chart-tp'], ['lat', 'chart-lat']]) {
    const box = $(el); box.innerHTML = '';
    const series = [{}];
    fl.forEach((f, j) => {
      series.push({ label: flowLabel(f), stroke: PALETTE[j % PALETTE.length], width: 1.4, points: { show: false }, show: !hiddenFlows.has(f.flow_id), spanGaps: false });
    });
    const data = chartData(which);
    const w = box.parentElement.clientWidth - 16;
    const n = countPoints(data); state.chartPoints[which] = n;
    charts.push(new uPlot({ width: w, height: chartHeight(), scales: { x: { time: false } }, legend: { show: fl.length <= 12 },
      axes: [{ stroke: '#8b949e', grid: { stroke: '#21262d' } }, { stroke: '#8b949e', grid: { stroke: '#21262d' } }],
      series, plugins: [cursorPlugin(true)] }, data, box));
    const note = document.createElement('div'); note.className = 'nodata'; note.id = `${el}-nodata`;
    note.textContent = which === 'tp' ? (planned ? (meta.kind === 'plan' ? 'no throughput: no traffic in a plan' : 'no throughput: this run has no traffic') : 'no throughput measured yet')
      : 'no one-way delays measured yet';
    note.hidden = n > 0;
    box.appendChild(note);
  }
  chartKey = fl.map((f) => f.flow_id).join(',');
}
// a live run's new measurements: the same charts, their data replaced (no rebuild)
function updateCharts() {
  if (charts.length !== 2 || chartKey !== flows.flows.map((f) => f.flow_id).join(',')) { buildCharts(); return; }
  [['tp', 'chart-tp'], ['lat', 'chart-lat']].forEach(([which, el], i) => {
    const data = chartData(which);
    const n = countPoints(data); state.chartPoints[which] = n;
    charts[i].setData(data, true);
    const note = $(`${el}-nodata`); if (note) note.hidden = n > 0;
  });
}
function resizeCharts() {
  for (const [c, el] of charts.map((c, i) => [c, i ? 'chart-lat' : 'chart-tp'])) c.setSize({ width: $(el).parentElement.clientWidth - 16, height: chartHeight() });
}
function cursorCharts() { for (const c of charts) c.redraw(false, false); }

const flowLabel = (f) => (f.kind === 'planned path' ? f.name : `${f.flow_id} ${f.name} ${name(f.src)}>${name(f.dst)}`);
function flowList() {
  const box = $('flows');
  if (!flows.flows.length) { box.innerHTML = '<p class="hint">no flows: a plan, or a run without traffic</p>'; return; }
  box.innerHTML = flows.flows.map((f, j) => `<label class="flow"><input type="checkbox" data-flow="${f.flow_id}" ${hiddenFlows.has(f.flow_id) ? '' : 'checked'}>
    <span class="sw" style="background:${PALETTE[j % PALETTE.length]}"></span>${f.kind === 'planned path' ? '' : `${f.flow_id} ${f.name}`}
    <span class="hint">${name(f.src)} &rarr; ${name(f.dst)}, ${f.route_changes_t_s.length} route change(s)</span></label>`).join('');
  box.querySelectorAll('input').forEach((el) => {
    el.onchange = () => { if (el.checked) hiddenFlows.delete(el.dataset.flow); else hiddenFlows.add(el.dataset.flow); if (cur) applyStep(cur); buildCharts(); };
  });
}
let flowsText = '';
async function loadFlows() {
  const r = await fetch('/api/flows');
  if (!r.ok) throw new Error(`/api/flows: ${r.status} ${await r.text()}`);
  const text = await r.text();
  if (text === flowsText) return; // a live run's poll with nothing new: no redraw
  const before = flows.flows.map((f) => `${f.flow_id}:${f.route_changes_t_s.length}`).join(',');
  flowsText = text; flows = JSON.parse(text);
  maxMbps = 0;
  for (const f of flows.flows) for (const v of f.throughput.mbps) if (v != null && v > maxMbps) maxMbps = v;
  state.flows = flows.flows.length; state.flowStats = flows.flow_stats;
  if (before !== flows.flows.map((f) => `${f.flow_id}:${f.route_changes_t_s.length}`).join(',')) flowList();
  updateCharts(); legend();
  // a live page that follows the run redraws the paths' colours with the next step anyway
  const following = meta.live && !state.live?.done && $('follow').checked && !playing;
  if (cur && !following) applyStep(cur);
}

function legend() {
  let h = Object.entries(KIND_COLOR).filter(([k]) => meta.nodes.kind.includes(k))
    .map(([k, c]) => `<span class="sw" style="background:${c}"></span>${k}`).join('');
  h += linkColorMode === 'util'
    ? `<br>links: utilisation 0 <span class="bar"></span> 100 %`
    : `<br><span class="sw" style="background:${LINK_COLOR.isl}"></span>ISL<span class="sw" style="background:${LINK_COLOR.gsl}"></span>GSL${meta.links.kind.includes('trl') ? `<span class="sw" style="background:${LINK_COLOR.trl}"></span>backhaul` : ''}`;
  h += maxMbps > 0 ? `<br>paths: throughput 0 <span class="bar"></span> ${maxMbps.toFixed(1)} Mbit/s`
    : `<br><span class="sw" style="background:${UNKNOWN_RATE_COLOR}"></span>${flows.flows.length && flows.flows[0].kind !== 'planned path' ? 'flow paths (throughput not measured yet)' : 'endpoint paths (planned; no traffic)'}`;
  $('legend').innerHTML = h;
}
function updateStatus() {
  const rm = state.renderMs.length ? state.renderMs[state.renderMs.length - 1] : 0;
  let s = `${state.drawnNodes} nodes, ${state.drawnLinks} links up, ${state.drawnPaths} paths; render ${rm.toFixed(1)} ms`;
  if (meta.live) s = `${state.live?.done ? 'run over' : 'live'}: step ${state.live?.step ?? '-'}; ${s}`;
  $('status').textContent = s;
}

// ------------------------------------------------------------------------ live
function startLive() {
  state.live = { step: -1, done: false, connected: false, events: 0 };
  $('live').hidden = false; $('followbox').hidden = false; $('live').textContent = 'LIVE: building ...';
  const es = new EventSource('/api/events');
  es.onopen = () => { state.live.connected = true; };
  es.addEventListener('step', (e) => {
    const k = JSON.parse(e.data).step; state.live.step = k; state.live.events++;
    $('slider').max = Math.max(k, 0);
    $('live').textContent = k < 0 ? 'LIVE: building ...' : `LIVE: step ${k}`;
    if ($('follow').checked && !playing && k >= 0) goto(k);
  });
  es.addEventListener('end', () => {
    state.live.done = true; es.close(); $('live').textContent = 'run over'; loadFlows(); updateStatus();
  });
  const poll = setInterval(() => { if (state.live.done) clearInterval(poll); else loadFlows(); }, 3000);
}

// ------------------------------------------------------------------------ api for tests
function screenPos(i) {
  const r = canvas.getBoundingClientRect();
  camera().updateMatrixWorld();
  const v = new THREE.Vector3().fromArray(nodePos, i * 3);
  const visible = state.mode === '2d' || v.dot(camera().position) > v.lengthSq();
  v.project(camera());
  return { x: r.left + (v.x + 1) / 2 * r.width, y: r.top + (1 - v.y) / 2 * r.height, visible, onScreen: Math.abs(v.x) < 1 && Math.abs(v.y) < 1 };
}
function lookAt(i) { // turn the globe so that node i faces the camera
  if (state.mode !== '3d') return;
  const v = new THREE.Vector3().fromArray(nodePos, i * 3).normalize();
  cam3.position.copy(v.multiplyScalar(cam3.position.length())); ctl3.update(); requestRender();
}
async function bench(seconds = 10, stepsPerSecond = 10) {
  const n = maxStep() + 1;
  await Promise.all(Array.from({ length: n }, (_, k) => loadStep(k)));
  state.renderMs = []; state.stepMs = []; state.frameTimes = [];
  const r0 = state.renders; continuous = true; requestRender();
  const t0 = performance.now(); let k = 0; let steps = 0;
  await new Promise((resolve) => {
    const adv = setInterval(() => {
      k = (k + 1) % n; applyStep(stepCache.get(k)); steps++;
      if (performance.now() - t0 >= seconds * 1000) { clearInterval(adv); resolve(); }
    }, 1000 / stepsPerSecond);
  });
  continuous = false; ctl3.autoRotate = false;
  const el = (performance.now() - t0) / 1000; const frames = state.renders - r0;
  const q = (a, p) => { const s = [...a].sort((x, y) => x - y); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : null; };
  const gaps = state.frameTimes.slice(1).map((t, i) => t - state.frameTimes[i]);
  return { seconds: el, frames, fps: frames / el, steps, render_ms_mean: state.renderMs.reduce((a, b) => a + b, 0) / Math.max(state.renderMs.length, 1),
    render_ms_p99: q(state.renderMs, 0.99), step_update_ms_mean: state.stepMs.reduce((a, b) => a + b, 0) / Math.max(state.stepMs.length, 1),
    step_update_ms_p99: q(state.stepMs, 0.99), frame_gap_ms_p50: q(gaps, 0.5), frame_gap_ms_p99: q(gaps, 0.99), nodes: N, links_max: Math.max(...meta.links_per_step) };
}
window.meshemu = { goto, selectNode, selectLink, clearSelection, screenPos, lookAt, setMode, bench, setPlaying,
  get meta() { return meta; }, get flows() { return flows; } };

// ------------------------------------------------------------------------ start
async function main() {
  meta = await getJSON('/api/meta');
  document.title = `meshemu view: ${meta.title}`;
  $('title').textContent = meta.title;
  $('slider').max = meta.live ? 0 : meta.steps.length - 1;
  buildObjects();
  const topo = await getJSON('/lib/world-atlas/land-50m.json');
  const tex = makeEarthTexture(topo);
  globe.material = new THREE.MeshBasicMaterial({ map: tex });
  flat.material = new THREE.MeshBasicMaterial({ map: tex });
  legend();
  await loadFlows();
  if (meta.live) startLive();
  await goto(0);
  state.ready = true;
  $('status').classList.add('ready');
}
main().catch((e) => { state.errors.push(String(e)); $('status').textContent = `error: ${e}`; });
