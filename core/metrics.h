/* metrics: the process's metrics registry, rendered in the Prometheus text format.
 *
 * Two kinds of storage. HTTP request metrics are the hot path: each worker thread owns a shard
 * it alone writes (plain relaxed loads and stores, no lock prefix), and /metrics sums the
 * shards. Everything else (events, pools, reloads, Lua-declared metrics) lives in families of
 * labelled cells updated with atomic adds, safe from any thread. */
#ifndef MERCATO_METRICS_H
#define MERCATO_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "buf.h"

#define METRICS_MAX_ROUTES 512     /* route slots over the process life, reloads included */
#define METRICS_MAX_STATUS 48      /* distinct status codes tracked */
#define METRICS_NBUCKETS 14        /* finite buckets; +Inf is the count */
#define METRICS_MAX_LABELS 4

extern const double metrics_http_buckets[METRICS_NBUCKETS];

/* ---- per-worker HTTP shard ---- */

typedef struct {
    _Atomic uint64_t status[METRICS_MAX_STATUS];
    _Atomic uint64_t bucket[METRICS_NBUCKETS];   /* non-cumulative; cumulated on render */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns;
} metrics_route_t;

typedef struct metrics_shard {
    metrics_route_t routes[METRICS_MAX_ROUTES];
    _Atomic int64_t in_flight;
} metrics_shard_t;

/* A new zeroed shard, registered for rendering; it lives until metrics_shutdown. */
metrics_shard_t *metrics_shard_new(void);

/* The slot for (method, pattern), created on first use; slot 0 is "unmatched". Thread-safe,
 * not for the hot path (called when routes are compiled). -1 when the table is full. */
int metrics_route_slot(const char *method, const char *pattern);

/* The route pattern of a slot (stable for the life of the process: a request finished after a
 * reload still names its route), or NULL for slot 0 and slots never made. */
const char *metrics_route_pattern(int slot);

/* Record one finished request in the calling thread's own shard. */
void metrics_observe_request(metrics_shard_t *s, int slot, int status, uint64_t duration_ns);

static inline void metrics_shard_add_inflight(metrics_shard_t *s, int64_t d)
{
    atomic_store_explicit(&s->in_flight, atomic_load_explicit(&s->in_flight, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

/* ---- labelled families ---- */

typedef enum { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_kind_t;
typedef struct metric_family metric_family_t;
typedef struct metric_cell metric_cell_t;

/* Find or create a family. Re-declaring with the same kind and labels returns the same family
 * (so hot-reloaded Lua can declare again); a clash returns NULL with a message in err.
 * `buckets` (histograms only) may be NULL for the HTTP defaults. */
metric_family_t *metrics_family(const char *name, const char *help, metric_kind_t kind,
                                int nlabels, const char *const *labels,
                                int nbuckets, const double *buckets, char *err, size_t errlen);

/* The cell for these label values (created on first use; NULL when out of memory). */
metric_cell_t *metrics_cell(metric_family_t *f, const char *const *values);

void metrics_cell_add(metric_cell_t *c, double v);       /* counter / gauge */
void metrics_cell_set(metric_cell_t *c, double v);       /* gauge */
void metrics_cell_observe(metric_cell_t *c, double v);   /* histogram */
double metrics_cell_value(metric_cell_t *c);

/* Shorthands for host-internal unlabelled metrics. */
metric_cell_t *metrics_counter0(const char *name, const char *help);
metric_cell_t *metrics_gauge0(const char *name, const char *help);

/* Render every metric (HTTP shards summed, families, process metrics) into out. */
void metrics_render(buf_t *out);

/* Free everything; no thread may touch metrics afterwards. */
void metrics_shutdown(void);

#endif
