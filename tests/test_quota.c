/* test_quota: the per-IP connection table (open addressing, removal without tombstones), and the
 * count of connections gone since the last look (main trims the heap on it). */
#include <stdlib.h>
#include <string.h>

#include "quota.h"
#include "test.h"

static void key_of(int i, unsigned char key[9])
{
    memset(key, 0, 9);
    key[0] = 4;
    key[1] = 10;
    key[3] = (unsigned char)(i >> 8);
    key[4] = (unsigned char)i;
}

TEST(counts_follow_a_model_through_inserts_and_removals)
{
    /* 20 connections at most: a 64-slot table, so probe runs collide and wrap. */
    config_t cfg = { .max_connections = 20, .max_connections_per_ip = 3 };
    quota_init(&cfg);
    unsigned model[40] = { 0 };
    unsigned live = 0;
    srand(7);
    for (int step = 0; step < 200000; step++) {
        int i = rand() % 40;
        unsigned char key[9];
        key_of(i, key);
        if ((rand() & 1) && live < 20) { quota_ip_add(key, 1); model[i]++; live++; }
        else if (model[i]) { quota_ip_add(key, -1); model[i]--; live--; }
        if (step % 997 == 0) {
            for (int k = 0; k < 40; k++) {
                key_of(k, key);
                if (quota_ip_count(key) != model[k]) {
                    CHECK_INT(quota_ip_count(key), model[k]);
                    return;
                }
            }
        }
    }
    for (int k = 0; k < 40; k++) {
        unsigned char key[9];
        key_of(k, key);
        while (model[k]) { quota_ip_add(key, -1); model[k]--; }
        CHECK_INT(quota_ip_count(key), 0);
    }
}

TEST(a_removal_of_an_absent_key_changes_nothing)
{
    unsigned char a[9], b[9];
    key_of(1, a);
    key_of(2, b);
    quota_ip_add(a, 1);
    quota_ip_add(b, -1);
    CHECK_INT(quota_ip_count(a), 1);
    CHECK_INT(quota_ip_count(b), 0);
    quota_ip_add(a, -1);
    CHECK_INT(quota_ip_count(a), 0);
}

TEST(connections_settled_counts_the_crowd_that_went)
{
    config_t cfg = { .max_connections = 1000 };   /* no per-IP limit: no client address needed */
    quota_init(&cfg);
    quota_connections_settled();
    for (int i = 0; i < 300; i++) quota_opened(NULL, 1);
    for (int i = 0; i < 290; i++) quota_opened(NULL, 0);
    CHECK_INT(quota_connections_settled(), 290);   /* peak 300, 10 open */
    CHECK_INT(quota_connections_settled(), 0);     /* the peak restarted from 10 */
    for (int i = 0; i < 5; i++) quota_opened(NULL, 1);
    for (int i = 0; i < 15; i++) quota_opened(NULL, 0);
    CHECK_INT(quota_connections_settled(), 15);    /* peak 15, none open */
    quota_free();
}

int main(void)
{
    RUN(counts_follow_a_model_through_inserts_and_removals);
    RUN(a_removal_of_an_absent_key_changes_nothing);
    RUN(connections_settled_counts_the_crowd_that_went);
    return test_done();
}
