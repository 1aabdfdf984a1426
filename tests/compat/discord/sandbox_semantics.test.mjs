// The sandbox's own semantics that the Switchboard Discord connector relies on, checked with plain fetch and ws:
// history paging, nonce idempotency, 429s and their headers, gateway resume replay, close codes, zombie sockets.
//   SWITCHBOARD_SANDBOX=path/to/switchboard-sandbox node --test sandbox_semantics.test.mjs
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import { BOT_ID, TOKEN, startSandbox, waitUntil, within } from './sandbox.mjs';

const ALL_INTENTS = 1 | (1 << 9) | (1 << 12) | (1 << 15);
let sandbox;

before(async () => {
  sandbox = await startSandbox(process.env.SWITCHBOARD_SANDBOX, [
    '--route-limit', '1000', '--route-window', '1', '--global-rate', '1000', '--heartbeat-interval', '60000',
  ]);
});
after(async () => sandbox?.stop());

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const descending = (ids) => ids.every((id, i) => i === 0 || BigInt(ids[i - 1]) > BigInt(id));

/** A raw gateway connection that records every frame it receives. */
class Gateway {
  static async open(url = sandbox.gatewayUrl) {
    const gateway = new Gateway(url);
    await within(new Promise((resolve, reject) => {
      gateway.ws.once('open', resolve);
      gateway.ws.once('error', reject);
    }), 5000, 'the WebSocket to open');
    await gateway.next((f) => f.op === 10, 'Hello');
    return gateway;
  }
  constructor(url) {
    this.frames = [];
    this.ws = new WebSocket(url);
    this.ws.on('message', (data) => this.frames.push(JSON.parse(data.toString())));
    this.ws.on('error', () => {});
    this.closed = new Promise((resolve) => this.ws.on('close', (code, reason) => resolve({ code, reason: `${reason}` })));
  }
  send(payload) {
    this.ws.send(typeof payload === 'string' ? payload : JSON.stringify(payload));
  }
  next(predicate, what, ms = 5000) {
    return waitUntil(() => this.frames.find(predicate), ms, what);
  }
  get lastSeq() {
    return this.frames.reduce((seq, f) => (f.s ?? seq), null);
  }
  dispatches(type) {
    return this.frames.filter((f) => f.op === 0 && (!type || f.t === type));
  }
  async identify(intents = ALL_INTENTS) {
    this.send({ op: 2, d: { token: TOKEN, intents, properties: { os: 'linux', browser: 'test', device: 'test' } } });
    const ready = await this.next((f) => f.t === 'READY', 'READY');
    await this.next((f) => f.t === 'GUILD_CREATE', 'GUILD_CREATE');
    return ready.d;
  }
}

const post = (channel_id, content, extra = {}) =>
  sandbox.post('/messages', { channel_id, author_id: '2001', content, ...extra });

test('history is newest-first and pages through a 2,000-message burst with after, before and around', async () => {
  const burst = await sandbox.post('/messages', { channel_id: '102', count: 2000, content_prefix: 'burst ' });
  assert.equal(burst.count, 2000);
  assert.ok(descending([...burst.ids].reverse()), 'bulk ids increase');

  const seen = [];
  let cursor = '0';
  for (let page = 0; page < 30; page++) {
    const { status, body } = await sandbox.api('GET', `/channels/102/messages?after=${cursor}&limit=100`);
    assert.equal(status, 200);
    assert.ok(descending(body.map((m) => m.id)), 'every page is newest-first');
    seen.push(...[...body].reverse());
    if (body.length < 100) break;
    cursor = body[0].id;  // the newest of the page
  }
  assert.deepEqual(seen.map((m) => m.id), burst.ids, 'after= paging returns every message once, in order');
  assert.equal(seen[0].content, 'burst 1');

  const latest = await sandbox.api('GET', '/channels/102/messages');
  assert.equal(latest.body.length, 50, 'default limit 50');
  assert.equal(latest.body[0].id, burst.last_id);

  const older = await sandbox.api('GET', `/channels/102/messages?before=${burst.ids[1000]}&limit=100`);
  assert.deepEqual(older.body.map((m) => m.id), burst.ids.slice(900, 1000).reverse());

  const around = await sandbox.api('GET', `/channels/102/messages?around=${burst.ids[500]}&limit=10`);
  assert.deepEqual(around.body.map((m) => m.id), burst.ids.slice(495, 505).reverse());

  for (const bad of ['limit=0', 'limit=101', 'after=abc']) {
    const { status, body } = await sandbox.api('GET', `/channels/102/messages?${bad}`);
    assert.equal(status, 400, bad);
    assert.equal(body.code, 50035);
  }
  const unknown = await sandbox.api('GET', '/channels/999/messages');
  assert.deepEqual([unknown.status, unknown.body], [404, { message: 'Unknown Channel', code: 10003 }]);
});

