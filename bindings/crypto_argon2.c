/* crypto_argon2: argon2id password hashing for the crypto binding, on a small pool of hashing
 * threads, so that a hash (19 MiB, tens of ms of CPU) never runs on an HTTP thread.
 *
 *   local h, err, code = crypto.argon2_hash(password)        -- PHC string
 *   local ok, err, code = crypto.argon2_verify(h, password)  -- true | false
 *   local ok, err, code = crypto.dummy_verify(password)      -- false, after a real verify's work
 *
 * Every computation is a job on the pool: ARGON2_THREADS threads (default: the CPUs but one,
 * at least one), run at nice ARGON2_NICE (default 10), so that request threads keep a core and
 * win the CPU over a hash. A handler's call
 * (worker_can_yield) parks the handler: the pool thread that finishes the job posts it to the
 * owning thread's loop (loop_post), which pushes the results and wakes the handler. Any other
 * caller (a runner, `mercato lua`, a coroutine of the handler's own) waits for its job on a
 * condition variable, as it may block. At most ARGON2_QUEUE jobs wait for a thread, and a job
 * that waited ARGON2_WAIT_MS without starting is not computed: both answer nil, "busy",
 * "unavailable" (a 503 with Retry-After from lib.problem), so the CPU and memory a flood of
 * logins may take is bounded and its wait too.
 *
 * Ownership: a parked handler's job is the pool's from submission until its result is taken
 * (freed by the loop callback, or by the pool thread when the request went away first). A
 * request that goes away while parked (worker_wait's cancel) only marks the job orphaned —
 * or frees it when no thread has taken it yet; whoever holds it then frees it. A blocking
 * caller's job lives on that caller's stack. One mutex guards every job's state and the queue. */
#include <argon2.h>
#include <errno.h>
#include <lauxlib.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../core/log.h"
#include "../core/loop.h"
#include "../core/metrics.h"
#include "../host/request.h"
#include "../host/worker.h"
#include "argon2_phc.h"
#include "crypto.h"

/* OWASP password storage cheat sheet, argon2id: m = 19 MiB, t = 2, p = 1. */
#define ARGON2_T 2
#define ARGON2_M_KIB 19456
#define ARGON2_P 1
#define ARGON2_SALT_LEN 16
#define ARGON2_HASH_LEN 32
#define ARGON2_MAX_M_KIB (256UL * 1024)   /* refuse to verify hashes asking for more memory */
#define ENCODED_MAX 128
#define POOL_MAX_THREADS 64
/* A hashing thread unmaps its work area after this long without a job (see area_alloc). */
#define TRIM_IDLE_MS 1000

enum { JOB_HASH, JOB_VERIFY, JOB_DUMMY };
enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE };
/* A job's outcome: VERIFY/DUMMY 1 match, 0 mismatch; any kind -1 busy, -2 malformed hash
 * (verify), -3 failed (err). */
enum { R_MATCH = 1, R_MISMATCH = 0, R_BUSY = -1, R_MALFORMED = -2, R_FAILED = -3 };

typedef struct job {
    loop_post_t post;            /* its completion's link on the owner's loop */
    struct job *next;            /* the queue */
    int kind, state, orphan;
    char *pw;                    /* owned copy of the password, cleansed when freed */
    size_t pwlen;
    char encoded[ENCODED_MAX];   /* VERIFY: the hash to check; HASH: the result */
    int result;
    const char *err;             /* R_FAILED: a static message */
    uint64_t deadline_ns;        /* not started by then: R_BUSY */
    loop_t *loop;                /* the owning HTTP thread's loop; NULL for a blocking caller */
    request_t *r;                /* the parked request (loop jobs) */
} job_t;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t work;         /* a job was queued, or stop */
    pthread_cond_t done;         /* a blocking caller's job, or any job, finished */
    job_t *head, *tail;
    int queued, running;
    int nthreads, queue_max, nice;
    long wait_ms;
    const char *bad_env;         /* a variable that held an invalid value, or NULL */
    int started, stop;
    pthread_t threads[POOL_MAX_THREADS];
    job_t *computing[POOL_MAX_THREADS];   /* the job each thread holds, or NULL */
    metric_cell_t *busy, *queued_gauge;
} g = { .lock = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER };

static pthread_once_t g_settings_once = PTHREAD_ONCE_INIT;
static pthread_once_t g_dummy_once = PTHREAD_ONCE_INIT;
static char g_dummy_hash[ENCODED_MAX];

/* ---- settings ------------------------------------------------------------------------------ */

