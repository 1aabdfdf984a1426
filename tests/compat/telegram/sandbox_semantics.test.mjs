// The sandbox's own Bot API semantics that the Switchboard Telegram connector relies on, checked with plain fetch:
// the envelope, getUpdates offsets and long polls, 409 on a second poller, the 24 h expiry on the sandbox clock, send
// limits with retry_after, blocked users, faults, bulk posts and text limits.
//   SWITCHBOARD_SANDBOX=path/to/switchboard-sandbox node --test sandbox_semantics.test.mjs
import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { ALICE, BOB, BOT_ID, GROUP, SUPERGROUP, TOKEN, startSandbox, waitUntil, within } from './sandbox.mjs';

const HOUR = 3600 * 1000;
const CONFLICT = 'Conflict: terminated by other getUpdates request; make sure that only one bot instance is running';
let sandbox;

before(async () => {
  sandbox = await startSandbox(process.env.SWITCHBOARD_SANDBOX);
});
after(async () => sandbox?.stop());

// Every test starts with no pending update, no fault and no send limit (the limits test sets its own).
beforeEach(async () => {
  await sandbox.post('/faults/clear');
  await sandbox.post('/config', { chat_rate: 0, group_per_minute: 0, global_rate: 0 });
  const { next_update_id } = await sandbox.get('/updates');
  const { status } = await sandbox.bot('getUpdates', { offset: next_update_id, timeout: 0 });
  assert.equal(status, 200);
});

const post = (chat_id, text, extra = {}) =>
  sandbox.post('/messages', { chat_id, from: chat_id > 0 ? chat_id : ALICE, text, ...extra });
const getUpdates = async (params = {}, options = {}) => {
  const { status, body } = await sandbox.bot('getUpdates', { timeout: 0, ...params }, options);
  assert.equal(status, 200, JSON.stringify(body));
  return body.result;
};
const ids = (updates) => updates.map((u) => u.update_id);
const stats = () => sandbox.get('/stats?log=0');

test('the envelope: ok/result, 401 for a wrong token, 404 for an unknown method, any encoding, any case', async () => {
  const me = await sandbox.bot('getMe');
  assert.equal(me.status, 200);
  assert.deepEqual(
    { ok: me.body.ok, id: me.body.result.id, is_bot: me.body.result.is_bot, username: me.body.result.username },
    { ok: true, id: BOT_ID, is_bot: true, username: 'switchboard_bot' },
  );
  assert.equal(me.body.result.first_name, 'Switchboard');

  const wrong = await sandbox.bot('getMe', {}, { token: '1000:wrong' });
  assert.equal(wrong.status, 401);
  assert.deepEqual(wrong.body, { ok: false, error_code: 401, description: 'Unauthorized' });
  const unknown = await sandbox.bot('sendPigeon');
  assert.equal(unknown.status, 404);
  assert.deepEqual(unknown.body, { ok: false, error_code: 404, description: 'Not Found' });
  assert.equal((await sandbox.bot('GETME')).status, 200, 'method names are case-insensitive');

  for (const encoding of [{}, { form: true }, { query: true }]) {
    const chat = await sandbox.bot('getChat', { chat_id: GROUP }, encoding);
    assert.equal(chat.status, 200, JSON.stringify(encoding));
    assert.equal(chat.body.result.title, 'Sandbox group');
    assert.equal(chat.body.result.type, 'group');
  }
  const supergroup = await sandbox.bot('getChat', { chat_id: '@sandbox_supergroup' });
  assert.equal(supergroup.body.result.id, SUPERGROUP);
  assert.equal(supergroup.body.result.type, 'supergroup');
  const alice = await sandbox.bot('getChat', { chat_id: String(ALICE) }, { form: true });
  assert.deepEqual([alice.body.result.type, alice.body.result.first_name], ['private', 'Alice']);
  const missing = await sandbox.bot('getChat', { chat_id: 424242 });
  assert.equal(missing.status, 400);
  assert.deepEqual(missing.body, { ok: false, error_code: 400, description: 'Bad Request: chat not found' });
  assert.equal((await sandbox.bot('deleteWebhook')).body.result, true);
  assert.equal((await sandbox.bot('setMyCommands', { commands: [{ command: 'echo', description: 'e' }] })).body.result,
    true);
});

