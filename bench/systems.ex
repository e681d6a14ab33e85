defmodule SnakeBridgeBench.Systems do
  @moduledoc """
  The two systems under test, each as `%{name: String.t(), call: fun, os_pids:
  fun}` where `call.(module, function, args, timeout)` returns `{:ok, value}` or
  `{:error, reason}` and never raises or exits (so a broken system shows up as
  errors in the report, not as a crashed benchmark), and `os_pids.()` lists the
  system's Python processes, whose CPU time the report charges to it. SnakeBridge also has
  `stream.(module, function, args)`, a lazy stream of a Python iterator's
  items; the baseline has no streams and makes one call per item.
  """

  alias SnakeBridgeBench.PortPool

  @type system :: %{
          required(:name) => String.t(),
          required(:call) =>
            (String.t(), String.t(), list(), timeout() -> {:ok, term()} | {:error, term()}),
          required(:os_pids) => (() -> [pos_integer()]),
          optional(:stream) => (String.t(), String.t(), list() -> Enumerable.t())
        }

  @doc """
  Starts the baseline: `size` port workers running bench/baseline_worker.py.
  `:name` (default `"baseline"`) names the system and its pool, so a second,
  independent baseline can run as a control.
  """
  @spec baseline(keyword()) :: {:ok, system()}
  def baseline(opts) do
    name = Keyword.get(opts, :name, "baseline")
    pool = String.to_atom(name)

    {:ok, _pids} =
      PortPool.start_link(
        name: pool,
        size: Keyword.fetch!(opts, :size),
        python: Keyword.fetch!(opts, :python),
        script: Keyword.fetch!(opts, :script),
        python_path: Keyword.fetch!(opts, :python_path)
      )

    call = fn module, function, args, timeout ->
      try do
        PortPool.call(pool, module, function, args, timeout)
      rescue
        e -> {:error, e}
      catch
        kind, reason -> {:error, {kind, reason}}
      end
    end

    {:ok, %{name: name, call: call, os_pids: fn -> PortPool.os_pids(pool) end}}
  end

  @doc """
  Starts a `SnakeBridge.Pool` named `:bench`, or returns `{:error, why}` when
  SnakeBridge is not loadable or its pool does not start.
  """
  @spec snakebridge(keyword()) :: {:ok, system()} | {:error, String.t()}
  def snakebridge(opts) do
    if Code.ensure_loaded?(SnakeBridge) and Code.ensure_loaded?(SnakeBridge.Pool) do
      start_pool(opts)
    else
      {:error,
       "the SnakeBridge modules are not loadable (run through `mix run` once the project compiles)"}
    end
  end

  defp start_pool(opts) do
    pool_opts = [
      name: :bench,
      size: Keyword.fetch!(opts, :size),
      python: Keyword.fetch!(opts, :python),
      python_path: Keyword.fetch!(opts, :python_path)
    ]

    # A failing init of a linked process would kill this script on OTP 25: trap
    # exits while starting, and stay linked afterwards so a dying pool is loud.
    trap = Process.flag(:trap_exit, true)

    result =
      try do
        apply(SnakeBridge.Pool, :start_link, [pool_opts])
      rescue
        e -> {:error, Exception.message(e)}
      catch
        kind, reason -> {:error, "#{kind}: #{inspect(reason)}"}
      end

    flushed = flush_exits([])
    Process.flag(:trap_exit, trap)

    case result do
      {:ok, _pid} when flushed == [] ->
        # The module goes through a variable so this file also compiles (without
        # warnings) when SnakeBridge is absent and only the baseline runs.
        snakebridge = SnakeBridge

        call = fn module, function, args, timeout ->
          call_snakebridge(snakebridge, module, function, args, timeout)
        end

        stream = fn module, function, args ->
          snakebridge.stream(module, function, args, pool: :bench, timeout: 30_000)
        end

        os_pids = fn ->
          for %{os_pid: os_pid} <- snakebridge.stats(:bench).workers, is_integer(os_pid), do: os_pid
        end

        {:ok, %{name: "snakebridge", call: call, stream: stream, os_pids: os_pids}}

      {:ok, _pid} ->
        {:error, "SnakeBridge.Pool exited right after starting: #{inspect(flushed)}"}

      other ->
        {:error, "SnakeBridge.Pool.start_link failed: #{inspect(other)}"}
    end
  end

  defp call_snakebridge(snakebridge, module, function, args, timeout) do
    snakebridge.call(module, function, args, pool: :bench, timeout: timeout)
  rescue
    e -> {:error, e}
  catch
    kind, reason -> {:error, {kind, reason}}
  end

  defp flush_exits(acc) do
    receive do
      {:EXIT, _pid, :normal} -> flush_exits(acc)
      {:EXIT, pid, reason} -> flush_exits([{pid, reason} | acc])
    after
      0 -> acc
    end
  end

  @doc """
  The remote scenario's systems: a peer node on loopback runs a clustered
  pool `:bench_remote` of `size` workers, and this node calls it three ways:
  `"erpc naive"` (`:erpc.call(node, SnakeBridge, :call, args)` per call),
  `"clustered"` (`SnakeBridge.call(..., pool: :bench_remote)` from this node,
  which has no such pool) and `"dist rtt"` (`:erpc.call(node, :erlang, :+,
  [1, 2])`, no Python: the distribution round trip alone, whatever the
  arguments); and, for reference, `"local"`: the same calls to a pool
  `:bench_local` of this node. Starts epmd and distribution. Returns the systems and a
  function that stops the peer.
  """
  @spec remote(keyword()) :: {[system()], (() -> :ok)}
  def remote(opts) do
    System.cmd("epmd", ["-daemon"])

    unless Node.alive?() do
      {:ok, _} = :net_kernel.start([:"bench_#{System.os_time()}@127.0.0.1", :longnames])
    end

    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    {:ok, peer, node} =
      :peer.start(%{
        name: :"bench_peer_#{System.unique_integer([:positive])}",
        host: ~c"127.0.0.1",
        longnames: true,
        connection: :standard_io,
        args: paths ++ [~c"-setcookie", ~c"#{Node.get_cookie()}"]
      })

    :ok = :peer.call(peer, Application, :put_env, [:snakebridge, :default_pool, false])
    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:snakebridge])
    :ok = :peer.call(peer, Logger, :configure, [[level: :info]])
    true = Node.connect(node)

    pool =
      {SnakeBridge.Pool,
       name: :bench_remote,
       size: Keyword.fetch!(opts, :size),
       python: Keyword.fetch!(opts, :python),
       python_path: Keyword.fetch!(opts, :python_path),
       cluster: true}

    {:ok, _} = :peer.call(peer, Supervisor, :start_child, [SnakeBridge.Supervisor, pool])
    {SnakeBridge.Pool, local_opts} = pool
    local_opts = Keyword.merge(local_opts, name: :bench_local, cluster: false)
    {:ok, _} = Supervisor.start_child(SnakeBridge.Supervisor, {SnakeBridge.Pool, local_opts})
    wait_for_remote(node, 500)
    snakebridge = SnakeBridge

    os_pids = fn ->
      for %{os_pid: os_pid} <- :peer.call(peer, snakebridge, :stats, [:bench_remote]).workers,
          is_integer(os_pid),
          do: os_pid
    end

    naive = fn module, function, args, timeout ->
      guard(fn ->
        :erpc.call(node, snakebridge, :call, [
          module,
          function,
          args,
          [pool: :bench_remote, timeout: timeout]
        ])
      end)
    end

    clustered = fn module, function, args, timeout ->
      guard(fn ->
        snakebridge.call(module, function, args, pool: :bench_remote, timeout: timeout)
      end)
    end

    rtt = fn _module, _function, _args, _timeout ->
      guard(fn -> {:ok, :erpc.call(node, :erlang, :+, [1, 2])} end)
    end

    local = fn module, function, args, timeout ->
      guard(fn -> snakebridge.call(module, function, args, pool: :bench_local, timeout: timeout) end)
    end

    systems = [
      %{name: "local", call: local, os_pids: fn -> [] end},
      %{name: "erpc naive", call: naive, os_pids: os_pids},
      %{name: "clustered", call: clustered, os_pids: os_pids},
      %{name: "dist rtt", call: rtt, os_pids: fn -> [] end}
    ]

    {systems, fn -> :peer.stop(peer) end}
  end

  defp wait_for_remote(node, tries) do
    cond do
      Map.has_key?(SnakeBridge.Cluster.stats(:bench_remote), node) -> :ok
      tries == 0 -> raise "the peer's pool :bench_remote did not join the cluster"
      true -> Process.sleep(20) && wait_for_remote(node, tries - 1)
    end
  end

  defp guard(fun) do
    fun.()
  rescue
    e -> {:error, e}
  catch
    kind, reason -> {:error, {kind, reason}}
  end
end
