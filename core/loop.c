/* loop: fd watches and timers over epoll for one thread (see loop.h). */
#include "loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

typedef struct watch {
    loop_io_cb cb;
    void *arg;
    int events;                  /* LOOP_* requested */
    uint32_t gen;                /* bumped on unwatch: stale events of this iteration are dropped */
    int active;
} watch_t;

struct loop_timer {
    uint64_t due_ns;
    uint64_t seq;                /* equal deadlines fire in the order they were added */
    loop_timer_cb cb;
    void *arg;
    size_t idx;                  /* position in the heap */
};

struct loop {
    int ep;
    watch_t *watches;            /* indexed by fd */
    int nwatches;
    loop_timer_t **heap;         /* binary min-heap on (due_ns, seq) */
    size_t nheap, capheap;
    uint64_t seq;
    /* Posts from other threads: a FIFO under post_lock; the eventfd is written when it goes
     * from empty to non-empty, and read (then the list taken whole) on the loop's thread. */
    int post_fd;
    pthread_mutex_t post_lock;
    loop_post_t *post_head, *post_tail;
    loop_defer_t *defer_head, **defer_tail;   /* deferred calls, FIFO */
    unsigned defer_round;        /* bumped as a run starts: later deferrals wait for the next */
};

uint64_t loop_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- timers: a binary heap ------------------------------------------------------------- */

static int earlier(const loop_timer_t *a, const loop_timer_t *b)
{
    return a->due_ns < b->due_ns || (a->due_ns == b->due_ns && a->seq < b->seq);
}

static void heap_set(loop_t *l, size_t i, loop_timer_t *t)
{
    l->heap[i] = t;
    t->idx = i;
}

static void heap_up(loop_t *l, size_t i)
{
    loop_timer_t *t = l->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!earlier(t, l->heap[p])) break;
        heap_set(l, i, l->heap[p]);
        i = p;
    }
    heap_set(l, i, t);
}

static void heap_down(loop_t *l, size_t i)
{
    loop_timer_t *t = l->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= l->nheap) break;
        if (c + 1 < l->nheap && earlier(l->heap[c + 1], l->heap[c])) c++;
        if (!earlier(l->heap[c], t)) break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

static void heap_remove(loop_t *l, loop_timer_t *t)
{
    size_t i = t->idx;
    loop_timer_t *last = l->heap[--l->nheap];
    if (i == l->nheap) return;
    heap_set(l, i, last);
    if (i > 0 && earlier(last, l->heap[(i - 1) / 2])) heap_up(l, i);
    else heap_down(l, i);
}

loop_timer_t *loop_timer_add(loop_t *l, uint64_t ms, loop_timer_cb cb, void *arg)
{
    if (l->nheap == l->capheap) {
        size_t cap = l->capheap ? l->capheap * 2 : 64;
        loop_timer_t **h = realloc(l->heap, cap * sizeof(loop_timer_t *));
        if (!h) return NULL;
        l->heap = h;
        l->capheap = cap;
    }
    loop_timer_t *t = malloc(sizeof *t);
    if (!t) return NULL;
    t->due_ns = loop_now_ns() + ms * 1000000ull;
    t->seq = l->seq++;
    t->cb = cb;
    t->arg = arg;
    l->heap[l->nheap] = t;
    heap_up(l, l->nheap++);
    return t;
}

void loop_timer_cancel(loop_t *l, loop_timer_t *t)
{
    if (!t) return;
    heap_remove(l, t);
    free(t);
}

int loop_next_timeout(const loop_t *l)
{
    if (l->defer_head) return 0;
    if (!l->nheap) return -1;
    uint64_t now = loop_now_ns(), due = l->heap[0]->due_ns;
    if (due <= now) return 0;
    uint64_t ms = (due - now + 999999) / 1000000;   /* round up: never wake before it is due */
    return ms > 86400000 ? 86400000 : (int)ms;
}

/* ---- deferred calls ----------------------------------------------------------------------- */

void loop_defer(loop_t *l, loop_defer_t *d, loop_timer_cb cb, void *arg)
{
    if (d->pprev) return;
    d->cb = cb;
    d->arg = arg;
    d->round = l->defer_round;
    d->next = NULL;
    d->pprev = l->defer_tail;
    *l->defer_tail = d;
    l->defer_tail = &d->next;
}

void loop_defer_cancel(loop_t *l, loop_defer_t *d)
{
    if (!d->pprev) return;
    *d->pprev = d->next;
    if (d->next) d->next->pprev = d->pprev;
    else l->defer_tail = d->pprev;
    d->next = NULL;
    d->pprev = NULL;
}

/* The calls deferred before this run; those they defer wait for the next iteration. */
static void run_deferred(loop_t *l)
{
    unsigned round = l->defer_round++;
    while (l->defer_head && l->defer_head->round == round) {
        loop_defer_t *d = l->defer_head;
        loop_defer_cancel(l, d);
        d->cb(l, d->arg);   /* may free d's owner */
    }
}

static void run_timers(loop_t *l)
{
    uint64_t now = loop_now_ns();
    while (l->nheap && l->heap[0]->due_ns <= now) {
        loop_timer_t *t = l->heap[0];
        heap_remove(l, t);
        loop_timer_cb cb = t->cb;
        void *arg = t->arg;
        free(t);
        cb(l, arg);
    }
}

/* ---- fd watches ------------------------------------------------------------------------ */

static uint32_t epoll_events(int events)
{
    return (events & LOOP_READ ? EPOLLIN : 0) | (events & LOOP_WRITE ? EPOLLOUT : 0);
}