test('a message posted with an age gets a matching timestamp and snowflake and sorts into history', async () => {
  const twentyDays = 20 * 24 * 3600 * 1000;
  const old = await sandbox.post('/messages', { channel_id: '101', content: 'ancient', age_ms: twentyDays, dispatch: false });
  const ms = Number((BigInt(old.id) >> 22n) + 1420070400000n);
  assert.ok(Math.abs(Date.now() - twentyDays - ms) < 5000, 'the snowflake encodes the age');
  assert.equal(Date.parse(old.timestamp), ms);
  const oldest = await sandbox.api('GET', '/channels/101/messages?after=0&limit=1');
  assert.equal(oldest.body[0].id, old.id);
});

test('POST messages returns a full message object, and enforce_nonce makes a resend return the first', async () => {
  const first = await sandbox.api('POST', '/channels/100/messages', { content: 'once', nonce: 'n-1', enforce_nonce: true });
  assert.equal(first.status, 200);
  for (const field of ['id', 'channel_id', 'author', 'content', 'timestamp', 'type', 'attachments', 'embeds',
    'mentions', 'mention_roles', 'pinned', 'mention_everyone', 'tts', 'nonce'])
    assert.ok(field in first.body, `message has ${field}`);
  assert.equal(first.body.author.id, BOT_ID);
  assert.equal(first.body.author.bot, true);
  assert.equal(first.body.type, 0);
  assert.equal(first.body.nonce, 'n-1');

  const again = await sandbox.api('POST', '/channels/100/messages', { content: 'once', nonce: 'n-1', enforce_nonce: true });
  assert.equal(again.body.id, first.body.id, 'the resend returns the existing message');
  const loose = await sandbox.api('POST', '/channels/100/messages', { content: 'twice', nonce: 'n-2' });
  const loose2 = await sandbox.api('POST', '/channels/100/messages', { content: 'twice', nonce: 'n-2' });
  assert.notEqual(loose.body.id, loose2.body.id, 'without enforce_nonce a nonce does not deduplicate');

  const sent = await sandbox.get('/sent?channel_id=100');
  assert.equal(sent.messages.filter((m) => m.nonce === 'n-1').length, 1, 'one message was created');
  assert.ok((await sandbox.get('/stats?log=0')).nonce_reuses >= 1);

  const deleted = await sandbox.api('DELETE', `/channels/100/messages/${loose2.body.id}`);
  assert.equal(deleted.status, 204);
  assert.ok((await sandbox.get('/sent?channel_id=100')).deleted.some((d) => d.message_id === loose2.body.id));
  assert.equal((await sandbox.api('DELETE', `/channels/100/messages/${loose2.body.id}`)).status, 404);

  const bad = await sandbox.api('GET', '/users/@me', undefined, { token: 'wrong' });
  assert.equal(bad.status, 401);
  assert.ok((await sandbox.get('/stats?log=0')).invalid_requests >= 1, '401 counts as invalid');
});

test('a route bucket answers 429 with Discord\'s headers, per channel, and logs requests sent while told to wait', async () => {
  const route = 'POST /channels/{channel.id}/messages';
  await sandbox.post('/config', { routes: { [route]: { limit: 2, window_ms: 3000 } } });
  try {
    const send = (channel) => sandbox.api('POST', `/channels/${channel}/messages`, { content: 'rl' });
    const first = await send('101');
    assert.equal(first.status, 200);
    assert.equal(first.headers.get('x-ratelimit-limit'), '2');
    assert.equal(first.headers.get('x-ratelimit-remaining'), '1');
    assert.ok(Number(first.headers.get('x-ratelimit-reset-after')) > 2.0);
    assert.ok(Math.abs(Number(first.headers.get('x-ratelimit-reset')) * 1000 - Date.now() - 3000) < 1000);
    assert.match(first.headers.get('x-ratelimit-bucket'), /^[0-9a-f]+$/);
    const second = await send('101');
    assert.equal(second.headers.get('x-ratelimit-remaining'), '0');

    const limited = await send('101');
    assert.equal(limited.status, 429);
    assert.equal(limited.body.global, false);
    assert.ok(limited.body.retry_after > 0 && limited.body.retry_after <= 3);
    assert.ok(Number(limited.headers.get('retry-after')) >= 1);
    assert.equal(limited.headers.get('x-ratelimit-scope'), 'user');
    assert.equal(limited.headers.get('x-ratelimit-global'), null);

    assert.equal((await send('102')).status, 200, 'another channel has its own bucket');

    const { request_log: log } = await sandbox.get('/stats');
    const ours = log.filter((r) => r.route === route).slice(-4);
    assert.deepEqual(ours.map((r) => r.said_wait), [false, false, true, false]);

    await sleep(Number(second.headers.get('x-ratelimit-reset-after')) * 1000 + 50);
    const later = await send('101');
    assert.equal(later.status, 200, 'the bucket resets');
    assert.equal((await sandbox.get('/stats')).request_log.at(-1).said_wait, false);
  } finally {
    await sandbox.post('/config', { routes: { [route]: null } });
  }
});

