// unicompute dashboard: a single ES module, no framework, no build step, nothing
// loaded from elsewhere. It speaks only the public HTTP API with the token the user
// signs in with (kept in sessionStorage, never in a URL), and follows the event
// stream (fetch + a reader: EventSource cannot send the Authorization header).

const API = '/api/v1/compute';
const ROLES = { viewer: 0, operator: 1, admin: 2 };
const S = {
  token: sessionStorage.getItem('uc.token'),
  me: null,
  instances: new Map(),
  ops: new Map(),
  backends: [],
  stream: null,
  usageTimer: null,
};

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $('#main');
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const can = (role) => S.me && ROLES[S.me.role] >= ROLES[role];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function size(n) {
  if (n == null) return '-';
  const u = ['B', 'K', 'M', 'G', 'T'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i += 1; }
  return i === 0 ? `${v}B` : `${v >= 10 || Number.isInteger(v) ? Math.round(v * 10) / 10 : v.toFixed(1)}${u[i]}`;
}

function announce(text) { $('#live').textContent = text; }

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code || '';
    this.details = body?.error?.details || {};
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${S.token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = r.status === 204 ? '' : await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!r.ok) {
    const e = new ApiError(r.status, json);
    if (r.status === 401 && S.me) signOut(`Signed out: ${e.message}`);
    throw e;
  }
  return json ?? text;
}

function errorText(e) { return e.code ? `${e.message} (${e.code})` : e.message; }

// ---- sign in / out ------------------------------------------------------------

function signInPage(message) {
  $('#nav').hidden = true;
  $('#who').hidden = true;
  main().innerHTML = `
    <h1>Sign in</h1>
    <form class="stack" id="sign-in">
      <label>API token <input type="password" id="token" name="token" autocomplete="current-password" required></label>
      <div id="sign-in-error" role="alert">${message ? `<p class="error">${esc(message)}</p>` : ''}</div>
      <div><button class="primary" type="submit">Sign in</button></div>
      <p class="muted">The token stays in this tab's session storage.</p>
    </form>`;
  $('#token').focus();
  $('#sign-in').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    S.token = $('#token').value.trim();
    try {
      await start();
    } catch (e) {
      S.token = null;
      S.me = null;
      $('#sign-in-error').innerHTML = `<p class="error">${e.status === 401 ? 'The server refused this token' : 'Cannot sign in'}: ${esc(errorText(e))}</p>`;
    }
  });
}

function signOut(message) {
  sessionStorage.removeItem('uc.token');
  S.token = null;
  S.me = null;
  if (S.stream) S.stream.abort();
  S.stream = null;
  S.instances.clear();
  S.ops.clear();
  signInPage(message);
}

async function start() {
  S.me = await api('GET', '/api/v1/whoami');
  sessionStorage.setItem('uc.token', S.token);
  $('#who-name').textContent = `${S.me.name} (${S.me.role})`;
  $('#who').hidden = false;
  $('#nav').hidden = false;
  for (const a of document.querySelectorAll('[data-role]')) a.hidden = !can(a.dataset.role);
  await loadAll();
  follow();
  if (!location.hash || location.hash === '#/' || location.hash === '#') location.hash = '#/instances';
  else route();
}

async function loadAll() {
  S.instances.clear();
  for (let page = 1; ; page += 1) {
    const l = await api('GET', `${API}/instances?page=${page}&pageSize=100`);
    for (const i of l.instances) S.instances.set(i.id, i);
    if (page * l.pageSize >= l.total || l.instances.length === 0) break;
  }
  S.backends = (await api('GET', `${API}/backends`)).backends;
  const ops = await api('GET', `${API}/operations?pageSize=100`);
  S.ops.clear();
  for (const o of ops.operations) S.ops.set(o.id, o);
}

// ---- the event stream -----------------------------------------------------------

