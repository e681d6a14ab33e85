defmodule SnakeBridge.ProcessTest do
  @moduledoc """
  The worker as an OS process: its exit is seen even when something it
  forked keeps its socket open, what it forks dies with it, and it inherits
  nothing of the BEAM's.
  """

  use ExUnit.Case, async: false

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Native, Pool}

  @moduletag timeout: 120_000

  defp start_pool!(opts) do
    name = :"process_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, pool_opts(name, opts)})
    wait_until(fn -> ready_pid(name) end, 10_000)
    name
  end

  defp ready_pid(pool) do
    case SnakeBridge.stats(pool).workers do
      [%{state: :ready, os_pid: pid}] when is_integer(pid) -> pid
      _ -> nil
    end
  end

  # Gone, or a zombie waiting for whoever adopted it.
  defp gone?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> stat |> String.split(")") |> List.last() |> String.split() |> hd() == "Z"
      {:error, _} -> true
    end
  end

  defp kill!(os_pid, signal) do
    {_, 0} = System.cmd("kill", ["-#{signal}", "#{os_pid}"], stderr_to_stdout: true)
  end

  test "a killed worker fails its calls at once though a forked child holds its socket" do
    pool = start_pool!(size: 1)
    worker = ready_pid(pool)
    {:ok, child} = SnakeBridge.call("sbfaults", "fork_sleeper", [60], pool: pool)

    {:ok, ref} = Native.call_async("time", "sleep", [30], pool: pool)
    Process.sleep(100)
    kill!(worker, "KILL")

    # Long before the child's minute is up.
    assert_receive {:snakebridge, ^ref, {:error, %Error{reason: :worker_exited} = error}}, 20_000
    assert error.details.signal == 9
    assert wait_until(fn -> gone?(child) end, 10_000)

    replacement = wait_until(fn -> ready_pid(pool) end, 10_000)
    assert replacement != worker
    assert [%{restarts: 1}] = SnakeBridge.stats(pool).workers
    assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)
  end

  test "a pool whose worker forked a child stops in bounded time, and the child with it" do
    pool = start_pool!(size: 1)
    {:ok, child} = SnakeBridge.call("sbfaults", "fork_sleeper", [60], pool: pool)

    {micros, :ok} = :timer.tc(fn -> stop_supervised({Pool, pool}) end)
    # A hang check: the child would hold on for a minute.
    assert micros < 30_000_000
    assert wait_until(fn -> gone?(child) end, 10_000)
  end

  test "a child that leaves the process group with setsid survives its worker" do
    pool = start_pool!(size: 1)
    worker = ready_pid(pool)

    {:ok, child} =
      SnakeBridge.call("sbfaults", "fork_sleeper", [60], pool: pool, kwargs: [new_session: true])

    kill!(worker, "KILL")
    wait_until(fn -> (pid = ready_pid(pool)) && pid != worker end, 10_000)
    refute gone?(child)
    kill!(child, "KILL")
  end

  test "the worker holds none of the BEAM's descriptors" do
    path = Path.join(System.tmp_dir!(), "snakebridge_fd_#{System.unique_integer([:positive])}")
    File.write!(path, "secret")
    {:ok, file} = File.open(path, [:read])
    {:ok, listen} = :gen_tcp.listen(0, ip: {127, 0, 0, 1}, reuseaddr: false)
    {:ok, port_number} = :inet.port(listen)
    port = Port.open({:spawn, "cat"}, [:binary])

    pool = start_pool!(size: 1)
    {:ok, targets} = SnakeBridge.call("sbfaults", "fd_targets", [], pool: pool)

    beam =
      for fd <- File.ls!("/proc/self/fd"),
          {:ok, target} <- [File.read_link("/proc/self/fd/#{fd}")],
          into: MapSet.new(),
          do: target

    # 0-2 are the worker's own stdin and output pipes; 3 its socket.
    leaked = for {fd, target} <- targets, fd > 2, MapSet.member?(beam, target), do: {fd, target}
    assert leaked == []
    refute Enum.any?(targets, fn {_fd, target} -> target == path end)

    # With the listen socket closed in the BEAM, its port is free again.
    :ok = :gen_tcp.close(listen)
    assert {:ok, again} = :gen_tcp.listen(port_number, ip: {127, 0, 0, 1})
    :gen_tcp.close(again)
    File.close(file)
    Port.close(port)
    File.rm(path)
  end

  test "workers killed from outside while they start do not make Python unavailable" do
    pool = start_pool!(size: 1)
    first = ready_pid(pool)
    kill!(first, "KILL")

    killed =
      Enum.reduce_while(Stream.repeatedly(fn -> :tick end), MapSet.new([first]), fn _, killed ->
        assert [%{state: state, os_pid: pid}] = SnakeBridge.stats(pool).workers
        refute state == :unavailable

        cond do
          MapSet.size(killed) >= 6 ->
            {:halt, killed}

          is_integer(pid) and not MapSet.member?(killed, pid) ->
            System.cmd("kill", ["-KILL", "#{pid}"], stderr_to_stdout: true)
            {:cont, MapSet.put(killed, pid)}

          true ->
            {:cont, killed}
        end
      end)

    assert MapSet.size(killed) >= 6
    assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool, timeout: 20_000)
  end
end
