defmodule SnakeBridge.Livemd do
  @moduledoc """
  Runs a Livebook notebook's Elixir cells in order, as Livebook does, and
  compares what they give with the outputs saved in the notebook.

  A cell is an ```` ```elixir ```` block. The blocks right after it that are
  marked `<!-- livebook:{"output":true} -->` are its saved outputs, in
  Livebook's format: what the cell printed (if anything), then its result,
  as `inspect/2` shows it.

  Run from a shell (the test suite does this, in a fresh `elixir`):

      elixir test/notebook/livemd.exs run notebooks/tour.livemd results.bin [CELLS]
      elixir test/notebook/livemd.exs record notebooks/tour.livemd

  `run` writes each cell's outputs to the results file (an Erlang term),
  running only the first `CELLS` cells when given; `record` rewrites the
  notebook with the outputs the cells give now, which is how a new cell
  gets its saved outputs (check them before committing).

  Cells run in one process, each with the bindings, aliases and imports the
  ones before it left, the notebook's path as the file (so `__DIR__` is its
  directory) and the process's group leader set to a buffer that catches
  what the cell prints. A cell that raises stops the run.

  After the cell that runs `Mix.install`, the run waits (up to two
  minutes) until the default pool's workers have started, so that on a
  loaded machine the next cell's first call does not spend its timeout
  waiting for Python to start: Livebook users wait for the setup cell in
  the same way.
  """

  @output_marker ~s(<!-- livebook:{"output":true} -->)

  @typedoc "A cell: its source, its first line in the file, and its saved outputs."
  @type cell :: %{source: String.t(), line: pos_integer(), outputs: [String.t()]}

  @doc "The notebook's Elixir cells, in order."
  @spec cells(String.t()) :: [cell()]
  def cells(text) do
    text |> blocks() |> attach_outputs([])
  end

  @doc "Runs `cells` in order in this process; returns each cell's outputs."
  @spec run([cell()], String.t()) :: [{:ok, [String.t()]} | {:error, String.t()}]
  def run(cells, file) do
    env = Code.env_for_eval(file: file)

    {results, _} =
      Enum.map_reduce(cells, {[], env, true}, fn
        _cell, {_binding, _env, false} = state ->
          {{:error, "not run: an earlier cell failed"}, state}

        cell, {binding, env, true} ->
          case evaluate(cell, binding, %{env | line: cell.line}) do
            {:ok, outputs, binding, env} ->
              if String.starts_with?(cell.source, "Mix.install"), do: wait_for_workers()
              {{:ok, outputs}, {binding, env, true}}

            {:error, message} ->
              {{:error, message}, {binding, env, false}}
          end
      end)

    results
  end

  @doc "Outputs as Livebook saves them: the printed text (if any), then the result."
  @spec outputs(String.t(), term()) :: [String.t()]
  def outputs(printed, value) do
    result = inspect(value, pretty: true, width: 80)
    if String.trim(printed) == "", do: [result], else: [String.trim_trailing(printed), result]
  end

  @doc "The notebook `text` with each cell's saved outputs replaced by `outputs`."
  @spec record(String.t(), [[String.t()]]) :: String.t()
  def record(text, outputs) do
    {pieces, []} =
      text
      |> blocks()
      |> Enum.reduce({[], outputs}, fn
        {:code, "elixir", source, _line}, {acc, [cell_outputs | rest]} ->
          saved = Enum.map(cell_outputs, &"#{@output_marker}\n\n```\n#{&1}\n```\n\n")
          {[saved, "```elixir\n#{source}```\n\n" | acc], rest}

        {:output, _, _, _}, state ->
          state

        {:code, lang, source, _line}, {acc, rest} ->
          {["```#{lang}\n#{source}```\n\n" | acc], rest}

        {:text, text}, {acc, rest} ->
          {[text | acc], rest}
      end)

    pieces |> Enum.reverse() |> IO.iodata_to_binary() |> String.trim_trailing() |> Kernel.<>("\n")
  end

  defp evaluate(cell, binding, env) do
    {:ok, buffer} = StringIO.open("")
    leader = Process.group_leader()
    Process.group_leader(self(), buffer)

    try do
      quoted = Code.string_to_quoted!(cell.source, file: env.file, line: cell.line)
      {value, binding, env} = Code.eval_quoted_with_env(quoted, binding, env)
      {:ok, value, binding, env}
    rescue
      error -> {:error, Exception.format(:error, error, __STACKTRACE__)}
    catch
      kind, reason -> {:error, Exception.format(kind, reason, __STACKTRACE__)}
    after
      Process.group_leader(self(), leader)
    end
    |> case do
      {:ok, value, binding, env} ->
        {_, printed} = StringIO.contents(buffer)
        StringIO.close(buffer)
        {:ok, outputs(printed, value), binding, env}

      {:error, message} ->
        {_, printed} = StringIO.contents(buffer)
        StringIO.close(buffer)
        {:error, printed <> message}
    end
  end

  defp wait_for_workers(tries \\ 1_200) do
    # Called through apply/3: SnakeBridge is only there once installed.
    ready? =
      try do
        Enum.all?(apply(SnakeBridge, :stats, [:default]).workers, &(&1.state == :ready))
      rescue
        # Not installed, or no default pool: nothing to wait for.
        _ -> true
      end

    if not ready? and tries > 0 do
      Process.sleep(100)
      wait_for_workers(tries - 1)
    end
  end

  # The file as text between fenced blocks; an output block is one whose
  # fence follows the output marker.
  defp blocks(text) do
    lines = String.split(text, "\n")
    split(Enum.with_index(lines, 1), [], [])
  end

  defp split([], text, acc), do: Enum.reverse(flush(text, acc))

  defp split([{"```" <> lang, line} | rest], text, acc) do
    {body, rest} = Enum.split_while(rest, fn {l, _} -> l != "```" end)
    rest = Enum.drop(rest, 1)
    source = Enum.map_join(body, fn {l, _} -> l <> "\n" end)

    output? =
      text
      |> Enum.reverse()
      |> Enum.join("\n")
      |> String.trim()
      |> String.ends_with?(@output_marker)

    {acc, block} =
      if output? do
        {flush_output_marker(text, acc), {:output, lang, source, line + 1}}
      else
        {flush(text, acc), {:code, String.trim(lang), source, line + 1}}
      end

    split(skip_blank(rest), [], [block | acc])
  end

  defp split([{l, _} | rest], text, acc), do: split(rest, [l | text], acc)

  defp skip_blank([{"", _} | rest]), do: skip_blank(rest)
  defp skip_blank(rest), do: rest

  defp flush([], acc), do: acc

  defp flush(text, acc),
    do: [
      {:text, (text |> Enum.reverse() |> Enum.join("\n") |> String.trim_trailing()) <> "\n\n"} | acc
    ]

  # Drops the marker (and the text before it, which is only blank lines
  # after a cell) from the text in front of an output block.
  defp flush_output_marker(text, acc) do
    before =
      text
      |> Enum.reverse()
      |> Enum.join("\n")
      |> String.trim()
      |> String.trim_trailing(@output_marker)
      |> String.trim()

    if before == "", do: acc, else: [{:text, before <> "\n\n"} | acc]
  end

  defp attach_outputs([], cells), do: Enum.reverse(cells)

  defp attach_outputs([{:code, "elixir", source, line} | rest], cells) do
    {outputs, rest} = Enum.split_while(rest, &match?({:output, _, _, _}, &1))
    saved = Enum.map(outputs, fn {:output, _, body, _} -> String.trim_trailing(body, "\n") end)
    attach_outputs(rest, [%{source: source, line: line, outputs: saved} | cells])
  end

  defp attach_outputs([_ | rest], cells), do: attach_outputs(rest, cells)

  @doc false
  def main(["run", notebook, results | count]) do
    path = Path.expand(notebook)
    cells = cells(File.read!(path))
    cells = if count == [], do: cells, else: Enum.take(cells, String.to_integer(hd(count)))
    File.write!(results, :erlang.term_to_binary(run(cells, path)))
  end

  def main(["record", notebook]) do
    path = Path.expand(notebook)
    text = File.read!(path)
    cells = cells(text)
    # The first cell (Mix.install) prints what it compiles only the first
    # time: run it once before the run whose outputs are saved.
    run(Enum.take(cells, 1), path)

    outputs =
      for result <- run(cells, path) do
        case result do
          {:ok, outputs} -> outputs
          {:error, message} -> raise "a cell failed:\n" <> message
        end
      end

    File.write!(path, record(text, outputs))
  end

  def main(_args) do
    IO.puts(:stderr, "usage: elixir livemd.exs run NOTEBOOK RESULTS [CELLS] | record NOTEBOOK")
    System.halt(2)
  end
end

# Run as a script, not when the test suite requires this file.
if System.argv() != [] and Process.whereis(ExUnit.Server) == nil do
  SnakeBridge.Livemd.main(System.argv())
end
