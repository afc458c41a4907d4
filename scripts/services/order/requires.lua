-- What the order service cannot start without (the host checks it before serving): its
-- database, Redis (carts), the services checkout calls, the service client, and the keys to
-- verify tokens.
return {
  "DATABASE_URL", "REDIS_URL", "USER_SERVICE_URL", "PRODUCT_SERVICE_URL", "PAYMENT_SERVICE_URL",
  "SERVICE_CLIENT_ID", "SERVICE_CLIENT_SECRET", { "JWKS_URL", "JWT_PUBLIC_KEY_FILE" },
}
