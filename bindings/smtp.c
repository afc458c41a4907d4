/* smtp: e-mail for Lua (`require "smtp"`): MIME building that cannot be header-injected, and a
 * send over libcurl (bindings/smtp.h).
 *
 *   local id, err, code = smtp.send{ from = "Mercato <no-reply@mercato.test>", to = "ann@example.com",
 *     subject = "Votre commande", text = "...", html = "<p>...</p>",
 *     headers = { ["X-Mercato-Event-Id"] = event.id } }      -- url = SMTP_URL by default
 *   local raw, id = smtp.build{ ... }                          -- the bytes send would transmit
 *   smtp.valid_address("ann@example.com")                      -- true
 *
 * smtp.send BLOCKS (a curl easy transfer, at most `timeout_ms`, default SMTP_TIMEOUT_MS or
 * 10 s): call it from a runner (consumers.lua / jobs.lua), never from a handler — on an HTTP
 * thread it raises rather than stall the loop. Misuse (wrong argument types) raises; a message
 * that cannot be sent as given returns nil, err, "invalid" (a bad address, CR/LF or another
 * control character in any header field, a reserved or malformed header name); a send failure
 * returns nil, err, code, smtp_status with code "unavailable" (connection, TLS, AUTH or a 4xx
 * answer: retry later), "timeout", or "rejected" (a 5xx answer).
 *
 * TLS: smtps:// is TLS from the first byte; smtp:// upgrades with STARTTLS when the server
 * offers it, and with require_tls (SMTP_REQUIRE_TLS=1) refuses to send without it. AUTH uses
 * the URL's user:password (percent-encoded); the URL never appears in an error or a log. */
#include "smtp.h"

#include <ctype.h>
#include <curl/curl.h>
#include <lauxlib.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/base64.h"
#include "../host/bindings.h"
#include "../host/worker.h"

/* ---- addresses and header text ------------------------------------------------------------- */

