-- OAuth2 clients of the client_credentials grant (the internal service client). The secret
-- is stored as "sha256$<salt hex>$<hex of SHA-256(salt || secret)>": client secrets are long
-- random strings, so a salted fast hash is enough and keeps service token requests cheap.
CREATE TABLE oauth_clients (
    id          text PRIMARY KEY,
    secret_hash text NOT NULL,
    scopes      text NOT NULL DEFAULT '',
    disabled    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