test('an offset confirms and forgets every update below it; none gives the earliest; -N keeps the last N', async () => {
  const posted = await sandbox.post('/messages', { chat_id: GROUP, from: BOB, count: 5, text_prefix: 'o' });
  const u = posted.update_ids;
  assert.deepEqual(u, [0, 1, 2, 3, 4].map((i) => u[0] + i), 'update ids are sequential');
  assert.deepEqual(posted.message_ids, [0, 1, 2, 3, 4].map((i) => posted.message_ids[0] + i));

  assert.deepEqual(ids(await getUpdates({ limit: 2 })), u.slice(0, 2));
  assert.deepEqual(ids(await getUpdates({ limit: 2 })), u.slice(0, 2), 'not confirmed without an offset');
  const rest = await getUpdates({ offset: u[2] });
  assert.deepEqual(ids(rest), u.slice(2));
  assert.deepEqual(rest.map((x) => x.message.text), ['o2', 'o3', 'o4']);
  assert.equal(rest[0].message.from.id, BOB);
  assert.equal(rest[0].message.chat.id, GROUP);
  let state = await sandbox.get('/updates');
  assert.deepEqual(state.pending, u.slice(2));
  assert.equal(state.confirmed_offset, u[2]);
  assert.equal(state.next_update_id, u[4] + 1);

  assert.deepEqual(ids(await getUpdates({ offset: -1 })), [u[4]], '-1 is the last update');
  assert.deepEqual((await sandbox.get('/updates')).pending, [u[4]], 'the earlier ones are forgotten');
  assert.deepEqual(await getUpdates({ offset: u[4] + 1 }), []);
  state = await sandbox.get('/updates');
  assert.deepEqual(state.pending, []);
  assert.equal(state.confirmed_offset, u[4] + 1);
});

test('a long poll returns as soon as an update arrives, and with nothing once its timeout ran out', async () => {
  const poll = sandbox.bot('getUpdates', { timeout: 40 });
  await waitUntil(async () => (await stats()).polls_active === 1, 5000, 'the poll to wait');
  const { update_id } = await post(SUPERGROUP, 'wake up');
  const { status, body } = await within(poll, 10000, 'the long poll to return with the update');
  assert.equal(status, 200);
  assert.deepEqual(ids(body.result), [update_id]);
  assert.equal(body.result[0].message.text, 'wake up');
  assert.equal((await stats()).polls_active, 0);

  const empty = await within(sandbox.bot('getUpdates', { offset: update_id + 1, timeout: 1 }), 10000, 'a 1 s poll');
  assert.deepEqual(empty.body, { ok: true, result: [] });
});

test('a second getUpdates ends the waiting one with 409, and the conflict fault answers 409 at once', async () => {
  const before = (await stats()).conflicts;
  const first = sandbox.bot('getUpdates', { timeout: 40 });
  await waitUntil(async () => (await stats()).polls_active === 1, 5000, 'the first poll to wait');
  const second = sandbox.bot('getUpdates', { timeout: 40 });
  const terminated = await within(first, 10000, 'the first poll to be terminated');
  assert.equal(terminated.status, 409);
  assert.deepEqual(terminated.body, { ok: false, error_code: 409, description: CONFLICT });
  await waitUntil(async () => (await stats()).polls_active === 1, 5000, 'the second poll to wait');
  const { update_id } = await post(GROUP, 'for the second poller');
  assert.deepEqual(ids((await within(second, 10000, 'the second poll')).body.result), [update_id]);
  assert.equal((await stats()).conflicts, before + 1);

  await sandbox.post('/faults', { conflict: 1 });
  const faulted = await sandbox.bot('getUpdates', { timeout: 0 });
  assert.equal(faulted.status, 409);
  assert.equal(faulted.body.description, CONFLICT);
  assert.equal((await sandbox.bot('getUpdates', { timeout: 0 })).status, 200, 'only the next one');
});

test('a long poll whose client went away is forgotten: the next poller meets no conflict', async () => {
  const before = await stats();
  const abort = new AbortController();
  const gone = sandbox.bot('getUpdates', { timeout: 40 }, { signal: abort.signal });
  await waitUntil(async () => (await stats()).polls_active === 1, 5000, 'the poll to wait');
  abort.abort();
  await assert.rejects(gone);
  const now = await waitUntil(async () => {
    const s = await stats();
    return s.polls_active === 0 && s;
  }, 5000, 'the sandbox to notice the client left');
  assert.equal(now.polls_abandoned, before.polls_abandoned + 1);
  assert.equal((await sandbox.bot('getUpdates', { timeout: 0 })).status, 200);
  assert.equal((await stats()).conflicts, before.conflicts);
});

