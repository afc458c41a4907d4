/* metrics: the process's metrics registry, rendered in the Prometheus text format. */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const double metrics_http_buckets[METRICS_NBUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

#define MAX_SHARDS 1024
#define MAX_BUCKETS 32

typedef struct {
    char method[8];
    char *pattern;
} route_slot_t;

struct metric_cell {
    metric_cell_t *next;
    const metric_family_t *family;
    char *values[METRICS_MAX_LABELS];
    _Atomic uint64_t bits;                 /* counter/gauge value as double bits */
    _Atomic uint64_t bucket[MAX_BUCKETS];  /* histogram, non-cumulative */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_bits;
};

struct metric_family {
    _Atomic(metric_family_t *) next;   /* published with release order: scrapes walk unlocked */
    char *name, *help;
    metric_kind_t kind;
    int nlabels;
    char *labels[METRICS_MAX_LABELS];
    int nbuckets;
    double buckets[MAX_BUCKETS];
    metric_cell_t *_Atomic cells;   /* prepend-only list: readers walk it without the lock */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static metrics_shard_t *g_shards[MAX_SHARDS];
static _Atomic int g_nshards;
static route_slot_t g_slots[METRICS_MAX_ROUTES];
static _Atomic int g_nslots;
static _Atomic int g_status_code[METRICS_MAX_STATUS];   /* index → status code, 0 = free */
static _Atomic(metric_family_t *) g_families, *g_families_tail = &g_families;
static time_t g_start_time;

/* ---------------------------------------------------------------------------------------- */

static inline void relaxed_add(_Atomic uint64_t *p, uint64_t v)
{
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + v, memory_order_relaxed);
}

static uint64_t dbits(double d) { uint64_t u; memcpy(&u, &d, sizeof u); return u; }
static double bitsd(uint64_t u) { double d; memcpy(&d, &u, sizeof d); return d; }

static void atomic_add_double(_Atomic uint64_t *p, double v)
{
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(p, &old, dbits(bitsd(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed)) {}
}

metrics_shard_t *metrics_shard_new(void)
{
    metrics_shard_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_lock(&g_lock);
    int n = atomic_load(&g_nshards);
    if (n == MAX_SHARDS) { pthread_mutex_unlock(&g_lock); free(s); return NULL; }
    g_shards[n] = s;
    atomic_store(&g_nshards, n + 1);
    if (!g_start_time) g_start_time = time(NULL);
    pthread_mutex_unlock(&g_lock);
    return s;
}

int metrics_route_slot(const char *method, const char *pattern)
{
    pthread_mutex_lock(&g_lock);
    int n = atomic_load(&g_nslots);
    if (n == 0) {   /* slot 0: requests that matched no route */
        snprintf(g_slots[0].method, sizeof g_slots[0].method, "%s", "");
        g_slots[0].pattern = strdup("unmatched");
        n = 1;
        atomic_store(&g_nslots, 1);
    }
    int found = -1;
    for (int i = 1; i < n; i++)
        if (strcmp(g_slots[i].method, method) == 0 && strcmp(g_slots[i].pattern, pattern) == 0) found = i;
    if (found < 0 && n < METRICS_MAX_ROUTES) {
        snprintf(g_slots[n].method, sizeof g_slots[n].method, "%s", method);
        g_slots[n].pattern = strdup(pattern);
        if (g_slots[n].pattern) {
            found = n;
            atomic_store(&g_nslots, n + 1);
        }
    }
    pthread_mutex_unlock(&g_lock);
    return found;
}

const char *metrics_route_pattern(int slot)
{
    /* A slot below g_nslots was filled before the count was published (release order). */
    return slot > 0 && slot < METRICS_MAX_ROUTES && slot < atomic_load(&g_nslots) ? g_slots[slot].pattern : NULL;
}

/* Index of a status code in the per-route status arrays, claimed on first sight. */
static int status_index(int status)
{
    for (int i = 0; i < METRICS_MAX_STATUS; i++) {
        int code = atomic_load_explicit(&g_status_code[i], memory_order_relaxed);
        if (code == status) return i;
        if (code == 0) {
            int expected = 0;
            if (atomic_compare_exchange_strong(&g_status_code[i], &expected, status)) return i;
            if (expected == status) return i;
        }
    }
    return METRICS_MAX_STATUS - 1;   /* a pathological spread of codes lands in the last one */
}

void metrics_observe_request(metrics_shard_t *s, int slot, int status, uint64_t duration_ns)
{
    if (slot < 0 || slot >= METRICS_MAX_ROUTES) slot = 0;
    metrics_route_t *r = &s->routes[slot];
    relaxed_add(&r->status[status_index(status)], 1);
    double secs = (double)duration_ns / 1e9;
    int b = 0;
    while (b < METRICS_NBUCKETS && secs > metrics_http_buckets[b]) b++;
    if (b < METRICS_NBUCKETS) relaxed_add(&r->bucket[b], 1);
    relaxed_add(&r->count, 1);
    relaxed_add(&r->sum_ns, duration_ns);
}

/* ---------------------------------------------------------------------------------------- */

metric_family_t *metrics_family(const char *name, const char *help, metric_kind_t kind,
                                int nlabels, const char *const *labels,
                                int nbuckets, const double *buckets, char *err, size_t errlen)
{
    if (nlabels < 0 || nlabels > METRICS_MAX_LABELS) {
        snprintf(err, errlen, "metric %s: at most %d labels", name, METRICS_MAX_LABELS);
        return NULL;
    }
    if (!buckets) { buckets = metrics_http_buckets; nbuckets = METRICS_NBUCKETS; }
    if (nbuckets < 1 || nbuckets > MAX_BUCKETS) {
        snprintf(err, errlen, "metric %s: 1 to %d buckets", name, MAX_BUCKETS);
        return NULL;
    }
    for (const char *p = name; *p; p++) {
        if (!(*p == '_' || *p == ':' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (p != name && *p >= '0' && *p <= '9'))) {
            snprintf(err, errlen, "metric name '%s' is not valid", name);
            return NULL;
        }
    }
    for (int i = 0; i < nlabels; i++) {
        /* Prometheus: [a-zA-Z_][a-zA-Z0-9_]*, "__" reserved, "le" a histogram's own. */
        const char *l = labels[i];
        int ok = l && *l && !(l[0] == '_' && l[1] == '_') && !(kind == METRIC_HISTOGRAM && strcmp(l, "le") == 0);
        for (const char *p = l; ok && *p; p++)
            ok = *p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (p != l && *p >= '0' && *p <= '9');
        if (!ok) {
            snprintf(err, errlen, "metric %s: label name '%s' is not valid", name, l ? l : "");
            return NULL;
        }
    }
    pthread_mutex_lock(&g_lock);
    for (metric_family_t *f = atomic_load(&g_families); f; f = atomic_load(&f->next)) {
        if (strcmp(f->name, name) != 0) continue;
        int same = f->kind == kind && f->nlabels == nlabels;
        for (int i = 0; same && i < nlabels; i++) same = strcmp(f->labels[i], labels[i]) == 0;
        int same_buckets = kind != METRIC_HISTOGRAM ||
                           (f->nbuckets == nbuckets && memcmp(f->buckets, buckets, (size_t)nbuckets * sizeof(double)) == 0);
        pthread_mutex_unlock(&g_lock);
        if (!same) {
            snprintf(err, errlen, "metric %s is already declared with another kind or labels", name);
            return NULL;
        }
        if (!same_buckets) {
            snprintf(err, errlen, "metric %s is already declared with other buckets", name);
            return NULL;
        }
        return f;
    }
    metric_family_t *f = calloc(1, sizeof *f);
    if (f) {
        f->name = strdup(name);
        f->help = strdup(help ? help : name);
        f->kind = kind;
        f->nlabels = nlabels;
        for (int i = 0; i < nlabels; i++) f->labels[i] = strdup(labels[i]);
        f->nbuckets = nbuckets;
        memcpy(f->buckets, buckets, (size_t)nbuckets * sizeof(double));
        atomic_store_explicit(g_families_tail, f, memory_order_release);   /* f is whole before it is seen */
        g_families_tail = &f->next;
    } else {
        snprintf(err, errlen, "out of memory");
    }
    pthread_mutex_unlock(&g_lock);
    return f;
}

metric_cell_t *metrics_cell(metric_family_t *f, const char *const *values)
{
    const int n = f->nlabels;
    if (!values && n) return NULL;   /* only a family without labels may pass no values */
    for (metric_cell_t *c = atomic_load(&f->cells); c; c = c->next) {
        int same = 1;
        for (int i = 0; same && i < n; i++) same = strcmp(c->values[i], values[i]) == 0;
        if (same) return c;
    }
    pthread_mutex_lock(&g_lock);
    /* Look again under the lock: another thread may have added it meanwhile. */
    for (metric_cell_t *c = atomic_load(&f->cells); c; c = c->next) {
        int same = 1;
        for (int i = 0; same && i < n; i++) same = strcmp(c->values[i], values[i]) == 0;
        if (same) { pthread_mutex_unlock(&g_lock); return c; }
    }
    metric_cell_t *c = calloc(1, sizeof *c);
    if (c) {
        c->family = f;
        for (int i = 0; i < n; i++) c->values[i] = strdup(values[i] ? values[i] : "");
        c->next = atomic_load(&f->cells);
        atomic_store(&f->cells, c);
    }
    pthread_mutex_unlock(&g_lock);
    return c;
}

void metrics_cell_add(metric_cell_t *c, double v) { if (c) atomic_add_double(&c->bits, v); }
void metrics_cell_set(metric_cell_t *c, double v) { if (c) atomic_store(&c->bits, dbits(v)); }
double metrics_cell_value(metric_cell_t *c) { return c ? bitsd(atomic_load(&c->bits)) : 0; }

void metrics_cell_observe(metric_cell_t *c, double v)
{
    if (!c) return;
    const metric_family_t *f = c->family;
    int b = 0;
    while (b < f->nbuckets && v > f->buckets[b]) b++;
    if (b < f->nbuckets) atomic_fetch_add_explicit(&c->bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->count, 1, memory_order_relaxed);
    atomic_add_double(&c->sum_bits, v);
}

static metric_cell_t *unlabelled(const char *name, const char *help, metric_kind_t kind)
{
    char err[128];
    metric_family_t *f = metrics_family(name, help, kind, 0, NULL, 0, NULL, err, sizeof err);
    return f ? metrics_cell(f, NULL) : NULL;
}

metric_cell_t *metrics_counter0(const char *name, const char *help) { return unlabelled(name, help, METRIC_COUNTER); }
metric_cell_t *metrics_gauge0(const char *name, const char *help) { return unlabelled(name, help, METRIC_GAUGE); }

/* ---------------------------------------------------------------------------------------- */

static void add_label_value(buf_t *out, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\') buf_adds(out, "\\\\");
        else if (*v == '"') buf_adds(out, "\\\"");
        else if (*v == '\n') buf_adds(out, "\\n");
        else buf_add(out, v, 1);
    }
}

static void add_help(buf_t *out, const char *name, const char *help, const char *type)
{
    buf_addf(out, "# HELP %s ", name);
    for (const char *p = help; *p; p++) {
        if (*p == '\\') buf_adds(out, "\\\\");
        else if (*p == '\n') buf_adds(out, "\\n");
        else buf_add(out, p, 1);
    }
    buf_addf(out, "\n# TYPE %s %s\n", name, type);
}

static void add_number(buf_t *out, double v)
{
    if (isnan(v)) buf_adds(out, "NaN");
    else if (isinf(v)) buf_adds(out, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15) buf_addf(out, "%.0f", v);
    else buf_addf(out, "%.15g", v);
}

static void render_http(buf_t *out)
{
    int nshards = atomic_load(&g_nshards), nslots = atomic_load(&g_nslots);
    add_help(out, "http_requests_total", "HTTP requests answered, by route pattern, method and status.", "counter");
    for (int r = 0; r < nslots; r++) {
        for (int si = 0; si < METRICS_MAX_STATUS; si++) {
            int code = atomic_load(&g_status_code[si]);
            if (!code) break;
            uint64_t n = 0;
            for (int k = 0; k < nshards; k++) n += atomic_load_explicit(&g_shards[k]->routes[r].status[si], memory_order_relaxed);
            if (!n) continue;
            buf_adds(out, "http_requests_total{route=\"");
            add_label_value(out, g_slots[r].pattern);
            buf_addf(out, "\",method=\"%s\",status=\"%d\"} %llu\n", g_slots[r].method, code, (unsigned long long)n);
        }
    }
    add_help(out, "http_request_duration_seconds", "Time from the request's first byte to the response queued, by route.", "histogram");
    for (int r = 0; r < nslots; r++) {
        uint64_t buckets[METRICS_NBUCKETS] = { 0 }, count = 0, sum_ns = 0;
        for (int k = 0; k < nshards; k++) {
            metrics_route_t *rt = &g_shards[k]->routes[r];
            for (int b = 0; b < METRICS_NBUCKETS; b++) buckets[b] += atomic_load_explicit(&rt->bucket[b], memory_order_relaxed);
            count += atomic_load_explicit(&rt->count, memory_order_relaxed);
            sum_ns += atomic_load_explicit(&rt->sum_ns, memory_order_relaxed);
        }
        if (!count) continue;
        uint64_t cum = 0;
        for (int b = 0; b <= METRICS_NBUCKETS; b++) {
            buf_adds(out, "http_request_duration_seconds_bucket{route=\"");
            add_label_value(out, g_slots[r].pattern);
            buf_addf(out, "\",method=\"%s\",le=\"", g_slots[r].method);
            if (b < METRICS_NBUCKETS) {
                cum += buckets[b];
                add_number(out, metrics_http_buckets[b]);
            } else {
                cum = count;   /* counts and buckets are read apart: +Inf is the count itself */
                buf_adds(out, "+Inf");
            }
            buf_addf(out, "\"} %llu\n", (unsigned long long)cum);
        }
        buf_adds(out, "http_request_duration_seconds_sum{route=\"");
        add_label_value(out, g_slots[r].pattern);
        buf_addf(out, "\",method=\"%s\"} %.9f\n", g_slots[r].method, (double)sum_ns / 1e9);
        buf_adds(out, "http_request_duration_seconds_count{route=\"");
        add_label_value(out, g_slots[r].pattern);
        buf_addf(out, "\",method=\"%s\"} %llu\n", g_slots[r].method, (unsigned long long)count);
    }
    int64_t inflight = 0;
    for (int k = 0; k < nshards; k++) inflight += atomic_load_explicit(&g_shards[k]->in_flight, memory_order_relaxed);
    add_help(out, "http_requests_in_flight", "Requests received and not yet answered.", "gauge");
    buf_addf(out, "http_requests_in_flight %lld\n", (long long)inflight);
}

static void add_labels(buf_t *out, const metric_family_t *f, const metric_cell_t *c, const char *extra)
{
    if (f->nlabels == 0 && !extra) return;
    buf_adds(out, "{");
    for (int i = 0; i < f->nlabels; i++) {
        buf_addf(out, "%s%s=\"", i ? "," : "", f->labels[i]);
        add_label_value(out, c->values[i]);
        buf_adds(out, "\"");
    }
    if (extra) buf_addf(out, "%s%s", f->nlabels ? "," : "", extra);
    buf_adds(out, "}");
}

static void render_family(buf_t *out, metric_family_t *f)
{
    static const char *const types[] = { "counter", "gauge", "histogram" };
    add_help(out, f->name, f->help, types[f->kind]);
    for (metric_cell_t *c = atomic_load(&f->cells); c; c = c->next) {
        if (f->kind != METRIC_HISTOGRAM) {
            buf_adds(out, f->name);
            add_labels(out, f, c, NULL);
            buf_adds(out, " ");
            add_number(out, bitsd(atomic_load(&c->bits)));
            buf_adds(out, "\n");
            continue;
        }
        uint64_t cum = 0, count = atomic_load(&c->count);
        char le[64];
        for (int b = 0; b <= f->nbuckets; b++) {
            if (b < f->nbuckets) {
                cum += atomic_load(&c->bucket[b]);
                snprintf(le, sizeof le, "le=\"%.15g\"", f->buckets[b]);
            } else {
                cum = count;
                snprintf(le, sizeof le, "le=\"+Inf\"");
            }
            buf_addf(out, "%s_bucket", f->name);
            add_labels(out, f, c, le);
            buf_addf(out, " %llu\n", (unsigned long long)cum);
        }
        buf_addf(out, "%s_sum", f->name);
        add_labels(out, f, c, NULL);
        buf_adds(out, " ");
        add_number(out, bitsd(atomic_load(&c->sum_bits)));
        buf_addf(out, "\n%s_count", f->name);
        add_labels(out, f, c, NULL);
        buf_addf(out, " %llu\n", (unsigned long long)count);
    }
}

static void render_process(buf_t *out)
{
    long rss_pages = 0;
    FILE *fp = fopen("/proc/self/statm", "r");
    if (fp) {
        long size;
        if (fscanf(fp, "%ld %ld", &size, &rss_pages) != 2) rss_pages = 0;
        fclose(fp);
    }
    add_help(out, "process_resident_memory_bytes", "Resident memory size in bytes.", "gauge");
    buf_addf(out, "process_resident_memory_bytes %ld\n", rss_pages * sysconf(_SC_PAGESIZE));
    add_help(out, "process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.", "gauge");
    buf_addf(out, "process_start_time_seconds %lld\n", (long long)g_start_time);
}

void metrics_render(buf_t *out)
{
    render_http(out);
    /* Families are appended under the lock but never removed, so the list can be walked. */
    pthread_mutex_lock(&g_lock);
    metric_family_t *head = atomic_load(&g_families);
    pthread_mutex_unlock(&g_lock);
    for (metric_family_t *f = head; f; f = atomic_load_explicit(&f->next, memory_order_acquire)) render_family(out, f);
    render_process(out);
}

void metrics_shutdown(void)
{
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < atomic_load(&g_nshards); i++) free(g_shards[i]);
    atomic_store(&g_nshards, 0);
    for (int i = 0; i < atomic_load(&g_nslots); i++) free(g_slots[i].pattern);
    atomic_store(&g_nslots, 0);
    metric_family_t *f = atomic_load(&g_families);
    while (f) {
        metric_family_t *nf = atomic_load(&f->next);
        metric_cell_t *c = atomic_load(&f->cells);
        while (c) {
            metric_cell_t *nc = c->next;
            for (int i = 0; i < f->nlabels; i++) free(c->values[i]);
            free(c);
            c = nc;
        }
        for (int i = 0; i < f->nlabels; i++) free(f->labels[i]);
        free(f->name);
        free(f->help);
        free(f);
        f = nf;
    }
    atomic_store(&g_families, NULL);
    g_families_tail = &g_families;
    for (int i = 0; i < METRICS_MAX_STATUS; i++) atomic_store(&g_status_code[i], 0);
    pthread_mutex_unlock(&g_lock);
}
