/* builtins: what every service answers besides its routes — /health (liveness, never a
 * dependency), /ready (each binding's probe), /metrics (Prometheus text), /openapi.json. */
#include "builtins.h"

#include <string.h>

#include "../core/buf.h"
#include "../core/metrics.h"
#include "bindings.h"
#include "server.h"
#include "worker.h"

int builtins_match(const request_t *r)
{
    if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0) return 0;
    const char *p = r->uri;
    size_t n = r->path_len;
    if (n == 7 && memcmp(p, "/health", 7) == 0) return BUILTIN_HEALTH;
    if (n == 6 && memcmp(p, "/ready", 6) == 0) return BUILTIN_READY;
    if (n == 8 && memcmp(p, "/metrics", 8) == 0) return BUILTIN_METRICS;
    if (n == 13 && memcmp(p, "/openapi.json", 13) == 0) return BUILTIN_OPENAPI;
    return 0;
}

void builtins_serve(request_t *r)
{
    worker_t *w = r->w;
    switch (r->route) {
    case BUILTIN_HEALTH:
        server_respond(r, 200, "application/json", "{\"status\":\"ok\"}", 15);
        break;
    case BUILTIN_READY: {
        buf_t b;
        buf_init(&b);
        buf_adds(&b, "{\"checks\":{");
        int down = bindings_ready(w, &b);
        if (server_stopping()) { buf_adds(&b, ",\"server\":\"down: shutting down\""); down++; }
        buf_addf(&b, "},\"status\":\"%s\"}", down ? "unavailable" : "ready");
        server_respond(r, down ? 503 : 200, "application/json", b.data, b.len);
        buf_free(&b);
        break;
    }
    case BUILTIN_METRICS: {
        buf_t b;
        buf_init(&b);
        metrics_render(&b);
        server_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        buf_free(&b);
        break;
    }
    case BUILTIN_OPENAPI:
        if (w->snap->openapi) server_respond(r, 200, "application/json", w->snap->openapi, w->snap->openapi_len);
        else server_problem(r, 404, "Not Found", "This service publishes no OpenAPI document.", NULL, NULL);
        break;
    }
}
