-- spec/integration/db_spec.lua: the db binding and `mercato migrate` against the real PostgreSQL
-- from scripts/dev/stack.sh. Tables live in a schema of their own; migrations in a database of
-- their own (mercato_db_spec), so the spec never touches a service's data.
--   DATABASE_URL=postgresql://postgres@127.0.0.1:29432/mercato_product \
--     build/mercato lua spec/support/busted.lua -o TAP spec/integration/db_spec.lua
-- MERCATO_BIN picks the binary for the subprocesses (default: the one running this spec).
local db = require "db"
local cjson = require "cjson"
local metrics = require "metrics"
local server = require "support.server"
local socket = require "socket"
local raw_http = require "support.raw_http"

local url = assert(os.getenv("DATABASE_URL"), "DATABASE_URL must be set (scripts/dev/stack.sh env)")

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return out:gsub("rc=%d+%s*$", ""), rc
end
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- The shell's parent is the mercato process running this spec (build/asan/mercato under ASan).
local BIN = os.getenv("MERCATO_BIN") or sh("readlink -f /proc/$PPID/exe"):match("^%s*(.-)%s*$")

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- Run a Lua snippet in a fresh `mercato lua` process with extra environment.
local function lua_sub(env, code)
  local file = os.tmpname()
  write(file, code)
  local parts = {}
  for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. q(v) end
  local out, rc = sh(("env %s %s lua %s"):format(table.concat(parts, " "), BIN, file))
  os.remove(file)
  return out, rc
end

local schema = "db_spec_" .. db.query_one("SELECT pg_backend_pid() AS pid").pid
local function T(name) return schema .. "." .. name end

local function metric(name)
  local v = metrics.render():match("\n" .. name:gsub("[%{%}%-%.\"]", "%%%0") .. " ([%d%.e%+]+)")
  return tonumber(v or 0)
end

