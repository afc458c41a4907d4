-- The deliveries: one row per e-mail an event asked for, written (status queued) in the
-- consumer's transaction together with the event's inbox claim; the sender runners move it to
-- sent, or back to queued with a later next_attempt_at, or to failed after NOTIFY_MAX_ATTEMPTS.
CREATE TABLE notifications (
    id               uuid        PRIMARY KEY,                 -- uuid7: ordered by creation
    event_id         uuid        NOT NULL,
    event_type       text        NOT NULL,
    user_id          uuid,                                     -- the owner (GET /notifications/me)
    recipient        text        NOT NULL,
    subject          text        NOT NULL,
    body_text        text        NOT NULL,
    body_html        text        NOT NULL,
    status           text        NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    occurred_at      timestamptz,                              -- the event's, for latency
    message_id       text,                                     -- the Message-ID header sent
    sent_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id)                                          -- one e-mail per event, whatever the inbox says
);

-- The senders' claim: due queued rows, oldest first.
CREATE INDEX notifications_due_idx ON notifications (next_attempt_at) WHERE status = 'queued';
CREATE INDEX notifications_user_idx ON notifications (user_id, id);
CREATE INDEX notifications_recipient_idx ON notifications (lower(recipient), id);
