/* test_smtp: the smtp binding — address checks, RFC 2047 words, MIME building that refuses
 * every CR/LF injection, and sends over libcurl to a loopback SMTP server run by this test
 * (accepted, 5xx rejected, 4xx and refused connections unavailable), plus the Lua surface. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../bindings/smtp.h"
#include "../core/base64.h"
#include "bindings.h"
#include "test.h"
#include "test_lua.h"
#include "worker.h"

/* ---- addresses ----------------------------------------------------------------------------- */

TEST(addresses_are_checked)
{
    CHECK(smtp_address_valid("ann@example.com"));
    CHECK(smtp_address_valid("a.b+tag@mail.example.co.uk"));
    CHECK(smtp_address_valid("x@localhost"));
    CHECK(!smtp_address_valid(""));
    CHECK(!smtp_address_valid("ann"));
    CHECK(!smtp_address_valid("@example.com"));
    CHECK(!smtp_address_valid("ann@"));
    CHECK(!smtp_address_valid(".ann@example.com"));
    CHECK(!smtp_address_valid("a..b@example.com"));
    CHECK(!smtp_address_valid("ann@-example.com"));
    CHECK(!smtp_address_valid("ann@example-.com"));
    CHECK(!smtp_address_valid("ann@exa_mple.com"));
    CHECK(!smtp_address_valid("ann@example..com"));
    CHECK(!smtp_address_valid("ann@example.com\r\nBcc: x@evil.com"));
    CHECK(!smtp_address_valid("ann@example.com>\r\nRCPT TO:<x@evil.com"));
    CHECK(!smtp_address_valid("a nn@example.com"));
    CHECK(!smtp_address_valid("\"ann\"@example.com"));
    CHECK(!smtp_address_valid("ann@ex\xc3\xa9mple.com"));
    char long_local[80];
    memset(long_local, 'a', 65);
    strcpy(long_local + 65, "@x.io");
    CHECK(!smtp_address_valid(long_local));
}

TEST(mailboxes_split_into_name_and_address)
{
    char name[64], addr[64];
    CHECK_INT(smtp_parse_mailbox("Mercato <no-reply@mercato.test>", name, sizeof name, addr, sizeof addr), 0);
    CHECK_STR(name, "Mercato");
    CHECK_STR(addr, "no-reply@mercato.test");
    CHECK_INT(smtp_parse_mailbox("\"Shop, Inc\" <a@b.io>", name, sizeof name, addr, sizeof addr), 0);
    CHECK_STR(name, "Shop, Inc");
    CHECK_INT(smtp_parse_mailbox("a@b.io", name, sizeof name, addr, sizeof addr), 0);
    CHECK_STR(name, "");
    CHECK_STR(addr, "a@b.io");
    CHECK_INT(smtp_parse_mailbox("Evil\r\nBcc: x@y.io <a@b.io>", name, sizeof name, addr, sizeof addr), -1);
    CHECK_INT(smtp_parse_mailbox("Name <not an address>", name, sizeof name, addr, sizeof addr), -1);
}

/* ---- encoded words ------------------------------------------------------------------------- */

/* Decode every =?UTF-8?B?...?= word of s back into out. */
static void decode_words(const char *s, char *out, size_t cap)
{
    size_t n = 0;
    const char *p = s;
    while ((p = strstr(p, "=?UTF-8?B?")) != NULL) {
        p += 10;
        const char *e = strstr(p, "?=");
        char tmp[128];
        long k = base64_decode(tmp, p, (size_t)(e - p), 0);
        if (k > 0 && n + (size_t)k < cap) { memcpy(out + n, tmp, (size_t)k); n += (size_t)k; }
        p = e + 2;
    }
    out[n] = '\0';
}