/* name as a whole number in [min, max] into *out; a bad value is remembered for start-up. */
static void env_long(const char *name, long min, long max, long *out)
{
    const char *v = getenv(name);
    if (!v || !*v) return;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < min || n > max) g.bad_env = name;
    else *out = n;
}

static void settings_load(void)
{
    /* One core is left to the request threads (and the database, often on the same machine):
     * with every core hashing, a request's p99 went 4-12x even with the hashes niced. */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long threads = cores > 1 ? (cores - 1 < POOL_MAX_THREADS ? cores - 1 : POOL_MAX_THREADS) : 1;
    long queue = 128, wait_ms = 2000, nice = 10;
    env_long("ARGON2_THREADS", 1, POOL_MAX_THREADS, &threads);
    env_long("ARGON2_QUEUE", 0, 100000, &queue);
    env_long("ARGON2_WAIT_MS", 0, 600000, &wait_ms);
    env_long("ARGON2_NICE", 0, 19, &nice);
    g.nthreads = (int)threads;
    g.queue_max = (int)queue;
    g.wait_ms = wait_ms;
    g.nice = (int)nice;
}

/* ---- the computation (pool threads) ----------------------------------------------------------- */

/* ---- the work area --------------------------------------------------------------------------- */

/* Each hashing thread's argon2 work area (m KiB: 19 MiB for ours), mapped on its first hash and
 * kept while hashes keep coming — faulting 19 MiB in per hash took the request threads' p99
 * during logins from 1 to 55 ms — and unmapped after TRIM_IDLE_MS without a job, so an idle
 * service does not keep it. (Through malloc it stayed in the thread's arena for good, merged
 * into its top chunk where malloc_trim does not reach.) */
static __thread uint8_t *t_area;
static __thread size_t t_area_len;

static int area_alloc(uint8_t **memory, size_t n)
{
    if (n > t_area_len) {
        if (t_area) munmap(t_area, t_area_len);
        t_area_len = 0;
        t_area = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (t_area == MAP_FAILED) { t_area = NULL; return ARGON2_MEMORY_ALLOCATION_ERROR; }
        t_area_len = n;
    }
    *memory = t_area;
    return ARGON2_OK;
}

static void area_keep(uint8_t *memory, size_t n) { (void)memory; (void)n; }   /* wiped by argon2 */

static void area_release(void)
{
    if (t_area) munmap(t_area, t_area_len);
    t_area = NULL;
    t_area_len = 0;
}

/* The argon2id computation of h's parameters and salt over pw into out (outlen bytes), in this
 * thread's work area. An argon2 status. */
static int compute_ctx(const phc_t *h, const char *pw, size_t pwlen, uint8_t *out, size_t outlen, int verify)
{
    argon2_context ctx = {
        .out = out, .outlen = (uint32_t)outlen,
        .pwd = (uint8_t *)pw, .pwdlen = (uint32_t)pwlen,
        .salt = (uint8_t *)h->salt, .saltlen = (uint32_t)h->saltlen,
        .t_cost = h->t, .m_cost = h->m_kib, .lanes = h->p, .threads = h->p,
        .version = h->version,
        .allocate_cbk = area_alloc, .free_cbk = area_keep,
        .flags = ARGON2_DEFAULT_FLAGS,
    };
    return verify ? argon2_verify_ctx(&ctx, (const char *)h->hash, Argon2_id) : argon2_ctx(&ctx, Argon2_id);
}

/* Hash pw with fresh salt into out (capacity outlen); 0, or -1 with err set. */
static int hash_into(const char *pw, size_t pwlen, char *out, size_t outlen, const char **err)
{
    phc_t h = { .version = ARGON2_VERSION_13, .m_kib = ARGON2_M_KIB, .t = ARGON2_T, .p = ARGON2_P,
                .saltlen = ARGON2_SALT_LEN, .hashlen = ARGON2_HASH_LEN };
    if (RAND_bytes(h.salt, ARGON2_SALT_LEN) != 1) { *err = "random generator failed"; return -1; }
    int rc = compute_ctx(&h, pw, pwlen, h.hash, h.hashlen, 0);
    if (rc != ARGON2_OK) { *err = argon2_error_message(rc); return -1; }
    if (phc_encode(out, outlen, &h) < 0) { *err = "argon2 hash too long"; return -1; }
    return 0;
}

/* The hash unknown-user logins are checked against, made once with the real parameters. */
static void dummy_hash_init(void)
{
    const char *err;
    if (hash_into("mercato-dummy-password", 22, g_dummy_hash, sizeof g_dummy_hash, &err) != 0) g_dummy_hash[0] = 0;
}