test('updates pending longer than 24 h on the sandbox clock are dropped, and dates follow that clock', async () => {
  const start = (await sandbox.get('/clock')).now_ms;
  const fresh = await post(GROUP, 'fresh');
  const old = await post(GROUP, 'from 23 h ago', { age_ms: 23 * HOUR });
  const ancient = await post(GROUP, 'from 25 h ago', { age_ms: 25 * HOUR });
  let state = await sandbox.get('/updates');
  assert.deepEqual(state.pending, [fresh.update_id, old.update_id], 'older than 24 h: gone at once');
  assert.equal(ancient.update_id, old.update_id + 1, 'it still took an update id');
  const updates = await getUpdates();
  const date = (id) => updates.find((x) => x.update_id === id).message.date;
  assert.ok(Math.abs(date(old.update_id) - (start - 23 * HOUR) / 1000) < 60, 'a backdated message is dated so');

  const { now_ms } = await sandbox.post('/clock', { advance_ms: HOUR + 1000 });
  assert.ok(now_ms >= start + HOUR + 1000);
  state = await sandbox.get('/updates');
  assert.deepEqual(state.pending, [fresh.update_id], 'the 23 h old update passed 24 h');
  assert.deepEqual(ids(await getUpdates()), [fresh.update_id]);

  await sandbox.post('/clock', { advance_ms: 23 * HOUR });
  assert.deepEqual(await getUpdates(), [], 'after 24 h nothing is left');
  assert.ok((await sandbox.get('/updates')).expired >= 3);

  const later = await post(BOB, 'a day later');
  const [update] = await getUpdates({ offset: later.update_id });
  assert.ok(Math.abs(update.message.date - (start + 24 * HOUR + 1000) / 1000) < 60, 'dates use the moved clock');
  const sent = await sandbox.bot('sendMessage', { chat_id: BOB, text: 'also a day later' });
  assert.equal(sent.body.result.date, (await sandbox.get('/sent?chat_id=' + BOB)).at(-1).date);
  assert.ok(Math.abs(sent.body.result.date - (start + 24 * HOUR + 1000) / 1000) < 60);
});

/** Sends into @p chat until a 429 (at most @p max tries); returns how many got through first and the 429's body. */
async function sendUntilLimited(chat, max = 50) {
  let accepted = 0;
  for (let i = 0; i < max; i++) {
    const { status, body } = await sandbox.bot('sendMessage', { chat_id: chat, text: `limit test ${i}` });
    if (status === 429) return { accepted, body };
    assert.equal(status, 200, JSON.stringify(body));
    accepted++;
  }
  assert.fail(`no 429 after ${max} sends into ${chat}`);
}

function assertTooMany(body, maxSeconds) {
  const n = body.parameters?.retry_after;
  assert.ok(Number.isInteger(n) && n >= 1 && n <= maxSeconds, `retry_after ${n}`);
  assert.deepEqual(body, {
    ok: false, error_code: 429, description: `Too Many Requests: retry after ${n}`, parameters: { retry_after: n },
  });
}

test('send limits answer 429 with retry_after: per chat, per group per minute, and overall', async () => {
  const before = (await stats()).responses_429;
  const sentBefore = (await sandbox.get('/sent')).length;

  await sandbox.post('/config', { chat_rate: 1, chat_burst: 2, group_per_minute: 0, global_rate: 0 });
  const chat = await sendUntilLimited(ALICE);
  assert.ok(chat.accepted >= 2, 'the burst goes through');
  assertTooMany(chat.body, 1);
  assert.equal((await sandbox.bot('sendMessage', { chat_id: BOB, text: 'another chat' })).status, 200,
    'the per-chat limit is per chat');

  await sandbox.post('/config', { chat_rate: 0, group_per_minute: 3, global_rate: 0 });
  const group = await sendUntilLimited(GROUP);
  assert.equal(group.accepted, 3);
  assertTooMany(group.body, 60);
  assert.equal((await sandbox.bot('sendMessage', { chat_id: SUPERGROUP, text: 'other group' })).status, 200);
  assert.equal((await sandbox.bot('sendMessage', { chat_id: BOB, text: 'private chats are not groups' })).status, 200);

  await sandbox.post('/config', { chat_rate: 0, group_per_minute: 0, global_rate: 2 });
  const global = await sendUntilLimited(SUPERGROUP);  // the sends just before count in this second too
  assert.ok(global.accepted <= 2);
  assertTooMany(global.body, 1);
  await waitUntil(async () => (await sandbox.bot('sendMessage', { chat_id: SUPERGROUP, text: 'next second' })).status === 200,
    5000, 'the global window to move on');

  const config = await sandbox.get('/config');
  assert.deepEqual([config.chat_rate, config.group_per_minute, config.global_rate], [0, 0, 2]);
  const limited = (await stats()).responses_429 - before;  // and any the wait above met
  assert.ok(limited >= 3);
  const sent = await sandbox.get('/sent');
  assert.equal(sent.length - sentBefore, chat.accepted + 1 + group.accepted + 2 + global.accepted + 1,
    'a refused send is not sent');
  const log = (await sandbox.get('/stats')).request_log.filter((e) => e.status === 429).slice(-limited);
  assert.deepEqual(log.slice(0, 3).map((e) => e.chat_id), [ALICE, GROUP, SUPERGROUP], 'the log names the chat');
});

