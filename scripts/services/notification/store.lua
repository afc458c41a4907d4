-- scripts/services/notification/store.lua: the notifications table (one row per e-mail).
-- Returns rows or nil, err, code from db; a row that does not exist is a bare nil (STYLE 12).
local crypto = require "crypto"
local db = require "db"
local json = require "json"

local _M = {}

local COLUMNS = "id, event_id, event_type, user_id, recipient, subject, status, attempts, last_error, " ..
  "next_attempt_at, occurred_at, message_id, sent_at, created_at, updated_at"
_M.COLUMNS = COLUMNS

local function null(v) if v == nil then return json.null end return v end

-- What the API shows of a row (the bodies stay inside). The SMTP error names the mail server
-- (host, port): only an admin sees it.
function _M.public(r, admin)
  return {
    id = r.id, event_id = r.event_id, event_type = r.event_type, user_id = null(r.user_id),
    recipient = r.recipient, subject = r.subject, status = r.status, attempts = r.attempts,
    last_error = admin and null(r.last_error) or json.null,
    next_attempt_at = r.status == "queued" and r.next_attempt_at or json.null,
    occurred_at = null(r.occurred_at), message_id = null(r.message_id), sent_at = null(r.sent_at),
    created_at = r.created_at, updated_at = r.updated_at,
  }
end

-- A queued delivery for an event → its row ({ id }), or a bare nil when the event already has
-- one (the unique event_id backs up the inbox: one e-mail per event, whatever happens to it).
function _M.enqueue(d)
  return db.query_one(
    "INSERT INTO notifications (id, event_id, event_type, user_id, recipient, subject, body_text, body_html, occurred_at, " ..
    "traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (event_id) DO NOTHING RETURNING id",
    crypto.uuid7(), d.event_id, d.event_type, d.user_id or db.null, d.recipient, d.subject, d.text, d.html,
    d.occurred_at or db.null, d.traceparent or db.null)
end

function _M.by_id(id)
  return db.query_one("SELECT " .. COLUMNS .. " FROM notifications WHERE id = $1", id)
end

-- A page of rows, newest first, after the cursor's id; filters may be nil.
function _M.list(f, after, limit)
  return db.query("SELECT " .. COLUMNS .. " FROM notifications " ..
    "WHERE ($1::uuid IS NULL OR id < $1::uuid) AND ($2::text IS NULL OR lower(recipient) = lower($2::text)) " ..
    "AND ($3::text IS NULL OR status = $3::text) AND ($4::uuid IS NULL OR user_id = $4::uuid) " ..
    "ORDER BY id DESC LIMIT $5",
    after or db.null, f.recipient or db.null, f.status or db.null, f.user_id or db.null, limit)
end

-- An admin's retry: a failed (or still queued) row becomes due now with a fresh attempt budget.
-- → the row, nil (no such row), or false, status (a sent row: nothing to retry).
function _M.retry(id)
  local row, err, code = db.query_one(
    "UPDATE notifications SET status = 'queued', attempts = 0, next_attempt_at = now(), updated_at = now() " ..
    "WHERE id = $1 AND status IN ('queued', 'failed') RETURNING " .. COLUMNS, id)
  if err then return nil, err, code end
  if row then return row end
  local cur, cerr, ccode = db.query_one("SELECT status FROM notifications WHERE id = $1", id)
  if cerr then return nil, cerr, ccode end
  if not cur then return nil end
  return false, cur.status
end

return _M
