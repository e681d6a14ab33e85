defmodule SnakeBridge.Arrow do
  @moduledoc """
  A table as Arrow IPC stream bytes.

  A call made with `as: :arrow` returns its result, a pandas `DataFrame`, a
  pyarrow `Table` or `RecordBatch`, as `%SnakeBridge.Arrow{data: ipc}`, ready
  for Explorer (`Explorer.DataFrame.load_ipc_stream!(arrow.data)`) or any
  Arrow reader.

  Sent to Python, `%SnakeBridge.Arrow{}` arrives as a `pyarrow.Table`, or as
  a pandas `DataFrame` when `to: :pandas`:

      SnakeBridge.Arrow.new(ipc, to: :pandas)

  Both ways need pyarrow in the worker's Python (SnakeBridge itself does
  not); without it the call fails with a Python `ImportError` that says so.
  """

  @enforce_keys [:data]
  defstruct [:data, to: :table]

  @type t :: %__MODULE__{data: binary(), to: :table | :pandas}

  @doc """
  Wraps Arrow IPC stream bytes. Option `:to`: `:table` (default) for a
  `pyarrow.Table` in Python, `:pandas` for a `pandas.DataFrame`.
  """
  @spec new(binary(), to: :table | :pandas) :: t()
  def new(data, opts \\ []) do
    unless is_binary(data),
      do: raise(ArgumentError, "expected data to be a binary, got: #{inspect(data)}")

    opts = SnakeBridge.Args.opts!(opts, to: :table)

    unless opts[:to] in [:table, :pandas] do
      raise ArgumentError, "expected :to to be :table or :pandas, got: #{inspect(opts[:to])}"
    end

    %__MODULE__{data: data, to: opts[:to]}
  end
end
