/* s3: the C API behind the `s3` Lua module (bindings/s3.c), shared with tests/test_s3.c.
 *
 * Objects go to an S3-compatible store (AWS, MinIO, s3rver) over the worker's curl handle,
 * signed by libcurl's CURLOPT_AWS_SIGV4 with x-amz-content-sha256 set here (curl 7.88 does not
 * add it); without S3_BUCKET they go to a directory on local disk (BLOB_DIR). Keys are
 * restricted to [A-Za-z0-9._-/] segments that do not start with '.', so a key can never name a
 * path outside BLOB_DIR, and needs no escaping in a URL or a signature. */
#ifndef MERCATO_S3_H
#define MERCATO_S3_H

#include <curl/curl.h>
#include <stddef.h>

#include "../core/httpc.h"
#include "../core/buf.h"

#define S3_MAX_KEY 512

typedef struct s3_config {
    int enabled;                 /* S3_BUCKET set: the object store, else local disk */
    char endpoint[256];          /* S3_ENDPOINT without a trailing slash; default AWS for the region */
    char bucket[64];             /* S3_BUCKET */
    char region[32];             /* S3_REGION, default us-east-1 */
    char access_key[128];        /* S3_ACCESS_KEY */
    char secret_key[128];        /* S3_SECRET_KEY (never logged) */
    int path_style;              /* S3_FORCE_PATH_STYLE; default on for a custom endpoint */
    char public_url[256];        /* S3_PUBLIC_URL: prefix of object URLs handed to clients */
    long timeout_ms;             /* S3_TIMEOUT_MS, default 10000 */
    long connect_ms;             /* S3_CONNECT_TIMEOUT_MS, default 2000 */
    size_t max_object;           /* S3_MAX_OBJECT_BYTES, default 16 MiB: a larger GET fails */
    char blob_dir[512];          /* BLOB_DIR, default .run/blobs */
} s3_config_t;

/* Read the configuration from the environment (empty variables count as unset). 0, or -1
 * with err naming the variable that is missing or wrong. */
int s3_config_load(s3_config_t *cfg, char *err, size_t errlen);

/* Whether key is one this module stores (see above). */
int s3_key_valid(const char *key, size_t len);

/* The object's request URL (path-style or virtual-host) into out; 0, or -1 when it does not fit. */
int s3_request_url(const s3_config_t *cfg, const char *key, char *out, size_t cap);

/* The URL a client can use: S3_PUBLIC_URL/key, else the request URL; "/images/<key>" on disk. */
int s3_public_url(const s3_config_t *cfg, const char *key, char *out, size_t cap);

/* One finished request. */
typedef struct s3_result {
    long status;                 /* HTTP status; 0 when the transfer failed */
    buf_t body;                  /* response body (caller frees with buf_free) */
    char content_type[128];
    char err[256];               /* set when the call failed */
    const char *code;            /* NULL on success, else unavailable | timeout | invalid */
} s3_result_t;

/* Set up a signed request on h (a fresh or reset easy handle): method, URL, body, Content-Type,
 * x-amz-content-sha256, and X-Amz-Date when amz_date ("20130524T000000Z") is given (tests pin
 * the clock with it), plus extra "Name: value" lines. Returns the header list the caller frees
 * after the transfer (NULL when out of memory). */
struct curl_slist *s3_prepare(CURL *h, const s3_config_t *cfg, const char *method, const char *key,
                              const char *body, size_t len, const char *content_type,
                              const char *const *extra, const char *amz_date);

/* PUT, GET or DELETE key on the store, blocking, over the call c; res filled (res->code NULL
 * on a 2xx or, for GET and DELETE, a 404 whose status the caller reads). 0 or -1. */
int s3_call(httpc_call_t *c, const s3_config_t *cfg, const char *method, const char *key, const char *body,
            size_t len, const char *content_type, s3_result_t *res);

/* The two halves of s3_call, for a call run on the loop: set the signed request up on c (0, or
 * -1 when out of memory), and read its outcome into res once it ended (0 or -1, as s3_call). */
int s3_call_setup(httpc_call_t *c, const s3_config_t *cfg, const char *method, const char *key, const char *body,
                  size_t len, const char *content_type);
int s3_call_finish(httpc_call_t *c, CURLcode rc, const char *method, s3_result_t *res);

/* The local disk store: same contract as s3_call (status 200/204/404 in res). */
int s3_disk_call(const s3_config_t *cfg, const char *method, const char *key, const char *body, size_t len,
                 const char *content_type, s3_result_t *res);

/* Lower-case hex SHA-256 of data into out[65]. */
void s3_sha256_hex(const void *data, size_t len, char out[65]);

#endif
