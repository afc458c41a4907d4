-- spec/support/order_helpers.lua: the checkout's real neighbourhood for order specs — a user
-- service (real JWKS, real client_credentials tokens, real buyers and sellers), a product
-- service and an order service, each on a database of its own made here and dropped in stop,
-- with Redis and RabbitMQ from the private stack; with opts.payment, the payment service and
-- the Stripe stand-in too (support.payment_helpers). Without it PAYMENT_SERVICE_URL names a
-- port nobody listens on: checkout answers 503 and undoes itself.
--
--   local O = require "support.order_helpers"
--   local w = O.start()                          -- setup; O.stop(w) in teardown
--   local buyer = O.buyer(w)                     -- { token, sub, email }
--   local p = O.product(w, { stock = 5, price_cents = 1999 })
--   O.req(w.order, "PUT", "/cart/items/" .. p.id, { quantity = 2 }, buyer.token)
local cjson = require "cjson.safe"
local crypto = require "crypto"
local http = require "http"
local P = require "support.product_helpers"
local PAY = require "support.payment_helpers"
local U = require "support.user_helpers"
local server = require "support.server"

local M = {}

local function fresh_db(prefix)
  local name = prefix .. crypto.hex(crypto.random(4))
  P.psql(P.db_url("postgres"), "CREATE DATABASE " .. name)
  return name, P.db_url(name)
end

local function wait_ready(srv)
  for _ = 1, 150 do
    local r = http.request { method = "GET", url = srv.url .. "/ready", timeout_ms = 2000 }
    if r and r.status == 200 then return true end
    os.execute("sleep 0.1")
  end
  error("service on " .. srv.url .. " never became ready:\n" .. srv:log())
end

-- Start one service on its own fresh database (on port, or a free one).
function M.service(name, env, port)
  local db, url = fresh_db("mercato_" .. name .. "_spec_")
  local e = { DATABASE_URL = url, REDIS_URL = os.getenv("REDIS_URL"), AMQP_URL = os.getenv("AMQP_URL") or false,
    ELASTICSEARCH_URL = false }
  for k, v in pairs(env or {}) do e[k] = v end
  local ok, srv = pcall(server.start, { service = name, scripts = "scripts", env = e, timeout = 20, port = port })
  if not ok then P.psql(P.db_url("postgres"), "DROP DATABASE IF EXISTS " .. db .. " WITH (FORCE)") error(srv, 2) end
  srv.url = "http://127.0.0.1:" .. srv.port
  srv.db_name, srv.db_url, srv.env = db, url, e
  wait_ready(srv)
  return srv
end

function M.drop(srv)
  if not srv then return end
  local st = srv:stop()
  pcall(P.psql, P.db_url("postgres"), "DROP DATABASE IF EXISTS " .. srv.db_name .. " WITH (FORCE)")
  return st
end

-- The world: user, product and order services; opts.payment: the payment service and its
-- Stripe stand-in (w.pay = { svc, standin }); opts.notification: the notification service on the
-- stack's SMTP sink; opts.gateway: a gateway in front of them all (w.gateway); opts.order_env;
-- opts.ports = { user =, product =, order =, payment =, notification =, gateway =, standin = }
-- (unset: free ports); opts.env = { <service> = { NAME = value } } more env per service.
function M.start(opts)
  opts = opts or {}
  local w = {}
  local ports, env = opts.ports or {}, opts.env or {}
  local function with(name, e)
    for k, v in pairs(env[name] or {}) do e[k] = v end
    return e
  end
  local udb, uurl = fresh_db("mercato_user_spec_")
  w.user = U.start(with("user", { DATABASE_URL = uurl }), { port = ports.user })
  w.user.db_name, w.user.db_url = udb, uurl
  wait_ready(w.user)
  local jwks = w.user.url .. "/.well-known/jwks.json"
  w.product = M.service("product", with("product", { JWKS_URL = jwks }), ports.product)
  if opts.payment then
    w.pay = PAY.start { env = with("payment", { JWT_PUBLIC_KEY_FILE = false, JWKS_URL = jwks }),
      standin = { duplicate_rate = 0.2, port = ports.standin }, port = ports.payment }
    w.payment = w.pay.svc
  end
  if opts.notification then
    w.notification = M.service("notification", with("notification", { JWKS_URL = jwks, SMTP_URL = os.getenv("SMTP_URL"),
      NOTIFY_QUEUE = "notification.events." .. crypto.hex(crypto.random(4)) }), ports.notification)
    w.notify_queue = w.notification.env.NOTIFY_QUEUE
  end
  local e = {
    JWKS_URL = jwks, USER_SERVICE_URL = w.user.url, PRODUCT_SERVICE_URL = w.product.url,
    PAYMENT_SERVICE_URL = w.payment and w.payment.url or ("http://127.0.0.1:" .. server.free_port()),
    SERVICE_CLIENT_ID = U.CLIENT_ID, SERVICE_CLIENT_SECRET = U.CLIENT_SECRET,
    ORDER_PAYMENTS_QUEUE = "order.payments." .. crypto.hex(crypto.random(4)),
  }
  for k, v in pairs(opts.order_env or {}) do e[k] = v end
  w.order = M.service("order", with("order", e), ports.order)
  w.queue = e.ORDER_PAYMENTS_QUEUE
  if opts.gateway then
    local g = server.start { service = "gateway", scripts = "scripts", timeout = 20, port = ports.gateway, env = with("gateway", {
      USER_SERVICE_URL = w.user.url, PRODUCT_SERVICE_URL = w.product.url, ORDER_SERVICE_URL = w.order.url,
      PAYMENT_SERVICE_URL = w.payment and w.payment.url or e.PAYMENT_SERVICE_URL,
      NOTIFICATION_SERVICE_URL = w.notification and w.notification.url or ("http://127.0.0.1:" .. server.free_port()),
      RATE_LIMIT_GLOBAL = "off", REDIS_URL = os.getenv("REDIS_URL"),
    }) }
    g.url = "http://127.0.0.1:" .. g.port
    w.gateway = g
  end
  return w
