// The tower-api-key console: one page, no build step, no third-party code.
// The operator's key is kept in this tab's session storage and sent as the Authorization
// header; it never goes into a URL, a cookie or the page's text. Everything the API returns is
// put into the page as text (never as HTML).
'use strict';

(function () {
  const BASE = document.querySelector('meta[name="console-base"]').content;
  const STORED = 'tower-api-key.console';
  const SVG = 'http://www.w3.org/2000/svg';
  const main = document.getElementById('main');
  let me = null;

  // ---- small helpers ------------------------------------------------------------------------

  /** An element with attributes (`on…` functions become listeners) and children. */
  function h(tag, attrs, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
      else if (value === true) element.setAttribute(name, '');
      else element.setAttribute(name, value);
    }
    append(element, children);
    return element;
  }

  function append(element, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function svg(tag, attrs, ...children) {
    const element = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) element.setAttribute(name, value);
    append(element, children);
    return element;
  }

  function show(...children) {
    main.replaceChildren(...children.flat().filter(Boolean));
    main.focus({ preventScroll: true });
  }

  function date(secs) {
    if (secs === null || secs === undefined) return '—';
    return new Date(secs * 1000).toISOString().replace('T', ' ').slice(0, 16) + ' UTC';
  }

  /** A key's last use, or that nothing records it. */
  function lastUsed(key) {
    return me.last_use_recorded ? date(key.last_used_at) : h('span', { class: 'muted' }, 'not recorded');
  }

  function number(n) {
    return Number(n || 0).toLocaleString('en');
  }

  function percent(rate) {
    return (100 * (rate || 0)).toFixed(1) + ' %';
  }

  function ms(value) {
    return value === null || value === undefined ? '—' : (value < 10 ? value.toFixed(2) : value.toFixed(0)) + ' ms';
  }

  function badge(state) {
    return h('span', { class: 'badge ' + state }, state);
  }

  function notice(text, kind) {
    return h('p', { class: 'notice ' + (kind || ''), role: kind === 'error' ? 'alert' : 'status' }, text);
  }

  // ---- the API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.error ? body.error : 'HTTP ' + status);
      this.status = status;
      this.code = body && body.code;
    }
  }

  async function api(method, path, body) {
    const key = sessionStorage.getItem(STORED);
    const headers = { Authorization: 'ApiKey ' + key };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(BASE + '/api' + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
    const text = await response.text();
    const json = text ? JSON.parse(text) : null;
    if (!response.ok) {
      if (response.status === 401) signOut('Your key was refused (' + (json && json.code) + '). Sign in again.');
      throw new ApiError(response.status, json);
    }
    return json;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== '' && value !== null && value !== undefined) search.set(name, value);
    }
    const text = search.toString();
    return text ? '?' + text : '';
  }

  // ---- signing in ---------------------------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(STORED);
    me = null;
    document.getElementById('nav').hidden = true;
    document.getElementById('who').hidden = true;
    signIn(message);
  }

  function signIn(message) {
    const input = h('input', {
      id: 'key', name: 'key', type: 'password', autocomplete: 'off', spellcheck: 'false',
      required: true, placeholder: 'mesh_live_…', 'aria-describedby': 'key-help',
    });
    const form = h('form', { class: 'card narrow', onsubmit: async (event) => {
      event.preventDefault();
      sessionStorage.setItem(STORED, input.value.trim());
      input.value = '';
      try {
        await start();
      } catch (error) {
        sessionStorage.removeItem(STORED);
        signIn(error.message);
      }
    } },
      h('h1', {}, 'Sign in'),
      message ? notice(message, 'error') : null,
      h('label', { for: 'key' }, 'API key'),
      input,
      h('p', { id: 'key-help', class: 'help' },
        'Paste a key with the admin scope (every key) or the self-service scope (your own keys). ' +
        'It stays in this tab only, and is sent with each request as the Authorization header.'),
      h('button', { type: 'submit', class: 'primary', id: 'sign-in' }, 'Sign in'));
    show(form);
    input.focus();
  }

  async function start() {
    me = await api('GET', '/me');
    document.getElementById('nav').hidden = false;
    document.getElementById('who').hidden = false;
    document.getElementById('who-name').textContent = me.name + ' · ' + me.role;
    route();
  }

  // ---- pages --------------------------------------------------------------------------------

  async function route() {
    if (!me) return;
    const hash = location.hash.replace(/^#/, '') || '/';
    for (const link of document.querySelectorAll('#nav a')) {
      const current = link.getAttribute('href') === '#' + hash ||
        (hash.startsWith('/keys') && link.getAttribute('href') === '#/keys');
      if (current) link.setAttribute('aria-current', 'page'); else link.removeAttribute('aria-current');
    }
    try {
      if (hash === '/' || hash === '') await overview();
      else if (hash === '/keys' || hash.startsWith('/keys?')) await keysPage(new URLSearchParams(hash.split('?')[1] || ''));
      else if (hash === '/new') newKey();
      else if (hash === '/activity') await activity();
      else if (hash.startsWith('/keys/')) await keyPage(decodeURIComponent(hash.slice(6)));
      else show(notice('No such page.', 'error'));
    } catch (error) {
      if (error.status !== 401) show(h('p', {}, h('a', { href: '#/keys' }, '← All keys')), notice(error.message, 'error'));
    }
  }

  const RANGES = {
    '1h': { hours: 1, resolution: 'minute', label: 'Last hour' },
    '24h': { hours: 24, resolution: 'hour', label: 'Last 24 hours' },
    '30d': { hours: 720, resolution: 'day', label: 'Last 30 days' },
  };

  /** The usage panel: totals, charts, top endpoints and countries, and, unless `withoutLimits`
   *  (a revoked key's: they no longer matter), where it stands against its limits. */
  function usagePanel(params, title, withoutLimits) {
    const panel = h('section', { class: 'usage', 'aria-label': title });
    let range = '1h';
    const picker = h('div', { class: 'segmented', role: 'group', 'aria-label': 'Time range' });
    for (const [name, { label }] of Object.entries(RANGES)) {
      picker.append(h('button', { type: 'button', 'aria-pressed': String(name === range), onclick: () => {
        range = name;
        for (const b of picker.children) b.setAttribute('aria-pressed', String(b.dataset.range === range));
        load();
      }, 'data-range': name }, label));
    }
    const body = h('div', {}, notice('Loading usage…'));
    panel.append(h('div', { class: 'panel-head' }, h('h2', {}, title), picker), body);

    let loads = 0;
    async function load() {
      if (!me.usage) {
        body.replaceChildren(notice('Usage is not recorded: the console was not given the layer’s analytics.'));
        return;
      }
      const { hours, resolution } = RANGES[range];
      // Only the latest range asked is shown, whichever answer comes last.
      const asked = ++loads;
      let view;
      try {
        const report = await api('GET', '/usage' + query({ ...params, hours, resolution }));
        view = usageView(withoutLimits ? { ...report, limits: [] } : report);
      } catch (error) {
        view = [notice(error.message, 'error')];
      }
      if (asked === loads) body.replaceChildren(...view);
    }
    load();
    return panel;
  }

  function usageView(report) {
    const totals = report.totals;
    const latency = totals.latency || {};
    const rejected = Object.entries(totals.outcomes).filter(([o]) => o !== 'ok').reduce((n, [, c]) => n + c, 0);
    const cards = h('div', { class: 'cards' },
      stat('Requests', number(totals.requests)),
      stat('Rejected by the layer', number(rejected)),
      stat('Error rate (4xx, 5xx)', percent(totals.error_rate)),
      stat('Latency p50', ms(latency.p50_ms)),
      stat('p95', ms(latency.p95_ms)),
      stat('p99', ms(latency.p99_ms)));
    const classes = ['2xx', '3xx', '4xx', '5xx'];
    const views = [
      cards,
      h('div', { class: 'charts' },
        figure('Requests by status class', barChart(report.series, classes, (p, c) => p.status_classes[c] || 0)),
        figure('Requests by outcome', barChart(report.series, ['ok', 'rejected'],
          (p, c) => c === 'ok' ? (p.outcomes.ok || 0) : p.requests - (p.outcomes.ok || 0))),
        figure('Latency (ms): p50, p95, p99', lineChart(report.series))),
      h('div', { class: 'tables' },
        ranking('Top endpoints', report.top_endpoints),
        ranking('Countries', report.top_countries),
        outcomesTable(totals.outcomes)),
    ];
    if (report.limits && report.limits.length) views.push(limitsTable(report.limits));
    return views;
  }

  function stat(label, value) {
    return h('div', { class: 'stat' }, h('span', { class: 'label' }, label), h('strong', {}, value));
  }

  function figure(caption, chart) {
    return h('figure', { class: 'chart' }, h('figcaption', {}, caption), chart);
  }

  function ranking(title, rows) {
    const table = h('table', {}, h('caption', {}, title),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col', class: 'num' }, 'Requests'))));
    const tbody = h('tbody');
    if (!rows.length) tbody.append(h('tr', {}, h('td', { colspan: 2, class: 'muted' }, 'None yet')));
    for (const row of rows) tbody.append(h('tr', {}, h('td', {}, row.name), h('td', { class: 'num' }, number(row.requests))));
    table.append(tbody);
    return table;
  }

  function outcomesTable(outcomes) {
    return ranking('Outcomes', Object.entries(outcomes).map(([name, requests]) => ({ name, requests }))
      .sort((a, b) => b.requests - a.requests));
  }

  function limitsTable(limits) {
    const table = h('table', { class: 'limits' }, h('caption', {}, 'Rate limits and quotas now'),
      h('thead', {}, h('tr', {}, ...['Limit', 'Quota', 'Window', 'Remaining', 'Resets in'].map((t) => h('th', { scope: 'col' }, t)))));
    const tbody = h('tbody');
    for (const limit of limits) {
      tbody.append(h('tr', {},
        h('td', {}, limit.policy),
        h('td', { class: 'num' }, number(limit.quota)),
        h('td', {}, period(limit.window_secs)),
        h('td', { class: 'num' }, h('meter', { min: 0, max: limit.quota, value: limit.remaining, 'aria-label': 'remaining' }), ' ', number(limit.remaining)),
        h('td', {}, human(limit.reset_secs)),
      ));
    }
    table.append(tbody);
    return table;
  }

  function period(secs) {
    if (secs >= 86400 && secs % 86400 === 0) return secs / 86400 + ' d';
    if (secs >= 3600 && secs % 3600 === 0) return secs / 3600 + ' h';
    if (secs >= 60 && secs % 60 === 0) return secs / 60 + ' min';
    return secs + ' s';
  }

  /** A longest lifetime as the server says it: `90 days`, `36 hours`, else `3 h 12 min`. */
  function lifetime(secs) {
    const [count, unit] = secs > 0 && secs % 86400 === 0 ? [secs / 86400, 'day']
      : secs > 0 && secs % 3600 === 0 ? [secs / 3600, 'hour'] : [null, null];
    return count === null ? human(secs) : count + ' ' + unit + (count === 1 ? '' : 's');
  }

  /** A duration in its two largest units: `3 h 12 min`. */
  function human(secs) {
    const units = [['d', 86400], ['h', 3600], ['min', 60], ['s', 1]];
    const parts = [];
    let rest = Math.max(0, Math.round(secs));
    for (const [name, size] of units) {
      if (rest >= size || (name === 's' && !parts.length)) {
        parts.push(Math.floor(rest / size) + ' ' + name);
        rest %= size;
      }
      if (parts.length === 2) break;
    }
    return parts.join(' ');
  }

  /** Stacked bars: one bar per point, one segment per series. */
  function barChart(points, names, value) {
    const width = 400, height = 170, left = 46, bottom = 20, top = 22;
    const totals = points.map((p) => names.reduce((n, name) => n + value(p, name), 0));
    const max = Math.max(1, ...totals);
    const step = (width - left) / Math.max(1, points.length);
    const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'plot',
      'aria-label': names.map((n) => n + ' ' + number(points.reduce((s, p) => s + value(p, n), 0))).join(', ') });
    axes(chart, width, height, left, bottom, top, max, points);
    points.forEach((point, i) => {
      let y = height - bottom;
      names.forEach((name, series) => {
        const v = value(point, name);
        if (!v) return;
        const tall = (v / max) * (height - bottom - top);
        y -= tall;
        chart.append(svg('rect', { x: left + i * step + step * 0.1, y, width: Math.max(1, step * 0.8), height: tall, class: 's' + series },
          svg('title', {}, `${date(point.start)}: ${number(v)} ${name}`)));
      });
    });
    legend(chart, names, width);
    return chart;
  }

  /** Lines of p50, p95 and p99. */
  function lineChart(points) {
    const width = 400, height = 170, left = 46, bottom = 20, top = 22;
    const names = ['p50_ms', 'p95_ms', 'p99_ms'];
    const max = Math.max(...points.map((p) => (p.latency ? p.latency.p99_ms : 0))) || 1;
    const step = (width - left) / Math.max(1, points.length);
    const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'plot',
      'aria-label': 'Latency percentiles over time' });
    axes(chart, width, height, left, bottom, top, max, points, ms);
    names.forEach((name, series) => {
      const coordinates = points.map((p, i) => p.latency
        ? `${left + i * step + step / 2},${height - bottom - (p.latency[name] / max) * (height - bottom - top)}`
        : null).filter(Boolean);
      if (coordinates.length) {
        chart.append(svg('polyline', { points: coordinates.join(' '), class: 'line l' + series }));
      }
      points.forEach((p, i) => {
        if (!p.latency) return;
        chart.append(svg('circle', {
          cx: left + i * step + step / 2, cy: height - bottom - (p.latency[name] / max) * (height - bottom - top),
          r: 2.5, class: 'l' + series,
        }, svg('title', {}, `${date(p.start)}: ${name.replace('_ms', '')} ${ms(p.latency[name])}`)));
      });
    });
    legend(chart, ['p50', 'p95', 'p99'], width, 'l');
    return chart;
  }

  function axes(chart, width, height, left, bottom, top, max, points, label) {
    chart.append(svg('line', { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: 'axis' }));
    chart.append(svg('line', { x1: left, y1: top, x2: left, y2: height - bottom, class: 'axis' }));
    chart.append(svg('text', { x: left - 4, y: top + 4, class: 'tick end' }, label ? label(max) : number(Math.round(max))));
    chart.append(svg('text', { x: left - 4, y: height - bottom, class: 'tick end' }, '0'));
    if (points.length) {
      chart.append(svg('text', { x: left, y: height - 4, class: 'tick' }, date(points[0].start)));
      chart.append(svg('text', { x: width, y: height - 4, class: 'tick end' }, date(points[points.length - 1].start)));
    }
  }

  function legend(chart, names, width, prefix) {
    names.forEach((name, i) => {
      const x = width - (names.length - i) * 64;
      chart.append(svg('rect', { x, y: 2, width: 10, height: 10, class: (prefix || 's') + i + ' key' }));
      chart.append(svg('text', { x: x + 14, y: 11, class: 'tick' }, name));
    });
  }

  function sparkline(counts) {
    const width = 120, height = 28;
    const max = Math.max(1, ...counts);
    const step = width / Math.max(1, counts.length - 1);
    const coordinates = counts.map((n, i) => `${(i * step).toFixed(1)},${(height - 2 - (n / max) * (height - 4)).toFixed(1)}`);
    const total = counts.reduce((sum, n) => sum + n, 0);
    return svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'spark', role: 'img', 'aria-label': number(total) + ' requests in 24 hours' },
      svg('polyline', { points: coordinates.join(' ') }));
  }

  async function overview() {
    const whose = me.role === 'admin' ? 'the whole service' : 'the keys of ' + me.owner;
    show(h('h1', {}, 'Overview'), h('p', { class: 'muted' }, 'Usage of ' + whose + '.'),
      usagePanel({}, 'Usage'));
  }

  /** The changes made through the console or the command line tool that the caller may see, newest first. */
  async function activity() {
    const trail = await api('GET', '/audit' + query({ limit: 200 }));
    show(h('h1', {}, 'Activity'),
      h('p', { class: 'muted' }, 'Keys created, changed, rotated, revoked and deleted through the console or the command line tool, and owners\' limits and credits set, newest first, on every replica (kept in the key store).'),
      h('div', { class: 'scroll' }, trailTable(trail.events, true)));
  }

  /** Changes from the audit trail, newest first; `withKey`: with the key and owner of each. */
  function trailTable(events, withKey) {
    const columns = withKey ? ['When', 'Action', 'Key', 'Owner', 'By', 'Detail'] : ['When', 'Action', 'By', 'Detail'];
    const table = h('table', { class: 'keys activity' }, h('caption', { class: 'visually-hidden' }, 'Changes'),
      h('thead', {}, h('tr', {}, ...columns.map((t) => h('th', { scope: 'col' }, t)))));
    const tbody = h('tbody');
    for (const event of events) {
      tbody.append(h('tr', {},
        h('td', { 'data-label': 'When' }, date(event.at)),
        h('td', { 'data-label': 'Action' }, h('span', { class: 'badge action ' + event.action }, event.action)),
        withKey ? h('td', { 'data-label': 'Key' }, event.key_id
          ? h('a', { href: '#/keys/' + encodeURIComponent(event.key_id) }, h('code', {}, event.key_id))
          : '—') : null,
        withKey ? h('td', { 'data-label': 'Owner' }, event.owner || '—') : null,
        h('td', { 'data-label': 'By' }, h('code', {}, event.actor)),
        h('td', { 'data-label': 'Detail' }, event.detail.join(', ') || '—')));
    }
    if (!events.length) tbody.append(h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, 'No changes yet.')));
    table.append(tbody);
    return table;
  }

  /** A key's changes, newest first, loaded after its page is shown. */
  function historyPanel(id) {
    const body = h('div', { class: 'scroll' }, notice('Loading its changes…'));
    api('GET', '/audit' + query({ key: id, limit: 50 }))
      .then((trail) => body.replaceChildren(trailTable(trail.events, false)))
      .catch((error) => body.replaceChildren(notice(error.message, 'error')));
    return h('section', { class: 'history', 'aria-labelledby': 'history-title' },
      h('h2', { id: 'history-title' }, 'Changes to this key'), body);
  }

  async function keysPage(params) {
    const filters = {
      name: params.get('name') || '', environment: params.get('environment') || '',
      state: params.get('state') || '', owner: params.get('owner') || '',
      older_than: params.get('older_than') || '',
      // Where nothing records last use every key would look unused: no such filter then.
      unused_for: me.last_use_recorded ? params.get('unused_for') || '' : '',
      expires_within: params.get('expires_within') || '',
      offset: Number(params.get('offset') || 0), limit: 25,
    };
    // Each key's last 24 hours come with the page: one request, not one per key.
    const page = await api('GET', '/keys' + query({ ...filters, requests_hours: me.usage ? 24 : '' }));
    const form = h('form', { class: 'filters', role: 'search', onsubmit: (event) => {
      event.preventDefault();
      const data = new FormData(event.target);
      location.hash = '#/keys' + query(Object.fromEntries(data.entries()));
    } },
      field('Name', h('input', { name: 'name', id: 'f-name', value: filters.name, type: 'search' })),
      field('Environment', select('environment', ['', 'live', 'test', 'dev'], filters.environment)),
      field('State', select('state', ['', 'active', 'disabled', 'expired', 'revoked'], filters.state)),
      field('Created', select('older_than', ['', '90d', '180d', '365d'], filters.older_than,
        ['Any time', 'Over 90 days ago', 'Over 180 days ago', 'Over a year ago'])),
      me.last_use_recorded ? field('Last used', select('unused_for', ['', '30d', '90d', '365d'], filters.unused_for,
        ['Any time', 'Not for 30 days', 'Not for 90 days', 'Not for a year'])) : null,
      field('Expires', select('expires_within', ['', '7d', '30d', '90d'], filters.expires_within,
        ['Any time', 'Within 7 days', 'Within 30 days', 'Within 90 days'])),
      me.role === 'admin' ? field('Owner', h('input', { name: 'owner', id: 'f-owner', value: filters.owner })) : null,
      h('button', { type: 'submit' }, 'Filter'));
    const table = h('table', { class: 'keys' }, h('caption', { class: 'visually-hidden' }, 'API keys'),
      h('thead', {}, h('tr', {}, ...['Name', 'Id', 'Environment', 'Scopes', 'State', 'Created', 'Last used', 'Expires', 'Requests, 24 h']
        .map((t) => h('th', { scope: 'col' }, t)))));
    const tbody = h('tbody');
    for (const key of page.keys) {
      const spark = h('td', { class: 'muted' },
        key.requests_by_hour ? sparkline(key.requests_by_hour) : '—');
      tbody.append(h('tr', {},
        h('td', { 'data-label': 'Name' }, h('a', { href: '#/keys/' + encodeURIComponent(key.id) }, key.name)),
        h('td', { 'data-label': 'Id' }, h('code', {}, key.id)),
        h('td', { 'data-label': 'Environment' }, key.environment),
        h('td', { 'data-label': 'Scopes' }, key.scopes.join(', ') || '—'),
        h('td', { 'data-label': 'State' }, badge(key.state)),
        h('td', { 'data-label': 'Created' }, date(key.created_at)),
        h('td', { 'data-label': 'Last used' }, lastUsed(key)),
        h('td', { 'data-label': 'Expires' }, date(key.expires_at)),
        spark));
    }
    if (!page.keys.length) tbody.append(h('tr', {}, h('td', { colspan: 9, class: 'muted' }, 'No keys match.')));
    table.append(tbody);
    const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' },
      h('span', {}, `${page.total ? page.offset + 1 : 0}–${page.offset + page.keys.length} of ${page.total}`),
      page.offset > 0 ? h('a', { href: '#/keys' + query({ ...filters, limit: '', offset: Math.max(0, page.offset - 25) }) }, 'Previous') : null,
      page.next_offset !== null ? h('a', { href: '#/keys' + query({ ...filters, limit: '', offset: page.next_offset }) }, 'Next') : null);
    show(h('div', { class: 'page-head' }, h('h1', {}, 'API keys'), h('a', { href: '#/new', class: 'button primary' }, 'Generate New API Key')),
      me.role === 'admin' && me.max_key_lifetime_secs !== null ? lifetimeNote(params) : null,
      form, me.last_use_recorded ? null : h('p', { class: 'muted', id: 'last-use-note' },
        'This service does not record when keys were last used (its layer has no StoreUsage sink), ' +
        'so keys cannot be found by it. Each key\'s page shows its requests.'),
      h('div', { class: 'scroll' }, table), pager);
  }

  /** For an admin, with a longest lifetime: how many keys in use outlive it (issued before it),
   *  the button that brings them within it, and what it did (the list is shown again, with
   *  their new expiries). */
  function lifetimeNote(params) {
    const span = lifetime(me.max_key_lifetime_secs);
    const standing = h('span', {}, '…');
    const status = h('span', { role: 'status', id: 'lifetime-status' });
    const apply = async () => {
      const ok = await confirmDialog('Bring every key within ' + span + '?',
        'Every key in use that expires later than ' + span + ' from now, or never, will expire ' + span +
        ' from now. Keys that expire sooner keep their expiry.', 'Bring them within ' + span);
      if (!ok) return;
      try {
        const applied = await api('POST', '/apply-lifetime');
        const n = applied.keys.length;
        const text = n ? n + (n === 1 ? ' key now expires ' : ' keys now expire ') + date(applied.expires_at) + '.'
          : 'No key in use outlives ' + span + '.';
        await keysPage(params);
        document.getElementById('lifetime-status').textContent = text;
      } catch (failure) {
        status.textContent = failure.message;
      }
    };
    api('GET', '/apply-lifetime').then((outliving) => {
      const n = outliving.keys.length;
      standing.replaceChildren(n === 0 ? 'Every key in use expires within it.'
        : (n === 1 ? '1 key in use expires' : n + ' keys in use expire') + ' later, or never (issued before that limit).',
      n === 0 ? '' : h('button', { type: 'button', id: 'apply-lifetime', onclick: apply }, 'Bring ' + (n === 1 ? 'it' : 'them') + ' within ' + span));
    }).catch((failure) => standing.replaceChildren(failure.message));
    return h('p', { class: 'lifetime muted', id: 'lifetime' }, 'Keys live at most ' + span + '.', standing, status);
  }

  function field(label, control) {
    const id = control.id || 'f-' + control.name;
    control.id = id;
    return h('div', { class: 'field' }, h('label', { for: id }, label), control);
  }

  function select(name, options, current, labels) {
    const element = h('select', { name, id: 'f-' + name });
    options.forEach((value, i) => element.append(h('option', { value, selected: value === current },
      (labels && labels[i]) || value || 'Any')));
    return element;
  }

  const PERMISSIONS = { read: 'Read — get recommendations', write: 'Write — submit tracking data', admin: 'Admin — manage offers and settings' };

  function scopeBoxes(chosen, title) {
    const set = h('fieldset', { class: 'scopes' }, h('legend', {}, title || 'Permissions'));
    for (const scope of me.grantable_scopes) {
      const id = 'scope-' + scope.replace(/[^a-z0-9]/gi, '-');
      set.append(h('div', { class: 'check' },
        h('input', { type: 'checkbox', name: 'scope', value: scope, id, checked: chosen.includes(scope) }),
        h('label', { for: id }, PERMISSIONS[scope] || scope)));
    }
    return set;
  }

  /** The expiries to choose from, for `select`: the values, the one chosen and their labels.
   *  First "never" (the value ''), or with a longest lifetime that lifetime, and none past it:
   *  on the new-key form as '' (a key asked without an expiry gets the longest), on a key's
   *  page as the duration itself. */
  function expiries(onKey) {
    const choices = [['7d', 7, 'In 7 days'], ['30d', 30, 'In 30 days'], ['90d', 90, 'In 90 days'], ['365d', 365, 'In a year']];
    const max = me.max_key_lifetime_secs;
    const within = max === null ? choices : choices.filter(([, days]) => days * 86400 < max);
    const [first, label] = max === null ? ['', 'Never']
      : [onKey ? max + 's' : '', 'At the longest (' + lifetime(max) + ')'];
    return [[first, ...within.map(([value]) => value)], first, [label, ...within.map(([, , text]) => text)]];
  }

  function chosenScopes(form) {
    return [...form.querySelectorAll('input[name="scope"]:checked')].map((box) => box.value);
  }

  function newKey() {
    const error = h('div', { 'aria-live': 'assertive' });
    const form = h('form', { class: 'card', id: 'create', onsubmit: async (event) => {
      event.preventDefault();
      error.replaceChildren();
      const data = new FormData(form);
      const body = { name: data.get('name'), scopes: chosenScopes(form), environment: data.get('environment') };
      if (data.get('expires_in')) body.expires_in = data.get('expires_in');
      if (data.get('plan')) body.plan = data.get('plan');
      if (data.get('owner')) body.owner = data.get('owner');
      try {
        const issued = await api('POST', '/keys', body);
        form.reset();
        shownOnce(issued, 'Your new API key');
      } catch (failure) {
        error.replaceChildren(notice(failure.message + (failure.code ? ' (' + failure.code + ')' : ''), 'error'));
      }
    } },
      h('h1', {}, 'Generate New API Key'),
      me.max_keys_per_owner === null ? null : h('p', { class: 'muted', id: 'key-limit' },
        (me.role === 'admin' ? 'Each owner may hold ' : 'You may hold ') + 'at most ' + me.max_keys_per_owner +
        ' keys in use (neither revoked nor expired): revoke or delete one to make room.'),
      me.max_key_lifetime_secs === null ? null : h('p', { class: 'muted', id: 'key-lifetime' },
        'Keys expire at most ' + lifetime(me.max_key_lifetime_secs) + ' after they are issued.'),
      error,
      field('Name', h('input', { name: 'name', id: 'new-name', required: true, maxlength: 128, placeholder: 'Production App', autocomplete: 'off' })),
      scopeBoxes(['read']),
      field('Environment', select('environment', me.role === 'admin' ? ['live', 'test', 'dev'] : [me.environment], me.environment,
        me.role === 'admin' ? ['Production (live)', 'Test (test)', 'Development (dev)'] : null)),
      field('Expires', select('expires_in', ...expiries(false))),
      me.role === 'admin' ? field('Plan', select('plan', ['', ...me.plans], '', ['No plan (the layer’s default limits)', ...me.plans])) : null,
      me.role === 'admin' ? field('Owner', h('input', { name: 'owner', id: 'new-owner', autocomplete: 'off', placeholder: 'optional' })) : null,
      h('button', { type: 'submit', class: 'primary', id: 'create-submit' }, 'Generate key'));
    show(form);
  }

  /** A key just issued: shown once, with a copy button, the export line and the warnings. */
  function shownOnce(issued, title) {
    const key = h('input', { id: 'new-key', readonly: true, value: issued.key, 'aria-label': 'The new API key', class: 'secret', spellcheck: 'false' });
    const copied = h('span', { role: 'status', class: 'muted' });
    const copy = h('button', { type: 'button', id: 'copy', onclick: async () => {
      key.select();
      try {
        await navigator.clipboard.writeText(key.value);
        copied.textContent = 'Copied.';
      } catch (_) {
        copied.textContent = 'Select the key and copy it (Ctrl+C).';
      }
    } }, 'Copy');
    const done = () => {
      key.value = '';
      location.hash = '#/keys/' + encodeURIComponent(issued.record.id);
    };
    show(h('section', { class: 'card once', 'aria-labelledby': 'once-title' },
      h('h1', { id: 'once-title' }, title),
      h('p', { class: 'warning', role: 'alert' }, h('strong', {}, 'Important: '),
        'Your API key will only be shown once. Make sure to copy and store it securely.'),
      h('div', { class: 'copy-row' }, key, copy), copied,
      h('p', {}, 'Keep it in an environment variable:'),
      h('pre', { id: 'export' }, issued.export),
      h('ul', { class: 'dos' },
        h('li', {}, 'Store it in a password manager or an environment variable.'),
        h('li', {}, 'Never commit API keys to version control, or share them in chat or email.'),
        h('li', {}, 'Don’t expose keys in client-side code.')),
      h('p', { class: 'muted' }, 'Key ', h('code', {}, issued.record.id), ' · ', issued.record.name),
      h('button', { type: 'button', class: 'primary', id: 'done', onclick: done }, 'I have copied it')));
    key.focus();
    key.select();
  }

  function confirmDialog(title, text, action) {
    const dialog = document.getElementById('confirm');
    document.getElementById('confirm-title').textContent = title;
    document.getElementById('confirm-text').textContent = text;
    const ok = document.getElementById('confirm-ok');
    ok.textContent = action;
    return new Promise((resolve) => {
      const finish = (answer) => () => {
        dialog.close();
        resolve(answer);
      };
      ok.onclick = finish(true);
      document.getElementById('confirm-cancel').onclick = finish(false);
      dialog.oncancel = finish(false);
      dialog.showModal();
      document.getElementById('confirm-cancel').focus();
    });
  }

  async function keyPage(id) {
    const key = await api('GET', '/keys/' + encodeURIComponent(id));
    const status = h('div', { 'aria-live': 'polite' });
    // The handler `fn` with what went wrong shown on the page; it gets the event (a form's
    // handler prevents the browser's own submission before its first await).
    const act = (fn) => async (...args) => {
      try {
        await fn(...args);
      } catch (failure) {
        status.replaceChildren(notice(failure.message, 'error'));
      }
    };
    const path = '/keys/' + encodeURIComponent(id);
    const grace = select('grace', ['24h', '1h', '7d', '0s'], '24h', ['Old key works 24 more hours', '1 more hour', '7 more days', 'Stops at once']);
    grace.setAttribute('aria-label', 'Grace period');
    const active = key.state === 'active';
    const actions = h('div', { class: 'actions' },
      !active ? null : h('div', { class: 'rotate' }, grace,
        h('button', { type: 'button', id: 'rotate', onclick: act(async () => {
          if (!await confirmDialog('Rotate this key?', `A new key with the same settings is issued; “${key.name}” keeps working for the grace period, then expires.`, 'Rotate')) return;
          const issued = await api('POST', path + '/rotate', { grace: grace.value });
          shownOnce(issued, 'The new key for ' + key.name);
        }) }, 'Rotate')),
      // Enabling a disabled key is an admin's decision.
      key.state === 'revoked' || (key.state === 'disabled' && me.role !== 'admin') ? null : h('button', { type: 'button', id: 'toggle', onclick: act(async () => {
        await api('PATCH', path, { disabled: key.state !== 'disabled' });
        await keyPage(id);
      }) }, key.state === 'disabled' ? 'Enable' : 'Disable'),
      key.state === 'revoked' ? null : h('button', { type: 'button', class: 'danger', id: 'revoke', onclick: act(async () => {
        if (!await confirmDialog('Revoke this key?', `“${key.name}” (${key.id}) will be refused from now on. This cannot be undone.`, 'Revoke')) return;
        await api('POST', path + '/revoke');
        await keyPage(id);
      }) }, 'Revoke'),
      h('button', { type: 'button', class: 'danger', id: 'delete', onclick: act(async () => {
        if (!await confirmDialog('Delete this key?', `“${key.name}” (${key.id}) will be removed from the store and refused from now on.`, 'Delete')) return;
        await api('DELETE', path);
        location.hash = '#/keys';
      }) }, 'Delete'));
    const scopes = h('form', { class: 'inline-form', onsubmit: act(async (event) => {
      event.preventDefault();
      await api('PATCH', path, { scopes: chosenScopes(scopes) });
      await keyPage(id);
    }) }, scopeBoxes(key.scopes, 'What this key may do'), h('button', { type: 'submit', id: 'save-scopes' }, 'Save permissions'));
    // Moving an expiry is an admin's decision; a revoked key's no longer matters.
    const expiry = me.role !== 'admin' || key.state === 'revoked' ? null : h('form', { class: 'inline-form', id: 'expiry', onsubmit: act(async (event) => {
      event.preventDefault();
      const chosen = new FormData(expiry).get('expiry');
      await api('PATCH', path, chosen ? { expires_in: chosen } : { expires_at: null });
      await keyPage(id);
    }) }, field('New expiry', select('expiry', ...expiries(true))), h('button', { type: 'submit', id: 'save-expiry' }, 'Set expiry'));
    const details = h('dl', { class: 'details' },
      ...[['Id', h('code', {}, key.id)], ['Key', h('code', {}, key.prefix)], ['State', badge(key.state)],
        ['Environment', key.environment], ['Owner', key.owner || '—'], ['Plan', key.plan || '—'],
        ['Scopes', key.scopes.join(', ') || '—'], ['Created', date(key.created_at)],
        ['Last used', lastUsed(key)], ['Expires', date(key.expires_at)],
        ['Allowed networks', key.allowed_networks.join(', ') || 'anywhere'],
        ...Object.entries(key.metadata).map(([name, value]) => [name, value])]
        .flatMap(([term, value]) => [h('dt', {}, term), h('dd', {}, value)]));
    show(h('p', {}, h('a', { href: '#/keys' }, '← All keys')),
      h('div', { class: 'page-head' }, h('h1', {}, key.name), badge(key.state)),
      key.state === 'disabled' && me.role !== 'admin'
        ? h('p', { class: 'muted', id: 'disabled-note' }, 'Disabled: refused until an admin enables it again.') : null,
      status, actions,
      h('div', { class: 'columns' }, h('section', { class: 'card' }, h('h2', {}, 'Details'), details, expiry),
        // A revoked key's permissions no longer matter: nothing to edit.
        key.state === 'revoked' ? null : h('section', { class: 'card' }, h('h2', {}, 'Permissions'), scopes)),
      usagePanel({ key: key.id }, 'Usage of this key', key.state === 'revoked'),
      historyPanel(key.id));
  }

  // ---- start --------------------------------------------------------------------------------

  document.getElementById('sign-out').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', route);
  if (sessionStorage.getItem(STORED)) {
    start().catch((error) => signOut(error.message));
  } else {
    signIn();
  }
})();
