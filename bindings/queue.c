/* queue: RabbitMQ for Lua — confirmed publishes to mercato.events and a poll-style consumer.
 *   assert(queue.publish("order.created", json, { message_id = id, type = "order.created" }))
 *   -- a batch: publish without waiting, then one wait for all the confirms
 *   local tag = assert(queue.publish("order.created", json, { message_id = id, wait = false }))
 *   local confirmed, failed = queue.confirms(2000)   -- confirmed[tag] = true, or failed[tag] = { error, code }
 *   queue.declare_consumer_queue("notification", { bindings = { "order.*" }, prefetch = 20, delivery_limit = 5 })
 *   while running do
 *     local m, err, code = queue.next("notification", 1000)   -- nil on timeout
 *     if m then handle(m); queue.ack(m.delivery_tag) end
 *   end
 * Wrong arguments (and settling a tag twice) raise; broker failures return nil, err, code. */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../host/bindings.h"
#include "../host/worker.h"
#include "queue.h"

#define MAX_SHORTSTR 255
#define PUBLISH_TAG_SCALE 4294967296.0   /* a publish's Lua tag = connection epoch * 2^32 + sequence number */

/* ---- AMQP values → Lua -------------------------------------------------------------------- */

static void push_table(lua_State *L, const amqp_table_t *t);

static void push_field(lua_State *L, const amqp_field_value_t *v)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN: lua_pushboolean(L, v->value.boolean); break;
    case AMQP_FIELD_KIND_I8: lua_pushnumber(L, v->value.i8); break;
    case AMQP_FIELD_KIND_U8: lua_pushnumber(L, v->value.u8); break;
    case AMQP_FIELD_KIND_I16: lua_pushnumber(L, v->value.i16); break;
    case AMQP_FIELD_KIND_U16: lua_pushnumber(L, v->value.u16); break;
    case AMQP_FIELD_KIND_I32: lua_pushnumber(L, v->value.i32); break;
    case AMQP_FIELD_KIND_U32: lua_pushnumber(L, v->value.u32); break;
    case AMQP_FIELD_KIND_I64: lua_pushnumber(L, (lua_Number)v->value.i64); break;
    case AMQP_FIELD_KIND_U64: case AMQP_FIELD_KIND_TIMESTAMP: lua_pushnumber(L, (lua_Number)v->value.u64); break;
    case AMQP_FIELD_KIND_F32: lua_pushnumber(L, v->value.f32); break;
    case AMQP_FIELD_KIND_F64: lua_pushnumber(L, v->value.f64); break;
    case AMQP_FIELD_KIND_DECIMAL:
        lua_pushnumber(L, v->value.decimal.value / pow(10, v->value.decimal.decimals));
        break;
    case AMQP_FIELD_KIND_UTF8: case AMQP_FIELD_KIND_BYTES:
        lua_pushlstring(L, v->value.bytes.bytes, v->value.bytes.len);
        break;
    case AMQP_FIELD_KIND_ARRAY:
        lua_createtable(L, v->value.array.num_entries, 0);
        for (int i = 0; i < v->value.array.num_entries; i++) {
            push_field(L, &v->value.array.entries[i]);
            lua_rawseti(L, -2, i + 1);
        }
        break;
    case AMQP_FIELD_KIND_TABLE: push_table(L, &v->value.table); break;
    default: lua_pushboolean(L, 0); break;   /* VOID */
    }
}

static void push_table(lua_State *L, const amqp_table_t *t)
{
    lua_createtable(L, 0, t->num_entries);
    for (int i = 0; i < t->num_entries; i++) {
        lua_pushlstring(L, t->entries[i].key.bytes, t->entries[i].key.len);
        push_field(L, &t->entries[i].value);
        lua_rawset(L, -3);
    }
}

static void set_bytes(lua_State *L, const char *k, amqp_bytes_t b)
{
    lua_pushlstring(L, b.bytes, b.len);
    lua_setfield(L, -2, k);
}

/* The message table for a delivery: body, routing_key, exchange, redelivered, delivery_tag,
 * headers (always a table) and the AMQP properties that were set. */
