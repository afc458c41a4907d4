/* test_metrics: sharded HTTP counters, labelled families and the Prometheus text format. */
#include <pthread.h>

#include "../core/metrics.h"
#include "test.h"

static metrics_shard_t *shards[2];
static int slot;

static void *hammer(void *arg)
{
    metrics_shard_t *s = arg;
    for (int i = 0; i < 100000; i++) metrics_observe_request(s, slot, i % 10 ? 200 : 404, 3000000);
    return NULL;
}

TEST(shards_sum_exactly_across_threads)
{
    slot = metrics_route_slot("GET", "/products/{id}");
    CHECK(slot > 0);
    CHECK_INT(metrics_route_slot("GET", "/products/{id}"), slot);   /* stable across reloads */
    shards[0] = metrics_shard_new();
    shards[1] = metrics_shard_new();
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, hammer, shards[i]);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    buf_t b;
    buf_init(&b);
    metrics_render(&b);
    CHECK(strstr(b.data, "http_requests_total{route=\"/products/{id}\",method=\"GET\",status=\"200\"} 180000\n") != NULL);
    CHECK(strstr(b.data, "http_requests_total{route=\"/products/{id}\",method=\"GET\",status=\"404\"} 20000\n") != NULL);
    /* 3 ms lands in the 0.005 bucket: everything below it is 0, from it on all 200000. */
    CHECK(strstr(b.data, "http_request_duration_seconds_bucket{route=\"/products/{id}\",method=\"GET\",le=\"0.0025\"} 0\n") != NULL);
    CHECK(strstr(b.data, "http_request_duration_seconds_bucket{route=\"/products/{id}\",method=\"GET\",le=\"0.005\"} 200000\n") != NULL);
    CHECK(strstr(b.data, "http_request_duration_seconds_bucket{route=\"/products/{id}\",method=\"GET\",le=\"+Inf\"} 200000\n") != NULL);
    CHECK(strstr(b.data, "http_request_duration_seconds_count{route=\"/products/{id}\",method=\"GET\"} 200000\n") != NULL);
    buf_free(&b);
}

TEST(families_redeclare_and_escape_labels)
{
    char err[128];
    const char *labels[] = { "outcome" };
    metric_family_t *f = metrics_family("events_consumed_total", "Events consumed.", METRIC_COUNTER, 1, labels, 0, NULL, err, sizeof err);
    CHECK(f != NULL);
    CHECK(metrics_family("events_consumed_total", "again", METRIC_COUNTER, 1, labels, 0, NULL, err, sizeof err) == f);
    CHECK(metrics_family("events_consumed_total", "clash", METRIC_GAUGE, 1, labels, 0, NULL, err, sizeof err) == NULL);
    CHECK(metrics_family("bad-name", "x", METRIC_GAUGE, 0, NULL, 0, NULL, err, sizeof err) == NULL);
    const char *v1[] = { "ok" }, *v2[] = { "say \"hi\"\\\n" };
    metrics_cell_add(metrics_cell(f, v1), 2);
    metrics_cell_add(metrics_cell(f, v1), 3);
    metrics_cell_add(metrics_cell(f, v2), 1);
    CHECK(metrics_cell_value(metrics_cell(f, v1)) == 5);
    buf_t b;
    buf_init(&b);
    metrics_render(&b);
    CHECK(strstr(b.data, "# TYPE events_consumed_total counter\n") != NULL);
    CHECK(strstr(b.data, "events_consumed_total{outcome=\"ok\"} 5\n") != NULL);
    CHECK(strstr(b.data, "events_consumed_total{outcome=\"say \\\"hi\\\"\\\\\\n\"} 1\n") != NULL);
    buf_free(&b);
}

TEST(label_names_are_checked_and_a_histogram_keeps_one_set_of_buckets)
{
    char err[128];
    const char *bad[][1] = { { "bad-name" }, { "1st" }, { "__reserved" }, { "" } };
    for (int i = 0; i < 4; i++) {
        err[0] = 0;
        CHECK(metrics_family("label_check_total", "x", METRIC_COUNTER, 1, bad[i], 0, NULL, err, sizeof err) == NULL);
        CHECK(strstr(err, "label") != NULL);
    }
    const char *le[] = { "le" };
    CHECK(metrics_family("label_check_seconds", "x", METRIC_HISTOGRAM, 1, le, 0, NULL, err, sizeof err) == NULL);
    const char *ok[] = { "route_2" };
    CHECK(metrics_family("label_check_total", "x", METRIC_COUNTER, 1, ok, 0, NULL, err, sizeof err) != NULL);
    const double a[] = { 0.1, 1 }, b[] = { 0.5, 5 };
    metric_family_t *h = metrics_family("bucket_check_seconds", "x", METRIC_HISTOGRAM, 0, NULL, 2, a, err, sizeof err);
    CHECK(h != NULL);
    CHECK(metrics_family("bucket_check_seconds", "x", METRIC_HISTOGRAM, 0, NULL, 2, a, err, sizeof err) == h);
    err[0] = 0;
    CHECK(metrics_family("bucket_check_seconds", "x", METRIC_HISTOGRAM, 0, NULL, 2, b, err, sizeof err) == NULL);
    CHECK(strstr(err, "buckets") != NULL);
    CHECK(metrics_family("bucket_check_seconds", "x", METRIC_HISTOGRAM, 0, NULL, 1, a, err, sizeof err) == NULL);
}

TEST(histograms_are_cumulative)
{
    char err[128];
    const double buckets[] = { 0.1, 1, 10 };
    metric_family_t *f = metrics_family("event_processing_latency_seconds", "Latency.", METRIC_HISTOGRAM, 0, NULL, 3, buckets, err, sizeof err);
    metric_cell_t *c = metrics_cell(f, NULL);
    metrics_cell_observe(c, 0.05);
    metrics_cell_observe(c, 0.5);
    metrics_cell_observe(c, 50);
    buf_t b;
    buf_init(&b);
    metrics_render(&b);
    CHECK(strstr(b.data, "event_processing_latency_seconds_bucket{le=\"0.1\"} 1\n") != NULL);
    CHECK(strstr(b.data, "event_processing_latency_seconds_bucket{le=\"1\"} 2\n") != NULL);
    CHECK(strstr(b.data, "event_processing_latency_seconds_bucket{le=\"10\"} 2\n") != NULL);
    CHECK(strstr(b.data, "event_processing_latency_seconds_bucket{le=\"+Inf\"} 3\n") != NULL);
    CHECK(strstr(b.data, "event_processing_latency_seconds_count 3\n") != NULL);
    CHECK(strstr(b.data, "event_processing_latency_seconds_sum 50.55\n") != NULL);
    buf_free(&b);
}

int main(void)
{
    RUN(shards_sum_exactly_across_threads);
    RUN(families_redeclare_and_escape_labels);
    RUN(histograms_are_cumulative);
    RUN(label_names_are_checked_and_a_histogram_keeps_one_set_of_buckets);
    metrics_shutdown();
    return test_done();
}
