// bench/svc/checkout_load.js: closed-loop load on the order service's checkout for `make bench`
// (bench/orders.sh). Each of C workers is one buyer: put one item in its cart (not timed), then
// POST /orders with a fresh Idempotency-Key (timed: the saga's synchronous part — reservation at
// the product service, PaymentIntent at the payment service through the Stripe stand-in, the
// order's rows and outbox), again until the duration ends. Keep-alive connections, one per worker.
//   node bench/svc/checkout_load.js ORDER_URL BUYERS_JSON SECONDS
//   BUYERS_JSON: [{"token": "...", "product_id": "..."}, ...]  (one worker per buyer)
// Prints one JSON line: {checkouts, seconds, rps, p50_ms, p90_ms, p99_ms, max_ms, statuses}.
'use strict';
const http = require('http');
const crypto = require('crypto');
const fs = require('fs');

const [base, buyersFile, secondsArg] = process.argv.slice(2);
const buyers = JSON.parse(fs.readFileSync(buyersFile, 'utf8'));
const seconds = Number(secondsArg || 10);
const url = new URL(base);
const agent = new http.Agent({ keepAlive: true, maxSockets: buyers.length });
const body = JSON.stringify({ shipping_address: { name: 'Bench Buyer', line1: '1 Loop Rd', city: 'Berlin', postal_code: '10115', country: 'DE' } });

function request(method, path, token, data, headers) {
  return new Promise((resolve) => {
    const h = Object.assign({ Authorization: 'Bearer ' + token }, headers || {});
    if (data) { h['Content-Type'] = 'application/json'; h['Content-Length'] = Buffer.byteLength(data); }
    const req = http.request({ host: url.hostname, port: url.port, path, method, headers: h, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve(0));
    if (data) req.write(data);
    req.end();
  });
}

async function worker(b, deadline, lat, statuses) {
  const item = JSON.stringify({ quantity: 1 });
  while (Date.now() < deadline) {
    await request('PUT', '/cart/items/' + b.product_id, b.token, item);
    const t0 = process.hrtime.bigint();
    const st = await request('POST', '/orders', b.token, body, { 'Idempotency-Key': crypto.randomUUID() });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    statuses[st] = (statuses[st] || 0) + 1;
    if (st === 201) lat.push(ms);
  }
}

(async () => {
  const lat = [], statuses = {};
  const t0 = Date.now();
  const deadline = t0 + seconds * 1000;
  await Promise.all(buyers.map((b) => worker(b, deadline, lat, statuses)));
  const took = (Date.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const pct = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : null);
  const r = (x) => (x === null ? null : Math.round(x * 100) / 100);
  console.log(JSON.stringify({ checkouts: lat.length, seconds: r(took), rps: r(lat.length / took),
    p50_ms: r(pct(0.5)), p90_ms: r(pct(0.9)), p99_ms: r(pct(0.99)), max_ms: r(lat[lat.length - 1] || null), statuses }));
  agent.destroy();
})();
