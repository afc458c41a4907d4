-- Orders and their checkout saga (CONTRACT §6, ARCHITECTURE.md "Events and the saga").
-- `status` is what the buyer sees (created → paid → shipped → delivered; created|paid →
-- cancelled); `step` is where the saga stands, persisted before each call to another service
-- so that the recovery job can drive a crashed checkout to an end:
--   reserving        the row exists, the stock reservation was asked for (not announced yet)
--   reserved         stock held, prices snapshotted, order.created in the outbox
--   payment_pending  the payment exists; waiting for payment.completed / payment.failed / timeout
--   done             paid and the reservation committed, or cancelled and compensated
--   abandoned        a checkout undone before its payment existed (stock released): never an
--                    order for anyone, kept so that a late payment for it is refunded
CREATE TABLE orders (
    id               uuid        PRIMARY KEY,           -- also the reservation id at the product service
    user_id          uuid        NOT NULL,
    email            text        NOT NULL,
    status           text        NOT NULL DEFAULT 'created'
                     CHECK (status IN ('created', 'paid', 'shipped', 'delivered', 'cancelled')),
    step             text        NOT NULL DEFAULT 'reserving'
                     CHECK (step IN ('reserving', 'reserved', 'payment_pending', 'done', 'abandoned')),
    currency         text        CHECK (currency ~ '^[a-z]{3}$'),
    total_cents      bigint      NOT NULL DEFAULT 0 CHECK (total_cents >= 0),
    shipping_address jsonb       NOT NULL,
    payment_id       uuid,
    payment_status   text,
    refunded_cents   bigint      NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    cancel_reason    text,
    carrier          text,
    tracking_number  text,
    idempotency_key  text,                              -- the checkout's Idempotency-Key: a retry resumes this order
    version          bigint      NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX orders_idempotency_idx ON orders (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- GET /orders: own orders newest first; admin: all.
CREATE INDEX orders_user_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_created_idx ON orders (created_at DESC, id DESC);
-- The timeout and recovery jobs: unfinished sagas only.
CREATE INDEX orders_open_idx ON orders (created_at) WHERE step IN ('reserving', 'reserved', 'payment_pending');

CREATE TABLE order_items (
    order_id          uuid    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id        uuid    NOT NULL,
    name              text    NOT NULL DEFAULT '',
    quantity          integer NOT NULL CHECK (quantity BETWEEN 1 AND 100),
    unit_price_cents  bigint  NOT NULL DEFAULT 0 CHECK (unit_price_cents >= 0),
    seller_id         uuid,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE order_status_history (
    order_id    uuid        NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    seq         bigserial,
    status      text        NOT NULL,
    reason      text,
    actor       text,                                  -- the token's sub, or "system"
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, seq)
);
