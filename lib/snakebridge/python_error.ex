defmodule SnakeBridge.PythonError do
  @moduledoc """
  A Python exception raised by the called function (or by importing its module).

    * `type` — the exception class name, `type(exc).__qualname__`, e.g. `"ZeroDivisionError"`;
    * `module` — the module defining that class, e.g. `"builtins"`;
    * `message` — `str(exc)`;
    * `traceback` — the lines of `traceback.format_exception/1`, without the
      worker's own frames (its dispatch code, `importlib`'s machinery);
    * `attributes` — the exception's public attributes (names that do not
      start with `_`, methods left out), by name: `args`, `errno` and
      `filename` of an `OSError`, `lineno` of a `SyntaxError`, a user
      exception's own (`e.needed`). A value with an Elixir equivalent comes
      by value (see the type mapping in `SnakeBridge`); any other as its
      `repr()` string.

  `Exception.message/1` gives the type and message, then, when Python code
  raised it, the last 5 frames of the traceback, so `call!/4` and friends
  raise with the place where it happened:

      iex> Exception.message(%SnakeBridge.PythonError{type: "ZeroDivisionError", module: "builtins", message: "division by zero"})
      "ZeroDivisionError: division by zero"
  """

  defexception [:type, :module, :message, traceback: [], attributes: %{}]

  @type t :: %__MODULE__{
          type: String.t(),
          module: String.t(),
          message: String.t(),
          traceback: [String.t()],
          attributes: %{optional(String.t()) => term()}
        }

  # Frames of the traceback that Exception.message/1 shows.
  @frames 5

  @impl true
  def message(%__MODULE__{traceback: traceback} = error) do
    header(error) <> SnakeBridge.PythonError.Traceback.tail(traceback, @frames)
  end

  defp header(%__MODULE__{type: type, message: message})
       when is_binary(message) and message != "",
       do: "#{type}: #{message}"

  defp header(%__MODULE__{type: type}), do: to_string(type)
end
