defmodule SnakeBridge.Error do
  @moduledoc """
  A call that failed for a reason other than a Python exception.

  `reason` is one of the atoms of `t:SnakeBridge.Types.reason/0` and is what to
  match on; `message` is for humans and names what went wrong and where
  (for `:unsupported_type`, the position inside the argument, such as
  `"args[0][2]"`); `details` may carry extra data such as an exit status.

      case SnakeBridge.call("time", "sleep", [10], timeout: 100) do
        {:error, %SnakeBridge.Error{reason: :timeout}} -> :too_slow
        other -> other
      end
  """

  defexception [:reason, :message, details: %{}]

  @type t :: %__MODULE__{
          reason: SnakeBridge.Types.reason(),
          message: String.t() | nil,
          details: map()
        }

  @impl true
  def message(%__MODULE__{message: message}) when is_binary(message) and message != "",
    do: message

  def message(%__MODULE__{reason: reason}), do: "SnakeBridge call failed: #{inspect(reason)}"
end