async function follow() {
  const ctl = new AbortController();
  S.stream = ctl;
  let last = null;
  while (!ctl.signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${S.token}`, Accept: 'text/event-stream' };
      if (last) headers['Last-Event-ID'] = last;
      const r = await fetch(`${API}/events`, { headers, signal: ctl.signal });
      if (r.status === 401) { signOut('Signed out: the server refused the token'); return; }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true }).replace(/\r\n/g, '\n');
        let at;
        while ((at = buf.indexOf('\n\n')) >= 0) {
          const frame = buf.slice(0, at);
          buf = buf.slice(at + 2);
          let data = '';
          for (const line of frame.split('\n')) {
            if (line.startsWith('id:')) last = line.slice(3).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trimStart();
          }
          if (data) {
            try { apply(JSON.parse(data)); } catch { /* a frame that is not an event */ }
          }
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    await sleep(1000);
  }
}

function apply(e) {
  const t = e.type || '';
  if (t.startsWith('instance.')) {
    if (t === 'instance.deleted') S.instances.delete(e.instanceId);
    else if (e.instance) S.instances.set(e.instance.id, e.instance);
    const id = e.instanceId || e.instance?.id;
    const name = e.instance?.name || S.instances.get(id)?.name || id;
    if (t === 'instance.state-changed') announce(`${name} is ${e.to}`);
    refresh('instances', id);
  } else if (t.startsWith('operation.') && e.operation) {
    S.ops.set(e.operation.id, e.operation);
    refresh('operations');
  } else if (t.startsWith('backend.') || t.startsWith('plugin.')) {
    api('GET', `${API}/backends`).then((b) => { S.backends = b.backends; refresh('backends'); }).catch(() => {});
  }
}

function refresh(what, id) {
  const page = currentPage();
  if (page.name === 'instances' && what === 'instances') renderInstances(false);
  else if (page.name === 'instance' && what === 'instances' && page.arg === id) renderInstance(page.arg, false);
  else if (page.name === 'operations' && what === 'operations') renderOperations();
  else if (page.name === 'backends' && what === 'backends') renderBackends();
}

// ---- routing --------------------------------------------------------------------

function currentPage() {
  const [, name = 'instances', arg] = location.hash.split('/');
  return { name, arg: arg && decodeURIComponent(arg) };
}

function route() {
  if (!S.me) return;
  if (S.usageTimer) { clearInterval(S.usageTimer); S.usageTimer = null; }
  if (S.console) { S.console.close(1000); S.console = null; }
  const page = currentPage();
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === `#/${page.name}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (page.name === 'instance' && page.arg) renderInstance(page.arg, true);
  else if (page.name === 'create') renderCreate();
  else if (page.name === 'backends') renderBackends();
  else if (page.name === 'operations') renderOperations();
  else renderInstances(true);
}

// ---- confirmation ---------------------------------------------------------------

function confirmAction(text, okLabel) {
  const d = $('#confirm');
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel;
  d.returnValue = 'cancel';
  d.showModal();
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
  });
}

async function act(inst, action) {
  const danger = { stop: 'Stop', delete: 'Delete', restart: 'Restart' };
  if (danger[action]) {
    const ok = await confirmAction(`${danger[action]} ${inst.name}${action === 'delete' && inst.state !== 'stopped' && inst.state !== 'created' ? ' (it is running: it will be stopped first)' : ''}?`, danger[action]);
    if (!ok) return;
  }
  const out = $('#action-error');
  if (out) out.innerHTML = '';
  try {
    if (action === 'delete') {
      await api('DELETE', `${API}/instances/${encodeURIComponent(inst.id)}?force=true`);
      S.instances.delete(inst.id);
      announce(`${inst.name} deleted`);
      if (currentPage().name === 'instance') location.hash = '#/instances';
      else renderInstances(false);
    } else {
      const i = await api('PUT', `${API}/instances/${encodeURIComponent(inst.id)}/${action}`, action === 'stop' || action === 'restart' ? {} : undefined);
      if (i && i.id) S.instances.set(i.id, i);
      refresh('instances', inst.id);
    }
  } catch (e) {
    const box = $('#action-error');
    if (box) box.innerHTML = `<p class="error">${esc(inst.name)}: ${esc(errorText(e))}</p>`;
  }
}

