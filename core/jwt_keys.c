/* jwt_keys: the process-wide RS256 keyset — verification keys by kid behind a rwlock, the
 * signing key, and the JWK Set built from them.
 *
 * Where keys come from (read once at start, in the jwt binding's global_init):
 *   JWT_PRIVATE_KEY_FILE  PEM private key (the user service): signs; its public half verifies.
 *   JWT_PUBLIC_KEYS_DIR   every *.pem in it (public or private) verifies and is published in the
 *                         JWKS. Rotation: move the old key here, point JWT_PRIVATE_KEY_FILE at the
 *                         new one, restart; delete the old file once its tokens expired (15 min).
 *   JWT_PUBLIC_KEY_FILE   one PEM public key (a service that only verifies).
 *   JWKS_URL              the user service's /.well-known/jwks.json, fetched by a thread of its
 *                         own (libcurl, 3 s timeout), never on a request: at start (init waits
 *                         for that first attempt, at most 3 s), every JWKS_REFRESH_S (300), after
 *                         a failure again with back-off (1 s doubling to 60 s), and — when a
 *                         token names a kid nobody knows — once more, no sooner than
 *                         JWKS_MIN_REFETCH_S (30) after the previous attempt (2 s while none has
 *                         succeeded, so start-up order does not matter). That token is refused
 *                         at once (401; 503 while no fetch has succeeded): random kids cost one
 *                         fetch per 30 s and no wait. A failed fetch keeps the keys it had.
 * A kid is the key's RFC 7638 thumbprint unless the JWKS names it. Only RSA keys of at least
 * 2048 bits are accepted. */
#include "jwt_keys.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "base64.h"
#include "json_reader.h"

#define JWKS_MAX_BYTES ((size_t)512 * 1024)
#define KEY_FILE_MAX (64 * 1024)
#define JWKS_TIMEOUT_MS 3000L           /* one fetch, and how long start-up waits for the first */
#define JWKS_BACKOFF_MAX_S 60
#define JWKS_FIRST_REFETCH_S 2          /* unknown kids, while no fetch has succeeded */

typedef struct {
    char kid[JWT_KID_MAX];
    EVP_PKEY *key;        /* public half only */
    char *n, *e;          /* base64url modulus and exponent, for the JWKS */
    int from_jwks;
} jwk_t;

static struct {
    pthread_rwlock_t lock;          /* guards keys/nkeys/signing; readers take key references */
    jwk_t *keys;
    int nkeys;
    EVP_PKEY *signing;
    char signing_kid[JWT_KID_MAX];
    char issuer[256], audience[256];
    char *jwks_url;                 /* owned; NULL when not configured */
    EVP_MD *sha256;                 /* fetched once: EVP_sha256() makes OpenSSL 3 fetch per use */
    /* The refresh thread's schedule, under `refresh`; `wake` tells the thread it changed (or to
     * stop) and tells init the first attempt is over. */
    pthread_mutex_t refresh;
    pthread_cond_t wake;
    pthread_t thread;
    int running;                    /* the thread was started (joined by cleanup) */
    atomic_int stop;                /* also read by libcurl's progress callback: abort the fetch */
    long refresh_s, min_refetch_s;  /* JWKS_REFRESH_S, JWKS_MIN_REFETCH_S */
    uint64_t due_ns;                /* the next scheduled fetch (monotonic) */
    uint64_t asked_ns;              /* an unknown kid asked for a fetch at this time, or 0 */
    uint64_t last_ns;               /* when the last attempt started, 0 = never */
    int attempts, failures;         /* attempts made; failures in a row */
    int jwks_ok;                    /* a fetch has succeeded */
} g = { .lock = PTHREAD_RWLOCK_INITIALIZER, .refresh = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER };

/* ---- keys ------------------------------------------------------------------------------- */

/* Monotonic nanoseconds. */
static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define SEC_NS(s) ((uint64_t)(s) * 1000000000ull)

/* Whether kid is non-empty and made only of characters that need no escaping anywhere. */
static int kid_ok(const char *kid)
{
    size_t n = strlen(kid);
    if (n == 0 || n >= JWT_KID_MAX) return 0;
    return strspn(kid, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:+/=") == n;
}

/* Fail PEM decryption instead of prompting on the terminal for a passphrase. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf; (void)size; (void)rwflag; (void)u;
    return -1;
}

/* Whether key is RSA with a modulus of at least 2048 bits. */
static int rsa_ok(EVP_PKEY *key)
{
    return EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) >= 2048;
}

