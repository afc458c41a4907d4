-- spec/support/user_helpers.lua: a real user service for integration specs — its own RSA key
-- (openssl genrsa under .run/test/user/), DATABASE_URL_USER, REDIS_URL, AMQP_URL from the
-- private stack (scripts/dev/stack.sh env), a bootstrap admin and an internal client — and
-- small HTTP helpers around the http binding.
--
--   local U = require "support.user_helpers"
--   local svc = U.start()                      -- once per spec file (setup); U.stop(svc) in teardown
--   local res = U.post_json(svc, "/auth/register", { email = U.email(), password = "...", name = "A" })
--   res.status, res.json, res.headers["content-type"]
local cjson = require "cjson.safe"
local crypto = require "crypto"
local http = require "http"
local server = require "support.server"

local M = {}

M.DIR = ".run/test/user"
M.KEY = M.DIR .. "/jwt.pem"
M.ADMIN_EMAIL = "root-admin@example.com"
M.ADMIN_PASSWORD = "admin password 123"
M.CLIENT_ID = "mercato-services"
M.CLIENT_SECRET = "s3rvice-secret-" .. string.rep("x", 24)
M.PASSWORD = "correct horse 1"

local function need(name)
  local v = os.getenv(name)
  assert(v and v ~= "", name .. " is not set: run under `make test` or `set -a; . <(scripts/dev/stack.sh env)`")
  return v
end

-- The RSA key every user-service spec signs with (made once per run). Runs side by side (make
-- security's parts) may make it at once: each writes a file of its own and renames it into
-- place, so whichever lands last wins whole and none finds its file gone.
function M.key()
  local f = io.open(M.KEY)
  if f then f:close() return M.KEY end
  os.execute("mkdir -p " .. M.DIR)
  -- $$: the shell's pid, a name of this run's own in the same directory (rename is atomic there)
  local rc = os.execute(("openssl genrsa -out %s.tmp.$$ 2048 2>/dev/null && mv -f %s.tmp.$$ %s"):format(M.KEY, M.KEY, M.KEY))
  assert(rc == 0 or rc == true, "openssl genrsa failed")
  return M.KEY
end

function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- Start SERVICE=user on scripts/ with the stack's URLs; env overrides (false removes);
-- opts.port: listen there (a restart on the same address).
function M.start(env, opts)
  local e = {
    DATABASE_URL = need("DATABASE_URL_USER"), REDIS_URL = need("REDIS_URL"), AMQP_URL = os.getenv("AMQP_URL") or false,
    JWT_PRIVATE_KEY_FILE = M.key(), SERVICE_CLIENT_ID = M.CLIENT_ID, SERVICE_CLIENT_SECRET = M.CLIENT_SECRET,
    ADMIN_EMAIL = M.ADMIN_EMAIL, ADMIN_PASSWORD = M.ADMIN_PASSWORD, RATE_LIMIT_AUTH = "100000/min",
    -- every spec logs in from 127.0.0.1: the per-IP failed-login lock would join them up
    LOGIN_IP_FAILURES = "100000",
  }
  for k, v in pairs(env or {}) do e[k] = v end
  local srv = server.start { service = "user", scripts = "scripts", env = e, timeout = 20, port = opts and opts.port }
  srv.url = "http://127.0.0.1:" .. srv.port
  return srv
end

function M.stop(srv)
  if srv then return srv:stop() end
end

-- A fresh address nobody registered.
function M.email(tag) return (tag or "user") .. "-" .. crypto.uuid4():sub(1, 13) .. "@example.com" end

-- Send a request; returns { status, headers, body, json }.
function M.request(srv, method, path, opts)
  opts = opts or {}
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  if opts.token then headers.Authorization = "Bearer " .. opts.token end
  local res, err = http.request { method = method, url = srv.url .. path, headers = headers, body = opts.body,
    timeout_ms = opts.timeout_ms or 10000 }
  assert(res, "request failed: " .. tostring(err))
  if res.body and res.body ~= "" then res.json = cjson.decode(res.body) end
  return res
end

function M.post_json(srv, path, doc, opts)
  opts = opts or {}
  opts.headers = opts.headers or {}
  opts.headers["Content-Type"] = opts.headers["Content-Type"] or "application/json"
  opts.body = type(doc) == "string" and doc or cjson.encode(doc)
  return M.request(srv, opts.method or "POST", path, opts)
end

function M.patch_json(srv, path, doc, opts)
  opts = opts or {}
  opts.method = "PATCH"
  return M.post_json(srv, path, doc, opts)
end

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- POST application/x-www-form-urlencoded; form is a table or a raw string.
function M.post_form(srv, path, form, opts)
  opts = opts or {}
  local body = form
  if type(form) == "table" then
    local parts = {}
    for k, v in pairs(form) do parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(v) end
    table.sort(parts)
    body = table.concat(parts, "&")
  end
  opts.headers = opts.headers or {}
  opts.headers["Content-Type"] = opts.headers["Content-Type"] or "application/x-www-form-urlencoded"
  opts.body = body
  return M.request(srv, "POST", path, opts)
end

-- POST JSON as a client that honours a 503's Retry-After would: at most 4 more tries. The
-- argon2id pool answers 503 "busy" when a hash waited past ARGON2_WAIT_MS, which a machine busy
-- with other work (a CI neighbour) can cause in a spec's set-up; a lasting 503 still fails.
local function post_json_retrying(srv, path, doc)
  local res
  for _ = 1, 5 do
    res = M.post_json(srv, path, doc)
    if res.status ~= 503 then return res end
    local wait = res.headers and tonumber(res.headers["retry-after"] or res.headers["Retry-After"])
    os.execute("sleep " .. math.min(wait or 1, 2))
  end
  return res
end

-- Register a user (201 asserted); returns the user document and its password.
function M.register(srv, over)
  local doc = { email = M.email(), password = M.PASSWORD, name = "Spec User" }
  for k, v in pairs(over or {}) do doc[k] = v end
  local res = post_json_retrying(srv, "/auth/register", doc)
  assert(res.status == 201, "register: " .. res.status .. " " .. tostring(res.body))
  return res.json, doc.password
end

-- Log in (200 asserted); returns the token response.
function M.login(srv, email, password)
  local res = post_json_retrying(srv, "/auth/login", { email = email, password = password or M.PASSWORD })
  assert(res.status == 200, "login: " .. res.status .. " " .. tostring(res.body))
  return res.json
end

-- A registered, logged-in user: { user, email, access, refresh }.
function M.session(srv, over)
  local user, pw = M.register(srv, over)
  local t = M.login(srv, user.email, pw)
  return { user = user, email = user.email, password = pw, access = t.access_token, refresh = t.refresh_token }
end

function M.admin(srv)
  local t = M.login(srv, M.ADMIN_EMAIL, M.ADMIN_PASSWORD)
  return t.access_token
end

-- The claims of a JWT, unverified (for reading sub/exp/role in assertions).
function M.claims(token)
  local payload = token:match("^[^.]+%.([^.]+)%.")
  return cjson.decode(crypto.base64url_decode(payload))
end

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.sh_quote = sh_quote

-- Run SQL on the user database with psql; returns its trimmed output.
function M.psql(sql, url)
  url = url or need("DATABASE_URL_USER")
  local p = io.popen("psql -X -q -tA " .. sh_quote(url) .. " -c " .. sh_quote(sql) .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

return M