int loop_watch(loop_t *l, int fd, int events, loop_io_cb cb, void *arg)
{
    if (fd < 0) { errno = EBADF; return -1; }
    if (fd >= l->nwatches) {
        int n = l->nwatches ? l->nwatches : 64;
        while (n <= fd) n *= 2;
        watch_t *ws = realloc(l->watches, (size_t)n * sizeof *ws);
        if (!ws) { errno = ENOMEM; return -1; }
        memset(ws + l->nwatches, 0, (size_t)(n - l->nwatches) * sizeof *ws);
        l->watches = ws;
        l->nwatches = n;
    }
    watch_t *w = &l->watches[fd];
    struct epoll_event ev = { .events = epoll_events(events), .data.u64 = (uint64_t)w->gen << 32 | (uint32_t)fd };
    /* The kernel forgets a closed fd by itself, and a library may close and reopen a socket
     * under the same number (libpq while connecting): trust epoll over the table. */
    int op = w->active ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(l->ep, op, fd, &ev) < 0) {
        if (errno != (op == EPOLL_CTL_MOD ? ENOENT : EEXIST)) return -1;
        if (epoll_ctl(l->ep, op == EPOLL_CTL_MOD ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev) < 0) return -1;
    }
    w->cb = cb;
    w->arg = arg;
    w->events = events;
    w->active = 1;
    return 0;
}

void loop_unwatch(loop_t *l, int fd)
{
    if (fd < 0 || fd >= l->nwatches || !l->watches[fd].active) return;
    watch_t *w = &l->watches[fd];
    epoll_ctl(l->ep, EPOLL_CTL_DEL, fd, NULL);   /* fails harmlessly if fd is already closed */
    w->active = 0;
    w->gen++;
    w->cb = NULL;
    w->arg = NULL;
}

/* ---- posts from other threads ----------------------------------------------------------- */

void loop_post(loop_t *l, loop_post_t *p, loop_post_cb cb, void *arg)
{
    p->next = NULL;
    p->cb = cb;
    p->arg = arg;
    pthread_mutex_lock(&l->post_lock);
    int was_empty = !l->post_head;
    if (l->post_tail) l->post_tail->next = p;
    else l->post_head = p;
    l->post_tail = p;
    /* Written under the lock: once the lock is let go the post may already have run and the
     * loop been freed, so this thread touches nothing of the loop after it. EAGAIN means the
     * counter is already non-zero: the loop wakes anyway. */
    if (was_empty) {
        uint64_t one = 1;
        if (write(l->post_fd, &one, sizeof one) < 0) { /* EAGAIN only: the loop is awake already */ }
    }
    pthread_mutex_unlock(&l->post_lock);
}

/* Take the whole queue (posts made meanwhile go to the next round) and call it in order. The
 * eventfd is reset under the lock too, so it is non-zero exactly while the queue is not
 * empty: no wake-up is ever spurious. */
static void run_posts(loop_t *l, loop_t *arg_loop)
{
    uint64_t n;
    pthread_mutex_lock(&l->post_lock);
    loop_post_t *p = l->post_head;
    if (p && read(l->post_fd, &n, sizeof n) < 0) { /* cannot fail while the queue is not empty */ }
    l->post_head = l->post_tail = NULL;
    pthread_mutex_unlock(&l->post_lock);
    while (p) {
        loop_post_t *next = p->next;   /* p belongs to its owner again once cb runs */
        p->cb(arg_loop, p->arg);
        p = next;
    }
}

static void on_post_fd(loop_t *l, int fd, int events, void *arg)
{
    (void)fd; (void)events; (void)arg;
    run_posts(l, l);
}

/* ---- the loop -------------------------------------------------------------------------- */

loop_t *loop_new(void)
{
    loop_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->defer_tail = &l->defer_head;
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    l->post_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&l->post_lock, NULL);
    if (l->ep < 0 || l->post_fd < 0 || loop_watch(l, l->post_fd, LOOP_READ, on_post_fd, NULL) < 0) {
        loop_free(l);
        return NULL;
    }
    return l;
}

void loop_free(loop_t *l)
{
    if (!l) return;
    run_posts(l, NULL);   /* their owners release them */
    for (size_t i = 0; i < l->nheap; i++) free(l->heap[i]);
    free(l->heap);
    free(l->watches);
    if (l->post_fd >= 0) close(l->post_fd);
    if (l->ep >= 0) close(l->ep);
    pthread_mutex_destroy(&l->post_lock);
    free(l);
}

int loop_run_once(loop_t *l, int max_ms)
{
    int timeout = loop_next_timeout(l);
    if (timeout < 0 || (max_ms >= 0 && max_ms < timeout)) timeout = max_ms;
    struct epoll_event evs[64];
    int n = epoll_wait(l->ep, evs, 64, timeout);
    if (n < 0 && errno != EINTR) return -1;
    for (int i = 0; i < n; i++) {
        int fd = (int)(uint32_t)evs[i].data.u64;
        uint32_t gen = (uint32_t)(evs[i].data.u64 >> 32);
        if (fd >= l->nwatches) continue;
        watch_t *w = &l->watches[fd];
        if (!w->active || w->gen != gen) continue;   /* unwatched by an earlier callback */
        int ready = (evs[i].events & EPOLLIN ? LOOP_READ : 0) | (evs[i].events & EPOLLOUT ? LOOP_WRITE : 0);
        if (evs[i].events & (EPOLLERR | EPOLLHUP)) ready |= w->events;
        ready &= w->events ? w->events : ready;
        if (ready) w->cb(l, fd, ready, w->arg);
    }
    run_deferred(l);
    run_timers(l);
    return n < 0 ? 0 : n;
}