/* Whether an encoded hash is argon2id asking for no more than ARGON2_MAX_M_KIB of memory. */
static int verifiable(const char *encoded)
{
    if (strncmp(encoded, "$argon2id$", 10) != 0) return 0;
    const char *m = strstr(encoded, "$m=");
    if (!m) return 0;
    char *end;
    unsigned long kib = strtoul(m + 3, &end, 10);
    return end != m + 3 && kib <= ARGON2_MAX_M_KIB;
}

static void compute(job_t *j)
{
    if (j->kind == JOB_HASH) {
        j->result = hash_into(j->pw, j->pwlen, j->encoded, sizeof j->encoded, &j->err) == 0 ? R_MATCH : R_FAILED;
        return;
    }
    const char *encoded = j->encoded;
    if (j->kind == JOB_DUMMY) {
        if (!g_dummy_hash[0]) { j->result = R_FAILED; j->err = "argon2 unavailable"; return; }
        encoded = g_dummy_hash;
    }
    phc_t h;
    uint8_t out[PHC_MAX_HASH];
    int rc = phc_decode(encoded, &h) == 0 ? compute_ctx(&h, j->pw, j->pwlen, out, h.hashlen, 1) : ARGON2_DECODING_FAIL;
    j->result = rc == ARGON2_OK ? (j->kind == JOB_DUMMY ? R_MISMATCH : R_MATCH)
                : rc == ARGON2_VERIFY_MISMATCH ? R_MISMATCH : R_MALFORMED;
}

static void job_free(job_t *j)
{
    if (j->pw) OPENSSL_clear_free(j->pw, j->pwlen + 1);
    free(j);
}

static void on_job_done(loop_t *loop, void *arg);

/* Wait on g.work (g.lock held) for at most ms; 0, or ETIMEDOUT. */
static int idle_wait(long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    return pthread_cond_clockwait(&g.work, &g.lock, CLOCK_MONOTONIC, &ts);
}

static void *pool_main(void *arg)
{
    int self = (int)(intptr_t)arg;
    char name[16];
    snprintf(name, sizeof name, "argon2-%d", self);
    pthread_setname_np(pthread_self(), name);
    /* Linux nice is per thread: requests on the HTTP threads preempt a hash at once. */
    if (g.nice && setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), g.nice) != 0)
        log_debug("argon2: cannot lower the hashing thread's priority: %s", strerror(errno));
    /* Before any job: the first unknown-user login must cost what the others do. */
    pthread_once(&g_dummy_once, dummy_hash_init);
    int holding = 1;   /* this thread may hold a work area (the dummy hash's) */
    pthread_mutex_lock(&g.lock);
    for (;;) {
        while (!g.head && !g.stop) {
            if (!holding) { pthread_cond_wait(&g.work, &g.lock); continue; }
            if (idle_wait(TRIM_IDLE_MS) != ETIMEDOUT || g.head || g.stop) continue;
            holding = 0;
            pthread_mutex_unlock(&g.lock);   /* unmapping 19 MiB is not free: others may submit */
            area_release();
            pthread_mutex_lock(&g.lock);
        }
        job_t *j = g.head;
        if (!j) break;   /* stopping, and nothing left */
        g.head = j->next;
        if (!g.head) g.tail = NULL;
        g.queued--;
        g.running++;
        g.computing[self] = j;
        j->state = JOB_RUNNING;
        if (g.queued_gauge) metrics_cell_set(g.queued_gauge, g.queued);
        pthread_mutex_unlock(&g.lock);

        holding = 1;
        if (loop_now_ns() > j->deadline_ns) {
            j->result = R_BUSY;
            if (g.busy) metrics_cell_add(g.busy, 1);
        } else {
            compute(j);
        }

        pthread_mutex_lock(&g.lock);
        g.running--;
        g.computing[self] = NULL;
        j->state = JOB_DONE;
        if (j->orphan) job_free(j);                                 /* its request went away */
        else if (j->loop) loop_post(j->loop, &j->post, on_job_done, j);   /* under the lock: see pool_forget */
        pthread_cond_broadcast(&g.done);
    }
    pthread_mutex_unlock(&g.lock);
    area_release();
    return NULL;
}

