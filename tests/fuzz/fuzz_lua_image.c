/* fuzz_lua_image: the product service's image upload checks (scripts/services/product/handlers/
 * images.lua: the Content-Type's media type and the magic-byte sniffing behind its 415) on
 * arbitrary headers and bytes, each against a plain second reading. The product service reads
 * uploads as a raw body, not multipart/form-data: there is no multipart parser to fuzz. The
 * properties are in tests/fuzz/lua/image.lua; fuzz_lua.h runs them in the product service's
 * worker state (the handler module loads with its bindings, as it does for a request). */
#include "fuzz_lua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_run("tests/fuzz/lua/image.lua", data, size);
}
