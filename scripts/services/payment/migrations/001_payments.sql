-- The payment service's own tables (database mercato_payment): one payment per order, mirroring
-- a Stripe PaymentIntent; its status history; refunds with their idempotency keys; the Stripe
-- events already processed; the reconciliation runs.
CREATE TABLE payments (
    id              uuid        PRIMARY KEY,                 -- uuid v7
    order_id        uuid        NOT NULL UNIQUE,             -- one payment per order (idempotent create)
    user_id         uuid,                                    -- the buyer: owner of the payment
    customer_email  text,
    amount_cents    bigint      NOT NULL CHECK (amount_cents > 0),
    currency        text        NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    provider_id     text        UNIQUE,                      -- pi_…; NULL until Stripe answered
    client_secret   text,
    status          text        NOT NULL DEFAULT 'creating',
    refunded_cents  bigint      NOT NULL DEFAULT 0,
    failure_reason  text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (status IN ('creating', 'requires_payment_method', 'requires_confirmation', 'requires_action',
                      'processing', 'requires_capture', 'failed', 'succeeded', 'canceled')),
    CHECK (refunded_cents >= 0 AND refunded_cents <= amount_cents)
);
CREATE INDEX payments_user_idx ON payments (user_id, id);
-- Reconciliation walks the payments that are not final yet.
CREATE INDEX payments_open_idx ON payments (updated_at) WHERE status NOT IN ('succeeded', 'canceled');

CREATE TABLE payment_status_history (
    id          bigserial   PRIMARY KEY,
    payment_id  uuid        NOT NULL REFERENCES payments (id),
    status      text        NOT NULL,
    source      text        NOT NULL CHECK (source IN ('api', 'webhook', 'reconcile')),
    event_id    text,                                        -- the Stripe event (evt_…) that moved it
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX payment_status_history_payment_idx ON payment_status_history (payment_id, id);

CREATE TABLE refunds (
    id               uuid        PRIMARY KEY,                -- uuid v7; metadata[refund_id] at Stripe
    payment_id       uuid        NOT NULL REFERENCES payments (id),
    amount_cents     bigint      NOT NULL CHECK (amount_cents > 0),
    status           text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    provider_id      text        UNIQUE,                     -- re_…
    idempotency_key  text,                                   -- the client's Idempotency-Key
    request_hash     text,                                   -- what the key was first used for
    locked_until     timestamptz,                            -- a request is working on it until then
    error_status     integer,                                -- a failed refund's answer, replayed
    error_detail     text,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (payment_id, idempotency_key)
);

-- Each Stripe event id (evt_…, a text key) is processed once, in the transaction of its change.
CREATE TABLE processed_events (
    event_id      text        PRIMARY KEY,
    type          text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE reconciliation_runs (
    id           uuid        PRIMARY KEY,
    trigger      text        NOT NULL CHECK (trigger IN ('job', 'admin')),
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    checked      integer     NOT NULL DEFAULT 0,
    repaired     integer     NOT NULL DEFAULT 0,
    failed       integer     NOT NULL DEFAULT 0
);