TEST(subjects_are_rfc2047_words_never_splitting_a_character)
{
    buf_t b;
    buf_init(&b);
    smtp_encode_words(&b, "Your order");
    CHECK_STR(b.data, "Your order");
    buf_free(&b);

    /* 30 × "é" (60 bytes): more than one word, each word a whole number of characters. */
    char s[128] = "Commande confirm";
    for (int i = 0; i < 30; i++) strcat(s, "\xc3\xa9");
    buf_init(&b);
    smtp_encode_words(&b, s);
    CHECK(strncmp(b.data, "=?UTF-8?B?", 10) == 0);
    CHECK(strstr(b.data, "\r\n =?UTF-8?B?") != NULL);
    char back[256];
    decode_words(b.data, back, sizeof back);
    CHECK_STR(back, s);
    /* each word decodes to valid UTF-8 on its own: no word ends inside a sequence */
    const char *p = b.data;
    while ((p = strstr(p, "=?UTF-8?B?")) != NULL) {
        p += 10;
        const char *e = strstr(p, "?=");
        char tmp[128];
        long k = base64_decode(tmp, p, (size_t)(e - p), 0);
        CHECK(k > 0 && ((unsigned char)tmp[k - 1] < 0x80 || (unsigned char)tmp[k - 1] == 0xa9));
        CHECK(e - p + 12 <= 76);
        p = e + 2;
    }
    buf_free(&b);

    /* Something that looks like an encoded word is itself encoded. */
    buf_init(&b);
    smtp_encode_words(&b, "=?UTF-8?B?aGk=?=");
    decode_words(b.data, back, sizeof back);
    CHECK_STR(back, "=?UTF-8?B?aGk=?=");
    buf_free(&b);
}

/* ---- building ------------------------------------------------------------------------------ */

static smtp_message_t base_message(void)
{
    smtp_message_t m = { 0 };
    m.from = "Mercato <no-reply@mercato.test>";
    m.to = "ann@example.com";
    m.subject = "Your order";
    m.text = "Hello Ann";
    m.html = "<p>Hello Ann</p>";
    m.date = 1796256000;   /* 2026-12-03T00:00:00Z, a Thursday */
    m.nheaders = 1;
    m.header_names[0] = "X-Mercato-Event-Id";
    m.header_values[0] = "0b6f5d1c-1d1a-4c1e-9c3e-000000000001";
    return m;
}

TEST(a_message_has_its_headers_and_two_parts)
{
    smtp_message_t m = base_message();
    buf_t b;
    buf_init(&b);
    char id[160], err[256];
    CHECK_INT(smtp_build(&m, &b, id, sizeof id, err, sizeof err), 0);
    CHECK(strstr(b.data, "Date: Thu, 03 Dec 2026 00:00:00 +0000\r\n") != NULL);
    CHECK(strstr(b.data, "From: \"Mercato\" <no-reply@mercato.test>\r\n") != NULL);
    CHECK(strstr(b.data, "To: ann@example.com\r\n") != NULL);
    CHECK(strstr(b.data, "Subject: Your order\r\n") != NULL);
    CHECK(strstr(b.data, "X-Mercato-Event-Id: 0b6f5d1c-1d1a-4c1e-9c3e-000000000001\r\n") != NULL);
    CHECK(strstr(b.data, "MIME-Version: 1.0\r\n") != NULL);
    CHECK(strstr(b.data, "Content-Type: multipart/alternative; boundary=\"=_mercato_") != NULL);
    CHECK(strstr(b.data, "Content-Type: text/plain; charset=utf-8") != NULL);
    CHECK(strstr(b.data, "Content-Type: text/html; charset=utf-8") != NULL);
    CHECK(id[0] == '<' && strstr(id, "@mercato.test>") != NULL);
    char want[200];
    snprintf(want, sizeof want, "Message-ID: %s\r\n", id);
    CHECK(strstr(b.data, want) != NULL);
    /* the bodies are base64 */
    CHECK(strstr(b.data, "SGVsbG8gQW5u\r\n") != NULL);            /* "Hello Ann" */
    CHECK(strstr(b.data, "PHA+SGVsbG8gQW5uPC9wPg==\r\n") != NULL); /* "<p>Hello Ann</p>" */
    /* every line ends in CRLF and none is longer than 998 */
    for (size_t i = 0, start = 0; i < b.len; i++) {
        if (b.data[i] == '\n') {
            CHECK(i > 0 && b.data[i - 1] == '\r');
            CHECK(i - start <= 998);
            start = i + 1;
        }
    }
    buf_free(&b);
}

