defmodule SnakeBridge.SoakSupport do
  @moduledoc false
  # Helpers shared by the soak scripts.

  @doc "Waits until `n` workers of `pool` are ready."
  def wait_for_workers(pool, n) do
    ready = Enum.count(SnakeBridge.stats(pool).workers, &(&1.state == :ready))

    if ready < n do
      Process.sleep(20)
      wait_for_workers(pool, n)
    end
  end

  @doc """
  The BEAM's and `pool`'s workers' memory, after a garbage collection of
  every process so that two snapshots compare live data, not whatever
  garbage a heap happened to hold at that moment.
  """
  def snapshot(pool) do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)
    Process.sleep(100)

    %{
      beam_rss: beam_rss(),
      erlang_total: :erlang.memory(:total),
      workers: SnakeBridge.stats(pool).workers
    }
  end

  def print_snapshot(label, s) do
    IO.puts(
      "#{label}: BEAM RSS #{mb(s.beam_rss)} (erlang total #{mb(s.erlang_total)}); workers: " <>
        Enum.map_join(s.workers, ", ", &"#{&1.os_pid} #{mb(&1.rss)}")
    )
  end

  @doc "The BEAM's resident set size, in bytes, from /proc/self/status."
  def beam_rss do
    "/proc/self/status"
    |> File.read!()
    |> String.split("\n")
    |> Enum.find_value(fn
      "VmRSS:" <> rest ->
        rest |> String.trim() |> String.trim_trailing(" kB") |> String.to_integer()

      _ ->
        nil
    end)
    |> Kernel.*(1024)
  end

  @doc "An integer from the environment; underscores allowed (`1_000_000`)."
  def env_int(name, default) do
    case System.get_env(name) do
      nil -> default
      "" -> default
      value -> value |> String.replace("_", "") |> String.to_integer()
    end
  end

  def mb(bytes), do: "#{Float.round(bytes / (1024 * 1024), 1)} MB"

  def signed_mb(bytes) do
    case Float.round(bytes / (1024 * 1024), 1) do
      value when value > 0 -> "+#{value} MB"
      value when value < 0 -> "#{value} MB"
      _zero -> "+0.0 MB"
    end
  end
end
