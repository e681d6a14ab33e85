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
  A fixed set of `SnakeBridgeBench.PortWorker`s; callers pick one round-robin
  with an `:atomics` counter over a tuple of pids kept in `:persistent_term`.
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

    :persistent_term.put(
      {__MODULE__, name},
      {List.to_tuple(pids), :atomics.new(1, signed: false)}
    )

    {:ok, pids}
  end

  @spec call(atom(), String.t(), String.t(), list(), timeout()) ::
          {:ok, term()} | {:error, term()}
  def call(name, module, function, args, timeout \\ 5_000) do
    {pids, counter} = :persistent_term.get({__MODULE__, name})
    index = rem(:atomics.add_get(counter, 1, 1), tuple_size(pids))
    PortWorker.call(elem(pids, index), module, function, args, timeout)
  end

  @doc "Stops the pool's workers (their Python processes exit on EOF)."
  @spec stop(atom()) :: :ok
  def stop(name) do
    {pids, _} = :persistent_term.get({__MODULE__, name})
    for pid <- Tuple.to_list(pids), do: GenServer.stop(pid)
    :persistent_term.erase({__MODULE__, name})
    :ok
  end
end