function actionButtons(i) {
  const b = [];
  const btn = (a, label, cls = '') => `<button type="button" data-act="${a}" data-id="${esc(i.id)}" class="${cls}" aria-label="${label} ${esc(i.name)}">${label}</button>`;
  if (can('operator')) {
    if (['created', 'stopped', 'error'].includes(i.state)) b.push(btn('start', 'Start'));
    if (['running', 'restarting'].includes(i.state)) b.push(btn('stop', 'Stop'));
    if (i.state === 'running') b.push(btn('restart', 'Restart'), btn('pause', 'Pause'));
    if (i.state === 'paused') b.push(btn('unpause', 'Unpause'));
  }
  if (can('admin')) b.push(btn('delete', 'Delete', 'danger'));
  return b.join('');
}

function wireActions(root) {
  root.addEventListener('click', (ev) => {
    const t = ev.target.closest('button[data-act]');
    if (!t) return;
    const inst = S.instances.get(t.dataset.id);
    if (inst) act(inst, t.dataset.act);
  });
}

const labelsOf = (i) => Object.entries(i.metadata?.labels || {});

// ---- instances ------------------------------------------------------------------

function renderInstances(fresh) {
  if (fresh || !$('#instances-page')) {
    const backends = S.backends.map((b) => `<option>${esc(b.name)}</option>`).join('');
    main().innerHTML = `
      <section id="instances-page">
        <h1>Instances</h1>
        <div class="row filters" role="search">
          <label>Backend <select id="f-backend"><option value="">All</option>${backends}</select></label>
          <label>State <select id="f-state"><option value="">All</option>${['created', 'running', 'paused', 'stopped', 'restarting', 'error', 'unknown'].map((s) => `<option>${s}</option>`).join('')}</select></label>
          <label>Name or label <input id="f-text" type="search" placeholder="web, app=web"></label>
        </div>
        <div id="action-error" role="alert"></div>
        <div class="table-wrap"><table>
          <caption class="live">Instances</caption>
          <thead><tr><th scope="col">Name</th><th scope="col">Backend</th><th scope="col" class="wide">Type</th><th scope="col">State</th><th scope="col" class="wide">CPUs</th><th scope="col">Memory</th><th scope="col" class="wide">Labels</th><th scope="col">Actions</th></tr></thead>
          <tbody id="rows"></tbody>
        </table></div>
        <p class="muted" id="count"></p>
      </section>`;
    for (const id of ['f-backend', 'f-state', 'f-text']) $(`#${id}`).addEventListener('input', () => renderInstances(false));
    wireActions($('#instances-page'));
  }
  const fb = $('#f-backend').value;
  const fs = $('#f-state').value;
  const ft = $('#f-text').value.trim().toLowerCase();
  const list = [...S.instances.values()]
    .filter((i) => (!fb || i.backend === fb) && (!fs || i.state === fs))
    .filter((i) => !ft || i.name.toLowerCase().includes(ft) || labelsOf(i).some(([k, v]) => `${k}=${v}`.toLowerCase().includes(ft)))
    .sort((a, b) => (a.createdAt || '').localeCompare(b.createdAt || '') || a.id.localeCompare(b.id));
  $('#rows').innerHTML = list.map((i) => `
    <tr data-id="${esc(i.id)}" data-name="${esc(i.name)}">
      <td><a href="#/instance/${encodeURIComponent(i.id)}">${esc(i.name)}</a></td>
      <td>${esc(i.backend)}</td>
      <td class="wide">${esc(i.type)}</td>
      <td><span class="state ${esc(i.state)}">${esc(i.state)}</span></td>
      <td class="wide">${esc(i.resources?.cpu?.cores ?? '-')}</td>
      <td>${size(i.resources?.memory?.limit)}</td>
      <td class="wide">${labelsOf(i).map(([k, v]) => `<span class="chip">${esc(k)}=${esc(v)}</span>`).join('')}</td>
      <td class="actions">${actionButtons(i)}</td>
    </tr>`).join('') || '<tr><td colspan="8" class="muted">No instances</td></tr>';
  $('#count').textContent = `${list.length} of ${S.instances.size} instances`;
}

