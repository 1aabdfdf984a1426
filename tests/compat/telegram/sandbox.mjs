// Starts `switchboard-sandbox telegram` on a free port for one test script, and always stops it: on stop(), on the
// script's exit, and (through --exit-with-parent) when node itself is killed.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

export const TOKEN = '1000:sandbox-token';
export const BOT_ID = 1000;
export const ALICE = 2001;
export const BOB = 2002;
export const GROUP = -100;
export const SUPERGROUP = -1001000000001;

/** Rejects with a message naming @p what when @p promise takes longer than @p ms. */
export function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls @p check (sync or async) until it returns a truthy value, which it returns; fails after @p ms. */
export async function waitUntil(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export async function startSandbox(binary, args = []) {
  if (!binary) throw new Error('usage: pass the switchboard-sandbox binary (argument or SWITCHBOARD_SANDBOX)');
  const child = spawn(binary, ['telegram', '--port', '0', '--exit-with-parent', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  };
  process.on('exit', kill);
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const line = await within(
    new Promise((resolve, reject) => {
      createInterface({ input: child.stdout }).once('line', resolve);
      child.once('error', reject);
      exited.then(({ code }) => reject(new Error(`switchboard-sandbox exited (${code}) before listening`)));
    }),
    15000,
    'switchboard-sandbox to print its port',
  );
  const { port, url } = JSON.parse(line);

  async function control(method, path, body) {
    const response = await fetch(`${url}/_sandbox${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} /_sandbox${path} -> ${response.status} ${text}`);
    return JSON.parse(text);
  }

  return {
    port,
    url,
    get: (path) => control('GET', path),
    post: (path, body = {}) => control('POST', path, body),
    /**
     * A Bot API call as the bot: POSTs @p params as JSON (or as a form with { form: true }, or in the query string
     * with { query: true }); returns {status, body} with the body parsed. { signal } aborts it.
     */
    async bot(method, params = {}, { token = TOKEN, form = false, query = false, signal } = {}) {
      let target = `${url}/bot${token}/${method}`;
      const init = { method: 'POST', signal, headers: {} };
      const encoded = new URLSearchParams(
        Object.entries(params).map(([k, v]) => [k, typeof v === 'object' ? JSON.stringify(v) : String(v)]),
      );
      if (query) {
        target += `?${encoded}`;
        init.method = 'GET';
      } else if (form) {
        init.headers['content-type'] = 'application/x-www-form-urlencoded';
        init.body = encoded.toString();
      } else {
        init.headers['content-type'] = 'application/json';
        init.body = JSON.stringify(params);
      }
      const response = await fetch(target, init);
      const text = await response.text();
      let body = text;
      try {
        body = text ? JSON.parse(text) : null;
      } catch {}
      return { status: response.status, body };
    },
    async stop() {
      kill();
      await within(exited, 10000, 'switchboard-sandbox to exit after SIGTERM').catch(() => child.kill('SIGKILL'));
    },
  };
}
