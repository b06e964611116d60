// The Texu dashboard: boards, roles, containers, endpoints and events, kept live through the
// controller's watch API (a list, then `?watch=true&revision=N` read as a fetch stream of
// newline-delimited JSON).
//
// Rules this file keeps: every string from the API reaches the page through textContent or an
// attribute, never as markup; the admin token lives in sessionStorage only (this tab, until it
// is closed) and travels only as `Authorization: Bearer`, and nothing runs inline (the page's
// Content-Security-Policy allows scripts from this file only).
'use strict';

const TOKEN_KEY = 'texu.adminToken';
/** Object watches send a BOOKMARK line every 2 s when quiet: this long silent means a dead link. */
const WATCH_SILENCE_MS = 10000;
/** Events kept in the feed. */
const MAX_EVENTS = 200;
/** How often the boards' last heartbeats are read again (they live in the controller's memory). */
const HEARTBEAT_REFRESH_MS = 2000;
const RETRY_MS = 1000;

const state = {
  token: null,
  /** Bumped on every login and logout: loops of an older session stop. */
  session: 0,
  aborts: new Set(),
  nodes: new Map(),
  roles: new Map(),
  containers: new Map(),
  endpoints: [],
  events: [],
  lastSeq: 0,
  /** Controller clock minus ours, from the Date header, for "seconds ago". */
  skewMs: 0,
  live: { nodes: false, roles: false, containers: false, events: false },
  renderQueued: false,
  endpointsQueued: false,
};

class Unauthorized extends Error {}
class Resync extends Error {}

const byId = (id) => document.getElementById(id);

// ---------------------------------------------------------------- talking to the controller

/** GET a JSON document from the API with the token. */
async function api(path, signal) {
  const response = await fetch(path, {
    headers: { Authorization: 'Bearer ' + state.token },
    cache: 'no-store',
    signal,
  });
  if (response.status === 401 || response.status === 403) throw new Unauthorized();
  if (!response.ok) throw new Error(path + ' answered ' + response.status);
  // The Date header has whole seconds: only a clock clearly off is corrected for.
  const skew = Date.parse(response.headers.get('Date') || '') - Date.now();
  if (!Number.isNaN(skew)) state.skewMs = Math.abs(skew) > 3000 ? skew : 0;
  return response.json();
}

/**
 * Reads a watch stream line by line, calling onLine with each parsed JSON line, until the
 * stream ends, fails or (with silenceMs) stays silent that long.
 */