// ---- one instance ---------------------------------------------------------------

function spark(values, max) {
  if (values.length < 2) return '<svg class="spark" viewBox="0 0 100 30" role="img" aria-label="not enough samples yet"></svg>';
  const top = Math.max(max || 0, ...values, 1e-9);
  const pts = values.map((v, n) => `${(n / (values.length - 1)) * 100},${30 - (v / top) * 28}`).join(' ');
  return `<svg class="spark" viewBox="0 0 100 30" preserveAspectRatio="none" role="img" aria-label="last ${values.length} samples"><polyline fill="none" stroke="#0a58ca" stroke-width="1" points="${pts}"/></svg>`;
}

async function renderInstance(id, fresh) {
  const i = S.instances.get(id);
  if (!i) {
    main().innerHTML = `<h1>Instance</h1><p class="error">Instance ${esc(id)} not found (it may have been deleted).</p><p><a href="#/instances">All instances</a></p>`;
    return;
  }
  if (fresh || !$('#instance-page')) {
    main().innerHTML = `
      <section id="instance-page" data-id="${esc(i.id)}">
        <p><a href="#/instances">All instances</a></p>
        <h1 id="inst-title"></h1>
        <div id="action-error" role="alert"></div>
        <div id="inst-actions" class="row"></div>
        <h2>Details</h2><dl class="props" id="inst-props"></dl>
        <h2>Usage</h2><div id="usage"><p class="muted">Reading…</p></div>
        <div id="edit"></div>
        <h2>Logs</h2><div class="row"><button type="button" id="logs-refresh">Refresh</button></div><pre id="logs" tabindex="0" aria-label="Logs">Loading…</pre>
        <div id="console-box"></div>
        <h2>Configuration</h2><pre id="inst-config" tabindex="0" aria-label="Configuration"></pre>
      </section>`;
    wireActions($('#instance-page'));
    $('#logs-refresh').addEventListener('click', () => loadLogs(id));
    loadLogs(id);
    S.samples = [];
    readUsage(id);
    S.usageTimer = setInterval(() => readUsage(id), 5000);
    if (can('admin')) {
      renderEdit(i);
      renderConsole(i);
    }
  }
  $('#inst-title').innerHTML = `${esc(i.name)} <span class="state ${esc(i.state)}">${esc(i.state)}</span>`;
  $('#inst-actions').innerHTML = actionButtons(i);
  const props = [
    ['ID', i.id], ['Backend', `${i.backend} (${i.type})`], ['State', i.state], ['Image', i.config?.image ?? '-'],
    ['CPUs', i.resources?.cpu?.cores ?? '-'], ['Memory', size(i.resources?.memory?.limit)],
    ['Disk', size(i.resources?.storage?.totalSpace)],
    ['Labels', labelsOf(i).map(([k, v]) => `${k}=${v}`).join(', ') || '-'],
    ['Created', i.createdAt ?? '-'],
  ];
  $('#inst-props').innerHTML = props.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join('');
  $('#inst-config').textContent = JSON.stringify(i.config || {}, null, 2);
}

