defmodule SnakeBridge.Prepare do
  # Turns the structs the NIF cannot write into ones it can: Nx tensors
  # into SnakeBridge.Tensor, user structs through SnakeBridge.Encoder. It
  # runs only after the NIF refused a call's arguments as
  # :unsupported_type, so calls without such structs never pay for a walk.
  @moduledoc false

  alias SnakeBridge.{Encoder, Tensor}

  # Structs the NIF writes itself (see native/snakebridge_nif/src/data.rs).
  @native [
    SnakeBridge.Object,
    SnakeBridge.Bytes,
    SnakeBridge.Tensor,
    SnakeBridge.Arrow,
    SnakeBridge.Timedelta,
    Date,
    Time,
    NaiveDateTime,
    DateTime,
    Decimal
  ]

  # As deep as the NIF goes: deeper values fail there with :nesting_too_deep.
  @max_depth 100

  @doc false
  @spec call(list(), keyword() | map()) :: {:ok, list(), keyword() | map()} | :unchanged
  def call(args, kwargs) do
    case {walk(args, 0), walk(kwargs, 0)} do
      {{_, false}, {_, false}} -> :unchanged
      {{args, _}, {kwargs, _}} -> {:ok, args, kwargs}
    end
  end

  defp walk(term, depth) when depth > @max_depth, do: {term, false}

  defp walk(list, depth) when is_list(list), do: walk_list(list, depth, [], false)

  defp walk(tuple, depth) when is_tuple(tuple) do
    {items, changed} = walk_list(Tuple.to_list(tuple), depth, [], false)
    if changed, do: {List.to_tuple(items), true}, else: {tuple, false}
  end

  defp walk(%MapSet{} = set, depth) do
    {items, changed} = walk_list(MapSet.to_list(set), depth, [], false)
    if changed, do: {MapSet.new(items), true}, else: {set, false}
  end

  defp walk(%SnakeBridge.Construct{args: args, kwargs: kwargs} = construct, depth) do
    {args, a} = walk(args, depth + 1)
    {kwargs, k} = walk(kwargs, depth + 1)
    {%{construct | args: args, kwargs: kwargs}, a or k}
  end

  defp walk(%module{} = struct, _depth) when module in @native, do: {struct, false}

  defp walk(%{__struct__: Nx.Tensor} = tensor, _depth), do: {Tensor.from_nx(tensor), true}

  defp walk(%_{} = struct, depth) do
    case Encoder.impl_for(struct) do
      nil -> {struct, false}
      impl -> {struct |> impl.to_python() |> walk(depth + 1) |> elem(0), true}
    end
  end

  defp walk(map, depth) when is_map(map) do
    {pairs, changed} = walk_list(Map.to_list(map), depth, [], false)
    if changed, do: {Map.new(pairs), true}, else: {map, false}
  end

  defp walk(term, _depth), do: {term, false}

  defp walk_list([], _depth, acc, changed), do: {Enum.reverse(acc), changed}

  defp walk_list([head | tail], depth, acc, changed) do
    {head, head_changed} = walk(head, depth + 1)
    walk_list(tail, depth, [head | acc], changed or head_changed)
  end

  # An improper list: the NIF names it.
  defp walk_list(tail, _depth, acc, changed), do: {:lists.reverse(acc, tail), changed}
end
