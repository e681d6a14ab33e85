defmodule SnakeBridge.NotebookTest do
  # notebooks/tour.livemd, run as Livebook runs it: its Elixir cells in
  # order, in a fresh `elixir` process whose first cell installs SnakeBridge
  # from this checkout with Mix.install. Each cell's output and result must
  # be the ones saved in the notebook (see test/notebook/livemd.exs, which
  # also records them for a new cell).
  #
  # Mix.install's cache lives in _build/notebook, and cargo builds into
  # the target directory of this checkout's own `mix compile`, so a run
  # after it reuses what is built; the cells themselves always run.
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  @moduletag :notebook
  @moduletag timeout: 900_000

  @root Path.expand("../..", __DIR__)
  @runner Path.join(@root, "test/notebook/livemd.exs")
  @notebook Path.join(@root, "notebooks/tour.livemd")

  Code.require_file(@runner)

  alias SnakeBridge.Livemd

  test "the tour's cells give the outputs saved in it" do
    dir = temporary_dir!("sb_notebook")
    cells = Livemd.cells(File.read!(@notebook))
    assert [%{source: "Mix.install(" <> _} | _] = cells

    # The first run of Mix.install prints what it compiles; Livebook shows
    # that once, and the saved notebook does not.
    run!(dir, 1)

    results = run!(dir, nil)
    assert length(results) == length(cells)

    for {cell, result} <- Enum.zip(cells, results) do
      case result do
        {:ok, outputs} ->
          assert outputs == cell.outputs, """
          cell at notebooks/tour.livemd:#{cell.line} gave other outputs than the saved ones
          #{cell.source}
          saved: #{inspect(cell.outputs)}
          given: #{inspect(outputs)}
          """

        {:error, message} ->
          flunk("cell at notebooks/tour.livemd:#{cell.line} failed:\n#{cell.source}\n#{message}")
      end
    end
  end

  test "the runner reads a notebook's cells and saved outputs, and records them" do
    text = """
    # T

    ```elixir
    x = 1
    ```

    <!-- livebook:{"output":true} -->

    ```
    1
    ```

    Text.

    ```elixir
    IO.puts("hi")
    x + 1
    ```

    ```python
    not a cell
    ```
    """

    assert [
             %{source: "x = 1\n", outputs: ["1"], line: 4},
             %{source: "IO.puts(\"hi\")\nx + 1\n", outputs: []}
           ] = cells = Livemd.cells(text)

    assert [{:ok, ["1"]}, {:ok, ["hi", "2"]}] = results = Livemd.run(cells, "/tmp/t.livemd")
    recorded = Livemd.record(text, Enum.map(results, &elem(&1, 1)))
    assert Livemd.cells(recorded) |> Enum.map(& &1.outputs) == [["1"], ["hi", "2"]]
    assert recorded =~ "```python\nnot a cell\n```"
    assert Livemd.record(recorded, [["1"], ["hi", "2"]]) == recorded
  end

  test "a cell that raises stops the run, with its error" do
    cells = Livemd.cells("```elixir\nraise \"boom\"\n```\n\n```elixir\n:never\n```\n")

    assert [{:error, message}, {:error, "not run: an earlier cell failed"}] =
             Livemd.run(cells, "/tmp/t.livemd")

    assert message =~ "** (RuntimeError) boom"
  end

  defp run!(dir, count) do
    results = Path.join(dir, "results.bin")
    File.rm(results)
    args = [@runner, "run", @notebook, results] ++ if(count, do: [to_string(count)], else: [])

    env = [
      {"MIX_INSTALL_DIR", Path.join(@root, "_build/notebook/mix_install")},
      {"CARGO_TARGET_DIR",
       System.get_env("CARGO_TARGET_DIR") || Path.join(@root, "_build/snakebridge_native/target")},
      {"MIX_ENV", nil}
    ]

    {output, status} =
      System.cmd(System.find_executable("elixir"), args, env: env, stderr_to_stdout: true, cd: dir)

    assert status == 0, "the notebook's runner failed:\n#{output}"
    results |> File.read!() |> :erlang.binary_to_term()
  end
end
