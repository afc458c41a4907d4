/* json_reader: a strict, allocation-free RFC 8259 reader over byte spans — just enough for JWT
 * headers, claims and JWK sets, so that the C checks and the Lua claims table come from one
 * parser (no parser differential between what C checked and what Lua sees). Duplicate object
 * members: the last one wins, everywhere (and the token checks refuse them: json_reader_unique).
 * Strings are UTF-8 (a document with other bytes in a string is not valid), as json.decode
 * requires of request bodies. */
#ifndef MERCATO_JSON_READER_H
#define MERCATO_JSON_READER_H

#include <lua.h>
#include <stddef.h>

#define JSON_READER_MAX_DEPTH 32
#define JSON_READER_MAX_MEMBERS 64   /* json_reader_unique: members of one object */
#define JSON_READER_MAX_KEY 128      /* json_reader_unique: bytes of one member name (NUL included) */

typedef struct {
    const char *p, *end;    /* one JSON value, leading white space allowed */
} json_span_t;

typedef struct {
    const char *p, *end;    /* position inside an array; start it with json_reader_iter */
    int started;
} json_iter_t;

/* Whether s[0, n) is exactly one valid JSON value (surrounding white space allowed). */
int json_reader_valid(const char *s, size_t n);

/* The value of member `name` of the object in obj (the last one when repeated): 0 and *val
 * set, or -1 when obj is not an object or has no such member. */
int json_reader_member(json_span_t obj, const char *name, json_span_t *val);

/* 1 when obj is an object whose member names (unescaped) are all different, at most
 * JSON_READER_MAX_MEMBERS of them, each shorter than JSON_READER_MAX_KEY bytes; else 0. RFC 7519
 * §4 lets a JWT reader refuse duplicate claim names, which the token checks do (RFC 7515 §5.2:
 * no parser differential can then arise between readers that keep the first or the last). */
int json_reader_unique(json_span_t obj);

/* Unescape the string value v into out (capacity cap, NUL-terminated): 0, or -1 when v is not a
 * string, holds "\u0000", or does not fit. */
int json_reader_string(json_span_t v, char *out, size_t cap);

/* The number value v as a double: 0, or -1 when v is not a number. */
int json_reader_number(json_span_t v, double *out);

/* Start iterating the elements of the array in v: 0, or -1 when v is not an array. */
int json_reader_iter(json_span_t v, json_iter_t *it);

/* The next element: 1 with *elem set, 0 at the end, -1 on malformed input. */
int json_reader_next(json_iter_t *it, json_span_t *elem);

/* Push s[0, n) as a Lua value (objects and arrays as tables, null as the light userdata NULL
 * that cjson.null also is). Returns 0, or -1 with nothing pushed when s is not valid JSON.
 * May raise on out-of-memory, like any lua_push*. */
int json_reader_push(lua_State *L, const char *s, size_t n);

#endif
