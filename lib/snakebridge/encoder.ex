defprotocol SnakeBridge.Encoder do
  @moduledoc """
  Says which Python value a struct of yours becomes when it is sent.

  `to_python/1` returns any value that can be sent: a map, a tuple, a
  string... or a `SnakeBridge.Construct` to build an object in the worker:

      defmodule MyApp.Money do
        defstruct [:amount, :currency]
      end

      defimpl SnakeBridge.Encoder, for: MyApp.Money do
        # my_app/money.py defines `class Money` taking (amount, currency).
        def to_python(%MyApp.Money{amount: amount, currency: currency}) do
          SnakeBridge.Construct.new("my_app.money", "Money", [amount, currency])
        end
      end

      SnakeBridge.call!("my_app.money", "total", [[%MyApp.Money{amount: 5, currency: "EUR"}]])

  The result is converted in turn, so it may hold other structs that have
  an implementation. Structs SnakeBridge knows (`Date`, `Decimal`,
  `SnakeBridge.Tensor`...) do not consult this protocol; a struct with no
  implementation gives `:unsupported_type`.
  """

  @doc "The value to send instead of `struct`."
  @spec to_python(struct()) :: term()
  def to_python(struct)
end
