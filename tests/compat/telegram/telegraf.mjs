// telegraf 4, unmodified, against switchboard-sandbox telegram (its apiRoot pointed at the sandbox): it long-polls,
// receives group, supergroup and private messages posted through the control API, answers them (a command, a reply),
// reads a chat, deletes a message, sees the Bot API's error shapes (403 blocked, 400 too long, 429 retry_after),
// rides out a 429 storm on getUpdates by its retry_after, and confirms its offset when it stops. Exits 0 when all of
// that held.
//   node telegraf.mjs path/to/switchboard-sandbox
import assert from 'node:assert/strict';
import { Telegraf, TelegramError } from 'telegraf';
import { message } from 'telegraf/filters';
import { ALICE, BOB, BOT_ID, GROUP, SUPERGROUP, TOKEN, startSandbox, waitUntil, within } from './sandbox.mjs';

// Room for a test's few sends into one chat; the limits themselves are checked in sandbox_semantics.test.mjs.
const sandbox = await startSandbox(process.argv[2] ?? process.env.SWITCHBOARD_SANDBOX, ['--chat-burst', '20']);
const bot = new Telegraf(TOKEN, { telegram: { apiRoot: sandbox.url } });

const handled = [];
bot.command('start', (ctx) => ctx.reply(`welcome, ${ctx.from.first_name}`));
bot.on(message('text'), async (ctx) => {
  handled.push(ctx.message);
  await ctx.reply(`echo: ${ctx.message.text}`, { reply_parameters: { message_id: ctx.message.message_id } });
});
const sentTo = (chat) => sandbox.get(`/sent?chat_id=${chat}`);
const answered = (chat, text) =>
  waitUntil(async () => (await sentTo(chat)).find((m) => m.text === text), 10000, `'${text}' in chat ${chat}`);

let failed = false;
let polling;
try {
  // An update that waits from before the bot starts is delivered on its first poll.
  const early = await sandbox.post('/messages', { chat_id: GROUP, from: ALICE, text: 'said before launch' });

  const launched = new Promise((resolve) => {
    polling = bot.launch(resolve);  // resolves when polling stops; the callback runs once getMe answered
  });
  polling.catch(() => {});
  await within(launched, 15000, 'telegraf to launch');
  assert.equal(bot.botInfo.id, BOT_ID);
  assert.equal(bot.botInfo.username, 'switchboard_bot');
  console.log('ok - telegraf launched as @' + bot.botInfo.username);

  const first = await answered(GROUP, 'echo: said before launch');
  assert.equal(first.reply_to_message_id, early.message_id, 'the answer replies to the message');
  console.log('ok - received an update queued before launch and answered it with a reply');

  const hello = await sandbox.post('/messages', { chat_id: SUPERGROUP, from: BOB, text: 'hello from bob' });
  const echo = await answered(SUPERGROUP, 'echo: hello from bob');
  assert.equal(echo.reply_to_message_id, hello.message_id);
  const seen = handled.find((m) => m.text === 'hello from bob');
  assert.equal(seen.chat.type, 'supergroup');
  assert.equal(seen.from.id, BOB);
  assert.equal(seen.from.is_bot, false);
  console.log('ok - a supergroup message arrived through a waiting long poll and was answered');

  await sandbox.post('/messages', { chat_id: ALICE, from: ALICE, text: '/start' });
  await answered(ALICE, 'welcome, Alice');
  console.log('ok - a private /start ran the command handler (bot_command entity)');

  const chat = await bot.telegram.getChat(GROUP);
  assert.equal(chat.title, 'Sandbox group');
  assert.equal(chat.type, 'group');
  const note = await bot.telegram.sendMessage(GROUP, 'to be deleted');
  assert.equal(note.from.id, BOT_ID);
  assert.equal(await bot.telegram.deleteMessage(GROUP, note.message_id), true);
  assert.equal((await sentTo(GROUP)).find((m) => m.message_id === note.message_id)?.deleted, true);
  console.log('ok - getChat, sendMessage and deleteMessage through telegraf');

  const error = async (promise) => {
    try {
      await promise;
    } catch (err) {
      assert.ok(err instanceof TelegramError, `a TelegramError, not ${err}`);
      return err;
    }
    assert.fail('the call succeeded');
  };
  await sandbox.post('/block', { user_id: BOB });
  const blocked = await error(bot.telegram.sendMessage(BOB, 'are you there?'));
  assert.equal(blocked.code, 403);
  assert.equal(blocked.description, 'Forbidden: bot was blocked by the user');
  await sandbox.post('/unblock', { user_id: BOB });
  const tooLong = await error(bot.telegram.sendMessage(GROUP, 'x'.repeat(4097)));
  assert.equal(tooLong.code, 400);
  assert.equal(tooLong.description, 'Bad Request: message is too long');
  await sandbox.post('/faults', { storm: { count: 1, retry_after: 7, methods: ['sendMessage'] } });
  const limited = await error(bot.telegram.sendMessage(GROUP, 'into a storm'));
  assert.equal(limited.code, 429);
  assert.equal(limited.parameters.retry_after, 7);
  console.log('ok - telegraf reads 403, 400 and 429 (parameters.retry_after) as TelegramErrors');

  // telegraf retries a 429 on getUpdates after parameters.retry_after seconds, then keeps receiving.
  await sandbox.post('/faults', { storm: { count: 1, retry_after: 1, methods: ['getUpdates'] } });
  await sandbox.post('/messages', { chat_id: GROUP, from: BOB, text: 'ends the waiting poll' });
  await answered(GROUP, 'echo: ends the waiting poll');
  const stormed = await waitUntil(async () => (await sandbox.get('/stats')).request_log.find(
    (e) => e.method === 'getUpdates' && e.status === 429), 10000, 'the next getUpdates to meet the storm');
  assert.equal(stormed.retry_after, 1);
  await sandbox.post('/messages', { chat_id: GROUP, from: BOB, text: 'after the storm' });
  await answered(GROUP, 'echo: after the storm');
  const { request_log } = await sandbox.get('/stats');
  const retried = request_log.find((e) => e.method === 'getUpdates' && e.time_ms > stormed.time_ms);
  // Not a speed check: telegraf must not poll again before the retry_after it was given (1 s; node timers may
  // fire a few ms early).
  assert.ok(retried.time_ms - stormed.time_ms >= 950, 'telegraf waited retry_after before polling again');
  console.log('ok - a 429 on getUpdates: telegraf waited retry_after and kept receiving');

  const lastUpdate = (await sandbox.get('/updates')).next_update_id - 1;
  bot.stop('test done');
  await within(polling, 10000, 'telegraf to stop polling');
  const updates = await waitUntil(async () => {
    const state = await sandbox.get('/updates');
    return state.confirmed_offset === lastUpdate + 1 && state;
  }, 10000, 'telegraf to confirm its offset on stop');
  assert.deepEqual(updates.pending, []);
  const stats = await sandbox.get('/stats?log=0');
  assert.equal(stats.conflicts, 0, 'one poller at a time');
  console.log('ok - on stop telegraf confirmed every update (offset', updates.confirmed_offset + ')');
} catch (error) {
  failed = true;
  console.error('not ok -', error);
} finally {
  try {
    bot.stop('cleanup');
  } catch {}
  await sandbox.stop();
}
process.exit(failed ? 1 : 0);