test('a blocked user: 403 into the private chat, groups unaffected, unblock restores', async () => {
  await sandbox.post('/block', { user_id: BOB });
  const refused = await sandbox.bot('sendMessage', { chat_id: BOB, text: 'hello?' });
  assert.equal(refused.status, 403);
  assert.deepEqual(refused.body, { ok: false, error_code: 403, description: 'Forbidden: bot was blocked by the user' });
  assert.equal((await sandbox.bot('sendMessage', { chat_id: ALICE, text: 'hi alice' })).status, 200);
  assert.equal((await sandbox.bot('sendMessage', { chat_id: GROUP, text: 'hi group' })).status, 200);
  assert.ok(!(await sandbox.get(`/sent?chat_id=${BOB}`)).some((m) => m.text === 'hello?'));
  await sandbox.post('/unblock', { user_id: BOB });
  assert.equal((await sandbox.bot('sendMessage', { chat_id: BOB, text: 'hello again' })).status, 200);
});

test('faults: drop closes without an answer, server_error is a 502, a storm hits only its methods, slow polls', async () => {
  await sandbox.post('/faults', { drop: 1 });
  await assert.rejects(sandbox.bot('getMe'), 'the connection closes without a response');
  assert.equal((await sandbox.bot('getMe')).status, 200, 'only the next request');

  await sandbox.post('/faults', { server_error: 2 });
  for (let i = 0; i < 2; i++) {
    const failed = await sandbox.bot('sendMessage', { chat_id: ALICE, text: 'into a 502' });
    assert.equal(failed.status, 502);
    assert.deepEqual(failed.body, { ok: false, error_code: 502, description: 'Bad Gateway' });
  }
  assert.equal((await sandbox.bot('getMe')).status, 200);
  assert.ok(!(await sandbox.get('/sent')).some((m) => m.text === 'into a 502'));

  await sandbox.post('/faults', { storm: { count: 2, retry_after: 3, methods: ['sendMessage'] } });
  assert.equal((await sandbox.bot('getMe')).status, 200, 'getMe is not in the storm');
  for (let i = 0; i < 2; i++) assertTooMany((await sandbox.bot('sendMessage', { chat_id: ALICE, text: 's' })).body, 3);
  assert.equal((await sandbox.bot('sendMessage', { chat_id: ALICE, text: 'after the storm' })).status, 200);
  await sandbox.post('/faults', { storm: { count: 1, retry_after: 2 } });
  assertTooMany((await sandbox.bot('getMe')).body, 2);

  // A slow poll holds even a poll that has an update waiting and no timeout; a newer poll (no longer slow) ends it.
  await sandbox.post('/faults', { slow_poll_ms: 60000 });
  const { update_id } = await post(GROUP, 'waiting behind a slow poll');
  let answered = false;
  const slow = sandbox.bot('getUpdates', { timeout: 0 }).finally(() => { answered = true; });
  await waitUntil(async () => (await stats()).polls_active === 1, 5000, 'the slow poll to be active');
  assert.equal(answered, false);
  const cleared = await sandbox.post('/faults/clear');
  assert.deepEqual([cleared.drop, cleared.server_error, cleared.conflict, cleared.slow_poll_ms, cleared.storm.count],
    [0, 0, 0, 0, 0]);
  const fast = await sandbox.bot('getUpdates', { timeout: 0 });
  assert.equal((await within(slow, 5000, 'the slow poll to be terminated')).status, 409);
  assert.deepEqual(ids(fast.body.result), [update_id]);
});

test('drop_poll closes the waiting long poll without an answer; its update is still pending for the next', async () => {
  const before = (await stats()).dropped;
  // The outcome is taken at once: the poll may fail before anyone awaits it, which must not count as unhandled.
  const poll = sandbox.bot('getUpdates', { timeout: 40 }).then(
    (answer) => new Error(`the dropped poll was answered: ${answer.status}`), (error) => error);
  await waitUntil(async () => (await stats()).polls_active === 1, 5000, 'the poll to wait');
  const { dropped_poll } = await sandbox.post('/faults', { drop_poll: true });
  assert.equal(dropped_poll, true);
  assert.match((await within(poll, 5000, 'the dropped poll to fail')).message, /fetch failed/);
  const now = await stats();
  assert.equal(now.polls_active, 0);
  assert.equal(now.dropped, before + 1);
  assert.equal((await sandbox.post('/faults', { drop_poll: true })).dropped_poll, false, 'no poll, nothing to drop');
  const { update_id } = await post(GROUP, 'after the drop');
  assert.deepEqual(ids(await getUpdates()), [update_id]);
});

