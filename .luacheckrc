-- luacheck: the services' Lua runs on LuaJIT; specs run under busted.
std = "luajit"
codes = true
max_line_length = 130
files["spec/"] = { std = "+busted" }
exclude_files = { "node_modules/", "bench/express/", ".run/", "build/" }