static void push_message(lua_State *L, const amqp_envelope_t *env, double tag)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    lua_createtable(L, 0, 12);
    set_bytes(L, "body", env->message.body);
    set_bytes(L, "routing_key", env->routing_key);
    set_bytes(L, "exchange", env->exchange);
    lua_pushboolean(L, env->redelivered);
    lua_setfield(L, -2, "redelivered");
    lua_pushnumber(L, tag);
    lua_setfield(L, -2, "delivery_tag");
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) set_bytes(L, "message_id", p->message_id);
    if (p->_flags & AMQP_BASIC_TYPE_FLAG) set_bytes(L, "type", p->type);
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) set_bytes(L, "correlation_id", p->correlation_id);
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) set_bytes(L, "content_type", p->content_type);
    if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) {
        lua_pushnumber(L, p->delivery_mode);
        lua_setfield(L, -2, "delivery_mode");
    }
    if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) {
        lua_pushnumber(L, (lua_Number)p->timestamp);
        lua_setfield(L, -2, "timestamp");
    }
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) push_table(L, &p->headers);
    else lua_newtable(L);
    lua_setfield(L, -2, "headers");
}

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *amqp_url_of(worker_t *w)
{
    const char *u = w->cfg ? w->cfg->amqp_url : NULL;
    if (!u) u = getenv("AMQP_URL");
    return u && *u ? u : NULL;
}

static worker_t *upworker(lua_State *L, const char *fn)
{
    worker_t *w = lua_touserdata(L, lua_upvalueindex(1));
    if (!w) luaL_error(L, "queue.%s: no worker owns this Lua state (module load in the check state?); call it from a handler or consumer", fn);
    return w;
}

/* The worker's context, made on first use; NULL with e when AMQP_URL is unset. */
static queue_ctx_t *ctx_of(worker_t *w, queue_err_t *e)
{
    if (w->binding[BIND_QUEUE]) return w->binding[BIND_QUEUE];
    const char *url = amqp_url_of(w);
    if (!url) { snprintf(e->msg, sizeof e->msg, "queue: AMQP_URL is not set"); e->code = "unavailable"; return NULL; }
    char name[96];
    snprintf(name, sizeof name, "mercato pid=%d %s worker=%d", (int)getpid(), w->kind ? w->kind : "worker", w->id);
    w->binding[BIND_QUEUE] = queue_ctx_new(url, name);
    if (!w->binding[BIND_QUEUE]) { snprintf(e->msg, sizeof e->msg, "queue: out of memory"); e->code = "unavailable"; }
    return w->binding[BIND_QUEUE];
}

static int fail(lua_State *L, const queue_err_t *e)
{
    lua_pushnil(L);
    lua_pushstring(L, e->msg);
    lua_pushstring(L, e->code);
    return 3;
}

static const char *check_name(lua_State *L, int idx, size_t max, const char *what)
{
    size_t len;
    if (lua_type(L, idx) != LUA_TSTRING) luaL_argerror(L, idx, lua_pushfstring(L, "expecting %s string, got %s", what, luaL_typename(L, idx)));
    const char *s = lua_tolstring(L, idx, &len);
    if (len == 0 || len > max) luaL_argerror(L, idx, lua_pushfstring(L, "%s must be 1 to %d bytes", what, (int)max));
    return s;
}

/* opts[field]: a string or nil; raises otherwise. Leaves nothing on the stack. */
static const char *opt_string(lua_State *L, int opts, const char *field, size_t *len)
{
    if (lua_isnoneornil(L, opts)) return NULL;
    lua_getfield(L, opts, field);
    int t = lua_type(L, -1);
    const char *s = t == LUA_TSTRING ? lua_tolstring(L, -1, len) : NULL;
    lua_pop(L, 1);   /* the string stays alive in opts */
    if (t != LUA_TNIL && t != LUA_TSTRING) luaL_argerror(L, opts, lua_pushfstring(L, "%s must be a string", field));
    return s;
}

static lua_Number opt_number(lua_State *L, int opts, const char *field, lua_Number def, lua_Number lo, lua_Number hi)
{
    if (lua_isnoneornil(L, opts)) return def;
    lua_getfield(L, opts, field);
    int t = lua_type(L, -1);
    lua_Number v = t == LUA_TNUMBER ? lua_tonumber(L, -1) : def;
    lua_pop(L, 1);
    if ((t != LUA_TNIL && t != LUA_TNUMBER) || v < lo || v > hi || v != floor(v))
        luaL_argerror(L, opts, lua_pushfstring(L, "%s must be an integer from %d to %d", field, (int)lo, (int)hi));
    return v;
}