test('the global limit, 429 storms and slow responses', async () => {
  await sandbox.post('/config', { global_rate: 3 });
  try {
    const statuses = [];
    let global;
    for (let i = 0; i < 8 && !global; i++) {
      const response = await sandbox.api('GET', '/users/@me');
      statuses.push(response.status);
      if (response.status === 429) global = response;
    }
    assert.ok(global, `a 4th request within a second is limited (${statuses})`);
    assert.equal(global.headers.get('x-ratelimit-global'), 'true');
    assert.equal(global.body.global, true);
  } finally {
    await sandbox.post('/config', { global_rate: 1000 });
  }

  const before = await sandbox.get('/stats?log=0');
  await sandbox.post('/rest/storm', { count: 2, retry_after: 0.2, route: 'GET /channels/{channel.id}' });
  const storm = [];
  for (let i = 0; i < 3; i++) {
    storm.push((await sandbox.api('GET', '/channels/100')).status);
    await sleep(220);
  }
  assert.deepEqual(storm, [429, 429, 200]);
  const afterStorm = await sandbox.get('/stats?log=0');
  assert.equal(afterStorm.rate_limited - before.rate_limited, 2);
  assert.equal(afterStorm.requests_while_told_to_wait, before.requests_while_told_to_wait, 'we waited each time');

  await sandbox.post('/rest/delay', { delay_ms: 300, count: 1 });
  const started = Date.now();
  assert.equal((await sandbox.api('GET', '/channels/100')).status, 200);
  assert.ok(Date.now() - started >= 280, 'the response was delayed');
});

test('Identify gives READY and GUILD_CREATE; MESSAGE_CREATE carries guild_id, member and increasing seq; edits and deletes dispatch', async () => {
  const gateway = await Gateway.open();
  const ready = await gateway.identify();
  assert.equal(ready.v, 10);
  assert.equal(ready.user.id, BOT_ID);
  assert.match(ready.resume_gateway_url, /^ws:\/\/127\.0\.0\.1:\d+\/$/);
  assert.ok(ready.session_id && ready.application.id);
  const guild = gateway.dispatches('GUILD_CREATE')[0].d;
  assert.deepEqual(guild.channels.map((c) => c.id), ['100', '101', '102']);

  await post('100', 'seq one');
  await post('100', 'seq two');
  await sandbox.post('/messages', { dm: true, author_id: '2002', content: 'a dm' });
  await gateway.next((f) => f.d?.content === 'a dm', 'the DM');
  const messages = gateway.dispatches('MESSAGE_CREATE');
  const [one, two, dm] = messages.slice(-3);
  assert.equal(one.d.guild_id, '1');
  assert.ok(one.d.member);
  assert.ok(two.s === one.s + 1 && dm.s === two.s + 1);
  assert.equal(dm.d.guild_id, undefined);
  gateway.send({ op: 1, d: gateway.lastSeq });
  await gateway.next((f) => f.op === 11, 'Heartbeat ACK');

  await sandbox.post('/messages/edit', { channel_id: '100', message_id: one.d.id, content: 'seq one, edited' });
  const update = await gateway.next((f) => f.t === 'MESSAGE_UPDATE', 'MESSAGE_UPDATE');
  assert.equal(update.d.content, 'seq one, edited');
  assert.ok(update.d.edited_timestamp);
  await sandbox.post('/messages/delete', { channel_id: '100', message_id: two.d.id });
  const deletion = await gateway.next((f) => f.t === 'MESSAGE_DELETE', 'MESSAGE_DELETE');
  assert.deepEqual(deletion.d, { id: two.d.id, channel_id: '100', guild_id: '1' });
  assert.equal((await sandbox.api('GET', `/channels/100/messages/${two.d.id}`)).status, 404);
  assert.equal((await sandbox.api('GET', `/channels/100/messages/${one.d.id}`)).body.content, 'seq one, edited');
  gateway.ws.close(1000);
  await gateway.closed;
});

test('without MESSAGE_CONTENT, guild messages arrive empty unless they mention the bot', async () => {
  const gateway = await Gateway.open();
  await gateway.identify(1 | (1 << 9) | (1 << 12));
  await post('100', 'secret');
  await post('100', `hey <@${BOT_ID}> look`);
  await sandbox.post('/messages', { dm: true, author_id: '2001', content: 'dm text' });
  await gateway.next((f) => f.d?.content === 'dm text', 'the DM with content');
  const [plain, mention] = gateway.dispatches('MESSAGE_CREATE').slice(-3);
  assert.equal(plain.d.content, '');
  assert.equal(mention.d.content, `hey <@${BOT_ID}> look`);
  gateway.ws.close(1000);
  await gateway.closed;
});

