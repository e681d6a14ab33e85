defmodule SnakeBridge.TestHelpers do
  @moduledoc false
  # Shared by the ExUnit suites: every test module starts its own named pool
  # with test/support/python on the Python path.

  import ExUnit.Assertions

  @python_dir Path.expand("python", __DIR__)

  @doc "The directory holding the Python helper modules (sbhelpers, sbpkg)."
  def python_dir, do: @python_dir

  @doc "Options for a test pool named `name`."
  def pool_opts(name, opts \\ []) do
    Keyword.merge([name: name, size: 2, python_path: [@python_dir]], opts)
  end

  @doc "A new directory under the system's temporary directory, removed when the test exits."
  def temporary_dir!(prefix) do
    dir = Path.join(System.tmp_dir!(), "#{prefix}_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end

  @doc "Polls `fun` until it returns a truthy value, or fails after `timeout` ms."
  def wait_until(fun, timeout \\ 5_000, interval \\ 20) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_wait_until(fun, deadline, interval)
  end

  defp do_wait_until(fun, deadline, interval) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      _ ->
        if System.monotonic_time(:millisecond) > deadline do
          flunk("condition not met in time")
        else
          Process.sleep(interval)
          do_wait_until(fun, deadline, interval)
        end
    end
  end

  @doc "Waits until every worker of `pool` has an OS pid; returns the stats."
  def wait_for_workers(pool, size) do
    wait_until(fn ->
      stats = SnakeBridge.stats(pool)
      pids = for %{os_pid: pid} <- stats.workers, is_integer(pid), do: pid
      length(pids) == size and stats
    end)
  end

  @doc "Whether an OS process exists (zombies count as gone)."
  def os_process_alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} ->
        # The state follows the last ")", which closes the command name.
        state = stat |> String.split(")") |> List.last() |> String.trim_leading()
        not String.starts_with?(state, "Z")

      {:error, _} ->
        false
    end
  end

  @doc """
  Streams 1,000 items of `sbobjects.numbers` from `pool` with `window` and
  checks, every 50 items, how far the generator ran ahead of the consumer:
  ahead at times, and never by more than the window. `pool` needs a single
  worker, which answers `produced` while the stream waits for credit.
  """
  def assert_backpressure(pool, window) do
    produced = fn -> SnakeBridge.call!("sbobjects", "produced", [], pool: pool) end

    ahead =
      SnakeBridge.stream("sbobjects", "numbers", [1_000], pool: pool, window: window)
      |> Stream.with_index(1)
      |> Enum.map(fn {_item, consumed} ->
        if rem(consumed, 50) == 1 do
          # Give the worker time to run ahead, if it could.
          Process.sleep(20)
          produced.() - consumed
        end
      end)
      |> Enum.reject(&is_nil/1)

    assert length(ahead) == 20
    assert Enum.all?(ahead, &(&1 <= window)), inspect(ahead)
    assert Enum.any?(ahead, &(&1 > 0)), "the generator should run ahead: #{inspect(ahead)}"
  end

  @doc "Takes every message in the mailbox, oldest first."
  def flush_mailbox(acc \\ []) do
    receive do
      message -> flush_mailbox([message | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