end

function M.stop(w)
  local st = {}
  if not w then return st end
  if w.gateway then st.gateway = w.gateway:stop() end
  if w.order then st.order = M.drop(w.order) end
  if w.notification then st.notification = M.drop(w.notification) end
  if w.pay then st.payment = PAY.stop(w.pay) end
  for _, name in ipairs { "product", "user" } do
    if w[name] then st[name] = M.drop(w[name]) end
  end
  -- this run's consumer queues (each rabbitmqctl boots a VM: in the background)
  for _, q in ipairs { w.queue, w.notify_queue } do
    os.execute("(scripts/dev/stack.sh rabbitmqctl delete_queue -q '" .. q .. "'; " ..
      "scripts/dev/stack.sh rabbitmqctl delete_queue -q '" .. q .. ".dlq') >/dev/null 2>&1 &")
  end
  return st
end

-- Restart the order service on its port and database (SIGKILL if kill), env changes applied
-- (false removes). → the exit status of the old process
function M.restart_order(w, env, kill)
  local old = w.order
  local st = old:stop(kill and "KILL" or nil)
  local e = {}
  for k, v in pairs(old.env) do e[k] = v end
  for k, v in pairs(env or {}) do e[k] = v end
  local srv = server.start { service = "order", scripts = "scripts", env = e, timeout = 20, port = old.port }
  srv.url, srv.db_name, srv.db_url, srv.env = old.url, old.db_name, old.db_url, e
  wait_ready(srv)
  w.order = srv
  return st
end

-- Pay an order through the stand-in (its signed webhook reaches the payment service). → status
function M.pay(w, order, card)
  local pi = order.payment.client_secret:match("^(pi_[%w]+)_secret")
  return PAY.confirm(w.pay, pi, card)
end

-- Poll until cond() is truthy (at most timeout s). → its value or nil.
M.eventually = PAY.eventually

-- A request; doc (a table) is sent as JSON. → { status, headers, body, json }
function M.req(srv, method, path, doc, token, headers)
  local h = {}
  for k, v in pairs(headers or {}) do h[k] = v end
  if token then h.Authorization = "Bearer " .. token end
  local body
  if doc ~= nil then
    body = type(doc) == "string" and doc or cjson.encode(doc)
    h["Content-Type"] = h["Content-Type"] or "application/json"
  end
  local res, err = http.request { method = method, url = srv.url .. path, headers = h, body = body, timeout_ms = 20000 }
  assert(res, "request failed: " .. tostring(err))
  if res.body and res.body ~= "" then res.json = cjson.decode(res.body) end
  return res
end

-- A registered, logged-in user of role (buyer by default): { token, sub, email }.
function M.party(w, role)
  local s = U.session(w.user, role and role ~= "buyer" and { role = role } or nil)
  return { token = s.access, sub = s.user.id, email = s.email }
end
function M.buyer(w) return M.party(w, "buyer") end
function M.seller(w) return M.party(w, "seller") end
function M.admin(w) return { token = U.admin(w.user) } end

-- A product of a (new, unless given) seller. → the product document (with .seller)
function M.product(w, over, seller)
  seller = seller or M.seller(w)
  local doc = { name = "Spec item " .. crypto.hex(crypto.random(3)), description = "", price_cents = 1000,
    currency = "eur", stock = 10, tags = cjson.empty_array }
  for k, v in pairs(over or {}) do doc[k] = v end
  local res = M.req(w.product, "POST", "/products", doc, seller.token)
  assert(res.status == 201, "create product: " .. res.status .. " " .. tostring(res.body))
  res.json.seller = seller
  return res.json
end

M.ADDRESS = { name = "Ada Buyer", line1 = "1 Main St", city = "Berlin", postal_code = "10115", country = "DE" }

-- Stock and reserved of a product at the product service.
function M.inventory(w, id)
  local res = M.req(w.product, "GET", "/products/" .. id .. "/inventory")
  assert(res.status == 200, "inventory: " .. res.status)
  return res.json
end

function M.psql(srv, sql) return P.psql(srv.db_url, sql) end

return M
