/* snapshot: one generation of a service's scripts — compiled bytecode, assets, routes — built
 * and checked in a scratch state, then published whole. Workers build their Lua state from it. */
#ifndef MERCATO_SNAPSHOT_H
#define MERCATO_SNAPSHOT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/ratelimit.h"
#include "config.h"
#include "router.h"

#define ROUTE_MAX_ROLES 4

enum { AUTH_NONE, AUTH_OPTIONAL, AUTH_REQUIRED };

/* What the host must know of a route before its handler runs. */
typedef struct route_info {
    char method[8];
    char *pattern;
    int metrics_slot;
    int auth;                             /* AUTH_* */
    int nroles;
    char *roles[ROUTE_MAX_ROLES];         /* any of these; none = any authenticated caller */
    char *scope;                          /* required token scope, or NULL */
    size_t max_body;                      /* 0 = the process default */
    ratelimit_rule_t rate_limit;          /* `rate_limit = { name, limit, key }`; key NONE = none */
    int idempotency;                      /* `idempotency = true`: the handler runs behind lib.idempotency */
} route_info_t;

typedef struct {
    char *name;       /* module name, "services.product.handlers" */
    char *path;       /* file path, for messages */
    char *code;       /* bytecode (.lua) */
    size_t len;
} snapshot_module_t;

typedef struct {
    char *name;       /* path relative to SCRIPTS_DIR, "services/notification/templates/x.html" */
    char *data;
    size_t len;
} snapshot_asset_t;

typedef struct snapshot {
    _Atomic int refs;
    uint64_t generation;
    const config_t *cfg;
    int nmodules;
    snapshot_module_t *modules;   /* sorted by name */
    int nassets;
    snapshot_asset_t *assets;     /* sorted by name */
    router_t *router;             /* NULL when the service declares no routes (gateway) */
    int nroutes;
    route_info_t *routes;
    const char *openapi;          /* the service's openapi.json asset, or NULL */
    size_t openapi_len;
} snapshot_t;

/* Read and compile the scripts of cfg->service, run its routes module in a scratch state and
 * check it. Returns a snapshot holding one reference, or NULL with "file:line: message" in err. */
snapshot_t *snapshot_build(const config_t *cfg, char *err, size_t errlen);

void snapshot_ref(snapshot_t *s);
void snapshot_unref(snapshot_t *s);

/* The published snapshot, with a reference the caller drops (NULL before the first publish). */
snapshot_t *snapshot_current(void);
/* Publish s (takes over the caller's reference) and bump the generation. */
void snapshot_publish(snapshot_t *s);
/* The published generation, cheap enough to read on every request. */
uint64_t snapshot_generation(void);
/* Drop the published snapshot (at exit). */
void snapshot_clear(void);

const snapshot_module_t *snapshot_module(const snapshot_t *s, const char *name);
const snapshot_asset_t *snapshot_asset(const snapshot_t *s, const char *name);

#endif
