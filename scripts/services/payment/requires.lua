-- What the payment service cannot start without (the host checks it before serving).
return { "DATABASE_URL", { "JWKS_URL", "JWT_PUBLIC_KEY_FILE" }, { "STRIPE_API_KEY", "STRIPE_TEST_KEY" }, "STRIPE_WEBHOOK_SECRET" }
