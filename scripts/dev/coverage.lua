-- scripts/dev/coverage.lua: merge the line counts that LUA_COVERAGE=<dir> runs wrote into an
-- lcov file, with every executable line of the given source trees (found from LuaJIT's own
-- bytecode line info, so never-run files and lines count as 0), and print a summary per tree.
--   build/mercato lua scripts/dev/coverage.lua <cov dir> <out.info> <tree> [<tree> ...]
local jutil = require "jit.util"

local covdir, out, trees = arg[1], arg[2], { select(3, ...) }
if not covdir or not out or #trees == 0 then
  io.stderr:write("usage: coverage.lua <cov dir> <out.info> <tree> [<tree> ...]\n")
  return 2
end

local function lines_of(cmd)
  local p = assert(io.popen(cmd))
  local t = {}
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  return t
end

-- Executable lines of a function prototype and all it contains.
local function proto_lines(fn, set)
  local info = jutil.funcinfo(fn)
  for pc = 1, (info.bytecodes or 1) - 1 do
    local li = jutil.funcinfo(fn, pc)
    if li.currentline and li.currentline > 0 then set[li.currentline] = true end
  end
  for i = -1, -1e9, -1 do
    local k = jutil.funck(fn, i)
    if k == nil then break end
    if type(k) == "proto" then proto_lines(k, set) end
  end
end

local hits = {}
for _, file in ipairs(lines_of("find " .. covdir .. " -name 'cov.*.txt' 2>/dev/null")) do
  for line in io.lines(file) do
    local src, l, n = line:match("^(.-)\t(%d+)\t(%d+)$")
    if src then
      src = src:gsub("^%./", "")
      hits[src] = hits[src] or {}
      hits[src][tonumber(l)] = (hits[src][tonumber(l)] or 0) + tonumber(n)
    end
  end
end

local f = assert(io.open(out, "w"))
local total_lf, total_lh = 0, 0
for _, tree in ipairs(trees) do
  local lf, lh = 0, 0
  for _, src in ipairs(lines_of("find " .. tree .. " -name '*.lua' | sort")) do
    src = src:gsub("^%./", "")
    local fn = loadfile(src)
    if fn then
      local exec = {}
      proto_lines(fn, exec)
      local sorted = {}
      for l in pairs(exec) do sorted[#sorted + 1] = l end
      table.sort(sorted)
      local h, flf, flh = hits[src] or {}, 0, 0
      f:write("TN:\nSF:", src, "\n")
      for _, l in ipairs(sorted) do
        local n = h[l] or 0
        f:write("DA:", l, ",", n, "\n")
        flf = flf + 1
        if n > 0 then flh = flh + 1 end
      end
      f:write("LF:", flf, "\nLH:", flh, "\nend_of_record\n")
      lf, lh = lf + flf, lh + flh
    end
  end
  print(string.format("%-40s %5d / %5d lines  %5.1f %%", tree, lh, lf, lf > 0 and 100 * lh / lf or 0))
  total_lf, total_lh = total_lf + lf, total_lh + lh
end
f:close()
print(string.format("%-40s %5d / %5d lines  %5.1f %%", "total", total_lh, total_lf,
  total_lf > 0 and 100 * total_lh / total_lf or 0))
return 0