EVP_PKEY *jwt_keys_parse_pem(const char *pem, size_t len, int want_private, const char **err)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *key = NULL;
    if (bio && !want_private) key = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
    if (bio && !key) {
        BIO_reset(bio);
        key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    }
    BIO_free(bio);
    ERR_clear_error();
    if (!key) { *err = want_private ? "not a PEM private key" : "not a PEM key"; return NULL; }
    if (!rsa_ok(key)) { EVP_PKEY_free(key); *err = "not an RSA key of at least 2048 bits"; return NULL; }
    return key;
}

/* The base64url big-endian bytes of an RSA parameter ("n", "e"); malloc-ed, or NULL. */
static char *rsa_param_b64(EVP_PKEY *key, const char *name)
{
    BIGNUM *bn = NULL;
    if (!EVP_PKEY_get_bn_param(key, name, &bn)) return NULL;
    int n = BN_num_bytes(bn);
    unsigned char *bin = malloc((size_t)n + 1);
    char *out = malloc(base64_encoded_len((size_t)n, 1) + 1);
    if (bin && out) {
        BN_bn2bin(bn, bin);
        base64_encode(out, bin, (size_t)n, 1);
    } else {
        free(out);
        out = NULL;
    }
    free(bin);
    BN_free(bn);
    return out;
}

/* A public-only copy of key (a private key loses its private half), or NULL. */
static EVP_PKEY *public_copy(EVP_PKEY *key)
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(key, &der);
    if (n <= 0) return NULL;
    const unsigned char *p = der;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, n);
    OPENSSL_free(der);
    return pub;
}

int jwt_keys_thumbprint(EVP_PKEY *key, char *out, size_t outlen)
{
    char *n = rsa_param_b64(key, OSSL_PKEY_PARAM_RSA_N), *e = rsa_param_b64(key, OSSL_PKEY_PARAM_RSA_E);
    int rc = -1;
    if (n && e && outlen >= 44) {
        /* RFC 7638 §3.2: the required members in lexicographic order, no white space. */
        buf_t b;
        buf_init(&b);
        buf_addf(&b, "{\"e\":\"%s\",\"kty\":\"RSA\",\"n\":\"%s\"}", e, n);
        unsigned char md[32];
        if (!b.failed && EVP_Digest(b.data, b.len, md, NULL, EVP_sha256(), NULL) == 1) {
            base64_encode(out, md, sizeof md, 1);
            rc = 0;
        }
        buf_free(&b);
    }
    free(n);
    free(e);
    return rc;
}

/* Fill a keyset entry for key under kid (NULL: thumbprint); 0, or -1 with nothing held. */
static int entry_make(jwk_t *k, EVP_PKEY *key, const char *kid, int from_jwks)
{
    memset(k, 0, sizeof *k);
    if (!rsa_ok(key)) return -1;
    if (kid) snprintf(k->kid, sizeof k->kid, "%s", kid);
    else if (jwt_keys_thumbprint(key, k->kid, sizeof k->kid) != 0) return -1;
    k->key = public_copy(key);
    k->n = rsa_param_b64(key, OSSL_PKEY_PARAM_RSA_N);
    k->e = rsa_param_b64(key, OSSL_PKEY_PARAM_RSA_E);
    k->from_jwks = from_jwks;
    if (k->key && k->n && k->e && kid_ok(k->kid)) return 0;
    EVP_PKEY_free(k->key);
    free(k->n);
    free(k->e);
    return -1;
}

static void entry_free(jwk_t *k)
{
    EVP_PKEY_free(k->key);
    free(k->n);
    free(k->e);
}

int jwt_keys_add(EVP_PKEY *key, const char *kid)
{
    jwk_t k;
    if (entry_make(&k, key, kid, 0) != 0) return -1;
    pthread_rwlock_wrlock(&g.lock);
    int dup = 0;
    for (int i = 0; i < g.nkeys; i++) dup |= strcmp(g.keys[i].kid, k.kid) == 0;
    jwk_t *grown = dup ? NULL : realloc(g.keys, (size_t)(g.nkeys + 1) * sizeof *g.keys);
    if (grown) {
        g.keys = grown;
        g.keys[g.nkeys++] = k;
    }
    pthread_rwlock_unlock(&g.lock);
    if (!grown) entry_free(&k);
    return dup || grown ? 0 : -1;   /* the same key twice (file + dir) is fine */
}

/* ---- JWKS fetch ----------------------------------------------------------------------- */

