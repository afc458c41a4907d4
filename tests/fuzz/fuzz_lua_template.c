/* fuzz_lua_template: the e-mails' template engine (scripts/lib/template.lua) on arbitrary
 * templates, partials and data — compile raises only "name:line: message", render never
 * raises and never lets a variable bring markup (html) or a line break (header) into its
 * output, no tag leaks. The properties are in tests/fuzz/lua/template.lua; fuzz_lua.h runs them
 * in the product service's worker state. */
#include "fuzz_lua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_run("tests/fuzz/lua/template.lua", data, size);
}
