-- spec/integration/pg_crash_durability_spec.lua: a commit PostgreSQL acknowledged survives a crash
-- of the server (SIGKILL of it and its backends: `scripts/dev/stack.sh kill postgres`) on a database
-- with synchronous_commit on. The private stack starts PostgreSQL with it off (fast specs), and then
-- a crash loses the commits of the last WAL-writer interval (~200 ms) — a consumer's inbox row and
-- work after it had acked the event: the chaos tier's first lost e-mail. So the chaos tier's
-- databases set it on (spec/chaos/world.lua); this spec pins why.
local crypto = require "crypto"
local P = require "support.product_helpers"

-- A client commits one-row INSERTs one after the other (psql, autocommit: it prints "INSERT 0 1"
-- for each commit the server acknowledged) while the server is crashed under it.
-- → commits acknowledged, rows that survived
local function crash_during_commits(url)
  local script, out = os.tmpname(), os.tmpname()
  local f = assert(io.open(script, "w"))
  for i = 1, 200000 do f:write("INSERT INTO t VALUES (", i, ");\n") end
  f:close()
  local log, rc = P.sh(("psql %s -X -v ON_ERROR_STOP=1 -f %s > %s 2>&1 & client=$!; sleep 1.5; "
    .. "scripts/dev/stack.sh kill postgres; wait $client; true"):format(P.q(url), script, out))
  assert(rc == 0, log)
  local acked = 0
  for line in io.lines(out) do
    if line == "INSERT 0 1" then acked = acked + 1 end
  end
  os.remove(script)
  os.remove(out)
  return acked, tonumber(P.psql(url, "SELECT count(*) FROM t"))
end

describe("PostgreSQL crash", function()
  local admin, name, url

  setup(function()
    admin = P.db_url("postgres")
    name = "mercato_crash_spec_" .. crypto.hex(crypto.random(4))
    P.psql(admin, "CREATE DATABASE " .. name)
    url = P.db_url(name)
    P.psql(url, "CREATE TABLE t (n integer PRIMARY KEY)")
  end)
  teardown(function()
    pcall(P.psql, admin, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
  end)

  it("keeps every acknowledged commit on a database with synchronous_commit on", function()
    P.psql(admin, "ALTER DATABASE " .. name .. " SET synchronous_commit = on")
    assert.equal("on", P.psql(url, "SHOW synchronous_commit"))
    local acked, kept = crash_during_commits(url)
    assert.is_true(acked > 100, "the client committed only " .. acked .. " rows before the crash")
    assert.is_true(kept >= acked, ("%d commits acknowledged, %d survived the crash"):format(acked, kept))
  end)
end)
