defmodule Nx.Tensor do
  @moduledoc false
  # A stand-in for Nx's tensor struct (Nx is not a dependency): the fields
  # SnakeBridge never reads directly, kept only so the struct looks alike.
  defstruct [:data, :type, :shape, names: []]
end

defmodule Nx do
  @moduledoc false
  # A stand-in for the parts of Nx's API SnakeBridge.Tensor uses, with their
  # contracts: from_binary/2 makes a rank-1 tensor of the binary's elements
  # (raising if the binary is not a whole number of them), reshape/2 keeps
  # the element count (raising otherwise), to_binary/1, type/1 and shape/1
  # read a tensor back.

  def from_binary(binary, {_, bits} = type) when is_binary(binary) do
    size = div(bits, 8)

    if rem(byte_size(binary), size) != 0 do
      raise ArgumentError, "binary does not hold a whole number of #{inspect(type)} elements"
    end

    %Nx.Tensor{data: binary, type: type, shape: {div(byte_size(binary), size)}}
  end

  def reshape(%Nx.Tensor{shape: old} = tensor, shape) when is_tuple(shape) do
    if count(old) != count(shape) do
      raise ArgumentError, "cannot reshape #{inspect(old)} to #{inspect(shape)}"
    end

    %{tensor | shape: shape, names: List.duplicate(nil, tuple_size(shape))}
  end

  def to_binary(%Nx.Tensor{data: data}), do: data
  def type(%Nx.Tensor{type: type}), do: type
  def shape(%Nx.Tensor{shape: shape}), do: shape

  defp count(shape), do: shape |> Tuple.to_list() |> Enum.product()
end
