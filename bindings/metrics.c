/* metrics: Lua-declared Prometheus metrics on the host's registry.
 *   local orders = metrics.counter("orders_created_total", "Orders created.", { "currency" })
 *   orders:inc(1, "usd")
 * Declaring again (a hot reload) returns the same family; values live in C and survive. */
#include <lauxlib.h>

#include "../host/bindings.h"
#include <string.h>

#include "../core/metrics.h"

#define MT "mercato.metric"

typedef struct {
    metric_family_t *f;
    int kind;
    int nlabels;
} lmetric_t;

static int declare(lua_State *L, metric_kind_t kind)
{
    const char *name = luaL_checkstring(L, 1);
    const char *help = luaL_optstring(L, 2, name);
    const char *labels[METRICS_MAX_LABELS];
    int nlabels = 0;
    double buckets[32];
    int nbuckets = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        nlabels = (int)lua_objlen(L, 3);
        if (nlabels > METRICS_MAX_LABELS) return luaL_argerror(L, 3, "too many labels");
        for (int i = 0; i < nlabels; i++) {
            lua_rawgeti(L, 3, i + 1);
            labels[i] = lua_tostring(L, -1);   /* kept alive by the table at index 3 */
            lua_pop(L, 1);
            if (!labels[i]) return luaL_argerror(L, 3, "label names must be strings");
        }
    }
    if (kind == METRIC_HISTOGRAM && !lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        nbuckets = (int)lua_objlen(L, 4);
        if (nbuckets < 1 || nbuckets > 32) return luaL_argerror(L, 4, "1 to 32 buckets");
        for (int i = 0; i < nbuckets; i++) {
            lua_rawgeti(L, 4, i + 1);
            buckets[i] = lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
    }
    char err[256];
    metric_family_t *f = metrics_family(name, help, kind, nlabels, labels, nbuckets, nbuckets ? buckets : NULL, err, sizeof err);
    if (!f) return luaL_error(L, "%s", err);
    lmetric_t *m = lua_newuserdata(L, sizeof *m);
    m->f = f;
    m->kind = kind;
    m->nlabels = nlabels;
    luaL_getmetatable(L, MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_counter(lua_State *L) { return declare(L, METRIC_COUNTER); }
static int l_gauge(lua_State *L) { return declare(L, METRIC_GAUGE); }
static int l_histogram(lua_State *L) { return declare(L, METRIC_HISTOGRAM); }

/* The cell for the label values given as arguments first..first+nlabels-1. */
static metric_cell_t *cell_at(lua_State *L, lmetric_t *m, int first)
{
    const char *values[METRICS_MAX_LABELS];
    for (int i = 0; i < m->nlabels; i++) {
        values[i] = lua_tostring(L, first + i);
        if (!values[i]) luaL_argerror(L, first + i, "expecting a label value");
    }
    return metrics_cell(m->f, values);
}

static int l_inc(lua_State *L)
{
    lmetric_t *m = luaL_checkudata(L, 1, MT);
    double v = luaL_optnumber(L, 2, 1);
    if (m->kind == METRIC_COUNTER && v < 0) return luaL_argerror(L, 2, "a counter only goes up");
    if (m->kind == METRIC_HISTOGRAM) return luaL_error(L, "histograms observe, they do not inc");
    metrics_cell_add(cell_at(L, m, 3), v);
    return 0;
}

static int l_set(lua_State *L)
{
    lmetric_t *m = luaL_checkudata(L, 1, MT);
    double v = luaL_checknumber(L, 2);
    if (m->kind != METRIC_GAUGE) return luaL_error(L, "only gauges can be set");
    metrics_cell_set(cell_at(L, m, 3), v);
    return 0;
}

static int l_observe(lua_State *L)
{
    lmetric_t *m = luaL_checkudata(L, 1, MT);
    double v = luaL_checknumber(L, 2);
    if (m->kind != METRIC_HISTOGRAM) return luaL_error(L, "only histograms observe");
    metrics_cell_observe(cell_at(L, m, 3), v);
    return 0;
}

static int l_value(lua_State *L)
{
    lmetric_t *m = luaL_checkudata(L, 1, MT);
    lua_pushnumber(L, metrics_cell_value(cell_at(L, m, 2)));
    return 1;
}

/* metrics.render() → the Prometheus text of the whole process (for tests and debugging). */
static int l_render(lua_State *L)
{
    buf_t b;
    buf_init(&b);
    metrics_render(&b);
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    buf_free(&b);
    return 1;
}

int luaopen_metrics(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "inc", l_inc }, { "set", l_set }, { "observe", l_observe }, { "value", l_value }, { NULL, NULL },
    };
    static const luaL_Reg fns[] = {
        { "counter", l_counter }, { "gauge", l_gauge }, { "histogram", l_histogram }, { "render", l_render }, { NULL, NULL },
    };
    if (luaL_newmetatable(L, MT)) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_setfuncs(L, fns, 0);
    return 1;
}

const binding_t binding_metrics = { .name = "metrics", .open = luaopen_metrics };