async function loadLogs(id) {
  const box = $('#logs');
  try {
    const r = await fetch(`${API}/instances/${encodeURIComponent(id)}/logs?tail=200`, { headers: { Authorization: `Bearer ${S.token}` } });
    const text = await r.text();
    if (!r.ok) {
      let msg = `HTTP ${r.status}`;
      try { const j = JSON.parse(text); msg = `${j.error.message} (${j.error.code})`; } catch { /* not JSON */ }
      box.textContent = `No logs: ${msg}`;
      return;
    }
    box.textContent = text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '') || '(nothing printed yet)';
    box.scrollTop = box.scrollHeight;
  } catch (e) {
    box.textContent = `No logs: ${e.message}`;
  }
}

async function readUsage(id) {
  const box = $('#usage');
  if (!box) return;
  const i = S.instances.get(id);
  if (!i || i.state !== 'running') {
    box.innerHTML = `<p class="muted">No usage while ${esc(i?.state || 'gone')}.</p>`;
    return;
  }
  try {
    const u = await api('GET', `${API}/instances/${encodeURIComponent(id)}/usage`);
    S.samples.push(u);
    if (S.samples.length > 60) S.samples.shift();
    box.innerHTML = `
      <dl class="props">
        <dt>CPU</dt><dd id="usage-cpu">${u.cpu.usage.toFixed(1)}% of ${u.cpu.cores} core(s)</dd>
        <dt>Memory</dt><dd id="usage-mem">${size(u.memory.used)} of ${size(u.memory.limit)} (${u.memory.percentage.toFixed(1)}%)</dd>
        <dt>Disk</dt><dd>${size(u.storage.used)} of ${size(u.storage.total)}</dd>
        <dt>Network</dt><dd>in ${size(u.network.rxBytes)}, out ${size(u.network.txBytes)}</dd>
      </dl>
      <p class="muted">CPU %, memory (last ${S.samples.length} samples, every 5 s)</p>
      ${spark(S.samples.map((s) => s.cpu.usage), 100)}
      ${spark(S.samples.map((s) => s.memory.used), u.memory.limit)}`;
  } catch (e) {
    box.innerHTML = `<p class="error">${esc(errorText(e))}</p>`;
  }
}

// ---- the console (a WebSocket; the token goes as a subprotocol) -----------------

function hex(text) {
  return Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, '0')).join('');
}

function renderConsole(i) {
  $('#console-box').innerHTML = `
    <h2>Console</h2>
    <div class="row">
      <button type="button" id="console-connect">Connect</button>
      <button type="button" id="console-ctrlc" disabled>Send Ctrl-C</button>
      <button type="button" id="console-close" disabled>Disconnect</button>
      <span id="console-status" class="muted" role="status"></span>
    </div>
    <pre id="console-out" tabindex="0" aria-label="Console output"></pre>
    <form id="console-form" class="row"><label>Type a line <input id="console-in" autocomplete="off" disabled></label><button type="submit" disabled id="console-send">Send</button></form>`;
  let sock = null;
  const out = $('#console-out');
  const status = (t) => { $('#console-status').textContent = t; };
  const enable = (on) => {
    for (const id of ['console-ctrlc', 'console-close', 'console-in', 'console-send']) $(`#${id}`).disabled = !on;
    $('#console-connect').disabled = on;
  };
  const show = (text) => {
    // Terminal control sequences are dropped; a carriage return alone is no new line.
    out.textContent += text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').replace(/\r(?!\n)/g, '').replace(/\r\n/g, '\n');
    if (out.textContent.length > 200000) out.textContent = out.textContent.slice(-100000);
    out.scrollTop = out.scrollHeight;
  };
  const dec = new TextDecoder();
  $('#console-connect').addEventListener('click', () => {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    sock = new WebSocket(`${scheme}://${location.host}${API}/instances/${encodeURIComponent(i.id)}/console?cols=100&rows=30`, ['unicompute', `unicompute.bearer.${hex(S.token)}`]);
    sock.binaryType = 'arraybuffer';
    S.console = sock;
    status('Connecting…');
    sock.onopen = () => { status('Connected'); enable(true); $('#console-in').focus(); };
    sock.onmessage = (m) => {
      if (typeof m.data === 'string') {
        try {
          const c = JSON.parse(m.data);
          if (c.type === 'error') status(`${c.error.message} (${c.error.code})`);
        } catch { show(m.data); }
      } else {
        show(dec.decode(m.data, { stream: true }));
      }
    };
    sock.onclose = (ev) => {
      enable(false);
      const why = $('#console-status').textContent;
      status(why && why !== 'Connected' && why !== 'Connecting…' ? why : `Disconnected${ev.code && ev.code !== 1000 && ev.code !== 1005 ? ` (${ev.code})` : ''}`);
      sock = null;
    };
  });
  $('#console-close').addEventListener('click', () => sock?.close(1000));
  $('#console-ctrlc').addEventListener('click', () => sock?.send(new Uint8Array([3])));
  $('#console-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (!sock) return;
    sock.send(new TextEncoder().encode(`${$('#console-in').value}\n`));
    $('#console-in').value = '';
  });
}

