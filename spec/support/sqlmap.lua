-- spec/support/sqlmap.lua: run sqlmap (Debian package) against one HTTP target and read its
-- verdict — the harness of security_sqlmap_spec (make test: the quick profile) and of
-- `make security` (SQLMAP_PROFILE=full: --level 5 --risk 3, every technique).
--
--   local S = require "support.sqlmap"
--   local r = S.run({ name = "products", url = base .. "/products?q=a&limit=5", headers = { ... } }, "quick")
--   r.injectable   -- the lines where sqlmap reports an injectable parameter (empty: none)
--   r.server_errors -- 5xx answers sqlmap provoked (bad input must never be a 500)
--   r.log          -- where its whole output is
local M = {}

M.OUT = ".run/security/sqlmap"

-- Profiles: what sqlmap tries. Both tell it the back end is PostgreSQL (what every service
-- runs), so that its payload budget goes to the DBMS that is there.
M.PROFILES = {
  quick = { "--level=1", "--risk=1", "--technique=BEU", "--dbms=PostgreSQL", "--threads=4", "--time-sec=1" },
  -- --union-cols bounds the UNION column search (an empty result page can make sqlmap walk
  -- ORDER BY up to 999 columns for minutes per parameter)
  full = { "--level=5", "--risk=3", "--technique=BEUSTQ", "--dbms=PostgreSQL", "--threads=4", "--time-sec=2",
           "--union-cols=1-30" },
}

function M.profile() return os.getenv("SQLMAP_PROFILE") or "quick" end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- What sqlmap prints when it has found an injection (its final "identified the following
-- injection point(s)" and "parameter '…' is vulnerable"), or when its heuristic saw a DBMS error
-- in an answer ("might be injectable": SQL text must never reach a client). Its intermediate
-- "appears to be … injectable" lines are not verdicts: it checks each for a false positive next.
M.FOUND = {
  "identified the following injection point",
  "parameter '[^']*' is vulnerable",
  "parameter '[^']*' might be injectable",
}

-- The lines of sqlmap's output that say a parameter is (or looks) injectable.
function M.verdict(text)
  local hits = {}
  for line in text:gmatch("[^\n]+") do
    for _, pat in ipairs(M.FOUND) do
      if line:find(pat) then hits[#hits + 1] = line break end
    end
  end
  return hits
end

-- The 5xx answers of sqlmap's closing "HTTP error codes detected during run" list.
function M.server_errors(text)
  local n = 0
  for code, times in text:gmatch("(5%d%d) %([^)]*%) %- (%d+) times") do
    if code ~= "503" then n = n + tonumber(times) end   -- 503 = a dependency, never input
  end
  return n
end

-- Run sqlmap on target { name, url, method?, data?, headers? = { k = v }, params? = "a,b", extra? = { ... } }.
function M.run(target, profile)
  profile = profile or M.profile()
  local dir = M.OUT .. "/" .. profile .. "/" .. target.name
  os.execute("rm -rf " .. q(dir) .. " && mkdir -p " .. q(dir))
  local args = { "sqlmap", "--batch", "--flush-session", "--disable-coloring", "--output-dir=" .. q(dir),
    "--tamper=xforwardedfor", "--ignore-code=401", "-u", q(target.url) }
  for _, a in ipairs(M.PROFILES[profile]) do args[#args + 1] = a end
  if target.method then args[#args + 1] = "--method=" .. target.method end
  if target.data then args[#args + 1] = "--data=" .. q(target.data) end
  if target.params then args[#args + 1] = "-p " .. q(target.params) end
  for k, v in pairs(target.headers or {}) do args[#args + 1] = "-H " .. q(k .. ": " .. v) end
  for _, a in ipairs(target.extra or {}) do args[#args + 1] = a end
  local log = dir .. ".log"
  local t0 = os.time()
  os.execute(table.concat(args, " ") .. " > " .. q(log) .. " 2>&1 < /dev/null")
  local f = assert(io.open(log))
  local text = f:read("*a")
  f:close()
  return { injectable = M.verdict(text), server_errors = M.server_errors(text), log = log, text = text,
           seconds = os.time() - t0, finished = text:find("ending @", 1, true) ~= nil }
end

return M