/* libcurl write callback: append to the buf_t, refusing bodies over JWKS_MAX_BYTES. */
static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    buf_t *b = ud;
    size_t n = size * nmemb;
    if (b->len + n > JWKS_MAX_BYTES) return 0;
    buf_add(b, p, n);
    return b->failed ? 0 : n;
}

/* libcurl progress callback: abort the transfer when the keyset is being cleaned up. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    (void)ud; (void)dltotal; (void)dlnow; (void)ultotal; (void)ulnow;
    return atomic_load(&g.stop);
}

/* GET url into out; 0 on a 200 answer, else -1 with why. Blocks: the refresh thread only. */
static int http_get(const char *url, buf_t *out, char *why, size_t whylen)
{
    CURL *c = curl_easy_init();
    if (!c) { snprintf(why, whylen, "curl_easy_init failed"); return -1; }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, JWKS_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_USERAGENT, "mercato-jwks");
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) { snprintf(why, whylen, "%s", curl_easy_strerror(rc)); return -1; }
    if (status != 200) { snprintf(why, whylen, "HTTP status %ld", status); return -1; }
    return 0;
}

/* An RSA public key from base64url n and e, or NULL. */
static EVP_PKEY *key_from_ne(const char *n64, const char *e64)
{
    size_t nl = strlen(n64), el = strlen(e64);
    unsigned char *nb = malloc(nl / 4 * 3 + 3), eb[16];
    EVP_PKEY *key = NULL;
    long nn = nb ? base64_decode(nb, n64, nl, 1) : -1;
    long en = el <= 20 ? base64_decode(eb, e64, el, 1) : -1;
    BIGNUM *n = nn > 0 ? BN_bin2bn(nb, (int)nn, NULL) : NULL, *e = en > 0 ? BN_bin2bn(eb, (int)en, NULL) : NULL;
    OSSL_PARAM_BLD *bld = n && e ? OSSL_PARAM_BLD_new() : NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    if (bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) &&
        (params = OSSL_PARAM_BLD_to_param(bld)) && (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) &&
        EVP_PKEY_fromdata_init(ctx) > 0)
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    free(nb);
    ERR_clear_error();
    return key;
}

/* The RS256 signing keys of a JWK Set document as entries (malloc-ed array, count in *count);
 * -1 when the document is not a JWK Set. Keys of other types or uses are skipped. */
static int parse_jwks(const char *doc, size_t len, jwk_t **out, int *count)
{
    json_span_t root = { doc, doc + len }, keys, elem, v;
    json_iter_t it;
    *out = NULL;
    *count = 0;
    if (!json_reader_valid(doc, len) || json_reader_member(root, "keys", &keys) != 0 || json_reader_iter(keys, &it) != 0)
        return -1;
    int rc;
    while ((rc = json_reader_next(&it, &elem)) == 1) {
        char kty[16], use[16] = "sig", alg[16] = "RS256", kid[JWT_KID_MAX], n[1400], e[24];
        if (json_reader_member(elem, "kty", &v) != 0 || json_reader_string(v, kty, sizeof kty) != 0) continue;
        if (json_reader_member(elem, "use", &v) == 0 && json_reader_string(v, use, sizeof use) != 0) continue;
        if (json_reader_member(elem, "alg", &v) == 0 && json_reader_string(v, alg, sizeof alg) != 0) continue;
        if (strcmp(kty, "RSA") != 0 || strcmp(use, "sig") != 0 || strcmp(alg, "RS256") != 0) continue;
        if (json_reader_member(elem, "kid", &v) != 0 || json_reader_string(v, kid, sizeof kid) != 0 || !kid_ok(kid)) continue;
        if (json_reader_member(elem, "n", &v) != 0 || json_reader_string(v, n, sizeof n) != 0) continue;
        if (json_reader_member(elem, "e", &v) != 0 || json_reader_string(v, e, sizeof e) != 0) continue;
        EVP_PKEY *key = key_from_ne(n, e);
        jwk_t k;
        int ok = key && entry_make(&k, key, kid, 1) == 0;
        EVP_PKEY_free(key);
        if (!ok) continue;
        jwk_t *grown = realloc(*out, (size_t)(*count + 1) * sizeof **out);
        if (!grown) { entry_free(&k); continue; }
        *out = grown;
        (*out)[(*count)++] = k;
    }
    if (rc < 0) {   /* malformed after some keys: the caller takes nothing, so free them */
        for (int i = 0; i < *count; i++) entry_free(&(*out)[i]);
        free(*out);
        *out = NULL;
        *count = 0;
        return -1;
    }
    return 0;
}

