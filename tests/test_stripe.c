/* test_stripe: the stripe binding through a real Lua state — webhook signatures (valid, forged,
 * stale, future, rotated secrets, malformed), nested form encoding, the retry rule and its
 * back-off, and requests against a loopback Stripe-shaped server: pinned version, one
 * Idempotency-Key kept across retries, Stripe's error object mapped to nil, err, code. */
#include <curl/curl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bindings.h"
#include "../bindings/stripe.h"
#include "../core/base64.h"
#include "../core/httpc.h"
#include "snapshot.h"
#include "test.h"
#include "worker.h"

static int port;
static config_t cfg;
static snapshot_t snap;
static worker_t *W;

/* ---- the loopback server ------------------------------------------------------------------ */

static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static int flaky_calls;
static char seen_keys[4][64];     /* Idempotency-Key of each /v1/flaky call */
static char seen_version[64], seen_auth[128], seen_body[512], seen_ctype[128];

typedef struct { char *data; size_t len; } upload_t;

static void copy(char *dst, size_t cap, const char *src) { snprintf(dst, cap, "%s", src ? src : "-"); }

static enum MHD_Result serve(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                             const char *version, const char *data, size_t *size, void **ctx)
{
    (void)cls; (void)version; (void)method;
    upload_t *u = *ctx;
    if (!u) { *ctx = calloc(1, sizeof *u); return MHD_YES; }
    if (*size) {
        u->data = realloc(u->data, u->len + *size + 1);
        memcpy(u->data + u->len, data, *size);
        u->len += *size;
        u->data[u->len] = 0;
        *size = 0;
        return MHD_YES;
    }
    const char *key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
    unsigned status = 200;
    const char *body = "{\"id\":\"pi_1\",\"object\":\"payment_intent\",\"status\":\"requires_payment_method\"}";
    const char *should_retry = NULL;
    pthread_mutex_lock(&seen_mu);
    copy(seen_version, sizeof seen_version, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Stripe-Version"));
    copy(seen_auth, sizeof seen_auth, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization"));
    copy(seen_ctype, sizeof seen_ctype, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type"));
    copy(seen_body, sizeof seen_body, u->data ? u->data : "");
    if (strcmp(url, "/v1/flaky") == 0) {
        if (flaky_calls < 4) copy(seen_keys[flaky_calls], sizeof seen_keys[0], key);
        if (flaky_calls++ < 2) { status = 503; body = "{\"error\":{\"type\":\"api_error\",\"message\":\"try again\"}}"; }
    } else if (strcmp(url, "/v1/always_down") == 0) {
        flaky_calls++;
        status = 500;
        body = "{\"error\":{\"type\":\"api_error\",\"message\":\"down\"}}";
    } else if (strcmp(url, "/v1/declined") == 0) {
        flaky_calls++;
        status = 402;
        body = "{\"error\":{\"type\":\"card_error\",\"code\":\"card_declined\",\"decline_code\":\"generic_decline\",\"message\":\"Your card was declined.\"}}";
    } else if (strcmp(url, "/v1/locked") == 0) {
        flaky_calls++;
        status = 409;
        should_retry = "false";
        body = "{\"error\":{\"type\":\"idempotency_error\",\"message\":\"Keys for idempotent requests can only be used with the same parameters\"}}";
    } else if (strcmp(url, "/v1/missing") == 0) {
        status = 404;
        body = "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"resource_missing\",\"message\":\"No such payment_intent: 'pi_x'\"}}";
    }
    pthread_mutex_unlock(&seen_mu);
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "Request-Id", "req_test");
    if (should_retry) MHD_add_response_header(r, "Stripe-Should-Retry", should_retry);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static void done(void *cls, struct MHD_Connection *c, void **ctx, enum MHD_RequestTerminationCode toe)
{
    (void)cls; (void)c; (void)toe;
    upload_t *u = *ctx;
    if (u) { free(u->data); free(u); }
    *ctx = NULL;
}

/* ---- helpers --------------------------------------------------------------------------- */

static worker_t *new_worker(void)
{
    worker_t *w = calloc(1, sizeof *w);
    w->rng[0] = 0x1234567;
    w->rng[1] = 0x89abcdef;
    char err[512];
    w->L = worker_state_new(w, &snap, 0, err, sizeof err);
    if (!w->L) { printf("# %s\n", err); abort(); }
    lua_pushvalue(w->L, LUA_GLOBALSINDEX);   /* let the test chunks set globals */
    lua_pushnil(w->L);
    lua_setmetatable(w->L, -2);
    lua_pop(w->L, 1);
    return w;
}

static char result[4096];
/* Run chunk; its results joined with "|" ("ERR: msg" when it raised). */
static const char *run(const char *chunk)
{
    lua_State *L = W->L;
    lua_pushinteger(L, port);
    lua_setglobal(L, "PORT");
    lua_settop(L, 0);
    if (luaL_loadstring(L, chunk) != 0 || lua_pcall(L, 0, LUA_MULTRET, 0) != 0) {
        snprintf(result, sizeof result, "ERR: %s", lua_tostring(L, -1));
    } else {
        result[0] = 0;
        for (int i = 1; i <= lua_gettop(L); i++) {
            const char *s = lua_isboolean(L, i) ? (lua_toboolean(L, i) ? "true" : "false") : lua_tostring(L, i);
            size_t n = strlen(result);
            snprintf(result + n, sizeof result - n, "%s%s", i > 1 ? "|" : "", s ? s : "nil");
        }
    }
    lua_settop(L, 0);
    return result;
}

/* A Stripe-Signature header for payload at t, signed with secret (as Stripe computes it). */
static void sign(char *out, size_t cap, long t, const char *payload, const char *secret)
{
    char msg[4096];
    int n = snprintf(msg, sizeof msg, "%ld.%s", t, payload);
    unsigned char md[32];
    unsigned int len = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)msg, (size_t)n, md, &len);
    char hex[65];
    base64_hex(hex, md, 32);
    snprintf(out, cap, "t=%ld,v1=%s", t, hex);
}

static int verify(const char *payload, const char *header, const char *secret, long tol, long now, const char **err)
{
    *err = NULL;
    return stripe_verify_signature(payload, strlen(payload), header, header ? strlen(header) : 0, secret,
                                   strlen(secret), tol, now, err);
}

#define PAYLOAD "{\"id\":\"evt_1\",\"type\":\"payment_intent.succeeded\"}"
#define SECRET "whsec_test_secret"

/* ---- signatures ------------------------------------------------------------------------ */

TEST(a_known_signature_verifies)
{
    /* Computed independently: python3 hmac.new(b"whsec_test_secret", b"1700000000." + PAYLOAD, sha256) */
    const char *err;
    CHECK_INT(verify(PAYLOAD, "t=1700000000,v1=22d8dc182f5c588077683bd378368e29765bfe5df2560112b4f28fef120f0e31", SECRET, 300, 1700000000, &err), 0);
    char h[256];
    sign(h, sizeof h, 1700000000, PAYLOAD, SECRET);
    CHECK_INT(verify(PAYLOAD, h, SECRET, 300, 1700000000, &err), 0);
    CHECK_INT(verify(PAYLOAD, h, SECRET, 300, 1700000000 + 300, &err), 0);
}

TEST(forged_and_changed_payloads_fail)
{
    const char *err;
    char h[256];
    sign(h, sizeof h, 1700000000, PAYLOAD, "whsec_other");
    CHECK_INT(verify(PAYLOAD, h, SECRET, 300, 1700000000, &err), -1);
    CHECK_STR(err, "no signature matches the payload");
    sign(h, sizeof h, 1700000000, PAYLOAD, SECRET);
    char changed[] = PAYLOAD;
    changed[10] ^= 1;   /* one byte */
    CHECK_INT(verify(changed, h, SECRET, 300, 1700000000, &err), -1);
    CHECK_STR(err, "no signature matches the payload");
    h[strlen(h) - 1] = h[strlen(h) - 1] == '0' ? '1' : '0';   /* one hex digit of the signature */
    CHECK_INT(verify(PAYLOAD, h, SECRET, 300, 1700000000, &err), -1);
}

TEST(stale_and_future_timestamps_fail_past_the_tolerance)
{
    const char *err;
    char h[256];
    sign(h, sizeof h, 1700000000, PAYLOAD, SECRET);
    CHECK_INT(verify(PAYLOAD, h, SECRET, 300, 1700000000 + 301, &err), -1);
    CHECK_STR(err, "timestamp outside the tolerance");
    CHECK_INT(verify(PAYLOAD, h, SECRET, 300, 1700000000 - 301, &err), -1);
    CHECK_STR(err, "timestamp outside the tolerance");
    CHECK_INT(verify(PAYLOAD, h, SECRET, 0, 1700000000 + 100000, &err), 0);   /* 0: no tolerance check */
}

TEST(any_of_several_v1_may_match)
{
    const char *err;
    char good[256], bad[256], h[800];
    sign(good, sizeof good, 1700000000, PAYLOAD, SECRET);
    sign(bad, sizeof bad, 1700000000, PAYLOAD, "whsec_old");
    /* "t=...,v1=<old>,v1=<new>,v0=junk": the rotated secret's signature is the second v1. */
    snprintf(h, sizeof h, "%s,%s,v0=deadbeef", bad, strchr(good, ',') + 1);
    CHECK_INT(verify(PAYLOAD, h, SECRET, 300, 1700000000, &err), 0);
    CHECK_INT(verify(PAYLOAD, h, "whsec_old", 300, 1700000000, &err), 0);
    CHECK_INT(verify(PAYLOAD, h, "whsec_third", 300, 1700000000, &err), -1);
}

TEST(missing_and_malformed_headers_fail)
{
    const char *err;
    CHECK_INT(verify(PAYLOAD, NULL, SECRET, 300, 1700000000, &err), -1);
    CHECK_STR(err, "missing Stripe-Signature header");
    CHECK_INT(verify(PAYLOAD, "", SECRET, 300, 1700000000, &err), -1);
    CHECK_STR(err, "missing Stripe-Signature header");
    const char *malformed[] = { "garbage", "v1=abc", "t=,v1=abc", "t=12x,v1=abc", "t=1,t=2,v1=abc", "t=1,=x", "t=1234567890123,v1=a" };
    for (size_t i = 0; i < sizeof malformed / sizeof *malformed; i++) {
        CHECK_INT(verify(PAYLOAD, malformed[i], SECRET, 300, 1700000000, &err), -1);
        CHECK_STR(err, "malformed Stripe-Signature header");
    }
    CHECK_INT(verify(PAYLOAD, "t=1700000000,v0=abc", SECRET, 300, 1700000000, &err), -1);
    CHECK_STR(err, "no v1 signature in Stripe-Signature");
}

TEST(verify_webhook_from_lua)
{
    char h[256], chunk[1024];
    sign(h, sizeof h, (long)time(NULL), PAYLOAD, SECRET);
    snprintf(chunk, sizeof chunk, "local stripe = require 'stripe'; return stripe.verify_webhook('%s', '%s', '%s')", PAYLOAD, h, SECRET);
    CHECK_STR(run(chunk), "true");
    snprintf(chunk, sizeof chunk, "local stripe = require 'stripe'; return stripe.verify_webhook('%s', '%s', 'whsec_no')", PAYLOAD, h);
    CHECK_STR(run(chunk), "nil|no signature matches the payload|invalid");
    CHECK_STR(run("return require('stripe').verify_webhook('x', nil, 's')"), "nil|missing Stripe-Signature header|invalid");
    CHECK(strstr(run("return require('stripe').verify_webhook(nil, 'h', 's')"), "ERR: ") != NULL);
    CHECK(strstr(run("return require('stripe').verify_webhook('x', 'h', '')"), "non-empty webhook secret") != NULL);
    CHECK(strstr(run("return require('stripe').verify_webhook('x', 'h', 's', -1)"), "tolerance") != NULL);
}

/* ---- form encoding ---------------------------------------------------------------------- */

TEST(nested_parameters_encode_as_stripe_reads_them)
{
    CHECK_STR(run("return require('stripe').form{ amount = 1999, currency = 'eur', metadata = { order_id = 'o 1&2' },"
                  " expand = { 'latest_charge', 'customer' }, confirm = true }"),
              "amount=1999&confirm=true&currency=eur&expand[]=latest_charge&expand[]=customer&metadata[order_id]=o%201%262");
    CHECK_STR(run("return require('stripe').form{ items = { { price = 'p_1', quantity = 2 }, { price = 'p_2' } } }"),
              "items[0][price]=p_1&items[0][quantity]=2&items[1][price]=p_2");
    CHECK_STR(run("return require('stripe').form{ a = { b = { c = 1.5 } }, metadata = {} }"), "a[b][c]=1.5&metadata=");
    CHECK_STR(run("return require('stripe').form{}"), "");
    CHECK_STR(run("return require('stripe').form{ ['na me'] = 'é' }"), "na%20me=%C3%A9");
}

TEST(form_misuse_raises)
{
    CHECK(strstr(run("return require('stripe').form{ f = print }"), "ERR: stripe.form: values must be") != NULL);
    CHECK(strstr(run("return require('stripe').form{ [true] = 1 }"), "ERR: stripe.form: parameter names") != NULL);
    CHECK(strstr(run("local t = {}; t.self = t; return require('stripe').form(t)"), "too deep") != NULL);
    CHECK(strstr(run("return require('stripe').form('x')"), "ERR: ") != NULL);
}

/* ---- retries ------------------------------------------------------------------------------ */

TEST(only_network_errors_409_429_and_5xx_are_retried)
{
    CHECK_INT(stripe_should_retry(0, NULL), 1);
    CHECK_INT(stripe_should_retry(409, NULL), 1);
    CHECK_INT(stripe_should_retry(429, NULL), 1);
    CHECK_INT(stripe_should_retry(500, NULL), 1);
    CHECK_INT(stripe_should_retry(503, NULL), 1);
    CHECK_INT(stripe_should_retry(400, NULL), 0);
    CHECK_INT(stripe_should_retry(402, NULL), 0);
    CHECK_INT(stripe_should_retry(404, NULL), 0);
    CHECK_INT(stripe_should_retry(409, "false"), 0);   /* Stripe-Should-Retry wins */
    CHECK_INT(stripe_should_retry(400, "true"), 1);
}

TEST(backoff_doubles_with_jitter_and_a_cap)
{
    CHECK(stripe_backoff_s(1, 0) == 0.25);
    CHECK(stripe_backoff_s(1, 0.999) < 0.5 && stripe_backoff_s(1, 0.999) > 0.49);
    CHECK(stripe_backoff_s(2, 0) == 0.5);
    CHECK(stripe_backoff_s(3, 0) == 1.0);
    CHECK(stripe_backoff_s(20, 0.999) <= 8.0);
    CHECK(stripe_backoff_s(20, 0) == 4.0);
    CHECK_STR(stripe_error_code(402), "invalid");
    CHECK_STR(stripe_error_code(404), "not_found");
    CHECK_STR(stripe_error_code(409), "conflict");
    CHECK_STR(stripe_error_code(429), "unavailable");
    CHECK_STR(stripe_error_code(401), "unavailable");
}

#define REQ "local stripe = require 'stripe'; local o = { api_key = 'sk_test_1', api_base = 'http://127.0.0.1:' .. PORT }; "

TEST(a_post_is_form_encoded_with_the_pinned_version)
{
    CHECK_STR(run(REQ "local pi = stripe.request('POST', '/v1/payment_intents', { amount = 5, metadata = { order_id = 'o1' } }, o);"
                  " return pi.id, pi.status"), "pi_1|requires_payment_method");
    CHECK_STR(seen_version, STRIPE_API_VERSION);
    CHECK_STR(seen_auth, "Bearer sk_test_1");
    CHECK_STR(seen_ctype, "application/x-www-form-urlencoded");
    CHECK_STR(seen_body, "amount=5&metadata[order_id]=o1");
    CHECK_STR(run(REQ "local pi = stripe.request('GET', '/v1/payment_intents/pi_1', { expand = { 'latest_charge' } }, o); return pi.id"), "pi_1");
}

TEST(retries_keep_one_idempotency_key)
{
    flaky_calls = 0;
    CHECK_STR(run(REQ "local pi = stripe.request('POST', '/v1/flaky', { amount = 5 }, o); return pi.id"), "pi_1");
    CHECK_INT(flaky_calls, 3);
    CHECK(strlen(seen_keys[0]) == 36);
    CHECK_STR(seen_keys[1], seen_keys[0]);
    CHECK_STR(seen_keys[2], seen_keys[0]);
    flaky_calls = 0;
    CHECK_STR(run(REQ "o.idempotency_key = 'order-42'; local pi = stripe.request('POST', '/v1/flaky', {}, o); return pi.id"), "pi_1");
    CHECK_STR(seen_keys[0], "order-42");
    CHECK_STR(seen_keys[2], "order-42");
}

TEST(errors_map_to_nil_err_code)
{
    flaky_calls = 0;
    CHECK_STR(run(REQ "local pi, err, code, e = stripe.request('POST', '/v1/declined', {}, o); return pi, err, code, e.type, e.code, e.decline_code, e.status, e.request_id"),
              "nil|Your card was declined.|invalid|card_error|card_declined|generic_decline|402|req_test");
    CHECK_INT(flaky_calls, 1);   /* a 402 is never retried */
    flaky_calls = 0;
    CHECK_STR(run(REQ "local pi, err, code, e = stripe.request('POST', '/v1/locked', {}, o); return pi, code, e.type"),
              "nil|conflict|idempotency_error");
    CHECK_INT(flaky_calls, 1);   /* Stripe-Should-Retry: false */
    flaky_calls = 0;
    CHECK_STR(run(REQ "o.max_retries = 1; local pi, err, code = stripe.request('POST', '/v1/always_down', {}, o); return pi, err, code"),
              "nil|down|unavailable");
    CHECK_INT(flaky_calls, 2);
    CHECK_STR(run(REQ "local pi, err, code, e = stripe.request('GET', '/v1/missing', nil, o); return pi, code, e.code"),
              "nil|not_found|resource_missing");
    CHECK_STR(run(REQ "o.api_base = 'http://127.0.0.1:1'; o.max_retries = 0; local pi, err, code = stripe.request('GET', '/v1/x', nil, o); return pi, code"),
              "nil|unavailable");
    CHECK(strstr(run(REQ "return stripe.request('PUT', '/v1/x', nil, o)"), "ERR: stripe.request: method") != NULL);
    CHECK(strstr(run(REQ "return stripe.request('GET', 'v1/x', nil, o)"), "ERR: stripe.request: expecting a path") != NULL);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    cfg.scripts_dir = "/nonexistent";
    snap.cfg = &cfg;
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL,
                                            serve, NULL, MHD_OPTION_NOTIFY_COMPLETED, done, NULL, MHD_OPTION_END);
    if (!d) { printf("Bail out! cannot start the loopback server\n"); return 1; }
    port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port;
    W = new_worker();
    RUN(a_known_signature_verifies);
    RUN(forged_and_changed_payloads_fail);
    RUN(stale_and_future_timestamps_fail_past_the_tolerance);
    RUN(any_of_several_v1_may_match);
    RUN(missing_and_malformed_headers_fail);
    RUN(verify_webhook_from_lua);
    RUN(nested_parameters_encode_as_stripe_reads_them);
    RUN(form_misuse_raises);
    RUN(only_network_errors_409_429_and_5xx_are_retried);
    RUN(backoff_doubles_with_jitter_and_a_cap);
    RUN(a_post_is_form_encoded_with_the_pinned_version);
    RUN(retries_keep_one_idempotency_key);
    RUN(errors_map_to_nil_err_code);
    lua_close(W->L);
    bindings_worker_free(W);
    httpc_free(W->httpc);
    free(W);
    MHD_stop_daemon(d);
    curl_global_cleanup();
    return test_done();
}
