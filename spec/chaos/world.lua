-- spec/chaos/world.lua: the whole platform for the chaos tier — user, product, order, payment and
-- notification services and the gateway (support.order_helpers, each on a fresh database of the
-- private stack), the Stripe stand-in, on fixed ports from RUN_PORT_BASE (gateway on the base,
-- services on base+1 … base+5, the stand-in on STRIPE_STANDIN_PORT), with the saga's clocks
-- shortened so that a round settles in seconds — and SIGKILL + restart of any one component.
--
--   local world = require "chaos.world"
--   local w = world.start()            -- world.stop(w) at the end
--   world.kill(w, "order")             -- SIGKILL, restart on the same port and database, ready
local http = require "http"
local O = require "support.order_helpers"
local P = require "support.product_helpers"

local M = {}

-- What a round may kill: the stack's servers (scripts/dev/stack.sh kill) and each service.
M.STACK = { "postgres", "redis", "rabbitmq" }
M.SERVICES = { "user", "product", "order", "payment", "notification", "gateway" }
M.TARGETS = { "postgres", "redis", "rabbitmq", "user", "product", "order", "payment", "notification", "gateway" }

-- The tier's clocks (README "Configuration"): unpaid orders cancelled after 15 s, half-done
-- checkouts undone after 8 s, held Idempotency-Keys free after 5 s, Stripe reconciled every 5 s.
M.ENV = {
  order = { ORDER_PAYMENT_TIMEOUT = "15s", ORDER_TIMEOUT_EVERY_S = "2", ORDER_RECOVERY_EVERY_S = "2",
    ORDER_RECOVER_AFTER_S = "8", IDEMPOTENCY_LOCK_S = "5" },
  payment = { RECONCILE_EVERY_S = "5", RECONCILE_QUIET_S = "5", IDEMPOTENCY_LOCK_S = "5" },
  product = { RESERVATION_EXPIRY_EVERY_S = "2" },
  notification = { NOTIFY_RETRY_BASE_S = "0.5", NOTIFY_RETRY_MAX_S = "5" },
}

-- RUN_PORT_BASE set: fixed ports from it (as `make run`); unset: free ports, as every spec.
local function ports()
  local base = tonumber(os.getenv("RUN_PORT_BASE") or "")
  if not base then return {} end
  return { gateway = base, user = base + 1, product = base + 2, order = base + 3, payment = base + 4,
    notification = base + 5, standin = tonumber(os.getenv("STRIPE_STANDIN_PORT") or "") or base + 11 }
end

-- The private stack runs PostgreSQL with synchronous_commit off (fast specs): a crash of it then
-- loses commits it had acknowledged — a consumer's inbox row and work, after the event was acked
-- (round 2 of the first 10-round run: an order.created with no e-mail, nowhere in the queues).
-- No production server runs so, and nothing a service does could survive it; the tier's
-- databases get the durable default, and each service reconnects to take it.
local function durable(w)
  local admin = P.db_url("postgres")
  for _, name in ipairs { "user", "product", "order", "payment", "notification" } do
    P.psql(admin, "ALTER DATABASE " .. w[name].db_name .. " SET synchronous_commit = on")
  end
  for _, name in ipairs { "user", "product", "order", "payment", "notification" } do
    w[name]:restart()
  end
end

function M.start()
  local w = O.start { payment = true, notification = true, gateway = true, ports = ports(), env = M.ENV }
  w.standin = w.pay.standin
  durable(w)
  local ok, who = M.ready(w, 60)
  if not ok then error(who .. " not ready after its restart") end
  return w
end

function M.stop(w) return O.stop(w) end

local function ready(url, timeout)
  local deadline = os.time() + timeout
  repeat
    local r = http.request { method = "GET", url = url .. "/ready", timeout_ms = 2000 }
    if r and r.status == 200 then return true end
    os.execute("sleep 0.1")
  until os.time() > deadline
  return false
end

-- SIGKILL one component and bring it back (stack servers through stack.sh, services on their
-- port, database and env). → true | nil, why
function M.kill(w, target)
  for _, name in ipairs(M.STACK) do
    if name == target then
      local rc = os.execute("scripts/dev/stack.sh kill " .. name .. " >> .run/chaos/stack.log 2>&1")
      if rc ~= 0 and rc ~= true then return nil, "stack.sh kill " .. name .. " failed (.run/chaos/stack.log)" end
      return true
    end
  end
  local srv = w[target]
  if not srv then return nil, "no such component: " .. tostring(target) end
  local ok, err = pcall(srv.restart, srv, "KILL")
  if not ok then return nil, target .. " did not come back: " .. tostring(err) end
  if not ready("http://127.0.0.1:" .. srv.port, 30) then return nil, target .. " not ready 30 s after its restart" end
  return true
end

-- Every service answers /ready (its database, Redis, RabbitMQ usable). → true | nil, name
function M.ready(w, timeout)
  for _, name in ipairs(M.SERVICES) do
    if not ready("http://127.0.0.1:" .. w[name].port, timeout or 60) then return nil, name end
  end
  return true
end

return M