/* ---- Lua bindings ------------------------------------------------------------------------- */

/* queue.publish(routing_key, body, { message_id, type, correlation_id, headers, timeout_ms, wait })
 * → true once the broker confirmed it, or nil, err, code. With wait = false it returns as soon
 * as the message is sent: its tag (a number), which a later queue.confirms reports. */
static int l_publish(lua_State *L)
{
    size_t rklen, bodylen, len;
    check_name(L, 1, MAX_SHORTSTR, "a routing key");
    const char *rk = lua_tolstring(L, 1, &rklen);
    if (lua_type(L, 2) != LUA_TSTRING) return luaL_argerror(L, 2, "queue.publish: expecting a body string");
    const char *body = lua_tolstring(L, 2, &bodylen);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof props);
    static const struct { const char *name; amqp_flags_t flag; size_t off; } fields[] = {
        { "message_id", AMQP_BASIC_MESSAGE_ID_FLAG, offsetof(amqp_basic_properties_t, message_id) },
        { "type", AMQP_BASIC_TYPE_FLAG, offsetof(amqp_basic_properties_t, type) },
        { "correlation_id", AMQP_BASIC_CORRELATION_ID_FLAG, offsetof(amqp_basic_properties_t, correlation_id) },
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const char *s = opt_string(L, 3, fields[i].name, &len);
        if (!s) continue;
        if (len > MAX_SHORTSTR) return luaL_argerror(L, 3, lua_pushfstring(L, "%s is longer than 255 bytes", fields[i].name));
        props._flags |= fields[i].flag;
        *(amqp_bytes_t *)((char *)&props + fields[i].off) = (amqp_bytes_t){ .len = len, .bytes = (void *)s };
    }
    int wait_ms = (int)opt_number(L, 3, "timeout_ms", 0, 0, 600000);
    int wait = 1;
    if (!lua_isnoneornil(L, 3)) {
        lua_getfield(L, 3, "wait");
        int t = lua_type(L, -1);
        if (t != LUA_TNIL && t != LUA_TBOOLEAN) return luaL_argerror(L, 3, "wait must be a boolean");
        wait = t == LUA_TNIL || lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    int nheaders = 0, hidx = 0;
    if (!lua_isnoneornil(L, 3)) {
        lua_getfield(L, 3, "headers");
        hidx = lua_gettop(L);
        if (lua_istable(L, hidx)) {
            for (lua_pushnil(L); lua_next(L, hidx); lua_pop(L, 1)) {
                int vt = lua_type(L, -1);
                if (lua_type(L, -2) != LUA_TSTRING || (vt != LUA_TSTRING && vt != LUA_TNUMBER && vt != LUA_TBOOLEAN))
                    return luaL_argerror(L, 3, "headers must map string names to strings, numbers or booleans");
                nheaders++;
            }
        } else if (!lua_isnil(L, hidx)) {
            return luaL_argerror(L, 3, "headers must be a table");
        }
    }
    worker_t *w = upworker(L, "publish");
    queue_err_t e;
    queue_ctx_t *q = ctx_of(w, &e);
    if (!q) return fail(L, &e);
    amqp_table_entry_t *entries = NULL;
    if (nheaders) {
        entries = calloc((size_t)nheaders, sizeof *entries);
        if (!entries) return luaL_error(L, "queue.publish: out of memory");
        int i = 0;
        for (lua_pushnil(L); lua_next(L, hidx); lua_pop(L, 1), i++) {   /* strings stay alive in opts */
            size_t kl, vl;
            const char *k = lua_tolstring(L, -2, &kl);
            entries[i].key = (amqp_bytes_t){ .len = kl, .bytes = (void *)k };
            amqp_field_value_t *v = &entries[i].value;
            if (lua_type(L, -1) == LUA_TBOOLEAN) {
                v->kind = AMQP_FIELD_KIND_BOOLEAN;
                v->value.boolean = lua_toboolean(L, -1);
            } else if (lua_type(L, -1) == LUA_TNUMBER) {
                lua_Number x = lua_tonumber(L, -1);
                if (x == floor(x) && fabs(x) < 9.2e18) { v->kind = AMQP_FIELD_KIND_I64; v->value.i64 = (int64_t)x; }
                else { v->kind = AMQP_FIELD_KIND_F64; v->value.f64 = x; }
            } else {
                const char *s = lua_tolstring(L, -1, &vl);
                v->kind = AMQP_FIELD_KIND_UTF8;
                v->value.bytes = (amqp_bytes_t){ .len = vl, .bytes = (void *)s };
            }
        }
        props._flags |= AMQP_BASIC_HEADERS_FLAG;
        props.headers = (amqp_table_t){ .num_entries = nheaders, .entries = entries };
    }
    props._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
    props.timestamp = (uint64_t)time(NULL);
    amqp_bytes_t rkb = { .len = rklen, .bytes = (void *)rk }, bodyb = { .len = bodylen, .bytes = (void *)body };
    uint32_t epoch = 0;
    uint64_t seq = 0;
    int rc = wait ? queue_publish(q, rkb, bodyb, &props, wait_ms, &e)
                  : queue_publish_nowait(q, rkb, bodyb, &props, &epoch, &seq, &e);
    free(entries);
    if (rc < 0) return fail(L, &e);
    if (wait) lua_pushboolean(L, 1);
    else lua_pushnumber(L, (lua_Number)epoch * PUBLISH_TAG_SCALE + (lua_Number)seq);
    return 1;
}

