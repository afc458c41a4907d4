-- wrk script: POST /webhooks/stripe with one signed event (env WEBHOOK_BODY, WEBHOOK_SIGNATURE)
-- delivered again and again — Stripe's at-least-once redelivery: verify in C, find the event id
-- processed, answer 200.
-- luacheck: globals wrk
wrk.method = "POST"
wrk.body = os.getenv("WEBHOOK_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Stripe-Signature"] = os.getenv("WEBHOOK_SIGNATURE")
