-- The table of the pg-redis bench scenario (bench/run.sh): 10 000 rows, read by primary key.
CREATE TABLE bench_items (
    id          integer PRIMARY KEY,
    name        text    NOT NULL,
    price_cents integer NOT NULL,
    currency    text    NOT NULL
);

INSERT INTO bench_items (id, name, price_cents, currency)
SELECT i, 'Item ' || i, 1000 + i, 'usd' FROM generate_series(1, 10000) AS i;