/* Fetch JWKS_URL and replace the JWKS-sourced keys; 0, or -1 leaving the keyset as it was. */
static int jwks_refresh(char *why, size_t whylen)
{
    buf_t body;
    jwk_t *fresh;
    int nfresh;
    buf_init(&body);
    if (http_get(g.jwks_url, &body, why, whylen) != 0) {
        buf_free(&body);
        return -1;
    }
    if (parse_jwks(body.data, body.len, &fresh, &nfresh) != 0) {
        snprintf(why, whylen, "the answer is not a JWK Set");
        buf_free(&body);
        return -1;
    }
    buf_free(&body);
    pthread_rwlock_wrlock(&g.lock);
    int kept = 0;
    for (int i = 0; i < g.nkeys; i++) {
        if (g.keys[i].from_jwks) entry_free(&g.keys[i]);
        else g.keys[kept++] = g.keys[i];
    }
    jwk_t *grown = realloc(g.keys, (size_t)(kept + nfresh + 1) * sizeof *g.keys);
    if (grown) {
        g.keys = grown;
        if (nfresh) memcpy(g.keys + kept, fresh, (size_t)nfresh * sizeof *fresh);   /* fresh is NULL when 0 */
        kept += nfresh;
    } else {
        for (int i = 0; i < nfresh; i++) entry_free(&fresh[i]);
    }
    g.nkeys = kept;
    pthread_rwlock_unlock(&g.lock);
    free(fresh);
    if (!grown) snprintf(why, whylen, "out of memory");
    return grown ? 0 : -1;
}

/* ---- the refresh thread ------------------------------------------------------------------ */

/* When the thread should fetch next (with g.refresh held). */
static uint64_t next_fetch_ns(void)
{
    return g.asked_ns && g.asked_ns < g.due_ns ? g.asked_ns : g.due_ns;
}

static void *refresh_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "jwks-refresh");
    pthread_mutex_lock(&g.refresh);
    while (!atomic_load(&g.stop)) {
        uint64_t now = mono_ns(), next = next_fetch_ns();
        if (now < next) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);   /* the cond waits on CLOCK_MONOTONIC */
            uint64_t at = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + (next - now);
            ts.tv_sec = (time_t)(at / 1000000000ull);
            ts.tv_nsec = (long)(at % 1000000000ull);
            pthread_cond_timedwait(&g.wake, &g.refresh, &ts);
            continue;
        }
        g.last_ns = now;
        if (g.asked_ns && g.asked_ns <= now) g.asked_ns = 0;   /* this attempt answers it */
        pthread_mutex_unlock(&g.refresh);

        char why[256] = "";
        int rc = jwks_refresh(why, sizeof why);

        pthread_mutex_lock(&g.refresh);
        now = mono_ns();
        g.attempts++;
        if (rc == 0) {
            if (!g.jwks_ok || g.failures) log_info("jwks: keys fetched from JWKS_URL");
            g.jwks_ok = 1;
            g.failures = 0;
            g.due_ns = now + SEC_NS(g.refresh_s);
        } else {
            long backoff = g.failures < 6 ? 1L << g.failures : JWKS_BACKOFF_MAX_S;
            if (backoff > JWKS_BACKOFF_MAX_S) backoff = JWKS_BACKOFF_MAX_S;
            if (backoff > g.refresh_s) backoff = g.refresh_s;
            if (!atomic_load(&g.stop))
                log_warn("jwks: fetching JWKS_URL failed (%s); keeping the keys we have, next try in %ld s", why, backoff);
            g.failures++;
            g.due_ns = now + SEC_NS(backoff);
        }
        pthread_cond_broadcast(&g.wake);   /* init waits for the first attempt */
    }
    pthread_mutex_unlock(&g.refresh);
    return NULL;
}

/* An unknown kid: have the thread fetch again, as soon as the rate limit allows. Never waits
 * for the fetch (only for the mutex, which no one holds across I/O). */
static void jwks_ask_refresh(void)
{
    pthread_mutex_lock(&g.refresh);
    uint64_t gap = SEC_NS(g.jwks_ok ? g.min_refetch_s : JWKS_FIRST_REFETCH_S);
    uint64_t at = g.last_ns ? g.last_ns + gap : 0, now = mono_ns();
    if (at < now) at = now;
    if (!g.asked_ns || at < g.asked_ns) {
        g.asked_ns = at;
        if (at < g.due_ns) pthread_cond_broadcast(&g.wake);
    }
    pthread_mutex_unlock(&g.refresh);
}

