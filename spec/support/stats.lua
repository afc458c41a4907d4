-- spec/support/stats.lua: the few numbers latency specs report.
local M = {}

-- The p-quantile (0 < p <= 1) of a list of numbers, nearest rank; xs is left as it was.
function M.percentile(xs, p)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  return s[math.max(1, math.ceil(#s * p))]
end

-- Seconds as "1.23 ms".
function M.ms(x) return ("%.2f ms"):format(x * 1000) end

return M