TEST(a_text_only_message_is_one_part)
{
    smtp_message_t m = base_message();
    m.html = NULL;
    buf_t b;
    buf_init(&b);
    char id[160], err[256];
    CHECK_INT(smtp_build(&m, &b, id, sizeof id, err, sizeof err), 0);
    CHECK(strstr(b.data, "multipart") == NULL);
    CHECK(strstr(b.data, "Content-Type: text/plain; charset=utf-8\r\n") != NULL);
    buf_free(&b);
}

static int build_fails(smtp_message_t *m)
{
    buf_t b;
    buf_init(&b);
    char id[160], err[256];
    int rc = smtp_build(m, &b, id, sizeof id, err, sizeof err);
    buf_free(&b);
    return rc < 0;
}

TEST(no_field_can_inject_a_header)
{
    smtp_message_t m = base_message();
    m.subject = "Hi\r\nBcc: victim@example.com";
    CHECK(build_fails(&m));
    m = base_message();
    m.subject = "Hi\nBcc: victim@example.com";
    CHECK(build_fails(&m));
    m = base_message();
    m.subject = "Hi\rX";
    CHECK(build_fails(&m));
    m = base_message();
    m.to = "ann@example.com\r\nBcc: victim@example.com";
    CHECK(build_fails(&m));
    m = base_message();
    m.from = "Mercato\r\nBcc: victim@example.com <no-reply@mercato.test>";
    CHECK(build_fails(&m));
    m = base_message();
    m.header_values[0] = "id\r\nBcc: victim@example.com";
    CHECK(build_fails(&m));
    m = base_message();
    m.header_names[0] = "X-Id\r\nBcc";
    CHECK(build_fails(&m));
    m = base_message();
    m.header_names[0] = "Bcc";
    CHECK(build_fails(&m));
    m = base_message();
    m.header_names[0] = "content-type";
    CHECK(build_fails(&m));
    m = base_message();
    m.message_id = "<a@b>\r\nBcc: victim@example.com";
    CHECK(build_fails(&m));
    /* a body may hold anything: it is base64, so no line of it is a header or a boundary */
    m = base_message();
    m.text = "line\r\n.\r\n--=_mercato_x\r\nBcc: victim@example.com\r\n";
    buf_t b;
    buf_init(&b);
    char id[160], err[256];
    CHECK_INT(smtp_build(&m, &b, id, sizeof id, err, sizeof err), 0);
    CHECK(strstr(b.data, "victim") == NULL);
    buf_free(&b);
}

TEST(non_ascii_subjects_and_names_are_encoded)
{
    smtp_message_t m = base_message();
    m.subject = "Commande expédiée ✓";
    m.from = "Boutique Été <shop@mercato.test>";
    buf_t b;
    buf_init(&b);
    char id[160], err[256];
    CHECK_INT(smtp_build(&m, &b, id, sizeof id, err, sizeof err), 0);
    CHECK(strstr(b.data, "Subject: =?UTF-8?B?") != NULL);
    CHECK(strstr(b.data, "From: =?UTF-8?B?") != NULL);
    CHECK(strstr(b.data, "\xc3\xa9") == NULL);   /* no raw 8-bit byte in the message */
    buf_free(&b);
}

/* ---- a loopback SMTP server ---------------------------------------------------------------- */

typedef struct {
    int lfd, port;
    int rcpt_reply;            /* 250, 550, 451 */
    char data[8192];           /* the DATA received */
    int messages;              /* DATA commands accepted on the one connection */
    int offer_auth;            /* advertise AUTH PLAIN and record what the client sends */
    char auth[256];
    char mail_from[1100], rcpt_to[1100];
} fake_smtp_t;

static void say(int fd, const char *s) { if (write(fd, s, strlen(s)) < 0) return; }

/* One line (without CRLF) into line; 0 at EOF. */
static int read_line(int fd, char *line, size_t cap)
{
    size_t n = 0;
    char c;
    while (read(fd, &c, 1) == 1) {
        if (c == '\n') { if (n && line[n - 1] == '\r') n--; line[n] = '\0'; return 1; }
        if (n + 1 < cap) line[n++] = c;
    }
    return 0;
}

