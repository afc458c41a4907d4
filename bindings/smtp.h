/* smtp: e-mail over SMTP for Lua (`require "smtp"`, bindings/smtp.c) — MIME building with
 * header-injection safety, and a send over libcurl (smtp:// with STARTTLS, smtps://, AUTH from
 * the URL's user:password).
 *
 * The send is a *blocking* curl easy transfer: it is meant for runner threads (the notification
 * sender), which may block. On an HTTP thread smtp.send raises instead of stalling the loop. */
#ifndef MERCATO_SMTP_H
#define MERCATO_SMTP_H

#include <stddef.h>
#include <time.h>

#include "../core/buf.h"

#define SMTP_ADDR_MAX 254
#define SMTP_NAME_MAX 200
#define SMTP_MAX_HEADERS 8

/* One message to build. Every string is UTF-8 and borrowed (the caller owns it). */
typedef struct {
    const char *from;                 /* "addr@host" or "Display Name <addr@host>" */
    const char *to;                   /* "addr@host" */
    const char *subject;
    const char *text;                 /* the text/plain part (may be NULL: empty) */
    const char *html;                 /* the text/html part (NULL: a text-only message) */
    int nheaders;
    const char *header_names[SMTP_MAX_HEADERS];    /* extra headers, e.g. X-Mercato-Event-Id */
    const char *header_values[SMTP_MAX_HEADERS];
    time_t date;                      /* 0: now */
    const char *message_id;           /* "<...@...>", or NULL: generated */
} smtp_message_t;

/* 1 when s is an address we send to: dot-atom local part (≤ 64) @ a host name of LDH labels
 * (≤ 253), at most 254 in all, ASCII only; no quoted local parts, no address literals. */
int smtp_address_valid(const char *s);

/* Split "Name <addr>" or "addr" into its display name ("" when none) and address; 0, or -1 when
 * it is not one valid mailbox. */
int smtp_parse_mailbox(const char *s, char *name, size_t namecap, char *addr, size_t addrcap);

/* 1 when s may stand in a header: no CR, LF, NUL or other control character but TAB. */
int smtp_header_text_safe(const char *s);

/* Append s as header text: unchanged when it is short printable ASCII, otherwise as RFC 2047
 * "=?UTF-8?B?...?=" encoded words (never splitting a UTF-8 sequence), folded with CRLF SP. */
void smtp_encode_words(buf_t *out, const char *s);

/* Build the whole message (CRLF line ends, multipart/alternative when html is given) into
 * out. The Message-ID used is copied into msgid (cap ≥ 128). 0, or -1 with err (an invalid
 * address, a CR/LF or other control character in a header field, a bad header name). */
int smtp_build(const smtp_message_t *m, buf_t *out, char *msgid, size_t msgidcap, char *err, size_t errlen);

/* Send opts. */
typedef struct {
    const char *url;                  /* smtp://[user:pass@]host[:port] or smtps://... */
    const char *from_addr;            /* envelope sender (bare address) */
    const char *to_addr;              /* envelope recipient (bare address) */
    int require_tls;                  /* 1: STARTTLS must succeed on smtp:// (else it is tried) */
    long timeout_ms;
    const char *ca_file;              /* NULL: the system's CAs */
} smtp_send_opts_t;

/* Send len bytes of a built message on the easy handle c (NULL: a handle of its own, closed
 * after). A handle kept between sends keeps its SMTP connection open: the next message goes on
 * it (a connection the server closed is noticed and replaced). Blocks up to timeout_ms. 0, or -1 with err and *code:
 * "unavailable" (cannot connect, TLS refused, a 4xx answer: try again later), "timeout", or
 * "rejected" (a 5xx answer: the server will not take it as it is). *smtp_status gets the last
 * SMTP reply code (0 when none). */
typedef void CURL_handle_t;   /* a CURL * (curl/curl.h stays out of this header) */
int smtp_send(CURL_handle_t *c, const smtp_send_opts_t *o, const char *data, size_t len, char *err, size_t errlen,
              const char **code, long *smtp_status);

#endif
