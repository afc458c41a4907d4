-- db: the functions Lua sees, over the primitives of bindings/db.c (compiled into the binary).
--
-- In an HTTP handler a statement parks the handler on the thread's loop while PostgreSQL
-- works, so db.tx lives here rather than in C: pcall lets the handler park inside it.
local C, ROWS, ONE, EXEC = ...
local run, take, begin, finish = C.run, C.take, C.begin, C.finish
local error, pcall, select, type, unpack = error, pcall, select, type, unpack

-- db.wait_notify(channel, timeout_s) → true (a NOTIFY on channel arrived), false (timeout) |
-- nil, err, code. Runners only (it blocks); see bindings/db_listen.c.
local db = { null = C.null, in_tx = C.in_tx, wait_notify = C.wait_notify }

-- A primitive's answer: a result to turn into rows, a failure to return, or misuse to raise.
local function rows(mode, res, err, code, state)
  if res then return take(res, mode) end
  if res == false then error(err, 0) end
  return nil, err, code, state
end

-- db.query(sql, ...) → rows (an array, empty for a command without RETURNING).
function db.query(sql, ...)
  return rows(ROWS, run(ROWS, "db.query", sql, ...))
end

-- db.query_one(sql, ...) → the first row, or a bare nil when there is none.
function db.query_one(sql, ...)
  return rows(ONE, run(ONE, "db.query_one", sql, ...))
end

-- db.exec(sql, ...) → the affected row count.
function db.exec(sql, ...)
  local n, err, code, state = run(EXEC, "db.exec", sql, ...)
  if n == false then error(err, 0) end
  return n, err, code, state
end

local function pack(...)
  return { n = select("#", ...), ... }
end

-- db.tx(fn, ...) → fn's results. BEGIN (SAVEPOINT when nested), run fn(...), COMMIT when it
-- returns, ROLLBACK when it raises (the error is raised again) or returns nil, err. A failed
-- BEGIN or COMMIT returns nil, message, code, sqlstate.
function db.tx(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'tx' (function expected, got " .. type(fn) .. ")", 2)
  end
  local depth, err, code, state = begin()
  if not depth then return nil, err, code, state end
  local r = pack(pcall(fn, ...))
  local commit = r[1] and not (r.n >= 3 and r[2] == nil and r[3] ~= nil)
  local ok, ferr, fcode, fstate = finish(depth, commit)
  if not r[1] then error(r[2], 0) end
  if not ok and commit then return nil, ferr, fcode, fstate end
  return unpack(r, 2, r.n)
end

return db
