-- The W3C traceparent of the request that created the payment (the order service's checkout
-- call): its events — sent later, from Stripe's webhooks or reconciliation — continue that trace.
ALTER TABLE payments ADD COLUMN traceparent text;
