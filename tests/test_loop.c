/* test_loop: the per-thread event loop — fd watches, unwatch inside a callback, timers in
 * deadline order, cancel, zero-delay timers, and the wait bounded by the next timer. */
#include <stdint.h>
#include <unistd.h>

#include "loop.h"
#include "test.h"

static int order[16], norder;
static void record(loop_t *l, void *arg) { (void)l; order[norder++] = (int)(intptr_t)arg; }

TEST(timers_fire_in_deadline_order_and_cancelled_ones_never)
{
    loop_t *l = loop_new();
    norder = 0;
    loop_timer_add(l, 30, record, (void *)3);
    loop_timer_add(l, 10, record, (void *)1);
    loop_timer_t *c = loop_timer_add(l, 20, record, (void *)99);
    loop_timer_add(l, 20, record, (void *)2);
    loop_timer_add(l, 0, record, (void *)0);
    loop_timer_cancel(l, c);
    uint64_t t0 = loop_now_ns();
    while (norder < 4 && loop_now_ns() - t0 < 1000000000ull) loop_run_once(l, -1);
    CHECK_INT(norder, 4);
    for (int i = 0; i < 4; i++) CHECK_INT(order[i], i);
    CHECK_INT(loop_next_timeout(l), -1);
    CHECK(loop_now_ns() - t0 >= 30000000ull);
    loop_free(l);
}

TEST(a_wait_ends_at_the_next_timer)
{
    loop_t *l = loop_new();
    norder = 0;
    loop_timer_add(l, 20, record, (void *)7);
    uint64_t t0 = loop_now_ns();
    CHECK_INT(loop_run_once(l, 5000), 0);
    uint64_t ms = (loop_now_ns() - t0) / 1000000;
    CHECK_INT(norder, 1);
    CHECK(ms >= 20 && ms < 1000);
    loop_free(l);
}

TEST(free_drops_pending_timers_without_calling_them)
{
    loop_t *l = loop_new();
    norder = 0;
    for (int i = 0; i < 200; i++) loop_timer_add(l, 1000 + (uint64_t)(i * 7919 % 200), record, (void *)1);
    loop_free(l);
    CHECK_INT(norder, 0);
}

static int reads, fds[2][2];
static void on_read(loop_t *l, int fd, int events, void *arg)
{
    char b[16];
    (void)arg;
    CHECK(events & LOOP_READ);
    if (read(fd, b, sizeof b) > 0) reads++;
    /* unwatch the other pipe too: its event, collected in this iteration, must be dropped */
    loop_unwatch(l, fds[0][0]);
    loop_unwatch(l, fds[1][0]);
}

TEST(an_fd_unwatched_by_a_callback_is_not_called_in_the_same_iteration)
{
    loop_t *l = loop_new();
    reads = 0;
    CHECK(pipe(fds[0]) == 0 && pipe(fds[1]) == 0);
    CHECK_INT(loop_watch(l, fds[0][0], LOOP_READ, on_read, NULL), 0);
    CHECK_INT(loop_watch(l, fds[1][0], LOOP_READ, on_read, NULL), 0);
    CHECK(write(fds[0][1], "x", 1) == 1 && write(fds[1][1], "y", 1) == 1);
    CHECK_INT(loop_run_once(l, 1000), 2);
    CHECK_INT(reads, 1);
    CHECK_INT(loop_run_once(l, 10), 0);   /* nothing watched any more */
    CHECK_INT(reads, 1);
    for (int i = 0; i < 2; i++) { close(fds[i][0]); close(fds[i][1]); }
    loop_free(l);
}

static int writes;
static void on_write(loop_t *l, int fd, int events, void *arg)
{
    (void)fd; (void)arg;
    if (events & LOOP_WRITE) writes++;
    if (writes == 2) loop_watch(l, fd, LOOP_READ, on_write, NULL);   /* re-arm: read only */
}

TEST(a_watch_can_be_changed_from_its_callback)
{
    loop_t *l = loop_new();
    int p[2];
    writes = 0;
    CHECK(pipe(p) == 0);
    CHECK_INT(loop_watch(l, p[1], LOOP_WRITE, on_write, NULL), 0);
    loop_run_once(l, 100);
    loop_run_once(l, 100);
    CHECK_INT(writes, 2);
    CHECK_INT(loop_run_once(l, 10), 0);   /* the write end never becomes readable */
    CHECK_INT(writes, 2);
    loop_unwatch(l, p[1]);
    loop_unwatch(l, p[1]);                /* twice: a no-op */
    close(p[0]);
    close(p[1]);
    loop_free(l);
}

int main(void)
{
    RUN(timers_fire_in_deadline_order_and_cancelled_ones_never);
    RUN(a_wait_ends_at_the_next_timer);
    RUN(free_drops_pending_timers_without_calling_them);
    RUN(an_fd_unwatched_by_a_callback_is_not_called_in_the_same_iteration);
    RUN(a_watch_can_be_changed_from_its_callback);
    return test_done();
}
