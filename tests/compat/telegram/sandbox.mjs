// Starts `switchboard-sandbox telegram` on a free port for one test script, and always stops it: on stop(), on the
// script's exit, and (through --exit-with-parent) when node itself is killed.
import { startSandboxProcess, waitUntil, within } from './sandbox_process.mjs';

export { waitUntil, within };

export const TOKEN = '1000:sandbox-token';
export const BOT_ID = 1000;
export const ALICE = 2001;
export const BOB = 2002;
export const GROUP = -100;
export const SUPERGROUP = -1001000000001;

export async function startSandbox(binary, args = []) {
  const sandbox = await startSandboxProcess(binary, 'telegram', args);
  const { url } = sandbox;

  return {
    ...sandbox,
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
  };
}
