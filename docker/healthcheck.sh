#!/bin/sh
# docker/healthcheck.sh: the image's HEALTHCHECK — GET /health on this service's port (PORT, or
# the service's default from the README: gateway 8080, user 8081 … notification 8085).
case "${SERVICE:-}" in
  user) default=8081 ;;
  product) default=8082 ;;
  order) default=8083 ;;
  payment) default=8084 ;;
  notification) default=8085 ;;
  *) default=8080 ;;
esac
exec curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:${PORT:-$default}/health"
