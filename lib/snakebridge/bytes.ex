defmodule SnakeBridge.Bytes do
  @moduledoc """
  A binary that must reach Python as `bytes`, even when it is valid UTF-8.

  Plain binaries that are valid UTF-8 become `str`. Wrap one with
  `SnakeBridge.bytes/1` to send it as `bytes`; results come back as plain
  binaries.

      iex> SnakeBridge.bytes("abc")
      SnakeBridge.bytes("abc")
  """

  @enforce_keys [:data]
  defstruct [:data]

  @type t :: %__MODULE__{data: binary()}

  defimpl Inspect do
    import Inspect.Algebra

    def inspect(%SnakeBridge.Bytes{data: data}, opts) do
      concat(["SnakeBridge.bytes(", to_doc(data, opts), ")"])
    end
  end
end