/* Start the thread and wait for its first attempt (start-up may block, at most one fetch's
 * time). 0, or -1 when the thread cannot start. */
static int refresh_start(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_destroy(&g.wake);
    pthread_cond_init(&g.wake, &ca);
    pthread_condattr_destroy(&ca);
    atomic_store(&g.stop, 0);
    g.due_ns = 0;   /* at once */
    g.asked_ns = g.last_ns = 0;
    g.attempts = g.failures = g.jwks_ok = 0;
    if (pthread_create(&g.thread, NULL, refresh_main, NULL) != 0) return -1;
    g.running = 1;
    pthread_mutex_lock(&g.refresh);
    uint64_t until = mono_ns() + SEC_NS(1) * (JWKS_TIMEOUT_MS + 500) / 1000;
    while (!g.attempts) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        if (now >= until) break;
        ts.tv_sec = (time_t)(until / 1000000000ull);
        ts.tv_nsec = (long)(until % 1000000000ull);
        if (pthread_cond_timedwait(&g.wake, &g.refresh, &ts) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&g.refresh);
    return 0;
}

static void refresh_stop(void)
{
    if (!g.running) return;
    pthread_mutex_lock(&g.refresh);
    atomic_store(&g.stop, 1);
    pthread_cond_broadcast(&g.wake);
    pthread_mutex_unlock(&g.refresh);
    pthread_join(g.thread, NULL);   /* a fetch in flight is aborted by its progress callback */
    g.running = 0;
}

int jwt_keys_fetch_attempts(void)
{
    pthread_mutex_lock(&g.refresh);
    int n = g.attempts;
    pthread_mutex_unlock(&g.refresh);
    return n;
}

/* ---- lookups ------------------------------------------------------------------------------ */

/* A new reference to the key under kid, or NULL; takes the read lock. */
static EVP_PKEY *find(const char *kid)
{
    EVP_PKEY *key = NULL;
    pthread_rwlock_rdlock(&g.lock);
    for (int i = 0; i < g.nkeys && !key; i++)
        if (strcmp(g.keys[i].kid, kid) == 0 && EVP_PKEY_up_ref(g.keys[i].key)) key = g.keys[i].key;
    pthread_rwlock_unlock(&g.lock);
    return key;
}

EVP_PKEY *jwt_keys_lookup(const char *kid, int *unavailable)
{
    EVP_PKEY *key = find(kid);
    *unavailable = 0;
    if (key) return key;
    if (g.jwks_url) {
        jwks_ask_refresh();
        pthread_mutex_lock(&g.refresh);
        *unavailable = !g.jwks_ok;
        pthread_mutex_unlock(&g.refresh);
        return NULL;
    }
    pthread_rwlock_rdlock(&g.lock);
    *unavailable = g.nkeys == 0;   /* no key source configured at all */
    pthread_rwlock_unlock(&g.lock);
    return NULL;
}

EVP_PKEY *jwt_keys_signing(char *kid, size_t kidlen)
{
    EVP_PKEY *key = NULL;
    pthread_rwlock_rdlock(&g.lock);
    if (g.signing && EVP_PKEY_up_ref(g.signing)) {
        key = g.signing;
        snprintf(kid, kidlen, "%s", g.signing_kid);
    }
    pthread_rwlock_unlock(&g.lock);
    return key;
}

size_t jwt_keys_jwks(char *out, size_t cap)
{
    size_t n = 0;
    char dummy[1];
    if (!out || !cap) { out = dummy; cap = 1; }
#define JWKS_PUT(...) \
    n += (size_t)snprintf(out + (n < cap ? n : cap - 1), n < cap ? cap - n : 1, __VA_ARGS__)
    JWKS_PUT("{\"keys\":[");
    pthread_rwlock_rdlock(&g.lock);
    for (int i = 0; i < g.nkeys; i++)
        JWKS_PUT("%s{\"kty\":\"RSA\",\"use\":\"sig\",\"alg\":\"RS256\",\"kid\":\"%s\",\"n\":\"%s\",\"e\":\"%s\"}",
                 i ? "," : "", g.keys[i].kid, g.keys[i].n, g.keys[i].e);
    pthread_rwlock_unlock(&g.lock);
    JWKS_PUT("]}");
#undef JWKS_PUT
    return n;
}

const EVP_MD *jwt_keys_sha256(void) { return g.sha256 ? g.sha256 : EVP_sha256(); }

const char *jwt_keys_issuer(void) { return g.issuer; }
const char *jwt_keys_audience(void) { return g.audience; }

