// Starts `switchboard-sandbox discord` on a free port for one test script, and always stops it: on stop(), on the
// script's exit, and (through --exit-with-parent) when node itself is killed.
import { startSandboxProcess, waitUntil, within } from './sandbox_process.mjs';

export { waitUntil, within };

export const TOKEN = 'sandbox-token';
export const BOT_ID = '1000';

export async function startSandbox(binary, args = []) {
  const sandbox = await startSandboxProcess(binary, 'discord', args);
  const { port, url } = sandbox;

  return {
    ...sandbox,
    gatewayUrl: `ws://127.0.0.1:${port}/?v=10&encoding=json`,
    /** A REST call as the bot: returns {status, headers, body} (body parsed when JSON). */
    async api(method, path, body, { token = TOKEN } = {}) {
      const response = await fetch(`${url}/api/v10${path}`, {
        method,
        headers: { authorization: `Bot ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await response.text();
      let parsed = text;
      try {
        parsed = text ? JSON.parse(text) : null;
      } catch {}
      return { status: response.status, headers: response.headers, body: parsed };
    },
  };
}
