defmodule SnakeBridge.Cluster.Router do
  # Chooses where a call runs, in the calling process, from what this node
  # already knows: the :pg members of the pool's group (which nodes run it)
  # and the loads those members last published (the table below). No call
  # waits for another node to choose.
  #
  # With :local_first (the default of a pool that runs here), a call stays
  # on this node while the local pool's load (queued plus running calls) is
  # at most its :overload; past it, and with :least_loaded, the call goes to
  # the less loaded of two nodes drawn at random. Loads are a gossip
  # interval old: two random choices keep every caller from piling onto the
  # one node that looked idlest at the last update, as a plain minimum would.
  @moduledoc false

  alias SnakeBridge.{Error, Object}

  @table __MODULE__

  @doc false
  def create_table do
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
  end

  @doc false
  def put_config(pool, opts), do: :ets.insert(@table, {{:config, pool}, opts})

  @doc false
  def delete_config(pool), do: :ets.delete(@table, {:config, pool})

  @doc false
  def put_load(pool, node, load) do
    :ets.insert(@table, {{:load, pool, node}, load, System.monotonic_time(:millisecond)})
  end

  @doc false
  def delete_node(node), do: :ets.match_delete(@table, {{:load, :_, node}, :_, :_})

  @doc false
  @spec route(tuple()) :: :local | {:remote, node()} | {:error, Error.t()}
  def route({pool, target, _function, args, kwargs, _mode, near}) do
    case target do
      # An object runs where it lives, and so does a call with a `:worker`.
      %Object{ref: ref} when node(ref) != node() ->
        {:remote, node(ref)}

      %Object{} ->
        :local

      _module when is_reference(near) and node(near) != node() ->
        {:remote, node(near)}

      _module when is_reference(near) ->
        :local

      _module ->
        case members(pool) do
          [] -> :local
          members -> route_members(pool, members, args, kwargs)
        end
    end
  end

  # The node that the call's target, its `:worker` or the objects among its
  # arguments pin it to, if any.
  @doc false
  @spec pinned_node(tuple()) :: {:ok, node() | nil} | {:error, Error.t()}
  def pinned_node({_pool, %Object{ref: ref}, _function, _args, _kwargs, _mode, _near}),
    do: {:ok, node(ref)}

  def pinned_node({_pool, _module, _function, _args, _kwargs, _mode, near})
      when is_reference(near),
      do: {:ok, node(near)}

  def pinned_node({_pool, _module, _function, args, kwargs, _mode, _near}) do
    {:ok, object_node(kwargs, object_node(args, nil))}
  catch
    {:conflict, nodes} -> {:error, conflict(nodes)}
  end

  # What :pg.get_members/2 answers, read from the scope's table (a row
  # {group, members, local members} per group) as it reads it. For a group
  # with no row, which is every call to a pool not in a cluster, get_members
  # raises and catches badarg: about 0.3 µs on every such call.
  defp members(pool) do
    case :ets.lookup(SnakeBridge.Cluster.scope(), pool) do
      [row] -> elem(row, 1)
      [] -> []
    end
  end

  # The nodes running `pool`, this one included, in no particular order.
  @doc false
  @spec nodes(atom()) :: [node()]
  def nodes(pool) do
    SnakeBridge.Cluster.scope() |> :pg.get_members(pool) |> Enum.map(&node/1) |> Enum.uniq()
  end

  # The least loaded node of `nodes` by the published loads (see above).
  @doc false
  @spec pick(atom(), [node()]) :: node() | nil
  def pick(_pool, []), do: nil
  def pick(_pool, [node]), do: node

  def pick(pool, nodes) do
    [a, b | _] = Enum.take_random(nodes, 2)
    if score(pool, b) < score(pool, a), do: b, else: a
  end

  @doc false
  def load_view(pool, node) do
    case :ets.lookup(@table, {:load, pool, node}) do
      [{_, load, at}] -> Map.put(load, :age_ms, System.monotonic_time(:millisecond) - at)
      [] -> %{size: nil, queue_length: nil, in_flight: nil, age_ms: nil}
    end
  end

  defp route_members(pool, members, args, kwargs) do
    case pinned_node({pool, nil, nil, args, kwargs, nil, nil}) do
      {:ok, nil} -> choose(pool, members |> Enum.map(&node/1) |> Enum.uniq())
      {:ok, node} when node == node() -> :local
      {:ok, node} -> {:remote, node}
      {:error, _} = error -> error
    end
  end

  defp choose(pool, nodes) do
    local? = node() in nodes

    config =
      case :ets.lookup(@table, {:config, pool}) do
        [{_, config}] when local? -> config
        _ -> %{strategy: :least_loaded}
      end

    if config.strategy == :local_first and load(pool, node()) <= config.overload do
      :local
    else
      case pick(pool, nodes) do
        node when node == node() -> :local
        node -> {:remote, node}
      end
    end
  end

  defp load(pool, node) do
    case :ets.lookup(@table, {:load, pool, node}) do
      [{_, %{queue_length: queued, in_flight: running}, _}] -> queued + running
      [] -> 0
    end
  end

  defp score(pool, node) do
    case :ets.lookup(@table, {:load, pool, node}) do
      [{_, %{queue_length: queued, in_flight: running, size: size}, _}] ->
        (queued + running) / max(size, 1)

      [] ->
        0
    end
  end

  # Walks a call's arguments for objects: their node, nil when there are
  # none, or a throw when they live on different nodes.
  defp object_node(%Object{ref: ref}, acc), do: pin(node(ref), acc)
  defp object_node([head | tail], acc), do: object_node(tail, object_node(head, acc))
  defp object_node(tuple, acc) when is_tuple(tuple), do: object_node(Tuple.to_list(tuple), acc)

  defp object_node(map, acc) when is_map(map) do
    :maps.fold(fn key, value, acc -> object_node(value, object_node(key, acc)) end, acc, map)
  end

  defp object_node(_other, acc), do: acc

  defp pin(node, nil), do: node
  defp pin(node, node), do: node
  defp pin(node, other), do: throw({:conflict, [other, node]})

  defp conflict(nodes) do
    %Error{
      reason: :handle_conflict,
      message:
        "the call's objects live on different nodes (#{Enum.map_join(nodes, ", ", &inspect/1)}); " <>
          "a call runs in one worker, so its objects must come from the same one",
      details: %{nodes: nodes}
    }
  end
end
