defmodule SnakeBridge.PythonError.Traceback do
  # The end of a Python traceback, for SnakeBridge.PythonError's message.
  #
  # `traceback.format_exception` gives one string per entry: the
  # "Traceback (most recent call last):" line, one string per frame
  # ("  File \"f.py\", line 3, in g\n    code\n"), then the exception's own
  # lines (for a SyntaxError, where in the source it is, then
  # "SyntaxError: ..."). A chained exception's entries come first, so the
  # last "Traceback" line starts the exception that was raised.
  @moduledoc false

  @start "Traceback (most recent call last):\n"

  @doc false
  @spec tail(term(), pos_integer()) :: String.t()
  def tail(lines, frames) when is_list(lines) do
    section =
      case last_index(lines, @start) do
        nil -> lines
        index -> Enum.drop(lines, index + 1)
      end

    {stack, rest} = Enum.split_while(section, &frame?/1)
    # The exception's own line (the message's header already says it) and
    # its notes go; the lines that locate a SyntaxError stay.
    context = rest |> Enum.take_while(&String.starts_with?(&1, " ")) |> Enum.join()
    shown = Enum.take(stack, -frames)
    skipped = length(stack) - length(shown)

    text =
      cond do
        stack == [] -> context
        skipped > 0 -> @start <> "  ... #{skipped} earlier frames\n" <> Enum.join(shown) <> context
        true -> @start <> Enum.join(shown) <> context
      end

    if text == "", do: "", else: "\n\n" <> String.trim_trailing(text)
  end

  def tail(_lines, _frames), do: ""

  defp frame?(line) when is_binary(line) do
    Regex.match?(~r/^  File ".*", line \d+, in /, line) or
      String.starts_with?(line, "  [Previous line repeated")
  end

  defp frame?(_line), do: false

  defp last_index(lines, line) do
    lines
    |> Enum.with_index()
    |> Enum.reduce(nil, fn
      {^line, index}, _ -> index
      _, found -> found
    end)
  end
end
