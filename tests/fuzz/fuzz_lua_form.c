/* fuzz_lua_form: the Lua half of form and query decoding on arbitrary bytes — the host's
 * percent-decoder (mercato.form.unescape, host/lua/prelude.lua), OAuth form bodies
 * (lib.validate.form) and query strings (mercato.form.parse_query, req.query). The properties
 * (decode(encode(x)) == x, round trips of encoded pairs, results of the documented shapes) are
 * in tests/fuzz/lua/form.lua; fuzz_lua.h runs them in the product service's worker state. */
#include "fuzz_lua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_run("tests/fuzz/lua/form.lua", data, size);
}
