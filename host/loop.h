/* loop: one HTTP thread's event loop — fd watches and timers over epoll, made explicit so that
 * bindings can park a request on a socket (hiredis async, libpq async) and be called back on
 * the same thread. Not thread-safe: a loop is created, run and freed by one thread. */
#ifndef MERCATO_LOOP_H
#define MERCATO_LOOP_H

#include <stdint.h>

enum { LOOP_READ = 1, LOOP_WRITE = 2 };

typedef struct loop loop_t;
typedef struct loop_timer loop_timer_t;

/* Called with the ready events (LOOP_READ | LOOP_WRITE; an error or hang-up reports both the
 * directions that are watched). The callback may watch/unwatch any fd, this one included. */
typedef void (*loop_io_cb)(loop_t *loop, int fd, int events, void *arg);
/* Called once when the timer is due; the loop frees the timer right after (do not cancel it). */
typedef void (*loop_timer_cb)(loop_t *loop, void *arg);

/* A new loop, or NULL (out of memory / epoll_create1 failed). */
loop_t *loop_new(void);
/* Close the epoll fd and free every pending timer without calling it; watched fds are not
 * closed (their owners close them). */
void loop_free(loop_t *loop);

/* Watch fd for events (LOOP_READ | LOOP_WRITE; 0 keeps it registered but idle), replacing any
 * earlier watch of fd. 0, or -1 with errno. */
int loop_watch(loop_t *loop, int fd, int events, loop_io_cb cb, void *arg);
/* Stop watching fd (a no-op if it is not watched). Events already collected for it in this
 * iteration are dropped. Call before closing fd. */
void loop_unwatch(loop_t *loop, int fd);

/* Call cb(arg) in ms milliseconds (0: in this or the next iteration, after I/O callbacks).
 * Returns the timer (owned by the loop), or NULL when out of memory. */
loop_timer_t *loop_timer_add(loop_t *loop, uint64_t ms, loop_timer_cb cb, void *arg);
/* Cancel a timer that has not fired yet: it is freed and never called. */
void loop_timer_cancel(loop_t *loop, loop_timer_t *t);

/* Milliseconds until the next timer is due (0 if one is due), or -1 when there is none. */
int loop_next_timeout(const loop_t *loop);

/* One iteration: wait up to max_ms (-1: until something happens; shortened to the next timer),
 * call the I/O callbacks of the ready fds, then every timer that is due. Returns the number
 * of fds that were ready, 0 on a timeout, -1 on an epoll error other than EINTR. */
int loop_run_once(loop_t *loop, int max_ms);

/* The loop's clock: CLOCK_MONOTONIC in nanoseconds. */
uint64_t loop_now_ns(void);

#endif