/* queue.confirms(timeout_ms) → confirmed, failed: waits until every publish made with
 * wait = false and not reported yet has its confirm (or timeout_ms passes; default
 * AMQP_TIMEOUT_MS), and reports each exactly once: confirmed[tag] = true, or failed[tag] =
 * { error = ..., code = ... } — code "unavailable" for a nack (the broker refused it) or a lost
 * connection, "timeout" when no confirm came in time. A failed message may still have been
 * queued: publish it again (consumers drop duplicates by id); it was never confirmed. */
static int l_confirms(lua_State *L)
{
    lua_Number ms = luaL_optnumber(L, 1, 0);
    if (!(ms >= 0 && ms <= 600000)) return luaL_argerror(L, 1, "timeout_ms must be from 0 to 600000");
    worker_t *w = upworker(L, "confirms");
    queue_ctx_t *q = w->binding[BIND_QUEUE];
    queue_confirm_t *out = NULL;
    size_t n = 0;
    char why[512] = "";
    queue_err_t e;
    if (q && queue_confirms(q, (int)ms, &out, &n, why, sizeof why, &e) < 0) return fail(L, &e);
    lua_createtable(L, 0, (int)n);
    lua_createtable(L, 0, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushnumber(L, (lua_Number)out[i].epoch * PUBLISH_TAG_SCALE + (lua_Number)out[i].seq);
        if (out[i].status == QUEUE_CONFIRM_ACK) {
            lua_pushboolean(L, 1);
            lua_rawset(L, -4);
            continue;
        }
        lua_createtable(L, 0, 2);
        switch (out[i].status) {
        case QUEUE_CONFIRM_NACK: lua_pushstring(L, "amqp publish: the broker refused the message (nack)"); break;
        default: lua_pushstring(L, why[0] ? why : "amqp publish: no confirm"); break;
        }
        lua_setfield(L, -2, "error");
        lua_pushstring(L, out[i].status == QUEUE_CONFIRM_TIMEOUT ? "timeout" : "unavailable");
        lua_setfield(L, -2, "code");
        lua_rawset(L, -3);
    }
    free(out);
    return 2;
}

/* queue.declare_consumer_queue(name, { bindings = {...}, prefetch = 20, delivery_limit = 5 })
 * → true, or nil, err, code ("conflict" when the queue exists with other arguments). */
