defmodule SnakeBridge.Cluster.Handles do
  # The objects this node holds for processes on other nodes.
  #
  # An object's handle is a NIF resource, which does not survive
  # distribution. So a result going to another node has each object in it
  # replaced by a handle made here: a plain reference, whose node tells the
  # holder where the object lives, mapped in a table to the object itself.
  # The process that made the call holds the object; the Relay monitors it,
  # so the object goes when it releases the object, exits, or its node
  # disconnects. Only the Relay touches the tables.
  @moduledoc false

  alias SnakeBridge.{Error, NIF, Object}

  # handle => {handle, object, holder}
  @objects :snakebridge_cluster_objects
  # {{holder, handle}, pool}, ordered so that a holder's handles are one
  # range.
  @by_holder :snakebridge_cluster_holders

  @doc false
  def create_tables do
    :ets.new(@objects, [:named_table, :protected, :set])
    :ets.new(@by_holder, [:named_table, :protected, :ordered_set])
    :ok
  end

  @doc false
  @spec count() :: non_neg_integer()
  def count, do: :ets.info(@objects, :size)

  # Replaces the objects of a result with handles held by `holder`; returns
  # the term and how many handles it made.
  @doc false
  @spec export(term(), pid()) :: {term(), non_neg_integer()}
  def export(term, holder) do
    if object?(term), do: export(term, holder, 0), else: {term, 0}
  end

  defp export(%Object{} = object, holder, n) do
    handle = make_ref()
    :ets.insert(@objects, {handle, object, holder})
    :ets.insert(@by_holder, {{holder, handle}, object.pool})
    {%{object | ref: handle}, n + 1}
  end

  defp export(list, holder, n) when is_list(list) do
    {list, n} = Enum.map_reduce(list, n, &export(&1, holder, &2))
    {list, n}
  end

  defp export(tuple, holder, n) when is_tuple(tuple) do
    {list, n} = export(Tuple.to_list(tuple), holder, n)
    {List.to_tuple(list), n}
  end

  defp export(map, holder, n) when is_map(map) do
    {pairs, n} =
      map
      |> Map.to_list()
      |> Enum.map_reduce(n, fn {key, value}, n ->
        {key, n} = export(key, holder, n)
        {value, n} = export(value, holder, n)
        {{key, value}, n}
      end)

    {Map.new(pairs), n}
  end

  defp export(other, _holder, n), do: {other, n}

  defp object?(%Object{}), do: true
  defp object?([head | tail]), do: object?(head) or object?(tail)
  defp object?(tuple) when is_tuple(tuple), do: tuple |> Tuple.to_list() |> object?()

  defp object?(map) when is_map(map),
    do: :maps.fold(fn k, v, acc -> acc or object?(k) or object?(v) end, false, map)

  defp object?(_other), do: false

  # Replaces the handles in a request from another node with the objects
  # they stand for.
  @doc false
  @spec import(tuple()) :: {:ok, tuple()} | {:error, Error.t()}
  def import({pool, target, function, args, kwargs, mode, near}) do
    {:ok,
     {pool, resolve(target), function, resolve(args), resolve(kwargs), mode, resolve_near(near)}}
  catch
    {:handle, error} -> {:error, error}
  end

  # A `:worker` arrives as the handle of the object it names.
  defp resolve_near(nil), do: nil

  defp resolve_near(handle),
    do: resolve(%Object{ref: handle, type: "session", repr: nil, pool: nil}).ref

  defp resolve(%Object{ref: handle} = object) do
    case :ets.lookup(@objects, handle) do
      [{_, held, _holder}] -> held
      [] -> throw({:handle, unknown(object)})
    end
  end

  defp resolve([head | tail]), do: [resolve(head) | resolve(tail)]

  defp resolve(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> resolve() |> List.to_tuple()

  defp resolve(map) when is_map(map) do
    if object?(map) do
      :maps.from_list(for {key, value} <- :maps.to_list(map), do: {resolve(key), resolve(value)})
    else
      map
    end
  end

  defp resolve(other), do: other

  @doc false
  def object(handle) do
    case :ets.lookup(@objects, handle) do
      [{_, object, _}] -> object
      [] -> nil
    end
  end

  # One of the objects of `pool` that `holder` holds whose worker still
  # runs, or nil.
  @doc false
  @spec live_in(pid(), atom()) :: Object.t() | nil
  def live_in(holder, pool) do
    @by_holder
    |> :ets.select([{{{holder, :"$1"}, pool}, [], [:"$1"]}], 16)
    |> first_live()
  end

  defp first_live(:"$end_of_table"), do: nil

  defp first_live({handles, continuation}) do
    Enum.find_value(handles, fn handle ->
      with %Object{ref: ref} = object <- object(handle),
           os_pid when os_pid != nil <- NIF.object_os_pid(ref),
           do: object,
           else: (_ -> nil)
    end) || first_live(:ets.select(continuation))
  end

  # Lets go of one object; returns its holder, or nil when it was not held.
  @doc false
  @spec release(reference()) :: pid() | nil
  def release(handle) do
    case :ets.take(@objects, handle) do
      [{_, %Object{ref: ref}, holder}] ->
        NIF.release(ref)
        :ets.delete(@by_holder, {holder, handle})
        holder

      [] ->
        nil
    end
  end

  # Lets go of every object `holder` holds; returns how many.
  @doc false
  @spec release_holder(pid()) :: non_neg_integer()
  def release_holder(holder) do
    handles = :ets.select(@by_holder, [{{{holder, :"$1"}, :_}, [], [:"$1"]}])
    Enum.each(handles, &release/1)
    length(handles)
  end

  defp unknown(%Object{ref: handle, type: type}) do
    if node(handle) == node() do
      %Error{
        reason: :stale_handle,
        message: "the #{type} object is gone: released, its holder exited, or its worker exited",
        details: %{node: node()}
      }
    else
      %Error{
        reason: :handle_conflict,
        message:
          "the call's objects live on different nodes (#{inspect(node())}, #{inspect(node(handle))}); " <>
            "a call runs in one worker, so its objects must come from the same one",
        details: %{nodes: [node(), node(handle)]}
      }
    end
  end
end