/* Start the threads (with g.lock held); 0, or -1 when none could start. */
static int pool_start_locked(void)
{
    if (g.started) return 0;
    int n = 0;
    for (int i = 0; i < g.nthreads; i++)
        if (pthread_create(&g.threads[n], NULL, pool_main, (void *)(intptr_t)i) == 0) n++;
    if (!n) return -1;
    g.nthreads = n;
    g.started = 1;
    return 0;
}

/* Queue j (the pool starts on the first job). 0, or -1 when the queue is full (busy). */
static int submit(job_t *j)
{
    pthread_once(&g_settings_once, settings_load);
    j->state = JOB_QUEUED;
    j->next = NULL;
    pthread_mutex_lock(&g.lock);
    /* Up to queue_max jobs wait, beyond the ones idle threads take at once; only a job that
     * has to wait gets a deadline. */
    int started = !g.stop && pool_start_locked() == 0;
    int idle = g.nthreads - g.running - g.queued;
    if (!started || (idle <= 0 && g.queued >= g.queue_max + g.nthreads - g.running)) {
        pthread_mutex_unlock(&g.lock);
        if (g.busy) metrics_cell_add(g.busy, 1);
        return -1;
    }
    j->deadline_ns = idle > 0 ? UINT64_MAX : loop_now_ns() + (uint64_t)g.wait_ms * 1000000ull;
    if (g.tail) g.tail->next = j;
    else g.head = j;
    g.tail = j;
    g.queued++;
    if (g.queued_gauge) metrics_cell_set(g.queued_gauge, g.queued);
    pthread_cond_signal(&g.work);
    pthread_mutex_unlock(&g.lock);
    return 0;
}

/* ---- owners: a parked handler, or a blocking caller --------------------------------------------- */

/* Push what the Lua function returns for a finished job; the count. */
static int push_result(lua_State *L, const job_t *j)
{
    switch (j->result) {
    case R_BUSY:
        lua_pushnil(L);
        lua_pushstring(L, "busy");
        lua_pushstring(L, "unavailable");
        return 3;
    case R_MALFORMED:
        lua_pushnil(L);
        lua_pushstring(L, "malformed argon2id hash");
        lua_pushstring(L, "invalid");
        return 3;
    case R_FAILED:
        lua_pushnil(L);
        lua_pushstring(L, j->err ? j->err : "argon2 failed");
        lua_pushstring(L, "unavailable");
        return 3;
    default:
        if (j->kind == JOB_HASH) lua_pushstring(L, j->encoded);
        else lua_pushboolean(L, j->result == R_MATCH);
        return 1;
    }
}

/* On the owning loop's thread: hand the result to the parked handler, or drop it. */
static void on_job_done(loop_t *loop, void *arg)
{
    job_t *j = arg;
    pthread_mutex_lock(&g.lock);
    int orphan = j->orphan || !loop;   /* no loop: it is being freed with the post queued */
    pthread_mutex_unlock(&g.lock);
    if (!orphan) worker_wake(j->r, push_result(j->r->co, j));
    job_free(j);
}

/* worker_wait's cancel hook: the request is gone. A job no thread took is freed here; one
 * being computed, or done and posted, is marked, and its holder frees it. */
static void job_cancel(void *arg)
{
    job_t *j = arg;
    pthread_mutex_lock(&g.lock);
    if (j->state == JOB_QUEUED) {
        job_t **pp = &g.head, *prev = NULL;
        while (*pp && *pp != j) { prev = *pp; pp = &(*pp)->next; }
        if (*pp) {
            *pp = j->next;
            if (g.tail == j) g.tail = prev;
            g.queued--;
        }
        job_free(j);
    } else {
        j->orphan = 1;
    }
    pthread_mutex_unlock(&g.lock);
}

/* Run a job for the calling Lua code: park the handler, or block until done. */
static int run(lua_State *L, int kind, const char *encoded, const char *pw, size_t pwlen)
{
    if (worker_can_yield(L)) {
        worker_t *w = worker_from_lua(L);
        job_t *j = calloc(1, sizeof *j);
        char *copy = j ? malloc(pwlen + 1) : NULL;
        if (!copy) {
            free(j);
            lua_pushnil(L);
            lua_pushstring(L, "argon2: out of memory");
            lua_pushstring(L, "unavailable");
            return 3;
        }
        memcpy(copy, pw, pwlen);
        copy[pwlen] = 0;
        j->pw = copy;
        j->pwlen = pwlen;
        j->kind = kind;
        if (encoded) snprintf(j->encoded, sizeof j->encoded, "%s", encoded);
        j->loop = w->loop;
        j->r = w->cur;
        if (submit(j) != 0) {
            j->result = R_BUSY;
            int n = push_result(L, j);
            job_free(j);
            return n;
        }
        return worker_wait(L, job_cancel, j);   /* the job is the pool's now */
    }
    /* May block: the job lives here until its thread is done with it. pw stays valid (it is
     * an argument of this call) and nothing else can free the job. */
    job_t j = { .kind = kind, .pw = NULL, .pwlen = pwlen };
    if (encoded) snprintf(j.encoded, sizeof j.encoded, "%s", encoded);
    j.pw = (char *)pw;
    if (submit(&j) != 0) {
        j.result = R_BUSY;
    } else {
        pthread_mutex_lock(&g.lock);
        while (j.state != JOB_DONE) pthread_cond_wait(&g.done, &g.lock);
        pthread_mutex_unlock(&g.lock);
    }
    return push_result(L, &j);
}

