/* loop: one HTTP thread's event loop — fd watches and timers over epoll, made explicit so that
 * bindings can park a request on a socket (hiredis async, libpq async) and be called back on
 * the same thread. A loop is created, run and freed by one thread; the only call another
 * thread may make is loop_post (a hashing pool handing back a finished job). */
#ifndef MERCATO_LOOP_H
#define MERCATO_LOOP_H

#include <stdint.h>

enum { LOOP_READ = 1, LOOP_WRITE = 2 };

typedef struct loop loop_t;
typedef struct loop_timer loop_timer_t;
typedef struct loop_post loop_post_t;
typedef struct loop_defer loop_defer_t;

/* Called with the ready events (LOOP_READ | LOOP_WRITE; an error or hang-up reports both the
 * directions that are watched). The callback may watch/unwatch any fd, this one included. */
typedef void (*loop_io_cb)(loop_t *loop, int fd, int events, void *arg);
/* Called once when the timer is due; the loop frees the timer right after (do not cancel it). */
typedef void (*loop_timer_cb)(loop_t *loop, void *arg);

/* Called on the loop's thread for a loop_post; loop is NULL when the loop is being freed with
 * the post still queued: then only release what arg holds. */
typedef void (*loop_post_cb)(loop_t *loop, void *arg);

/* A post's link, embedded in the poster's own object (no allocation: posting cannot fail).
 * Owned by the loop from loop_post until its callback is called. */
struct loop_post {
    loop_post_t *next;
    loop_post_cb cb;
    void *arg;
};

/* A new loop, or NULL (out of memory / epoll_create1 or eventfd failed). */
loop_t *loop_new(void);
/* Close the epoll fd and free every pending timer without calling it (deferred calls are
 * dropped too); watched fds are not
 * closed (their owners close them). Posts still queued are called with loop NULL, on the
 * freeing thread. No thread may post to the loop once loop_free has begun. */
void loop_free(loop_t *loop);

/* From any thread: have cb(loop, arg) called on the loop's thread, in its next iteration (as
 * an I/O callback, before that iteration's timers), waking it if it waits. Posts from one
 * thread are called in the order they were made. p is the caller's memory, untouched by the
 * caller until cb runs; every post is called exactly once. */
void loop_post(loop_t *loop, loop_post_t *p, loop_post_cb cb, void *arg);

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

/* A deferred call's link, embedded in the caller's own object (no allocation: deferring cannot
 * fail). Zero it before first use; the loop owns it from loop_defer until it runs or is
 * cancelled. */
struct loop_defer {
    loop_defer_t *next, **pprev;   /* pprev NULL: not queued */
    loop_timer_cb cb;
    void *arg;
    unsigned round;                /* the loop's round it was deferred in */
};

/* On the loop's thread: call cb(loop, arg) after the I/O callbacks of this iteration (or, when
 * deferred from a deferred call, of the next one — which then does not wait), in the order
 * deferred. The cheap zero-delay timer: how a parked request is resumed outside the library
 * callback that finished its I/O. Deferring a queued link is a no-op. */
void loop_defer(loop_t *loop, loop_defer_t *d, loop_timer_cb cb, void *arg);
/* Take d out of the queue if it is in it (never called then). */
void loop_defer_cancel(loop_t *loop, loop_defer_t *d);

/* Milliseconds until the next timer is due (0 if one is due or a call is deferred), or -1 when
 * there is none. */
int loop_next_timeout(const loop_t *loop);

/* One iteration: wait up to max_ms (-1: until something happens; shortened to the next timer),
 * call the I/O callbacks of the ready fds, then the deferred calls, then every timer that is due. Returns the number
 * of fds that were ready, 0 on a timeout, -1 on an epoll error other than EINTR. */
int loop_run_once(loop_t *loop, int max_ms);

/* The loop's clock: CLOCK_MONOTONIC in nanoseconds. */
uint64_t loop_now_ns(void);

#endif
