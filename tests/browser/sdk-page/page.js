// A document page wired the way signing UIs use realtime-server (docs/CLIENTS.md): the
// official `centrifuge` SDK, tokens from "our backend" (the test's /token endpoint) through
// getToken, the user channel as a server-side subscription, and a document subscription
// with its own subscription token. Every SDK event is reported to the test driver through
// window.report (a Playwright binding) and listed on the page.
'use strict';

const params = new URLSearchParams(location.search);
const channel = params.get('channel');
document.getElementById('channel').textContent = channel;

function tell(kind, fields = {}) {
  const item = document.createElement('li');
  item.textContent = kind + ' ' + JSON.stringify(fields);
  document.getElementById('events').append(item);
  if (typeof window.report === 'function') window.report({ kind, ...fields });
}

async function backendToken(query) {
  const response = await fetch('/token' + query, { cache: 'no-store' });
  if (!response.ok) throw new Error('token endpoint answered ' + response.status);
  return (await response.json()).token;
}

const client = new Centrifuge(params.get('ws'), {
  getToken: () => backendToken(''),
  name: 'browser-test',
});
client.on('connecting', (ctx) => tell('connecting', { code: ctx.code, reason: ctx.reason }));
client.on('connected', (ctx) => {
  document.getElementById('state').textContent = 'connected';
  tell('connected', { client: ctx.client, transport: ctx.transport });
});
client.on('disconnected', (ctx) => {
  document.getElementById('state').textContent = 'disconnected';
  tell('disconnected', { code: ctx.code, reason: ctx.reason });
});
client.on('error', (ctx) => tell('error', { message: String(ctx.error && ctx.error.message) }));
// The user's own channel: subscribed by the server at connect, events on the client.
client.on('subscribed', (ctx) => tell('server_subscribed', {
  channel: ctx.channel, recoverable: ctx.recoverable, offset: ctx.streamPosition && ctx.streamPosition.offset,
}));
client.on('publication', (ctx) => tell('server_publication', {
  channel: ctx.channel, data: ctx.data, offset: ctx.offset,
}));

const doc = client.newSubscription(channel, {
  getToken: (ctx) => backendToken('?channel=' + encodeURIComponent(ctx.channel)),
  joinLeave: true,
});
doc.on('subscribing', (ctx) => tell('subscribing', { code: ctx.code, reason: ctx.reason }));
doc.on('subscribed', (ctx) => tell('subscribed', {
  channel: ctx.channel, recoverable: ctx.recoverable, positioned: ctx.positioned,
  offset: ctx.streamPosition && ctx.streamPosition.offset,
}));
doc.on('unsubscribed', (ctx) => tell('unsubscribed', { code: ctx.code, reason: ctx.reason }));
doc.on('error', (ctx) => tell('sub_error', { message: String(ctx.error && ctx.error.message) }));
doc.on('publication', (ctx) => tell('publication', {
  channel: ctx.channel, data: ctx.data, offset: ctx.offset,
}));
doc.on('join', (ctx) => tell('join', { user: ctx.info.user, connInfo: ctx.info.connInfo }));

window.presence = async () => {
  const result = await doc.presence();
  return Object.values(result.clients).map((info) => info.user);
};

doc.subscribe();
client.connect();
