defmodule SnakeBridgeBench.PortWorker do
  @moduledoc """
  Baseline worker: one GenServer owning one Erlang port to
  `bench/baseline_worker.py`. Pipelined: callers send already-encoded request
  frames, the GenServer writes them to the port at once and queues the caller;
  the Python side answers in order, so each reply goes to the caller at the head
  of the FIFO queue via `GenServer.reply/2`. Encoding and decoding happen in the
  calling processes, so the GenServer only moves binaries.
  """
  use GenServer

  alias SnakeBridgeBench.Msgpack

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc "Calls `module.function(*args)` in this worker's Python process."
  @spec call(pid(), String.t(), String.t(), list(), timeout()) :: {:ok, term()} | {:error, term()}
  def call(pid, module, function, args, timeout \\ 5_000) do
    frame = IO.iodata_to_binary(Msgpack.encode([module, function, args]))

    case GenServer.call(pid, {:request, frame}, timeout) do
      {:ok, reply} ->
        case Msgpack.decode(reply) do
          {:ok, [0, value]} -> {:ok, value}
          {:ok, [1, error]} -> {:error, {:python, error}}
          other -> {:error, {:bad_reply, other}}
        end

      {:error, _} = error ->
        error
    end
  end

  @impl true
  def init(opts) do
    python = Keyword.fetch!(opts, :python)
    script = Keyword.fetch!(opts, :script)
    python_path = Keyword.get(opts, :python_path, [])

    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        {:packet, 4},
        :exit_status,
        args: [script | python_path]
      ])

    {:ok, %{port: port, waiting: :queue.new()}}
  end

  @impl true
  def handle_call({:request, frame}, from, %{port: port, waiting: waiting} = state) do
    true = Port.command(port, frame)
    {:noreply, %{state | waiting: :queue.in(from, waiting)}}
  end

  def handle_call(:os_pid, _from, %{port: port} = state) do
    {:os_pid, os_pid} = Port.info(port, :os_pid)
    {:reply, os_pid, state}
  end

  @impl true
  def handle_info({port, {:data, reply}}, %{port: port, waiting: waiting} = state) do
    {{:value, from}, waiting} = :queue.out(waiting)
    GenServer.reply(from, {:ok, reply})
    {:noreply, %{state | waiting: waiting}}
  end

  def handle_info({port, {:exit_status, status}}, %{port: port, waiting: waiting} = state) do
    for from <- :queue.to_list(waiting),
        do: GenServer.reply(from, {:error, {:worker_exited, status}})

    {:stop, {:worker_exited, status}, %{state | waiting: :queue.new()}}
  end

  @impl true
  def terminate(_reason, %{port: port}) do
    # Closing the port closes the worker's stdin; it exits on EOF.
    if Port.info(port), do: Port.close(port)
    :ok
  end
end

defmodule SnakeBridgeBench.PortPool do
  @moduledoc """
  A fixed set of `SnakeBridgeBench.PortWorker`s. Each caller takes the least
  busy worker, the lowest index on ties, from per-worker in-flight counters in
  an `:atomics` array; the tuple of pids and the counters live in
  `:persistent_term`.

  Ties go to the lowest index, like poolboy's default LIFO checkout, so that a
  lone sequential caller keeps using one worker whose GenServer and Python
  process stay warm on the same core. Round-robin made every call wake a
  different idle GenServer and Python process, and on this 2-vCPU VM a wake-up
  on the other vCPU costs 40-50 µs (bench/README.md, "The baseline's latency").
  """

  alias SnakeBridgeBench.PortWorker

  @doc """
  Starts `:size` workers linked to the caller and registers the pool as `:name`.

  Options: `:name`, `:size`, `:python` (interpreter path), `:script`
  (path of baseline_worker.py), `:python_path` (directories put on `sys.path`).
  """
  @spec start_link(keyword()) :: {:ok, [pid()]}
  def start_link(opts) do
    name = Keyword.fetch!(opts, :name)
    size = Keyword.fetch!(opts, :size)

    pids =
      for _ <- 1..size do
        {:ok, pid} = PortWorker.start_link(opts)
        pid
      end

    :persistent_term.put({__MODULE__, name}, {List.to_tuple(pids), :atomics.new(size, [])})

    {:ok, pids}
  end

  @spec call(atom(), String.t(), String.t(), list(), timeout()) ::
          {:ok, term()} | {:error, term()}
  def call(name, module, function, args, timeout \\ 5_000) do
    {pids, in_flight} = :persistent_term.get({__MODULE__, name})
    index = least_busy(in_flight, tuple_size(pids))
    :atomics.add(in_flight, index, 1)

    try do
      PortWorker.call(elem(pids, index - 1), module, function, args, timeout)
    after
      :atomics.sub(in_flight, index, 1)
    end
  end

  @doc "The OS pids of the pool's Python processes."
  @spec os_pids(atom()) :: [pos_integer()]
  def os_pids(name) do
    {pids, _} = :persistent_term.get({__MODULE__, name})
    for pid <- Tuple.to_list(pids), do: GenServer.call(pid, :os_pid)
  end

  # Two callers may pick the same idle worker at once; it then pipelines both
  # calls, which is correct, just not perfectly balanced.
  defp least_busy(in_flight, size),
    do: least_busy(in_flight, size, 2, 1, :atomics.get(in_flight, 1))

  defp least_busy(_in_flight, _size, _i, best, 0), do: best
  defp least_busy(_in_flight, size, i, best, _load) when i > size, do: best

  defp least_busy(in_flight, size, i, best, load) do
    case :atomics.get(in_flight, i) do
      lower when lower < load -> least_busy(in_flight, size, i + 1, i, lower)
      _ -> least_busy(in_flight, size, i + 1, best, load)
    end
  end
end
