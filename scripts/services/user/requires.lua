-- What the user service cannot start without (the host checks it before serving).
return { "DATABASE_URL", "JWT_PRIVATE_KEY_FILE" }