function renderEdit(i) {
  const labels = labelsOf(i).map(([k, v]) => `${k}=${v}`).join(', ');
  $('#edit').innerHTML = `
    <h2>Edit</h2>
    <form class="stack" id="edit-form">
      <div class="row">
        <label>CPUs <input type="number" min="1" id="e-cpus" value="${esc(i.resources?.cpu?.cores ?? '')}"></label>
        <label>Memory (MiB) <input type="number" min="1" id="e-mem" value="${i.resources?.memory?.limit ? Math.round(i.resources.memory.limit / 1048576) : ''}"></label>
      </div>
      <label>Labels (key=value, comma separated) <input id="e-labels" value="${esc(labels)}"></label>
      <div id="edit-error" role="alert"></div>
      <div><button class="primary" type="submit">Save</button></div>
    </form>`;
  $('#edit-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = {};
    const cpus = $('#e-cpus').value;
    const mem = $('#e-mem').value;
    const res = {};
    if (cpus) res.cpu = { cores: Number(cpus) };
    if (mem) res.memory = { limit: Number(mem) * 1048576 };
    if (Object.keys(res).length) body.resources = res;
    const wanted = parseLabels($('#e-labels').value);
    const remove = Object.fromEntries(labelsOf(i).filter(([k]) => !(k in wanted)).map(([k]) => [k, null]));
    body.metadata = { labels: { ...remove, ...wanted } };
    try {
      const after = await api('PUT', `${API}/instances/${encodeURIComponent(i.id)}`, body);
      if (after?.id) S.instances.set(after.id, after);
      $('#edit-error').innerHTML = '<p class="muted">Saved.</p>';
      renderInstance(i.id, false);
    } catch (e) {
      $('#edit-error').innerHTML = `<p class="error">${esc(errorText(e))}</p>`;
    }
  });
}

// A command line split as a shell would split words: spaces, '...' and "...".
function words(text) {
  const out = [];
  let cur = null;
  let quote = null;
  for (const c of text) {
    if (quote) {
      if (c === quote) quote = null;
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      cur = cur ?? '';
    } else if (/\s/.test(c)) {
      if (cur !== null) out.push(cur);
      cur = null;
    } else {
      cur = (cur ?? '') + c;
    }
  }
  if (cur !== null) out.push(cur);
  return out;
}

