defmodule SnakeBridgeBench.Cpu do
  @moduledoc """
  CPU time of OS processes from `/proc/<pid>/task/*/schedstat`: the first field
  is the nanoseconds a thread has run. That is much finer than the utime and
  stime of `/proc/<pid>/stat`, which count clock ticks (10 ms at
  `CLK_TCK` = 100) and would round a one-second chunk to nothing useful. Every
  thread is summed, so the BEAM's schedulers, dirty schedulers, poll thread
  and NIF threads all count.
  """

  @doc """
  Nanoseconds of CPU run by all threads of the OS processes `pids` (`:self` is
  the BEAM), or `nil` when one of them is gone (a worker restarted), so that no
  chunk is reported with a process missing.
  """
  @spec run_time_ns([pos_integer() | :self]) :: non_neg_integer() | nil
  def run_time_ns(pids) do
    Enum.reduce_while(pids, 0, fn pid, acc ->
      case process_ns(pid) do
        nil -> {:halt, nil}
        ns -> {:cont, acc + ns}
      end
    end)
  end

  defp process_ns(pid) do
    dir = "/proc/#{pid}/task"

    case File.ls(dir) do
      {:ok, tids} -> Enum.reduce(tids, 0, &(&2 + thread_ns(Path.join([dir, &1, "schedstat"]))))
      {:error, _} -> nil
    end
  end

  # A thread that exits between File.ls and this read ran too briefly to matter.
  defp thread_ns(path) do
    case File.read(path) do
      {:ok, line} -> line |> String.split(" ", parts: 2) |> hd() |> String.to_integer()
      {:error, _} -> 0
    end
  end

  @doc "Whether this kernel exposes schedstat (CONFIG_SCHED_INFO)."
  @spec available?() :: boolean()
  def available?, do: File.exists?("/proc/self/schedstat")
end