static void *fake_smtp_serve(void *arg)
{
    fake_smtp_t *s = arg;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0) return NULL;
    char line[1024];
    say(fd, "220 fake ESMTP\r\n");
    while (read_line(fd, line, sizeof line)) {
        if (!strncasecmp(line, "EHLO", 4)) say(fd, s->offer_auth ? "250-fake\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n" : "250-fake\r\n250 8BITMIME\r\n");
        else if (!strncasecmp(line, "AUTH PLAIN", 10)) {
            const char *b64 = line + 10;
            while (*b64 == ' ') b64++;
            if (!*b64) {   /* no initial response: ask for it */
                say(fd, "334 \r\n");
                if (!read_line(fd, line, sizeof line)) break;
                b64 = line;
            }
            long n = base64_decode(s->auth, b64, strlen(b64), 0);
            for (long i = 0; i < n; i++) if (s->auth[i] == '\0') s->auth[i] = '|';
            say(fd, "235 ok\r\n");
        }
        else if (!strncasecmp(line, "HELO", 4)) say(fd, "250 fake\r\n");
        else if (!strncasecmp(line, "MAIL FROM:", 10)) { snprintf(s->mail_from, sizeof s->mail_from, "%s", line + 10); say(fd, "250 ok\r\n"); }
        else if (!strncasecmp(line, "RCPT TO:", 8)) {
            snprintf(s->rcpt_to, sizeof s->rcpt_to, "%s", line + 8);
            say(fd, s->rcpt_reply == 250 ? "250 ok\r\n" : s->rcpt_reply == 550 ? "550 no such user\r\n" : "451 try later\r\n");
        } else if (!strncasecmp(line, "DATA", 4)) {
            say(fd, "354 go\r\n");
            size_t n = 0;
            while (read_line(fd, line, sizeof line) && strcmp(line, ".") != 0) {
                size_t l = strlen(line);
                if (n + l + 2 < sizeof s->data) { memcpy(s->data + n, line, l); memcpy(s->data + n + l, "\r\n", 2); n += l + 2; }
            }
            s->data[n] = '\0';
            s->messages++;
            say(fd, "250 queued\r\n");
        } else if (!strncasecmp(line, "QUIT", 4)) { say(fd, "221 bye\r\n"); break; }
        else if (!strncasecmp(line, "RSET", 4)) say(fd, "250 ok\r\n");
        else say(fd, "502 no\r\n");
    }
    close(fd);
    return NULL;
}

