#!/usr/bin/env bash
# spec/support/deploy/rabbitmq_metric_names.sh: the metric names RabbitMQ's rabbitmq_prometheus
# plugin can export (rabbitmq_<name>), read from the installed plugin's compiled collectors —
# the atoms of their literal tables — so dashboards and alert rules are checked against the
# real exporter without starting a broker. One name a line.
set -euo pipefail
ebin=""
for d in /usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_prometheus-*/ebin; do [ -d "$d" ] && ebin=$d; done
[ -n "$ebin" ] || { echo "rabbitmq_prometheus is not installed" >&2; exit 1; }
erl -noshell -eval '
  Atoms = fun Walk(T, Acc) when is_atom(T) -> [T | Acc];
              Walk(T, Acc) when is_tuple(T) -> Walk(tuple_to_list(T), Acc);
              Walk([H | R], Acc) -> Walk(R, Walk(H, Acc));
              Walk(_, Acc) -> Acc end,
  Terms = fun(File) ->
      case beam_lib:chunks(File, ["LitT"]) of
        {ok, {_, [{"LitT", <<_:32, Z/binary>>}]}} ->
          <<N:32, Rest/binary>> = zlib:uncompress(Z),
          Split = fun S(0, _, Acc) -> Acc;
                      S(K, <<Sz:32, T:Sz/binary, R/binary>>, Acc) -> S(K - 1, R, [binary_to_term(T) | Acc]) end,
          Split(N, Rest, []);
        _ -> []
      end end,
  Files = filelib:wildcard("'"$ebin"'/prometheus_rabbitmq_*_collector.beam"),
  Names = lists:usort([A || F <- Files, T <- Terms(F), A <- Atoms(T, [])]),
  [io:format("rabbitmq_~s~n", [A]) || A <- Names],
  halt().'
