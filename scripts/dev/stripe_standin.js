#!/usr/bin/env node
// scripts/dev/stripe_standin.js: a LOCAL STAND-IN for Stripe's API — not Stripe. It speaks the
// part of Stripe's wire protocol the payment service uses, so `make run` and the specs work
// offline: form-encoded requests (nested `a[b]`, `expand[]`), `Authorization: Bearer sk_test_…`,
// `Idempotency-Key` (same key + same parameters replays the first answer with
// `Idempotent-Replayed: true`; other parameters → 400 idempotency_error), Stripe's error object
// (`{"error": {"type", "code", "message", "param", "decline_code"}}`) and `Request-Id`.
//
// Objects: PaymentIntents (create, retrieve, confirm, cancel) with Stripe's test cards —
// `pm_card_visa` succeeds, `pm_card_chargeDeclined` is declined (402 card_error) — and
// refunds (create, retrieve; never more than what is left of the charge). Each change sends a
// signed event (`Stripe-Signature: t=…,v1=HMAC-SHA256(secret, "t.body")`) to the webhook URL,
// at least once: failed deliveries are retried with back-off, and on purpose some are
// delivered twice and some late (so out of order), as Stripe may.
//
// Env: STRIPE_STANDIN_PORT (31590), STRIPE_WEBHOOK_URL (none: no deliveries),
// STRIPE_WEBHOOK_SECRET, STRIPE_STANDIN_DUPLICATE_RATE (0.2), STRIPE_STANDIN_MAX_DELAY_MS (200).
// Test controls (not Stripe's): GET /_standin/health; POST /_standin/config with a JSON body
// {webhooks: bool, duplicate_rate, max_delay_ms, fail_next: n (the next n API calls answer
// 500)}; GET /_standin/events[?created[gte]=T] (every event made, or those made since unix
// time T, oldest first, each with standin_deliveries:
// {scheduled, done} — deliveries planned and answered 2xx); POST /_standin/events/{id}/resend.
'use strict';
const http = require('http');
const crypto = require('crypto');

const PORT = Number(process.env.STRIPE_STANDIN_PORT || 31590);
const cfg = {
  webhookUrl: process.env.STRIPE_WEBHOOK_URL || '',
  secret: process.env.STRIPE_WEBHOOK_SECRET || 'whsec_standin',
  webhooks: true,
  duplicateRate: Number(process.env.STRIPE_STANDIN_DUPLICATE_RATE || 0.2),
  maxDelayMs: Number(process.env.STRIPE_STANDIN_MAX_DELAY_MS || 200),
  failNext: 0,
};
const API_VERSION = '2024-06-20';

const intents = new Map();   // pi_… → PaymentIntent
const charges = new Map();   // ch_… → Charge
const refunds = new Map();   // re_… → Refund
const events = [];           // every event, oldest first
const idem = new Map();      // apiKey + key → { fingerprint, status, body }
const deliveries = new Map(); // evt_… → { scheduled, done }: deliveries planned, and answered 2xx

const rid = (prefix) => prefix + '_' + crypto.randomBytes(12).toString('hex');
const now = () => Math.floor(Date.now() / 1000);

// ---- form decoding (the inverse of stripe-node's qs encoding) -----------------------------
function setPath(obj, path, value) {
  let cur = obj;
  for (let i = 0; i < path.length; i++) {
    const k = path[i], last = i === path.length - 1;
    if (k === '') {   // a[]=x
      if (!Array.isArray(cur)) return;
      if (last) cur.push(value); else { const o = {}; cur.push(o); cur = o; }
      continue;
    }
    if (last) { cur[k] = value; return; }
    if (cur[k] === undefined || typeof cur[k] !== 'object') cur[k] = path[i + 1] === '' || /^\d+$/.test(path[i + 1]) ? [] : {};
    cur = cur[k];
  }
}
function parseForm(body) {
  const out = {};
  if (!body) return out;
  for (const part of body.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const rawKey = decodeURIComponent((eq < 0 ? part : part.slice(0, eq)).replace(/\+/g, ' '));
    const value = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1).replace(/\+/g, ' '));
    const m = rawKey.match(/^([^[]+)((?:\[[^\]]*\])*)$/);
    if (!m) continue;
    const path = [m[1]];
    for (const seg of m[2].matchAll(/\[([^\]]*)\]/g)) path.push(seg[1]);
    setPath(out, path, value);
  }
  return out;
}

// ---- answers ----------------------------------------------------------------------------
class StripeError extends Error {
  constructor(status, type, message, extra) { super(message); this.status = status; this.body = { error: Object.assign({ type, message }, extra || {}) }; }
}
const invalid = (message, param, code) => new StripeError(400, 'invalid_request_error', message, Object.assign(param ? { param } : {}, code ? { code } : {}));
const missing = (kind, id) => new StripeError(404, 'invalid_request_error', `No such ${kind}: '${id}'`, { code: 'resource_missing', param: 'id' });

