-- scripts/services/order/handlers/orders.lua: checkout (POST /orders, Idempotency-Key honoured
-- by the host: routes.lua; its answer stored with the order), the buyer's and the admin's views, and the transitions
-- (cancel, ship, deliver) — the saga (services.order.saga) does the work.
local json = require "json"
local idempotency = require "lib.idempotency"
local pagination = require "lib.pagination"
local problem = require "lib.problem"
local validate = require "lib.validate"
local carts = require "services.order.handlers.cart"
local saga = require "services.order.saga"
local S = require "services.order.schema"
local store = require "services.order.store"

local _M = {}

local function is_admin(req) return req.claims and req.claims.role == "admin" end
local function actor(req) return tostring(req.claims and req.claims.sub or "system") end

-- Another buyer's order is 404, as if it did not exist (CONTRACT §3).
local function owner_or_admin(req)
  return function(order)
    if is_admin(req) or order.user_id == tostring(req.claims.sub):lower() then return true end
    return false, "not_found"
  end
end

-- Admin, or a seller who owns every item of the order (CONTRACT §6: ship and deliver).
local function fulfiller(req)
  return function(order)
    if is_admin(req) then return true end
    local sub = tostring(req.claims.sub):lower()
    local all = #order.items > 0
    for _, it in ipairs(order.items) do all = all and it.seller_id == sub end
    if all and req.claims.role == "seller" then return true end
    if order.user_id == sub then
      return false, "forbidden", "Only an admin or the seller of every item can ship or deliver an order."
    end
    return false, "not_found"
  end
end

local function refusal(why, detail, id)
  if why == "not_found" then return problem.not_found("order", id) end
  if why == "forbidden" then return problem.forbidden(detail) end
  return problem.conflict(detail or "The order changed meanwhile; read it again.")
end

-- The checkout's payment as its answer shows it (with the client_secret).
local function payment_view(p)
  if type(p) ~= "table" then return json.null end
  return { id = p.id, status = p.status, client_secret = p.client_secret }
end

-- POST /orders {shipping_address} → 201 order with payment {id, status, client_secret}
function _M.create(req)
  local user = carts.buyer(req)
  if not user then return carts.not_a_buyer() end
  local doc, status, body, headers = validate.body(req, S.checkout)
  if not doc then return status, body, headers end
  local idem = req.idempotency
  -- With a key, the answer is stored in the transaction that announces the order (it commits
  -- with it or not at all); the bytes stored are the bytes sent.
  local answer
  local function record(o, p)
    answer = { idempotency.store_in_tx(req, 201, store.public(o, payment_view(p)), { Location = "/orders/" .. o.id }) }
    if not answer[1] then return nil, answer[2], answer[3] end
    return true
  end
  local order, detail, code = saga.checkout(user, doc.shipping_address, idem and idem.key or nil,
    { recovered = idem and idem.recovered, record = idem and record or nil })
  if order == "empty" then
    return problem.validation({ { field = "cart", message = "is empty" } }, "The cart is empty; add items before checking out.")
  end
  if order == "insufficient" then
    return problem.new(409, "Not enough stock for every item; nothing was reserved and the cart is kept.",
      { insufficient = detail })
  end
  if order == "invalid" then return problem.validation({ { field = "cart", message = tostring(detail) } }) end
  if not order then
    if code == "not_found" then return problem.forbidden("This account cannot place orders.") end
    return problem.from(code, detail)
  end
  if answer and answer[1] then return unpack(answer, 1, 3) end
  return 201, store.public(order, payment_view(detail)), { Location = "/orders/" .. order.id }
end

-- GET /orders (own; admin: all, or ?user_id=)
function _M.list(req)
  local page, status, body, headers = pagination.params(req.query)
  if not page then return status, body, headers end
  if page.after and (type(page.after.t) ~= "string" or not store.is_uuid(page.after.id)) then
    return problem.bad_request("cursor is not a cursor this endpoint gave out.", { { field = "cursor", message = "is invalid" } })
  end
  local user
  if is_admin(req) then
    user = req.query.user_id
    if user ~= nil and not store.is_uuid(user) then
      return problem.validation({ { field = "user_id", message = "must be a UUID" } })
    end
  else
    user = carts.buyer(req)
    if not user then return carts.not_a_buyer() end
  end
  local rows, err, code = store.list(user and user:lower(), page)
  if not rows then return problem.from(code, err) end
  local ids = {}
  for i = 1, math.min(#rows, page.limit) do ids[i] = rows[i].id end
  local items
  items, err, code = store.items_of_many(ids)
  if not items then return problem.from(code, err) end
  return 200, pagination.result(rows, page.limit, function(r) return { t = r.created_at, id = r.id } end, function(r)
    r.items = items[r.id] or {}
    return store.public(r)
  end)
end

-- GET /orders/{id} (owner/admin) with status_history
function _M.show(req)
  local id = req.params.id
  local order, err, code = store.get(id, { history = true })
  if err then return problem.from(code, err) end
  if not order or store.hidden(order) then return problem.not_found("order", id) end
  local ok, why = owner_or_admin(req)(order)
  if not ok then return refusal(why, nil, id) end
  return 200, store.public(order)
end

-- Answer a transition: the order with its history, or the refusal.
local function settle(id, row, why, detail)
  if type(row) == "table" then
    local order, err, code = store.get(row.id, { history = true })
    if not order then return problem.from(code, err) end
    return 200, store.public(order)
  end
  if row == false then return refusal(why, detail, id) end
  return problem.from(detail, why)
end

-- POST /orders/{id}/cancel (owner before shipping, or admin)
function _M.cancel(req)
  local id = req.params.id
  if not store.is_uuid(id) then return problem.not_found("order", id) end
  local empty, est, ebody, eheaders = validate.empty(req)
  if not empty then return est, ebody, eheaders end
  local reason = is_admin(req) and "cancelled_by_admin" or "cancelled_by_buyer"
  local row, why, detail = saga.cancel(id:lower(), reason, actor(req), owner_or_admin(req))
  return settle(id, row, why, detail)
end

-- POST /orders/{id}/ship {carrier, tracking_number} (admin, or the seller of every item)
function _M.ship(req)
  local id = req.params.id
  if not store.is_uuid(id) then return problem.not_found("order", id) end
  local doc, status, body, headers = validate.body(req, S.ship)
  if not doc then return status, body, headers end
  local row, why, detail = saga.advance(id:lower(), "paid", "shipped", actor(req), fulfiller(req),
    { carrier = doc.carrier, tracking_number = doc.tracking_number },
    { carrier = doc.carrier, tracking_number = doc.tracking_number })
  return settle(id, row, why, detail)
end

-- POST /orders/{id}/deliver (admin, or the seller of every item)
function _M.deliver(req)
  local id = req.params.id
  if not store.is_uuid(id) then return problem.not_found("order", id) end
  local empty, est, ebody, eheaders = validate.empty(req)
  if not empty then return est, ebody, eheaders end
  local row, why, detail = saga.advance(id:lower(), "shipped", "delivered", actor(req), fulfiller(req))
  return settle(id, row, why, detail)
end

return _M
