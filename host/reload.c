/* reload: HOT_RELOAD=1 — watch SCRIPTS_DIR, rebuild the snapshot on change, publish it only
 * if it passes its check. Workers pick the new generation up between requests. */
#include "reload.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/log.h"
#include "../core/metrics.h"
#include "snapshot.h"

#define WATCH_MASK (IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF)
#define DEBOUNCE_MS 40

struct reloader {
    const config_t *cfg;
    int ifd, stop_fd;
    pthread_t thread;
};

static metric_cell_t *g_reloads, *g_errors;

int reload_now(const config_t *cfg)
{
    if (!g_reloads) {
        g_reloads = metrics_counter0("script_reloads_total", "Script generations published by hot reload.");
        g_errors = metrics_counter0("script_reload_errors_total", "Hot reloads refused because the new scripts failed their check.");
    }
    char err[2048];
    snapshot_t *s = snapshot_build(cfg, err, sizeof err);
    if (!s) {
        char esc[2100], fields[2200];
        log_json_escape(esc, sizeof esc, err, strlen(err));
        snprintf(fields, sizeof fields, "\"error\":\"%s\"", esc);
        log_line(LOG_ERROR, fields, "script reload refused, the previous generation keeps serving");
        metrics_cell_add(g_errors, 1);
        return -1;
    }
    snapshot_publish(s);
    metrics_cell_add(g_reloads, 1);
    log_info("scripts reloaded: generation %llu", (unsigned long long)snapshot_generation());
    return 0;
}

/* Watch dir and every directory below it (inotify is not recursive). */
static void watch_tree(int ifd, const char *dir)
{
    if (inotify_add_watch(ifd, dir, WATCH_MASK) < 0) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) watch_tree(ifd, path);
    }
    closedir(d);
}

static void *watch_main(void *arg)
{
    reloader_t *r = arg;
    char evbuf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        struct pollfd pf[2] = { { .fd = r->ifd, .events = POLLIN }, { .fd = r->stop_fd, .events = POLLIN } };
        if (poll(pf, 2, -1) < 0) { if (errno == EINTR) continue; break; }
        if (pf[1].revents) break;
        /* Drain this burst and whatever follows within the debounce window (an editor's save
         * is several events), then rebuild once. */
        int dirs_changed = 0;
        do {
            ssize_t n = read(r->ifd, evbuf, sizeof evbuf);
            for (char *p = evbuf; n > 0 && p < evbuf + n;) {
                struct inotify_event *ev = (struct inotify_event *)p;
                if (ev->mask & (IN_ISDIR | IN_DELETE_SELF | IN_IGNORED)) dirs_changed = 1;
                p += sizeof *ev + ev->len;
            }
            pf[0].revents = 0;
        } while (poll(pf, 1, DEBOUNCE_MS) > 0);
        if (dirs_changed) watch_tree(r->ifd, r->cfg->scripts_dir);   /* re-adding a watch is harmless */
        reload_now(r->cfg);
    }
    return NULL;
}

reloader_t *reload_start(const config_t *cfg, char *err, size_t errlen)
{
    reloader_t *r = calloc(1, sizeof *r);
    if (!r) { snprintf(err, errlen, "out of memory"); return NULL; }
    r->cfg = cfg;
    r->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    r->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (r->ifd < 0 || r->stop_fd < 0) {
        snprintf(err, errlen, "inotify: %s", strerror(errno));
        if (r->ifd >= 0) close(r->ifd);
        if (r->stop_fd >= 0) close(r->stop_fd);
        free(r);
        return NULL;
    }
    watch_tree(r->ifd, cfg->scripts_dir);
    if (pthread_create(&r->thread, NULL, watch_main, r) != 0) {
        snprintf(err, errlen, "cannot start the reload thread");
        close(r->ifd);
        close(r->stop_fd);
        free(r);
        return NULL;
    }
    log_info("hot reload on: watching %s", cfg->scripts_dir);
    return r;
}

void reload_stop(reloader_t *r)
{
    if (!r) return;
    uint64_t one = 1;
    if (write(r->stop_fd, &one, sizeof one) < 0) log_warn("reload: cannot wake the watcher");
    pthread_join(r->thread, NULL);
    close(r->ifd);
    close(r->stop_fd);
    free(r);
}
