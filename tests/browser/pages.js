// Drives Debian's Chromium through playwright-core over Custodian's pages, the way a person
// would: signs in with a token through the login form, loads each page, compares what a version
// page shows (badge state, reasons, the eval × model matrix) with the JSON API, saves a
// screenshot of each page, and fails on anything hostile content could have made happen: a
// dialog, a script error, a console error, a script element or event-handler attribute in the
// page, a link that is not http(s), a request that left the server, or a page without its
// Content-Security-Policy.
//
// Usage: node tests/browser/pages.js CONFIG.json
// CONFIG: {base, token?, out, pages: [{path, name, status?, literal?: [text], absent?: [text]}],
//          versions: [{name, version}]}
// Prints a JSON summary; exits 1 with every failure listed.

'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require(path.join(process.env.CUSTODIAN_NODE_MODULES, 'playwright-core'));

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const failures = [];
const fail = (where, what) => failures.push(`${where}: ${what}`);

async function main() {
  fs.mkdirSync(config.out, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CUSTODIAN_CHROMIUM || '/usr/bin/chromium',
    // Root in a container has no user namespaces for the sandbox.
    args: ['--no-sandbox'],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    let current = 'start';
    page.on('dialog', async (dialog) => {
      fail(current, `a dialog opened: ${dialog.type()} ${JSON.stringify(dialog.message())}`);
      await dialog.dismiss();
    });
    page.on('pageerror', (error) => fail(current, `a script error: ${error.message}`));
    // A page expected to answer an error status makes Chromium log that status for the page
    // itself; that one message is expected, nothing else is.
    let expectedFailure = null;
    page.on('console', (message) => {
      if (expectedFailure && message.location().url === expectedFailure && message.text().startsWith('Failed to load resource')) {
        return;
      }
      if (message.type() === 'error' || message.type() === 'warning') {
        fail(current, `console ${message.type()}: ${message.text()}`);
      }
    });
    page.on('request', (request) => {
      const url = request.url();
      if (!url.startsWith(config.base + '/') && url !== config.base) {
        fail(current, `a request left the server: ${url}`);
      }
    });

    if (config.token) {
      current = 'login';
      await page.goto(config.base + '/login');
      await page.fill('input[name="token"]', config.token);
      await Promise.all([page.waitForURL('**/packages'), page.click('form[action="/login"] button')]);
      const session = await page.textContent('header .session');
      if (!session.includes('signed in as')) fail('login', `the header says ${JSON.stringify(session)}`);
      const cookies = await context.cookies();
      const cookie = cookies.find((c) => c.name === 'custodian_token');
      if (!cookie || !cookie.httpOnly || cookie.sameSite !== 'Strict') {
        fail('login', `the token cookie is not HttpOnly and SameSite=Strict: ${JSON.stringify(cookie)}`);
      }
    }

    const visited = [];
    for (const spec of config.pages) {
      current = spec.path;
      const expected = spec.status || 200;
      expectedFailure = expected === 200 ? null : new URL(config.base + spec.path).href;
      const response = await page.goto(config.base + spec.path);
      const status = response.status();
      if (status !== expected) fail(spec.path, `status ${status}, expected ${expected}`);
      const headers = response.headers();
      const csp = headers['content-security-policy'] || '';
      if (!csp.includes("default-src 'none'") || csp.includes('unsafe-inline') || csp.includes('script-src')) {
        fail(spec.path, `no strict Content-Security-Policy: ${JSON.stringify(csp)}`);
      }
      if (headers['x-content-type-options'] !== 'nosniff') fail(spec.path, 'no X-Content-Type-Options: nosniff');
      const audit = await page.evaluate(() => {
        const all = [...document.querySelectorAll('*')];
        return {
          scripts: document.querySelectorAll('script').length,
          handlers: all.flatMap((e) => [...e.attributes].filter((a) => a.name.toLowerCase().startsWith('on')).map((a) => `${e.tagName}[${a.name}]`)),
          // An SVG link's href is not a string: read the attribute, resolved as the page does.
          links: [...document.querySelectorAll('a')]
            .map((a) => a.getAttribute('href') || a.getAttribute('xlink:href'))
            .filter((href) => href !== null)
            .map((href) => { try { return new URL(href, document.baseURI).href; } catch (e) { return `unparsable:${href}`; } }),
          frames: document.querySelectorAll('iframe, object, embed').length,
          text: document.body.innerText,
        };
      });
      if (audit.scripts) fail(spec.path, `${audit.scripts} script elements in the page`);
      if (audit.handlers.length) fail(spec.path, `event-handler attributes: ${audit.handlers.join(', ')}`);
      if (audit.frames) fail(spec.path, `${audit.frames} frames or embedded objects`);
      for (const link of audit.links) {
        const protocol = new URL(link).protocol;
        if (protocol !== 'http:' && protocol !== 'https:') fail(spec.path, `a ${protocol} link: ${link}`);
      }
      for (const hidden of spec.absent || []) {
        if (audit.text.includes(hidden)) fail(spec.path, `the page shows ${JSON.stringify(hidden)}`);
      }
      for (const literal of spec.literal || []) {
        if (!audit.text.includes(literal)) fail(spec.path, `the text ${JSON.stringify(literal)} is not shown as text`);
      }
      await page.screenshot({ path: path.join(config.out, `${spec.name}.png`), fullPage: true });
      visited.push({ path: spec.path, status, links: audit.links.length });
    }

    // Each version page says what the JSON API says.
    const authorization = config.token ? { Authorization: `Bearer ${config.token}` } : {};
    const compared = [];
    for (const { name, version } of config.versions || []) {
      const where = `${name}@${version}`;
      current = where;
      const api = `${config.base}/wrappers/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`;
      const badge = await (await context.request.get(`${api}/badge`, { headers: authorization })).json();
      const report = await (await context.request.get(`${api}/report`, { headers: authorization })).json();
      await page.goto(`${config.base}/packages/${encodeURIComponent(name)}/${encodeURIComponent(version)}`);
      const shown = await page.evaluate(() => ({
        state: document.querySelector('.badge').dataset.state,
        visible: document.querySelector('.badge .state').innerText,
        reasons: [...document.querySelectorAll('#reasons li.reason')].map((li) => li.dataset.code),
        cells: [...document.querySelectorAll('table.matrix tr[data-eval]')].flatMap((tr) =>
          [...tr.querySelectorAll('td[data-model]')].map((td) => ({
            eval: tr.dataset.eval,
            model: td.dataset.model,
            result: td.dataset.result,
            entry: td.dataset.entry === undefined ? null : Number(td.dataset.entry),
          }))),
      }));
      if (shown.state !== badge.state) fail(where, `the page shows ${shown.state}, the API says ${badge.state}`);
      if (shown.visible !== badge.state) fail(where, `the visible state is ${JSON.stringify(shown.visible)}`);
      const codes = (badge.reasons || []).map((r) => r.code);
      if (JSON.stringify(shown.reasons) !== JSON.stringify(codes)) {
        fail(where, `reasons ${JSON.stringify(shown.reasons)} on the page, ${JSON.stringify(codes)} from the API`);
      }
      if (shown.cells.length !== report.rows.length) {
        fail(where, `${shown.cells.length} matrix cells, ${report.rows.length} report rows`);
      }
      for (const row of report.rows) {
        const cell = shown.cells.find((c) => c.eval === row.eval_id && c.model === row.model);
        const result = row.latest ? (row.latest.passed ? 'passed' : 'failed') : 'missing';
        const entry = row.latest ? row.latest.ledger_index : null;
        if (!cell) fail(where, `no cell for ${row.eval_id} × ${row.model}`);
        else if (cell.result !== result || cell.entry !== entry) {
          fail(where, `${row.eval_id} × ${row.model}: the page shows ${cell.result} (entry ${cell.entry}), the API ${result} (entry ${entry})`);
        }
      }
      compared.push({ version: where, state: badge.state, reasons: codes.length, cells: shown.cells.length });
    }
    console.log(JSON.stringify({ visited, compared, failures }, null, 2));
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(failures.length ? 1 : 0),
  (error) => {
    console.error(error);
    process.exit(2);
  },
);
