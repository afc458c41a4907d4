// spec/support/amqp_observer.js: a second AMQP client (the official-ish `amqplib`, not mercato's
// rabbitmq-c binding) that sees every event on mercato.events, as another team's consumer would.
//   node spec/support/amqp_observer.js AMQP_URL OUT_FILE [BINDING]
// Declares an exclusive, auto-delete queue bound with BINDING (default '#'), and appends one JSON
// line per message to OUT_FILE: {routing_key, properties: {message_id, type, content_type,
// delivery_mode, ...}, body}. Prints "ready" once bound; runs until killed.
'use strict';
const amqp = require('amqplib');
const fs = require('fs');

const [url, out, binding] = process.argv.slice(2);

(async () => {
  const conn = await amqp.connect(url);
  const ch = await conn.createChannel();
  await ch.assertExchange('mercato.events', 'topic', { durable: true });
  const q = await ch.assertQueue('', { exclusive: true, autoDelete: true });
  await ch.bindQueue(q.queue, 'mercato.events', binding || '#');
  await ch.consume(q.queue, (m) => {
    const line = JSON.stringify({ routing_key: m.fields.routingKey, properties: m.properties, body: m.content.toString('utf8') });
    fs.appendFileSync(out, line + '\n');
    ch.ack(m);
  });
  console.log('ready');
  const stop = async () => { try { await conn.close(); } catch (e) { /* closing */ } process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
})().catch((e) => { console.error(e.message); process.exit(1); });