static int atext(int c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+/=?^_`{|}~-", c) != NULL);
}

int smtp_address_valid(const char *s)
{
    if (!s) return 0;
    size_t n = strlen(s);
    if (n < 3 || n > SMTP_ADDR_MAX) return 0;
    const char *at = strrchr(s, '@');
    if (!at || at == s) return 0;
    size_t local = (size_t)(at - s);
    if (local > 64) return 0;
    /* local part: dot-atom */
    int prev_dot = 1;
    for (size_t i = 0; i < local; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (prev_dot) return 0;
            prev_dot = 1;
        } else if (c < 0x80 && atext(c)) {
            prev_dot = 0;
        } else {
            return 0;
        }
    }
    if (prev_dot) return 0;
    /* domain: LDH labels of 1..63, at least one */
    const char *d = at + 1;
    size_t dn = strlen(d);
    if (dn == 0 || dn > 253) return 0;
    size_t label = 0;
    char last = '.';
    for (size_t i = 0; i <= dn; i++) {
        char c = d[i];
        if (c == '.' || c == '\0') {
            if (label == 0 || last == '-') return 0;
            label = 0;
        } else if (isalnum((unsigned char)c) && (unsigned char)c < 0x80) {
            label++;
        } else if (c == '-') {
            if (label == 0) return 0;
            label++;
        } else {
            return 0;
        }
        if (label > 63) return 0;
        last = c;
    }
    return 1;
}

int smtp_header_text_safe(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f) return 0;
    return 1;
}

int smtp_parse_mailbox(const char *s, char *name, size_t namecap, char *addr, size_t addrcap)
{
    if (!s || !smtp_header_text_safe(s)) return -1;
    const char *lt = strrchr(s, '<');
    if (!lt) {
        if (strlen(s) >= addrcap || !smtp_address_valid(s)) return -1;
        snprintf(addr, addrcap, "%s", s);
        name[0] = '\0';
        return 0;
    }
    size_t n = strlen(lt);
    if (n < 3 || lt[n - 1] != '>' || n - 2 >= addrcap) return -1;
    memcpy(addr, lt + 1, n - 2);
    addr[n - 2] = '\0';
    if (!smtp_address_valid(addr)) return -1;
    /* The display name: trimmed, surrounding quotes dropped. */
    const char *b = s, *e = lt;
    while (b < e && (*b == ' ' || *b == '\t')) b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t')) e--;
    if (e - b >= 2 && *b == '"' && e[-1] == '"') { b++; e--; }
    if ((size_t)(e - b) >= namecap) return -1;
    memcpy(name, b, (size_t)(e - b));
    name[e - b] = '\0';
    return 0;
}

/* Printable ASCII with nothing that would read as an encoded word. */
static int plain_ascii(const char *s, size_t max)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++)
        if (*p < 0x20 || *p > 0x7e || n >= max) return 0;
    return strstr(s, "=?") == NULL;
}

/* Length of the UTF-8 sequence that starts with byte c (1 for anything that does not start one). */
static size_t utf8_seq_len(unsigned char c)
{
    if (c >= 0xf0 && c < 0xf8) return 4;
    if (c >= 0xe0) return c < 0xf0 ? 3 : 1;
    if (c >= 0xc0) return 2;
    return 1;
}

#define WORD_BYTES 45   /* 45 bytes → 60 base64 chars → a 72-char encoded word */

void smtp_encode_words(buf_t *out, const char *s)
{
    if (plain_ascii(s, 200)) { buf_adds(out, s); return; }
    size_t n = strlen(s), i = 0;
    if (n == 0) return;
    int first = 1;
    while (i < n) {
        size_t take = 0;
        while (i + take < n) {
            size_t l = utf8_seq_len((unsigned char)s[i + take]);
            if (i + take + l > n) l = n - i - take;
            if (take + l > WORD_BYTES) break;
            take += l;
        }
        if (take == 0) take = 1;
        char b64[64 + 4];
        base64_encode(b64, s + i, take, 0);
        buf_addf(out, "%s=?UTF-8?B?%s?=", first ? "" : "\r\n ", b64);
        first = 0;
        i += take;
    }
}

/* ---- building ------------------------------------------------------------------------------ */

static const char *const reserved_headers[] = {
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "content-type",
    "content-transfer-encoding", "sender", "return-path", "received", NULL,
};

static int header_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64 || !isalpha((unsigned char)s[0])) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-') return 0;
    for (int i = 0; reserved_headers[i]; i++)
        if (strcasecmp(s, reserved_headers[i]) == 0) return 0;
    return 1;
}

static void random_hex(char *dst, size_t bytes)
{
    unsigned char r[32];
    if (bytes > sizeof r) bytes = sizeof r;
    static _Atomic unsigned counter;
    if (RAND_bytes(r, (int)bytes) != 1) {   /* never seen; still unique within the process */
        memset(r, 0, sizeof r);
        unsigned n = ++counter;
        time_t t = time(NULL);
        memcpy(r, &n, sizeof n);
        memcpy(r + sizeof n, &t, sizeof t);
    }
    base64_hex(dst, r, bytes);
}

/* A part's body as base64 in lines of 76. */
static void add_base64_body(buf_t *out, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i += 57) {
        size_t k = n - i < 57 ? n - i : 57;
        char line[80];
        base64_encode(line, s + i, k, 0);
        buf_adds(out, line);
        buf_adds(out, "\r\n");
    }
}

static void add_part(buf_t *out, const char *boundary, const char *type, const char *body)
{
    if (boundary) buf_addf(out, "--%s\r\n", boundary);
    buf_addf(out, "Content-Type: %s; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n", type);
    add_base64_body(out, body ? body : "");
}

static int fail(char *err, size_t errlen, const char *msg)
{
    snprintf(err, errlen, "%s", msg);
    return -1;
}

int smtp_build(const smtp_message_t *m, buf_t *out, char *msgid, size_t msgidcap, char *err, size_t errlen)
{
    char from_name[SMTP_NAME_MAX + 1], from_addr[SMTP_ADDR_MAX + 1];
    if (!m->from || smtp_parse_mailbox(m->from, from_name, sizeof from_name, from_addr, sizeof from_addr) < 0)
        return fail(err, errlen, "from is not a valid mailbox");
    if (!m->to || !smtp_address_valid(m->to)) return fail(err, errlen, "to is not a valid address");
    if (!m->subject || !smtp_header_text_safe(m->subject))
        return fail(err, errlen, "subject has a line break or a control character");
    for (int i = 0; i < m->nheaders; i++) {
        if (!header_name_valid(m->header_names[i])) return fail(err, errlen, "a header name is reserved or not a token");
        if (!smtp_header_text_safe(m->header_values[i]))
            return fail(err, errlen, "a header value has a line break or a control character");
    }
    if (m->message_id && (!smtp_header_text_safe(m->message_id) || strlen(m->message_id) >= msgidcap ||
                          m->message_id[0] != '<' || strchr(m->message_id, ' ')))
        return fail(err, errlen, "message_id must be <id@host>");

    if (m->message_id) {
        snprintf(msgid, msgidcap, "%s", m->message_id);
    } else {
        char hex[33];
        random_hex(hex, 16);
        snprintf(msgid, msgidcap, "<%s@%s>", hex, strrchr(from_addr, '@') + 1);
    }
    time_t t = m->date ? m->date : time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    buf_addf(out, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    buf_adds(out, "From: ");
    if (from_name[0]) {
        if (plain_ascii(from_name, 200)) {
            buf_adds(out, "\"");
            for (const char *p = from_name; *p; p++) {
                if (*p == '"' || *p == '\\') buf_adds(out, "\\");
                buf_add(out, p, 1);
            }
            buf_adds(out, "\"");
        } else {
            smtp_encode_words(out, from_name);
        }
        buf_addf(out, " <%s>\r\n", from_addr);
    } else {
        buf_addf(out, "%s\r\n", from_addr);
    }
    buf_addf(out, "To: %s\r\n", m->to);
    buf_adds(out, "Subject: ");
    smtp_encode_words(out, m->subject);
    buf_addf(out, "\r\nMessage-ID: %s\r\n", msgid);
    for (int i = 0; i < m->nheaders; i++) {
        buf_addf(out, "%s: ", m->header_names[i]);
        smtp_encode_words(out, m->header_values[i]);
        buf_adds(out, "\r\n");
    }
    buf_adds(out, "MIME-Version: 1.0\r\n");
    if (m->html) {
        char boundary[48] = "=_mercato_";
        random_hex(boundary + strlen(boundary), 12);
        buf_addf(out, "Content-Type: multipart/alternative; boundary=\"%s\"\r\n\r\n", boundary);
        buf_adds(out, "This is a multi-part message in MIME format.\r\n");
        add_part(out, boundary, "text/plain", m->text);
        add_part(out, boundary, "text/html", m->html);
        buf_addf(out, "--%s--\r\n", boundary);
    } else {
        add_part(out, NULL, "text/plain", m->text);
    }
    if (out->failed) return fail(err, errlen, "out of memory");
    return 0;
}

/* ---- sending ------------------------------------------------------------------------------- */

typedef struct {
    const char *data;
    size_t len, pos;
} upload_t;

static size_t read_cb(char *dst, size_t size, size_t nmemb, void *arg)
{
    upload_t *u = arg;
    size_t room = size * nmemb, left = u->len - u->pos;
    size_t n = left < room ? left : room;
    memcpy(dst, u->data + u->pos, n);
    u->pos += n;
    return n;
}

int smtp_send(CURL_handle_t *reuse, const smtp_send_opts_t *o, const char *data, size_t len, char *err, size_t errlen,
              const char **code, long *smtp_status)
{
    *smtp_status = 0;
    *code = "invalid";
    if (!o->url || (strncmp(o->url, "smtp://", 7) != 0 && strncmp(o->url, "smtps://", 8) != 0))
        return fail(err, errlen, "SMTP_URL must be smtp://host[:port] or smtps://host[:port]");
    if (!smtp_address_valid(o->from_addr) || !smtp_address_valid(o->to_addr))
        return fail(err, errlen, "envelope addresses must be valid");
    *code = "unavailable";
    CURL *c = reuse ? reuse : curl_easy_init();
    if (!c) return fail(err, errlen, "cannot create a curl handle");
    if (reuse) curl_easy_reset(c);   /* options only: the live connection stays */
    char from[SMTP_ADDR_MAX + 3], to[SMTP_ADDR_MAX + 3];
    snprintf(from, sizeof from, "<%s>", o->from_addr);
    snprintf(to, sizeof to, "<%s>", o->to_addr);
    struct curl_slist *rcpt = curl_slist_append(NULL, to);
    if (!rcpt) {
        if (!reuse) curl_easy_cleanup(c);
        return fail(err, errlen, "out of memory");
    }
    upload_t up = { data, len, 0 };
    char ebuf[CURL_ERROR_SIZE] = "";
    long timeout = o->timeout_ms > 0 ? o->timeout_ms : 10000;
    curl_easy_setopt(c, CURLOPT_URL, o->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, from);
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(c, CURLOPT_READDATA, &up);
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_USE_SSL, (long)(o->require_tls ? CURLUSESSL_ALL : CURLUSESSL_TRY));
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout < 5000 ? timeout : 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    if (o->ca_file) curl_easy_setopt(c, CURLOPT_CAINFO, o->ca_file);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (!reuse) curl_easy_cleanup(c);
    else curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);   /* ebuf dies with this call */
    curl_slist_free_all(rcpt);
    *smtp_status = status;
    if (rc == CURLE_OK) return 0;
    if (rc == CURLE_OPERATION_TIMEDOUT) *code = "timeout";
    else if (rc != CURLE_LOGIN_DENIED && status >= 500 && status < 600) *code = "rejected";
    else *code = "unavailable";
    const char *why = ebuf[0] ? ebuf : curl_easy_strerror(rc);
    if (status) snprintf(err, errlen, "smtp: %s (SMTP %ld)", why, status);
    else snprintf(err, errlen, "smtp: %s", why);
    return -1;
}

/* ---- Lua ----------------------------------------------------------------------------------- */

/* A string field of the table at index 1, or NULL when absent; raises on another type. */
static const char *opt_field(lua_State *L, const char *key)
{
    lua_getfield(L, 1, key);
    const char *s = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) s = lua_tostring(L, -1);
    else if (!lua_isnil(L, -1)) luaL_error(L, "smtp: `%s` must be a string", key);
    lua_pop(L, 1);   /* the table keeps the string alive */
    return s;
}

/* Read the message table at index 1 into m (strings borrowed from the table). Raises on misuse. */
static void read_message(lua_State *L, smtp_message_t *m)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    memset(m, 0, sizeof *m);
    m->from = opt_field(L, "from");
    m->to = opt_field(L, "to");
    m->subject = opt_field(L, "subject");
    m->text = opt_field(L, "text");
    m->html = opt_field(L, "html");
    m->message_id = opt_field(L, "message_id");
    lua_getfield(L, 1, "date");
    if (lua_type(L, -1) == LUA_TNUMBER) m->date = (time_t)lua_tonumber(L, -1);
    else if (!lua_isnil(L, -1)) luaL_error(L, "smtp: `date` must be a number (unix seconds)");
    lua_pop(L, 1);
    lua_getfield(L, 1, "headers");
    if (lua_istable(L, -1)) {
        /* Sorted by name, so a message is built the same way every time. */
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "smtp: headers must map strings to strings");
            if (m->nheaders == SMTP_MAX_HEADERS) luaL_error(L, "smtp: at most %d extra headers", SMTP_MAX_HEADERS);
            const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
            int i = m->nheaders++;
            while (i > 0 && strcmp(m->header_names[i - 1], k) > 0) {
                m->header_names[i] = m->header_names[i - 1];
                m->header_values[i] = m->header_values[i - 1];
                i--;
            }
            m->header_names[i] = k;
            m->header_values[i] = v;
            lua_pop(L, 1);
        }
    } else if (!lua_isnil(L, -1)) {
        luaL_error(L, "smtp: `headers` must be a table");
    }
    lua_pop(L, 1);   /* the message table keeps the headers table alive */
}

static int fail_lua(lua_State *L, const char *err, const char *code)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, code);
    return 3;
}

/* smtp.build(msg) → raw message, message_id | nil, err, "invalid". */
static int l_build(lua_State *L)
{
    smtp_message_t m;
    read_message(L, &m);
    buf_t out;
    buf_init(&out);
    char msgid[160], err[256];
    if (smtp_build(&m, &out, msgid, sizeof msgid, err, sizeof err) < 0) {
        buf_free(&out);
        return fail_lua(L, err, "invalid");
    }
    lua_pushlstring(L, out.data, out.len);
    buf_free(&out);
    lua_pushstring(L, msgid);
    return 2;
}

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

/* smtp.send(msg) → message_id | nil, err, code, smtp_status. Blocks: runners only. */
static int l_send(lua_State *L)
{
    worker_t *w = worker_from_lua(L);
    if (w && w->kind && strcmp(w->kind, "http") == 0)
        return luaL_error(L, "smtp.send blocks: call it from a runner (consumers.lua or jobs.lua), not a handler");
    smtp_message_t m;
    read_message(L, &m);
    smtp_send_opts_t o = { 0 };
    o.url = opt_field(L, "url");
    if (!o.url) o.url = env_or("SMTP_URL", NULL);
    lua_getfield(L, 1, "require_tls");
    o.require_tls = lua_isnil(L, -1) ? strcmp(env_or("SMTP_REQUIRE_TLS", "0"), "1") == 0 : lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 1, "timeout_ms");
    o.timeout_ms = lua_isnumber(L, -1) ? (long)lua_tonumber(L, -1) : atol(env_or("SMTP_TIMEOUT_MS", "10000"));
    lua_pop(L, 1);
    o.ca_file = env_or("SMTP_CA_FILE", NULL);
    if (!o.url) return fail_lua(L, "SMTP_URL is not set", "unavailable");

    buf_t out;
    buf_init(&out);
    char msgid[160], err[512];
    if (smtp_build(&m, &out, msgid, sizeof msgid, err, sizeof err) < 0) {
        buf_free(&out);
        return fail_lua(L, err, "invalid");
    }
    char name[SMTP_NAME_MAX + 1], from_addr[SMTP_ADDR_MAX + 1];
    smtp_parse_mailbox(m.from, name, sizeof name, from_addr, sizeof from_addr);   /* checked by build */
    o.from_addr = from_addr;
    o.to_addr = m.to;
    const char *code;
    long status;
    /* A runner's sends share one handle, so consecutive messages share one SMTP connection. */
    CURL *c = NULL;
    if (w) {
        if (!w->binding[BIND_SMTP]) w->binding[BIND_SMTP] = curl_easy_init();
        c = w->binding[BIND_SMTP];
    }
    int rc = smtp_send(c, &o, out.data, out.len, err, sizeof err, &code, &status);
    buf_free(&out);
    if (rc < 0) {
        fail_lua(L, err, code);
        lua_pushinteger(L, status);
        return 4;
    }
    lua_pushstring(L, msgid);
    return 1;
}

static int l_valid_address(lua_State *L)
{
    lua_pushboolean(L, lua_type(L, 1) == LUA_TSTRING && smtp_address_valid(lua_tostring(L, 1)));
    return 1;
}

static void smtp_worker_free(worker_t *w)
{
    if (w->binding[BIND_SMTP]) curl_easy_cleanup(w->binding[BIND_SMTP]);
    w->binding[BIND_SMTP] = NULL;
}

int luaopen_smtp(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "build", l_build },
        { "send", l_send },
        { "valid_address", l_valid_address },
        { NULL, NULL },
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}

const binding_t binding_smtp = {
    .name = "smtp",
    .open = luaopen_smtp,
    .worker_free = smtp_worker_free,
};