test('Resume replays every missed dispatch in order, then RESUMED; refused sessions get op 9 false', async () => {
  const before = await sandbox.get('/stats?log=0');
  const gateway = await Gateway.open();
  const { session_id } = await gateway.identify();
  await post('101', 'seen live');
  await gateway.next((f) => f.d?.content === 'seen live', 'the live message');
  const seq = gateway.lastSeq;
  await sandbox.post('/gateway/drop');  // no close frame: the session stays resumable
  assert.equal((await gateway.closed).code, 1006);
  for (const text of ['missed 1', 'missed 2', 'missed 3']) await post('101', text);

  const again = await Gateway.open();
  again.send({ op: 6, d: { token: TOKEN, session_id, seq } });
  const resumed = await again.next((f) => f.t === 'RESUMED', 'RESUMED');
  const replay = again.dispatches();
  assert.deepEqual(replay.map((f) => f.d?.content ?? f.t), ['missed 1', 'missed 2', 'missed 3', 'RESUMED']);
  assert.deepEqual(replay.map((f) => f.s), [seq + 1, seq + 2, seq + 3, seq + 4]);
  assert.ok(resumed);
  await post('101', 'live again');
  await again.next((f) => f.d?.content === 'live again', 'a live message after the resume');
  const stats = await sandbox.get('/stats?log=0');
  assert.equal(stats.resumes - before.resumes, 1);
  assert.equal(stats.identifies - before.identifies, 1);

  again.ws.close(1000);  // a clean close ends the session
  await again.closed;
  const third = await Gateway.open();
  third.send({ op: 6, d: { token: TOKEN, session_id, seq: seq + 5 } });
  const refused = await third.next((f) => f.op === 9, 'Invalid Session');
  assert.equal(refused.d, false);
  third.ws.close(1000);
});

test('op 7 and op 9 faults reach the client, and invalidated sessions cannot resume', async () => {
  const gateway = await Gateway.open();
  const { session_id } = await gateway.identify();
  await sandbox.post('/gateway/reconnect');
  await gateway.next((f) => f.op === 7, 'Reconnect');
  await sandbox.post('/gateway/invalid_session', { resumable: true });
  assert.equal((await gateway.next((f) => f.op === 9, 'Invalid Session')).d, true);
  gateway.ws.close(4000);
  await gateway.closed;
  await sandbox.post('/gateway/invalidate_sessions');
  const again = await Gateway.open();
  again.send({ op: 6, d: { token: TOKEN, session_id, seq: 1 } });
  assert.equal((await again.next((f) => f.op === 9, 'Invalid Session')).d, false);
  again.ws.close(1000);
});

test('close codes: 4002 oversized payload, 4001 unknown op, 4003 before Identify, 4004 bad token, custom close', async () => {
  const cases = [
    [JSON.stringify({ op: 1, d: 'x'.repeat(5000) }), 4002],
    [{ op: 99, d: null }, 4001],
    [{ op: 3, d: { status: 'online' } }, 4003],
    [{ op: 2, d: { token: 'wrong', intents: 1, properties: {} } }, 4004],
  ];
  for (const [payload, code] of cases) {
    const gateway = await Gateway.open();
    gateway.send(payload);
    assert.equal((await within(gateway.closed, 5000, `close ${code}`)).code, code);
  }
  const gateway = await Gateway.open();
  await gateway.identify();
  await sandbox.post('/gateway/close', { code: 4009 });
  assert.equal((await within(gateway.closed, 5000, 'close 4009')).code, 4009);
});

test('with heartbeat ACKs off the socket stays open and silent, and wakes up with what it missed', async () => {
  const gateway = await Gateway.open();
  await gateway.identify();
  await sandbox.post('/gateway/heartbeat_acks', { enabled: false });
  const count = gateway.frames.length;
  gateway.send({ op: 1, d: gateway.lastSeq });
  await post('102', 'while silent');
  await sleep(400);
  assert.equal(gateway.frames.length, count, 'no ACK, no dispatch');
  assert.equal(gateway.ws.readyState, WebSocket.OPEN, 'no close either');
  await sandbox.post('/gateway/heartbeat_acks', { enabled: true });
  await gateway.next((f) => f.d?.content === 'while silent', 'the buffered dispatch');
  gateway.send({ op: 1, d: gateway.lastSeq });
  await gateway.next((f, i) => f.op === 11 && i >= count, 'an ACK again');
  gateway.ws.close(1000);
  await gateway.closed;
});
