-- scripts/services/notification/handlers/notifications.lua: the delivery records — an admin's
-- list and retry, a user's own e-mails, one record for its owner or an admin. Roles and tokens
-- are checked on the routes, in C.
local events = require "lib.events"
local pagination = require "lib.pagination"
local problem = require "lib.problem"
local store = require "services.notification.store"
local validate = require "lib.validate"

local _M = {}

local STATUSES = { queued = true, sent = true, failed = true }

local function is_admin(req) return req.claims.role == "admin" end

local function page_of(req, filters)
  local page, status, body, headers = pagination.params(req.query)
  if not page then return status, body, headers end
  local after = page.after and page.after.id
  if page.after and not events.valid_uuid(after) then return pagination.bad_cursor() end
  local rows, err, code = store.list(filters, after, page.limit + 1)
  if err then return problem.from(code, err) end
  local admin = is_admin(req)
  return 200, pagination.result(rows, page.limit, function(r) return { id = r.id } end,
    function(r) return store.public(r, admin) end)
end

-- GET /notifications?recipient=&status= (admin)
function _M.list(req)
  local q = req.query
  local recipient = q.recipient ~= "" and q.recipient or nil
  local status = q.status ~= "" and q.status or nil
  if recipient and (#recipient > 254 or not validate.utf8_len(recipient) or recipient:find("%c")) then
    return problem.bad_request("Invalid filter.", { { field = "recipient", message = "is not an e-mail address" } })
  end
  if status and not STATUSES[status] then
    return problem.bad_request("Invalid filter.", { { field = "status", message = "must be queued, sent or failed" } })
  end
  return page_of(req, { recipient = recipient, status = status })
end

-- GET /notifications/me: the caller's own e-mails (a token without a user id has none).
function _M.me(req)
  local sub = req.claims.sub
  if not events.valid_uuid(sub) then
    local page, status, body, headers = pagination.params(req.query)
    if not page then return status, body, headers end
    return 200, pagination.result({}, page.limit)
  end
  return page_of(req, { user_id = sub })
end

-- GET /notifications/{id}: its owner or an admin; anyone else gets the same 404 as for none.
function _M.show(req)
  local id = req.params.id
  if not events.valid_uuid(id) then return problem.not_found("notification", id) end
  local row, err, code = store.by_id(id)
  if err then return problem.from(code, err) end
  if not row or not (is_admin(req) or (row.user_id ~= nil and row.user_id == req.claims.sub)) then
    return problem.not_found("notification", id)
  end
  return 200, store.public(row, is_admin(req))
end

-- POST /notifications/{id}/retry (admin): a failed or queued delivery is due again now with a
-- fresh attempt budget; a sent one is a 409 (it would be a second e-mail).
function _M.retry(req)
  local id = req.params.id
  if not events.valid_uuid(id) then return problem.not_found("notification", id) end
  local empty, est, ebody, eheaders = validate.empty(req)
  if not empty then return est, ebody, eheaders end
  local row, err, code = store.retry(id)
  if row == false then   -- err is its status
    return problem.new(409, "This notification was already sent; retrying it would send it twice.", { status = err })
  end
  if err then return problem.from(code, err) end
  if row == nil then return problem.not_found("notification", id) end
  return 200, store.public(row, true)
end

return _M