test('a bulk post queues K messages m0..m{K-1}, read back in order in pages of 100', async () => {
  const posted = await sandbox.post('/messages', { chat_id: SUPERGROUP, from: BOB, count: 250, text_prefix: 'm' });
  assert.equal(posted.update_ids.length, 250);
  const seen = [];
  let offset;
  for (let page = 0; page < 10; page++) {
    const updates = await getUpdates(offset === undefined ? {} : { offset });
    if (updates.length === 0) break;
    assert.ok(updates.length <= 100);
    seen.push(...updates);
    offset = updates.at(-1).update_id + 1;
  }
  assert.deepEqual(ids(seen), posted.update_ids);
  assert.deepEqual(seen.map((u) => u.message.text), Array.from({ length: 250 }, (_, i) => `m${i}`));
  assert.deepEqual(seen.map((u) => u.message.message_id), posted.message_ids);
  assert.deepEqual((await sandbox.get('/updates')).pending, []);
});

test('message text: at most 4096 UTF-16 code units (an emoji counts twice); empty or missing is refused', async () => {
  const send = (text) => sandbox.bot('sendMessage', text === undefined ? { chat_id: ALICE } : { chat_id: ALICE, text });
  assert.equal((await send('x'.repeat(4096))).status, 200);
  assert.equal((await send('😀'.repeat(2048))).status, 200);
  for (const text of ['x'.repeat(4097), '😀'.repeat(2049), 'x' + '😀'.repeat(2048)]) {
    const long = await send(text);
    assert.equal(long.status, 400);
    assert.deepEqual(long.body, { ok: false, error_code: 400, description: 'Bad Request: message is too long' });
  }
  for (const text of ['', undefined, '   ']) {
    const empty = await send(text);
    assert.equal(empty.status, 400);
    assert.equal(empty.body.description, 'Bad Request: message text is empty');
  }
});

test('sendMessage returns the Message; replies, deletes and /sent in send order', async () => {
  const { message_id: asked } = await post(GROUP, 'question', { from: BOB });
  const reply = await sandbox.bot('sendMessage',
    { chat_id: GROUP, text: 'answer', parse_mode: 'HTML', reply_parameters: { message_id: asked } });
  assert.equal(reply.status, 200);
  const message = reply.body.result;
  assert.equal(message.from.id, BOT_ID);
  assert.equal(message.from.is_bot, true);
  assert.equal(message.chat.id, GROUP);
  assert.equal(message.text, 'answer');
  assert.equal(message.reply_to_message.message_id, asked);
  assert.equal(message.reply_to_message.from.id, BOB);
  assert.ok(message.message_id > asked, 'message ids grow within a chat');

  const legacy = await sandbox.bot('sendMessage', { chat_id: GROUP, text: 'legacy', reply_to_message_id: asked },
    { form: true });
  assert.equal(legacy.body.result.reply_to_message.message_id, asked);
  const nowhere = await sandbox.bot('sendMessage', { chat_id: GROUP, text: 'x', reply_to_message_id: 999999 });
  assert.equal(nowhere.body.description, 'Bad Request: message to be replied not found');
  const noChat = await sandbox.bot('sendMessage', { chat_id: 31337, text: 'x' });
  assert.deepEqual(noChat.body, { ok: false, error_code: 400, description: 'Bad Request: chat not found' });

  const deleted = await sandbox.bot('deleteMessage', { chat_id: GROUP, message_id: message.message_id });
  assert.deepEqual(deleted.body, { ok: true, result: true });
  const again = await sandbox.bot('deleteMessage', { chat_id: GROUP, message_id: message.message_id });
  assert.equal(again.status, 400);
  assert.equal(again.body.description, 'Bad Request: message to delete not found');

  const sent = await sandbox.get(`/sent?chat_id=${GROUP}`);
  const mine = sent.filter((m) => m.message_id >= message.message_id);
  assert.deepEqual(mine.map((m) => [m.text, m.reply_to_message_id, m.deleted]),
    [['answer', asked, true], ['legacy', asked, false]]);
  assert.ok(sent.every((m) => m.chat_id === GROUP));
});