function parseLabels(text) {
  const out = {};
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const at = part.indexOf('=');
    if (at > 0) out[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  return out;
}

// ---- create ---------------------------------------------------------------------

async function renderCreate() {
  if (!can('admin')) {
    main().innerHTML = '<h1>Create</h1><p class="error">Creating needs an admin token.</p>';
    return;
  }
  const enabled = S.backends.filter((b) => b.enabled);
  main().innerHTML = `
    <h1>Create an instance</h1>
    <form class="stack" id="create-form" novalidate>
      <label>Backend <select id="c-backend" required>${enabled.map((b) => `<option value="${esc(b.name)}">${esc(b.name)} (${esc(b.type || b.plugin)})</option>`).join('')}</select></label>
      <label>Name <input id="c-name" required autocomplete="off" aria-describedby="err-name"></label>
      <span class="field-error" id="err-name"></span>
      <label>Image <select id="c-image" aria-describedby="err-image"></select></label>
      <span class="field-error" id="err-image"></span>
      <label>Command (containers; quotes group words) <input id="c-command" autocomplete="off" placeholder="sleep 3600"></label>
      <div class="row">
        <label>CPUs <input type="number" min="1" id="c-cpus" value="1"></label>
        <label>Memory (MiB) <input type="number" min="1" id="c-mem" value="256" aria-describedby="err-resources"></label>
      </div>
      <span class="field-error" id="err-resources"></span>
      <label>Labels (key=value, comma separated) <input id="c-labels" aria-describedby="err-labels"></label>
      <span class="field-error" id="err-labels"></span>
      <label>More configuration (a JSON object merged into <code>config</code>: ports, env, volumes, networkType, cloudInit…) <textarea id="c-config" rows="3" spellcheck="false" aria-describedby="err-config" placeholder='{"env": ["MODE=prod"]}'></textarea></label>
      <span class="field-error" id="err-config"></span>
      <label class="row"><span><input type="checkbox" id="c-start" checked> Start it</span></label>
      <div id="create-error" role="alert"></div>
      <div><button class="primary" type="submit">Create</button></div>
    </form>`;
  const images = async () => {
    const sel = $('#c-image');
    sel.innerHTML = '<option value="">Loading…</option>';
    try {
      const l = await api('GET', `${API}/backends/${encodeURIComponent($('#c-backend').value)}/images`);
      sel.innerHTML = l.images.map((im) => `<option>${esc(im.name)}</option>`).join('') || '<option value="">No images</option>';
    } catch (e) {
      sel.innerHTML = `<option value="">${esc(errorText(e))}</option>`;
    }
  };
  $('#c-backend').addEventListener('change', images);
  if (enabled.length) await images();
  $('#create-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    for (const el of document.querySelectorAll('.field-error')) el.textContent = '';
    $('#create-error').innerHTML = '';
    const body = {
      name: $('#c-name').value.trim(),
      backend: $('#c-backend').value,
      config: { image: $('#c-image').value },
      resources: { cpu: { cores: Number($('#c-cpus').value) }, memory: { limit: Number($('#c-mem').value) * 1048576 } },
      start: $('#c-start').checked,
    };
    const extra = $('#c-config').value.trim();
    if (extra) {
      let more;
      try { more = JSON.parse(extra); } catch (e) { more = e; }
      if (!more || typeof more !== 'object' || Array.isArray(more) || more instanceof Error) {
        $('#err-config').textContent = `Not a JSON object${more instanceof Error ? `: ${more.message}` : ''}`;
        return;
      }
      Object.assign(body.config, more);
    }
    const command = words($('#c-command').value);
    if (command.length) body.config.command = command;
    const labels = parseLabels($('#c-labels').value);
    if (Object.keys(labels).length) body.metadata = { labels };
    try {
      const i = await api('POST', `${API}/instances`, body);
      S.instances.set(i.id, i);
      announce(`${i.name} created`);
      location.hash = `#/instance/${encodeURIComponent(i.id)}`;
    } catch (e) {
      // The server's message, by the field it is about when it says which.
      const where = fieldOf(e);
      if (where) $(`#err-${where}`).textContent = errorText(e);
      $('#create-error').innerHTML = `<p class="error">${esc(errorText(e))}</p>`;
    }
  });
}

function fieldOf(e) {
  const d = e.details || {};
  const text = `${e.message} ${JSON.stringify(d)}`.toLowerCase();
  if (e.code === 'INSTANCE_ALREADY_EXISTS' || 'name' in d || /\bname\b/.test(e.message.toLowerCase())) return 'name';
  if (e.code === 'IMAGE_NOT_FOUND' || text.includes('image')) return 'image';
  if (text.includes('label')) return 'labels';
  if (text.includes('config')) return 'config';
  if (text.includes('memory') || text.includes('cpu') || text.includes('resources')) return 'resources';
  return null;
}