// ---- webhooks ---------------------------------------------------------------------------
function sign(payload, t) {
  return 't=' + t + ',v1=' + crypto.createHmac('sha256', cfg.secret).update(t + '.' + payload).digest('hex');
}
function deliver(evt, attempt) {
  if (!cfg.webhookUrl) return;
  const payload = JSON.stringify(evt, null, 2);
  const u = new URL(cfg.webhookUrl);
  const req = http.request({ host: u.hostname, port: u.port, path: u.pathname + u.search, method: 'POST',
    headers: { 'Content-Type': 'application/json; charset=utf-8', 'Stripe-Signature': sign(payload, now()),
      'User-Agent': 'Stripe/1.0 (+https://stripe.com/docs/webhooks) stand-in', 'Content-Length': Buffer.byteLength(payload) },
    timeout: 10000 }, (res) => {
    res.resume();
    res.on('end', () => {
      if (res.statusCode >= 300) return retry(evt, attempt);
      const d = deliveries.get(evt.id);
      if (d) d.done++;
    });
  });
  req.on('error', () => retry(evt, attempt));
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.end(payload);
}
function retry(evt, attempt) {
  if (attempt >= 8) return;
  setTimeout(() => deliver(evt, attempt + 1), Math.min(200 * 2 ** attempt, 10000));
}
function emit(type, object, request) {
  const evt = { id: rid('evt'), object: 'event', api_version: API_VERSION, created: now(), type, livemode: false,
    pending_webhooks: 1, request: request || { id: null, idempotency_key: null }, data: { object: JSON.parse(JSON.stringify(object)) } };
  events.push(evt);
  const d = { scheduled: 0, done: 0 };
  deliveries.set(evt.id, d);
  if (!cfg.webhooks || !cfg.webhookUrl) return evt;
  const delay = () => Math.floor(Math.random() * cfg.maxDelayMs);
  d.scheduled++;
  setTimeout(() => deliver(evt, 0), delay());
  if (Math.random() < cfg.duplicateRate) { d.scheduled++; setTimeout(() => deliver(evt, 0), delay() + 50); }
  return evt;
}

// ---- objects ----------------------------------------------------------------------------
function intentOf(id) { const pi = intents.get(id); if (!pi) throw missing('payment_intent', id); return pi; }

function createIntent(p, req) {
  const amount = Number(p.amount);
  if (!p.amount || !Number.isInteger(amount) || amount < 1) throw invalid('Invalid integer: ' + (p.amount || ''), 'amount');
  if (amount > 99999999) throw invalid('Amount must be no more than $999,999.99', 'amount', 'amount_too_large');
  if (!p.currency || !/^[a-z]{3}$/.test(p.currency)) throw invalid('Invalid currency: ' + (p.currency || ''), 'currency');
  const id = rid('pi');
  const pi = { id, object: 'payment_intent', amount, amount_capturable: 0, amount_received: 0, currency: p.currency,
    client_secret: id + '_secret_' + crypto.randomBytes(8).toString('hex'), created: now(), livemode: false,
    status: 'requires_payment_method', metadata: p.metadata || {}, receipt_email: p.receipt_email || null,
    description: p.description || null, payment_method: null, latest_charge: null, last_payment_error: null,
    cancellation_reason: null, canceled_at: null, capture_method: 'automatic', confirmation_method: 'automatic',
    payment_method_types: ['card'] };
  intents.set(id, pi);
  emit('payment_intent.created', pi, req);
  if (p.payment_method && (p.confirm === 'true')) return confirmIntent(pi, p, req);
  if (p.payment_method) { pi.payment_method = p.payment_method; pi.status = 'requires_confirmation'; }
  return pi;
}

function confirmIntent(pi, p, req) {
  if (pi.status === 'succeeded' || pi.status === 'canceled') {
    throw invalid(`You cannot confirm this PaymentIntent because it has a status of ${pi.status}.`, null, 'payment_intent_unexpected_state');
  }
  const pm = p.payment_method || pi.payment_method;
  if (!pm) throw invalid('You cannot confirm this PaymentIntent because it\'s missing a payment method.', 'payment_method', 'payment_intent_unexpected_state');
  pi.payment_method = pm;
  const ch = { id: rid('ch'), object: 'charge', amount: pi.amount, amount_refunded: 0, currency: pi.currency, payment_intent: pi.id,
    created: now(), paid: false, refunded: false, status: 'failed', metadata: pi.metadata, refunds: { object: 'list', data: [] } };
  charges.set(ch.id, ch);
  pi.latest_charge = ch.id;
  if (pm === 'pm_card_chargeDeclined' || pm === 'pm_card_visa_chargeDeclined') {
    pi.status = 'requires_payment_method';
    pi.last_payment_error = { type: 'card_error', code: 'card_declined', decline_code: 'generic_decline',
      message: 'Your card was declined.', charge: ch.id };
    emit('charge.failed', ch, req);
    emit('payment_intent.payment_failed', pi, req);
    const e = new StripeError(402, 'card_error', 'Your card was declined.', { code: 'card_declined', decline_code: 'generic_decline',
      charge: ch.id, payment_intent: JSON.parse(JSON.stringify(pi)) });
    e.keepForIdempotency = true;
    throw e;
  }
  if (!/^pm_card_/.test(pm)) throw invalid(`No such PaymentMethod: '${pm}'`, 'payment_method', 'resource_missing');
  ch.paid = true; ch.status = 'succeeded';
  pi.status = 'succeeded';
  pi.amount_received = pi.amount;
  pi.last_payment_error = null;
  emit('charge.succeeded', ch, req);
  emit('payment_intent.succeeded', pi, req);
  return pi;
}