async function stream(path, abort, onLine, silenceMs) {
  const response = await fetch(path, {
    headers: { Authorization: 'Bearer ' + state.token },
    cache: 'no-store',
    signal: abort.signal,
  });
  if (response.status === 401 || response.status === 403) throw new Unauthorized();
  if (response.status === 410) throw new Resync();
  if (!response.ok || !response.body) throw new Error(path + ' answered ' + response.status);
  onLine(null);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let timer = null;
  const watchdog = () => {
    if (!silenceMs) return;
    clearTimeout(timer);
    timer = setTimeout(() => abort.abort(), silenceMs);
  };
  watchdog();
  let buffered = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      watchdog();
      buffered += value;
      let newline;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (line) onLine(JSON.parse(line));
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs body(abort) again and again for this session, a second apart after each failure or end
 * of stream; a refused token ends the session.
 */
async function keep(what, body) {
  const session = state.session;
  while (session === state.session) {
    const abort = new AbortController();
    state.aborts.add(abort);
    try {
      await body(abort);
    } catch (e) {
      if (e instanceof Unauthorized) {
        if (session === state.session) logout('The controller refused the token.');
        return;
      }
      if (!(e instanceof Resync) && e.name !== 'AbortError') console.warn(what, e);
    } finally {
      state.aborts.delete(abort);
      abort.abort();
    }
    setLive(what, false);
    await sleep(RETRY_MS);
  }
}

/** Lists `kind` into `store`, then follows its watch from the list's revision. */
function follow(kind, store) {
  return keep(kind, async (abort) => {
    const list = await api('/v1/' + kind, abort.signal);
    store.clear();
    for (const item of list.items || []) store.set(item.metadata.name, item);
    changed(kind);
    const path = '/v1/' + kind + '?watch=true&revision=' + encodeURIComponent(list.revision);
    await stream(path, abort, (line) => {
      if (line === null) return setLive(kind, true);
      if (line.type === 'BOOKMARK') return;
      if (line.type === 'ERROR') throw new Resync();
      const name = line.object && line.object.metadata && line.object.metadata.name;
      if (typeof name !== 'string') return;
      if (line.type === 'DELETED') {
        store.delete(name);
      } else {
        line.object.metadata.revision = line.revision;
        store.set(name, kind === 'nodes' ? withNewestHeartbeat(store.get(name), line.object) : line.object);
      }
      changed(kind);
    }, WATCH_SILENCE_MS);
  });
}

/** A node from the store keeps the newer heartbeat time of the one shown (heartbeats live in memory). */
function withNewestHeartbeat(old, node) {
  const seen = old && old.status && old.status.lastHeartbeat;
  const now = node.status && node.status.lastHeartbeat;
  if (seen && (!now || Date.parse(seen) > Date.parse(now))) {
    node.status = Object.assign({}, node.status, { lastHeartbeat: seen });
  }
  return node;
}

/** Reads the boards' last heartbeats every few seconds; phases come from the watch. */
function refreshHeartbeats() {
  return keep('heartbeats', async (abort) => {
    for (;;) {
      const list = await api('/v1/nodes', abort.signal);
      for (const node of list.items || []) {
        const shown = state.nodes.get(node.metadata.name);
        if (!shown) continue;
        const beat = node.status && node.status.lastHeartbeat;
        if (beat) shown.status = Object.assign({}, shown.status, { lastHeartbeat: beat });
      }
      queueRender();
      await sleep(HEARTBEAT_REFRESH_MS);
    }
  });
}

/** Follows the controller's decisions, resuming after the last one seen. */
function followEvents() {
  return keep('events', async (abort) => {
    await stream('/v1/events?watch=true&after=' + state.lastSeq, abort, (event) => {
      if (event === null) return setLive('events', true);
      if (typeof event.seq !== 'number' || event.seq <= state.lastSeq) return;
      state.lastSeq = event.seq;
      state.events.push(event);
      if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
      queueRender();
    });
  });
}

/** Endpoints follow containers: read them again shortly after a container or role changed. */
function queueEndpoints() {
  if (state.endpointsQueued) return;
  state.endpointsQueued = true;
  const session = state.session;
  setTimeout(async () => {
    state.endpointsQueued = false;
    if (session !== state.session) return;
    try {
      const list = await api('/v1/endpoints');
      if (session !== state.session) return;
      state.endpoints = list.items || [];
      queueRender();
    } catch (e) {
      if (e instanceof Unauthorized) logout('The controller refused the token.');
      else setTimeout(queueEndpoints, RETRY_MS);
    }
  }, 300);
}

function changed(kind) {
  if (kind === 'containers' || kind === 'roles') queueEndpoints();
  queueRender();
}

function setLive(what, live) {
  if (what in state.live && state.live[what] !== live) {
    state.live[what] = live;
    queueRender();
  }
}

// ---------------------------------------------------------------- the page

/** An element with text children (strings become text nodes, never markup). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === '') continue;
    if (key === 'class') node.className = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const td = (text, attrs) => el('td', attrs, text === undefined || text === null ? '' : text);

function fill(tableId, rows) {
  byId(tableId).tBodies[0].replaceChildren(...rows);
}

function bytes(n) {
  if (typeof n !== 'number') return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
}

function ago(time) {
  const t = Date.parse(time);
  if (Number.isNaN(t)) return '';
  const s = Math.max(0, (Date.now() + state.skewMs - t) / 1000);
  if (s < 60) return s.toFixed(1) + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  return Math.floor(s / 3600) + ' h ago';
}

const byName = (a, b) => (a.metadata.name < b.metadata.name ? -1 : a.metadata.name > b.metadata.name ? 1 : 0);
const phaseOf = (c) => (c.status && c.status.phase) || 'Pending';

function renderNodes() {
  const bound = new Map();
  for (const c of state.containers.values()) {
    if (c.spec && c.spec.node) bound.set(c.spec.node, (bound.get(c.spec.node) || 0) + 1);
  }
  const rows = [...state.nodes.values()].sort(byName).map((n) => {
    const status = n.status || {};
    const phase = status.phase || 'NotReady';
    const flags = [n.spec.unschedulable ? 'cordoned' : '', n.spec.draining ? 'draining' : ''].filter(Boolean);
    const statusCell = el('td', { class: 'phase-' + phase }, phase);
    if (flags.length) statusCell.append(el('span', { class: 'muted' }, ' (' + flags.join(', ') + ')'));
    return el('tr', { class: phase === 'Ready' ? '' : 'bad', 'data-name': n.metadata.name, 'data-phase': phase },
      td(n.metadata.name),
      statusCell,
      td(n.spec.arch),
      td(n.spec.address),
      td(status.lastHeartbeat ? ago(status.lastHeartbeat) : 'never', { title: status.lastHeartbeat }),
      td(bound.get(n.metadata.name) || 0, { class: 'num' }),
      td(n.spec.cpus, { class: 'num' }),
      td(bytes(n.spec.memoryBytes), { class: 'num' }),
      td(status.message, { class: 'muted' }));
  });
  fill('nodes', rows);
}

function renderRoles() {
  const ready = new Map();
  for (const c of state.containers.values()) {
    if (phaseOf(c) === 'Ready') ready.set(c.spec.role, (ready.get(c.spec.role) || 0) + 1);
  }
  const rows = [...state.roles.values()].sort(byName).map((r) => {
    const want = r.spec.replicas;
    const have = ready.get(r.metadata.name) || 0;
    return el('tr', { class: have < want ? 'bad' : '', 'data-name': r.metadata.name },
      td(r.metadata.name),
      td(have, { class: 'num' }),
      td(want, { class: 'num' }),
      td(r.spec.image));
  });
  fill('roles', rows);
}

function renderContainers() {
  const sorted = [...state.containers.values()].sort((a, b) =>
    a.spec.role === b.spec.role ? a.spec.ordinal - b.spec.ordinal || byName(a, b) : a.spec.role < b.spec.role ? -1 : 1);
  const rows = sorted.map((c) => {
    const status = c.status || {};
    const phase = phaseOf(c);
    const board = el('td', {}, c.spec.node || '');
    if (c.spec.handoff && c.spec.handoff.node) {
      board.append(el('span', { class: 'muted' }, ' \u2192 ' + c.spec.handoff.node));
    }
    const bad = ['Failed', 'Lost'].includes(phase);
    return el('tr', { class: bad ? 'bad' : '', 'data-name': c.metadata.name, 'data-node': c.spec.node, 'data-phase': phase },
      td(c.metadata.name),
      td(c.spec.role),
      board,
      td(phase, { class: 'phase-' + phase }),
      td(status.restarts || 0, { class: 'num' }),
      td(status.reason, { title: status.message }),
      td(status.address));
  });
  fill('containers', rows);
}

function renderEndpoints() {
  const rows = [];
  for (const role of state.endpoints) {
    for (const [port, list] of Object.entries(role.ports || {})) {
      const cell = el('td', {});
      if (!list.length) cell.append(el('span', { class: 'muted' }, 'none Ready'));
      list.forEach((e, i) => {
        if (i) cell.append(', ');
        cell.append(el('span', { title: e.node }, e.name + ' ' + e.address + ':' + e.port));
      });
      rows.push(el('tr', { class: list.length ? '' : 'bad' }, td(role.role), td(port), cell));
    }
  }
  fill('endpoints', rows);
}

function renderEvents() {
  const items = state.events.slice().reverse().map((e) => {
    const t = new Date(e.time);
    return el('li', { 'data-kind': e.kind },
      el('time', { datetime: e.time, class: 'muted' }, Number.isNaN(t.getTime()) ? e.time : t.toLocaleTimeString()),
      el('span', { class: 'kind kind-' + e.kind }, e.kind),
      e.object + ': ' + e.message);
  });
  byId('events').replaceChildren(...items);
}

function renderSummary() {
  const nodes = [...state.nodes.values()];
  const readyNodes = nodes.filter((n) => n.status && n.status.phase === 'Ready').length;
  const containers = [...state.containers.values()];
  const readyContainers = containers.filter((c) => phaseOf(c) === 'Ready').length;
  const plural = (n, word) => n + ' ' + word + (n === 1 ? '' : 's');
  byId('summary').textContent = readyNodes + '/' + plural(nodes.length, 'board') + ' Ready \u00b7 ' +
    plural(state.roles.size, 'role') + ' \u00b7 ' + readyContainers + '/' +
    plural(containers.length, 'container') + ' Ready';
  const live = Object.values(state.live).every(Boolean);
  const connection = byId('connection');
  connection.textContent = live ? 'live' : 'reconnecting\u2026';
  connection.className = live ? 'state-live' : 'state-off';
}

function render() {
  state.renderQueued = false;
  if (!state.token) return;
  renderNodes();
  renderRoles();
  renderContainers();
  renderEndpoints();
  renderEvents();
  renderSummary();
}

function queueRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  setTimeout(render, 50);
}

// ---------------------------------------------------------------- the token

function clearCluster() {
  for (const abort of state.aborts) abort.abort();
  state.aborts.clear();
  state.nodes.clear();
  state.roles.clear();
  state.containers.clear();
  state.endpoints = [];
  state.events = [];
  state.lastSeq = 0;
  for (const key of Object.keys(state.live)) state.live[key] = false;
  for (const id of ['nodes', 'roles', 'containers', 'endpoints']) fill(id, []);
  byId('events').replaceChildren();
  byId('summary').textContent = '';
}

function showLogin(message) {
  byId('cluster').hidden = true;
  byId('logout').hidden = true;
  byId('login').hidden = false;
  byId('login-error').textContent = message || '';
  const connection = byId('connection');
  connection.textContent = 'not connected';
  connection.className = 'state-off';
  byId('token').focus();
}

function logout(message) {
  state.session += 1;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  clearCluster();
  showLogin(message);
}

function start(token) {
  state.session += 1;
  state.token = token;
  byId('login').hidden = true;
  byId('cluster').hidden = false;
  byId('logout').hidden = false;
  follow('nodes', state.nodes);
  follow('roles', state.roles);
  follow('containers', state.containers);
  followEvents();
  refreshHeartbeats();
  queueEndpoints();
  queueRender();
}

async function login(event) {
  event.preventDefault();
  const token = byId('token').value.trim();
  if (!token) return;
  const button = byId('login-button');
  button.disabled = true;
  try {
    const response = await fetch('/v1/roles', {
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
    });
    if (response.status === 401) return showLogin('The controller refused this token.');
    if (response.status === 403) return showLogin('This is a board\u2019s credential, not the admin token.');
    if (!response.ok) return showLogin('The controller answered ' + response.status + '.');
    byId('token').value = '';
    sessionStorage.setItem(TOKEN_KEY, token);
    start(token);
  } catch (e) {
    showLogin('Cannot reach the controller: ' + e.message);
  } finally {
    button.disabled = false;
  }
}

function main() {
  byId('login-form').addEventListener('submit', login);
  byId('logout').addEventListener('click', () => logout(''));
  // "Seconds ago" moves on by itself.
  setInterval(() => {
    if (state.token) queueRender();
  }, 1000);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) start(token);
  else showLogin('');
}

main();
