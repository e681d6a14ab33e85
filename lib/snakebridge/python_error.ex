defmodule SnakeBridge.PythonError do
  @moduledoc """
  A Python exception raised by the called function (or by importing its module).

    * `type` — the exception class name, `type(exc).__qualname__`, e.g. `"ZeroDivisionError"`;
    * `module` — the module defining that class, e.g. `"builtins"`;
    * `message` — `str(exc)`;
    * `traceback` — the lines of `traceback.format_exception/1`.

      iex> Exception.message(%SnakeBridge.PythonError{type: "ZeroDivisionError", module: "builtins", message: "division by zero"})
      "ZeroDivisionError: division by zero"
  """

  defexception [:type, :module, :message, traceback: []]

  @type t :: %__MODULE__{
          type: String.t(),
          module: String.t(),
          message: String.t(),
          traceback: [String.t()]
        }

  @impl true
  def message(%__MODULE__{type: type, message: message})
      when is_binary(message) and message != "",
      do: "#{type}: #{message}"

  def message(%__MODULE__{type: type}), do: to_string(type)
end
