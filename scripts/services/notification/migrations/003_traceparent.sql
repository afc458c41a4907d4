-- The W3C traceparent of the event a delivery came from, sent with the e-mail (header
-- Traceparent), so a purchase can be followed from its first request to its e-mails.
ALTER TABLE notifications ADD COLUMN traceparent text;