describe("db", function()
  setup(function()
    db.exec("DROP SCHEMA IF EXISTS " .. schema .. " CASCADE")
    db.exec("CREATE SCHEMA " .. schema)
    assert(db.exec(("CREATE TABLE %s (id serial PRIMARY KEY, name text UNIQUE, qty int CHECK (qty >= 0), doc jsonb)")
      :format(T("items"))))
    assert(db.exec(("CREATE TABLE %s (item int NOT NULL REFERENCES %s (id))"):format(T("refs"), T("items"))))
  end)

  teardown(function() db.exec("DROP SCHEMA IF EXISTS " .. schema .. " CASCADE") end)

  describe("column types", function()
    it("maps integers, floats and booleans to Lua values", function()
      local r = db.query_one([[SELECT 7::int2 AS i2, -8::int4 AS i4, 9007199254740992::int8 AS i8,
        1.5::float4 AS f4, 0.1::float8 AS f8, 'NaN'::float8 AS nan, 'Infinity'::float8 AS inf,
        true AS t, false AS f]])
      assert.are.same({ i2 = 7, i4 = -8, i8 = 2 ^ 53, f4 = 1.5, f8 = 0.1, t = true, f = false, inf = math.huge },
        { i2 = r.i2, i4 = r.i4, i8 = r.i8, f4 = r.f4, f8 = r.f8, t = r.t, f = r.f, inf = r.inf })
      assert.is_true(r.nan ~= r.nan)
    end)

    it("keeps int8 beyond 2^53 and fractional numeric exact, as strings", function()
      local r = db.query_one([[SELECT 9007199254740993::int8 AS big, '-9223372036854775808'::int8 AS min,
        19.99::numeric(12,2) AS price, 0.10::numeric AS dime, 42::numeric AS whole,
        123456789012345678901234567890::numeric AS huge, 'NaN'::numeric AS nan]])
      assert.are.equal("9007199254740993", r.big)
      assert.are.equal("-9223372036854775808", r.min)
      assert.are.equal("19.99", r.price)
      assert.are.equal("0.10", r.dime)
      assert.are.equal(42, r.whole)
      assert.are.equal("123456789012345678901234567890", r.huge)
      assert.are.equal("NaN", r.nan)
    end)

    it("decodes json and jsonb, with JSON null as db.null so it encodes back as null", function()
      local r = db.query_one([[SELECT '{"a":[1,null,"x"],"b":{"c":true}}'::jsonb AS jb,
        '[1, 2.5]'::json AS j, 'null'::jsonb AS jnull]])
      assert.are.same({ a = { 1, db.null, "x" }, b = { c = true } }, r.jb)
      assert.are.same({ 1, 2.5 }, r.j)
      assert.are.equal(db.null, r.jnull)
      assert.are.equal('[1,null,"x"]', cjson.encode(r.jb.a))
    end)

    it("returns timestamptz as RFC 3339 UTC, whatever the offset or the session time zone", function()
      local r = db.query_one([[SELECT '2024-05-01 12:00:00.5+02'::timestamptz AS a,
        '2024-01-01 00:30:00-05:30'::timestamptz AS b, 'infinity'::timestamptz AS inf]])
      assert.are.equal("2024-05-01T10:00:00.5Z", r.a)
      assert.are.equal("2024-01-01T06:00:00Z", r.b)
      assert.are.equal("infinity", r.inf)
      local rows = db.tx(function()
        db.exec("SET LOCAL TimeZone = 'Asia/Kolkata'")
        return db.query("SELECT '2024-05-01 12:00:00+00'::timestamptz AS t")
      end)
      assert.are.equal("2024-05-01T12:00:00Z", rows[1].t)
    end)

    it("returns uuid, text, date and timestamp as strings", function()
      local r = db.query_one([[SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, 'héllo ✓'::text AS t,
        '2024-02-29'::date AS d, '2024-02-29 23:59:59.25'::timestamp AS ts, 'x'::varchar AS v]])
      assert.are.same({ u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", t = "héllo ✓", d = "2024-02-29",
        ts = "2024-02-29T23:59:59.25", v = "x" }, r)
    end)

    it("returns SQL NULL as db.null, which is cjson.null, and keeps the column key", function()
      local r = db.query_one("SELECT NULL::int AS n, NULL::text AS s, NULL::jsonb AS j")
      assert.are.equal(cjson.null, db.null)
      assert.are.same({ n = db.null, s = db.null, j = db.null }, r)
      assert.are.equal('{"n":null}', cjson.encode({ n = r.n }))
    end)
  end)

  describe("parameters", function()
    it("sends integers as integers, never in exponent notation", function()
      local r = db.query_one("SELECT $1::int8 AS a, $2::text AS b, $3::int8 AS c, $4::text AS d",
        1e15, 1e15, 2 ^ 53, -42)
      assert.are.same({ a = 1e15, b = "1000000000000000", c = 2 ^ 53, d = "-42" }, r)
    end)

    it("sends fractions in their shortest exact form, so numeric keeps no float noise", function()
      local r = db.query_one("SELECT $1::numeric AS a, $2::numeric AS b, $3::float8 AS c", 0.1, 19.99, 1 / 3)
      assert.are.same({ a = "0.1", b = "19.99", c = 1 / 3 }, r)
    end)

    it("sends nil and db.null as NULL, booleans as booleans and tables as JSON", function()
      local r = db.query_one(
        "SELECT $1::int IS NULL AS a, $2::text IS NULL AS b, $3::bool AS c, $4::bool AS d, $5::jsonb AS e",
        nil, db.null, true, false, { k = { 1, 2 }, s = "x" })
      assert.are.same({ a = true, b = true, c = true, d = false, e = { k = { 1, 2 }, s = "x" } }, r)
    end)

    it("stores SQL injection strings verbatim and the table survives them", function()
      local evil = { "'; DROP TABLE " .. T("items") .. "; --", "Robert'); DROP TABLE students;--", "\\'; --", "$1" }
      for i, s in ipairs(evil) do
        local sql = ("INSERT INTO %s (name, qty) VALUES ($1, $2) RETURNING name"):format(T("items"))
        local row = assert(db.query_one(sql, s, i))
        assert.are.equal(s, row.name)
      end
      local rows = db.query(("SELECT name FROM %s WHERE name = ANY($1::text[]) ORDER BY qty"):format(T("items")),
        "{" .. table.concat((function()
          local quoted = {}
          for i, s in ipairs(evil) do quoted[i] = '"' .. s:gsub("\\", "\\\\"):gsub('"', '\\"') .. '"' end
          return quoted
        end)(), ",") .. "}")
      assert.are.equal(#evil, #rows)
      assert.are.equal(evil[1], rows[1].name)
      assert.are.equal(1, db.query_one(
        "SELECT count(*) AS n FROM pg_tables WHERE schemaname = $1 AND tablename = 'items'", schema).n)
    end)

    it("returns invalid for a string with a NUL byte instead of cutting it", function()
      local ok, err, code = db.query("SELECT $1::text", "a\0b")
      assert.is_nil(ok)
      assert.matches("NUL byte", err)
      assert.are.equal("invalid", code)
    end)

    it("raises for misuse: SQL that is not a string, a value with no SQL form", function()
      assert.error_matches(function() db.query(nil) end, "db.query: expecting SQL string, got nil", 1, true)
      assert.error_matches(function() db.query("SELECT $1", print) end, "parameter $1: cannot send a function", 1, true)
      assert.error_matches(function() db.tx("BEGIN") end, "function expected")
    end)
  end)

  describe("results", function()
    it("query returns the rows alone, so a second value is always an error", function()
      db.exec("DELETE FROM " .. T("items"))
      assert.are.equal(1, select("#", db.query(("INSERT INTO %s (name, qty) VALUES ('a', 1), ('b', 2), ('c', 3)")
        :format(T("items")))))
      local rows, err = db.query(("UPDATE %s SET qty = qty + 1 WHERE qty >= $1 RETURNING name"):format(T("items")), 2)
      assert.is_nil(err)
      assert.are.equal(2, #rows)
      rows = db.query(("SELECT name, qty FROM %s ORDER BY name"):format(T("items")))
      assert.are.same({ { name = "a", qty = 1 }, { name = "b", qty = 3 }, { name = "c", qty = 4 } }, rows)
    end)

    it("exec returns the affected row count", function()
      assert.are.equal(2, db.exec(("UPDATE %s SET qty = qty + 1 WHERE qty > $1"):format(T("items")), 1))
      assert.are.equal(1, db.exec(("DELETE FROM %s WHERE name = $1"):format(T("items")), "a"))
      assert.are.equal(0, db.exec(("DELETE FROM %s WHERE name = $1"):format(T("items")), "a"))
    end)

    it("query_one returns the first row, or a bare nil when there is none", function()
      assert.are.same({ name = "b" }, db.query_one(("SELECT name FROM %s ORDER BY name"):format(T("items"))))
      assert.are.equal(1, select("#", db.query_one(("SELECT name FROM %s WHERE false"):format(T("items")))))
      assert.is_nil(db.query_one(("SELECT name FROM %s WHERE false"):format(T("items"))))
    end)
  end)

  describe("errors", function()
    it("returns conflict for a unique violation, without the SQL in the message", function()
      local sql = ("INSERT INTO %s (name, qty) VALUES ($1, 1)"):format(T("items"))
      assert(db.exec(sql, "dup"))
      local ok, err, code, state = db.exec(sql, "dup")
      assert.is_nil(ok)
      assert.are.equal("conflict", code)
      assert.are.equal("23505", state)
      assert.matches("duplicate key", err)
      assert.is_nil(err:find("INSERT", 1, true))
    end)

    it("returns invalid for data errors: not-null, check, foreign key, bad input", function()
      local cases = {
        { ("INSERT INTO %s (item) VALUES (NULL)"):format(T("refs")), "23502" },
        { ("INSERT INTO %s (name, qty) VALUES ('neg', -1)"):format(T("items")), "23514" },
        { ("INSERT INTO %s (item) VALUES (-1)"):format(T("refs")), "23503" },
        { "SELECT $1::int", "22P02", "abc" },
        { "SELECT 1 / $1::int", "22012", 0 },
      }
      for _, c in ipairs(cases) do
        local ok, err, code, state = db.query(c[1], unpack(c, 3))
        assert.is_nil(ok)
        assert.are.equal("invalid", code, err)
        assert.are.equal(c[2], state)
      end
    end)

    it("returns timeout when statement_timeout cancels a statement", function()
      local t0 = os.clock()
      local ok, err, code, state = db.tx(function()
        db.exec("SET LOCAL statement_timeout = 100")
        return db.query("SELECT pg_sleep(2)")
      end)
      assert.is_nil(ok)
      assert.are.equal("timeout", code, err)
      assert.are.equal("57014", state)
      assert.is_true(os.clock() - t0 < 1.5)
    end)

    it("raises for statements the server cannot run: syntax, unknown table, parameter count", function()
      assert.error_matches(function() db.query("SELEC 1") end, "SQLSTATE 42601", 1, true)
      assert.error_matches(function() db.query("SELECT * FROM no_such_table_x") end, "SQLSTATE 42P01", 1, true)
      assert.error_matches(function() db.query("SELECT $1::int + $2::int", 1) end, "db.query:")
      assert.are.equal(2, db.query_one("SELECT 1 + 1 AS v").v)   -- the connection is still usable
    end)
  end)

  describe("prepared statements", function()
    it("prepares a statement once per connection and executes it many times", function()
      local sql = "SELECT $1::int * 2 AS v /* prepared-reuse */"
      for i = 1, 5 do assert.are.equal(2 * i, db.query_one(sql, i).v) end
      local rows = db.query([[SELECT name, generic_plans + custom_plans AS runs FROM pg_prepared_statements
        WHERE statement = $1]], sql)
      assert.are.equal(1, #rows)
      assert.are.equal(5, rows[1].runs)
      assert.matches("^mercato_%d+$", rows[1].name)
    end)

    it("prepares again when the server forgot its statements", function()
      local sql = "SELECT $1::text AS v /* forgotten */"
      assert.are.equal("a", db.query_one(sql, "a").v)
      db.exec("DEALLOCATE ALL")
      local row, err = db.query_one(sql, "b")
      assert.is_nil(err)
      assert.are.equal("b", row.v)
    end)

    it("prepares again when a migration changed the columns a cached statement returns", function()
      db.exec(("CREATE TABLE %s (a int)"):format(T("plans")))
      db.exec(("INSERT INTO %s VALUES (1)"):format(T("plans")))
      local sql = ("SELECT * FROM %s"):format(T("plans"))
      assert.are.same({ { a = 1 } }, db.query(sql))
      db.exec(("ALTER TABLE %s ADD COLUMN b text DEFAULT 'x'"):format(T("plans")))
      local rows, err = db.query(sql)
      assert.is_nil(err)
      assert.are.same({ { a = 1, b = "x" } }, rows)
    end)

    it("runs statements unprepared in one round trip when the cache is off (DB_STMT_CACHE=0)", function()
      local out = lua_sub({ DB_STMT_CACHE = 0 }, [[
        local db = require "db"
        for i = 1, 3 do assert(db.query_one("SELECT $1::int AS v", i).v == i) end
        print("prepared=" .. db.query_one("SELECT count(*) AS n FROM pg_prepared_statements").n)
      ]])
      assert.matches("prepared=0", out, 1, true)
    end)
  end)

  describe("db.tx", function()
    local function count(name)
      return db.query_one(("SELECT count(*) AS n FROM %s WHERE name = $1"):format(T("items")), name).n
    end
    local insert = ("INSERT INTO %s (name, qty) VALUES ($1, 1)"):format(T("items"))

    it("commits when the function returns and returns its results", function()
      local a, b = db.tx(function() assert(db.exec(insert, "tx-ok")); return "done", 2 end)
      assert.are.same({ "done", 2 }, { a, b })
      assert.are.equal(1, count("tx-ok"))
    end)

    it("rolls back when the function raises, and raises the same error again", function()
      local boom = { reason = "boom" }
      local ok, err = pcall(db.tx, function() db.exec(insert, "tx-raise"); error(boom) end)
      assert.is_false(ok)
      assert.are.equal(boom, err)
      assert.are.equal(0, count("tx-raise"))
    end)

    it("rolls back when the function returns nil, err and passes them through", function()
      local ok, err, code = db.tx(function() db.exec(insert, "tx-nil"); return nil, "out of stock", "conflict" end)
      assert.are.same({ nil, "out of stock", "conflict" }, { ok, err, code })
      assert.are.equal(0, count("tx-nil"))
    end)

    it("nests with a savepoint: an inner failure rolls back only the inner work", function()
      assert(db.tx(function()
        db.exec(insert, "outer")
        local ok, err = db.tx(function()
          db.exec(insert, "inner")
          local _, e, code = db.exec(insert, "inner")   -- duplicate: aborts the inner level
          return nil, e, code
        end)
        assert.is_nil(ok)
        assert.matches("duplicate", err)
        return true
      end))
      assert.are.equal(1, count("outer"))
      assert.are.equal(0, count("inner"))
    end)

    it("leaves no transaction open after a raise", function()
      pcall(db.tx, function() error("x") end)
      local a = db.query_one("SELECT now()::text AS t").t
      db.query("SELECT pg_sleep(0.01)")
      assert.are_not.equal(a, db.query_one("SELECT now()::text AS t").t)
    end)

    it("refuses a raw BEGIN and rolls it back", function()
      assert.error_matches(function() db.exec("BEGIN") end, "use db.tx", 1, true)
      local a = db.query_one("SELECT now()::text AS t").t
      db.query("SELECT pg_sleep(0.01)")
      assert.are_not.equal(a, db.query_one("SELECT now()::text AS t").t)
    end)

    it("returns the statement's error instead of committing after a failure the function ignored", function()
      local ok, err, code = db.tx(function()
        db.exec(insert, "ignored")
        db.exec(insert, "dup")   -- exists: the transaction is now aborted
        return true
      end)
      assert.is_nil(ok)
      assert.are.equal("conflict", code, err)
      assert.are.equal(0, count("ignored"))
    end)

    it("returns conflict when COMMIT fails on a deferred unique constraint", function()
      db.exec(("CREATE TABLE %s (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)"):format(T("deferred")))
      local ok, err, code, state = db.tx(function()
        db.exec(("INSERT INTO %s VALUES (1), (1)"):format(T("deferred")))
        return true
      end)
      assert.is_nil(ok)
      assert.are.same({ "conflict", "23505" }, { code, state }, err)
    end)
  end)

  describe("connection loss", function()
    it("reconnects after its backend is terminated and runs the next statement", function()
      local sql = "SELECT pg_backend_pid() AS pid /* reconnect */"
      local before = db.query_one(sql).pid
      local reconnects = metric("db_reconnects_total")
      local out, rc = sh(("psql %s -Atc 'SELECT pg_terminate_backend(%d, 5000)'"):format(q(url), before))
      assert.are.equal(0, rc, out)
      local row, err = db.query_one(sql)
      assert.is_nil(err)
      assert.are_not.equal(before, row.pid)
      assert.are.equal(reconnects + 1, metric("db_reconnects_total"))
      -- the statement cache was emptied with the old session: prepared again on the new one
      assert.are.equal(1, db.query_one("SELECT count(*) AS n FROM pg_prepared_statements WHERE statement = $1", sql).n)
    end)

    it("never reconnects inside a transaction: the transaction fails as unavailable", function()
      local insert = ("INSERT INTO %s (name, qty) VALUES ($1, 1)"):format(T("items"))
      local ok, err, code = db.tx(function()
        db.exec(insert, "lost-tx")
        local pid = db.query_one("SELECT pg_backend_pid() AS pid").pid
        sh(("psql %s -Atc 'SELECT pg_terminate_backend(%d, 5000)'"):format(q(url), pid))
        return db.query("SELECT 1")
      end)
      assert.is_nil(ok)
      assert.are.equal("unavailable", code, err)
      local left = db.query_one(("SELECT count(*) AS n FROM %s WHERE name = $1"):format(T("items")), "lost-tx")
      assert.are.equal(0, left.n)
    end)

    it("gives up on a server that stops answering, within the statement timeout plus grace", function()
      local out = lua_sub({ DB_STATEMENT_TIMEOUT_MS = 300 }, [[
        local db = require "db"
        local host = require "host"
        local pid = db.query_one("SELECT pg_backend_pid() AS pid").pid
        os.execute("kill -STOP " .. pid)
        local t0 = host.now()
        local ok, err, code = db.query("SELECT 1")
        local took = host.now() - t0
        os.execute("kill -CONT " .. pid)
        local again = db.query_one("SELECT 1 AS v")
        print(("code=%s took=%.2f again=%s"):format(tostring(code), took, tostring(again and again.v)))
      ]])
      local code, took, again = out:match("code=(%S+) took=(%S+) again=(%S+)")
      assert.are.equal("timeout", code, out)
      assert.is_true(tonumber(took) >= 0.3 and tonumber(took) < 4, out)
      assert.are.equal("1", again, out)
    end)

    it("applies DB_STATEMENT_TIMEOUT_MS to every session", function()
      local out = lua_sub({ DB_STATEMENT_TIMEOUT_MS = 150 }, [[
        local db = require "db"
        print("timeout=" .. db.query_one("SHOW statement_timeout").statement_timeout)
        local _, _, code = db.query("SELECT pg_sleep(1)")
        print("code=" .. tostring(code))
      ]])
      assert.matches("timeout=150ms", out, 1, true)
      assert.matches("code=timeout", out, 1, true)
    end)
  end)

  describe("mercato migrate", function()
    local dbname = "mercato_db_spec"
    local spec_url = url:gsub("/[^/?]*(%??[^/]*)$", "/" .. dbname .. "%1")
    local dir

    local function migrate(env_url)
      return sh(("SCRIPTS_DIR=%s SERVICE=product DATABASE_URL=%s %s migrate")
        :format(q(dir), q(env_url or spec_url), BIN))
    end

    setup(function()
      db.exec("DROP DATABASE IF EXISTS " .. dbname .. " WITH (FORCE)")
      assert(db.exec("CREATE DATABASE " .. dbname))
      dir = sh("mktemp -d /tmp/mercato-db-spec.XXXXXX"):match("%S+")
      sh("cp -r spec/fixtures/db/scripts/. " .. q(dir))
    end)

    teardown(function()
      sh("rm -rf " .. q(dir))
      db.exec("DROP DATABASE IF EXISTS " .. dbname .. " WITH (FORCE)")
    end)

    local function psql(sql)
      return (sh(("psql %s -AtXc %s"):format(q(spec_url), q(sql))):gsub("%s+$", ""))
    end

    it("applies the migrations once, in order, and a second run changes nothing", function()
      local out, rc = migrate()
      assert.are.equal(0, rc, out)
      assert.matches("applied 001_create_widgets.sql.*applied 002_widget_price.sql", out)
      assert.are.equal("1|001_create_widgets.sql\n2|002_widget_price.sql",
        psql("SELECT version, name FROM schema_migrations ORDER BY version"))
      assert.are.equal("seed|9.99", psql("SELECT name, price FROM widgets"))
      out, rc = migrate()
      assert.are.equal(0, rc, out)
      assert.matches("0 applied, 2 already up to date", out, 1, true)
      assert.are.equal("1", psql("SELECT count(*) FROM widgets"))
    end)

    it("applies a new migration only", function()
      write(dir .. "/services/product/migrations/010_widget_stock.sql",
        "ALTER TABLE widgets ADD COLUMN stock int NOT NULL DEFAULT 0;\n")
      local out, rc = migrate()
      assert.are.equal(0, rc, out)
      assert.matches("1 applied, 2 already up to date", out, 1, true)
      assert.are.equal("10", psql("SELECT max(version) FROM schema_migrations"))
    end)

    it("reports a failing migration by file and line, and applies nothing of it", function()
      local file = dir .. "/services/product/migrations/011_broken.sql"
      write(file, "CREATE TABLE half (id int);\n\nSELECT no_such_column FROM widgets;\n")
      local out, rc = migrate()
      assert.are_not.equal(0, rc)
      assert.matches("011_broken.sql:3: column \"no_such_column\" does not exist", out, 1, true)
      write(file, "CREATE TABLE half (id int);\nALTER TABLE nope ADD COLUMN x int;\n")
      out, rc = migrate()
      assert.are_not.equal(0, rc)
      assert.matches("011_broken.sql: relation \"nope\" does not exist", out, 1, true)
      assert.are.equal("", psql("SELECT to_regclass('half')"))
      os.remove(file)
    end)

    it("refuses to run when an applied migration was changed", function()
      local file = dir .. "/services/product/migrations/002_widget_price.sql"
      local f = assert(io.open(file, "a"))
      f:write("-- edited after it was applied\n")
      f:close()
      local out, rc = migrate()
      assert.are_not.equal(0, rc)
      assert.matches("002_widget_price.sql was changed after it was applied", out, 1, true)
    end)

    it("does nothing, successfully, when the service has no migrations directory", function()
      local empty = sh("mktemp -d /tmp/mercato-db-spec.XXXXXX"):match("%S+")
      local out, rc = sh(("SCRIPTS_DIR=%s SERVICE=product DATABASE_URL=postgresql://nobody@127.0.0.1:1/none %s migrate")
        :format(q(empty), BIN))
      sh("rm -rf " .. q(empty))
      assert.are.equal(0, rc, out)
    end)
  end)

  describe("db.wait_notify (runners)", function()
    it("returns false after the timeout and true when a NOTIFY on its channel commits", function()
      local t0 = socket.gettime()
      assert.is_false(db.wait_notify("spec_wakeup", 0.2))
      assert.is_true(socket.gettime() - t0 >= 0.19)
      -- another session notifies (a short-lived psql), committed while we wait
      sh(("(sleep 0.3; psql %s -qAtXc \"NOTIFY spec_wakeup\") >/dev/null 2>&1 &"):format(q(url)))
      t0 = socket.gettime()
      assert.is_true(db.wait_notify("spec_wakeup", 5))
      local took = socket.gettime() - t0
      assert.is_true(took >= 0.25 and took < 3, tostring(took))
      -- one that arrived while this session ran statements is returned at once
      db.exec("SELECT pg_notify('spec_wakeup', 'x')")
      db.query("SELECT 1")
      assert.is_true(db.wait_notify("spec_wakeup", 0))
      assert.is_false(db.wait_notify("spec_wakeup", 0))
    end)

    it("refuses bad channels and transactions", function()
      assert.has_error(function() db.wait_notify("Bad-Name", 1) end)
      assert.has_error(function() db.wait_notify(("x"):rep(64), 1) end)
      assert.has_error(function() db.wait_notify("ok", -1) end)
      assert.has_error(function() db.tx(function() db.wait_notify("ok", 0) end) end)
    end)

  end)

  describe("serving", function()
    local dbname = "mercato_db_spec_serve"
    local spec_url = url:gsub("/[^/?]*(%??[^/]*)$", "/" .. dbname .. "%1")

    setup(function()
      db.exec("DROP DATABASE IF EXISTS " .. dbname .. " WITH (FORCE)")
      assert(db.exec("CREATE DATABASE " .. dbname))
    end)
    teardown(function() db.exec("DROP DATABASE IF EXISTS " .. dbname .. " WITH (FORCE)") end)

    local function get(srv, path)
      local res = assert(raw_http.request(srv.port, "GET", path))
      return res.status, cjson.decode(res.body)
    end

    it("refuses db.wait_notify in a handler (it would block the HTTP thread)", function()
      local dir = sh("mktemp -d /tmp/mercato-db-spec.XXXXXX"):match("%S+")
      sh("cp -r spec/fixtures/db/scripts/. " .. q(dir))
      local srv = server.start { service = "product", scripts = dir, workers = 1, bin = BIN, env = { DATABASE_URL = spec_url } }
      local res = raw_http.request(srv.port, "GET", "/listen")
      srv:stop()
      sh("rm -rf " .. q(dir))
      assert.are.equal(500, res.status)
    end)
    it("migrates at start-up, keeps one connection across requests and a hot reload, and recovers", function()
      local dir = sh("mktemp -d /tmp/mercato-db-spec.XXXXXX"):match("%S+")
      sh("cp -r spec/fixtures/db/scripts/. " .. q(dir))
      local srv = server.start { service = "product", scripts = dir, workers = 1, bin = BIN,
        env = { DATABASE_URL = spec_url, HOT_RELOAD = 1 } }
      local ok, err = pcall(function()
        local status, body = get(srv, "/ready")
        assert.are.equal(200, status)
        assert.are.equal("up", body.checks.db)
        local _, a = get(srv, "/widgets")
        local _, b = get(srv, "/widgets")
        assert.are.same({ name = "seed", price = "9.99", pid = a.widgets[1].pid }, a.widgets[1])
        assert.are.equal(a.widgets[1].pid, b.widgets[1].pid)

        local handlers = dir .. "/services/product/handlers.lua"
        local f = assert(io.open(handlers))
        local src = f:read("*a")
        f:close()
        write(handlers, (src:gsub("generation = 1", "generation = 2")))
        local c
        for _ = 1, 100 do
          _, c = get(srv, "/widgets")
          if c.generation == 2 then break end
          sh("sleep 0.05")
        end
        assert.are.equal(2, c.generation)
        assert.are.equal(a.widgets[1].pid, c.widgets[1].pid)

        db.query("SELECT pg_terminate_backend($1, 5000)", c.widgets[1].pid)
        local status2, d = get(srv, "/widgets")
        assert.are.equal(200, status2)
        assert.are_not.equal(c.widgets[1].pid, d.widgets[1].pid)
      end)
      srv:stop()
      sh("rm -rf " .. q(dir))
      assert(ok, err)
    end)

    -- The start-up migration runs beside the script build; a release whose scripts do not load
    -- must leave the schema as it was (the old replicas keep serving on it).
    it("applies no pending migration when the scripts do not load, and all of them once they do", function()
      local dir = sh("mktemp -d /tmp/mercato-db-spec.XXXXXX"):match("%S+")
      sh("cp -r spec/fixtures/db/scripts/. " .. q(dir))
      local handlers = dir .. "/services/product/handlers.lua"
      local f = assert(io.open(handlers))
      local src = f:read("*a")
      f:close()
      write(handlers, "local = 1\n" .. src)
      local function serve()
        return sh(("SCRIPTS_DIR=%s SERVICE=product DATABASE_URL=%s PORT=1 timeout 20 %s")
          :format(q(dir), q(spec_url), BIN))
      end
      local function psql(sql) return (sh(("psql %s -AtXc %s"):format(q(spec_url), q(sql))):gsub("%s+$", "")) end
      local function versions()
        return psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations")
      end
      db.exec("DROP DATABASE IF EXISTS " .. dbname .. " WITH (FORCE)")
      assert(db.exec("CREATE DATABASE " .. dbname))
      local out, rc = serve()
      assert.are.equal(1, rc, out)
      assert.matches("failed to load", out)
      assert.matches("handlers.lua:1:", out)
      assert.are.equal("none", psql("SELECT coalesce(to_regclass('widgets')::text, 'none')"))
      -- the scripts fixed, the next start applies both files before it serves
      write(handlers, src)
      local srv = server.start { service = "product", scripts = dir, workers = 1, bin = BIN, env = { DATABASE_URL = spec_url } }
      local res = raw_http.request(srv.port, "GET", "/widgets")
      srv:stop()
      sh("rm -rf " .. q(dir))
      assert.are.equal(200, res.status)
      assert.are.equal("1,2", versions())
    end)

    it("reports the database down on /ready and answers unavailable when it cannot connect", function()
      local dir = sh("mktemp -d /tmp/mercato-db-spec.XXXXXX"):match("%S+")
      sh("cp -r spec/fixtures/db/scripts/. " .. q(dir) .. " && rm -r " .. q(dir .. "/services/product/migrations"))
      local srv = server.start { service = "product", scripts = dir, workers = 1, bin = BIN,
        env = { DATABASE_URL = "postgresql://postgres@127.0.0.1:1/none" } }
      local ok, err = pcall(function()
        local status, body = get(srv, "/ready")
        assert.are.equal(503, status)
        assert.matches("^down: database unavailable", body.checks.db)
        local t0 = os.time()
        local s2, b2 = get(srv, "/widgets")
        assert.are.equal(503, s2)
        assert.are.equal("unavailable", b2.code)
        assert.is_nil(b2.error:find("SELECT", 1, true))
        assert.is_true(os.time() - t0 <= 2)
      end)
      srv:stop()
      sh("rm -rf " .. q(dir))
      assert(ok, err)
    end)
  end)
end)
