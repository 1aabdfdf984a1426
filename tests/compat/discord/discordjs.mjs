// discord.js 14, unmodified, against switchboard-sandbox: logs in, receives a guild message and a DM posted through
// the control API, sends and replies (checked in /_sandbox/sent), and survives a forced op 7 with a resume (one
// Identify, one Resume, and the message posted meanwhile still arrives). Exits 0 when all of that held.
//   node discordjs.mjs path/to/switchboard-sandbox
import assert from 'node:assert/strict';
import { ChannelType, Client, Events, GatewayIntentBits, Partials } from 'discord.js';
import { BOT_ID, TOKEN, startSandbox, waitUntil, within } from './sandbox.mjs';

const sandbox = await startSandbox(process.argv[2] ?? process.env.SWITCHBOARD_SANDBOX, ['--heartbeat-interval', '3000']);
const client = new Client({
  intents: [
    GatewayIntentBits.Guilds,
    GatewayIntentBits.GuildMessages,
    GatewayIntentBits.MessageContent,
    GatewayIntentBits.DirectMessages,
  ],
  partials: [Partials.Channel],
  rest: { api: `${sandbox.url}/api` },
});

const received = [];
client.on(Events.MessageCreate, (message) => received.push(message));
const arrived = (predicate, what) => waitUntil(() => received.find(predicate), 10000, what);

let failed = false;
try {
  const ready = new Promise((resolve) => client.once(Events.ClientReady, resolve));
  await client.login(TOKEN);
  await within(ready, 30000, 'discord.js to be ready');
  assert.equal(client.user.id, BOT_ID);
  assert.ok(client.guilds.cache.get('1'), 'guild 1 is cached from GUILD_CREATE');
  console.log('ok - logged in as', client.user.tag);

  await sandbox.post('/messages', { channel_id: '100', author_id: '2001', content: 'hello from alice' });
  const hello = await arrived((m) => m.content === 'hello from alice', 'the guild message');
  assert.equal(hello.author.id, '2001');
  assert.equal(hello.channelId, '100');
  assert.equal(hello.guildId, '1');
  console.log('ok - received a guild message posted through the control API');

  const sent = await hello.channel.send('pong from discord.js');
  const reply = await hello.reply('a reply');
  const { messages } = await sandbox.get('/sent?channel_id=100');
  assert.ok(messages.some((m) => m.id === sent.id && m.content === 'pong from discord.js'), 'send is in /sent');
  const replied = messages.find((m) => m.id === reply.id);
  assert.equal(replied?.message_reference?.message_id, hello.id, 'the reply references the message');
  console.log('ok - sent a message and a reply, both in /_sandbox/sent');

  await sandbox.post('/messages', { dm: true, author_id: '2002', content: 'psst, a DM' });
  const dm = await arrived((m) => m.content === 'psst, a DM', 'the DM');
  assert.equal(dm.channel.type, ChannelType.DM);
  assert.equal(dm.author.id, '2002');
  await dm.channel.send('DM answer');
  const dms = await sandbox.get(`/sent?channel_id=${dm.channelId}`);
  assert.ok(dms.messages.some((m) => m.content === 'DM answer'), 'the DM answer is in /sent');
  console.log('ok - received a DM and answered it');

  const resumed = new Promise((resolve) => client.once(Events.ShardResume, (id, replayed) => resolve(replayed)));
  await sandbox.post('/gateway/reconnect');
  await sandbox.post('/messages', { channel_id: '101', author_id: '2002', content: 'said during the reconnect' });
  const replayed = await within(resumed, 20000, 'discord.js to resume after op 7');
  await arrived((m) => m.content === 'said during the reconnect', 'the message posted during the reconnect');
  const stats = await sandbox.get('/stats?log=0');
  assert.equal(stats.identifies, 1, 'no second Identify');
  assert.ok(stats.resumes >= 1, 'a Resume happened');
  console.log(`ok - resumed after op 7 (${replayed} events replayed), ${stats.resumes} resume(s), one identify`);

  await sandbox.post('/messages', { channel_id: '102', author_id: '2001', content: 'after the resume' });
  await arrived((m) => m.content === 'after the resume', 'a message after the resume');
  console.log('ok - live messages flow after the resume');
} catch (error) {
  failed = true;
  console.error('not ok -', error?.stack ?? error);
} finally {
  await client.destroy();
  await sandbox.stop();
}
process.exit(failed ? 1 : 0);