// ---- backends, operations -----------------------------------------------------

async function renderBackends() {
  let cluster = null;
  try { cluster = await api('GET', `${API}/cluster/status`); } catch { cluster = null; }
  main().innerHTML = `
    <h1>Backends</h1>
    ${cluster ? `<p>Cluster: <span class="state ${esc(cluster.health)}">${esc(cluster.health)}</span>, ${esc(cluster.totalInstances ?? S.instances.size)} instances</p>` : ''}
    <div class="table-wrap"><table>
      <thead><tr><th scope="col">Name</th><th scope="col">Plugin</th><th scope="col">Type</th><th scope="col">Status</th><th scope="col">Instances</th><th scope="col" class="wide">Reason</th></tr></thead>
      <tbody>${S.backends.map((b) => `<tr><td>${esc(b.name)}</td><td>${esc(b.plugin)}</td><td>${esc(b.type || '-')}</td><td><span class="state ${esc(b.status)}">${esc(b.status)}</span></td><td>${esc(b.instances)}</td><td class="wide">${esc(b.reason || '-')}</td></tr>`).join('')}</tbody>
    </table></div>`;
}

function renderOperations() {
  const list = [...S.ops.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  const bar = (o) => {
    const p = o.progress;
    if (!p) return '-';
    const pc = p.percent ?? (p.bytesTotal ? (100 * (p.bytesDone || 0)) / p.bytesTotal : null);
    return `${esc(p.stage)} ${pc == null ? '' : `<progress max="100" value="${pc.toFixed(0)}" aria-label="${esc(o.kind)} ${pc.toFixed(0)}%"></progress> ${pc.toFixed(0)}%`}`;
  };
  main().innerHTML = `
    <h1>Operations</h1>
    <div id="action-error" role="alert"></div>
    <div class="table-wrap"><table id="ops-table">
      <thead><tr><th scope="col">ID</th><th scope="col">Kind</th><th scope="col">Status</th><th scope="col">Progress</th><th scope="col" class="wide">Backend</th><th scope="col" class="wide">Created</th><th scope="col"></th></tr></thead>
      <tbody>${list.map((o) => `<tr data-op="${esc(o.id)}"><td>${esc(o.id)}</td><td>${esc(o.kind)}</td><td><span class="state ${esc(o.status)}">${esc(o.status)}</span>${o.error ? ` <span class="muted">${esc(o.error.error?.message || '')}</span>` : ''}</td><td>${bar(o)}</td><td class="wide">${esc(o.backend || '-')}</td><td class="wide">${esc(o.createdAt)}</td><td>${can('admin') && ['pending', 'running'].includes(o.status) ? `<button type="button" data-cancel="${esc(o.id)}">Cancel</button>` : ''}</td></tr>`).join('') || '<tr><td colspan="7" class="muted">No operations</td></tr>'}</tbody>
    </table></div>`;
  $('#ops-table').addEventListener('click', async (ev) => {
    const t = ev.target.closest('button[data-cancel]');
    if (!t) return;
    try {
      const o = await api('DELETE', `${API}/operations/${encodeURIComponent(t.dataset.cancel)}`);
      if (o?.id) S.ops.set(o.id, o);
      renderOperations();
    } catch (e) {
      $('#action-error').innerHTML = `<p class="error">${esc(errorText(e))}</p>`;
    }
  });
}

// ---- start ----------------------------------------------------------------------

window.addEventListener('hashchange', route);
$('#sign-out').addEventListener('click', () => signOut());
if (S.token) {
  start().catch((e) => signOut(e.status === 401 ? `The server refused the saved token: ${errorText(e)}` : errorText(e)));
} else {
  signInPage();
}