function cancelIntent(pi, p, req) {
  if (pi.status === 'canceled') return pi;
  if (pi.status === 'succeeded') {
    throw invalid('You cannot cancel this PaymentIntent because it has a status of succeeded. Only a PaymentIntent with one of the following statuses may be canceled: requires_payment_method, requires_capture, requires_confirmation, requires_action, processing.',
      null, 'payment_intent_unexpected_state');
  }
  pi.status = 'canceled';
  pi.canceled_at = now();
  pi.cancellation_reason = p.cancellation_reason || null;
  emit('payment_intent.canceled', pi, req);
  return pi;
}

function createRefund(p, req) {
  const piId = p.payment_intent;
  if (!piId && !p.charge) throw invalid('Must provide either `payment_intent` or `charge`.', 'payment_intent');
  const pi = piId ? intentOf(piId) : intentOf((charges.get(p.charge) || {}).payment_intent || p.charge);
  const ch = charges.get(pi.latest_charge);
  if (pi.status !== 'succeeded' || !ch) throw invalid(`This PaymentIntent (${pi.id}) does not have a successful charge to refund.`, 'payment_intent', 'charge_not_refundable');
  const left = ch.amount - ch.amount_refunded;
  if (left <= 0) throw invalid(`Charge ${ch.id} has already been refunded.`, 'charge', 'charge_already_refunded');
  const amount = p.amount === undefined ? left : Number(p.amount);
  if (!Number.isInteger(amount) || amount < 1) throw invalid('Invalid integer: ' + p.amount, 'amount');
  if (amount > left) throw invalid(`Refund amount (${amount}) is greater than unrefunded amount on charge (${left})`, 'amount', 'amount_too_large');
  const re = { id: rid('re'), object: 'refund', amount, currency: ch.currency, charge: ch.id, payment_intent: pi.id,
    created: now(), metadata: p.metadata || {}, reason: p.reason || null, status: 'succeeded' };
  refunds.set(re.id, re);
  ch.amount_refunded += amount;
  ch.refunded = ch.amount_refunded === ch.amount;
  ch.refunds.data.unshift(re);
  emit('refund.created', re, req);
  emit('charge.refunded', ch, req);
  return re;
}

// ---- routing ----------------------------------------------------------------------------
function route(method, path, p, req) {
  let m;
  if (method === 'POST' && path === '/v1/payment_intents') return createIntent(p, req);
  if ((m = path.match(/^\/v1\/payment_intents\/([^/]+)$/))) {
    if (method === 'GET') return intentOf(m[1]);
    if (method === 'POST') { const pi = intentOf(m[1]); if (p.metadata) Object.assign(pi.metadata, p.metadata); return pi; }
  }
  if (method === 'POST' && (m = path.match(/^\/v1\/payment_intents\/([^/]+)\/confirm$/))) return confirmIntent(intentOf(m[1]), p, req);
  if (method === 'POST' && (m = path.match(/^\/v1\/payment_intents\/([^/]+)\/cancel$/))) return cancelIntent(intentOf(m[1]), p, req);
  if (method === 'POST' && path === '/v1/refunds') return createRefund(p, req);
  if (method === 'GET' && (m = path.match(/^\/v1\/refunds\/([^/]+)$/))) { const r = refunds.get(m[1]); if (!r) throw missing('refund', m[1]); return r; }
  if (method === 'GET' && (m = path.match(/^\/v1\/charges\/([^/]+)$/))) { const c = charges.get(m[1]); if (!c) throw missing('charge', m[1]); return c; }
  if (method === 'GET' && (m = path.match(/^\/v1\/events\/([^/]+)$/))) { const e = events.find((x) => x.id === m[1]); if (!e) throw missing('event', m[1]); return e; }
  throw new StripeError(404, 'invalid_request_error', `Unrecognized request URL (${method}: ${path}).`);
}

