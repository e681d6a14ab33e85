defmodule SnakeBridge.Tensor do
  @moduledoc """
  A dense numeric array crossing between Elixir and Python by value.

  `data` holds the elements in C (row-major) order, little-endian; `type` is
  an Nx type tuple and `shape` a tuple of dimensions, so with Nx:

      Nx.from_binary(t.data, t.type) |> Nx.reshape(t.shape)

  which is what `to_nx/1` does. A numpy `ndarray` of a numeric dtype, an
  `array.array`, a typed `memoryview` (any object with the buffer protocol
  or `__array_interface__`) comes back from Python as a tensor. A tensor
  (or an `Nx.Tensor`) sent to Python arrives as a numpy array when numpy can
  be imported in the worker, else as a `memoryview` of that format and
  shape.

  Types: `{:u, 8 | 16 | 32 | 64}`, `{:s, 8 | 16 | 32 | 64}`,
  `{:f, 16 | 32 | 64}`, `{:bf, 16}`, `{:c, 64 | 128}`. numpy booleans come
  back as `{:u, 8}`.
  """

  @enforce_keys [:data, :type, :shape]
  defstruct [:data, :type, :shape]

  @typedoc "An Nx type tuple."
  @type type ::
          {:u, 8 | 16 | 32 | 64}
          | {:s, 8 | 16 | 32 | 64}
          | {:f, 16 | 32 | 64}
          | {:bf, 16}
          | {:c, 64 | 128}

  @type t :: %__MODULE__{data: binary(), type: type(), shape: tuple()}

  @types [
    {:u, 8},
    {:u, 16},
    {:u, 32},
    {:u, 64},
    {:s, 8},
    {:s, 16},
    {:s, 32},
    {:s, 64},
    {:f, 16},
    {:f, 32},
    {:f, 64},
    {:bf, 16},
    {:c, 64},
    {:c, 128}
  ]

  @doc """
  Makes a tensor, checking that `data` holds exactly the elements `shape`
  says.

      iex> SnakeBridge.Tensor.new(<<1.0::float-64-little, 2.0::float-64-little>>, {:f, 64}, {2})
      %SnakeBridge.Tensor{data: <<0, 0, 0, 0, 0, 0, 240, 63, 0, 0, 0, 0, 0, 0, 0, 64>>, type: {:f, 64}, shape: {2}}

  Raises `ArgumentError` naming the argument that is wrong.
  """
  @spec new(binary(), type(), tuple()) :: t()
  def new(data, type, shape) do
    unless is_binary(data),
      do: raise(ArgumentError, "expected data to be a binary, got: #{inspect(data)}")

    unless type in @types do
      raise ArgumentError, "expected type to be one of #{inspect(@types)}, got: #{inspect(type)}"
    end

    unless is_tuple(shape) and Enum.all?(Tuple.to_list(shape), &(is_integer(&1) and &1 >= 0)) do
      raise ArgumentError,
            "expected shape to be a tuple of non-negative integers, got: #{inspect(shape)}"
    end

    {_, bits} = type
    expected = shape |> Tuple.to_list() |> Enum.reduce(div(bits, 8), &(&1 * &2))

    if byte_size(data) != expected do
      raise ArgumentError,
            "expected data to hold #{expected} bytes for type #{inspect(type)} and shape " <>
              "#{inspect(shape)}, got: #{byte_size(data)}"
    end

    %__MODULE__{data: data, type: type, shape: shape}
  end

  @doc """
  The `Nx.Tensor` of `tensor`. Needs Nx (not a dependency of SnakeBridge):
  raises `RuntimeError` when it is not loaded.
  """
  @spec to_nx(t()) :: struct()
  def to_nx(%__MODULE__{data: data, type: type, shape: shape}) do
    nx = nx!()
    data |> nx.from_binary(type) |> nx.reshape(shape)
  end

  def to_nx(other) do
    raise ArgumentError, "expected a SnakeBridge.Tensor, got: #{inspect(other)}"
  end

  @doc """
  The tensor of an `Nx.Tensor` (its data copied to a binary with
  `Nx.to_binary/1`). Nx tensors in a call's arguments are converted this
  way without being asked.
  """
  @spec from_nx(struct()) :: t()
  def from_nx(%{__struct__: Nx.Tensor} = tensor) do
    nx = nx!()
    new(nx.to_binary(tensor), nx.type(tensor), nx.shape(tensor))
  end

  def from_nx(other) do
    raise ArgumentError, "expected an Nx.Tensor, got: #{inspect(other)}"
  end

  defp nx! do
    if Code.ensure_loaded?(Nx) do
      Nx
    else
      raise "Nx is not available: add {:nx, ...} to your dependencies to use Nx tensors"
    end
  end
end
