// `switchboard-sandbox PLATFORM` for one node test script: started on a free port and always stopped — on stop(), on
// the script's exit, and (through --exit-with-parent) when node itself is killed. tests/compat/*/sandbox.mjs add what
// is particular to their platform. CMake copies this file beside the scripts that import it.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

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

/**
 * Starts `@p binary @p platform --port 0 ...@p args`; resolves to {port, url, get, post, stop}: get/post are calls
 * to its /_sandbox/ control API (JSON; they throw on a status other than 2xx).
 */
export async function startSandboxProcess(binary, platform, args = []) {
  if (!binary) throw new Error('usage: pass the switchboard-sandbox binary (argument or SWITCHBOARD_SANDBOX)');
  const child = spawn(binary, [platform, '--port', '0', '--exit-with-parent', ...args], {
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
    async stop() {
      kill();
      await within(exited, 10000, 'switchboard-sandbox to exit after SIGTERM').catch(() => child.kill('SIGKILL'));
    },
  };
}
