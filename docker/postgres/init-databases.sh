#!/bin/bash
# docker/postgres/init-databases.sh: run once by the postgres image on an empty volume
# (/docker-entrypoint-initdb.d): one database per service, owned by the compose user.
set -euo pipefail
for svc in user product order payment notification; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -c "CREATE DATABASE mercato_$svc OWNER \"$POSTGRES_USER\""
done