function expand(obj, list) {
  if (!obj || !Array.isArray(list)) return obj;
  const out = JSON.parse(JSON.stringify(obj));
  if (list.includes('latest_charge') && typeof out.latest_charge === 'string') out.latest_charge = charges.get(out.latest_charge) || out.latest_charge;
  return out;
}

function send(res, status, body, headers) {
  const s = JSON.stringify(body, null, 2);
  res.writeHead(status, Object.assign({ 'Content-Type': 'application/json', 'Request-Id': rid('req'), 'Stripe-Version': API_VERSION }, headers || {}));
  res.end(s);
}

function control(req, res, path, body, query) {
  if (path === '/_standin/health') return send(res, 200, { ok: true, stand_in: 'stripe' });
  if (path === '/_standin/events' && req.method === 'GET') {
    // ?created[gte]=<unix s>: only events made since then (Stripe's list-filter spelling)
    const since = Number((query && query.get('created[gte]')) || 0);
    return send(res, 200, { data: events.filter((e) => e.created >= since)
      .map((e) => Object.assign({ standin_deliveries: deliveries.get(e.id) }, e)) });
  }
  let m;
  if (req.method === 'POST' && (m = path.match(/^\/_standin\/events\/([^/]+)\/resend$/))) {
    const e = events.find((x) => x.id === m[1]);
    if (!e) return send(res, 404, { error: 'no such event' });
    deliveries.get(e.id).scheduled++;
    deliver(e, 0);
    return send(res, 200, { resent: e.id });
  }
  if (path === '/_standin/config' && req.method === 'POST') {
    let c = {};
    try { c = JSON.parse(body || '{}'); } catch (e) { return send(res, 400, { error: 'bad json' }); }
    if (c.webhooks !== undefined) cfg.webhooks = !!c.webhooks;
    if (c.duplicate_rate !== undefined) cfg.duplicateRate = Number(c.duplicate_rate);
    if (c.max_delay_ms !== undefined) cfg.maxDelayMs = Number(c.max_delay_ms);
    if (c.fail_next !== undefined) cfg.failNext = Number(c.fail_next);
    if (c.webhook_url !== undefined) cfg.webhookUrl = String(c.webhook_url);
    return send(res, 200, { webhooks: cfg.webhooks, duplicate_rate: cfg.duplicateRate, max_delay_ms: cfg.maxDelayMs, fail_next: cfg.failNext });
  }
  return send(res, 404, { error: 'unknown stand-in control' });
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url, 'http://x');
    if (url.pathname.startsWith('/_standin/')) return control(req, res, url.pathname, body, url.searchParams);
    const auth = req.headers.authorization || '';
    const key = (auth.match(/^Bearer (sk_test_\S+)$/) || [])[1];
    if (!key) {
      return send(res, 401, { error: { type: 'invalid_request_error',
        message: 'Invalid API Key provided: ' + (auth.slice(7, 15) || '(none)') + '****' } });
    }
    if (cfg.failNext > 0) { cfg.failNext--; return send(res, 500, { error: { type: 'api_error', message: 'The stand-in was told to fail this request.' } }); }
    const p = req.method === 'GET' || req.method === 'DELETE' ? parseForm(url.search.slice(1)) : parseForm(body);
    const ikey = req.method === 'POST' ? req.headers['idempotency-key'] : undefined;
    const fingerprint = req.method + ' ' + url.pathname + ' ' + body;
    if (ikey) {
      if (ikey.length > 255) return send(res, 400, { error: { type: 'invalid_request_error', message: 'Idempotency-Key must be at most 255 characters.' } });
      const seen = idem.get(key + '\n' + ikey);
      if (seen && seen.fingerprint !== fingerprint) {
        return send(res, 400, { error: { type: 'idempotency_error', message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${ikey}' if you meant to execute a different request.` } });
      }
      if (seen) return send(res, seen.status, seen.body, { 'Idempotent-Replayed': 'true', 'Idempotency-Key': ikey });
    }
    const reqInfo = { id: rid('req'), idempotency_key: ikey || null };
    let status = 200, out;
    try {
      out = expand(route(req.method, url.pathname, p, reqInfo), p.expand);
    } catch (e) {
      if (!(e instanceof StripeError)) { status = 500; out = { error: { type: 'api_error', message: 'stand-in bug: ' + e.message } }; }
      else { status = e.status; out = e.body; }
    }
    if (ikey && status !== 500) idem.set(key + '\n' + ikey, { fingerprint, status, body: out });
    send(res, status, out, ikey ? { 'Idempotency-Key': ikey } : {});
  });
});

server.listen(PORT, '127.0.0.1', () => {
  process.stdout.write(`stripe stand-in listening on http://127.0.0.1:${PORT} (webhooks → ${cfg.webhookUrl || 'none'})\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
