defmodule SnakeBridge.Construct do
  @moduledoc """
  A value built in the worker: `module.function(*args, **kwargs)` is called
  there when the argument holding it is decoded, and the argument is its
  result.

  This is what a `SnakeBridge.Encoder` implementation usually returns for a
  struct:

      SnakeBridge.Construct.new("fractions", "Fraction", [1, 3])

  `module` and `function` follow the rules of `SnakeBridge.call/4` (dotted
  paths work). An exception raised by the call fails the call that carried
  it, as a `SnakeBridge.PythonError`.
  """

  @enforce_keys [:module, :function]
  defstruct [:module, :function, args: [], kwargs: []]

  @type t :: %__MODULE__{
          module: String.t(),
          function: String.t(),
          args: list(),
          kwargs: keyword() | map()
        }

  @doc "Describes the call `module.function(*args, **kwargs)`, checking the arguments."
  @spec new(SnakeBridge.Types.name(), SnakeBridge.Types.name(), list(), keyword() | map()) :: t()
  def new(module, function, args \\ [], kwargs \\ []) do
    %__MODULE__{
      module: SnakeBridge.Args.name!(module, :module),
      function: SnakeBridge.Args.name!(function, :function),
      args: SnakeBridge.Args.list!(args, :args),
      kwargs: SnakeBridge.Args.kwargs!(kwargs)
    }
  end
end
