-- The inbox (lib.consumer): one row per event a consumer has processed, written in the same
-- transaction as the consumer's work, so a redelivered event is recognised and skipped. Not
-- applied from here: a service that consumes events copies this file, unchanged, into its own
-- migrations as the next number (services/<name>/migrations/NNN_inbox.sql).
CREATE TABLE inbox (
    event_id      uuid        NOT NULL,                  -- the envelope id
    consumer      text        NOT NULL,                  -- consumer.define{ name = ... }
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, consumer)
);

-- lib.inbox.purge deletes rows past their retention (keep it longer than any redelivery).
CREATE INDEX inbox_processed_at_idx ON inbox (processed_at);