/* ---- start-up and shut-down --------------------------------------------------------------- */

/* Read a whole key file (at most KEY_FILE_MAX bytes) and parse it; NULL with a message printed. */
static EVP_PKEY *load_file(const char *var, const char *path, int want_private)
{
    char pem[KEY_FILE_MAX];
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(pem, 1, sizeof pem, f) : 0;
    if (f) fclose(f);
    const char *err = "cannot be read";
    EVP_PKEY *key = n > 0 && n < sizeof pem ? jwt_keys_parse_pem(pem, n, want_private, &err) : NULL;
    OPENSSL_cleanse(pem, sizeof pem);
    if (!key) fprintf(stderr, "mercato: %s: %s %s\n", var, path, err);
    return key;
}

/* Add every *.pem of JWT_PUBLIC_KEYS_DIR to the verification keys; 0 or -1. */
static int load_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) { fprintf(stderr, "mercato: JWT_PUBLIC_KEYS_DIR: %s cannot be opened\n", dir); return -1; }
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 5 || strcmp(de->d_name + n - 4, ".pem") != 0) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        EVP_PKEY *key = load_file("JWT_PUBLIC_KEYS_DIR", path, 0);
        rc = key && jwt_keys_add(key, NULL) == 0 ? 0 : -1;
        EVP_PKEY_free(key);
    }
    closedir(d);
    return rc;
}

/* name as whole seconds, 1 to a day, into *out (def when unset); 0, or -1 with a message. */
static int env_seconds(const char *name, long def, long *out)
{
    const char *v = getenv(name);
    *out = def;
    if (!v || !*v) return 0;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < 1 || n > 86400) {
        fprintf(stderr, "mercato: %s must be a whole number of seconds from 1 to 86400\n", name);
        return -1;
    }
    *out = n;
    return 0;
}

int jwt_keys_init(void)
{
    const char *v;
    if (!g.sha256) g.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    snprintf(g.issuer, sizeof g.issuer, "%s", (v = getenv("JWT_ISSUER")) && *v ? v : "mercato");
    snprintf(g.audience, sizeof g.audience, "%s", (v = getenv("JWT_AUDIENCE")) && *v ? v : "mercato");
    if ((v = getenv("JWT_PRIVATE_KEY_FILE")) && *v) {
        EVP_PKEY *key = load_file("JWT_PRIVATE_KEY_FILE", v, 1);
        if (!key || jwt_keys_thumbprint(key, g.signing_kid, sizeof g.signing_kid) != 0 || jwt_keys_add(key, NULL) != 0) {
            EVP_PKEY_free(key);
            return -1;
        }
        g.signing = key;
    }
    if ((v = getenv("JWT_PUBLIC_KEYS_DIR")) && *v && load_dir(v) != 0) return -1;
    if ((v = getenv("JWT_PUBLIC_KEY_FILE")) && *v) {
        EVP_PKEY *key = load_file("JWT_PUBLIC_KEY_FILE", v, 0);
        int rc = key ? jwt_keys_add(key, NULL) : -1;
        EVP_PKEY_free(key);
        if (rc != 0) return -1;
    }
    if ((v = getenv("JWKS_URL")) && *v) {
        if (env_seconds("JWKS_REFRESH_S", 300, &g.refresh_s) != 0 || env_seconds("JWKS_MIN_REFETCH_S", 30, &g.min_refetch_s) != 0)
            return -1;
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(g.jwks_url = strdup(v))) {
            fprintf(stderr, "mercato: JWKS_URL: libcurl cannot be initialised\n");
            return -1;
        }
        if (refresh_start() != 0) {
            fprintf(stderr, "mercato: JWKS_URL: cannot start the refresh thread\n");
            return -1;
        }
    }
    return 0;
}

void jwt_keys_cleanup(void)
{
    refresh_stop();   /* first: it writes the keyset */
    pthread_rwlock_wrlock(&g.lock);
    for (int i = 0; i < g.nkeys; i++) entry_free(&g.keys[i]);
    free(g.keys);
    g.keys = NULL;
    g.nkeys = 0;
    EVP_PKEY_free(g.signing);
    g.signing = NULL;
    g.signing_kid[0] = 0;
    pthread_rwlock_unlock(&g.lock);
    if (g.jwks_url) curl_global_cleanup();
    free(g.jwks_url);
    g.jwks_url = NULL;
    g.jwks_ok = 0;
    EVP_MD_free(g.sha256);
    g.sha256 = NULL;
}
