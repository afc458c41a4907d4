-- What the notification service cannot start without (the host checks it before serving).
return { "DATABASE_URL", "SMTP_URL", { "JWKS_URL", "JWT_PUBLIC_KEY_FILE" } }