static int fake_smtp_listen(fake_smtp_t *s)
{
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (bind(s->lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(s->lfd, 4) < 0) return -1;
    getsockname(s->lfd, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    return 0;
}

static int send_to_fake(fake_smtp_t *s, const char **code, long *status, char *err, size_t errlen)
{
    pthread_t t;
    pthread_create(&t, NULL, fake_smtp_serve, s);
    smtp_message_t m = base_message();
    buf_t b;
    buf_init(&b);
    char id[160];
    smtp_build(&m, &b, id, sizeof id, err, errlen);
    char url[64];
    snprintf(url, sizeof url, "smtp://127.0.0.1:%d", s->port);
    smtp_send_opts_t o = { .url = url, .from_addr = "no-reply@mercato.test", .to_addr = "ann@example.com", .timeout_ms = 3000 };
    int rc = smtp_send(NULL, &o, b.data, b.len, err, errlen, code, status);
    buf_free(&b);
    pthread_join(t, NULL);
    close(s->lfd);
    return rc;
}

TEST(a_send_delivers_the_built_message)
{
    static fake_smtp_t s = { .rcpt_reply = 250 };
    CHECK_INT(fake_smtp_listen(&s), 0);
    const char *code = NULL;
    long status = 0;
    char err[256] = "";
    CHECK_INT(send_to_fake(&s, &code, &status, err, sizeof err), 0);
    CHECK_STR(s.mail_from, "<no-reply@mercato.test>");
    CHECK_STR(s.rcpt_to, "<ann@example.com>");
    CHECK(strstr(s.data, "Subject: Your order\r\n") != NULL);
    CHECK(strstr(s.data, "X-Mercato-Event-Id: ") != NULL);
}

TEST(a_kept_handle_sends_consecutive_messages_on_one_connection)
{
    static fake_smtp_t s = { .rcpt_reply = 250 };
    CHECK_INT(fake_smtp_listen(&s), 0);
    pthread_t t;
    pthread_create(&t, NULL, fake_smtp_serve, &s);   /* serves one connection only */
    char url[64], err[256] = "";
    snprintf(url, sizeof url, "smtp://127.0.0.1:%d", s.port);
    smtp_send_opts_t o = { .url = url, .from_addr = "a@b.io", .to_addr = "c@d.io", .timeout_ms = 3000 };
    CURL *c = curl_easy_init();
    const char *code = NULL;
    long status = 0;
    CHECK_INT(smtp_send(c, &o, "Subject: 1\r\n\r\none\r\n", 20, err, sizeof err, &code, &status), 0);
    CHECK_INT(smtp_send(c, &o, "Subject: 2\r\n\r\ntwo\r\n", 20, err, sizeof err, &code, &status), 0);
    curl_easy_cleanup(c);   /* QUIT */
    pthread_join(t, NULL);
    close(s.lfd);
    CHECK_INT(s.messages, 2);
    CHECK(strstr(s.data, "two") != NULL);
}

TEST(auth_comes_from_the_url_and_tls_can_be_required)
{
    static fake_smtp_t s = { .rcpt_reply = 250, .offer_auth = 1 };
    CHECK_INT(fake_smtp_listen(&s), 0);
    pthread_t t;
    pthread_create(&t, NULL, fake_smtp_serve, &s);
    char url[96], err[256] = "";
    snprintf(url, sizeof url, "smtp://mailer:s%%40cret@127.0.0.1:%d", s.port);   /* "s@cret", percent-encoded */
    smtp_send_opts_t o = { .url = url, .from_addr = "a@b.io", .to_addr = "c@d.io", .timeout_ms = 3000 };
    const char *code = NULL;
    long status = 0;
    CHECK_INT(smtp_send(NULL, &o, "Subject: 1\r\n\r\none\r\n", 20, err, sizeof err, &code, &status), 0);
    pthread_join(t, NULL);
    close(s.lfd);
    if (s.auth[0] != '|') printf("#   %s\n", err);
    CHECK_STR(s.auth, "|mailer|s@cret");
    CHECK_INT(s.messages, 1);

    /* The fake server offers no STARTTLS: with require_tls nothing is sent in clear. */
    static fake_smtp_t u = { .rcpt_reply = 250 };
    CHECK_INT(fake_smtp_listen(&u), 0);
    pthread_create(&t, NULL, fake_smtp_serve, &u);
    snprintf(url, sizeof url, "smtp://127.0.0.1:%d", u.port);
    o.url = url;
    o.require_tls = 1;
    CHECK_INT(smtp_send(NULL, &o, "Subject: 1\r\n\r\none\r\n", 20, err, sizeof err, &code, &status), -1);
    CHECK_STR(code, "unavailable");
    shutdown(u.lfd, SHUT_RDWR);
    pthread_join(t, NULL);
    close(u.lfd);
    CHECK_INT(u.messages, 0);
    CHECK(u.mail_from[0] == '\0');
}

TEST(a_5xx_is_rejected_and_a_4xx_unavailable)
{
    static fake_smtp_t s = { .rcpt_reply = 550 };
    CHECK_INT(fake_smtp_listen(&s), 0);
    const char *code = NULL;
    long status = 0;
    char err[256] = "";
    CHECK_INT(send_to_fake(&s, &code, &status, err, sizeof err), -1);
    CHECK_STR(code, "rejected");
    CHECK_INT(status, 550);
    CHECK(strstr(err, "SMTP 550") != NULL);

    static fake_smtp_t t = { .rcpt_reply = 451 };
    CHECK_INT(fake_smtp_listen(&t), 0);
    CHECK_INT(send_to_fake(&t, &code, &status, err, sizeof err), -1);
    CHECK_STR(code, "unavailable");
    CHECK_INT(status, 451);
}

TEST(a_closed_port_is_unavailable_and_secrets_stay_out_of_the_error)
{
    fake_smtp_t s = { 0 };
    CHECK_INT(fake_smtp_listen(&s), 0);
    int port = s.port;
    close(s.lfd);   /* nothing listens there now */
    char url[96];
    snprintf(url, sizeof url, "smtp://user:hunter2@127.0.0.1:%d", port);
    smtp_send_opts_t o = { .url = url, .from_addr = "a@b.io", .to_addr = "c@d.io", .timeout_ms = 2000 };
    const char *code = NULL;
    long status = 0;
    char err[256] = "";
    CHECK_INT(smtp_send(NULL, &o, "x", 1, err, sizeof err, &code, &status), -1);
    CHECK_STR(code, "unavailable");
    CHECK(strstr(err, "hunter2") == NULL);
    o.url = "http://127.0.0.1/";
    CHECK_INT(smtp_send(NULL, &o, "x", 1, err, sizeof err, &code, &status), -1);
    CHECK_STR(code, "invalid");
}

/* ---- Lua ----------------------------------------------------------------------------------- */

TEST(lua_build_returns_the_message_or_nil_err_invalid)
{
    lua_State *L = test_state(NULL, "smtp");
    CHECK_STR(test_eval(L, "local raw, id = smtp.build{ from = 'a@b.io', to = 'c@d.io', subject = 'Hi', text = 't', html = '<b>h</b>', "
                           "headers = { ['X-Mercato-Event-Id'] = 'e1' } } return raw:match('X%-Mercato%-Event%-Id: e1') and id:match('^<.*@b%.io>$') and 'ok'"), "ok");
    CHECK_STR(test_eval(L, "local r, err, code = smtp.build{ from = 'a@b.io', to = 'c@d.io', subject = 'Hi\\r\\nBcc: x@y.io', text = 't' } "
                           "return tostring(r) .. '|' .. code"), "nil|invalid");
    CHECK_STR(test_eval(L, "return tostring(smtp.valid_address('a@b.io')) .. tostring(smtp.valid_address('a@b.io\\n'))"), "truefalse");
    CHECK(strstr(test_eval(L, "return smtp.build('x')"), "error:") != NULL);
    CHECK(strstr(test_eval(L, "return smtp.build{ from = 1 }"), "`from` must be a string") != NULL);
    CHECK_STR(test_eval(L, "local r, err, code = smtp.send{ url = 'smtp://127.0.0.1:1', from = 'a@b.io', to = 'bad', subject = 's' } return code"), "invalid");
    lua_close(L);
}

TEST(lua_send_refuses_to_block_an_http_thread)
{
    worker_t *w = calloc(1, sizeof *w);
    w->kind = "http";
    lua_State *L = test_state(w, "smtp");
    CHECK(strstr(test_eval(L, "return smtp.send{ from = 'a@b.io', to = 'c@d.io', subject = 's' }"), "call it from a runner") != NULL);
    lua_close(L);
    free(w);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    RUN(addresses_are_checked);
    RUN(mailboxes_split_into_name_and_address);
    RUN(subjects_are_rfc2047_words_never_splitting_a_character);
    RUN(a_message_has_its_headers_and_two_parts);
    RUN(a_text_only_message_is_one_part);
    RUN(no_field_can_inject_a_header);
    RUN(non_ascii_subjects_and_names_are_encoded);
    RUN(a_send_delivers_the_built_message);
    RUN(a_kept_handle_sends_consecutive_messages_on_one_connection);
    RUN(auth_comes_from_the_url_and_tls_can_be_required);
    RUN(a_5xx_is_rejected_and_a_4xx_unavailable);
    RUN(a_closed_port_is_unavailable_and_secrets_stay_out_of_the_error);
    RUN(lua_build_returns_the_message_or_nil_err_invalid);
    RUN(lua_send_refuses_to_block_an_http_thread);
    curl_global_cleanup();
    return test_done();
}