/* ---- Lua bindings ------------------------------------------------------------------------------ */

/* crypto.argon2_hash(password) → PHC string, or nil, err, code ("busy" → "unavailable"). */
static int l_argon2_hash(lua_State *L)
{
    size_t n;
    const char *pw = luaL_checklstring(L, 1, &n);
    return run(L, JOB_HASH, NULL, pw, n);
}

/* crypto.argon2_verify(hash, password) → true | false | nil, err, code. */
static int l_argon2_verify(lua_State *L)
{
    const char *encoded = luaL_checkstring(L, 1);
    size_t n;
    const char *pw = luaL_checklstring(L, 2, &n);
    if (strlen(encoded) >= ENCODED_MAX || !verifiable(encoded)) {
        lua_pushnil(L);
        lua_pushstring(L, "malformed argon2id hash");
        lua_pushstring(L, "invalid");
        return 3;
    }
    return run(L, JOB_VERIFY, encoded, pw, n);
}

/* crypto.dummy_verify(password) → false, after the work a real verify costs (unknown users). */
static int l_dummy_verify(lua_State *L)
{
    size_t n;
    const char *pw = luaL_checklstring(L, 1, &n);
    return run(L, JOB_DUMMY, NULL, pw, n);
}

const luaL_Reg crypto_argon2_fns[] = {
    { "argon2_hash", l_argon2_hash }, { "argon2_verify", l_argon2_verify }, { "dummy_verify", l_dummy_verify },
    { NULL, NULL },
};

/* ---- process and worker life -------------------------------------------------------------------- */

int crypto_argon2_init(void)
{
    pthread_once(&g_settings_once, settings_load);
    if (g.bad_env) {
        fprintf(stderr, "mercato: %s must be a whole number in its range (see the README)\n", g.bad_env);
        return -1;
    }
    if (!g.busy) {
        g.busy = metrics_counter0("argon2_busy_total", "argon2id jobs refused: the queue was full or the wait too long.");
        g.queued_gauge = metrics_gauge0("argon2_queued", "argon2id jobs waiting for a hashing thread.");
    }
    return 0;
}

void crypto_argon2_cleanup(void)
{
    pthread_mutex_lock(&g.lock);
    int started = g.started;
    g.stop = 1;
    pthread_cond_broadcast(&g.work);
    pthread_mutex_unlock(&g.lock);
    for (int i = 0; started && i < g.nthreads; i++) pthread_join(g.threads[i], NULL);
    pthread_mutex_lock(&g.lock);
    g.started = 0;
    g.stop = 0;   /* a later job (tests) starts the threads again */
    g.busy = g.queued_gauge = NULL;
    pthread_mutex_unlock(&g.lock);
}

/* The worker's loop is about to be freed: no job may be posted to it afterwards. Jobs of its
 * requests that no thread took are dropped; the ones being computed are waited for (their
 * posts then run, with a NULL loop, when the loop is freed). */
void crypto_argon2_worker_free(worker_t *w)
{
    if (!w->loop) return;
    pthread_mutex_lock(&g.lock);
    for (job_t **pp = &g.head; *pp;) {
        job_t *j = *pp;
        if (j->loop != w->loop) { pp = &j->next; continue; }
        *pp = j->next;
        g.queued--;
        job_free(j);
    }
    g.tail = NULL;
    for (job_t *j = g.head; j; j = j->next) g.tail = j;
    for (int i = 0; i < POOL_MAX_THREADS;) {
        if (g.computing[i] && g.computing[i]->loop == w->loop) {
            pthread_cond_wait(&g.done, &g.lock);   /* at most one hash's time, at shutdown */
            i = 0;
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&g.lock);
}