static int l_declare_consumer_queue(lua_State *L)
{
    const char *name = check_name(L, 1, MAX_SHORTSTR - 4, "a queue name");
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    int prefetch = (int)opt_number(L, 2, "prefetch", 20, 1, 65535);
    int limit = (int)opt_number(L, 2, "delivery_limit", 5, 1, 1000000);
    int nkeys = 0;
    const char *keys[64];
    if (!lua_isnoneornil(L, 2)) {
        lua_getfield(L, 2, "bindings");
        if (lua_istable(L, -1)) {
            nkeys = (int)lua_objlen(L, -1);
            if (nkeys > 64) return luaL_argerror(L, 2, "at most 64 bindings");
            for (int i = 1; i <= nkeys; i++) {
                lua_rawgeti(L, -1, i);
                size_t len;
                keys[i - 1] = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
                lua_pop(L, 1);   /* alive in the bindings table */
                if (!keys[i - 1] || len > MAX_SHORTSTR) return luaL_argerror(L, 2, "bindings must be routing key patterns (strings)");
            }
        } else if (!lua_isnil(L, -1)) {
            return luaL_argerror(L, 2, "bindings must be a list of routing key patterns");
        }
    }
    worker_t *w = upworker(L, "declare_consumer_queue");
    queue_err_t e;
    queue_ctx_t *q = ctx_of(w, &e);
    if (!q || queue_declare_consumer(q, name, keys, nkeys, prefetch, limit, &e) < 0) return fail(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

/* queue.next(name, timeout_ms) → message; nil on timeout; nil, err, code when the broker is
 * unreachable for the whole wait (it keeps reconnecting with backoff inside the wait). */
static int l_next(lua_State *L)
{
    const char *name = check_name(L, 1, MAX_SHORTSTR, "a queue name");
    lua_Number ms = luaL_optnumber(L, 2, 1000);
    if (ms < 0 || ms > 3600000) return luaL_argerror(L, 2, "timeout_ms must be from 0 to 3600000");
    worker_t *w = upworker(L, "next");
    queue_err_t e;
    queue_ctx_t *q = ctx_of(w, &e);
    if (!q) return fail(L, &e);
    amqp_envelope_t env;
    double tag;
    int rc = queue_next(q, name, (int)ms, &env, &tag, &e);
    if (rc < 0) return fail(L, &e);
    if (rc == 0) { lua_pushnil(L); return 1; }
    push_message(L, &env, tag);
    amqp_destroy_envelope(&env);
    return 1;
}

static int settle(lua_State *L, int ack)
{
    if (lua_type(L, 1) != LUA_TNUMBER) return luaL_argerror(L, 1, "expecting a delivery_tag from queue.next");
    double tag = lua_tonumber(L, 1);
    int requeue = ack ? 0 : (lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2));
    worker_t *w = upworker(L, ack ? "ack" : "nack");
    queue_err_t e;
    queue_ctx_t *q = ctx_of(w, &e);
    if (!q) return fail(L, &e);
    int rc = queue_settle(q, tag, ack, requeue, &e);
    if (rc == -2) return luaL_argerror(L, 1, "unknown delivery tag (already acked or nacked, or never delivered)");
    if (rc < 0) return fail(L, &e);
    lua_pushboolean(L, 1);
    return 1;
}

/* queue.ack(tag) → true, or nil, err, code ("conflict": its connection closed meanwhile). */
static int l_ack(lua_State *L) { return settle(L, 1); }

/* queue.nack(tag, requeue) → true; requeue false (or the delivery limit) dead-letters it. */
static int l_nack(lua_State *L) { return settle(L, 0); }

/* queue.reset() closes this worker's connections without acking, as a crashed consumer would:
 * the broker redelivers what was not acked; the next call reconnects. */
static int l_reset(lua_State *L)
{
    worker_t *w = upworker(L, "reset");
    queue_ctx_reset(w->binding[BIND_QUEUE]);
    return 0;
}

/* ---- binding hooks ------------------------------------------------------------------------ */

static void queue_worker_free(worker_t *w)
{
    queue_ctx_free(w->binding[BIND_QUEUE]);
    w->binding[BIND_QUEUE] = NULL;
}

static int queue_ready(worker_t *w, char *why, size_t whylen)
{
    if (!amqp_url_of(w)) return -1;
    queue_err_t e;
    queue_ctx_t *q = ctx_of(w, &e);
    if (!q) { snprintf(why, whylen, "%s", e.msg); return 0; }
    return queue_probe(q, why, whylen);
}

int luaopen_queue(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "publish", l_publish }, { "confirms", l_confirms }, { "declare_consumer_queue", l_declare_consumer_queue }, { "next", l_next },
        { "ack", l_ack }, { "nack", l_nack }, { "reset", l_reset }, { NULL, NULL },
    };
    lua_newtable(L);
    lua_pushlightuserdata(L, worker_from_lua(L));   /* NULL in the scratch check state */
    luaL_setfuncs(L, fns, 1);
    lua_pushstring(L, QUEUE_EXCHANGE);
    lua_setfield(L, -2, "exchange");
    return 1;
}

const binding_t binding_queue = {
    .name = "queue", .open = luaopen_queue, .worker_free = queue_worker_free, .ready = queue_ready,
};
