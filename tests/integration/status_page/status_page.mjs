// The admin status page in a real browser: Debian's headless Chromium, driven by playwright-core. A host (the real
// `switchboard` binary) runs two Discord connections against two sandboxes; the page must load, show both connected
// with their channels, and — without a reload — show `backup` as finished once the test ends that connection.
// A screenshot of each state is saved as a test artifact.
//   node status_page.mjs SWITCHBOARD SANDBOX CHROMIUM ARTIFACT_DIR
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startSandbox, waitUntil } from './discord_sandbox.mjs';

const [switchboard, sandboxBinary, chromiumBinary, artifacts] = process.argv.slice(2);
if (!artifacts) throw new Error('usage: node status_page.mjs SWITCHBOARD SANDBOX CHROMIUM ARTIFACT_DIR');
mkdirSync(artifacts, { recursive: true });

const TOKEN = 'status-page-test-token';
const dir = mkdtempSync(join(tmpdir(), 'switchboard-status-page-'));
const sandboxes = [];
let host;
let browser;
let hostLog = '';

async function main() {
  const main = await startSandbox(sandboxBinary);
  sandboxes.push(main);
  const backup = await startSandbox(sandboxBinary);
  sandboxes.push(backup);
  writeFileSync(join(dir, 'switchboard.yaml'), [
    'switchboard:',
    '  admin: { listen: "127.0.0.1:0", token: "${SB_STATUS_PAGE_TOKEN}" }',
    'store: { plugin: memory }',
    'connections:',
    `  - { name: discord, plugin: discord, token: sandbox-token, api_base: "${main.url}/api/v10" }`,
    `  - { name: backup, plugin: discord, token: sandbox-token, api_base: "${backup.url}/api/v10" }`,
    'channels:',
    '  general: { connection: discord, id: "100" }',
    '  ops: { connection: backup, id: "101" }',
    'bots:',
    '  - { plugin: echo, channels: [general] }',
    '',
  ].join('\n'));

  host = spawn(switchboard, ['run', '-c', join(dir, 'switchboard.yaml')], {
    cwd: dir,
    env: { ...process.env, SB_STATUS_PAGE_TOKEN: TOKEN },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  host.stderr.on('data', (chunk) => { hostLog += chunk; });
  const port = await waitUntil(() => /admin: listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(hostLog)?.[1], 20000,
                               'the host to say where the admin server listens');
  const base = `http://127.0.0.1:${port}`;

  browser = await chromium.launch({
    executablePath: chromiumBinary,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const outside = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(base)) outside.push(request.url());
  });
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));

  // The token travels in the fragment, which the browser never sends to the server.
  await page.goto(`${base}/#token=${TOKEN}`);
  const row = (name) => page.locator(`#connections tr[data-connection="${name}"]`);
  await row('discord').and(page.locator('[data-state="connected"]')).waitFor({ timeout: 20000 });
  await row('backup').and(page.locator('[data-state="connected"]')).waitFor({ timeout: 20000 });
  await page.locator('#channels tr[data-channel="discord/100"]').waitFor({ timeout: 5000 });
  const channelText = await page.locator('#channels tr[data-channel="discord/100"]').innerText();
  if (!channelText.includes('general')) throw new Error(`the channel row says '${channelText}'`);
  if (await page.locator('#login').isVisible()) throw new Error('the token form shows although the token was accepted');
  await page.screenshot({ path: join(artifacts, 'status_page_connected.png'), fullPage: true });

  // A message through the bot shows as a delivery, still without a reload.
  await main.post('/messages', { channel_id: '100', content: 'ping' });
  await page.locator('#deliveries tbody tr td.status-delivered').first().waitFor({ timeout: 20000 });

  // The backup connection ends (token rejected): the page follows on its own.
  await backup.post('/gateway/close', { code: 4004 });
  await row('backup').and(page.locator('[data-state="finished"]')).waitFor({ timeout: 20000 });
  const stateText = await row('backup').locator('td.state').innerText();
  if (!stateText.startsWith('finished')) throw new Error(`the backup row says '${stateText}'`);
  await page.screenshot({ path: join(artifacts, 'status_page_finished.png'), fullPage: true });

  if (outside.length) throw new Error(`the page fetched from elsewhere: ${outside.join(', ')}`);
  if (errors.length) throw new Error(`the page threw: ${errors.join('; ')}`);
  console.log(`status page: connected → finished followed; screenshots in ${artifacts}`);
}

try {
  await main();
} catch (error) {
  console.error(error);
  console.error(`--- host log ---\n${hostLog}`);
  process.exitCode = 1;
} finally {
  await browser?.close().catch(() => {});
  if (host && host.exitCode === null) host.kill('SIGTERM');
  for (const sandbox of sandboxes) await sandbox.stop();
  rmSync(dir, { recursive: true, force: true });
}
