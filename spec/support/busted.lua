-- spec/support/busted.lua: busted, run inside a mercato Lua state so that specs use the real
-- bindings: build/mercato lua spec/support/busted.lua [busted options] spec/...
package.path = "spec/?.lua;spec/?/init.lua;" .. package.path
require "busted.runner" ({ standalone = false })
