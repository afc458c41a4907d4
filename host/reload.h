/* reload: HOT_RELOAD=1 — watch SCRIPTS_DIR, rebuild the snapshot on change, publish it only
 * if it passes its check. */
#ifndef MERCATO_RELOAD_H
#define MERCATO_RELOAD_H

#include "config.h"

typedef struct reloader reloader_t;

/* Start the watcher thread; NULL with err on failure. */
reloader_t *reload_start(const config_t *cfg, char *err, size_t errlen);
void reload_stop(reloader_t *r);

/* Rebuild and publish now (what the watcher does after a change). 0 published, -1 kept the
 * old generation (error logged and counted). */
int reload_now(const config_t *cfg);

#endif
