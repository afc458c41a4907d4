/* utf8: the strict UTF-8 check lives in core/utf8.h (the JWT reader in core/ needs it too);
 * this name is kept for the host files that include it. */
#include "../core/utf8.h"
