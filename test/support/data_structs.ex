defmodule SnakeBridge.Test.Money do
  @moduledoc false
  # A user struct sent with a SnakeBridge.Encoder implementation: it becomes
  # an sbdata.Money built in the worker.
  defstruct [:amount, :currency]
end

defimpl SnakeBridge.Encoder, for: SnakeBridge.Test.Money do
  def to_python(%{amount: amount, currency: currency}) do
    SnakeBridge.Construct.new("sbdata", "Money", [amount], currency: currency)
  end
end

defmodule SnakeBridge.Test.Tagged do
  @moduledoc false
  # A user struct whose implementation returns another struct with an
  # implementation, to show the result is converted in turn.
  defstruct [:inner]
end

defimpl SnakeBridge.Encoder, for: SnakeBridge.Test.Tagged do
  def to_python(%{inner: inner}), do: %{"tag" => "tagged", "inner" => inner}
end

defmodule SnakeBridge.Test.Point do
  @moduledoc false
  # What sbdata's Point comes back as (a struct made by a Python encoder).
  defstruct [:x, :y]
end
